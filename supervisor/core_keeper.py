"""Keeping the supervisor's cores from halting while requests are in flight.

One warm request crosses processes five times (client, supervisor,
dispatcher, tenant, and back). Each crossing that finds its core halted pays
for waking it: on a VM that halts idle vCPUs at once, tens of microseconds
per wake-up, and the woken process then runs with cold caches. The
supervisor polls its own core for ``busy_poll_us`` before it sleeps
(:mod:`supervisor.busy_poll`), but the dispatcher's and the tenant's steps
land on cores that halted meanwhile, three wake-ups per request, and a wait
longer than the poll halts the supervisor's core too.

So the cores are kept awake while requests are in flight: the event loop
*pokes* the keeper each time it is about to wait while requests are in
flight, and once more after one ends (a keep-alive client's next request is
imminent too), and the cores are kept from halting until
``keep_cores_awake_us`` after the last poke (how: below); then the keeper
sleeps on an eventfd until the next poke. A long wait (a tenant
that sleeps) keeps the cores awake only for that long after it began; an idle
server, whose loop wakes for timers only, never pokes them.

Why every core, and why 2,000 us by default: measured here, one request at
a time to a warm tenant with 1,800 scripts deployed (p50 ms, servers started
in turn, two to three rounds each; "paced": 2 ms between requests, a lightly
used tenant):

    keepers                      warm p50     paced p50
    none                         0.47-0.73    0.65-0.79
    every core, 500 us           0.37-0.49    0.80-0.97
    every core, 2,000 us         0.36-0.39    0.54-0.57
    all but the loop's, 500 us   0.37-0.48    0.73-0.88
    all but the loop's, 2,000 us 0.41-0.49    0.85-0.95
    (workerd: 0.33-0.37 warm, 0.44-0.49 paced)

A window shorter than the gap between requests costs the next request
the keepers' own wake-ups (the poke's eventfd writes, on the request's
path) and gains little. Throughput with 2,000 us against none (five
interleaved rounds each, both servers up): 300 tenants median 1.11x
(0.71-1.44), one tenant 0.99x (0.95-1.06): under load the cores have
little idle time to spin in. The price is the spinning itself:
with sparse traffic every core polls up to the window after each request
(no work waits for it, but the host's CPU is not idle:
on a burstable VM or where power counts, set ``keep_cores_awake_us = 0``).

**How the cores are kept awake** (``keep_cores_awake_by``):

- ``"auto"`` (the default): ``"latency_qos"`` when the supervisor may run
  on every CPU of the host, else ``"spin"``: a request makes every core of
  the host poll, which is the price of its speed on a host Corral has to
  itself, but not one to make a host's other CPUs pay.
- ``"latency_qos"``: for the window, the supervisor holds a
  0 us CPU latency request on ``/dev/cpu_dma_latency`` (the kernel's PM QoS
  interface, root only), and the kernel's idle loop polls instead of
  halting, on every core of the host. A task woken on a polling core needs
  no interrupt at all: the waker sets a flag the poll is watching. One
  thread holds and drops the request and sleeps meanwhile; the kernel drops
  it too when the descriptor closes, so a killed supervisor leaves nothing
  behind. Where the device cannot be opened, or the cores have no polling
  idle state for a request to choose (no cpuidle driver, or not x86's
  ``POLL``), the keepers spin instead (a log line says why).
- ``"spin"``: a *keeper* thread on each of the supervisor's cores, pinned
  there, under ``SCHED_IDLE``, spinning between looks at the clock. Only
  the supervisor's own cores spin, which matters on a host Corral shares;
  but a wake-up there still costs an interrupt and a switch away from the
  keeper.

  Measured here, a pipe ping-pong across the two cores (the waker polling,
  the wakee ``SCHED_BATCH``; medians of 5,000 round trips): 38-41 us with
  the wakee's core halted, 25-32 us with a keeper spinning there (yielding),
  7-11 us with the 0 us request held. With the server (one warm request at
  a time, two servers taking turns, 10 runs each): p50 0.53 ms with the
  request against 0.74 ms with spinning keepers (0.75x in adjacent pairs),
  p99 0.78x.

  The spinning loop yields (``sched_yield``) between looks at the clock,
  and must: the children run in sessions (autogroups) of their own, and
  the kernel compares the keeper's group with the child's, not the two
  tasks, so an idle-priority keeper that never enters the kernel is not
  preempted by a woken ``SCHED_BATCH`` child until the next tick. A
  user-space spin made warm p50 1.12-1.19x and p99 2.2-2.5x worse.

The spinning and the holding are C (``supervisor/native/corekeep.c``),
without the GIL: a Python loop would take the GIL from the event loop every
few microseconds.
What keepers spin is idle time in every sense but the kernel's: the hub's
check of the tenants' cores (:mod:`supervisor.pool.hub_core`) counts it as
idle (:meth:`CoreKeeper.spun_ticks`), and a keeper is never one of the
threads the hub spreads over all cores. Without the extension (built by
``scripts/setup``) there are no keepers and a log line says so.
"""

