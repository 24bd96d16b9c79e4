"""A core of its own for the supervisor, while it is the busy hub of warm traffic.

Every request crosses the supervisor's one event loop several times, and a
warm child runs for tens of microseconds per request: at hundreds of tenants
the supervisor is the hub of a pipeline whose other stages are hundreds of
short-lived wake-ups. Sharing its core with them cost twice: the children
it woke queued on its core behind it (the host packs woken tasks onto the
waker's CPU; a scheduler trace showed eight children waiting 1.6-2.5 ms
there while the other core sat idle for 1.9 ms), and each evicted its cache.
With the supervisor alone on one core and the warm children on the others,
req/s at 300 tenants rose 10-31% in four A/Bs on one server (2 cores), the
children's CPU per request fell ~10%, and one tenant moved +2% to +10%. As
built here (adaptive, taken after a busy second), against ``"off"`` in 6 s
runs toggled on one server: +15% at 300 tenants, +20% at one.

It costs the tenants a core: a storm of cold starts ran at 1.5x the p50
with the split (cold starts need every core), and CPU-heavy tenants would
lose the core the supervisor does not fill. So the split is adaptive
(``[pool] hub_core = "auto"``): it is taken while the supervisor's loop is
busy (at least :data:`RESERVE_ABOVE` of a core over the last second) and
the pool is calm (no storm of cold starts), and given up as soon as cold
starts come, the supervisor is no longer busy, or the tenants' cores are
saturated while the supervisor leaves part of its own idle (then not taken
again for :data:`BACKOFF_S`). ``"on"`` keeps it whenever there are two
cores or more, ``"off"`` never.

What runs where while it holds: the supervisor's event-loop thread on the
hub core (the first of the CPUs it was started with), its worker threads
and every zygote and spare on all of them (a cold start loads on any core),
and a child that has served its first request on the others. Each change
is one ``sched_setaffinity`` per warm child, at most once a second.

Dispatch workers (a script with a dispatch namespace binding: every request
passes through one, twice) are the exception while many tenants take turns:
then they may run on every CPU, the hub's too, whose loop leaves gaps a
dispatcher fills, instead of queueing with hundreds of tenant children on
the others. At 300 tenants that gave +8% to +12% req/s
(``bench_revisions --together``, three A/Bs of 8 rounds, 22 of 24 rounds
ahead), the supervisor's CPU per request -7% to -13%. With one or two
tenants, where the loop's core is the bottleneck and the tenants' cores
have room, a dispatcher always on the hub's core cost 7%, so there it stays
with the tenants (:func:`share_hub`; 1.04x against no sharing, noise).
The tenants' cores' idle time does not tell the two apart here (0.23-0.29
at 300 tenants, 0.45-0.51 at two, with the keepers' spinning counted idle);
how many tenants served in the last period does.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from supervisor.core_keeper import CoreKeeper
from supervisor.log import log, warn

#: How often the supervisor's load is looked at.
CHECK_S = 1.0
#: The loop's CPU (in cores, over the last check) from which the hub takes its core...
RESERVE_ABOVE = 0.6
#: ... and below which it gives it back.
RELEASE_BELOW = 0.35
#: The tenants' cores count as saturated below this idle fraction ...
TENANTS_SATURATED_IDLE = 0.03
#: ... and then the core is given back if the supervisor leaves this much of it
#: idle. (At 300 warm tenants the split gains although the tenants' core is
#: nearly saturated: their CPU per request falls with it.)
HUB_IDLE_WASTED = 0.4
#: After giving the core back to saturated tenants, it is not taken again for this long.
BACKOFF_S = 30.0
#: While it holds, dispatch workers may run on the hub's core too once this
#: many tenant children served in the last period ...
SHARE_FROM_ACTIVE = 32
#: ... and go back to the tenants' cores once fewer than this did.
UNSHARE_BELOW_ACTIVE = 16

Mode = Literal["auto", "on", "off"]

#: Why the core goes back when tenants need it (and is not taken again for BACKOFF_S).
SATURATED = "the tenants' cores are saturated while the supervisor's is not"


@dataclass(frozen=True, slots=True)
class Load:
    """One check's reading."""

    #: CPU the supervisor's event-loop thread used, in cores.
    hub_busy: float
    #: No request waits for a spare and cold starts are not coming fast (plan.calm).
    calm: bool
    #: Idle fraction of the tenants' cores (mean).
    tenants_idle: float


def decide(held: bool, load: Load) -> tuple[bool, str]:
    """Whether the hub holds its core for the next period, and why it changes ("": it does not)."""
    if not held:
        if load.calm and load.hub_busy >= RESERVE_ABOVE:
            return True, f"the supervisor's loop used {load.hub_busy:.2f} of a core"
        return False, ""
    if not load.calm:
        return False, "cold starts need every core"
    if load.hub_busy < RELEASE_BELOW:
        return False, f"the supervisor's loop used only {load.hub_busy:.2f} of a core"
    if load.tenants_idle < TENANTS_SATURATED_IDLE and load.hub_busy < 1.0 - HUB_IDLE_WASTED:
        return False, SATURATED
    return True, ""


def share_hub(shared: bool, active: int) -> bool:
    """Whether dispatch workers may run on the held hub core for the next
    period, ``active`` tenant children having served in the last one."""
    if shared:
        return active >= UNSHARE_BELOW_ACTIVE
    return active >= SHARE_FROM_ACTIVE


