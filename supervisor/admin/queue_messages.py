"""A queue's messages through Cloudflare's REST API: pushed in
(``client.queues.messages.push`` and ``.bulk_push``), pulled out by an HTTP
pull consumer (``.pull``, then ``.ack`` with the leases it gave), looked
at (``.peek``, which leases nothing) and purged, whole
(``client.queues.purge.start``) or by the refs a peek gave
(``.messages.purge``), and counted (``client.queues.get_metrics``): how a
platform's back end feeds, drains, inspects or empties a queue.

Pulling needs the queue's HTTP pull consumer (``type: "http_pull"``, made
with the consumers API or ``wrangler queues consumer http add``), whose
settings apply: a pull that names no ``batch_size`` or
``visibility_timeout_ms`` takes the consumer's, a retry without
``delay_seconds`` its ``retry_delay``, and a message retried past its
``max_retries`` (explicitly, or by letting its lease run out) goes to its
``dead_letter_queue``, or is dropped without one, as a push consumer's is.
Cloudflare does not document its answer to a pull from a queue without a
pull consumer; here it is a 409 naming the fix (as its answer to a pull from
a paused queue is a 409). Pulling is refused while a worker consumes the
queue too: the two would each take messages the other expects.

A pulled message is hidden for the pull's visibility timeout and seen
again after it unless acknowledged; a lease names the attempt it was for, so
acking after the message was pulled again changes nothing (a warning says
so).

Each message is checked as a producer's ``send`` is
(:func:`supervisor.queues.hub.check_message`) and stored as a producer would
store it, so a consumer reads it the same way: ``content_type`` ``"json"``
(the default here) carries any JSON value, ``"text"`` a string, ``"bytes"``
base64; ``"v8"`` is a JavaScript structured clone, which an HTTP client
cannot make. The queues are the platform's, as the queues API's are
(:mod:`supervisor.admin.queues_api`). The operator is not held to tenants' caps.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from protocol.messages import QueueMessage
from supervisor.admin.decode import body_as
from supervisor.admin.handlers import Handlers, log_event
from supervisor.admin.queues_api import MAX_VISIBILITY_MS, PullConsumer, QueueHandlers, pull_settings
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.bindings.base import BindingError
from supervisor.bindings.queues import hub_of
from supervisor.errors import Conflict, Invalid
from supervisor.model import PLATFORM
from supervisor.queues import store
from supervisor.queues.hub import check_message

if TYPE_CHECKING:
    from supervisor.bindings import Bindings

_UNSET: Any = msgspec.UNSET


class Message(msgspec.Struct, kw_only=True):
    body: Any = _UNSET
    content_type: str = "json"
    delay_seconds: float | None = None


class Batch(msgspec.Struct, kw_only=True):
    messages: list[Message]
    delay_seconds: float | None = None


class Purge(msgspec.Struct, kw_only=True):
    delete_messages_permanently: bool = False


#: A count in a body: Cloudflare's OpenAPI types them "number", so its SDK
#: sends ``2.0`` as readily as ``2`` (a whole float is taken, see _whole).
Number = int | float


def _whole(value: Number | None, name: str) -> int | None:
    """``value`` as the whole number it must be, or :class:`Invalid`."""
    if value is None or isinstance(value, int):
        return value
    if not value.is_integer():
        raise Invalid(f"{name} must be a whole number, got {value}")
    return int(value)


class Pull(msgspec.Struct, kw_only=True):
    """A pull's body; what it leaves out is the pull consumer's setting."""

    batch_size: Number | None = None
    visibility_timeout_ms: Number | None = None
    #: The name Cloudflare's pull consumer guide sends (the API reference's is ``visibility_timeout_ms``).
    visibility_timeout: Number | None = None

    def __post_init__(self) -> None:
        self.batch_size = _whole(self.batch_size, "batch_size")
        self.visibility_timeout_ms = _whole(self.visibility_timeout_ms, "visibility_timeout_ms")
        self.visibility_timeout = _whole(self.visibility_timeout, "visibility_timeout")


class Peek(msgspec.Struct, kw_only=True):
    batch_size: int = 5  # a pull's default (PullConsumer.batch_size)


class Ref(msgspec.Struct, kw_only=True):
    ref: str


class Refs(msgspec.Struct, kw_only=True):
    refs: list[Ref]


class Lease(msgspec.Struct, kw_only=True):
    lease_id: str
    delay_seconds: float | None = None  # None: the pull consumer's retry_delay


class Acks(msgspec.Struct, kw_only=True):
    acks: list[Lease] = []
    retries: list[Lease] = []


#: The longest attempt count a lease names (any 18 digits fit a 64-bit integer).
MAX_ATTEMPT_DIGITS = 18


def lease_of(message: QueueMessage) -> str:
    """A lease names the message and the attempt it was pulled for."""
    return f"{message.id}.{message.attempts}"


def _lease(lease_id: str) -> tuple[str, int]:
    """The message id and attempt a lease names. The attempt is ASCII digits
    that fit SQLite's integer: ``str.isdigit`` alone also takes ``'²'``
    (which ``int`` refuses) and any run of digits (past 64 bits SQLite
    refuses it, past 4300 ``int`` does): each was a 500."""
    id_, _, attempt = lease_id.rpartition(".")
    if not id_ or not (attempt.isascii() and attempt.isdigit()) or len(attempt) > MAX_ATTEMPT_DIGITS:
        raise Invalid(f"lease_id {lease_id[:80]!r} is not one a pull gave")
    return id_, int(attempt)


def pulled_json(message: QueueMessage) -> dict[str, Any]:
    """A pulled message as Cloudflare's pull answers it: text and JSON as
    their text, bytes (and structured clones) as base64."""
    if message.content_type in ("text", "json"):
        body = message.body.decode("utf-8", "surrogatepass")
    else:
        body = base64.b64encode(message.body).decode("ascii")
    return {"id": message.id, "body": body, "attempts": message.attempts, "lease_id": lease_of(message),
            "timestamp_ms": int(message.timestamp),
            "metadata": {"CF-sourceMessageSource": "api", "CF-Content-Type": message.content_type}}


def peeked_json(message: QueueMessage) -> dict[str, Any]:
    """A peeked message: as a pull shows it, with a ``ref`` (its id) to
    purge it instead of a lease to acknowledge it."""
    out = pulled_json(message)
    del out["lease_id"]
    return {**out, "ref": message.id}


def encoded(message: Message, batch_delay: float | None = None) -> store.Outgoing:
    """One message as a producer stores it, or :class:`Invalid` saying what is wrong."""
    if message.body is _UNSET:
        raise Invalid("a message needs a body")
    kind, body = message.content_type, message.body
    if kind == "json":
        # JSON.stringify's text, as a worker's send writes it: compact, UTF-8.
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    elif kind == "text":
        if not isinstance(body, str):
            raise Invalid(f'content_type "text" needs a string body, got {type(body).__name__}')
        data = body.encode("utf-8", "surrogatepass")
    elif kind == "bytes":
        try:
            data = base64.b64decode(body, validate=True) if isinstance(body, str) else None
        except (binascii.Error, ValueError):
            data = None
        if data is None:
            raise Invalid('content_type "bytes" needs the body as a base64 string')
    elif kind == "v8":
        raise Invalid('content_type "v8" is a JavaScript structured clone, which cannot be sent over HTTP: '
                      'use "json", "text" or "bytes"')
    else:
        raise Invalid(f"content_type {kind[:40]!r}: use json, text or bytes")
    delay = message.delay_seconds if message.delay_seconds is not None else batch_delay
    try:
        return check_message(data, kind, delay, None)
    except BindingError as exc:
        raise Invalid(exc.message) from None


def register(router: Router, core: Handlers, bindings: Bindings) -> None:
    hub = hub_of(bindings.services)
    queues = QueueHandlers(core)

    async def key_of(request: Request) -> tuple[str, str]:
        name, _, _ = await queues._queue(request, await queues._platform_scripts())
        return PLATFORM, name

    async def send(request: Request, messages: list[store.Outgoing]) -> Response:
        key = await key_of(request)
        try:
            await hub.send(key, messages, None)
        except BindingError as exc:
            raise Invalid(exc.message) from None
        return envelope(200, None)

    async def push(request: Request) -> Response:
        message = body_as(request.body, Message, '{"body": {"any": "json"}, "content_type": "json"}',
                          "send a message")
        return await send(request, [encoded(message)])

    async def push_batch(request: Request) -> Response:
        batch = body_as(request.body, Batch, '{"messages": [{"body": "hi", "content_type": "text"}]}',
                        "send messages")
        if not 1 <= len(batch.messages) <= store.MAX_BATCH_MESSAGES:
            raise Invalid(f"a batch holds 1 to {store.MAX_BATCH_MESSAGES} messages, got {len(batch.messages)}")
        messages = [encoded(m, batch.delay_seconds) for m in batch.messages]
        total = sum(len(m.body) for m in messages)
        if total > store.MAX_BATCH_BYTES:
            raise Invalid(f"the batch is {total} bytes; the limit is {store.MAX_BATCH_BYTES}")
        return await send(request, messages)

    async def purge(request: Request) -> Response:
        if not body_as(request.body or b"{}", Purge, '{"delete_messages_permanently": true}',
                       "purge a queue").delete_messages_permanently:
            raise Invalid('send {"delete_messages_permanently": true}: a purge deletes every message for good')
        scripts = await queues._platform_scripts()
        queue = await queues._queue(request, scripts)
        count = await hub.purge((PLATFORM, queue[0]))
        log_event(logging.INFO, "admin.queue_purged", queue=queue[0], messages=count)
        # The queue, as Cloudflare answers a purge (the SDK's model is its
        # Queue), and how the purge went, as its status call says it.
        return envelope(200, {**queues._json(scripts, *queue, await queues._pulls()),
                              "started_at": None, "completed": "true", "messages_purged": count})

    async def peek(request: Request) -> Response:
        """``client.queues.messages.peek``: the next visible messages, each with
        the ``ref`` that purges it, left where they are (a pull or a consumer
        still gets them, their attempts not counted)."""
        wanted = body_as(request.body or b"{}", Peek, '{"batch_size": 10}', "peek at messages")
        if not 1 <= wanted.batch_size <= store.MAX_BATCH_MESSAGES:
            raise Invalid(f"batch_size must be from 1 to {store.MAX_BATCH_MESSAGES}, got {wanted.batch_size}")
        messages = await hub.peek(await key_of(request), wanted.batch_size)
        return envelope(200, {"messages": [peeked_json(m) for m in messages]})

    async def purge_refs(request: Request) -> Response:
        """``client.queues.messages.purge``: delete the messages a peek's refs
        name; a ref whose message is gone already is a warning, by ref."""
        refs = body_as(request.body, Refs, '{"refs": [{"ref": "<a peeked message\'s ref>"}]}',
                       "purge messages").refs
        if not 1 <= len(refs) <= store.MAX_BATCH_MESSAGES:
            raise Invalid(f"refs holds 1 to {store.MAX_BATCH_MESSAGES} refs, got {len(refs)}")
        key = await key_of(request)
        missing = await hub.delete(key, [r.ref for r in refs])
        log_event(logging.INFO, "admin.queue_messages_purged", queue=key[1], messages=len(refs) - len(missing))
        return envelope(200, {"errors": [], "warnings": {
            ref: "no such message: it was acknowledged or purged already" for ref in missing}})

    async def metrics(request: Request) -> Response:
        """``client.queues.get_metrics``: the backlog, counted now."""
        count, size, oldest = await hub.backlog(await key_of(request))
        return envelope(200, {"backlog_count": count, "backlog_bytes": size,
                              "oldest_message_timestamp_ms": int(oldest)})

    async def purge_status(request: Request) -> Response:
        """A purge is done when its call returns: there is never one under way."""
        await key_of(request)
        return envelope(200, {"started_at": None, "completed": "true"})

    async def pull(request: Request) -> Response:
        """An HTTP pull consumer's batch, with its settings; refused without one,
        and while a worker consumes the queue (both would lose)."""
        wanted = body_as(request.body or b"{}", Pull, '{"batch_size": 10, "visibility_timeout_ms": 30000}',
                         "pull messages")
        visibility = wanted.visibility_timeout_ms if wanted.visibility_timeout_ms is not None \
            else wanted.visibility_timeout
        if wanted.batch_size is not None and not 1 <= wanted.batch_size <= store.MAX_BATCH_MESSAGES:
            raise Invalid(f"batch_size must be from 1 to {store.MAX_BATCH_MESSAGES}, got {wanted.batch_size}")
        if visibility is not None and not 1 <= visibility <= MAX_VISIBILITY_MS:
            raise Invalid(f"visibility_timeout_ms must be from 1 to {MAX_VISIBILITY_MS}")
        scripts = await queues._platform_scripts()
        name, _, _ = await queues._queue(request, scripts)
        workers = sorted(s.name for s in scripts for c in s.queue_consumers if c.queue == name)
        if workers:
            raise Conflict(f"queue {name!r} is consumed by worker {workers[0]!r}: remove that consumer before "
                           "pulling its messages over HTTP")
        consumer = await queues.pull_consumer(name)
        if consumer is None:
            raise Conflict(f"queue {name!r} has no HTTP pull consumer: add one (POST .../queues/{{queue_id}}/"
                           f'consumers with {{"type": "http_pull"}}, or wrangler queues consumer http add {name}) '
                           "before pulling its messages")
        settings = pull_settings(consumer)
        batch_size = wanted.batch_size if wanted.batch_size is not None else settings.batch_size
        visibility_ms = visibility if visibility is not None else settings.visibility_timeout_ms
        messages, left = await hub.pull((PLATFORM, name), batch_size, visibility_ms / 1000,
                                        settings.max_retries, settings.dead_letter_queue or None)
        return envelope(200, {"message_backlog_count": left, "messages": [pulled_json(m) for m in messages]})

    async def ack(request: Request) -> Response:
        """Acks and retries by lease; a retry past the pull consumer's
        max_retries goes to its dead-letter queue (Cloudflare's defaults, and
        no dead-letter queue, once the consumer is gone)."""
        body = body_as(request.body, Acks, '{"acks": [{"lease_id": "..."}], "retries": []}', "acknowledge messages")
        if len(body.acks) + len(body.retries) > store.MAX_BATCH_MESSAGES:
            raise Invalid(f"at most {store.MAX_BATCH_MESSAGES} acks and retries at once")
        for retry in body.retries:
            if retry.delay_seconds is not None and not 0 <= retry.delay_seconds <= store.MAX_DELAY_S:
                raise Invalid(f"delay_seconds must be from 0 to {store.MAX_DELAY_S}")
        key = await key_of(request)
        consumer = await queues.pull_consumer(key[1])
        settings = pull_settings(consumer) if consumer is not None else PullConsumer()
        acked, retried, stale = await hub.settle_leases(
            key, [_lease(a.lease_id) for a in body.acks],
            [(*_lease(r.lease_id), float(r.delay_seconds if r.delay_seconds is not None else settings.retry_delay))
             for r in body.retries],
            settings.max_retries, settings.dead_letter_queue or None)
        warnings = [f"{stale} lease(s) had expired or were settled already: those messages were not changed"] \
            if stale else []
        return envelope(200, {"ackCount": acked, "retryCount": retried, "warnings": warnings})

    router.add("accounts/*/queues/{queue}/messages", POST=push)
    router.add("accounts/*/queues/{queue}/messages/pull", POST=pull)
    router.add("accounts/*/queues/{queue}/messages/ack", POST=ack)
    router.add("accounts/*/queues/{queue}/messages/batch", POST=push_batch)
    router.add("accounts/*/queues/{queue}/purge", POST=purge, GET=purge_status)
    router.add("accounts/*/queues/{queue}/metrics", GET=metrics)
    router.add("accounts/*/queues/{queue}/messages/peek", POST=peek)
    router.add("accounts/*/queues/{queue}/messages/purge", POST=purge_refs)


__all__ = ["register"]
