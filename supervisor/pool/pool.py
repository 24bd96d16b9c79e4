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
"""

from __future__ import annotations

import os
import socket
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Callable, Protocol

import trio

from protocol.messages import MAX_CHUNK, Event, Invoke, Limits

from supervisor.pool.bodies import BodySource, BytesBody, ChildSink
from supervisor.pool.child_process import ChildProcess, describe_status
from supervisor.config import ServeConfig
from supervisor.pool.invocation import BACKGROUND_CPU_MESSAGE, Invocation, Outbound, background_trace
from supervisor.log import warn
from supervisor.limits.memory import Enforcer, choose as choose_memory_enforcement
from supervisor.model import ScriptRecord, to_bundle
from supervisor.pool.zygote_client import ZygoteClient

if TYPE_CHECKING:
    from supervisor.calls.calls import Calls

#: How long a request waits for a spare before the pool gives up (503).
SPARE_WAIT_S = 10.0
#: A spare taken by a cold start is replaced this much later (unless a
#: request waits for one): the fork must not compete with that cold start.
REFILL_DELAY_S = 0.005
#: How often busy children's coarse CPU budgets are checked.
WATCHDOG_PERIOD_S = 0.025
#: How long a child has to end its ``waitUntil`` work once told to.
LINGER_GRACE_S = 1.0


class PoolObserver(Protocol):
    """What the pool reports to metrics, without knowing about them."""

    def cold_start(self, seconds: float, failed: bool) -> None: ...

    def child_ended(self, reason: str) -> None: ...


class PoolUnavailable(Exception):
    """No child can be had (capacity reached, sandbox not starting)."""


class Pool:
    def __init__(self, config: ServeConfig,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        #: Where trace events that belong to no invocation go (None: nowhere).
        self.on_event = on_event
        self.calls: "Calls" = None  # type: ignore[assignment]  # set by the server
        #: Who keeps each child's memory limit (cgroup, prlimit or nothing).
        self.memory: Enforcer = choose_memory_enforcement(config.pool.memory_enforcement,
                                                          config.pool.memory_mb)
        self.zygote = ZygoteClient(self.memory.jail_address_space_mb(), self._on_spawned, self._on_exited,
                                   self._on_zygote_restart, config.pool.zygote_max_age_s,
                                   config.pool.zygote_max_children, on_ready=self._refill)
        self.children: dict[int, ChildProcess] = {}
        self.spares: deque[ChildProcess] = deque()
        self.warm: "OrderedDict[tuple[str, str], ChildProcess]" = OrderedDict()
        self.retired: set[ChildProcess] = set()
        self.busy: set[ChildProcess] = set()  # children with invocations in flight
        self._requested = 0
        self._waiting = 0
        self._spare_lot = trio.lowlevel.ParkingLot()
        self._refill_wanted = trio.Event()
        self._loading: dict[tuple[str, str, str], trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self.last_invocation_id = 0
        self.stats = {"cold_starts": 0, "invocations": 0, "children_killed": 0}
        #: Told of cold starts (with their latency) and of children's ends
        #: (supervisor.observability.metrics); None: nobody listens.
        self.observer: PoolObserver | None = None

    # ------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.zygote.run)
            self._refill()
            nursery.start_soon(self._reaper)
            nursery.start_soon(self._refiller)
            nursery.start_soon(self._cpu_watchdog)
            task_status.started()

    def next_id(self) -> int:
        self.last_invocation_id += 1
        return self.last_invocation_id

    def _on_spawned(self, pid: int, sock: socket.socket, pidfd: int) -> None:
        self._requested = max(0, self._requested - 1)
        if self._nursery is None:
            sock.close()
            os.close(pidfd)
            return
        child = ChildProcess(self, pid, sock, pidfd, self.zygote.generation)
        self.children[pid] = child
        self._nursery.start_soon(child.run)

    def _on_exited(self, pid: int, status: int) -> None:
        child = self.children.get(pid)
        if child is not None:
            child.exit_status = status
        self.memory.reaped(pid)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == 31:  # SIGSYS: seccomp
            warn("child.seccomp_kill", pid=pid, status=describe_status(status))

    def _on_zygote_restart(self) -> None:
        """A new zygote is coming: spares of the old one go, and so do its
        children still starting (new tenants get the new hash seed; see
        supervisor.pool.zygote_client); warm children keep serving until idle."""
        self._requested = 0
        while self.spares:
            self.spares.popleft().kill("zygote replaced")
        for child in list(self.children.values()):
            if child.state == "starting" and child.generation != self.zygote.generation:
                child.kill("zygote replaced")

    def on_ready(self, child: ChildProcess) -> None:
        """A new child finished its jail and said hello."""
        if child.generation != self.zygote.generation:
            child.kill("zygote replaced")  # an old seed never reaches a new tenant
            return
        self.spares.append(child)
        self._spare_lot.unpark()

    def on_idle_maybe(self, child: ChildProcess) -> None:
        if child.retired and child.idle:
            child.kill("retired")

    def on_background_overrun(self, child: ChildProcess) -> None:
        """A child burnt its background allowance outside any invocation (a
        task left running after its response) and the kernel killed it."""
        record = child.record
        if record is None:
            return
        warn("child.background_cpu_exceeded", pid=child.pid, script=record.name,
             namespace=record.namespace,
             allowance_ms=self.config.limits.background_cpu_ms)
        if self.on_event is not None:
            self.on_event(background_trace(record, "exceededCpu", BACKGROUND_CPU_MESSAGE))

    def on_dead(self, child: ChildProcess) -> None:
        self.children.pop(child.pid, None)
        if child.memory is not None:
            self.memory.forget(child.pid, child.memory)
        self.retired.discard(child)
        self.busy.discard(child)
        record = child.record
        if record is not None and self.warm.get((record.namespace, record.name)) is child:
            del self.warm[(record.namespace, record.name)]
        try:
            self.spares.remove(child)
        except ValueError:
            pass
        self._refill()

    def _refill(self) -> None:
        """Keep ``pool.spares`` spares (plus one per waiting request), no more."""
        want = self.config.pool.spares + self._waiting
        surplus = len(self.spares) - want
        while surplus > 0 and self._requested == 0:
            # Left over from a burst (deploy validations, waiters): each costs memory.
            self.spares.pop().kill("surplus spare")
            surplus -= 1
        live = sum(1 for child in self.children.values() if child.kill_reason is None)
        room = self.config.pool.max_children - live - self._requested
        missing = min(want - len(self.spares) - self._requested, room)
        if missing > 0 and self.zygote.spawn(missing):
            self._requested += missing

    def _refill_soon(self) -> None:
        """Refill after the cold start in progress had its chance at the CPU."""
        self._refill_wanted.set()

    async def _refiller(self) -> None:
        while True:
            await self._refill_wanted.wait()
            self._refill_wanted = trio.Event()
            await trio.sleep(REFILL_DELAY_S)
            self._refill()

    async def _reaper(self) -> None:
        """Scale to zero: retire children idle longer than the idle timeout."""
        idle_timeout = self.config.pool.idle_timeout_s
        while True:
            await trio.sleep(1.0)
            now = trio.current_time()
            for child in list(self.warm.values()):
                if child.idle and now - child.last_used > idle_timeout:
                    self._retire(child)
            self._refill()

    async def _cpu_watchdog(self) -> None:
        """Enforce the CPU budgets the kernel is not armed for (see cpu_account),
        each invocation's wall time until its response is complete (however
        the body travels), and the ``waitUntil`` deadline after it."""
        linger_s = self.config.limits.wait_until_ms / 1000.0
        while True:
            await trio.sleep(WATCHDOG_PERIOD_S)
            now = trio.current_time()
            for child in list(self.busy):
                cpu = child.cpu
                if cpu is not None and cpu.needs_watchdog and cpu.over_budget():
                    child.kill("exceededCpu")
                    continue
                for inv in list(child.invocations.values()):
                    if inv.response_end is None:
                        if now > inv.deadline:
                            if inv.head_ready.is_set():
                                inv.cut_response()
                            else:
                                inv.cancel("exceededWallTime")
                    elif inv.linger_cut:
                        if now > inv.linger_cut:
                            self._kill_lingering(child)
                            break
                    elif now > inv.response_end + linger_s:
                        inv.end_lingering(LINGER_GRACE_S)

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
        child.kill("waitUntil work ignored its deadline")

    def _retire(self, child: ChildProcess) -> None:
        record = child.record
        if record is not None and self.warm.get((record.namespace, record.name)) is child:
            del self.warm[(record.namespace, record.name)]
        child.retired = True
        if child.idle:
            child.kill("idle")
        else:
            self.retired.add(child)

    def retire_child(self, child: ChildProcess) -> None:
        """Take a child out of service at once (it is about to die)."""
        self._retire(child)

    def retire_script(self, namespace: str, name: str) -> None:
        """A script was redeployed or deleted: its warm child drains and goes."""
        child = self.warm.get((namespace, name))
        if child is not None:
            self._retire(child)

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
                child = await self._take_spare()
                self._assign(child, record)
                return child
            finally:
                del self._loading[loading_key]
                event.set()

    def acquire_now(self, record: ScriptRecord) -> ChildProcess | None:
        """A cold start without waiting, when a spare is ready (else None)."""
        if (record.namespace, record.name, record.version) in self._loading:
            return None
        while self.spares:
            child = self.spares.popleft()
            if not child.alive:
                continue
            self._assign(child, record)
            self._refill_soon()
            return child
        return None

    def _assign(self, child: ChildProcess, record: ScriptRecord) -> None:
        """A spare becomes the warm child of ``record`` (an older version drains)."""
        key = (record.namespace, record.name)
        old = self.warm.get(key)
        if old is not None and old is not child:
            self._retire(old)
        child.assign(record, to_bundle(record))
        self.warm[key] = child
        self.stats["cold_starts"] += 1

    async def _take_spare(self) -> ChildProcess:
        self._waiting += 1
        try:
            with trio.move_on_after(SPARE_WAIT_S) as scope:
                while True:
                    while self.spares:
                        child = self.spares.popleft()
                        if child.alive:
                            return child
                    self._make_room()
                    self._refill()
                    await self._spare_lot.park()
            assert scope.cancelled_caught
            raise PoolUnavailable("no sandbox became available in time")
        finally:
            self._waiting -= 1
            self._refill_soon()

    def _make_room(self) -> None:
        """At the process cap, the least recently used idle warm child goes."""
        limit = self.config.pool.max_children
        live = sum(1 for child in self.children.values() if child.kill_reason is None)
        if live + self._requested < limit:
            return
        for child in list(self.warm.values()):
            if child.idle:
                self._retire(child)
                return
        starting = any(c.state == "starting" and c.kill_reason is None for c in self.children.values())
        if not self._requested and not starting:  # else a spare is on its way: wait for it
            raise PoolUnavailable(
                f"all {limit} sandboxes are busy ({live} live, {len(self.warm)} warm, "
                f"{len(self.spares)} spare)")

    async def validate(self, record: ScriptRecord, timeout: float = 10.0) -> str | None:
        """Load ``record`` in a throw-away sandbox; the load error, or None."""
        child = await self._take_spare()
        try:
            child.assign(record, to_bundle(record))
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
                return None if error is None else error.message
            if not child.alive and child.over_cpu:
                return "the script's top-level code exceeded its startup CPU time"
            if not child.alive:
                return "the script crashed its sandbox while loading"
            return f"the script did not finish loading within {timeout:g} s"
        finally:
            child.kill("validated")

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
                     params: dict[str, Any] | None = None, event: Event | None = None) -> Invocation:
        """Start an invocation, cold-starting the script if needed (await ``head_ready``).

        ``event`` is what it delivers when it is not an HTTP request (a tail
        worker's batch, ...); the script's handler of that kind gets it.
        """
        child = self.warm_child(record) or await self.acquire(record)
        return self.start(child, record, method, url, headers, body, limits, parent, outbound, params,
                          event)

    def start(self, child: ChildProcess, record: ScriptRecord, method: bytes, url: str,
              headers: list, body: BodySource | bytes | None, limits: Limits,
              parent: Invocation | None = None, outbound: Outbound | None = None,
              params: dict[str, Any] | None = None, event: Event | None = None) -> Invocation:
        """Send an invocation to a child that already runs ``record`` (synchronous)."""
        self.warm.move_to_end((record.namespace, record.name))
        inv = Invocation(self.next_id(), child, record, method, url, headers, limits,
                         parent=parent, outbound=outbound, params=params)
        inv.event = event
        child.invocations[inv.id] = inv
        child.last_used = trio.current_time()
        self.stats["invocations"] += 1
        child.limit_memory(limits.memory_mb)
        if isinstance(body, BytesBody) and len(body._data) <= MAX_CHUNK:
            body = body._data
        if body is None or (isinstance(body, bytes) and len(body) <= MAX_CHUNK):
            child.cpu_start(inv)
            child.send(Invoke(inv.id, method, url, headers, body or None, params=params, event=event))
            return inv
        if isinstance(body, bytes):
            body = BytesBody(body)
        child.sinks[inv.id] = ChildSink(child, inv.id, body)
        child.cpu_start(inv)
        child.send(Invoke(inv.id, method, url, headers, None, True, params=params, event=event))
        return inv

    def snapshot(self) -> dict[str, Any]:
        return {
            "children": len(self.children),
            "spares": len(self.spares),
            "warm": len(self.warm),
            "retired": len(self.retired),
            "zygote_pid": self.zygote.pid,
            **self.stats,
        }