from __future__ import annotations

import os
import threading
from typing import Literal

import trio

from supervisor.log import log, warn

#: The kernel's CPU latency QoS device: a request held there is every core's.
QOS_DEVICE = "/dev/cpu_dma_latency"

#: Where each core's idle states are listed (``cpuN/cpuidle/stateK/name``).
CPU_SYSFS = "/sys/devices/system/cpu"

#: How the cores are kept awake (``keep_cores_awake_by``): see the module docstring.
KeepBy = Literal["auto", "latency_qos", "spin"]

try:
    from supervisor import _corekeep  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - scripts/setup builds it
    _corekeep = None

#: Kernel clock ticks per second (/proc/stat's unit).
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class CoreKeeper:
    """What keeps ``cores`` awake for a window after each poke: a CPU latency
    request held by one thread, or a spinning keeper thread on each core."""

    def __init__(self, keep_awake_us: int, cores: frozenset[int], by: KeepBy = "auto",
                 qos_device: str = QOS_DEVICE, cpu_sysfs: str = CPU_SYSFS) -> None:
        self.window_ns = max(0, keep_awake_us) * 1000
        self.cores = tuple(sorted(cores))
        self.by = by
        self.qos_device = qos_device
        self.cpu_sysfs = cpu_sysfs
        #: Native ids of the keeper threads (the hub leaves their CPUs alone).
        self.thread_ids: set[int] = set()
        self.running = False
        #: How the cores are being kept awake, once running.
        self.kept_by: Literal["latency_qos", "spin"] | None = None

    @property
    def possible(self) -> bool:
        return _corekeep is not None and self.window_ns > 0 and bool(self.cores)

    def poke(self) -> None:
        """The event loop is about to wait: keep the cores awake for the window."""
        if self.running:
            _corekeep.poke(self.window_ns)

    def spun_s(self) -> float:
        """CPU seconds every keeper spent spinning since the server started (/metrics)."""
        if not self.running or self.kept_by != "spin":
            return 0.0
        return sum(_corekeep.spun_ns(slot) for slot in range(len(self.cores))) / 1e9

    def held_s(self) -> float:
        """Seconds the latency request was held since the server started
        (/metrics): the time every core of the host polled for Corral."""
        if not self.running or self.kept_by != "latency_qos":
            return 0.0
        return _corekeep.held_ns() / 1e9

    def spun_ticks(self, core: int) -> float:
        """Clock ticks (as /proc/stat counts) the keeper of ``core`` spent spinning
        (none under a latency request: the kernel counts its polling as idle)."""
        if not self.running or self.kept_by != "spin" or core not in self.cores:
            return 0.0
        return _corekeep.spun_ns(self.cores.index(core)) * _TICKS_PER_S / 1e9

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """The keepers' lives: until cancelled. Starts at once if keepers are impossible."""
        if not self.possible:
            if self.window_ns > 0:
                warn("core_keeper.unavailable", reason="the native helper is not built (scripts/setup)")
            task_status.started()
            return
        qos = self._open_qos()
        self.kept_by = "latency_qos" if qos is not None else "spin"
        _corekeep.start()
        limiter = trio.CapacityLimiter(len(self.cores))
        self.running = True
        try:
            async with trio.open_nursery() as nursery:
                if qos is not None:
                    nursery.start_soon(self._keep, 0, None, qos, limiter)
                else:
                    for slot, core in enumerate(self.cores):
                        nursery.start_soon(self._keep, slot, core, -1, limiter)
                log("core_keeper.started", by=self.kept_by, cores=list(self.cores),
                    window_us=self.window_ns // 1000)
                task_status.started()
        finally:
            self.running = False

    def _open_qos(self) -> int | None:
        """The latency request's descriptor, if asked for and allowed; else None (spin)."""
        if self.by == "spin":
            return None
        reason = self._why_no_polling()
        if reason is None and self.by == "auto":
            reason = self._why_not_whole_host()
        if reason is None:
            try:
                return os.open(self.qos_device, os.O_WRONLY | os.O_CLOEXEC)
            except OSError as exc:
                reason = f"{self.qos_device}: {exc.strerror or exc}"
        # Asked for by name, its absence is worth a warning; "auto" just chose.
        (warn if self.by == "latency_qos" else log)(
            "core_keeper.no_latency_qos", reason=reason, fallback="spinning keepers on the supervisor's cores")
        return None

    def _why_not_whole_host(self) -> str | None:
        """Why a host-wide request would be out of place (the supervisor may
        not run on every CPU the host has online), or None."""
        try:
            with open(f"{self.cpu_sysfs}/online") as f:
                online = _cpu_list(f.read())
        except (OSError, ValueError):
            return None  # as if the host were ours: the kernel would say otherwise
        others = online - set(self.cores)
        if others:
            return (f"the supervisor may use {len(self.cores)} of the host's {len(online)} CPUs; "
                    f"a latency request would make the other {len(others)} poll too "
                    f"(keep_cores_awake_by = \"latency_qos\" asks for it anyway)")
        return None

    def _why_no_polling(self) -> str | None:
        """Why a 0 us request would not make the cores poll (their shallowest
        idle state is not a poll), or None if it would."""
        for core in self.cores:
            try:
                with open(f"{self.cpu_sysfs}/cpu{core}/cpuidle/state0/name") as f:
                    name = f.read().strip()
            except OSError:
                return f"cpu{core} lists no idle states (no cpuidle driver): its idle loop halts"
            if name != "POLL":
                return f"cpu{core}'s shallowest idle state is {name!r}, not a poll"
        return None

    async def _keep(self, slot: int, core: int | None, qos: int,
                    limiter: trio.CapacityLimiter) -> None:
        wake = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            # A cancelled run() stops the thread (stop() wakes it); it is not
            # waited for, as a keeper's read cannot be interrupted otherwise.
            await trio.to_thread.run_sync(self._thread, slot, core, wake, qos, limiter=limiter,
                                          abandon_on_cancel=True)
        except OSError as exc:
            warn("core_keeper.stopped", core=core, by=self.kept_by, reason=str(exc))
        finally:
            _corekeep.stop()

    def _thread(self, slot: int, core: int | None, wake: int, qos: int) -> None:
        """On a worker thread: the C loop, and then as it was. A spinning
        keeper is pinned to ``core`` at idle priority; the holder of a
        latency request (``qos``) is neither: it sleeps, and must wake at
        once when poked."""
        tid = threading.get_native_id()
        affinity = os.sched_getaffinity(0)
        policy = os.sched_getscheduler(0)
        self.thread_ids.add(tid)
        try:
            if core is not None:
                os.sched_setaffinity(0, {core})
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            _corekeep.run(slot, wake, qos)
        finally:
            # trio reuses its worker threads: this one goes back as it came.
            _restore(policy, affinity)
            self.thread_ids.discard(tid)
            os.close(wake)
            if qos >= 0:
                os.close(qos)  # drops the request, if the loop had not


def _cpu_list(text: str) -> set[int]:
    """The CPUs of a kernel CPU list such as ``0-3,8,10-11``."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _restore(policy: int, affinity: set[int]) -> None:
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
        os.sched_setaffinity(0, affinity)
    except OSError:
        pass


def all_cores() -> frozenset[int]:
    """Every CPU the supervisor may use (its own among them: see the module docstring)."""
    return frozenset(os.sched_getaffinity(0))

