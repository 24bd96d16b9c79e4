"""Where trace events go besides the log: tail workers and live tails.

**Tail workers.** A script's ``tail_consumers`` name platform scripts whose
``tail(self, events)`` handler receives its trace events in batches. Each
consumer has a bounded queue and one delivery task in the supervisor's
nursery: it takes what accumulated (up to a batch), invokes the consumer
with a :class:`~protocol.messages.TailEvent`, waits for its handler to
return (at most ``tail_timeout_s``, also the invocation's wall limit), then
the next batch. A slow, failing or hanging tail worker only fills its own
queue; past the bound, events are dropped and counted. Nothing here is
awaited by a request.

**Live tails.** ``GET /tail`` on the admin socket subscribes with filters;
each subscriber has a bounded buffer, filled without waiting. One that falls
behind (stops reading) is disconnected, so a stalled reader costs at most
its buffer.
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from protocol.framing import MAX_FRAME_TO_CHILD
from protocol.messages import Limits, TailEvent
from supervisor.edge.client_ip import parse_address
from supervisor.errors import Invalid, Unavailable
from supervisor.lifecycle import Outcome
from supervisor.log import log, warn
from supervisor.model import PLATFORM, ScriptRecord
from supervisor.observability.log_lines import log_text
from supervisor.observability.traces import REDACTED, is_secret_header

if TYPE_CHECKING:
    from supervisor.config import ObservabilityConfig
    from supervisor.edge.http_server import Connection
    from supervisor.observability.metrics import Metrics
    from supervisor.pool.invocation import Invocation
    from supervisor.pool.pool import Pool

#: Distinct tail consumers with a queue at once (each is a platform script).
MAX_CONSUMERS = 256
#: One event alone past this cannot travel at all: it is dropped and counted.
#: (A batch is one frame to the tail worker's child, which refuses a frame
#: past MAX_FRAME_TO_CHILD and with it the channel: every later batch then
#: waited out ``tail_timeout_s`` and failed. Batches are bounded by
#: ``tail_batch_bytes`` as well as by ``tail_batch_events``.)
MAX_EVENT_BYTES = MAX_FRAME_TO_CHILD - 1024 * 1024
#: Encoded bytes queued per consumer at most; past it, events are dropped and
#: counted, as past ``tail_queue_events`` (a few big events are a lot of memory).
MAX_QUEUED_BYTES = 64 * 1024 * 1024
_SIZER = msgspec.msgpack.Encoder()
#: Drop warnings are logged at most this often per consumer.
DROP_WARN_EVERY_S = 10.0


class _Consumer:
    __slots__ = ("name", "queue", "queued_bytes", "wake", "dropped", "warned_at")

    def __init__(self, name: str) -> None:
        self.name = name
        #: Events and their encoded sizes, oldest first.
        self.queue: deque[tuple[dict[str, Any], int]] = deque()
        self.queued_bytes = 0
        self.wake = trio.Event()
        self.dropped = 0
        self.warned_at = -DROP_WARN_EVERY_S


class TailDelivery:
    """Batches of trace events to tail workers, off the request path."""

    def __init__(self, pool: Pool, lookup: Callable[[str, str], ScriptRecord | None],
                 limits_for: Callable[[ScriptRecord], Limits], config: ObservabilityConfig,
                 metrics: Metrics, on_invocation: Callable[[Invocation], None]) -> None:
        self.pool = pool
        self.lookup = lookup
        self.limits_for = limits_for
        self.config = config
        self.metrics = metrics
        self.on_invocation = on_invocation
        self.consumers: dict[str, _Consumer] = {}
        self._nursery: trio.Nursery | None = None
        #: Batches handed to a tail worker and not yet answered.
        self._delivering = 0

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    @property
    def pending(self) -> bool:
        """Whether events wait for, or are with, a tail worker: a stop waits
        for them (its drain), as it waits for the requests they trace."""
        return self._delivering > 0 or any(consumer.queue for consumer in self.consumers.values())

    def submit(self, consumers: list[str], event: dict[str, Any]) -> None:
        """Queue ``event`` for each consumer; never waits."""
        try:
            size = len(_SIZER.encode(event))
        except (TypeError, ValueError, OverflowError) as exc:  # not plain data: a bug, not the tenant's
            warn("tail.unencodable", reason=f"{type(exc).__name__}: {exc}")
            size = MAX_EVENT_BYTES + 1
        for name in consumers:
            consumer = self.consumers.get(name)
            if consumer is None:
                if self._nursery is None or len(self.consumers) >= MAX_CONSUMERS:
                    self._drop(None, "no_room")
                    continue
                consumer = self.consumers[name] = _Consumer(name)
                self._nursery.start_soon(self._deliver, consumer)
            if size > MAX_EVENT_BYTES:
                self._drop(consumer, "too_large")
                continue
            if len(consumer.queue) >= self.config.tail_queue_events \
                    or consumer.queued_bytes + size > MAX_QUEUED_BYTES:
                self._drop(consumer, "queue_full")
                continue
            consumer.queue.append((event, size))
            consumer.queued_bytes += size
            consumer.wake.set()

    def _drop(self, consumer: _Consumer | None, reason: str, count: int = 1) -> None:
        self.metrics.tail_events.labels(f"dropped_{reason}").inc(count)
        if consumer is None:
            return
        consumer.dropped += count
        now = trio.current_time()
        if now - consumer.warned_at >= DROP_WARN_EVERY_S:
            consumer.warned_at = now
            warn("tail.dropped", consumer=consumer.name, reason=reason, dropped_total=consumer.dropped,
                 queued=len(consumer.queue))

    async def _deliver(self, consumer: _Consumer) -> None:
        linger = self.config.tail_batch_wait_ms / 1000.0
        while True:
            await consumer.wake.wait()
            consumer.wake = trio.Event()
            if linger > 0:
                await trio.sleep(linger)  # let a batch gather
            while consumer.queue:
                self._delivering += 1
                try:
                    await self._invoke(consumer, self._next_batch(consumer))
                finally:
                    self._delivering -= 1

    def _next_batch(self, consumer: _Consumer) -> list[dict[str, Any]]:
        """The oldest events, at most ``tail_batch_events`` of them and
        ``tail_batch_bytes`` (one, whatever its size, if it is bigger)."""
        queue, batch, taken = consumer.queue, [], 0
        most, budget = self.config.tail_batch_events, self.config.tail_batch_bytes
        while queue and len(batch) < most and (not batch or taken + queue[0][1] <= budget):
            event, size = queue.popleft()
            batch.append(event)
            taken += size
        consumer.queued_bytes -= taken
        return batch

    async def _invoke(self, consumer: _Consumer, batch: list[dict[str, Any]]) -> None:
        from supervisor.pool.pool import PoolUnavailable

        record = self.lookup(PLATFORM, consumer.name)
        if record is None:
            self._drop(consumer, "no_consumer", len(batch))
            return
        timeout = self.config.tail_timeout_s
        limits = self.limits_for(record)
        wall = timeout * 1000.0 if limits.wall_ms is None else min(limits.wall_ms, timeout * 1000.0)
        limits = msgspec.structs.replace(limits, wall_ms=wall)
        inv = None
        with trio.move_on_after(timeout + 1.0):
            try:
                inv = await self.pool.invoke(record, b"POST", f"http://{record.name}/", [], None, limits,
                                             event=TailEvent(batch))
            except PoolUnavailable:
                self._drop(consumer, "unavailable", len(batch))
                return
            inv.on_done = self.on_invocation
            await inv.head_ready.wait()
        if inv is None:
            self._drop(consumer, "unavailable", len(batch))
            return
        if not inv.has_head:
            inv.cancel(Outcome.EXCEEDED_WALL_TIME)
        if inv.body is not None:
            inv.body.close()
        self.metrics.tail_batches.labels(inv.outcome).inc()
        self.metrics.tail_events.labels("delivered" if inv.outcome == Outcome.OK else "failed").inc(len(batch))


# ---------------------------------------------------------------------------
# live tails
# ---------------------------------------------------------------------------


#: What ``outcome=`` may name.
_OUTCOMES = frozenset(outcome.value for outcome in Outcome)
#: The outcomes ``status=error`` stands for: wrangler turns ``--status error``
#: into an outcome filter of every failing outcome it knows (exception,
#: exceededCpu, exceededMemory, unknown); Corral's own failing outcomes
#: (exceededWallTime, exceededSubrequests, scriptNotFound) fail as much.
_ERROR_OUTCOMES = _OUTCOMES - {Outcome.OK.value, Outcome.CANCELED.value}
#: ``status=`` words, as wrangler's ``--status`` takes them, and the outcomes each is.
_STATUS_WORDS: dict[str, frozenset[str]] = {Outcome.OK.value: frozenset({Outcome.OK.value}),
                                            Outcome.CANCELED.value: frozenset({Outcome.CANCELED.value}),
                                            "error": _ERROR_OUTCOMES}
#: Beside wrangler's words, ``status=`` takes an HTTP status (``404``) or class (``5xx``).
_HTTP_STATUS = re.compile(r"[1-5](?:[0-9][0-9]|xx)")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
#: The request header in which the edge recorded the client's address
#: (:mod:`supervisor.edge.client_ip`), as it does on Cloudflare.
CLIENT_IP_HEADER = "cf-connecting-ip"

Query = Mapping[str, "str | list[str]"]


def _last(query: Query, key: str) -> str | None:
    value = query.get(key)
    if isinstance(value, list):
        return value[-1] if value else None
    return value


def _all(query: Query, *keys: str, split: bool = True) -> list[str]:
    """Every value of a repeatable filter: repeated keys, and (``split``)
    comma-separated lists in one, as ``corral tail`` and scripts send them."""
    out: list[str] = []
    for key in keys:
        value = query.get(key)
        for item in (value if isinstance(value, list) else [value] if value is not None else []):
            parts = item.split(",") if split else [item]
            out.extend(p.strip() for p in parts if p.strip())
    return out


def _split(values: list[str]) -> frozenset[str] | None:
    return frozenset(values) or None


#: The query keys ``GET /tail`` takes; any other is refused, not ignored: a
#: filter the server does not know would otherwise stream every event.
FILTER_KEYS = frozenset({"namespace", "script", "tag", "tags", "outcome", "status", "method",
                         "header", "ip", "search", "sampling_rate", "samplingRate"})


class HeaderWanted(msgspec.Struct, frozen=True):
    """One ``header=`` filter: wrangler's ``--header NAME`` or ``NAME:VALUE``."""

    name: str  # lower case, as trace events record header names
    value: str | None = None


