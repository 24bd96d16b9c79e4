"""Queues and their consumers as Cloudflare's API makes them (``/queues``).

``wrangler queues create`` and the SDK's ``client.queues.create`` make a
queue; ``wrangler deploy`` of a config with ``queues.consumers`` then looks
the queue up by name and adds (or updates) the script as its consumer. A
queue is the name a ``queue`` binding gives, its messages kept per
(dispatch namespace, name): any name works, made here or not. Made here, a
queue gets an id in Cloudflare's shape; one only named by scripts has its
name as its id.

A consumer is part of the consuming script's deployed record (its
``queue_consumers``, what the queues hub reads) but, as on Cloudflare, the
script's and not a version's, as its schedules are
(:mod:`supervisor.admin.schedules`): adding, changing or removing one makes no
new version; an upload that names no consumers keeps them, and so does a
deployment of another version (a rollback). Consumers here are platform
scripts, which consume the platform's queues; a dispatch namespace's scripts
name theirs in their upload. A queue may have an HTTP pull consumer instead
(``type: "http_pull"``): its messages are then pulled and acknowledged over
HTTP (:mod:`supervisor.admin.queue_messages`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from typing import Annotated, Any

import msgspec

from supervisor.admin.decode import body_as, clip, page_of
from supervisor.admin.handlers import log_event
from supervisor.admin.kv import ResourceHandlers
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.errors import Conflict, Invalid, NotFound, NotSupported
from supervisor.model import PLATFORM, Queue, QueueConsumer, ScriptRecord, check_name
from supervisor.store.records import ResourceInfo
from supervisor.store.store import script_not_found

_Q = "accounts/*/queues"
_KIND = "queue"
#: Cloudflare's queue names: letters, digits and '-', up to 63.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
MAX_PER_PAGE = 1000


class _NewQueue(msgspec.Struct):
    queue_name: str
    settings: dict[str, Any] | None = None


def _refuse_settings(settings: dict[str, Any] | None) -> None:
    """Corral keeps no per-queue settings: one given is refused by name."""
    given = sorted(k for k, v in (settings or {}).items() if v is not None)
    if given:
        raise NotSupported(f"queue settings ({', '.join(given)}) are not supported by Corral: a queue "
                           "binding's delivery_delay sets its producer's default delay")


class _QueueChange(msgspec.Struct, kw_only=True):
    """A queue update's body (``jurisdiction`` is Cloudflare's data locality: one host here)."""

    queue_name: str | None = None
    settings: dict[str, Any] | None = None
    jurisdiction: str | None = None


class _Settings(msgspec.Struct, kw_only=True):
    """A consumer's settings, with Cloudflare's names."""

    batch_size: int | None = None
    max_retries: int | None = None
    max_wait_time_ms: int | None = None
    max_concurrency: int | None = None
    retry_delay: int | None = None
    visibility_timeout_ms: int | None = None


class _NewConsumer(msgspec.Struct, kw_only=True):
    script_name: str | None = None
    type: str | None = None  # a worker when not said
    environment_name: str | None = None
    settings: _Settings = msgspec.field(default_factory=_Settings)
    dead_letter_queue: str | None = None


def consumer_id(queue: str, script: str) -> str:
    """A consumer's id: the same for a script and a queue every time."""
    return hashlib.blake2b(f"{queue}\0{script}".encode(), digest_size=16, person=b"corral-consume").hexdigest()


#: The resources kind recording a queue's HTTP pull consumer (id: its consumer id, name: the queue,
#: settings: its :class:`PullConsumer` as JSON).
_PULL = "queue_http_pull"
#: The longest an HTTP pull consumer may hide a message it pulled (Cloudflare's: 12 hours).
MAX_VISIBILITY_MS = 12 * 3600 * 1000


class PullConsumer(msgspec.Struct, kw_only=True):
    """An HTTP pull consumer's settings, Cloudflare's defaults where not given
    (its pull consumer guide: batches of 5, a 30 s visibility timeout; 3
    retries, no delay, as every consumer). A pull that names no
    ``batch_size`` or ``visibility_timeout_ms`` takes these; a message
    retried past ``max_retries`` goes to ``dead_letter_queue`` ("" : dropped)."""

    batch_size: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 3
    visibility_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=MAX_VISIBILITY_MS)] = 30_000
    retry_delay: Annotated[int, msgspec.Meta(ge=0, le=43200)] = 0
    dead_letter_queue: str = ""


