"""One event delivered to one child, as the supervisor tracks it.

An :class:`Invocation` is created when the supervisor sends ``Invoke`` and
lives until the child says ``InvokeDone`` (or dies). It collects what the
trace event needs (outcome, logs, exceptions, CPU and wall time, child
invocations) and what the caller waits for: the response head, then the body.

Outcomes are :class:`supervisor.lifecycle.Outcome` (Cloudflare's names).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from protocol.messages import Cancel, ExceptionInfo, Header, Limits
from supervisor import loop_clock
from supervisor.lifecycle import LIMIT_OUTCOMES, OUTCOME_MESSAGE, Outcome
from supervisor.limits.cpu_account import PRECISE_BELOW_NS
from supervisor.model import ScriptRecord
from supervisor.pool.bodies import BodyError, BodySource, BytesBody, ChildLink, body_length

if TYPE_CHECKING:
    from supervisor.limits.open_connections import OpenConnections

_OK = Outcome.OK
_EXCEPTION = Outcome.EXCEPTION
_CRASHED = Outcome.CRASHED
_CANCELED = Outcome.CANCELED
_WALL = Outcome.EXCEEDED_WALL_TIME
#: Statuses whose response has no body (a WebSocket's 101 among them).
_NO_BODY_STATUSES = frozenset({101, 204, 205, 304})
#: Fetch and binding-call records kept per invocation for its spans.
MAX_SPANS = 100


#: Why a child was killed for CPU it used outside any invocation.
BACKGROUND_CPU_MESSAGE = ("Worker exceeded CPU time limit: a task left running after its "
                          "response used more than the background allowance.")


#: What one invocation's trace keeps of its logs and exceptions, whatever
#: the child sends (its own budget is the same; a hostile child skips it).
MAX_LOG_LINES = 1000
MAX_LOG_BYTES = 256 * 1024
MAX_EXCEPTIONS = 100
LOG_LEVELS = frozenset({"debug", "info", "log", "warn", "error"})


class Outbound:
    """Where a user worker's ``fetch`` goes: an outbound worker and its params."""

    __slots__ = ("service", "params")

    def __init__(self, service: str, params: dict[str, Any]) -> None:
        self.service = service
        self.params = params


