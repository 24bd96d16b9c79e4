"""The supervisor's handle on one sandboxed child.

Owns the channel (a non-blocking unix socket used directly: read when the
pool's :class:`~supervisor.pool.channel_hub.ChannelHub` finds it readable,
frames handled synchronously as they are decoded, sends written straight to
the socket and only buffered on a short write), the child's pidfd (kill
without pid-reuse races) and its CPU meter.

A child that breaks the protocol (bad frame, wrong version, a response to an
invocation it was never given, bytes beyond its credit) is killed and
logged; only its own invocations fail. Nothing a child sends can raise out
of this module into the rest of the supervisor.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec
import trio

from protocol.framing import FrameEncoder, ProtocolError, supervisor_decoder
from protocol.http_grammar import TOKEN_BYTES
from protocol.messages import (
    MAX_CHUNK,
    PROTOCOL_VERSION,
    STREAMED,
    Abort,
    BindingCall,
    BindingResult,
    Body,
    BodyChunk,
    ByRef,
    Credit,
    DurableObjectEvent,
    ExceptionInfo,
    Hello,
    Inline,
    InvokeDone,
    InvokeFailed,
    Load,
    Loaded,
    Log,
    QueueSettled,
    Report,
    ResponseStart,
    Socket,
    SubFailed,
    SubRequest,
    SubResponse,
    WsClose,
    WsConnect,
    WsSend,
)
from supervisor import loop_clock
from supervisor.edge.websockets import MAX_MESSAGE as WS_MAX_MESSAGE
from supervisor.edge.websockets import MAX_SOCKETS, Buffered, SocketSource, SocketState
from supervisor.lifecycle import (
    OUTCOME_MESSAGE,
    ChildEvent,
    ChildState,
    KillReason,
    Outcome,
    allows,
    transition,
)
from supervisor.limits.budget_watch import BudgetWatch
from supervisor.limits.cpu_account import PRECISE_BELOW_NS, CpuAccount
from supervisor.limits.cpu_meter import CpuMeter, MeterFactory
from supervisor.limits.frame_allowance import FrameAllowance
from supervisor.limits.held_calls import HeldCalls, args_size
from supervisor.limits.memory import ChildMemory, Enforcer, has_cap
from supervisor.log import error, log, warn
from supervisor.model import ScriptRecord
from supervisor.pool import rpc_stubs
from supervisor.pool.bodies import BodySource, BytesBody, ChildBody, ChildSink, ProtocolViolation, declare_length
from supervisor.pool.channel_hub import ChannelHub
from supervisor.pool.fork_priority import IDLE_ONLY, ZYGOTE_NICE
from supervisor.pool.invocation import Invocation
from supervisor.queues.store import MAX_DELAY_S

RECV_SIZE = 256 * 1024
_PACK = msgspec.msgpack.Encoder().encode
#: Frames a child's buffer takes in one loop turn before they leave at once
#: (see SendBatch). Under load one turn of the loop handles tens of requests
#: for a few milliseconds; the dispatcher then got 20-27 frames per write at
#: the end of the turn, and sat idle until it came, while the supervisor sat
#: idle as the dispatcher worked through them: with 32 connections on one
#: tenant, req/s rose 14-46% with this bound (toggled on one server between
#: interleaved runs; 2 tenants +3-4%). At 300 tenants, where the box is
#: CPU-bound, the extra wake-ups cost: 11% of req/s in one A/B (the
#: supervisor's and the children's CPU per request +18% and +32%), so the
#: bound holds only after a turn that kept few children busy (SendBatch).
BATCH_MAX_FRAMES = 4
_CAP_SYS_NICE = 23
#: Frames that answer a call the child made. They earn it no frame
#: allowance (supervisor.limits.frame_allowance): each answers a frame it
#: spent, and earning 256 for each, a child that flooded the supervisor with
#: calls refused at once (a binding it does not have) was never throttled:
#: 2.5 million frames in 8 s of one request, 1.8 s of its own CPU, the
#: supervisor's loop busy throughout (another tenant's median latency 0.9 ms
#: -> 5.4 ms, its slowest 13 -> 185 ms).
_ANSWERS = frozenset({SubResponse, SubFailed, BindingResult})
#: What a call's head may hold. The supervisor keeps the whole SubRequest
#: for as long as the call waits, and a frame may be 1 MB: 500 fetches to a
#: server that never answered, each with a 1 MB header, held 520 MB, and as
#: much with 1 MB of outbound parameters (which a plain fetch ignores).
#: Headers: Cloudflare's limit on a request's (128 KB, names and values
#: together); the URL: Cloudflare's (16 KB); the rest of the head (method,
#: binding, target, RPC method, parameters) is a few names and values.
MAX_CALL_HEADER_BYTES = 128 * 1024
MAX_CALL_URL = 16 * 1024
MAX_CALL_REST_BYTES = 64 * 1024
#: Bytes queued for a child (sent by the supervisor, not yet taken by its
#: socket) past which the child is not read until they are down to
#: :data:`OUT_LOW_WATER` (see ``ChildProcess._hold_reading``).
OUT_HIGH_WATER = 4 * 1024 * 1024
OUT_LOW_WATER = 1024 * 1024

#: The one receive buffer of every child's channel. A read is handled to its
#: end before the next read (the decoder copies a partial frame into its own
#: buffer), so sharing is safe. One per
#: child cost a zeroed 256 KiB, resident, per warm tenant.
_RECEIVED = bytearray(RECV_SIZE)
_RECEIVED_VIEW = memoryview(_RECEIVED)

#: The bits of an invocation id that count a child's invocations (see next_invocation_id).
_INVOCATION_COUNT = (1 << 31) - 1

# Hot-path aliases (an Enum member lookup costs more than a global).
_STARTING = ChildState.STARTING
_DEAD = ChildState.DEAD
_RETIRING = ChildState.RETIRING
#: States in which a child holds a script.
_WITH_SCRIPT = frozenset({ChildState.LOADING, ChildState.SERVING, ChildState.RETIRING})


class ChildOwner(Protocol):
    """What a child needs of whoever owns it (the pool), and no more.

    Naming it keeps ``child_process`` from importing the pool (and, through
    it, everything), and says which of the pool's decisions a child's frames
    can trigger.
    """

    #: Children whose CPU budgets the pool's watchdog polls (see cpu_account).
    busy: set[ChildProcess]
    #: Idle children whose background allowance the watchdog will soon guard.
    cooling: set[ChildProcess]
    #: Children holding deferred frames, which the watchdog sends (see ChildProcess.defer).
    deferring: set[ChildProcess]
    #: Children with a kernel-armed budget in flight, looked at as it can run out.
    budgets: BudgetWatch[ChildProcess]
    def cpu_account(self, meter: CpuMeter) -> CpuAccount:
        """The account of a child's CPU, kept with ``meter`` (opened on its pid)."""

    def on_ready(self, child: ChildProcess) -> None:
        """The child said Hello: it can be a spare."""

    def on_idle(self, child: ChildProcess) -> None:
        """An invocation ended; the child may have nothing left in flight."""

    def retire(self, child: ChildProcess) -> None:
        """Take the child out of service now (it is about to be killed)."""

    def on_subrequest(self, child: ChildProcess, message: SubRequest) -> None:
        """The child asks for a call (dispatch, service, fetch)."""

    def on_binding_call(self, child: ChildProcess, message: BindingCall) -> None:
        """The child calls a method of one of its storage bindings."""

    def on_ws_connect(self, child: ChildProcess, message: WsConnect) -> None:
        """The child opens a WebSocket to a server (``new WebSocket(url)``)."""

    def on_loaded(self, child: ChildProcess, seconds: float, failed: bool) -> None:
        """The child loaded its script (a cold start), ``seconds`` after assignment."""

    def on_cancel_heard(self, child: ChildProcess) -> None:
        """A handler the child was told to stop at its wall time ended."""

    def on_cold_start_over(self, child: ChildProcess, caller: Invocation | None = None) -> None:
        """The first invocation after the load is done: the cold start is over.
        ``caller``: the request it served, if another worker called it."""

    def on_background_overrun(self, child: ChildProcess) -> None:
        """The kernel killed the child for CPU it burnt outside any invocation."""

    def on_condemned(self, child: ChildProcess) -> None:
        """The child was given its kill reason: it no longer counts as live."""

    def on_dead(self, child: ChildProcess) -> None:
        """The child is gone; everything it held was failed or released."""