class TailFilter(msgspec.Struct, kw_only=True):
    """What a live tail wants (``wrangler tail``'s filters, and Corral's scope).

    Filters of different kinds must all pass; the values of one repeatable
    kind (``status``, ``method``, ``header``, ``ip``, ``outcome``, ``tag``)
    are alternatives, as wrangler's lists are.
    """

    namespace: str | None = None
    script: str | None = None
    tags: frozenset[str] | None = None
    outcomes: frozenset[str] | None = None
    statuses: frozenset[str] | None = None
    methods: frozenset[str] | None = None
    headers: tuple[HeaderWanted, ...] | None = None
    ips: frozenset[str] | None = None
    search: str | None = None
    sampling_rate: float = 1.0

    @classmethod
    def parse(cls, query: Query) -> TailFilter:
        """``query``: each key's value, or its values when repeated."""
        unknown_keys = sorted(set(query) - FILTER_KEYS)
        if unknown_keys:
            raise Invalid(f"{unknown_keys[0][:40]!r} is not a live tail filter (they are: "
                          f"{', '.join(sorted(FILTER_KEYS))})")
        rate_text = _last(query, "sampling_rate") or _last(query, "samplingRate") or "1"
        try:
            rate = float(rate_text)
        except ValueError:
            raise Invalid(f"sampling_rate must be a number between 0 and 1, got {rate_text[:40]!r}") from None
        if not 0.0 <= rate <= 1.0:
            raise Invalid(f"sampling_rate must be between 0 and 1, got {rate}")
        search = _last(query, "search") or None
        if search is not None and len(search) > 1000:
            raise Invalid("search is longer than 1000 characters")
        methods = _split(_all(query, "method"))
        outcomes = _split(_all(query, "outcome"))
        unknown = sorted((outcomes or frozenset()) - _OUTCOMES)
        if unknown:
            raise Invalid(f"outcome {unknown[0][:40]!r} is not one of {', '.join(sorted(_OUTCOMES))}")
        statuses = _split(_all(query, "status"))
        for status in sorted(statuses or ()):
            if status not in _STATUS_WORDS and not _HTTP_STATUS.fullmatch(status):
                raise Invalid(f"status {status[:40]!r} is not ok, error or canceled (as wrangler's "
                              "--status), nor an HTTP status like 404 or a class like 5xx")
        return cls(namespace=_last(query, "namespace") or None, script=_last(query, "script") or None,
                   tags=_split(_all(query, "tag", "tags")),
                   outcomes=outcomes, statuses=statuses,
                   methods=frozenset(m.upper() for m in methods) if methods else None,
                   headers=_parse_headers(_all(query, "header", split=False)),
                   ips=_parse_ips(_all(query, "ip")),
                   search=search, sampling_rate=rate)

    def _in_scope(self, event: dict[str, Any]) -> bool:
        if self.namespace is not None and event.get("dispatchNamespace") != self.namespace:
            return False
        if self.script is not None and event.get("scriptName") != self.script:
            return False
        if self.tags is not None and not self.tags.intersection(event.get("scriptTags") or ()):
            return False
        return True

    def select(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of a tree this tail receives: the top-most ones in scope
        (a user worker's own, or a dispatcher's with its user workers nested)
        that pass the other filters."""
        found: list[dict[str, Any]] = []
        pending = [event]
        while pending:
            node = pending.pop()
            if self._in_scope(node):
                found.append(node)
            else:
                pending.extend(node.get("children") or ())
        return [e for e in found if self._passes(e)]

    def _passes(self, event: dict[str, Any]) -> bool:
        if self.outcomes is not None and not self._has_outcome(event):
            return False
        info = event.get("event") or {}
        request = info.get("request") if isinstance(info, dict) else None
        if self.methods is not None and (not request or request.get("method", "").upper() not in self.methods):
            return False
        if self.statuses is not None and not self._status_ok(event, info):
            return False
        if self.headers is not None and not self._has_header(request):
            return False
        if self.ips is not None and not self._from_ip(request):
            return False
        if self.search is not None and not self._found(event):
            return False
        return self.sampling_rate >= 1.0 or random.random() < self.sampling_rate

    def _has_outcome(self, event: dict[str, Any], wanted: frozenset[str] | None = None) -> bool:
        """The event's outcome, or one of its children's, is wanted: a user
        worker's exception shows in a dispatcher's tail though the
        dispatcher caught it and answered (as ``search`` looks into children)."""
        wanted = self.outcomes if wanted is None else wanted
        return event.get("outcome") in (wanted or ()) or any(
            self._has_outcome(child, wanted) for child in event.get("children") or ())

    def _status_ok(self, event: dict[str, Any], info: Any) -> bool:
        response = info.get("response") if isinstance(info, dict) else None
        status = response.get("status") if isinstance(response, dict) else None
        outcome = event.get("outcome")
        if status is None and isinstance(info, dict) and "request" in info \
                and outcome not in (Outcome.OK, Outcome.CANCELED):
            # A handler that threw has no response in its event; its client
            # was answered 500 (``status=5xx`` finds it, as ``error`` does).
            status = 500
        for want in self.statuses or ():
            # A status word is an outcome filter, as wrangler translates it
            # (and as ``outcome=`` does, it looks into the children too).
            words = _STATUS_WORDS.get(want)
            if words is not None:
                if self._has_outcome(event, words):
                    return True
                continue
            if status is not None and (want == str(status) or (
                    len(want) == 3 and want.endswith("xx") and want[0] == str(status)[0])):
                return True
        return False

    def _has_header(self, request: Any) -> bool:
        """The request has one of the wanted headers (with the value, if one
        is given: the whole recorded value, or one of the values a repeated
        header's are joined from)."""
        headers = request.get("headers") if isinstance(request, dict) else None
        if not isinstance(headers, dict):
            return False
        for want in self.headers or ():
            value = headers.get(want.name)
            if value is None:
                continue
            if want.value is None or want.value == value or want.value in (
                    v.strip() for v in str(value).split(",")):
                return True
        return False

    def _from_ip(self, request: Any) -> bool:
        headers = request.get("headers") if isinstance(request, dict) else None
        if not isinstance(headers, dict):
            return False
        address = parse_address(str(headers.get(CLIENT_IP_HEADER) or ""))
        return address is not None and str(address) in (self.ips or ())

    def _found(self, event: dict[str, Any]) -> bool:
        needle = self.search or ""
        for line in event.get("logs") or ():
            if needle in log_text(line.get("message") or []):
                return True
        for exc in event.get("exceptions") or ():
            if needle in str(exc.get("message", "")) or needle in str(exc.get("name", "")):
                return True
        request = ((event.get("event") or {}).get("request") or {})
        if needle in str(request.get("url", "")):
            return True
        return any(self._found(child) for child in event.get("children") or ())


def _parse_headers(values: list[str]) -> tuple[HeaderWanted, ...] | None:
    """``NAME`` or ``NAME:VALUE`` each, split at the first colon (a value may
    hold more), both trimmed, as wrangler's ``--header`` parses them."""
    out: list[HeaderWanted] = []
    for text in values:
        name, colon, value = text.partition(":")
        name, value = name.strip().lower(), value.strip()
        if not _HEADER_NAME.fullmatch(name):
            raise Invalid(f"header {text[:60]!r} is not NAME or NAME:VALUE with NAME a header name")
        if colon and is_secret_header(name):
            raise Invalid(f"header {name!r} is a credential: trace events keep its value as "
                          f"{REDACTED}, so a filter on its value would match nothing (filter on the "
                          "name alone)")
        out.append(HeaderWanted(name, value if colon else None))
    return tuple(out) or None


def _parse_ips(values: list[str]) -> frozenset[str] | None:
    out: set[str] = set()
    for text in values:
        if text == "self":
            raise Invalid("ip 'self' means the tail client's own address, which a client of the admin "
                          "unix socket has none of: name the address instead")
        address = parse_address(text)
        if address is None:
            raise Invalid(f"ip {text[:60]!r} is not an IP address")
        out.add(str(address))
    return frozenset(out) or None


class Subscriber:
    __slots__ = ("filter", "send", "receive", "scope", "dropped")

    def __init__(self, filter: TailFilter, buffer: int) -> None:
        self.filter = filter
        self.send, self.receive = trio.open_memory_channel[bytes](buffer)
        self.scope = trio.CancelScope()
        self.dropped = False


_encoder = msgspec.json.Encoder()


class LiveTail:
    """The live tails connected now; :meth:`publish` never waits."""

    def __init__(self, config: ObservabilityConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.subscribers: set[Subscriber] = set()
        #: Called when the first subscriber arrives (exact CPU accounting).
        self.on_first: Callable[[], None] | None = None

    @property
    def active(self) -> bool:
        return bool(self.subscribers)

    def subscribe(self, filter: TailFilter) -> Subscriber:
        if len(self.subscribers) >= self.config.max_live_tails:
            raise Unavailable(f"{len(self.subscribers)} live tails are connected, the most allowed "
                              "(observability.max_live_tails)")
        sub = Subscriber(filter, self.config.live_tail_buffer)
        self.subscribers.add(sub)
        if self.on_first is not None:
            self.on_first()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        sub.send.close()

    def publish(self, event: dict[str, Any]) -> None:
        for sub in list(self.subscribers):
            for selected in sub.filter.select(event):
                try:
                    sub.send.send_nowait(_encoder.encode(selected) + b"\n")
                except trio.WouldBlock:
                    self._drop(sub)
                    break
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break

    def _drop(self, sub: Subscriber) -> None:
        """A subscriber that stopped reading: disconnected, its buffer freed."""
        sub.dropped = True
        self.subscribers.discard(sub)
        self.metrics.live_tails_dropped.inc()
        self.metrics.live_events_dropped.inc(sub.send.statistics().current_buffer_used + 1)
        sub.scope.cancel()
        warn("tail.live_dropped", reason="the reader fell behind", buffer=self.config.live_tail_buffer)

    async def serve(self, query: Query, conn: Connection) -> None:
        """Stream events to one ``GET /tail`` until the client leaves or lags."""
        from supervisor.edge.http_server import ClientGone

        sub = self.subscribe(TailFilter.parse(query))
        log("tail.live_connected", filters=msgspec.to_builtins(sub.filter), tails=len(self.subscribers))
        try:
            await conn.start(200, [(b"content-type", b"application/x-ndjson"),
                                   (b"cache-control", b"no-store")])
            with sub.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_watch_close, conn, nursery.cancel_scope)
                    async for line in sub.receive:
                        await conn.send_data(line)
        finally:
            self.unsubscribe(sub)
            log("tail.live_disconnected", dropped=sub.dropped, tails=len(self.subscribers))
        # Dropped, gone, or the server stopping: no clean end; the connection closes.
        raise ClientGone("live tail ended")


async def _watch_close(conn: Connection, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when the client closes its end (it sends nothing else)."""
    await conn.wait_peer_closed()
    scope.cancel()