def pull_settings(made: ResourceInfo) -> PullConsumer:
    """The settings a pull consumer's record keeps; Cloudflare's defaults for
    one recorded before settings were kept (or whose JSON does not decode)."""
    if not made.settings:
        return PullConsumer()
    try:
        return msgspec.json.decode(made.settings, type=PullConsumer)
    except msgspec.DecodeError as exc:
        log_event(logging.WARNING, "admin.queue_consumer_settings_unreadable", queue=made.name,
                  reason=str(exc)[:200])
        return PullConsumer()


def _pull_of_body(queue: str, body: _NewConsumer) -> PullConsumer:
    """An HTTP pull consumer's settings from a create or update body (the
    whole consumer: what is not given is the default again, as Cloudflare's
    update replaces the consumer), or :class:`Invalid` naming the field."""
    given = {"batch_size": body.settings.batch_size, "max_retries": body.settings.max_retries,
             "visibility_timeout_ms": body.settings.visibility_timeout_ms,
             "retry_delay": body.settings.retry_delay}
    dead_letter_queue = body.dead_letter_queue or ""
    if dead_letter_queue and not _NAME.match(dead_letter_queue):
        raise Invalid(f"dead_letter_queue {clip(dead_letter_queue)!r}: a queue name is 1 to 63 letters, digits "
                      "and '-'")
    if dead_letter_queue == queue:
        raise Invalid(f"dead_letter_queue {queue!r} is the queue itself: its dead messages would come back "
                      "for ever; name another queue")
    try:
        return msgspec.convert({**{k: v for k, v in given.items() if v is not None},
                                "dead_letter_queue": dead_letter_queue}, type=PullConsumer)
    except msgspec.ValidationError as exc:
        raise Invalid(f"HTTP pull consumer settings: {exc}") from None


def _pull_json(made: ResourceInfo) -> dict[str, Any]:
    settings = pull_settings(made)
    return {"consumer_id": made.id, "type": "http_pull", "queue_name": made.name, "created_on": made.created_on,
            "dead_letter_queue": settings.dead_letter_queue,
            "settings": {"batch_size": settings.batch_size, "max_retries": settings.max_retries,
                         "visibility_timeout_ms": settings.visibility_timeout_ms,
                         "retry_delay": settings.retry_delay}}


def _consumer_json(queue: str, script: ScriptRecord, consumer: QueueConsumer) -> dict[str, Any]:
    return {"consumer_id": consumer_id(queue, script.name), "type": "worker", "script": script.name,
            "service": script.name, "environment": "production", "queue_name": queue,
            "created_on": script.modified_on, "dead_letter_queue": consumer.dead_letter_queue,
            "settings": {"batch_size": consumer.max_batch_size, "max_retries": consumer.max_retries,
                         "max_wait_time_ms": int(consumer.max_batch_timeout * 1000),
                         "max_concurrency": consumer.max_concurrency, "retry_delay": consumer.retry_delay}}


