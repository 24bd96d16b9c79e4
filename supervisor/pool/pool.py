"""The warm pool: spare jailed children, warm children per script, scale to zero.

* **Spares.** The zygote keeps ``pool.spares`` children forked and fully
  jailed ahead of demand. A cold start takes one and sends it the script: no
  fork, no exec, no interpreter start on the request path. Refill requests
  go to the zygote, which forks at low priority.
* **Warm.** One child per script version serves all its requests
  concurrently. A new version (a deploy) gets a new child; the old one
  finishes its in-flight requests and is retired when idle, which is what
  makes a deploy atomic.
* **Scale to zero.** A child idle for ``pool.idle_timeout_s`` is killed; at
  ``pool.max_children`` the least recently used idle child makes room.
* **Failure.** A dead child fails only its own invocations; a dead zygote is
  restarted and existing children keep serving.

How many spares to fork or trim, which idle children to retire and how to
make room at the cap is decided in one place, :meth:`Pool._converge` (the
rules are :func:`supervisor.pool.plan.plan`). Whatever changes the counts
only *nudges* the pool's maintain task; a request that waits for a spare
converges at once, since it must know whether one can come at all.

A child reaches the pool through :class:`ChildOwner` (the pool's callbacks)
and the calls a child makes reach :class:`SubrequestHandler`, handed in at
construction: ``pool/`` never imports ``calls/``.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import trio

from protocol.messages import (
    SETUP_STEPS,
    BindingCall,
    Event,
    ExceptionInfo,
    Invoke,
    Limits,
    SubFailed,
    SubRequest,
    WsConnect,
)
from supervisor import loop_clock
from supervisor.config import ServeConfig
from supervisor.core_keeper import CoreKeeper, all_cores
from supervisor.lifecycle import ChildState, KillReason, Outcome
from supervisor.limits.budget_watch import BudgetWatch
from supervisor.limits.cpu_account import IDLE_GUARD_AFTER_S, PRECISE_BELOW_NS, CpuAccount
from supervisor.limits.cpu_meter import CpuMeter, MeterFactory
from supervisor.limits.memory import Enforcer
from supervisor.limits.memory import choose as choose_memory_enforcement
from supervisor.log import log, warn
from supervisor.model import DispatchNamespace, LoadCheck, ScriptRecord, to_bundle
from supervisor.pool.bodies import BodySource
from supervisor.pool.bundles import BundleError, Bundles
from supervisor.pool.census import ChildCensus
from supervisor.pool.child_process import ChildKit, ChildProcess, describe_status
from supervisor.pool.crash_loop import CrashLoops
from supervisor.pool.fork_priority import RUSH_NICE, ForkPriority
from supervisor.pool.hub_core import CHECK_S as HUB_CHECK_S
from supervisor.pool.hub_core import HubCore
from supervisor.pool.idle_trim import IdleTrimmer
from supervisor.pool.invocation import BACKGROUND_CPU_MESSAGE, Invocation, Outbound
from supervisor.pool.package_zygotes import PackageZygote, PackageZygotes
from supervisor.pool.plan import PackagesView, Plan, PoolView, WarmChild, calm, plan, plan_packages
from supervisor.pool.quiet_window import QuietWindow
from supervisor.pool.rate import EventRate
from supervisor.pool.spare_line import SpareLine
from supervisor.pool.zygote_client import ZygoteClient

#: How long a request waits for a spare before the pool gives up (503).
SPARE_WAIT_S = 10.0
#: How long a deploy's validation waits for its set's package zygote to be
#: ready (its imports and rehearsals) before it loads the script in a base
#: spare, which imports the set itself.
PACKAGE_READY_WAIT_S = 10.0
#: A spare taken by a cold start is replaced once that cold start's first
#: invocation and the client request that called it are done, or this much
#: later at the most (unless a request waits for one): the fork (page tables
#: of a large zygote, then the spare's warm-up) must not compete with the
#: cold start for the CPU (supervisor.pool.quiet_window).
REFILL_DELAY_S = 0.03
#: How often warm children are checked against the idle timeout.
REAP_PERIOD_S = 1.0
#: How often busy children's coarse CPU budgets are checked.
WATCHDOG_PERIOD_S = 0.025
#: How long the base zygote stays at nice 0 after the last request waited for
#: a fork (see fork_priority): not back to nice 10 between two requests of a storm.
RUSH_LINGER_S = 0.1
#: How often freshly idle children are read against their background
#: allowance. Every warm tenant is one between requests (300 of them at a
#: few thousand requests a second), and a read costs ~1 us plus the Python
#: around it: at every watchdog tick that was ~20 us per request. A spinner
#: is still stopped within this period plus its allowance.
IDLE_CHECK_PERIOD_S = 0.1
#: How long a child has to end its ``waitUntil`` work once told to.
LINGER_GRACE_S = 1.0


#: Deaths that are the script's doing (its process ended on its own, or it
#: broke the protocol): they count towards a crash loop.
_CRASHES = frozenset({KillReason.CHANNEL_CLOSED, KillReason.PROTOCOL_VIOLATION})
#: What a request to a version backed off for crashing is told.
CRASH_LOOP_MESSAGE = ("The worker's process ended unexpectedly (it keeps crashing: not started "
                      "again for a while).")


def _version_key(record: ScriptRecord) -> tuple[str, str, str]:
    return (record.namespace, record.name, record.version)


class _NoChild:
    """The child link of an invocation answered without a child."""

    pid = 0
    alive = False
    retired = True
    record = None

    def __init__(self) -> None:
        self.incoming: dict[int, Any] = {}
        self.sinks: dict[int, Any] = {}

    def send(self, message: Any) -> None:
        pass

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        pass

    def cpu_budget_shrank(self, inv: Any) -> None:
        pass

    def later(self, fn: Callable[[Any], None], arg: Any) -> None:
        fn(arg)  # no frames of its own to wait for


_NO_CHILD = _NoChild()


async def _finish_later(inv: Invocation) -> None:
    inv.finish()


def _dispatches(child: ChildProcess) -> bool:
    """Is ``child`` a dispatch worker (a script with a dispatch namespace
    binding), through which requests pass on their way to tenants?"""
    record = child.record
    return record is not None and any(type(b) is DispatchNamespace for b in record.bindings)


class PoolObserver(Protocol):
    """What the pool reports to metrics, without knowing about them."""

    def cold_start(self, seconds: float, failed: bool) -> None: ...

    def spare_ready(self, seconds: float, limits_seconds: float, joined_by: str) -> None: ...

    def spare_wait(self, seconds: float, zygote: str) -> None:
        """A sandbox was taken for a script after ``seconds`` of waiting for a
        spare (0: one was ready), from the ``"base"`` or a ``"package"`` zygote."""

    def child_ended(self, reason: str) -> None: ...


class PoolUnavailable(Exception):
    """No child can be had (capacity reached, sandbox not starting)."""


class SubrequestHandler(Protocol):
    """Where the calls a child makes go (``supervisor.calls.calls.Calls``)."""

    def handle(self, child: ChildProcess, message: SubRequest) -> None:
        """Start the call; it is answered to ``child`` later. Must not raise."""


class BindingHandler(Protocol):
    """Where a child's storage binding calls go (``supervisor.bindings.Bindings``)."""

    def handle(self, child: ChildProcess, message: BindingCall) -> None:
        """Start the operation; it is answered to ``child`` later. Must not raise."""