class SendBatch(trio.abc.Instrument):
    """Frames to children leave once per turn of the event loop.

    Under load one turn of trio's loop handles many requests: the client
    requests read in a turn each make an Invoke for the dispatcher, and the
    answers of as many tenants each make a SubResponse for it. A frame is
    appended to its child's buffer and the child put on this batch, and at
    the end of the turn, as trio is about to wait for I/O (an instrument's
    ``before_io_wait``, before the busy poll), each child's frames leave with
    one send: one syscall and one wake-up of that child instead of one per
    frame. A child whose buffer takes :data:`BATCH_MAX_FRAMES` in the turn
    is sent them then, so that it works while the turn goes on, but only if
    the last turn that sent frames gave them to no more children than there
    are CPUs plus one (the dispatcher): when it gave work to more, those keep every
    core busy, and an early send only adds a wake-up and a syscall to each
    (at 300 tenants; at one or two the pipeline waited on the turn). Frames keep
    their order (one buffer per child). While the batch is not installed
    (before the pool runs, after it stopped) a frame is written at once.

    The hook runs inside trio's scheduler, after it decided how long to
    sleep: a task woken there would wait out that sleep. So a child whose
    frames did not all fit in its socket (its writer task takes the rest),
    or whose socket failed (it is killed), is handed to :meth:`_follow_up`
    through ``run_sync_soon``, which makes the coming wait return at once.

    Work that no answer waits for (an invocation's trace, usage and metrics,
    ~10 us a request) is handed to :meth:`later` and runs after the turn's
    frames left, while the children they woke work on them, instead of
    before, on the path of the next request: the CPU account settles an
    invocation when its child's next invocation starts (see
    supervisor.limits.cpu_account), so one request at a time, each request
    carried the previous one's trace between reading it and handing it on.
    """

    __slots__ = ("dirty", "running", "early", "frames", "writes", "_token", "_busy_above",
                 "_later", "_runq")

    def __init__(self) -> None:
        self.dirty: list[ChildProcess] = []
        self.running = False
        #: Whether a child may be sent its frames before the turn ends.
        self.early = True
        #: Children given frames in a turn beyond which the cores are busy.
        self._busy_above = len(os.sched_getaffinity(0)) + 1
        #: Frames queued here, and the sends that carried them (/metrics).
        self.frames = 0
        self.writes = 0
        self._token: trio.lowlevel.TrioToken | None = None
        #: Calls waiting for the end of the turn (:meth:`later`).
        self._later: list[tuple[Callable[[Any], None], Any]] = []
        #: trio's queue of runnable tasks, when reachable (see :meth:`_run_later`).
        self._runq: Any = None

    def install(self) -> None:
        """Start batching (in the pool's task, before any child runs)."""
        self._token = trio.lowlevel.current_trio_token()
        self._runq = _trio_runq()
        trio.lowlevel.add_instrument(self)
        self.running = True

    def uninstall(self) -> None:
        self.running = False
        try:
            trio.lowlevel.remove_instrument(self)
        except KeyError:
            pass
        self.before_io_wait(0)

    def add(self, child: ChildProcess) -> None:
        """``child`` has frames to write: they leave with this turn's others."""
        self.dirty.append(child)

    def later(self, fn: Callable[[Any], None], arg: Any) -> None:
        """``fn(arg)`` once this turn's frames have left (at once while the
        batch is not installed). For work no answer waits for; it must not
        block, and what it raises is logged, not raised."""
        if self.running:
            self._later.append((fn, arg))
        else:
            fn(arg)

    def before_io_wait(self, timeout: float) -> None:
        if self.dirty:
            self._flush()
        if self._later:
            self._run_later(timeout)

    def _run_later(self, timeout: float) -> None:
        """The turn's :meth:`later` calls, after its frames. What they send
        leaves now too; a task they woke would wait out the sleep trio chose
        before this hook (``timeout``), so then the wait is made to return at once."""
        while self._later:
            calls, self._later = self._later, []
            for fn, arg in calls:
                try:
                    fn(arg)
                except Exception as exc:  # noqa: BLE001 - a trace's failure is never the loop's
                    error("pool.after_turn_failed", exc_info=exc, call=getattr(fn, "__qualname__", "?"))
            if self.dirty:
                self._flush()
        if timeout > 0 and self._token is not None and (self._runq is None or self._runq):
            self._token.run_sync_soon(_nothing)

    def _flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        self.early = len(dirty) <= self._busy_above
        unfinished = []
        for child in dirty:
            child._dirty = False
            if child._writing or child.state is _DEAD or not child._out:
                continue  # its writer takes the frames, or nobody, or they left early
            self.writes += 1
            if not child._send_now():
                unfinished.append(child)
        if unfinished and self._token is not None:
            self._token.run_sync_soon(self._follow_up, unfinished)

    @staticmethod
    def _follow_up(children: list[ChildProcess]) -> None:
        for child in children:
            child._after_send()


def _nothing() -> None:
    """Queued only to end trio's wait for I/O (see SendBatch._run_later)."""


def _trio_runq() -> Any:
    """trio's queue of runnable tasks (a deque), or None if this trio keeps it
    elsewhere: then every turn that ran :meth:`SendBatch.later` calls ends
    its wait at once, which costs a wake-up but never a stall."""
    runner = getattr(getattr(trio._core._run, "GLOBAL_RUN_CONTEXT", None), "runner", None)  # noqa: SLF001
    runq = getattr(runner, "runq", None)
    return runq if runq is not None and hasattr(runq, "__len__") else None


class Renicer:
    """Spares idle at nice 10; a child that serves a script runs at nice 0.

    Needs CAP_SYS_NICE; without it, tenants simply keep running at nice 10,
    below the supervisor, which is a safe place for them. The first refusal
    is logged and the attempt is not repeated (per pool, not per process).
    ``IDLE_ONLY`` is taken for nice 10 without it too: the kernel lets a
    process leave SCHED_IDLE only with the capability (or RLIMIT_NICE), and
    a zygote stuck there would hand the policy to every tenant it forks.
    """

    __slots__ = ("allowed", "_idle", "_can_idle")

    def __init__(self, can_idle: bool | None = None) -> None:
        self.allowed = True
        #: Processes put under SCHED_IDLE (``IDLE_ONLY``), until their next nice.
        self._idle: set[int] = set()
        self._can_idle = has_cap(_CAP_SYS_NICE) if can_idle is None else can_idle

    def __call__(self, pid: int, nice: int = 0) -> None:
        if not self.allowed or pid <= 0:
            return
        if nice == IDLE_ONLY and not self._can_idle:
            nice = ZYGOTE_NICE
        try:
            if nice == IDLE_ONLY:
                os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
                self._idle.add(pid)
                return
            if pid in self._idle:
                # A nice does not end SCHED_IDLE: the policy must change back.
                self._idle.discard(pid)
                os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, pid, nice)
        except PermissionError:
            self.allowed = False
            warn("child.renice_refused", pid=pid, hint="no CAP_SYS_NICE: tenants run at nice 10")
        except OSError:
            pass

    def dying(self, pid: int) -> None:
        """A child being killed tears its memory down in its own context
        (1-2 ms for a 25 MB child here) under ``SCHED_BATCH``, which nobody
        woken on its core preempts: the very dispatcher told of the kill
        waited that long. Under ``SCHED_IDLE`` the teardown runs on CPU
        nobody else wants. Not recorded: the process never runs Python again."""
        if not self.allowed or not self._can_idle or pid <= 0:
            return
        try:
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass  # already reaped: nothing left to tear down