class QueueHandlers(ResourceHandlers):
    def register(self, router: Router) -> None:
        router.add(_Q, GET=self.list_queues, POST=self.create_queue)
        router.add(f"{_Q}/{{queue}}", GET=self.get_queue, DELETE=self.delete_queue, PUT=self.update_queue,
                   PATCH=self.update_queue)
        router.add(f"{_Q}/{{queue}}/consumers", GET=self.list_consumers, POST=self.add_consumer)
        router.add(f"{_Q}/{{queue}}/consumers/{{consumer}}", GET=self.get_consumer, PUT=self.update_consumer,
                   DELETE=self.delete_consumer)

    # -- what exists ----------------------------------------------------------

    async def _platform_scripts(self) -> list[ScriptRecord]:
        return await self.core.every_script(PLATFORM)

    async def _all(self, scripts: list[ScriptRecord]) -> dict[str, tuple[str, ResourceInfo | None]]:
        """Every queue by name: its id and its record if made here, else named
        by the platform's ``scripts`` (as producers or consumers)."""
        made = {r.name: r for r in await self.core._run(self.store.list_resources, _KIND)}
        named = {b.queue_name for s in scripts for b in s.bindings if isinstance(b, Queue)}
        named |= {c.queue for s in scripts for c in s.queue_consumers}
        out: dict[str, tuple[str, ResourceInfo | None]] = {n: (n, None) for n in named}
        out.update({n: (r.id, r) for n, r in made.items()})
        return dict(sorted(out.items()))

    async def _queue(self, request: Request, scripts: list[ScriptRecord]) -> tuple[str, str, ResourceInfo | None]:
        """(name, id, record) of the queue the path names, by id or name."""
        wanted = request.params["queue"]
        for name, (queue_id, made) in (await self._all(scripts)).items():
            if wanted in (queue_id, name):
                return name, queue_id, made
        raise NotFound(f"no queue {clip(wanted)!r}: make it (wrangler queues create) or name it in a "
                       "script's queue binding")

    @staticmethod
    def _json(scripts: list[ScriptRecord], name: str, queue_id: str, made: ResourceInfo | None,
              pulls: list[ResourceInfo] = ()) -> dict[str, Any]:  # type: ignore[assignment]
        producers = [{"type": "worker", "script": s.name} for s in scripts
                     if any(isinstance(b, Queue) and b.queue_name == name for b in s.bindings)]
        consumers = [_consumer_json(name, s, c) for s in scripts for c in s.queue_consumers if c.queue == name]
        consumers += [_pull_json(p) for p in pulls if p.name == name]
        when = made.created_on if made else None
        return {"queue_id": queue_id, "queue_name": name, "created_on": when, "modified_on": when,
                "producers": producers, "producers_total_count": len(producers),
                "consumers": consumers, "consumers_total_count": len(consumers), "settings": {}}

    # -- queues ---------------------------------------------------------------

    async def list_queues(self, request: Request) -> Response:
        """By name; ``?name=`` one, ``page`` and ``per_page`` as Cloudflare pages it."""
        scripts = await self._platform_scripts()
        found = [(n, *v) for n, v in (await self._all(scripts)).items()
                 if "name" not in request.query or n == request.query["name"]]
        shown, info = page_of(request.query, found, 100, MAX_PER_PAGE)
        pulls = await self._pulls()
        return envelope(200, [self._json(scripts, *q, pulls) for q in shown], result_info=info)

    async def get_queue(self, request: Request) -> Response:
        scripts = await self._platform_scripts()
        return envelope(200, self._json(scripts, *await self._queue(request, scripts), await self._pulls()))

    async def create_queue(self, request: Request) -> Response:
        new = body_as(request.body, _NewQueue, '{"queue_name": "my-queue"}', "make a queue")
        name = new.queue_name
        # Refused as an update's are (wrangler's --delivery-delay-secs sends one):
        # they were taken and dropped without a word.
        _refuse_settings(new.settings)
        if not _NAME.match(name):
            raise Invalid(f"queue name {clip(name)!r}: use 1 to 63 letters, digits and '-', starting with a "
                          "letter or digit")
        if name in await self._all(await self._platform_scripts()):
            raise Conflict(f"A queue with this name already exists: {name!r}")
        made = await self._make(_KIND, uuid.uuid4().hex, name, "A queue with this name already exists")
        return envelope(200, {"queue_id": made.id, "queue_name": name, "created_on": made.created_on,
                              "modified_on": made.created_on, "settings": {}})

    async def update_queue(self, request: Request) -> Response:
        """``client.queues.update`` / ``.edit``: Corral keeps no per-queue
        settings and keys a queue's messages by its name, so only a change
        that changes nothing is done (the queue is answered); a rename or a
        setting is refused as what Corral does not support, by name."""
        change = body_as(request.body or b"{}", _QueueChange, '{"queue_name": "my-queue"}', "change a queue")
        scripts = await self._platform_scripts()
        name, queue_id, made = await self._queue(request, scripts)
        if change.queue_name is not None and change.queue_name != name:
            raise NotSupported(f"renaming queue {name!r} is not supported by Corral (its messages and bindings "
                               "go by its name): make a new queue and point the bindings at it")
        _refuse_settings(change.settings)
        return envelope(200, self._json(scripts, name, queue_id, made, await self._pulls()))

    async def delete_queue(self, request: Request) -> Response:
        """Refused while a script sends to it or consumes it; else its messages go."""
        name, queue_id, made = await self._queue(request, await self._platform_scripts())
        users = [f"{r.namespace + '/' if r.namespace else ''}{r.name}"
                 for r in await self.core._run(self.store.scripts_naming, name)
                 if any(isinstance(b, Queue) and b.queue_name == name for b in r.bindings)
                 or any(c.queue == name for c in r.queue_consumers)]
        if users:
            raise Conflict(f"queue {name!r} is used by {', '.join(users[:5])}: remove its producers and "
                           "consumers first")
        await self.core.hooks.purge_bound_data(_KIND, name)
        if made is not None:
            await self.core._run(self.store.delete_resource, _KIND, queue_id)
        for pull in await self._pulls(name):  # an HTTP pull consumer goes with its queue
            await self.core._run(self.store.delete_resource, _PULL, pull.id)
        log_event(logging.INFO, "admin.queue_deleted", name=name)
        return envelope(200, None)

    # -- consumers ------------------------------------------------------------

    async def _pulls(self, queue: str | None = None) -> list[ResourceInfo]:
        """The HTTP pull consumers (of ``queue``)."""
        return [p for p in await self.core._run(self.store.list_resources, _PULL) if queue in (None, p.name)]

    async def list_consumers(self, request: Request) -> Response:
        scripts = await self._platform_scripts()
        queue = self._json(scripts, *await self._queue(request, scripts), await self._pulls())
        return envelope(200, queue["consumers"])

    async def _consumer_script(self, name: str) -> ScriptRecord:
        check_name("script", name)
        record = await self.core._run(self.store.get_primary, PLATFORM, name)
        if record is None:
            raise script_not_found(PLATFORM, name)
        return record

    async def _set_consumer(self, queue: str, script: ScriptRecord, body: _NewConsumer) -> dict[str, Any]:
        if (body.type or "worker") != "worker":
            raise Invalid(f"consumer type {clip(str(body.type))!r}: a consumer is a worker (type \"worker\") or an "
                          "HTTP pull consumer (type \"http_pull\")")
        settings = body.settings
        fields: dict[str, Any] = {"queue": queue, "dead_letter_queue": body.dead_letter_queue,
                                  "max_batch_size": settings.batch_size, "max_retries": settings.max_retries,
                                  "max_concurrency": settings.max_concurrency,
                                  "retry_delay": settings.retry_delay,
                                  "max_batch_timeout": None if settings.max_wait_time_ms is None
                                  else settings.max_wait_time_ms / 1000}
        try:
            consumer = msgspec.convert({k: v for k, v in fields.items() if v is not None}, type=QueueConsumer)
        except msgspec.ValidationError as exc:
            raise Invalid(f"consumer settings: {exc}") from None
        others = [c for c in script.queue_consumers if c.queue != queue]
        stored = await self.core.set_unversioned(script.namespace, script.name, queue_consumers=[*others, consumer])
        log_event(logging.INFO, "admin.queue_consumer_set", queue=queue, script=script.name)
        return _consumer_json(queue, stored, consumer)

    async def add_consumer(self, request: Request) -> Response:
        scripts = await self._platform_scripts()
        name, _, _ = await self._queue(request, scripts)
        body = body_as(request.body, _NewConsumer, '{"type": "worker", "script_name": "NAME", "settings": {}}',
                       "add a consumer")
        # A queue has one consumer, a worker or an HTTP pull consumer, as on Cloudflare.
        kind = body.type or "worker"
        taken = [f"worker {s.name!r}" for s in scripts for c in s.queue_consumers if c.queue == name] + \
            ["an HTTP pull consumer" for _ in await self._pulls(name)]
        if taken and not (kind == "worker" and taken == [f"worker {body.script_name!r}"]):
            raise Conflict(f"queue {name!r} already has a consumer ({taken[0]}): remove it first")
        if kind == "http_pull":
            settings = _pull_of_body(name, body)
            try:
                made = await self.core._run(self.store.create_resource, _PULL, consumer_id(name, "http_pull"), name,
                                            msgspec.json.encode(settings).decode())
            except Conflict as exc:
                raise Conflict(f"The queue already has an HTTP pull consumer ({exc})") from None
            log_event(logging.INFO, "admin.queue_consumer_set", queue=name, type="http_pull",
                      max_retries=settings.max_retries, dead_letter_queue=settings.dead_letter_queue)
            return envelope(200, _pull_json(made))
        if not body.script_name:
            raise Invalid('a worker consumer names its script: {"type": "worker", "script_name": "NAME"}')
        script = await self._consumer_script(body.script_name)
        if any(c.queue == name for c in script.queue_consumers):
            raise Conflict(f"{script.name!r} already consumes {name!r}: change it with PUT "
                           f".../consumers/{consumer_id(name, script.name)}")
        return envelope(200, await self._set_consumer(name, script, body))

    async def _pull_of(self, request: Request) -> ResourceInfo | None:
        """The HTTP pull consumer the path names, if it names one."""
        name, _, _ = await self._queue(request, await self._platform_scripts())
        return next((p for p in await self._pulls(name) if p.id == request.params["consumer"]), None)

    async def _consumer_of(self, request: Request) -> tuple[str, ScriptRecord]:
        """The queue's name and the consuming script the path names."""
        scripts = await self._platform_scripts()
        name, _, _ = await self._queue(request, scripts)
        wanted = request.params["consumer"]
        for script in scripts:
            if any(c.queue == name for c in script.queue_consumers) and consumer_id(name, script.name) == wanted:
                return name, await self._consumer_script(script.name)
        raise NotFound(f"queue {name!r} has no consumer {clip(wanted)!r}")

    async def get_consumer(self, request: Request) -> Response:
        pull = await self._pull_of(request)
        if pull is not None:
            return envelope(200, _pull_json(pull))
        name, script = await self._consumer_of(request)
        return envelope(200, next(_consumer_json(name, script, c) for c in script.queue_consumers if c.queue == name))

    async def update_consumer(self, request: Request) -> Response:
        pull = await self._pull_of(request)
        if pull is not None:
            body = body_as(request.body, _NewConsumer, '{"type": "http_pull", "settings": {"max_retries": 5}}',
                           "change a consumer")
            if body.type not in (None, "http_pull"):
                raise Invalid(f"consumer {pull.id} of queue {pull.name!r} is an HTTP pull consumer: to make a "
                              f"{clip(str(body.type))!r} consumer, remove it and add that one")
            settings = _pull_of_body(pull.name, body)
            changed = await self.core._run(self.store.set_resource_settings, _PULL, pull.id,
                                           msgspec.json.encode(settings).decode())
            if changed is None:
                raise NotFound(f"queue {pull.name!r} has no consumer {pull.id!r} any more")
            log_event(logging.INFO, "admin.queue_consumer_set", queue=pull.name, type="http_pull",
                      max_retries=settings.max_retries, dead_letter_queue=settings.dead_letter_queue)
            return envelope(200, _pull_json(changed))
        name, script = await self._consumer_of(request)
        body = body_as(request.body, _NewConsumer, '{"type": "worker", "settings": {"batch_size": 10}}',
                       "change a consumer")
        return envelope(200, await self._set_consumer(name, script, body))

    async def pull_consumer(self, queue: str) -> ResourceInfo | None:
        """``queue``'s HTTP pull consumer (its settings: :func:`pull_settings`), if it has one."""
        return next(iter(await self._pulls(queue)), None)

    async def delete_consumer(self, request: Request) -> Response:
        pull = await self._pull_of(request)
        if pull is not None:
            await self.core._run(self.store.delete_resource, _PULL, pull.id)
            log_event(logging.INFO, "admin.queue_consumer_removed", queue=pull.name, type="http_pull")
            return envelope(200, None)
        name, script = await self._consumer_of(request)
        kept = [c for c in script.queue_consumers if c.queue != name]
        await self.core.set_unversioned(script.namespace, script.name, queue_consumers=kept)
        log_event(logging.INFO, "admin.queue_consumer_removed", queue=name, script=script.name)
        return envelope(200, None)


__all__ = ["MAX_VISIBILITY_MS", "PullConsumer", "QueueHandlers", "consumer_id", "pull_settings"]
