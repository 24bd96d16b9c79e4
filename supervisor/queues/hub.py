"""Queues of every namespace: producers' sends, and one consumer loop per queue.

A consumer loop waits until its queue has visible messages, then gathers a
batch: ``max_batch_size`` messages, or what is there after
``max_batch_timeout`` seconds, whichever comes first. It invokes the
consumer script's ``queue(batch, env, ctx)`` with the limits, outcome and
trace of a request, and settles the batch from what the handler decided
(protocol.messages.QueueSettled): explicit ``ack``/``retry`` per message
first, then ``ackAll``/``retryAll``, then the handler's fate (returned: ack;
raised: retry). A retried message past ``max_retries`` goes to the
consumer's dead-letter queue, or is dropped without one.

The loops are tasks in the hub's nursery (owned by the server); a deploy
that changes consumers restarts them from the stored scripts.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import trio

from protocol.messages import QueueEvent, QueueMessage
from supervisor.bindings.base import BindingError, Scope
from supervisor.log import log, warn
from supervisor.nesting import deeper_than
from supervisor.queues import store

QueueKey = tuple[str, str]  # (dispatch namespace, queue name)
#: After a queue's store fails, its consumer waits this long, doubling up to the most.
STORAGE_RETRY_S = 1.0
MAX_STORAGE_RETRY_S = 30.0
#: How deep a ``v8`` or ``json`` message body may nest (lists and objects):
#: a consumer decodes its batch some way down its stack, where nesting near
#: the interpreter's recursion limit fails the whole batch.
MAX_BODY_DEPTH = 512
#: Lists (namespace, script, consumer) of every stored script (runs in a thread).
ConsumerSource = Callable[[], Iterable[tuple[str, str, Any]]]


class QueueHub:
    def __init__(self, services: Any) -> None:
        self.services = services
        self._wake: dict[QueueKey, trio.Event] = {}
        self._changed = trio.Event()
        self.runtime: Any = None
        self.source: ConsumerSource | None = None
        #: Batches being delivered now, and whether the server stops (no new
        #: batch then: the ones under way finish before it does).
        self.delivering = 0
        self._draining = False

    def drain(self) -> None:
        """The server stops: no batch starts from now on; :attr:`delivering`
        says when those under way have ended (a SIGTERM cut them, and each
        came back with an attempt spent)."""
        self._draining = True

    def attach(self, runtime: Any, source: ConsumerSource) -> None:
        self.runtime = runtime
        self.source = source

    def consumers_changed(self) -> None:
        self._changed.set()

    # -- storage -----------------------------------------------------------------------
    async def _db(self, key: QueueKey, fn: Any, *args: Any) -> Any:
        path = self.services.path("queues", Scope(*key), "queue.sqlite3")
        return await self.services.databases.run(path, store.setup, fn, *args)

    async def send(self, key: QueueKey, messages: list[store.Outgoing], cap: int | None) -> None:
        await self._db(key, store.send, messages, cap)
        self._signal(key)

    async def purge(self, key: QueueKey) -> int:
        return await self._db(key, store.purge)

    async def peek(self, key: QueueKey, limit: int) -> list[QueueMessage]:
        """:func:`supervisor.queues.store.peek` of the queue ``key``."""
        return await self._db(key, store.peek, limit)

    async def delete(self, key: QueueKey, ids: list[str]) -> list[str]:
        """:func:`supervisor.queues.store.delete` of the queue ``key``."""
        return await self._db(key, store.delete, ids)

    async def backlog(self, key: QueueKey) -> tuple[int, int, float]:
        """:func:`supervisor.queues.store.backlog` of the queue ``key``."""
        return await self._db(key, store.backlog)

    async def pull(self, key: QueueKey, limit: int, visibility_s: float, max_retries: int,
                   dead_letter_queue: str | None) -> tuple[list[QueueMessage], int]:
        """A batch for an HTTP pull consumer (:func:`supervisor.queues.store.pull`);
        messages it finds retried past ``max_retries`` go to ``dead_letter_queue``
        (dropped without one). Shielded: the dead are forwarded once taken out."""
        with trio.CancelScope(shield=True):
            messages, left, dead = await self._db(key, store.pull, limit, visibility_s, max_retries)
            await self._dead_letter(key, dead, dead_letter_queue)
        return messages, left

    async def settle_leases(self, key: QueueKey, acks: list[tuple[str, int]],
                            retries: list[tuple[str, int, float]], max_retries: int,
                            dead_letter_queue: str | None) -> tuple[int, int, int]:
        """An HTTP pull consumer's acks and retries
        (:func:`supervisor.queues.store.settle_leases`): (acked, retried, stale),
        a retry past ``max_retries`` counted as retried and dead-lettered."""
        with trio.CancelScope(shield=True):
            acked, retried, stale, dead = await self._db(key, store.settle_leases, acks, retries, max_retries)
            await self._dead_letter(key, dead, dead_letter_queue)
        if retries:
            self._signal(key)
        return acked, retried, stale

    async def _dead_letter(self, key: QueueKey, rows: list[tuple[Any, ...]], dead_letter_queue: str | None) -> None:
        """Messages retried past their consumer's ``max_retries`` (rows of
        (id, body, content type, timestamp)), push and pull consumers alike:
        sent to ``dead_letter_queue`` with their id and timestamp, or dropped
        without one, as on Cloudflare; logged either way."""
        if not rows:
            return
        if dead_letter_queue:
            await self.send((key[0], dead_letter_queue),
                            [store.Outgoing(body, ctype, 0, 0, ts, id_) for id_, body, ctype, ts in rows], None)
        log("queue.dead_lettered", namespace=key[0], queue=key[1], count=len(rows),
            to=dead_letter_queue or "(dropped)")

    def _signal(self, key: QueueKey) -> None:
        event = self._wake.pop(key, None)
        if event is not None:
            event.set()

    def _waiter(self, key: QueueKey) -> trio.Event:
        event = self._wake.get(key)
        if event is None:
            event = self._wake[key] = trio.Event()
        return event

    # -- consumers -------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        consumers = await self._consumers()
        while True:
            async with trio.open_nursery() as nursery:
                for key, (script, consumer) in consumers.items():
                    nursery.start_soon(self._consume, key, script, consumer)
                # Any script's change says so (a deploy anywhere): the
                # deliveries under way go on unless the consumers changed.
                while True:
                    await self._changed.wait()
                    changed = await self._consumers()
                    if changed != consumers:
                        consumers = changed
                        break
                nursery.cancel_scope.cancel()

    async def _consumers(self) -> dict[QueueKey, tuple[str, Any]]:
        """Each queue's consumer (script and settings), as the store has them now."""
        self._changed = trio.Event()
        assert self.source is not None
        source = self.source
        entries = await trio.to_thread.run_sync(lambda source=source: list(source()))
        consumers: dict[QueueKey, tuple[str, Any]] = {}
        for namespace, script, consumer in entries:
            key = (namespace, consumer.queue)
            if key in consumers:
                warn("queue.two_consumers", namespace=namespace, queue=consumer.queue,
                     kept=consumers[key][0], ignored=script)
                continue
            consumers[key] = (script, consumer)
        return consumers

    async def _consume(self, key: QueueKey, script: str, cfg: Any) -> None:
        """Deliver ``key``'s messages in batches, for as long as it has a consumer.

        A storage failure (a full disk, a corrupt ``queue.sqlite3``) stops this
        queue for a while, logged, never the supervisor: it used to escape and
        end the server, every tenant with it (durability audit). The messages
        stay stored; delivery resumes once the store works again.
        """
        pause = STORAGE_RETRY_S
        while True:
            try:
                await self._consume_once(key, script, cfg)
                pause = STORAGE_RETRY_S
            except Exception as exc:  # noqa: BLE001 - this queue's store, not the server
                warn("queue.storage_failed", namespace=key[0], queue=key[1], retry_s=pause,
                     file=self.services.path("queues", Scope(*key), "queue.sqlite3"),
                     reason=f"{type(exc).__name__}: {exc}"[:300])
                await trio.sleep(pause)
                pause = min(pause * 2, MAX_STORAGE_RETRY_S)

    async def _consume_once(self, key: QueueKey, script: str, cfg: Any) -> None:
        """Wait for messages, gather a batch and deliver it (one turn of :meth:`_consume`)."""
        waiter = self._waiter(key)
        count, hidden_until = await self._db(key, store.visible)
        if count == 0:
            timeout = math.inf if hidden_until is None else max(0.0, hidden_until - time.time())
            with trio.move_on_after(timeout):
                await waiter.wait()
            return
        deadline = trio.current_time() + cfg.max_batch_timeout
        while count < cfg.max_batch_size and trio.current_time() < deadline:
            waiter = self._waiter(key)
            with trio.move_on_at(deadline):
                await waiter.wait()
            count, _ = await self._db(key, store.visible)
        if self._draining:
            await trio.sleep_forever()  # until the server's nursery ends, with nothing leased
        messages = await self._db(key, store.lease, min(cfg.max_batch_size, store.MAX_BATCH_MESSAGES))
        if messages:
            self.delivering += 1
            try:
                await self._deliver(key, script, cfg, messages)
            finally:
                self.delivering -= 1

    async def _deliver(self, key: QueueKey, script: str, cfg: Any, messages: list[QueueMessage]) -> None:

        rt = self.runtime
        ok, settled = False, None
        try:
            record = await rt.scripts.load(key[0], script)
            if record is None:
                raise LookupError(f"consumer script {script!r} is gone")
            inv = await rt.pool.invoke(record, b"POST", f"https://queue/{key[1]}", [], None,
                                       rt.limits.defaults_for(record), event=QueueEvent(key[1], messages))
            inv.on_done = rt.on_trace
            await inv.wait_head()
            ok, settled = inv.error is None, inv.settled
        except Exception as exc:  # noqa: BLE001 - the batch is retried, the loop goes on
            warn("queue.delivery_failed", namespace=key[0], queue=key[1], reason=str(exc)[:200])
        except trio.Cancelled:
            # The consumer changed, or the server stops: the batch is settled as
            # failed (retried), never left leased, which nothing would ever end.
            await self._settle(key, cfg, messages, False, None)
            raise
        await self._settle(key, cfg, messages, ok, settled)

    async def _settle(self, key: QueueKey, cfg: Any, messages: list[QueueMessage], ok: bool,
                      settled: Any) -> None:
        acked, retried, dead = decide(messages, ok, settled, cfg)
        with trio.CancelScope(shield=True):  # a settled batch is recorded even at shutdown
            rows = await self._db(key, store.settle, acked, retried, dead)
            await self._dead_letter(key, rows, cfg.dead_letter_queue)