class Invocation:
    __slots__ = (
        "id", "child", "record", "method", "url", "headers", "limits", "parent", "outbound",
        "params", "_head_event", "_done_event", "status", "status_text", "response_headers", "body",
        "error", "outcome", "logs", "exceptions", "cpu_ns", "cpu_budget_ns", "started", "ended",
        "event_ts", "subrequests", "children", "calls", "call_scopes", "deadline", "on_head",
        "on_done", "response_end", "linger_cut", "log_bytes", "truncated", "depth", "request_id", "event",
        "fetches", "settled", "cpu_settled", "has_head", "is_done", "held_s", "connections",
        "cancel_by", "object_call", "rpc",
    )

    def __init__(self, id: int, child: ChildLink, record: ScriptRecord, method: bytes,
                 url: str, headers: list[Header], limits: Limits,
                 parent: Invocation | None = None, outbound: Outbound | None = None,
                 params: dict[str, Any] | None = None) -> None:
        self.id = id
        self.child = child
        self.record = record
        self.method = method
        self.url = url
        self.headers = headers
        self.limits = limits
        self.parent = parent
        self.outbound = outbound
        self.params = params
        #: The events behind :attr:`head_ready` and :attr:`done`, made only
        #: when someone waits: most invocations are answered through
        #: ``on_head`` and never waited on this way.
        self._head_event: trio.Event | None = None
        self._done_event: trio.Event | None = None
        #: ``head_ready.is_set()`` and ``done.is_set()`` as plain attributes:
        #: the request path asks a dozen times per request, and each
        #: ``is_set()`` is a Python call (the events are for waiting).
        self.has_head = False
        self.is_done = False
        self.status = 0
        #: The worker's own reason phrase; "" for the status's standard one.
        self.status_text = ""
        self.response_headers: list[Header] = []
        self.body: BodySource | None = None
        self.error: ExceptionInfo | None = None
        self.outcome: Outcome = _OK
        self.logs: list[dict[str, Any]] = []
        self.exceptions: list[dict[str, Any]] = []
        self.cpu_ns = 0
        #: False from its end until the CPU account has read its last share
        #: (see supervisor.limits.cpu_account): its trace waits for that.
        self.cpu_settled = True
        self.cpu_budget_ns = int((limits.cpu_ms or 0) * 1_000_000)
        self.started = time.monotonic()
        self.ended = 0.0
        #: Seconds news its child waited on was held back (ChildProcess.defer):
        #: not its wall time.
        self.held_s = 0.0
        #: Its outbound connections open and in line (supervisor.limits.open_connections),
        #: made at its first fetch.
        self.connections: OpenConnections | None = None
        self.event_ts = time.time() * 1000.0
        self.subrequests = 0
        #: The functions it sent or may call over RPC (supervisor.pool.rpc_stubs), when any crossed.
        self.rpc: Any = None
        self.children: list[Invocation] = []
        self.calls: set[int] = set()
        self.call_scopes: set[trio.CancelScope] = set()
        self.deadline = loop_clock.CLOCK.get()() + (limits.wall_ms or 0) / 1000.0 if limits.wall_ms else float("inf")
        #: Called once the head is ready (a call answers its caller without a task).
        self.on_head: Callable[[Invocation], None] | None = None
        #: Called once the invocation is over (the trace event is complete).
        self.on_done: Callable[[Invocation], None] | None = None
        #: trio time the response was complete (head and body, or a failure);
        #: the ``waitUntil`` deadline counts from here. None while it is not.
        self.response_end: float | None = None
        #: trio time by which the child must have ended its ``waitUntil`` work
        #: after being told to (0: not told yet).
        self.linger_cut = 0.0
        #: When a Cancel for the handler was sent and not yet heard (InvokeFailed):
        #: past it, the child is stuck (see Pool._cpu_watchdog). 0: none pending.
        self.cancel_by = 0.0
        self.log_bytes = 0
        #: Some of its logs or exceptions were cut or dropped at the limits
        #: (the child's or ours): the trace event's ``truncated``, so that a
        #: consumer knows it does not see everything.
        self.truncated = False
        #: Workers above this one in its request chain.
        self.depth = 0
        #: The request id of the client request this belongs to (edge-assigned).
        self.request_id = ""
        #: What it delivers when not an HTTP request (protocol.messages.Event).
        self.event: Any = None
        #: Outbound fetches and binding calls it made, for OpenTelemetry
        #: spans (see :meth:`add_span`); None until the first.
        self.fetches: list[dict[str, Any]] | None = None
        #: A queue consumer's ack/retry decisions (protocol.messages.QueueSettled).
        self.settled: Any = None
        #: Its last Durable Object call's delivery (supervisor.bindings.Bindings.handle: E-order).
        self.object_call: Any = None
        if parent is not None:
            parent.children.append(self)
            self.depth = parent.depth + 1
            self.request_id = parent.request_id

    @property
    def head_ready(self) -> trio.Event:
        """Set once the response head is here (or the invocation failed)."""
        event = self._head_event
        if event is None:
            event = self._head_event = trio.Event()
            if self.has_head:
                event.set()
        return event

    @property
    def done(self) -> trio.Event:
        """Set once the child is done with the invocation."""
        event = self._done_event
        if event is None:
            event = self._done_event = trio.Event()
            if self.is_done:
                event.set()
        return event

    # -- from the child ------------------------------------------------------
    def respond(self, status: int, headers: list[Header], body: BodySource | None,
                streaming: bool = False, status_text: str = "") -> bool:
        """The head is here; ``streaming`` if the child still sends the body."""
        if self.has_head:
            if body is not None:
                body.close()
            return False
        self.status = status
        self.status_text = status_text
        self.response_headers = headers
        self.body = body
        if not streaming:
            self.response_end = loop_clock.CLOCK.get()()
        self._head()
        return True

    def handed_on(self, body: BodySource) -> tuple[BodySource, bool]:
        """A body for its response that came from elsewhere (its request's,
        a call's response), handed on unread, and whether the response is
        still streaming. Its wall limit still applies to the bytes, however
        far they travel (the wrapper tells their end); without one, the
        response is over as far as this invocation is concerned."""
        if self.deadline != float("inf"):
            return WallLimitedBody(body, self), True
        return body, False

    def answer_tail_call(self, status: int, headers: list[Header], body: BodySource | None,
                         status_text: str = "") -> bool:
        """A call it made in tail position (``SubRequest.tail``) has its
        head: answer with it now, as the child would once it had returned it
        (sandbox.tail_call). Not for an event other than an HTTP request (its
        answer is not a response), a WebSocket (its socket's events have to
        be told where to go), a status that has no body (the child's
        ``Response`` drops any it came with), or once answered."""
        if self.has_head or self.event is not None or status in _NO_BODY_STATUSES:
            return False
        streaming = False
        if body is not None and type(body) is not BytesBody:  # bytes in hand are sent as they are
            body, streaming = self.handed_on(body)
        return self.respond(status, headers, body, streaming, status_text)

    def response_finished(self) -> None:
        """The response body ended (completely or not)."""
        if self.response_end is None:
            self.response_end = loop_clock.CLOCK.get()()
            self._complete()

    def _head(self) -> None:
        self.has_head = True
        if self.rpc is not None:  # an RPC call's result (or failure): its argument stubs are done
            self.rpc.returned_from_call()
        if self._head_event is not None:
            self._head_event.set()
        if self.on_head is not None:
            callback, self.on_head = self.on_head, None
            callback(self)

    def fail(self, error: ExceptionInfo, outcome: Outcome | None = None) -> None:
        """The invocation ends without (or with a broken) response."""
        if outcome is None:
            outcome = Outcome.EXCEEDED_MEMORY if error.name == "MemoryError" else (
                _CANCELED if error.name == "Canceled" else _EXCEPTION)
        if self.outcome == _OK or outcome in LIMIT_OUTCOMES:
            self.outcome = outcome
        if outcome == _EXCEPTION or outcome == _CRASHED:
            self.report(error)
        if not self.has_head:
            self.error = error
            self.response_end = loop_clock.CLOCK.get()()
            self._head()

    def finish(self) -> None:
        if not self.is_done:
            self.ended = time.monotonic()
            for scope in self.call_scopes:
                scope.cancel()
            for callee in self.children:
                if not callee.has_head:
                    callee.cancel(_CANCELED)
            self.is_done = True
            if self.rpc is not None:
                self.rpc.end()  # its stubs are disposed, its functions let go
            if self._done_event is not None:
                self._done_event.set()
            self._complete()

    def _complete(self) -> None:
        """Hand the trace on once this invocation, its response body and all
        it called are over (a callee's ``waitUntil`` or body may outlast its
        caller)."""
        complete = self.complete
        if self.on_done is not None and complete:
            callback, self.on_done = self.on_done, None
            self.child.later(callback, self)  # no answer waits for a trace
        parent = self.parent
        if parent is not None and self.is_done and self.response_end is not None:
            if complete:
                # Nothing of ours can change the caller any more: dropping the
                # link breaks the caller <-> callee cycle, so both are freed by
                # reference counting, not left to the cycle collector (which,
                # at a few thousand requests a second, was ~10% of the CPU).
                self.parent = None
            parent._complete()

    def cpu_final(self) -> None:
        """The CPU account has charged its last share: the trace may go, and
        its callers' budgets pay for it (:meth:`callee_spent`)."""
        self.cpu_settled = True
        parent = self.parent
        if parent is not None and self.cpu_ns:
            parent.callee_spent(self.cpu_ns)
        self._complete()

    def callee_spent(self, cpu_ns: int) -> None:
        """Something it called used ``cpu_ns`` of CPU.

        Cloudflare: workers connected by service bindings share the CPU of
        the top-level request. A call gets what its caller has left
        (``calls._within``), and what it used comes off the caller's budget,
        and off every budget above: ten calls one after another can no
        longer each spend a whole ``cpuMs`` (audit F3). A caller whose budget
        its callees spent is stopped as over it. Calls running at once each
        start with what was left when they began; their CPU is charged as
        each ends.
        """
        inv: Invocation | None = self
        while inv is not None:
            if inv.cpu_budget_ns:
                inv.cpu_budget_ns = max(1, inv.cpu_budget_ns - cpu_ns)
                if inv.cpu_budget_ns < PRECISE_BELOW_NS and not inv.is_done:
                    inv.child.cpu_budget_shrank(inv)
            inv = inv.parent

    @property
    def complete(self) -> bool:
        """Over, response body included, CPU charged, and so is everything it called."""
        if not self.is_done or self.response_end is None or not self.cpu_settled:
            return False
        for callee in self.children:  # a loop: a generator per check cost more than the check
            if not callee.complete:
                return False
        return True

    def log(self, level: str, message: str, ts: float, cut: bool = False, args: bool = False) -> None:
        """One log line, within the invocation's budget (``cut``: the child
        cut it, or dropped lines before it, at its own; ``args``: ``message``
        is a console call's arguments as JSON, kept as text here and decoded
        only when a trace is built: see traces.logs_of).

        The child keeps the same budget for well-behaved tenants; this is the
        one a hostile child cannot skip by sending frames of its own.
        """
        if cut:
            self.truncated = True
        if len(self.logs) >= MAX_LOG_LINES or self.log_bytes >= MAX_LOG_BYTES:
            self.truncated = True
            return
        message = str(message)
        if len(message) > MAX_LOG_BYTES - self.log_bytes:
            self.truncated = True
            message = message[: MAX_LOG_BYTES - self.log_bytes]
        self.log_bytes += len(message)
        level = level if level in LOG_LEVELS else "log"
        self.logs.append({"message": message if args else [message], "level": level, "timestamp": float(ts)})

    def report(self, error: ExceptionInfo) -> None:
        if len(self.exceptions) >= MAX_EXCEPTIONS:
            self.truncated = True
            return
        name, message, stack = str(error.name), str(error.message), str(error.stack)
        if len(name) > 200 or len(message) > 4096 or len(stack) > 8192:
            self.truncated = True
        self.exceptions.append({"name": name[:200], "message": message[:4096],
                                "timestamp": time.time() * 1000.0, "stack": stack[:8192]})

    # -- from the caller -------------------------------------------------------
    def add_span(self, span: dict[str, Any]) -> dict[str, Any]:
        """Keep ``span`` (a fetch's or a binding call's record, filled in as
        it goes) for this invocation's trace, up to :data:`MAX_SPANS`."""
        if self.fetches is None:
            self.fetches = []
        if len(self.fetches) < MAX_SPANS:
            self.fetches.append(span)
        return span

    async def wait_head(self) -> None:
        """Wait for the response head; at the wall-time limit, end the invocation.

        Afterwards the head is always there: the child's answer, or the
        limit's error in :attr:`error`.
        """
        with trio.move_on_at(self.deadline):
            await self.head_ready.wait()
        if not self.has_head:
            self.cancel(_WALL)

    def cancel(self, outcome: Outcome) -> None:
        """Stop the invocation (wall time, client gone); the child is told.

        Also after the child is done with it, while its response body (passed
        on by reference) still streams: the outcome is still this one's.
        """
        if self.is_done and self.response_end is not None:
            return
        self.fail(ExceptionInfo(outcome, OUTCOME_MESSAGE.get(outcome, outcome)), outcome)
        if not self.is_done:
            self.child.send(Cancel(self.id))

    def response_abandoned(self) -> None:
        """The client left (or the edge gave up) while the response body
        streamed: canceled, also once the child is done with it (a body it
        handed on has no more use for :meth:`cancel`, but its trace is still
        to go), and so is every callee whose body is still on its way, the
        one it handed on included (through a dispatcher both said "ok", and
        the user worker's stream ran on unread)."""
        if self.is_done and self.response_end is not None:
            self.fail(ExceptionInfo(_CANCELED, OUTCOME_MESSAGE[_CANCELED]), _CANCELED)
        else:
            self.cancel(_CANCELED)
        for callee in self.children:
            if callee.has_head and callee.response_end is None:
                callee.response_abandoned()

    def cut_response(self) -> None:
        """The wall limit passed while the body streams: end it, broken."""
        self.cancel(_WALL)
        self.response_finished()
        stream = self.child.incoming.pop(self.id, None)
        if stream is not None:
            stream.fail(OUTCOME_MESSAGE[_WALL])

    def end_lingering(self, grace_s: float) -> None:
        """The ``waitUntil`` deadline passed: the child must stop that work now."""
        self.linger_cut = trio.current_time() + grace_s
        self.child.send(Cancel(self.id))

    @property
    def wall_ms(self) -> float:
        end = self.ended or time.monotonic()
        return (end - self.started - self.held_s) * 1000.0


class WallLimitedBody:
    """A body an invocation passes on by reference, read within its wall limit.

    The bytes come from elsewhere (the invocation's request, a subrequest's
    response), but they are this invocation's response: its limit applies to
    them however far they travel.
    """

    __slots__ = ("_source", "_inv")

    def __init__(self, source: BodySource, inv: Invocation) -> None:
        self._source = source
        self._inv = inv

    @property
    def length(self) -> int | None:
        """The source's length: handing a body on keeps it (see body_length)."""
        return body_length(self._source)

    async def receive(self) -> bytes:
        with trio.move_on_at(self._inv.deadline):
            chunk = await self._source.receive()
            if not chunk:
                self._inv.response_finished()
            return chunk
        self._source.close()
        self._inv.cancel(_WALL)
        self._inv.response_finished()
        raise BodyError(OUTCOME_MESSAGE[_WALL])

    def close(self) -> None:
        self._source.close()
        self._inv.response_finished()