#: Builds the pool's call handler once the pool exists (calls need the pool
#: to invoke their targets; the pool needs the handler for its children).
CallsFactory = Callable[["Pool"], SubrequestHandler]


class Pool:
    def __init__(self, config: ServeConfig, calls: CallsFactory,
                 on_background: Callable[[ScriptRecord, str, str], None] | None = None, *,
                 bindings: BindingHandler | None = None, exact_cpu: bool = True) -> None:
        """``exact_cpu``: read each child's CPU counter whenever an invocation
        ends (exact ``cpuTime``; a syscall per invocation, so only when
        someone reads traces)."""
        self.config = config
        #: Where trace events that belong to no invocation go (None: nowhere).
        #: Told of what a script did outside any invocation (record, outcome,
        #: message): the observability pipeline makes it a trace event.
        self.on_background = on_background
        #: Storage binding calls (None: a script's binding calls fail cleanly).
        self.bindings = bindings
        #: Who keeps each child's memory limit (cgroup, prlimit or nothing).
        self.memory: Enforcer = choose_memory_enforcement(config.pool.memory_enforcement,
                                                          config.pool.memory_mb)
        self._kit = ChildKit(self.memory, MeterFactory(allow_perf=not os.environ.get("CORRAL_NO_PERF")))
        self._exact_cpu = exact_cpu
        self._background_ns = int(config.limits.background_cpu_ms * 1_000_000)
        #: Script versions as files, which children read (and the package store's root).
        self.bundles = Bundles(config.state_dir)
        #: The CPUs split between the supervisor's loop and warm children, while it is busy.
        #: Threads that keep the supervisor's cores awake while the loop waits (core_keeper).
        self.core_keeper = CoreKeeper(config.keep_cores_awake_us, all_cores(),
                                      config.keep_cores_awake_by)
        self.hub_core = HubCore(config.pool.hub_core, self.core_keeper)
        self.zygote = ZygoteClient(self.memory.jail_address_space_mb(), self._on_spawned, self._on_exited,
                                   self._on_zygote_restart, config.pool.zygote_max_age_s,
                                   config.pool.zygote_max_children, on_ready=self._on_zygote_ready,
                                   bundles_dir=self.bundles.root, packages_dir=self.bundles.packages,
                                   on_package_zygote=self._on_package_zygote, renice=self._kit.renice,
                                   take_slots=self.memory.take_slots, placed=self.hub_core.place_anywhere)
        #: A zygote per dependency set in use, with the set imported (cold starts without imports).
        self.packages = PackageZygotes(self, self.zygote.start_package_zygote,
                                       self.memory.jail_address_space_mb())
        self.children: dict[int, ChildProcess] = {}
        #: Live, starting and in-use children, counted as they change (not by a walk per convergence).
        self.census = ChildCensus()
        #: Base spares ready to take, and the requests in line for one.
        self.spare_line: SpareLine[ChildProcess] = SpareLine()
        self.spares = self.spare_line.spares
        #: Dependency sets whose package zygotes a rotation ended while in use
        #: (started again by :meth:`_on_zygote_ready`).
        self._sets_to_restart: list[tuple[str, list[str]]] = []
        #: Sets the bounds refused a package zygote (logged once until admitted).
        self._refused_sets: set[str] = set()
        self.warm: OrderedDict[tuple[str, str], ChildProcess] = OrderedDict()
        self.retired: set[ChildProcess] = set()
        #: Children whose CPU the watchdog polls (budgets the kernel is not armed for).
        self.busy: set[ChildProcess] = set()
        #: Children fallen idle whose background allowance is not guarded yet.
        self.cooling: set[ChildProcess] = set()
        #: Children holding frames to go with their next ones (ChildProcess.defer).
        self.deferring: set[ChildProcess] = set()
        #: Idle children give unchanged copied pages back (supervisor.pool.idle_trim).
        self.trimmer = IdleTrimmer(calm=self._calm)
        #: Kernel-armed budgets in flight, looked at as soon as they can run out.
        self.budgets: BudgetWatch[ChildProcess] = BudgetWatch(
            lambda child: child.cpu, lambda child: child.kill(KillReason.EXCEEDED_CPU))
        self._requested = 0
        self._waiting = 0
        #: The base zygote's nice: 0 while a request waits for its fork (fork_priority).
        self._fork_priority = ForkPriority()
        self._nudged = trio.Event()
        #: When the maintain task converges next without a nudge.
        self._wake_at = 0.0
        self._next_reap = 0.0
        #: No base fork while it is open unless a request waits (see REFILL_DELAY_S).
        self._quiet = QuietWindow(REFILL_DELAY_S)
        #: Cold starts that took a base spare lately (sizes the spares).
        self._cold_rate = EventRate()
        #: The package zygotes' window always lasts REFILL_DELAY_S: their fork
        #: copies the page tables of a process ~10x the base zygote's, and
        #: the new spare then rebuilds its rehearsal apps (~20 ms of CPU).
        self._package_quiet_until = -math.inf
        self._loading: dict[tuple[str, str, str], trio.Event] = {}
        #: Versions whose children keep dying: answered without a fork for a while.
        self.crash_loops = CrashLoops()
        self._nursery: trio.Nursery | None = None
        #: Ids of invocations answered with no child (a crash-looping version's):
        #: under 2**31, below every child's own (ChildProcess.next_invocation_id).
        self._childless_ids = 0
        self.stats = {"cold_starts": 0, "invocations": 0, "children_killed": 0}
        #: Children loading a script only to validate an upload: their loads
        #: are no cold starts (no invocation waits on them), so the cold
        #: start histogram leaves them out.
        self._validating: set[ChildProcess] = set()
        #: Children that said Hello, and the CPU (microseconds) and page faults
        #: their set-up took per step (protocol.messages.SETUP_STEPS).
        self.setups = 0
        self.setup_us_total = [0] * len(SETUP_STEPS)
        self.setup_faults_total = [0] * len(SETUP_STEPS)
        #: Hands WebSocket events to workers (supervisor.edge.websockets.Deliverer;
        #: set by the server): a socket closed here is one its worker hears of.
        self.websockets: Any = None
        self.calls = calls(self)
        #: Told of cold starts (with their latency) and of children's ends
        #: (supervisor.observability.metrics); None: nobody listens.
        self.observer: PoolObserver | None = None

    # ------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        self._kit.batch.install()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.packages.attach(nursery)
                nursery.start_soon(self._kit.channels.run)
                nursery.start_soon(self.memory.keep_slots)
                await nursery.start(self.zygote.run)
                self._next_reap = trio.current_time() + REAP_PERIOD_S
                nursery.start_soon(self._maintain)
                nursery.start_soon(self._cpu_watchdog)
                nursery.start_soon(self.trimmer.run)
                nursery.start_soon(self._keep_hub_core)
                await nursery.start(self.core_keeper.run)
                await nursery.start(self.budgets.run)
                task_status.started()
        finally:
            self._kit.batch.uninstall()
            # Children hear the end of their channel and exit, but one stuck
            # where nothing reaches it (a blocking call in C) outlived the
            # supervisor, its tenant's code running unwatched: each goes.
            for child in list(self.children.values()):
                try:
                    signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)
                except OSError:
                    pass

    def _childless_id(self) -> int:
        self._childless_ids = self._childless_ids % ((1 << 31) - 1) + 1
        return self._childless_ids

    def _on_spawned(self, pid: int, sock: socket.socket, pidfd: int, slot: int) -> None:
        self._requested = max(0, self._requested - 1)
        self._adopt(pid, sock, pidfd, self.zygote.generation, urgent=self._waiting > 0, slot=slot)

    def _on_package_zygote(self, key: str, pid: int, sock: socket.socket, pidfd: int, generation: int) -> None:
        self.packages.started(key, pid, sock, pidfd, generation)

    # what package zygotes report (supervisor.pool.package_zygotes.PackageOwner)
    def on_package_spawned(self, zygote: PackageZygote, pid: int, sock: socket.socket, pidfd: int,
                           slot: int) -> None:
        child = self._adopt(pid, sock, pidfd, zygote.generation, urgent=zygote.waiting > 0, slot=slot)
        if child is not None:
            child.package = zygote
        self.zygote.forked()  # the same hash seed as the base zygote's children

    def on_package_exited(self, pid: int, status: int) -> None:
        self._on_exited(pid, status)

    def on_package_zygote_change(self) -> None:
        self._nudge()

    def _adopt(self, pid: int, sock: socket.socket, pidfd: int, generation: int,
               urgent: bool, slot: int = -1) -> ChildProcess | None:
        """A freshly forked child. ``urgent``: a request waits for a spare, so
        its set-up runs at the rushed zygote's :data:`RUSH_NICE`, not the
        refill's nice 10 (in a storm of cold starts, a niced spare starved
        behind the very requests waiting for it: p99 of seconds). Assigned a
        script, it runs at the tenants' nice 0 (``ChildProcess.assign``)."""
        if self._nursery is None:
            sock.close()
            os.close(pidfd)
            return None
        child = ChildProcess(self, pid, sock, pidfd, generation, self._kit, slot)
        if urgent:
            self._kit.renice(pid, RUSH_NICE)
        self.children[pid] = child
        self.census.adopted(child)
        self._nursery.start_soon(child.run)
        return child

    def _on_exited(self, pid: int, status: int) -> None:
        child = self.children.get(pid)
        if child is not None:
            if child.record is not None:
                self.bundles.want_collection()  # its version may be unused now
        self.memory.reaped(pid)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == 31:  # SIGSYS: seccomp
            warn("child.seccomp_kill", pid=pid, status=describe_status(status))

    def _on_zygote_restart(self) -> None:
        """A new zygote is coming: spares of the old one go, and so do its
        children still starting (new tenants get the new hash seed; see
        supervisor.pool.zygote_client); warm children keep serving until idle."""
        self._requested = 0
        while self.spares:
            self.spares.popleft().kill(KillReason.ZYGOTE_REPLACED)
        now = trio.current_time()
        self._sets_to_restart = [
            (package.key, package.dirs) for package in self.packages.zygotes.values()
            if package.alive and now - package.last_used < self.config.pool.idle_timeout_s]
        for package in list(self.packages.zygotes.values()):
            while package.spares:
                package.spares.popleft().kill(KillReason.ZYGOTE_REPLACED)
        self.packages.end_all()
        for child in list(self.children.values()):
            if child.state is ChildState.STARTING and child.generation != self.zygote.generation:
                child.kill(KillReason.ZYGOTE_REPLACED)

    def _on_zygote_ready(self) -> None:
        """A zygote became the one that forks (its first start, a restart, a rotation).

        The dependency sets tenants used lately get their package zygotes
        again at once, from this zygote, instead of at their next cold start:
        a set's start (its imports and rehearsals) no longer lands on the
        first request after every rotation. Requests already waiting for a
        spare rush it: it started at nice 10 of its own, whatever the zygote
        it replaced was at.
        """
        sets, self._sets_to_restart = self._sets_to_restart, []
        for key, dirs in sets:
            self._want_package(key, dirs)
        if self._waiting:  # requests wait for this zygote's first forks (fork_priority)
            self._fork_priority.rush(self._kit.renice, self.zygote.pid)
        self._nudge()

    # ------------------------------------------------------------------
    # what children tell their owner (ChildOwner)
    # ------------------------------------------------------------------
    def cpu_account(self, meter: CpuMeter) -> CpuAccount:
        return CpuAccount(meter, exact=self._exact_cpu, background_ns=self._background_ns)

    def on_ready(self, child: ChildProcess) -> None:
        """A new child finished its jail and said hello."""
        self.census.ready(child)
        self._count_setup(child.setup_us, child.setup_faults)
        if self.observer is not None:
            self.observer.spare_ready(loop_clock.CLOCK.get()() - child.adopted_at, child.limits_s,
                                      child.memory.joined_by if child.memory is not None else "")
        if child.generation != self.zygote.generation:
            child.kill(KillReason.ZYGOTE_REPLACED)  # an old seed never reaches a new tenant
            return
        package = child.package
        if package is not None:
            if not package.alive:
                child.kill(KillReason.SURPLUS_SPARE)
                return
            package.line.offer(child)
            return
        self.spare_line.offer(child)
        if self.config.pool.reshare_after_s:
            self.trimmer.ask(child)  # what its set-up copied (see _converge); dropped unless calm

    def _count_setup(self, setup_us: tuple[int, ...], setup_faults: tuple[int, ...]) -> None:
        """Add a child's set-up CPU and page faults per step to the totals /metrics shows."""
        steps = len(SETUP_STEPS)
        if len(setup_us) != steps or len(setup_faults) != steps or min(setup_us + setup_faults) < 0:
            return  # another runtime's report: not comparable
        self.setups += 1
        for index in range(steps):
            self.setup_us_total[index] += setup_us[index]
            self.setup_faults_total[index] += setup_faults[index]

    def on_idle(self, child: ChildProcess) -> None:
        """A retiring child goes once it has nothing in flight."""
        if self._quiet.awaits_callers and self._quiet.check(trio.current_time()):
            self._nudge()
        if child.retired and child.idle:
            child.kill(KillReason.RETIRED)

    def retire(self, child: ChildProcess) -> None:
        """Take a child out of service at once (it is about to die)."""
        self._retire(child)

    def settle_cpu(self) -> None:
        """Charge every ended invocation still waiting for its last CPU read
        (the watchdog would within 25 ms), so that their traces are complete:
        a usage or metrics read then shows every invocation that ended before it."""
        for child in list(self.busy):
            if child.cpu is not None:
                child.cpu.settle()

    def set_exact_cpu(self, exact: bool) -> None:
        """Charge each invocation its exact CPU (``cpuTime``; a counter read per
        invocation), now and for children to come: on once anything reads traces."""
        if exact == self._exact_cpu:
            return
        self._exact_cpu = exact
        for child in self.children.values():
            if child.cpu is not None:
                child.cpu.exact = exact

    def on_subrequest(self, child: ChildProcess, message: SubRequest) -> None:
        self.calls.handle(child, message)

    def on_ws_connect(self, child: ChildProcess, message: WsConnect) -> None:
        self.calls.connect_socket(child, message)

    def on_binding_call(self, child: ChildProcess, message: BindingCall) -> None:
        if self.bindings is not None:
            self.bindings.handle(child, message)
        else:
            child.send(SubFailed(message.call, ExceptionInfo(
                "Error", "storage bindings are not available in this supervisor")))

    def on_background_overrun(self, child: ChildProcess) -> None:
        """A child burnt its background allowance outside any invocation (a
        task left running after its response) and the kernel killed it."""
        record = child.record
        if record is None:
            return
        warn("child.background_cpu_exceeded", pid=child.pid, script=record.name,
             namespace=record.namespace,
             allowance_ms=self.config.limits.background_cpu_ms)
        if self.on_background is not None:
            self.on_background(record, Outcome.EXCEEDED_CPU, BACKGROUND_CPU_MESSAGE)

    def on_loaded(self, child: ChildProcess, seconds: float, failed: bool) -> None:
        if self.observer is not None and child not in self._validating \
                and child.kill_reason is not KillReason.VALIDATED:  # a late Loaded, after its wait
            self.observer.cold_start(seconds, failed)

    def on_cold_start_over(self, child: ChildProcess, caller: Invocation | None = None) -> None:
        """A cold start's first invocation is done (or its child died): the
        quiet window may close, once the client request that called it is
        done too (supervisor.pool.quiet_window). A child that served is
        warm: off the supervisor's core while it has one."""
        if child.alive:
            self.hub_core.place_warm(child.pid, _dispatches(child))
            if child.record is not None:
                self.crash_loops.succeeded(_version_key(child.record))
        if self._quiet.over(trio.current_time(), child, caller):
            self._nudge()

    def on_condemned(self, child: ChildProcess) -> None:
        """Killed: no new request may reach it, though its death is still to
        be seen (a CPU kill's callers are answered at once, and may call the
        same script straight away: that call starts a new child). Every
        child is condemned before its death (``ChildProcess._on_dead`` kills
        it first), so :meth:`on_dead` need not look at the warm set again."""
        self.census.condemned(child)
        self._leave_warm(child)

    def on_cancel_heard(self, child: ChildProcess) -> None:
        """``child`` ended a handler it was told to stop at its wall time: it
        serves its script again, unless another child took its place."""
        record = child.record
        if record is None or child.retired or not child.alive:
            return
        key = (record.namespace, record.name)
        current = self.warm.get(key)
        if current is None:
            self.warm[key] = child
        elif current is not child:
            self._retire(child)

    def _leave_warm(self, child: ChildProcess) -> None:
        """``child`` no longer serves its script's new requests (a newer
        child may already hold its place)."""
        record = child.record
        if record is not None and self.warm.get((record.namespace, record.name)) is child:
            del self.warm[(record.namespace, record.name)]

    def on_dead(self, child: ChildProcess) -> None:
        if self.observer is not None and child.end_reason:
            self.observer.child_ended(child.end_reason)
        self.children.pop(child.pid, None)
        self.census.gone(child)
        if child.memory is not None:
            self.memory.forget(child.pid, child.memory)
        self.retired.discard(child)
        self.busy.discard(child)
        self.cooling.discard(child)
        self.on_cold_start_over(child)
        self._count_crash(child)
        try:
            (child.package.spares if child.package is not None else self.spares).remove(child)
        except ValueError:
            pass
        self._nudge()

    def _count_crash(self, child: ChildProcess) -> None:
        """A child that ran a script died of the script's doing: one more in
        its version's streak (supervisor.pool.crash_loop)."""
        record = child.record
        if record is None or child.over_cpu or child.kill_reason not in _CRASHES:
            return
        backoff = self.crash_loops.died(_version_key(record), trio.current_time())
        if backoff is not None:
            warn("script.crash_loop", script=record.name, namespace=record.namespace,
                 version=record.version_id or record.version, backoff_s=round(backoff, 3),
                 reason=child.kill_text)

    # ------------------------------------------------------------------
    # converging (see supervisor.pool.plan)
    # ------------------------------------------------------------------
    def _nudge(self) -> None:
        """Counts changed (a death, a spare taken, a zygote up): converge soon."""
        self._nudged.set()

    def _cold_started(self) -> None:
        """A cold start took a spare: its replacement waits (see REFILL_DELAY_S)."""
        now = trio.current_time()
        self._quiet.opened(now)
        if now >= self._package_quiet_until:
            self._package_quiet_until = now + REFILL_DELAY_S
        self._nudge()

    async def _maintain(self) -> None:
        """The pool's control loop (gunicorn's arbiter): converge on every
        nudge, when a deferred fork is due, and for the periodic idle scan."""
        while True:
            with trio.move_on_at(self._wake_at):
                await self._nudged.wait()
            self._nudged = trio.Event()
            self._converge()

    def _converge(self) -> Plan:
        """The one place the pool decides: build the view, plan, act."""
        now = trio.current_time()
        reap = now >= self._next_reap
        if reap:
            self._next_reap = now + REAP_PERIOD_S
            self.memory.retry_pending()
        decided = plan(self._view(now, reap))
        for key in decided.retire:
            self._retire(self.warm[key])  # type: ignore[index]
        for key in decided.reshare:
            self.trimmer.ask(self.warm[key])  # type: ignore[index]
        if decided.give_back:  # only ever set by the periodic scan
            # A base spare's own set-up (jail, loop, channel) copied ~570 of
            # the zygote's pages; ~190 of them are byte for byte what they
            # were (counts that went up and down). Given back while it
            # waits, they stay shared when it serves: ~0.5 MB off every
            # spare, ~0.3 MB (PSS) off every tenant started from one. Each
            # is asked when it is ready (on_ready), and again on calm scans
            # until an ask was sent. Not package spares: their prefault
            # copies pages on purpose.
            for spare in self.spares:
                if spare.reshared_at != spare.last_used:
                    self.trimmer.ask(spare)
        for _ in range(decided.trim):
            # Left over from a burst (deploy validations, waiters): each costs memory.
            self.spares.pop().kill(KillReason.SURPLUS_SPARE)
        if decided.fork and self.zygote.spawn(decided.fork):
            self._requested += decided.fork
        wake_at = decided.wake_at
        if self.packages.zygotes:
            wake_at = min(wake_at, self._converge_packages(now, decided.fork))
        # A deferred fork only happens with nobody waiting, i.e. here in the
        # maintain task, which re-arms with this before it sleeps again.
        self._wake_at = min(wake_at, self._next_reap)
        return decided

    def _converge_packages(self, now: float, base_forks: int,
                           wanted: tuple[str, list[str]] | None = None) -> float:
        """Package zygotes' spares and bounds, and whether the ``wanted`` set
        (key, package dirs), which has none, may start its zygote
        (supervisor.pool.plan.plan_packages); returns when to plan again
        for a deferred fork."""
        pool = self.config.pool
        live = self.census.live
        sets = []
        for zygote in self.packages.live():  # an ended one counts toward nothing
            zygote.in_use = self.census.in_use(zygote.key)
            sets.append(zygote.view(now))
        decided = plan_packages(PackagesView(
            now=now, sets=tuple(sets), spares_target=pool.package_spares,
            max_zygotes=pool.package_zygotes, memory_cap=pool.package_zygotes_memory_mb * 2**20,
            idle_timeout_s=pool.idle_timeout_s, spares_ceiling=pool.package_max_spares,
            room=pool.max_children - live - self._requested - base_forks,
            quiet_until=self._package_quiet_until, wanted=wanted[0] if wanted else ""))
        for key in decided.evict:
            zygote = self.packages.zygotes[key]
            while zygote.spares:
                zygote.spares.popleft().kill(KillReason.IDLE)
            log("package_zygote.evicted", set=key, memory_kb=zygote.memory // 1024)
            self.packages.end(zygote)
        if wanted is not None:
            if decided.start:
                self._refused_sets.discard(wanted[0])
                self.packages.want(wanted[0], wanted[1], self.zygote.generation)
            elif wanted[0] not in self._refused_sets:
                self._refused_sets.add(wanted[0])
                log("package_zygote.refused", set=wanted[0], zygotes=len(sets), max=pool.package_zygotes,
                    reason="the other sets' zygotes serve scripts, start or were not used yet; "
                           "its tenants start from base spares")
        for key, count in decided.fork:
            self.packages.zygotes[key].spawn(count, self.memory.take_slots)
        return decided.wake_at

    def _want_package(self, key: str, dirs: list[str]) -> PackageZygote | None:
        """Set ``key``'s package zygote, started if it has none and the bounds
        admit it (plan_packages); None while it may not have one."""
        zygote = self.packages.current(key, self.zygote.generation)
        if zygote is None:
            self._converge_packages(trio.current_time(), 0, wanted=(key, dirs))
            self._nudge()  # a fork it deferred is planned again by the maintain task
            zygote = self.packages.get(key)
            if zygote is None:
                return None
        self.packages.touch(zygote)
        return zygote

    def _view(self, now: float, reap: bool) -> PoolView:
        pool = self.config.pool
        live, starting = self.census.live, self.census.starting
        warm: tuple[WarmChild, ...] = ()
        if reap or (self._waiting and live + self._requested >= pool.max_children):
            warm = tuple(WarmChild(key, child.idle, child.last_used, child.reshared_at == child.last_used)
                         for key, child in self.warm.items())
        return PoolView(now=now, spares_target=pool.spares, max_children=pool.max_children,
                        idle_timeout_s=pool.idle_timeout_s, spares=len(self.spares),
                        requested=self._requested, starting=starting, live=live,
                        waiting=self._waiting, quiet_until=self._quiet.until,
                        cold_rate=self._cold_rate.per_second(now), spares_ceiling=pool.max_spares,
                        warm=warm, reap=reap, reshare_after_s=pool.reshare_after_s)

    def _calm(self) -> bool:
        """No request waits for a spare and cold starts are not coming fast
        (plan.calm): background work (give-backs, the hub's core) may go on."""
        return calm(self._waiting, self._cold_rate.per_second(trio.current_time()))

    async def _keep_hub_core(self) -> None:
        """Give the supervisor's loop a core of its own while it is the busy hub (hub_core)."""
        hub = self.hub_core
        while hub.possible:
            await trio.sleep(HUB_CHECK_S)
            since = loop_clock.CLOCK.get()() - HUB_CHECK_S
            warm: list[int] = []
            dispatchers: list[int] = []
            active = 0  # tenant children that served since the last check
            for child in self.children.values():
                if not child.alive or child.record is None or child.cold:
                    continue
                warm.append(child.pid)
                if _dispatches(child):
                    dispatchers.append(child.pid)
                elif child.last_used >= since:
                    active += 1
            hub.check(self._calm(), warm, dispatchers, active)

    async def _cpu_watchdog(self) -> None:
        """Enforce the CPU budgets the kernel is not armed for (see cpu_account),
        each invocation's wall time until its response is complete (however
        the body travels), and the ``waitUntil`` deadline after it."""
        linger_s = self.config.limits.wait_until_ms / 1000.0
        next_idle_check = 0.0
        while True:
            await trio.sleep(WATCHDOG_PERIOD_S)
            now = trio.current_time()
            self.send_deferred(in_task=True)
            priority = self._fork_priority
            if priority.rushed and not self._waiting and now >= priority.until:
                priority.calm(self._kit.renice, self.zygote.pid)
            if now >= next_idle_check:
                next_idle_check = now + IDLE_CHECK_PERIOD_S
                self._guard_idle_children()
            for child in list(self.busy):
                cpu = child.cpu
                if cpu is not None:
                    cpu.settle()
                    if cpu.needs_watchdog and cpu.over_budget():
                        child.kill(KillReason.EXCEEDED_CPU)
                        continue
                if not child.invocations and (cpu is None or not cpu.needs_watchdog):
                    self.busy.discard(child)  # it was here for its ended invocations' last read
                    continue
                for inv in list(child.invocations.values()):
                    if inv.response_end is None:
                        if now > inv.deadline:
                            if inv.has_head:
                                inv.cut_response()
                            else:
                                inv.cancel(Outcome.EXCEEDED_WALL_TIME)
                                # Its handler may be stuck where no Cancel reaches
                                # it (a blocking call in C): the script's next
                                # requests go to another child until this one
                                # shows it heard (on_cancel_heard).
                                inv.cancel_by = now + LINGER_GRACE_S
                                self._leave_warm(child)
                    elif inv.cancel_by and now > inv.cancel_by:
                        # It did not: it ends when it falls idle, or at its
                        # waitUntil deadline.
                        inv.cancel_by = 0.0
                        if not child.retired:
                            warn("child.stuck_after_cancel", pid=child.pid,
                                 script=child.record.name if child.record else "")
                            self._retire(child)
                    elif inv.linger_cut:
                        if now > inv.linger_cut:
                            self._kill_lingering(child)
                            break
                    elif now > inv.response_end + linger_s:
                        inv.end_lingering(LINGER_GRACE_S)

    def send_deferred(self, in_task: bool = False) -> None:
        """The frames children were to be sent with their next ones
        (ChildProcess.defer) go now: the loop is about to sleep, so no next
        one is coming soon (from the loop's instrument, supervisor.busy_poll,
        outside any task: a send the socket does not take whole is left to
        the watchdog), or the watchdog's period is over (``in_task``)."""
        if self.deferring:
            deferring, self.deferring = self.deferring, set()
            for child in deferring:
                child.flush_deferred(in_task)

    def _guard_idle_children(self) -> None:
        """Freshly idle children are read against their background allowance
        (every IDLE_CHECK_PERIOD_S; cheap, they sleep); idle for a while, it
        is armed in the kernel (one costlier syscall per long idle period,
        none per request)."""
        if not self.cooling:
            return
        guard_after = time.monotonic() - IDLE_GUARD_AFTER_S
        for child in list(self.cooling):
            cpu = child.cpu
            if cpu is None or cpu.idle_since is None or not child.alive:
                self.cooling.discard(child)
            elif cpu.idle_since <= guard_after:
                self.cooling.discard(child)
                if not cpu.guard_idle():
                    child.kill(KillReason.EXCEEDED_CPU)
            elif not cpu.check_idle():
                self.cooling.discard(child)
                child.kill(KillReason.EXCEEDED_CPU)

    def _kill_lingering(self, child: ChildProcess) -> None:
        """A child ignored the end of its ``waitUntil`` deadline: it goes.

        Its lingering invocations already answered; they end here (and their
        trace events are emitted) before the process is killed.
        """
        for inv in list(child.invocations.values()):
            if inv.linger_cut:
                child.invocations.pop(inv.id, None)
                child.end_invocation(inv)
        warn("child.wait_until_overrun", pid=child.pid, script=child.record.name if child.record else "")
        self._retire(child)
        child.kill(KillReason.WAIT_UNTIL_OVERRUN)

    def _retire(self, child: ChildProcess) -> None:
        """Out of the warm set; killed now if idle, else when it falls idle."""
        self._leave_warm(child)
        child.retire()
        if child.idle:
            child.kill(KillReason.IDLE)
        else:
            self.retired.add(child)

    def retire_script(self, namespace: str, name: str) -> None:
        """A script was redeployed or deleted: its warm child drains and goes."""
        child = self.warm.get((namespace, name))
        if child is not None:
            self._retire(child)
        self.crash_loops.forget(namespace, name)

    # ------------------------------------------------------------------
    # acquiring a child for a script
    # ------------------------------------------------------------------
    async def acquire(self, record: ScriptRecord) -> ChildProcess:
        key = (record.namespace, record.name)
        while True:
            child = self.warm.get(key)
            if child is not None and child.alive:
                if child.record is not None and child.record.version == record.version:
                    self.warm.move_to_end(key)
                    return child
                self._retire(child)  # an older version: drain it
            loading_key = (record.namespace, record.name, record.version)
            loading = self._loading.get(loading_key)
            if loading is not None:
                await loading.wait()
                continue
            event = self._loading[loading_key] = trio.Event()
            try:
                child = await self._spare_with_bundle(record)
                self._assign(child, record)
                return child
            finally:
                del self._loading[loading_key]
                event.set()

    async def _spare_with_bundle(self, record: ScriptRecord, wait_for_package: bool = False) -> ChildProcess:
        """A spare, and ``record``'s bundle on disk: assign it before the next await.

        A script with packages takes a spare of its set's package zygote when
        that one is ready (and starts it when there is none and the bounds
        admit it); until then, a base spare, which imports the packages
        itself. ``wait_for_package`` (a deploy's validation): wait for a
        zygote that is starting, up to :data:`PACKAGE_READY_WAIT_S`, and
        validate in one of its spares. The deploy then returns with the
        set's zygote ready, so the first request's cold start is one of its
        spares, with nothing to import (it was a base spare, importing the
        set: numpy's first request took 60-85 ms instead of ~10). A deploy
        costs about what it did: the validation's base spare imported the
        set too, and now no second process imports it beside the zygote.
        """
        while True:
            while not self.bundles.ready(record):
                await self.bundles.ensure(record)
            package = None
            if record.packages_lock:
                package = self._want_package(record.packages_lock, self.bundles.package_dirs(record.version))
            if package is not None and wait_for_package and not package.ready.is_set():
                with trio.move_on_after(PACKAGE_READY_WAIT_S):
                    await package.ready.wait()  # set when it ends, too
            if package is not None and package.ready.is_set() and package.alive:
                child = await self._take_package_spare(package)
            else:
                child = await self._take_spare()
            if self.bundles.ready(record):
                return child
            # Collected while we waited: write it again, with the spare back in line.
            (child.package.line if child.package is not None else self.spare_line).offer(child, first=True)

    def versions_in_use(self) -> set[str]:
        """Script versions some live child was assigned (their bundles must stay)."""
        return {child.record.version for child in self.children.values()
                if child.record is not None and child.alive and child.kill_reason is None}

    def acquire_now(self, record: ScriptRecord) -> ChildProcess | None:
        """A cold start without waiting, when a spare and the bundle are ready (else None)."""
        if (record.namespace, record.name, record.version) in self._loading:
            return None
        if self.crash_loops.backing_off(_version_key(record), trio.current_time()):
            return None  # pool.invoke answers it
        if not self.bundles.ready(record):
            return None
        line, taken = self.spare_line, self._cold_rate.record
        if record.packages_lock:
            package = self.packages.get(record.packages_lock)
            if package is None or not package.spares:
                return None  # the awaiting path starts it, or falls back to a base spare
            line, taken = package.line, package.taken
        child = line.take_now()  # None too while requests are in line for one
        if child is None:
            return None
        taken(trio.current_time())
        self._waited(0.0, line is not self.spare_line)
        self._assign(child, record)
        self._cold_started()
        return child

    def _bundle_of(self, record: ScriptRecord) -> Any:
        """What a child is sent for ``record`` (its bundle is :meth:`Bundles.ready`)."""
        version = record.version
        return to_bundle(record, self.bundles.path(version), self.bundles.package_dirs(version),
                         self.bundles.code.get(version))

    def _assign(self, child: ChildProcess, record: ScriptRecord) -> None:
        """A spare becomes the warm child of ``record`` (an older version drains)."""
        key = (record.namespace, record.name)
        old = self.warm.get(key)
        if old is not None and old is not child:
            self._retire(old)
        self._give_script(child, record)
        self.warm[key] = child
        self._quiet.started(child)
        self.stats["cold_starts"] += 1

    def _give_script(self, child: ChildProcess, record: ScriptRecord) -> None:
        """Send ``record`` to a spare (its bundle is :meth:`Bundles.ready`)."""
        child.assign(record, self._bundle_of(record))
        self.census.assigned(child, child.package.key if child.package is not None else None)

    def _waited(self, seconds: float, package: bool) -> None:
        if self.observer is not None:
            self.observer.spare_wait(seconds, "package" if package else "base")

    async def _take_spare(self, since: float | None = None) -> ChildProcess:
        """A base spare, waiting in line for one if need be (``since``: when
        the wait began, if it began for another zygote's spare)."""
        began = trio.current_time() if since is None else since
        self._waiting += 1
        try:
            with trio.move_on_after(SPARE_WAIT_S) as scope:
                while True:
                    child = self.spare_line.take_now()
                    if child is None:
                        decided = self._converge()  # room at the cap, a fork, or no hope
                        if decided.stuck:
                            raise PoolUnavailable(decided.why)
                        self._fork_priority.rush(self._kit.renice, self.zygote.pid)
                        child = await self.spare_line.take()
                    if child is not None and child.alive:
                        now = trio.current_time()
                        self._cold_rate.record(now)
                        self._waited(now - began, False)
                        return child
            assert scope.cancelled_caught
            raise PoolUnavailable("no sandbox became available in time")
        finally:
            self._waiting -= 1
            if self._waiting == 0:
                self._fork_priority.until = trio.current_time() + RUSH_LINGER_S
            self._cold_started()

    async def _take_package_spare(self, package: PackageZygote) -> ChildProcess:
        """A spare of ``package``'s zygote (forked on demand); a base spare if it dies."""
        began = trio.current_time()
        package.waiting += 1
        try:
            with trio.move_on_after(SPARE_WAIT_S):
                while package.alive:
                    child = package.line.take_now()
                    if child is None:
                        self._converge()
                        package.priority.rush(self._kit.renice, package.pid)
                        child = await package.line.take()  # None: the zygote ended
                    if child is not None and child.alive:
                        now = trio.current_time()
                        package.taken(now)
                        self._waited(now - began, True)
                        return child
        finally:
            package.waiting -= 1
            if package.waiting == 0 and package.alive:
                package.priority.calm(self._kit.renice, package.pid)
            self._cold_started()
        return await self._take_spare(since=began)

    async def validate(self, record: ScriptRecord, timeout: float = 10.0) -> LoadCheck:
        """Load ``record`` in a throw-away sandbox: the load error, or the handlers it defines."""
        try:
            child = await self._spare_with_bundle(record, wait_for_package=True)
        except BundleError as exc:
            return LoadCheck(str(exc))
        self._validating.add(child)
        try:
            self._give_script(child, record)
            with trio.move_on_after(timeout):
                async with trio.open_nursery() as nursery:

                    async def wait_dead() -> None:
                        await child.dead.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(wait_dead)
                    await child.loaded.wait()
                    nursery.cancel_scope.cancel()
            if child.loaded.is_set():
                error = child.load_error
                return LoadCheck(handlers=child.load_handlers, classes=child.load_classes) if error is None \
                    else LoadCheck(error.message)
            if not child.alive and child.over_cpu:
                return LoadCheck("the script's top-level code exceeded its startup CPU time")
            if not child.alive:
                return LoadCheck("the script crashed its sandbox while loading")
            return LoadCheck(f"the script did not finish loading within {timeout:g} s")
        finally:
            self._validating.discard(child)
            child.kill(KillReason.VALIDATED)

    # ------------------------------------------------------------------
    # invoking
    # ------------------------------------------------------------------
    def warm_child(self, record: ScriptRecord) -> ChildProcess | None:
        """The live child already running this version of the script, if any."""
        child = self.warm.get((record.namespace, record.name))
        if child is not None and child.alive and child.record is not None \
                and child.record.version == record.version:
            return child
        return None

    async def invoke(self, record: ScriptRecord, method: bytes, url: str, headers: list,
                     body: BodySource | bytes | None, limits: Limits,
                     parent: Invocation | None = None, outbound: Outbound | None = None,
                     params: dict[str, Any] | None = None, event: Event | None = None,
                     rpc: Any = None) -> Invocation:
        """Start an invocation, cold-starting the script if needed (await ``head_ready``).

        ``event`` is what it delivers when it is not an HTTP request (a tail
        worker's batch, ...); the script's handler of that kind gets it.
        ``rpc``: the stubs its RPC arguments carry (supervisor.pool.rpc_stubs.Lent).
        """
        child = self.warm_child(record)
        if child is None:
            if self.crash_loops.backing_off(_version_key(record), trio.current_time()):
                if rpc is not None:
                    rpc.end()
                return self._crash_looping(record, method, url, headers, body, limits, parent,
                                           outbound, params, event)
            try:
                child = await self.acquire(record)
            except BaseException:
                if rpc is not None:
                    rpc.end()
                raise
        return self.start(child, record, method, url, headers, body, limits, parent, outbound, params,
                          event, rpc)

    def _crash_looping(self, record: ScriptRecord, method: bytes, url: str, headers: list,
                       body: BodySource | bytes | None, limits: Limits, parent: Invocation | None,
                       outbound: Outbound | None, params: dict[str, Any] | None,
                       event: Event | None) -> Invocation:
        """The answer of a version backed off for crashing: the failure a
        crashed worker's invocation gets, at once, with no child."""
        inv = Invocation(self._childless_id(), _NO_CHILD, record, method, url, headers, limits,
                         parent=parent, outbound=outbound, params=params)
        inv.event = event
        if body is not None and not isinstance(body, bytes):
            body.close()
        inv.fail(ExceptionInfo("WorkerCrashed", CRASH_LOOP_MESSAGE), Outcome.CRASHED)
        if self._nursery is None:
            inv.finish()
        else:
            # Finished once the caller has set its callbacks (they follow
            # invoke() without an await): its trace goes where others go.
            self._nursery.start_soon(_finish_later, inv)
        return inv

    def start(self, child: ChildProcess, record: ScriptRecord, method: bytes, url: str,
              headers: list, body: BodySource | bytes | None, limits: Limits,
              parent: Invocation | None = None, outbound: Outbound | None = None,
              params: dict[str, Any] | None = None, event: Event | None = None,
              rpc: Any = None) -> Invocation:
        """Send an invocation to a child that already runs ``record`` (synchronous;
        a retired one too: a Durable Object's events follow its instance)."""
        key = (record.namespace, record.name)
        if self.warm.get(key) is child:
            self.warm.move_to_end(key)
        inv = Invocation(child.next_invocation_id(), child, record, method, url, headers, limits,
                         parent=parent, outbound=outbound, params=params)
        inv.event = event
        inv.rpc = rpc
        child.invocations[inv.id] = inv
        child.last_used = loop_clock.CLOCK.get()()
        self.stats["invocations"] += 1
        child.limit_memory(limits.memory_mb)
        sent = child.send_body(body, inv.id)
        child.cpu_start(inv)
        budget = inv.cpu_budget_ns if inv.cpu_budget_ns < PRECISE_BELOW_NS else 0
        child.send(Invoke(inv.id, method, url, headers, sent, params=params, event=event,
                          cpu_budget_ns=budget))
        return inv

    def snapshot(self) -> dict[str, Any]:
        return {
            "children": len(self.children),
            ChildState.STARTING.value: self.census.starting,
            "spares": len(self.spares),
            "warm": len(self.warm),
            "retired": len(self.retired),
            "zygote_pid": self.zygote.pid,
            # Those that can fork (imports done), not those starting or ended.
            "package_zygotes": sum(z.alive and z.ready.is_set() for z in self.packages.zygotes.values()),
            "reshare_asked": self.trimmer.sent,
            "setups": self.setups,
            "setup_us": dict(zip(SETUP_STEPS, self.setup_us_total, strict=True)),
            "setup_faults": dict(zip(SETUP_STEPS, self.setup_faults_total, strict=True)),
            "frames_batched": self._kit.batch.frames,
            "batch_writes": self._kit.batch.writes,
            "hub_core_held": int(self.hub_core.held),
            "core_keeper_spun_s": self.core_keeper.spun_s(),
            "core_keeper_held_s": self.core_keeper.held_s(),
            **self.stats,
        }