def decide(messages: list[QueueMessage], ok: bool, settled: Any, cfg: Any
           ) -> tuple[list[str], list[tuple[str, float]], list[str]]:
    """(acked ids, retried (id, delay s), dead ids) of one delivered batch."""
    explicit_ack = set(settled.acked) if settled else set()
    explicit_retry = {i: d for i, d in settled.retried} if settled else {}
    everything = settled.all if settled else ""
    acked: list[str] = []
    retried: list[tuple[str, float]] = []
    dead: list[str] = []
    for message in messages:
        delay: float | None = None
        if message.id in explicit_ack:
            retry = False
        elif message.id in explicit_retry:
            retry, delay = True, explicit_retry[message.id]
        elif everything:
            retry = everything == "retry"
            delay = settled.all_delay if retry else None
        else:
            retry = not ok
        if not retry:
            acked.append(message.id)
        elif message.attempts > cfg.max_retries:
            dead.append(message.id)
        else:
            retried.append((message.id, float(delay if delay is not None else cfg.retry_delay)))
    return acked, retried, dead


def check_message(body: Any, content_type: Any, delay: Any, default_delay: int | None) -> store.Outgoing:
    """A producer's message, checked as Cloudflare checks it."""
    if not isinstance(body, bytes):
        raise BindingError("a message body must arrive encoded", "TypeError")
    if content_type not in store.CONTENT_TYPES:
        raise BindingError(f"Unknown content type {content_type!r}: use one of "
                           f"{', '.join(store.CONTENT_TYPES)}", "TypeError")
    if len(body) > store.MAX_MESSAGE_BYTES:
        raise BindingError(f"Queue send failed: message too large ({len(body)} bytes; the limit "
                           f"is {store.MAX_MESSAGE_BYTES})")
    _check_decodes(body, content_type)
    if delay is None:
        delay = default_delay or 0
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= store.MAX_DELAY_S:
        raise BindingError(f"delaySeconds must be a number between 0 and {store.MAX_DELAY_S}, "
                           f"got {delay!r}", "RangeError")
    return store.Outgoing(body, content_type, float(delay))


def _check_decodes(body: bytes, content_type: str) -> None:
    """Refuse a ``"v8"`` or ``"json"`` body its consumer cannot decode.

    The SDK encodes bodies itself, but a child is not trusted to have run
    it: a body that is not what its content type says failed the consumer's
    whole batch as it was built, before the handler ran, so every message
    delivered beside it was retried and dead-lettered (dropped) with it.
    Nesting is held to :data:`MAX_BODY_DEPTH`, far below what any decoder
    manages: "what this decode managed" let through bodies that the
    consumer's decode, deeper in its stack, could not."""
    try:
        if content_type == "v8":
            value = msgspec.msgpack.decode(body)
        elif content_type == "json":
            value = json.loads(body)
        else:
            return
    except ValueError:  # msgspec.DecodeError and JSONDecodeError are ValueErrors
        raise BindingError(f'Queue send failed: the message body is not valid "{content_type}" '
                           "data", "TypeError") from None
    except RecursionError:
        value = None
    else:
        if not deeper_than(value, MAX_BODY_DEPTH):
            return
    raise BindingError(f"Queue send failed: the message body is nested more than {MAX_BODY_DEPTH} "
                       "levels deep", "RangeError")
