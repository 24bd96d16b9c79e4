"""Messages into a queue through Cloudflare's REST API (``client.queues.messages.push``
and ``.bulk_push``, ``POST .../queues/{id}/messages[/batch]``), and a queue's purge
(``client.queues.purge.start``): how a platform's back end feeds or empties a
queue its scripts consume.

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

from supervisor.admin.decode import body_as
from supervisor.admin.handlers import Handlers, log_event
from supervisor.admin.queues_api import QueueHandlers
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.bindings.base import BindingError
from supervisor.bindings.queues import hub_of
from supervisor.errors import Invalid
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


def encoded(message: Message, batch_delay: float | None = None) -> store.Outgoing:
    """One message as a producer stores it, or :class:`Invalid` saying what is wrong."""
    if message.body is _UNSET:
        raise Invalid("a message needs a body")
    kind, body = message.content_type, message.body
    if kind == "json":
        data = json.dumps(body).encode()
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
        key = await key_of(request)
        count = await hub.purge(key)
        log_event(logging.INFO, "admin.queue_purged", queue=key[1], messages=count)
        return envelope(200, {"started_at": None, "completed": "true", "messages_purged": count})

    async def purge_status(request: Request) -> Response:
        """A purge is done when its call returns: there is never one under way."""
        await key_of(request)
        return envelope(200, {"started_at": None, "completed": "true"})

    router.add("accounts/*/queues/{queue}/messages", POST=push)
    router.add("accounts/*/queues/{queue}/messages/batch", POST=push_batch)
    router.add("accounts/*/queues/{queue}/purge", POST=purge, GET=purge_status)


__all__ = ["register"]