class ChildKit:
    """What every child of one pool shares: set up once, handed to each child."""

    __slots__ = ("enforcer", "meters", "batch", "renice", "channels")

    def __init__(self, enforcer: Enforcer, meters: MeterFactory) -> None:
        #: Who keeps each child's memory limit (cgroup, prlimit or nothing).
        self.enforcer = enforcer
        #: Who opens each child's CPU meter (perf counter, or the tick fallback).
        self.meters = meters
        self.batch = SendBatch()
        self.renice = Renicer()
        #: Reads every child's channel (its task runs in the pool's nursery).
        self.channels = ChannelHub()


class ChildProcess:
    def __init__(self, owner: ChildOwner, pid: int, sock: socket.socket, pidfd: int,
                 generation: int, kit: ChildKit, slot: int = -1) -> None:
        sock.setblocking(False)
        self.owner = owner
        self.kit = kit
        self._batch = kit.batch
        self.pid = pid
        self.sock = sock
        self.pidfd = pidfd
        self.generation = generation
        #: The package zygote that forked it (supervisor.pool.package_zygotes), or None.
        self.package: Any = None
        #: Where the child is in its life (see supervisor.lifecycle).
        self.state = _STARTING
        self.record: ScriptRecord | None = None
        self.invocations: dict[int, Invocation] = {}
        self.incoming: dict[int, ChildBody] = {}
        self.sinks: dict[int, ChildSink] = {}
        #: Its WebSockets' supervisor side, by the child's number (supervisor.edge.websockets).
        self.sockets: dict[int, SocketState] = {}
        #: Other children's WebSockets handed to it in responses, by (positive)
        #: handle: the socket and the call whose response carried it.
        self.handed: dict[int, tuple[SocketSource, int]] = {}
        #: Bytes its sockets have queued toward their clients.
        self.socket_buffer = Buffered()
        self._last_handle = 0
        self.calls: dict[int, Any] = {}  # calls in flight: call id -> has .cancel()
        #: Its last invocation's id (stream ids above it were never opened); see next_invocation_id.
        self.last_invocation_id = 0
        #: What its calls in flight make the supervisor keep (supervisor.limits.held_calls).
        self.held = HeldCalls()
        self._last_call = 0
        self.hello = trio.Event()
        self.loaded = trio.Event()
        self.load_error: ExceptionInfo | None = None
        #: The handlers the loaded script defines (Loaded.handlers).
        self.load_handlers: tuple[str, ...] = ()
        self.load_classes: tuple[str, ...] = ()
        self.dead = trio.Event()
        #: CPU its own set-up took, per step (protocol.messages.SETUP_STEPS), from its Hello.
        self.setup_us: tuple[int, ...] = ()
        #: ... and the page faults (copies of the zygote's pages) of each step.
        self.setup_faults: tuple[int, ...] = ()
        self.kill_reason: KillReason | None = None
        self.kill_detail = ""  # what a PROTOCOL_VIOLATION was
        self.over_cpu = False  # died because the kernel enforced its CPU budget
        #: This child's memory limit, once it joined it (see memory_limits).
        self.memory: ChildMemory | None = None
        self.memory_mb: int | None = None  # the limit in force, in MB (cached)
        self.assigned_at = 0.0
        #: Assigned a script, and its first invocation not done yet.
        self.cold = False
        #: Why the process ended, in the words of its ``child.ended`` log line.
        self.end_reason = ""
        self.last_used = loop_clock.CLOCK.get()()
        #: The frames it may make the supervisor read (supervisor.limits.frame_allowance).
        self.frames = FrameAllowance(self.last_used)
        #: Not read until its allowance is paid back (the scope of that wait), if so.
        self._paused: trio.CancelScope | None = None
        #: Times it was not read for that.
        self.throttled = 0
        #: Set when what is queued for it is down to OUT_LOW_WATER (made
        #: while a held read waits for that; see _hold_reading).
        self._drained: trio.Event | None = None
        #: ``last_used`` when it last gave copied pages back (supervisor.pool.idle_trim).
        self.reshared_at = -1.0
        self._encoder = FrameEncoder()
        self._out = bytearray()
        #: Frames that need not wake it, encoded: they leave with the next
        #: frame it is sent, or with the pool's watchdog (see defer) ...
        self._deferred = bytearray()
        #: ... and the invocations they answer, with when they were deferred.
        self._deferred_for: list[tuple[Invocation, float]] = []
        self._writing = False
        self._dirty = False
        self._batched = 0
        self._send_failed = False
        self._load_log_budget = 20
        self._writer_wake = trio.Event()
        self._decoder = supervisor_decoder()
        #: Set at the end of its channel (EOF, a failed read, a frame it was killed for).
        self._channel_ended = trio.Event()
        self._nursery: trio.Nursery | None = None
        #: Its CPU account, from the Hello on (None: no meter could be opened).
        self.cpu: CpuAccount | None = None
        #: When the supervisor took it in (its first ``last_used``), and how
        #: long putting it under its memory cgroup and CPU meter took (wall
        #: seconds; see _join_limits).
        self.adopted_at = self.last_used
        self.limits_s = 0.0
        #: The cgroup slot it joined itself (-1: none; see supervisor.limits.cgroup_slots).
        self.slot = slot
        self._handlers: dict[type, Callable[[Any], None]] = {
            ResponseStart: self._on_response,
            BodyChunk: self._on_chunk,
            Credit: self._on_credit,
            InvokeDone: self._on_done,
            InvokeFailed: self._on_failed,
            QueueSettled: self._on_settled,
            Log: self._on_log,
            SubRequest: self._on_subrequest,
            BindingCall: self._on_binding_call,
            Abort: self._on_abort,
            Report: self._on_report,
            Loaded: self._on_loaded,
            Hello: self._on_hello,
            WsSend: self._on_ws_send,
            WsClose: self._on_ws_close,
            WsConnect: self._on_ws_connect,
        }

    # ------------------------------------------------------------------
    # life
    # ------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.state is not _DEAD

    @property
    def retired(self) -> bool:
        """Out of service: drains what it has in flight, then goes."""
        return self.state is _RETIRING

    def _advance(self, event: ChildEvent) -> None:
        self.state = transition(self.state, event, f"child {self.pid}")

    @property
    def idle(self) -> bool:
        return not self.invocations and not self.sinks and not self.incoming and not self.sockets

    async def run(self) -> None:
        """Serve the channel until the child dies or breaks the rules."""
        try:
            if not await self._join_limits():
                return
            channels, fd, reader = self.kit.channels, self.sock.fileno(), self._on_readable
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                channels.add(fd, reader)
                try:
                    await self._channel_ended.wait()
                finally:
                    channels.remove(fd, reader)
                    nursery.cancel_scope.cancel()
        finally:
            self._on_dead()

    async def _join_limits(self) -> bool:
        """Put the child under its memory limit and open its CPU meter before
        reading its first frame.

        Nothing reaches the child before its Hello is read (and a script only
        after that), so no tenant code runs outside its cgroup or unmetered.
        A child that joined a cgroup slot itself (supervisor.limits.
        cgroup_slots; its Hello is checked for it) is taken in here, on the
        loop: its slot renamed, its perf counter opened (whose opening waits
        for an interrupt on the CPU the child last ran on: 80 us here, and
        the server's very first one ~9 ms, as the kernel turns its context
        switch hooks on). Any other goes through a worker thread, off the
        loop every request goes through: its cgroup made and limited (~120
        us), then joined, which blocks ~8 ms when no other join came just
        before (the kernel waits out a grace period); done on the loop, that
        stalled every request at each cold start of a calm period. A child
        that cannot be limited is killed; one whose meter cannot be opened
        runs without CPU accounting, as ``MeterFactory`` decides.
        """
        clock = loop_clock.CLOCK.get()
        began = clock()
        try:
            memory = self.kit.enforcer.claim(self.pid, self.slot) if self.slot >= 0 else None
            if memory is not None:
                # Nothing left waits on the kernel's cgroup locks, and a hop
                # to a thread and back cost more (a storm's GIL hand-offs:
                # 8 ms on average, measured) than the rename and the meter
                # here (p50 0.1 ms, p90 0.2 ms in a storm).
                meter = self._open_meter()
            else:
                memory, meter = await trio.to_thread.run_sync(self._open_limits)
        except OSError as exc:
            error("child.memory_limit_failed", pid=self.pid, backend=self.kit.enforcer.name,
                  reason=str(exc))
            self.kill(KillReason.MEMORY_LIMIT_FAILED)
            return False
        self.limits_s = clock() - began
        self.memory = memory
        self.memory_mb = memory.initial_mb
        if meter is not None:
            self.cpu = self.owner.cpu_account(meter)
        return True

    def _open_limits(self) -> tuple[ChildMemory, CpuMeter | None]:
        """In a worker thread: the child's cgroup, then its meter (see _join_limits)."""
        return self.kit.enforcer.attach(self.pid), self._open_meter()

    def _open_meter(self) -> CpuMeter | None:
        try:
            return self.kit.meters.open(self.pid)
        except OSError:
            return None

    def later(self, fn: Callable[[Any], None], arg: Any) -> None:
        """``fn(arg)`` after this turn's frames have left (SendBatch.later)."""
        self._batch.later(fn, arg)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run a task that must not outlive this child (a body pump, a call).

        Nothing runs once its channel ended: the nursery closes when its last
        task does, and the owner resumes to mark the child dead only a turn
        later, so a caller in that gap (an ingress dropping a WebSocket this
        child answered with) found ``alive`` still true and a closed nursery,
        whose RuntimeError was the ingress's internal error."""
        if self._nursery is None or not self.alive or self._channel_ended.is_set():
            return
        try:
            self._nursery.start_soon(fn, *args)
        except RuntimeError:  # closed without the channel ending: its writer failed, and so does it
            pass

    def kill(self, reason: KillReason, detail: str = "") -> None:
        """SIGKILL the child; the first reason given is the one on record.

        The child is DEAD only once its channel closed (:meth:`_on_dead`).
        """
        first = self.kill_reason is None
        if first:
            self.kill_reason = reason
            self.kill_detail = detail
            self.owner.on_condemned(self)
            self.kit.renice.dying(self.pid)
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._paused is not None:
            self._paused.cancel()  # read again: its channel's end is what ends it
        if first and reason is KillReason.EXCEEDED_CPU:
            self._answer_over_cpu()

    def _answer_over_cpu(self) -> None:
        """Its callers hear ``exceededCpu`` now, when the budget was seen spent.

        Its channel's EOF comes only once the kernel has torn the process's
        memory down (1.3 ms for a 25 MB child here) and its reader's nursery
        has unwound (two more turns of the loop): up to ~1 ms added to the
        time a dispatcher waits for its answer, against a goal of 2. The
        outcome is the one :meth:`_on_dead` gives them anyway (their reason
        is on record as EXCEEDED_CPU); the end of their bodies, their traces
        and every other release still wait for the death.
        """
        info = ExceptionInfo(Outcome.EXCEEDED_CPU, OUTCOME_MESSAGE[Outcome.EXCEEDED_CPU])
        for inv in list(self.invocations.values()):
            inv.fail(info, Outcome.EXCEEDED_CPU)

    @property
    def kill_text(self) -> str:
        """The kill reason as logs and crash messages always worded it."""
        if self.kill_reason is None:
            return ""
        return f"{self.kill_reason}: {self.kill_detail}" if self.kill_detail else str(self.kill_reason)

    def next_invocation_id(self) -> int:
        """An id for its next invocation: its pid and a count of its own.

        A tenant reads the ids its child is sent; taken from one count for
        the whole host, their gaps told it how many requests every other
        tenant got meanwhile. Unique among live children (pids are), and
        within JavaScript's safe integers (pids stay under 2**22)."""
        self.last_invocation_id = (self.pid << 31) | ((self.last_invocation_id + 1) & _INVOCATION_COUNT)
        return self.last_invocation_id

    def assign(self, record: ScriptRecord, bundle: Any) -> None:
        self._advance(ChildEvent.ASSIGN)
        self.record = record
        # Used from now on: a give-back asked of it as a spare is void.
        self.assigned_at = self.last_used = trio.current_time()
        self.cold = True
        self.kit.renice(self.pid)
        self.send(Load(bundle))
        if self.cpu is not None:
            self.cpu.start_loading()

    # ------------------------------------------------------------------
    # channel I/O
    # ------------------------------------------------------------------
    def retire(self) -> None:
        """Out of service (the pool decided): it drains, then it is killed.
        Its WebSockets' clients are told to reconnect (1012, as Cloudflare
        does on a deploy), or it would never drain."""
        self._advance(ChildEvent.RETIRE)
        self._close_sockets(1012, "the worker was redeployed")

    def _close_sockets(self, code: int, reason: str) -> None:
        """Close its clients' connections with ``code``; sockets no client has yet go."""
        for ws, state in list(self.sockets.items()):
            if state.session is not None:
                state.session.close_from_worker(code, reason)
            else:
                state.abandon()
                del self.sockets[ws]

    def send(self, message: Any) -> None:
        if self.state is _DEAD:
            return
        taken = self._take_deferred() if self._deferred else 0
        self._encoder.encode_into(message, self._out)
        if type(message) not in _ANSWERS:
            self.frames.sent += 1
        if self._writing:
            return  # the writer takes it with the rest
        batch = self._batch
        if batch.running:
            batch.frames += 1 + taken
            if not self._dirty:
                self._dirty = True
                self._batched = 1
                batch.add(self)
            else:
                self._batched += 1
                if self._batched >= BATCH_MAX_FRAMES and batch.early:
                    self._batched = 0
                    batch.writes += 1
                    if not self._send_now():
                        self._after_send()
        elif not self._send_now():
            self._after_send()

    def defer(self, message: Any, inv: Invocation) -> None:
        """Send ``message``, which answers something of ``inv``'s, without
        waking the child for it: with the next frame it is sent, or else when
        the supervisor's loop goes to sleep (Pool.send_deferred), at the
        latest within the pool's watchdog period (WATCHDOG_PERIOD_S).

        For a tail call's ``answered`` (supervisor.calls.calls), while the
        dispatch worker has other invocations in flight: the client has its
        response already, and all the child does with the news is end the
        invocation. Told at once, the dispatcher woke twice per request, the
        second time for that alone (599 wake-ups for 300 requests, 328 now;
        tests/test_tail_call.py). At 300 tenants the supervisor's CPU per
        request fell from 165 to 155 us and the children's from 169 to 156
        (``scripts/bench_revisions``, 4 rounds). With nothing else in flight
        the news goes at once: the invocation's trace (and its usage row)
        would otherwise wait for the loop to go idle. The time the news
        waited is not the invocation's wall time
        (:attr:`Invocation.held_s`)."""
        if self.state is _DEAD:
            return
        if not self._deferred:
            self.owner.deferring.add(self)
        self._encoder.encode_into(message, self._deferred)
        self._deferred_for.append((inv, time.monotonic()))

    def flush_deferred(self, in_task: bool = True) -> None:
        """Send what :meth:`defer` kept, if no frame took it along: from the
        pool's watchdog, or (``in_task`` false) as the loop goes to sleep,
        where what the socket does not take is left to the watchdog."""
        if self.state is _DEAD:
            return
        if self._deferred:
            self._take_deferred()
        if not self._out or self._writing or self._send_now():
            return
        if in_task:
            self._after_send()
        else:
            self.owner.deferring.add(self)

    def _take_deferred(self) -> int:
        """Queue the deferred frames to go now; how many there were."""
        self._out += self._deferred
        del self._deferred[:]
        now = time.monotonic()
        for inv, since in self._deferred_for:
            inv.held_s += now - since
        taken = len(self._deferred_for)
        self._deferred_for.clear()
        return taken

    def _send_now(self) -> bool:
        """One send of what is buffered: did it all leave? (Calls nothing in trio.)"""
        try:
            sent = self.sock.send(self._out)
        except BlockingIOError:
            return False
        except OSError:
            self._send_failed = True
            return False
        del self._out[:sent]
        if self._drained is not None and len(self._out) <= OUT_LOW_WATER:
            self._drained.set()
        return not self._out

    def _after_send(self) -> None:
        """What a send that did not take everything leaves to do."""
        if self._send_failed:
            self._out.clear()
            self.kill(KillReason.CHANNEL_CLOSED)
        elif self._out and not self._writing and self.state is not _DEAD:
            self._writing = True
            self._writer_wake.set()

    async def _writer(self) -> None:
        while True:
            await self._writer_wake.wait()
            self._writer_wake = trio.Event()
            while self._out:
                await trio.lowlevel.wait_writable(self.sock)
                try:
                    sent = self.sock.send(self._out)
                except BlockingIOError:
                    continue
                except OSError:
                    self._out.clear()
                    self.kill(KillReason.CHANNEL_CLOSED)
                    return
                del self._out[:sent]
                if self._drained is not None and len(self._out) <= OUT_LOW_WATER:
                    self._drained.set()
            self._writing = False

    def _on_readable(self) -> None:
        """Its channel has bytes (or its end): handle every whole frame read
        (called by the hub; nothing a child sends raises out of here)."""
        try:
            count = self.sock.recv_into(_RECEIVED)
        except BlockingIOError:
            return
        except OSError:
            count = 0
        if count == 0:
            self._end_channel()
            return
        handlers = self._handlers
        try:
            messages = self._decoder.feed(_RECEIVED_VIEW[:count])
            for message in messages:
                if self.state is _STARTING and type(message) is not Hello:
                    raise ProtocolViolation(f"{type(message).__name__} before Hello")
                handlers[type(message)](message)
            if not self.frames.spend(len(messages)):
                self._check_allowance()
            if len(self._out) > OUT_HIGH_WATER and self._paused is None:
                self._hold_for_backlog()
        except (ProtocolError, ProtocolViolation) as exc:
            self.kill(KillReason.PROTOCOL_VIOLATION, str(exc))
        except Exception as exc:  # noqa: BLE001 - nothing a child sends may stop the supervisor
            error("child.handler_failed", exc_info=exc, pid=self.pid)
            self.kill(KillReason.PROTOCOL_VIOLATION,
                      f"frame could not be handled ({type(exc).__name__})")
        else:
            return
        self._end_channel()

    def _check_allowance(self) -> None:
        """Its frames overdrew its allowance: unless answers and time have
        earned it back already, it is not read until they have (see
        supervisor.limits.frame_allowance; its writes block meanwhile)."""
        pause = self.frames.overdrawn(loop_clock.CLOCK.get()())
        if not pause or self._paused is not None or self.state is _DEAD:
            return
        if self._nursery is None or self._channel_ended.is_set():
            return
        if not self.throttled:  # once per child: a flood would fill the log too
            warn("child.frames_throttled", pid=self.pid, script=self._script_name(),
                 pause_ms=round(pause * 1000, 1),
                 reason="it sent more frames than its answers and time allow; not read until paid back")
        self.throttled += 1
        self._hold_reading(pause)

    def _hold_for_backlog(self) -> None:
        """More is queued for it than :data:`OUT_HIGH_WATER`: it does not read
        its channel. Not read either until it takes its answers."""
        if not self.throttled:
            warn("child.frames_throttled", pid=self.pid, script=self._script_name(),
                 queued_mb=round(len(self._out) / 2**20, 1),
                 reason="it does not read what the supervisor sends it; not read until it takes that")
        self.throttled += 1
        self._hold_reading(0.0)

    def _hold_reading(self, pause: float) -> None:
        """Read it no more for ``pause`` seconds, and until what is queued
        for it is down to :data:`OUT_LOW_WATER`.

        Why the second condition: every frame the supervisor reads may queue
        an answer (a call refused, a binding's result), and a child that
        does not read its channel leaves those answers in the supervisor's
        memory. A hostile child wrote 14 MB of binding calls in one request
        without reading, and the supervisor grew by 840 MB holding the
        refusals (each answer then earned its frame allowance back, see
        _ANSWERS). Held, the flood costs its own writes instead: they block,
        as its channel's buffer fills. A child that reads, as the runtime
        always does, is held only while its socket takes the backlog."""
        if self._paused is not None or self.state is _DEAD:
            return
        if self._nursery is None or self._channel_ended.is_set():
            return
        self.kit.channels.remove(self.sock.fileno(), self._on_readable)
        self._paused = trio.CancelScope()
        self._nursery.start_soon(self._read_again, pause, self._paused)

    async def _read_again(self, pause: float, scope: trio.CancelScope) -> None:
        """After ``pause`` and the backlog's drain (or at once when it is
        killed: its end must be read)."""
        with scope:
            await trio.sleep(pause)
            while len(self._out) > OUT_LOW_WATER and self.state is not _DEAD:
                self._drained = trio.Event()
                if not self._writing:  # frames queued this turn: the batch sends them, or the writer
                    self._after_send()
                await self._drained.wait()
        self._drained = None
        self._paused = None
        if not self._channel_ended.is_set():
            self.kit.channels.add(self.sock.fileno(), self._on_readable)

    def _end_channel(self) -> None:
        """No more reads: :meth:`run` wakes and the child's end follows. Removed
        from the hub here, not only when :meth:`run` wakes: a socket at EOF
        stays readable, and the hub would call it again meanwhile."""
        self.kit.channels.remove(self.sock.fileno(), self._on_readable)
        self._channel_ended.set()

    # ------------------------------------------------------------------
    # frames from the child
    # ------------------------------------------------------------------
    def _on_hello(self, message: Hello) -> None:
        if not allows(self.state, ChildEvent.HELLO):
            raise ProtocolViolation("Hello sent twice")
        if message.version != PROTOCOL_VERSION:
            raise ProtocolViolation(
                f"protocol version {message.version}, supervisor speaks {PROTOCOL_VERSION}"
            )
        if self.kill_reason is not None:
            # Condemned before its Hello was read (a spare of a zygote just
            # replaced): it is not to serve, and, dead, it is in no cgroup,
            # which must not read as a memory limit that failed.
            return
        if self.memory is not None and not self.memory.ready():
            error("child.memory_limit_failed", pid=self.pid, backend=self.kit.enforcer.name,
                  reason="not in its cgroup when it said hello")
            self.kill(KillReason.MEMORY_LIMIT_FAILED)
            return
        self._advance(ChildEvent.HELLO)
        self.setup_us = message.setup_us
        self.setup_faults = message.setup_faults
        self.hello.set()
        self.owner.on_ready(self)

    def limit_memory(self, memory_mb: int | None) -> None:
        """Bound the child's memory for the coming invocation (and until changed).

        The pool's cap bounds every limit. The backend is asked only when the
        limit changes for this child. A child already holding more than the
        new limit is over it: it goes, and its invocations end exceededMemory.
        """
        if not memory_mb or self.memory is None:
            return
        memory_mb = min(memory_mb, self.kit.enforcer.pool_mb or memory_mb)
        if memory_mb == self.memory_mb:
            return
        try:
            within = self.memory.set_limit(memory_mb)
        except OSError as exc:
            error("child.memory_limit_failed", pid=self.pid, backend=self.kit.enforcer.name,
                  memory_mb=memory_mb, reason=str(exc))
            self.owner.retire(self)
            self.kill(KillReason.MEMORY_LIMIT_FAILED)
            return
        self.memory_mb = memory_mb
        if not within:
            self.owner.retire(self)
            self.kill(KillReason.EXCEEDED_MEMORY)

    def _on_loaded(self, message: Loaded) -> None:
        if self.loaded.is_set() or not allows(self.state, ChildEvent.LOADED):
            raise ProtocolViolation("Loaded without a Load")
        self._advance(ChildEvent.LOADED)
        self.load_error = message.error
        self.load_handlers = message.handlers
        self.load_classes = message.classes
        self.loaded.set()
        self.owner.on_loaded(self, trio.current_time() - self.assigned_at, message.error is not None)
        if message.error is not None:
            warn("script.load_failed", pid=self.pid, script=self._script_name(),
                 error=message.error.message)
        if self.cpu is not None:
            self.cpu.finish_loading()
            if self.cpu.needs_watchdog:
                self.owner.busy.add(self)
            if self.cpu.idle_since is not None:
                self.owner.cooling.add(self)

    def _invocation(self, inv_id: int) -> Invocation:
        inv = self.invocations.get(inv_id)
        if inv is None:
            raise ProtocolViolation(f"frame for invocation {inv_id}, which this child does not have")
        return inv

    def _on_response(self, message: ResponseStart) -> None:
        inv = self._invocation(message.id)
        body: BodySource | None
        sent = message.body
        received = self.receive_body(sent, message.id)
        streaming = type(sent) is not Inline and sent is not None
        if type(sent) is ByRef:
            assert not isinstance(received, bytes)
            body, streaming = inv.handed_on(received)
        elif isinstance(received, bytes):
            body = BytesBody(received)
        else:
            body = received
            if message.length is not None and type(body) is ChildBody:
                declare_length(body, message.length)
        if isinstance(body, SocketSource):
            if message.status != 101:
                body.close()
                inv.fail(ExceptionInfo("TypeError", "a WebSocket response must have status 101"))
                return
            if body.child is self and not body.url:  # its own socket, answered with: where events go
                body.url = inv.url
                event = inv.event
                if body.hibernate and isinstance(event, DurableObjectEvent):
                    record = inv.record
                    body.object = (record.namespace, record.name, event.class_name, event.object_id)
            inv.respond(101, message.headers, body, False)
            return
        # 1xx would read as an interim response to the client and desync its
        # connection (a response queue poisoned behind a shared proxy).
        if not 200 <= message.status <= 599:
            if body is not None:
                body.close()
            inv.fail(ExceptionInfo("TypeError", f"invalid response status {message.status}"))
            return
        if message.functions:  # an RPC result that carries functions: the caller's stubs now
            try:
                rpc_stubs.return_functions(inv, message.functions)
            except rpc_stubs.StubError as exc:
                if body is not None:
                    body.close()
                inv.fail(ExceptionInfo(exc.name, exc.message))
                return
        inv.respond(message.status, message.headers, body, streaming, message.status_text)

    def receive_body(self, body: Body | None, stream: int) -> BodySource | bytes | None:
        """A body this child sends (on ``stream``): bytes, a stream to pull, or
        the unread body it hands on (:class:`ByRef`, resolved among its own)."""
        if body is None:
            return None
        kind = type(body)
        if kind is Inline:
            data: bytes = body.data  # type: ignore[union-attr]
            if len(data) > MAX_CHUNK:
                # The runtime streams anything larger. Held inline, a body
                # stays in the supervisor's memory for as long as its call
                # waits: a child's 500 calls to a server that never answered,
                # each with a 1 MB frame's body, held 515 MB of it.
                raise ProtocolViolation(f"an inline body of {len(data)} bytes on stream {stream} "
                                        f"(at most {MAX_CHUNK}; a larger one is streamed)")
            return data or None
        if kind is ByRef:
            return self.take_ref(body.stream)  # type: ignore[union-attr]
        if kind is Socket:
            return self._socket_body(body)  # type: ignore[arg-type]
        incoming = ChildBody(self, stream)
        self.incoming[stream] = incoming
        return incoming

    def send_body(self, body: BodySource | bytes | None, stream: int) -> Body | None:
        """How a body goes to this child on ``stream``: inline when small and
        in hand, else streamed within the child's credit."""
        if body is None:
            return None
        if isinstance(body, SocketSource):
            self._last_handle += 1
            self.handed[self._last_handle] = (body, stream)
            return Socket(-self._last_handle)
        if isinstance(body, BytesBody) and len(body._data) <= MAX_CHUNK:
            body = body._data
        if isinstance(body, bytes):
            if len(body) <= MAX_CHUNK:
                return Inline(body) if body else None
            body = BytesBody(body)
        self.sinks[stream] = ChildSink(self, stream, body)
        return STREAMED

    # -- WebSockets (supervisor.edge.websockets) ------------------------------------------
    def _socket_body(self, body: Socket) -> SocketSource:
        if body.ws < 0:  # one handed to it, handed on
            handed = self.handed.pop(-body.ws, None)
            if handed is None:
                raise ProtocolViolation(f"WebSocket handle {body.ws} names none handed to this child")
            return handed[0]
        state = self.socket_state(body.ws)
        if state.source is not None:
            raise ProtocolViolation(f"WebSocket {body.ws} was already answered with")
        state.source = SocketSource(self, body.ws, body.hibernate, "", None)
        return state.source

    def socket_state(self, ws: int) -> SocketState:
        state = self.sockets.get(ws)
        if state is None:
            if ws <= 0 or len(self.sockets) >= MAX_SOCKETS:
                raise ProtocolViolation(f"WebSocket number {ws} is not valid or too many are open")
            state = self.sockets[ws] = SocketState(self.socket_buffer)
        return state

    def forget_socket(self, ws: int) -> None:
        """The socket's connection is over (its close went to the worker)."""
        if self.sockets.pop(ws, None) is not None and not self.sockets:
            self.owner.on_idle(self)

    def _on_ws_send(self, message: WsSend) -> None:
        if len(message.data) > WS_MAX_MESSAGE:
            raise ProtocolViolation(f"a WebSocket message of {len(message.data)} bytes")
        self.socket_state(message.ws).send(message.data, message.text, message.fin)

    def _on_ws_close(self, message: WsClose) -> None:
        if message.orphan:  # never handed to a client: nothing of it is kept
            state = self.sockets.get(message.ws)
            if state is not None and state.session is None and state.source is None:
                state.abandon()
                self.forget_socket(message.ws)
            return
        self.socket_state(message.ws).close(message.code, message.reason[:123])

    def _on_ws_connect(self, message: WsConnect) -> None:
        self.owner.on_ws_connect(self, message)

    def take_ref(self, ref: int) -> BodySource:
        """A body the child passes on unread: its request body or a call's response."""
        sink = self.sinks.get(ref)
        if sink is None:
            raise ProtocolViolation(f"body_ref {ref} names no unread body")
        return sink.take()

    def _heard(self, inv: Invocation) -> None:
        """``inv``'s handler ended (failed, or done): a Cancel sent at its wall
        time was heard, so the child was not stuck (see Pool._cpu_watchdog)."""
        inv.cancel_by = 0.0
        self.owner.on_cancel_heard(self)

    def _on_failed(self, message: InvokeFailed) -> None:
        inv = self._invocation(message.id)
        if inv.cancel_by:
            self._heard(inv)
        inv.fail(message.error, Outcome.EXCEEDED_CPU if message.cpu_exceeded else None)
        if message.error.name == "MemoryError":
            # The child exits right after this frame; no request may reach it.
            self.owner.retire(self)
            self.kill(KillReason.EXCEEDED_MEMORY)

    def _on_settled(self, message: QueueSettled) -> None:
        """A queue consumer's explicit ack/retry decisions (supervisor.queues reads them).

        Checked as the SDK checks them (sandbox.queue_batch): a retry delay
        the queue's storage cannot take (NaN is NULL to SQLite) failed the
        batch's settling again every second, for ever, with a warning each
        time, and an infinite or negative one was kept as such."""
        inv = self._invocation(message.id)
        if message.all not in ("", "ack", "retry"):
            raise ProtocolViolation(f"a queue batch settled with {message.all[:40]!r}")
        for delay in (message.all_delay, *(d for _, d in message.retried)):
            if delay is not None and not 0 <= delay <= MAX_DELAY_S:  # False for NaN too
                raise ProtocolViolation(f"a queue retry delay of {delay!r} s (0 to {MAX_DELAY_S})")
        inv.settled = message

    def _on_done(self, message: InvokeDone) -> None:
        inv = self._invocation(message.id)
        if not inv.has_head:
            # The runtime answers (a head, or InvokeFailed) before it ends an
            # invocation, events included. Ended here without one, its caller
            # waited for a head forever: the child is killed instead, which
            # fails the invocation, so the caller hears of it.
            raise ProtocolViolation(f"invocation {message.id} ended without a response or a failure")
        caller = inv.parent  # ending it may drop the link
        if inv.cancel_by:  # (checked here: this is every invocation's end)
            self._heard(inv)
        del self.invocations[message.id]
        self.end_invocation(inv)
        if self.cold:
            self.cold = False
            self.owner.on_cold_start_over(self, caller)
        self.owner.on_idle(self)

    def end_invocation(self, inv: Invocation) -> None:
        """``inv`` (already out of :attr:`invocations`) is over: charge, release, trace."""
        self._cpu_stop(inv)
        self._release(inv)
        inv.finish()
        self.last_used = loop_clock.CLOCK.get()()

    def _release(self, inv: Invocation) -> None:
        """Close what an ended invocation left behind (unread bodies, calls)."""
        sink = self.sinks.pop(inv.id, None)
        if sink is not None:
            sink.abort()
        response = self.incoming.pop(inv.id, None)
        if response is not None:  # ended without the body's last chunk: truncated
            response.fail("the worker ended without finishing its response body")
        for call in inv.calls:
            self.held.end(call)
            sink = self.sinks.pop(call, None)
            if sink is not None:
                sink.abort()
            stream = self.incoming.pop(call, None)
            if stream is not None:
                stream.fail("the invocation ended")
        if self.handed:  # WebSockets its calls got and it did not hand on: closed
            for handle, (source, call) in list(self.handed.items()):
                if call in inv.calls:
                    del self.handed[handle]
                    source.close()

    def _on_log(self, message: Log) -> None:
        inv = self.invocations.get(message.id)
        if inv is not None:
            inv.log(message.level, message.message, message.ts, message.cut, message.args)
        elif message.id == 0 and self._load_log_budget > 0:
            # Top-level prints while loading: a few lines to the operator's
            # log, then silence (a tenant must not be able to fill our disk).
            self._load_log_budget -= 1
            log("script.log", script=self._script_name(), tenant_level=str(message.level)[:16],
                message=str(message.message)[:2000])

    def _on_report(self, message: Report) -> None:
        inv = self.invocations.get(message.id)
        if inv is not None:
            inv.report(message.error)

    def _on_chunk(self, message: BodyChunk) -> None:
        stream = self.incoming.get(message.stream)
        if stream is None:
            if message.stream > self.last_invocation_id or message.stream < -(1 << 40):
                raise ProtocolViolation(f"chunk for stream {message.stream}, never opened")
            return  # a stream we already closed; the chunk was in flight
        stream.feed(message.data, message.end)
        if message.end:
            self.incoming.pop(message.stream, None)
            self.response_ended(message.stream)

    def _on_credit(self, message: Credit) -> None:
        sink = self.sinks.get(message.stream)
        if sink is not None:
            sink.grant(message.nbytes)

    def response_ended(self, stream: int) -> None:
        """Stream ids of invocations are their responses: one just ended."""
        if stream > 0:
            inv = self.invocations.get(stream)
            if inv is not None:
                inv.response_finished()

    def _on_abort(self, message: Abort) -> None:
        """A stream of the child's failed, or it stopped waiting for a call.

        A call's request body has the call's id: an Abort while that body
        is still coming is the body's failure (its generator raised), which
        fails the call through its body, with the tenant's own error; the
        call must still answer, as the tenant still waits. An Abort of a
        call whose body is over (or had none) is the tenant giving up on it
        (the child sends a second one for a call cancelled mid-body)."""
        stream = self.incoming.pop(message.stream, None)
        if stream is not None:
            stream.fail(message.reason or "the worker aborted the body")
            self.response_ended(message.stream)
        sink = self.sinks.pop(message.stream, None)
        if sink is not None:
            sink.abort()
        call = self.calls.get(message.stream) if stream is None else None
        if call is not None:
            call.cancel()  # the tenant stopped waiting for this call

    def _on_subrequest(self, message: SubRequest) -> None:
        self._fresh_call(message.call)
        if not TOKEN_BYTES.fullmatch(message.method):
            # The SDK refuses such a method; a child that skips it delivered
            # "GET\r\nX: y" to the script it called, as its request.method.
            raise ProtocolViolation(f"a call's method {message.method[:40]!r} is not an HTTP token")
        problem, size = _call_head(message)
        if problem:
            self.send(SubFailed(message.call, ExceptionInfo("TypeError", problem)))
            return
        problem = self.held.hold(message.call, size, self.memory_mb)
        if problem:
            self.send(SubFailed(message.call, ExceptionInfo("Error", problem)))
            return
        self.owner.on_subrequest(self, message)

    def _on_binding_call(self, message: BindingCall) -> None:
        self._fresh_call(message.call)
        if isinstance(message.body, Socket):
            # No binding takes a WebSocket: R2's put read one as a stream and
            # failed inside the binding (an error with a traceback per call).
            raise ProtocolViolation("a binding call's body cannot be a WebSocket")
        size = len(message.binding) + len(message.method)
        if not message.args_in_body:
            size += args_size(message.args)
        problem = self.held.hold(message.call, size, self.memory_mb)
        if problem:  # as for a head past its limits: the body is not taken
            self.send(SubFailed(message.call, ExceptionInfo("Error", problem)))
            return
        self.owner.on_binding_call(self, message)

    def _fresh_call(self, call: int) -> None:
        if call >= self._last_call:
            raise ProtocolViolation(f"call id {call} is not a fresh negative id")
        self._last_call = call

    # ------------------------------------------------------------------
    # CPU (see supervisor.limits.cpu_account)
    # ------------------------------------------------------------------
    def cpu_start(self, inv: Invocation) -> None:
        if self.cpu is not None:
            armed = self.cpu.start(inv)
            self.owner.busy.add(self)
            if armed is not None:
                self.owner.budgets.arm(self, armed)

    def cpu_budget_shrank(self, inv: Invocation) -> None:
        """Its callees spent some of ``inv``'s budget (Invocation.callee_spent):
        the kernel is armed with what is left."""
        if self.cpu is not None:
            armed = self.cpu.rearm(inv)
            if armed is not None:
                self.owner.budgets.arm(self, armed)

    def _cpu_stop(self, inv: Invocation) -> None:
        if self.cpu is not None:
            self.cpu.stop(inv)
            if (not inv.cpu_settled and inv.parent is not None
                    and 0 < inv.cpu_budget_ns < PRECISE_BELOW_NS):
                # A call within its caller's budget: its CPU is read now, not
                # at the next read, so that the caller's next call gets only
                # what is left (Invocation.callee_spent).
                self.cpu.charge()
            if not self.cpu.active:
                self.owner.budgets.disarm(self)
            if not self.cpu.needs_watchdog and not self.invocations:
                # (Others still running keep it there: the watchdog keeps
                # their wall and waitUntil deadlines, armed budgets or not.)
                self.owner.busy.discard(self)
            if self.cpu.idle_since is not None:
                self.owner.cooling.add(self)

    # ------------------------------------------------------------------
    # death
    # ------------------------------------------------------------------
    def _script_name(self) -> str:
        if self.record is None:
            return ""
        return f"{self.record.namespace}/{self.record.name}" if self.record.namespace else self.record.name

    def _on_dead(self) -> None:
        if self.state is _DEAD:
            return
        was = self.state
        self._advance(ChildEvent.DIED)
        self.kill(KillReason.CHANNEL_CLOSED)  # a reason given earlier stays on record
        reason = self.kill_reason
        if reason is KillReason.CHANNEL_CLOSED and self.memory is not None and self.memory.oom_killed():
            reason = self.kill_reason = KillReason.EXCEEDED_MEMORY  # the kernel's OOM killer, in its cgroup
        over_cpu = reason is KillReason.EXCEEDED_CPU or (
            self.cpu is not None and reason is KillReason.CHANNEL_CLOSED and self.cpu.exceeded())
        self.over_cpu = over_cpu
        background = over_cpu and not self.invocations and was in _WITH_SCRIPT and (
            self.cpu is not None and self.cpu.idle)
        if self.cpu is not None:
            self.cpu.close()
            self.owner.busy.discard(self)
            self.owner.budgets.disarm(self)
        if background:
            self.owner.on_background_overrun(self)
        outcome = Outcome.EXCEEDED_CPU if over_cpu else (
            Outcome.EXCEEDED_MEMORY if reason is KillReason.EXCEEDED_MEMORY else Outcome.CRASHED)
        message = OUTCOME_MESSAGE[outcome] if outcome is not Outcome.CRASHED else \
            f"The worker's process ended unexpectedly ({self.kill_text})."
        for inv in list(self.invocations.values()):
            inv.response_finished()  # whatever it was still streaming is cut
            if inv.outcome != Outcome.EXCEEDED_MEMORY:  # already told by the child itself
                inv.fail(ExceptionInfo(outcome if outcome is not Outcome.CRASHED else "WorkerCrashed",
                                       message), outcome)
            inv.finish()
        self.invocations.clear()
        for stream in list(self.incoming.values()):
            stream.fail("the worker's process ended")
        self.incoming.clear()
        for sink in list(self.sinks.values()):
            sink.abort()
        self.sinks.clear()
        self._close_sockets(1011, "the worker's process ended")
        for source, _ in self.handed.values():
            source.close()
        self.handed.clear()
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            os.close(self.pidfd)
        except OSError:
            pass
        self.dead.set()
        level = warn if reason is KillReason.PROTOCOL_VIOLATION else log
        extra = {}
        if outcome is Outcome.EXCEEDED_MEMORY and self.memory is not None:
            peak = self.memory.peak_bytes()
            extra = {"memory_mb": self.memory_mb, "peak_mb": round(peak / 2**20, 1) if peak else None}
        self.end_reason = str(outcome if over_cpu else self.kill_text)
        if over_cpu:
            # Who saw the budget run out first: the supervisor (its budget
            # watch or watchdog, which ends the invocations at once) or only
            # the kernel (seen at the channel's close, after the exit).
            extra["cpu_kill_seen_by"] = "kernel" if reason is KillReason.CHANNEL_CLOSED else "supervisor"
        level("child.ended", pid=self.pid, script=self._script_name(), state=was,
              reason=self.end_reason, **extra)
        self.owner.on_dead(self)


def _call_head(message: SubRequest) -> tuple[str, int]:
    """What in a call's head is past its limit (see MAX_CALL_HEADER_BYTES), in
    the words the tenant reads ("" when nothing is), and the head's size."""
    size = 0
    for name, value in message.headers:
        size += len(name) + len(value)
    if size > MAX_CALL_HEADER_BYTES:
        return (f"the request's headers are too large: {size} bytes, names and values together "
                f"(at most {MAX_CALL_HEADER_BYTES})"), size
    if len(message.url) > MAX_CALL_URL:
        return (f"the request's URL is too long: {len(message.url)} characters "
                f"(at most {MAX_CALL_URL})"), size
    rest = len(message.method) + len(message.binding) + len(message.target) + len(message.rpc)
    if message.params:
        rest += len(_PACK(message.params))
    if rest > MAX_CALL_REST_BYTES:
        return (f"the call's method, target and parameters are too large: {rest} bytes "
                f"(at most {MAX_CALL_REST_BYTES})"), size
    return "", size + len(message.url) + rest


def describe_status(status: int) -> str:
    """A wait status in words (SIGSYS means the seccomp filter killed it)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGSYS:
            return f"killed by {name} (forbidden system call)"
        return f"killed by {name}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"status {status}"
