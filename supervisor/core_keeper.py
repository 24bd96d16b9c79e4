"""Keeping the supervisor's cores from halting while requests are in flight.

One warm request crosses processes five times (client, supervisor,
dispatcher, tenant, and back). Each crossing that finds its core halted pays
for waking it: on a VM that halts idle vCPUs at once, tens of microseconds
per wake-up, and the woken process then runs with cold caches. The
supervisor polls its own core for ``busy_poll_us`` before it sleeps
(:mod:`supervisor.busy_poll`), but the dispatcher's and the tenant's steps
land on cores that halted meanwhile, three wake-ups per request, and a wait
longer than the poll halts the supervisor's core too.

So a *keeper* thread sits on each of the supervisor's cores: a thread of the
supervisor's, pinned there, under ``SCHED_IDLE`` (any task woken on that core
preempts it at once), calling ``sched_yield`` between looks at the clock.
The event loop *pokes* the keepers each time it is about to wait while
requests are in flight, and once more after one ends (a keep-alive client's
next request is imminent too): they spin until ``keep_cores_awake_us`` after
the last poke, then sleep on an eventfd until the next. A long wait (a tenant
that sleeps) keeps them spinning only for that long after it began; an idle
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
with sparse traffic every core spins up to the window after each request
(at idle priority, so no work waits for it, but the host's CPU is not idle:
on a burstable VM or where power counts, set ``keep_cores_awake_us = 0``).

The spinning is C (``supervisor/native/corekeep.c``), without the GIL: a
Python loop would take the GIL from the event loop every few microseconds.
What keepers spin is idle time in every sense but the kernel's: the hub's
check of the tenants' cores (:mod:`supervisor.pool.hub_core`) counts it as
idle (:meth:`CoreKeeper.spun_ticks`), and a keeper is never one of the
threads the hub spreads over all cores. Without the extension (built by
``scripts/setup``) there are no keepers and a log line says so.
"""

from __future__ import annotations

import os
import threading

import trio

from supervisor.log import log, warn

try:
    from supervisor import _corekeep  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - scripts/setup builds it
    _corekeep = None

#: Kernel clock ticks per second (/proc/stat's unit).
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class CoreKeeper:
    """Keepers on ``cores`` (one thread each) and the poke that keeps them spinning."""

    def __init__(self, keep_awake_us: int, cores: frozenset[int]) -> None:
        self.window_ns = max(0, keep_awake_us) * 1000
        self.cores = tuple(sorted(cores))
        #: Native ids of the keeper threads (the hub leaves their CPUs alone).
        self.thread_ids: set[int] = set()
        self.running = False

    @property
    def possible(self) -> bool:
        return _corekeep is not None and self.window_ns > 0 and bool(self.cores)

    def poke(self) -> None:
        """The event loop is about to wait: keep the cores awake for the window."""
        if self.running:
            _corekeep.poke(self.window_ns)

    def spun_s(self) -> float:
        """CPU seconds every keeper spent spinning since the server started (/metrics)."""
        if not self.running:
            return 0.0
        return sum(_corekeep.spun_ns(slot) for slot in range(len(self.cores))) / 1e9

    def spun_ticks(self, core: int) -> float:
        """Clock ticks (as /proc/stat counts) the keeper of ``core`` spent spinning."""
        if not self.running or core not in self.cores:
            return 0.0
        return _corekeep.spun_ns(self.cores.index(core)) * _TICKS_PER_S / 1e9

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """The keepers' lives: until cancelled. Starts at once if keepers are impossible."""
        if not self.possible:
            if self.window_ns > 0:
                warn("core_keeper.unavailable", reason="the native helper is not built (scripts/setup)")
            task_status.started()
            return
        _corekeep.start()
        limiter = trio.CapacityLimiter(len(self.cores))
        self.running = True
        try:
            async with trio.open_nursery() as nursery:
                for slot, core in enumerate(self.cores):
                    nursery.start_soon(self._keep, slot, core, limiter)
                log("core_keeper.started", cores=list(self.cores), window_us=self.window_ns // 1000)
                task_status.started()
        finally:
            self.running = False

    async def _keep(self, slot: int, core: int, limiter: trio.CapacityLimiter) -> None:
        wake = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            # A cancelled run() stops the thread (stop() wakes it); it is not
            # waited for, as a keeper's read cannot be interrupted otherwise.
            await trio.to_thread.run_sync(self._thread, slot, core, wake, limiter=limiter,
                                          abandon_on_cancel=True)
        except OSError as exc:
            warn("core_keeper.stopped", core=core, reason=str(exc))
        finally:
            _corekeep.stop()

    def _thread(self, slot: int, core: int, wake: int) -> None:
        """On a worker thread: pinned, idle priority, the C loop; then as it was."""
        tid = threading.get_native_id()
        affinity = os.sched_getaffinity(0)
        policy = os.sched_getscheduler(0)
        self.thread_ids.add(tid)
        try:
            os.sched_setaffinity(0, {core})
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            _corekeep.run(slot, wake)
        finally:
            # trio reuses its worker threads: this one goes back as it came.
            _restore(policy, affinity)
            self.thread_ids.discard(tid)
            os.close(wake)


def _restore(policy: int, affinity: set[int]) -> None:
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
        os.sched_setaffinity(0, affinity)
    except OSError:
        pass


def all_cores() -> frozenset[int]:
    """Every CPU the supervisor may use (its own among them: see the module docstring)."""
    return frozenset(os.sched_getaffinity(0))