class HubCore:
    """The split of the CPUs between the supervisor's loop and warm children.

    Created on the event loop's thread (the one it pins).
    """

    def __init__(self, mode: Mode, keeper: CoreKeeper | None = None) -> None:
        self.mode = mode
        #: Its threads stay on their cores, and what they spin counts as idle.
        self._keeper = keeper
        #: The CPUs the supervisor was started with: everything runs within them.
        self.cpus = frozenset(os.sched_getaffinity(0))
        ordered = sorted(self.cpus)
        self.hub = ordered[0]
        self.tenants = frozenset(ordered[1:])
        self.possible = mode != "off" and len(ordered) >= 2
        self.held = False
        #: Dispatch workers may run on the hub's core too (see :func:`share_hub`).
        self.shared = False
        self._backoff_until = 0.0
        self._thread_cpu = time.thread_time()
        self._at = time.monotonic()
        self._idle = self._idle_times()

    # -- placing processes -----------------------------------------------------------
    def place_warm(self, pid: int, dispatcher: bool = False) -> None:
        """A child that has served its first request: off the hub's core while
        it holds (a dispatch worker: unless it shares the hub's core)."""
        if self.held:
            _set(pid, self.cpus if dispatcher and self.shared else self.tenants)

    def place_anywhere(self, pid: int) -> None:
        """A zygote started by the loop's thread (whose mask it inherited): all the CPUs."""
        if self.held:
            _set(pid, self.cpus)

    # -- deciding --------------------------------------------------------------------
    def check(self, calm: bool, warm_pids: Iterable[int], dispatcher_pids: Iterable[int] = (),
              active: int = 0) -> None:
        """Read the last period's load and take or give back the core (on the
        loop's thread); ``dispatcher_pids``: the warm dispatch workers among
        ``warm_pids``; ``active``: the other warm children that served since the last check."""
        if not self.possible:
            return
        now = time.monotonic()
        thread_cpu = time.thread_time()
        idle = self._idle_times()
        elapsed = max(now - self._at, 1e-3)
        load = Load(hub_busy=(thread_cpu - self._thread_cpu) / elapsed, calm=calm,
                    tenants_idle=_idle_fraction(self._idle, idle))
        self._thread_cpu, self._at, self._idle = thread_cpu, now, idle
        if self.mode == "on":
            held, why = True, "" if self.held else "hub_core = \"on\""
        else:
            held, why = decide(self.held, load)
            if held and not self.held and now < self._backoff_until:
                return
        if held == self.held:
            if held:
                self._spread_threads()  # any made since the last look inherited the hub's core
                self._share(share_hub(self.shared, active), dispatcher_pids)
            return
        if why == SATURATED:
            self._backoff_until = now + BACKOFF_S
        try:
            self.set(held, warm_pids)
        except OSError as exc:  # the CPUs it may use changed under it (a cpuset)
            self.possible = False
            warn("hub_core.unavailable", reason=f"cannot set the event loop's CPUs: {exc}")
            return
        log("hub_core.held" if held else "hub_core.released", core=self.hub, reason=why,
            loop_cpu=round(load.hub_busy, 2), tenants_idle=round(load.tenants_idle, 2))

    def set(self, held: bool, warm_pids: Iterable[int]) -> None:
        """Take (or give back) the hub's core: the loop's thread, its other threads, the warm children."""
        os.sched_setaffinity(0, {self.hub} if held else self.cpus)
        self.held = held
        self.shared = False
        self._spread_threads()
        for pid in warm_pids:
            _set(pid, self.tenants if held else self.cpus)

    def _share(self, shared: bool, dispatcher_pids: Iterable[int]) -> None:
        """Let dispatch workers onto the held hub core, or back off it."""
        if shared == self.shared:
            return
        self.shared = shared
        for pid in dispatcher_pids:
            _set(pid, self.cpus if shared else self.tenants)
        log("hub_core.dispatchers_shared" if shared else "hub_core.dispatchers_unshared",
            core=self.hub)

    def _spread_threads(self) -> None:
        """The supervisor's worker threads run anywhere (they inherit the
        mask of the loop's thread, which made them)."""
        loop_thread = threading.get_native_id()
        keepers = self._keeper.thread_ids if self._keeper is not None else set()
        try:
            tids = [int(tid) for tid in os.listdir("/proc/self/task")]
        except OSError:
            return
        for tid in tids:
            if tid != loop_thread and tid not in keepers:
                _set(tid, self.cpus)

    def _idle_times(self) -> dict[int, tuple[float, int]]:
        """The tenants' cores' idle and total ticks; a core keeper's spinning is idle time."""
        found = _idle_times(self.tenants)
        if self._keeper is None:
            return found
        return {cpu: (idle + self._keeper.spun_ticks(cpu), total)
                for cpu, (idle, total) in found.items()}


def _set(pid: int, cpus: frozenset[int]) -> None:
    try:
        os.sched_setaffinity(pid, cpus)
    except OSError:
        pass  # it ended meanwhile


def _idle_times(cpus: frozenset[int]) -> dict[int, tuple[int, int]]:
    """``{cpu: (idle, total)}`` in clock ticks, from /proc/stat."""
    found: dict[int, tuple[int, int]] = {}
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if not line.startswith(b"cpu") or line[3:4] == b" ":
                    continue
                name, *fields = line.split()
                cpu = int(name[3:])
                if cpu in cpus:
                    ticks = [int(x) for x in fields[:8]]
                    found[cpu] = (ticks[3] + ticks[4], sum(ticks))
    except (OSError, ValueError):
        pass
    return found


def _idle_fraction(before: dict[int, tuple[float, int]], after: dict[int, tuple[float, int]]) -> float:
    idle: float = 0
    total = 0
    for cpu, (idle_after, total_after) in after.items():
        idle_before, total_before = before.get(cpu, (idle_after, total_after))
        idle += idle_after - idle_before
        total += total_after - total_before
    return idle / total if total > 0 else 1.0
