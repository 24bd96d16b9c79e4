"""What the pool should do next: one pure decision from a snapshot.

The pool used to decide in seven places (refill after a death, after a cold
start, on a timer, when a request waits, ...), each with its own slice of
the rules. As in gunicorn's arbiter, it now converges in one step:
:class:`Pool` builds a :class:`PoolView` of its counts and calls
:func:`plan`, which says which warm children to retire, how many surplus
spares to trim and how many to fork, and when to look again. Being pure, the
rules are tested without a process (tests/test_pool_plan.py).

The rules, in the order they apply:

1. **Scale to zero.** On the periodic scan, a warm child idle for longer than
   ``idle_timeout_s`` is retired.
2. **Capacity.** At ``max_children`` (live children plus forks on their way),
   a request waiting for a spare that no spare, fork or starting child will
   serve makes room: the least recently used idle warm child goes, one per
   such request. When nothing can be evicted and nothing is coming, the
   waiting request has no hope (:attr:`Plan.stuck`; it answers 503).
3. **Trim.** Spares beyond the target plus one per waiting request (left
   over from a burst: each costs memory) are killed once the burst is over
   (:func:`calm`) and no fork is on its way or starting. The target is
   ``spares``, or more while cold starts come fast: enough to cover those
   that arrive while a replacement is forked (:func:`spares_for`, from the
   decayed rate of :mod:`supervisor.pool.rate`). Trimmed in the midst of a
   storm, a spare was forked again moments later: 56 of 600 cold starts'
   spares went that way, each a fork, a set-up and a teardown for nothing.
4. **Fork.** The spares missing from that target, less the forks on their
   way and the children still starting (each will be a spare), are asked
   of the zygote, within the room under the cap. Just after a cold start
   took a spare the fork waits ``quiet_until`` (the fork must not compete
   with that cold start for the CPU), unless a request is waiting for a
   spare.
5. **Give back.** On the periodic scan, a warm child idle for longer than
   ``reshare_after_s`` is asked for its copied pages (once per idle
   period), and so is every base spare not asked yet (what its own set-up
   copied), unless cold starts are busy (:func:`calm`): a give-back costs
   ~6 ms of CPU, and in a storm of first requests ~100 of them fell due
   within two seconds, a third of the CPU the storm's cold starts needed.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

#: From a spare being taken to its replacement being ready to take: the
#: quiet window (``supervisor.pool.pool.REFILL_DELAY_S``), the fork and the
#: spare's own set-up and warm-up, measured here at ~60-100 ms.
REFILL_S = 0.1
#: Cold starts per second (decayed, half-life 1 s) above which idle
#: children's give-backs wait: the CPU goes to the cold starts first.
BUSY_COLD_RATE = 5.0


def calm(waiting: int, cold_rate: float) -> bool:
    """Nothing waits for a spare and cold starts are not coming fast: the
    time for maintenance that costs CPU (give-backs)."""
    return not waiting and cold_rate < BUSY_COLD_RATE


@dataclass(frozen=True, slots=True)
class WarmChild:
    """A warm child as the plan sees it; ``key`` is whatever the pool needs to find it."""

    key: Hashable
    idle: bool
    last_used: float
    #: Gave its copied pages back since it was last used (supervisor.pool.idle_trim).
    reshared: bool = True


@dataclass(frozen=True, slots=True)
class PoolView:
    now: float
    #: ``pool.spares``, ``pool.max_children``, ``pool.idle_timeout_s``.
    spares_target: int
    max_children: int
    idle_timeout_s: float
    #: Spares ready to take.
    spares: int
    #: Forks asked of the zygote that have not arrived yet.
    requested: int
    #: Children forked that have not said Hello yet (and were not killed).
    starting: int
    #: Children not killed (every state but dead, minus those condemned).
    live: int
    #: Requests waiting for a spare.
    waiting: int
    #: No fork before this (a cold start's CPU) unless a request waits.
    quiet_until: float = -math.inf
    #: Cold starts per second lately (:class:`supervisor.pool.rate.EventRate`),
    #: and the most spares that rate may ask for (``pool.max_spares``).
    cold_rate: float = 0.0
    spares_ceiling: int = 0
    #: Warm children, least recently used first. Needed for the idle scan and
    #: at the cap; otherwise the pool may leave it empty.
    warm: tuple[WarmChild, ...] = ()
    #: Whether this step includes the idle-timeout scan (it runs once a second).
    reap: bool = False
    #: ``pool.reshare_after_s`` (0: never).
    reshare_after_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    #: Warm children to retire (keys of :attr:`PoolView.warm`), in that order.
    retire: tuple[Hashable, ...] = ()
    #: Warm children idle past ``reshare_after_s`` to ask for their copied pages.
    reshare: tuple[Hashable, ...] = ()
    #: Surplus spares to kill.
    trim: int = 0
    #: Spares to ask the zygote for.
    fork: int = 0
    #: When to converge again if nothing else wakes the pool.
    wake_at: float = math.inf
    #: Requests are waiting, the cap is reached, nothing can be evicted and
    #: nothing is on its way: they cannot be served.
    stuck: bool = False
    #: Why, when it is ``stuck`` (for the 503's log line).
    why: str = field(default="", compare=False)
    #: The idle scan ran while cold starts are calm: children (idle warm
    #: ones in :attr:`reshare`, and spares not asked yet) may be asked for
    #: their copied pages.
    give_back: bool = False


def plan(view: PoolView) -> Plan:
    """The actions that bring the pool back to its targets (see the module docstring)."""
    retire: list[Hashable] = []
    reshare: list[Hashable] = []
    live = view.live
    give_back = False
    if view.reap:
        give_back = bool(view.reshare_after_s) and calm(view.waiting, view.cold_rate)
        for child in view.warm:
            if child.idle and view.now - child.last_used > view.idle_timeout_s:
                retire.append(child.key)
                live -= 1  # retired while idle: killed at once
            elif (give_back and child.idle and not child.reshared
                  and view.now - child.last_used > view.reshare_after_s):
                reshare.append(child.key)
    want = spares_for(view.spares_target, view.spares_ceiling, view.cold_rate) + view.waiting
    stuck = False
    if view.waiting and live + view.requested >= view.max_children:
        unserved = view.waiting - view.spares - view.requested - view.starting
        for child in view.warm:
            if unserved <= 0:
                break
            if child.idle and child.key not in retire:
                retire.append(child.key)
                live -= 1
                unserved -= 1
        stuck = (live + view.requested >= view.max_children and unserved > 0
                 and not view.requested and not view.starting)
    coming = view.requested + view.starting
    trim = max(0, view.spares - want) if not coming and calm(view.waiting, view.cold_rate) else 0
    live -= trim  # killed at once
    room = view.max_children - live - view.requested
    missing = min(want - (view.spares - trim) - coming, room)
    fork, wake_at = 0, math.inf
    if missing > 0:
        if view.waiting or view.now >= view.quiet_until:
            fork = missing
        else:
            wake_at = view.quiet_until
    why = ""
    if stuck:
        why = (f"all {view.max_children} sandboxes are busy ({live} live, {len(view.warm)} warm, "
               f"{view.spares} spare)")
    return Plan(tuple(retire), tuple(reshare), trim, fork, wake_at, stuck, why, give_back)


# ---------------------------------------------------------------------------
# package zygotes (see supervisor.pool.package_zygotes)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackageSet:
    """One package zygote as the plan sees it."""

    key: str
    #: Its imports are done and it can fork.
    ready: bool
    spares: int
    requested: int
    #: Requests waiting for one of its spares.
    waiting: int
    #: Live children it forked that run a script (not spares).
    in_use: int
    last_used: float
    #: Its own memory (PSS, bytes; 0 until measured).
    memory: int
    #: Cold starts per second lately that took one of its spares.
    cold_rate: float = 0.0
    #: One of its spares became a script's child at least once (a deploy's
    #: validation included): until then it has not paid for its start.
    served: bool = True


@dataclass(frozen=True, slots=True)
class PackagesView:
    now: float
    sets: tuple[PackageSet, ...]
    #: Spares each ready package zygote keeps (``pool.package_spares``).
    spares_target: int
    max_zygotes: int
    memory_cap: int
    idle_timeout_s: float
    #: Children that may still be forked under ``max_children``.
    room: int
    #: The most spares a set's cold-start rate may ask for (``pool.package_max_spares``).
    spares_ceiling: int = 0
    #: As :attr:`PoolView.quiet_until`: a cold start is running, and a
    #: package zygote's fork (page tables of a large process, then the spare's
    #: warm-up) would compete with it for the CPU.
    quiet_until: float = -math.inf
    #: A set that has no package zygote and asks for one (a cold start or a
    #: deploy of one of its tenants, a rotation restarting it); "": none.
    wanted: str = ""


@dataclass(frozen=True, slots=True)
class PackagesPlan:
    #: Package zygotes to end (their spares with them), in that order.
    evict: tuple[str, ...] = ()
    #: ``(key, count)`` spares to ask each package zygote for.
    fork: tuple[tuple[str, int], ...] = ()
    #: When to plan again for a fork deferred by the quiet window.
    wake_at: float = math.inf
    #: The :attr:`PackagesView.wanted` set, when it may start its zygote.
    start: tuple[str, ...] = ()


def spares_for(floor: int, ceiling: int, cold_rate: float) -> int:
    """Spares to keep: the cold starts expected while a taken spare's
    replacement is on its way (``cold_rate * REFILL_S``) plus the one being
    taken, never fewer than ``floor`` nor (above the floor) more than
    ``ceiling``. Below one cold start a second the floor is enough."""
    if cold_rate < 1.0:
        return floor
    return max(floor, min(ceiling, math.ceil(cold_rate * REFILL_S) + 1))


def plan_packages(view: PackagesView) -> PackagesPlan:
    """Spares per dependency set, which package zygotes go, and whether a
    wanted set may start one.

    A set whose zygote goes is not harmed beyond its next cold starts: its
    tenants then start from a base spare, which imports the set (the
    overflow path). A zygote that is started only to be ended at once is
    all cost and no benefit (its fork and imports, an eviction per
    convergence), so the rules never do that.

    1. **Idle.** A package zygote none of whose children runs a script, with
       nobody waiting, unused for ``idle_timeout_s``, goes (to zero).
    2. **Protected.** One whose children serve scripts stays (killing it
       would orphan them), and so does one a request waits for, one still
       starting (its imports are under way) and one that has not served a
       cold start yet: each has to be worth its start before the bounds may
       end it. Only the idle rule ends those.
    3. **Admission.** A :attr:`PackagesView.wanted` set starts its zygote
       only if the bounds can hold with it, counting it as protected:
       fewer than ``max_zygotes`` others are protected and their memory is
       within ``memory_cap``. Otherwise it starts none (no start to evict,
       no entry counting toward the bounds); its tenants cold-start from
       base spares until another set's zygote can go.
    4. **Bounds.** Past ``max_zygotes`` or ``memory_cap`` (their own memory
       together), the least recently used of the unprotected ones go until
       both hold (an admitted set makes room this way). When only protected
       ones are left the bounds are met as soon as they can be.
    5. **Spares.** Each remaining ready one keeps ``spares_target`` spares
       plus one per waiting request, within the room under the cap; with
       nobody waiting on a set, its forks wait for ``quiet_until``.
    """
    evict: list[str] = []

    def protected(s: PackageSet) -> bool:
        return bool(s.in_use or s.waiting) or not s.ready or not s.served

    for s in view.sets:
        if s.in_use == 0 and s.waiting == 0 and view.now - s.last_used > view.idle_timeout_s:
            evict.append(s.key)
    kept = [s for s in view.sets if s.key not in evict]
    start: tuple[str, ...] = ()
    if view.wanted and all(s.key != view.wanted for s in kept):
        guarded = [s for s in kept if protected(s)]
        if len(guarded) < view.max_zygotes and sum(s.memory for s in guarded) <= view.memory_cap:
            start = (view.wanted,)
    count = len(kept) + len(start)
    memory = sum(s.memory for s in kept)
    for s in sorted(kept, key=lambda s: s.last_used):
        if count <= view.max_zygotes and memory <= view.memory_cap:
            break
        if not protected(s):
            evict.append(s.key)
            kept.remove(s)
            count -= 1
            memory -= s.memory
    room = view.room
    fork: list[tuple[str, int]] = []
    wake_at = math.inf
    for s in kept:
        if not s.ready:
            continue
        want = spares_for(view.spares_target, view.spares_ceiling, s.cold_rate)
        missing = min(want + s.waiting - s.spares - s.requested, room)
        if missing <= 0:
            continue
        if s.waiting or view.now >= view.quiet_until:
            fork.append((s.key, missing))
            room -= missing
        else:
            wake_at = view.quiet_until
    return PackagesPlan(evict=tuple(evict), fork=tuple(fork), wake_at=wake_at, start=start)
