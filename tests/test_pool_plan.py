"""The pool's convergence rules (supervisor.pool.plan), without a process."""

from __future__ import annotations

import math

import pytest

from supervisor.pool.plan import BUSY_COLD_RATE, Plan, PoolView, WarmChild, plan


def view(**changes: object) -> PoolView:
    base = dict(now=100.0, spares_target=2, max_children=10, idle_timeout_s=60.0, spares=2,
                requested=0, starting=0, live=3, waiting=0)
    base.update(changes)
    return PoolView(**base)  # type: ignore[arg-type]


def test_at_target_nothing_to_do() -> None:
    assert plan(view()) == Plan()


def test_missing_spares_are_forked() -> None:
    assert plan(view(spares=0, live=1)).fork == 2


def test_forks_on_their_way_count() -> None:
    assert plan(view(spares=0, requested=2, live=1)).fork == 0
    assert plan(view(spares=0, requested=1, live=1)).fork == 1


def test_children_still_starting_count_as_spares_to_come() -> None:
    """Forked but not ready yet: each will be a spare. Counted as missing,
    every look at the pool during their set-up forked them again."""
    assert plan(view(spares=0, starting=2, live=3)).fork == 0
    assert plan(view(spares=0, starting=1, requested=1, live=2)).fork == 0
    assert plan(view(spares=0, starting=1, live=2, waiting=2)).fork == 3


def test_one_more_spare_per_waiting_request() -> None:
    assert plan(view(spares=0, waiting=3, live=1)).fork == 5


def test_forks_stay_under_the_cap() -> None:
    assert plan(view(spares=0, live=9)).fork == 1
    assert plan(view(spares=0, live=10)).fork == 0


def test_after_a_cold_start_the_fork_waits_its_quiet_window() -> None:
    decided = plan(view(spares=1, live=2, quiet_until=100.004))
    assert decided.fork == 0 and decided.wake_at == 100.004
    assert plan(view(spares=1, live=2, quiet_until=99.0)).fork == 1


def test_a_waiting_request_does_not_wait_for_the_quiet_window() -> None:
    assert plan(view(spares=0, waiting=1, live=1, quiet_until=100.004)).fork == 3


def test_surplus_spares_stay_while_cold_starts_come_fast() -> None:
    """Trimmed in the midst of a storm, they were forked again moments later."""
    assert plan(view(spares=5, live=6, cold_rate=BUSY_COLD_RATE * 2)).trim == 0
    assert plan(view(spares=5, live=6, starting=1)).trim == 0
    assert plan(view(spares=5, live=6, cold_rate=BUSY_COLD_RATE / 2)).trim == 3


def test_surplus_spares_are_trimmed_unless_forks_are_coming() -> None:
    decided = plan(view(spares=5, live=6))
    assert (decided.trim, decided.fork) == (3, 0)
    assert plan(view(spares=5, live=6, requested=1)).trim == 0


def test_idle_children_past_the_timeout_retire_on_the_scan_only() -> None:
    warm = (WarmChild("old-idle", True, 10.0), WarmChild("old-busy", False, 10.0),
            WarmChild("recent", True, 90.0))
    assert plan(view(warm=warm, reap=True)).retire == ("old-idle",)
    assert plan(view(warm=warm, reap=False)).retire == ()


def test_children_idle_past_reshare_after_s_are_asked_once_per_idle_period() -> None:
    warm = (WarmChild("idle", True, 90.0, reshared=False),
            WarmChild("asked", True, 90.0, reshared=True),
            WarmChild("busy", False, 90.0, reshared=False),
            WarmChild("recent", True, 98.0, reshared=False),
            WarmChild("expired", True, 10.0, reshared=False))
    decided = plan(view(warm=warm, reap=True, reshare_after_s=5.0))
    assert decided.reshare == ("idle",)
    assert decided.retire == ("expired",)       # retired, not asked
    assert plan(view(warm=warm, reap=False, reshare_after_s=5.0)).reshare == ()
    assert plan(view(warm=warm, reap=True, reshare_after_s=0.0)).reshare == ()  # 0: never


def test_give_backs_wait_while_cold_starts_are_busy() -> None:
    """A give-back costs CPU that a storm of cold starts needs: none is asked
    while a request waits for a spare or cold starts come faster than
    BUSY_COLD_RATE; they are asked on the first scan after."""
    warm = (WarmChild("idle", True, 90.0, reshared=False),)
    busy = plan(view(warm=warm, reap=True, reshare_after_s=5.0, cold_rate=BUSY_COLD_RATE * 4))
    assert busy.reshare == ()
    assert plan(view(spares=0, waiting=1, warm=warm, reap=True, reshare_after_s=5.0)).reshare == ()
    assert plan(view(warm=warm, reap=True, reshare_after_s=5.0, cold_rate=BUSY_COLD_RATE / 2)).reshare == ("idle",)
    # Spares not asked yet are asked on the same calm scans only.
    assert not busy.give_back
    assert plan(view(warm=warm, reap=True, reshare_after_s=5.0)).give_back
    assert not plan(view(warm=warm, reap=False, reshare_after_s=5.0)).give_back
    assert not plan(view(warm=warm, reap=True, reshare_after_s=0.0)).give_back  # 0: never


def test_at_the_cap_the_least_recently_used_idle_child_makes_room() -> None:
    warm = (WarmChild("busy", False, 1.0), WarmChild("lru", True, 2.0), WarmChild("mru", True, 3.0))
    decided = plan(view(spares=0, live=10, waiting=1, warm=warm))
    assert decided.retire == ("lru",)
    assert decided.fork == 1 and not decided.stuck


def test_one_eviction_per_waiting_request_without_a_spare_coming() -> None:
    warm = tuple(WarmChild(i, True, float(i)) for i in range(5))
    assert plan(view(spares=0, live=10, waiting=3, warm=warm)).retire == (0, 1, 2)
    # A child still starting will serve one of them.
    assert plan(view(spares=0, live=10, waiting=3, starting=1, warm=warm)).retire == (0, 1)


def test_below_the_cap_nothing_is_evicted() -> None:
    warm = (WarmChild("idle", True, 1.0),)
    assert plan(view(spares=0, live=5, waiting=1, warm=warm)).retire == ()


def test_at_the_cap_with_nothing_idle_and_nothing_coming_is_stuck() -> None:
    warm = (WarmChild("busy", False, 1.0),)
    decided = plan(view(spares=0, live=10, waiting=1, warm=warm))
    assert decided.stuck and decided.fork == 0
    assert "all 10 sandboxes are busy" in decided.why


def test_not_stuck_while_a_child_is_starting_or_a_fork_is_coming() -> None:
    assert not plan(view(spares=0, live=10, waiting=1, starting=1)).stuck
    assert not plan(view(spares=0, live=9, requested=1, waiting=1)).stuck


def test_no_wake_up_unless_a_fork_is_deferred() -> None:
    assert plan(view()).wake_at == math.inf


# -- package zygotes ---------------------------------------------------------------

from supervisor.pool.plan import PackageSet, PackagesView, plan_packages  # noqa: E402


def pset(key, *, ready=True, spares=0, requested=0, waiting=0, in_use=0, last_used=0.0, memory=0,
         cold_rate=0.0, served=True):
    return PackageSet(key, ready, spares, requested, waiting, in_use, last_used, memory, cold_rate, served)


def pview(*sets, now=100.0, target=1, max_zygotes=4, cap=10**9, idle=60.0, room=100, quiet_until=-1.0,
          ceiling=4, wanted=""):
    return PackagesView(now, tuple(sets), target, max_zygotes, cap, idle, room, spares_ceiling=ceiling,
                        quiet_until=quiet_until, wanted=wanted)


def test_package_sets_keep_their_spares_and_idle_ones_go_to_zero():
    decided = plan_packages(pview(pset("a", last_used=99), pset("b", last_used=10),
                                  pset("c", ready=False, last_used=99), pset("d", spares=1, last_used=99)))
    assert decided.evict == ("b",)
    assert decided.fork == (("a", 1),)
    waiting = plan_packages(pview(pset("a", waiting=2, requested=1, last_used=0)))
    assert waiting.evict == () and waiting.fork == (("a", 2),)


def test_a_package_refill_waits_for_the_quiet_window_unless_a_request_waits():
    """A package zygote's fork (its page tables, then the spare's warm-up)
    must not compete with the cold start that just took its spare."""
    quiet = plan_packages(pview(pset("a", last_used=99), quiet_until=100.03))
    assert quiet.fork == () and quiet.wake_at == 100.03
    assert plan_packages(pview(pset("a", last_used=99), quiet_until=99.0)).fork == (("a", 1),)
    waiting = plan_packages(pview(pset("a", waiting=1, last_used=99), quiet_until=100.03))
    assert waiting.fork == (("a", 2),)


def test_package_zygotes_are_bounded_by_count_and_memory_sparing_those_in_use():
    sets = [pset("old", last_used=50, memory=400), pset("busy", last_used=40, in_use=1, memory=400),
            pset("new", last_used=90, memory=400)]
    assert plan_packages(pview(*sets, max_zygotes=2)).evict == ("old",)
    assert plan_packages(pview(*sets, cap=500)).evict == ("old", "new")
    assert plan_packages(pview(*sets, room=0)).fork == ()


def test_a_set_that_cannot_get_a_zygote_under_the_bounds_starts_none():
    """At the bound with every set serving scripts, a new set's zygote used
    to start and be evicted at once, at each of its cold starts (thrash):
    it now starts none, and its tenants start from base spares."""
    busy = [pset("a", in_use=1, last_used=10), pset("b", in_use=2, last_used=20)]
    refused = plan_packages(pview(*busy, max_zygotes=2, wanted="c"))
    assert refused.start == () and refused.evict == ()
    assert plan_packages(pview(*busy, max_zygotes=3, wanted="c")).start == ("c",)
    assert plan_packages(pview(max_zygotes=0, wanted="c")).start == ()
    # Protected memory past the cap leaves no room either.
    assert plan_packages(pview(pset("a", in_use=1, memory=600), cap=500, wanted="c")).start == ()
    # One that already has a zygote is not started again.
    assert plan_packages(pview(*busy, pset("c", ready=False, last_used=90), wanted="c")).start == ()


def test_an_admitted_set_makes_room_by_evicting_the_least_recently_used_set_without_children():
    sets = [pset("busy", in_use=1, last_used=5), pset("old", last_used=10), pset("recent", last_used=90)]
    decided = plan_packages(pview(*sets, max_zygotes=3, wanted="new"))
    assert decided.start == ("new",) and decided.evict == ("old",)
    # A request waiting for a set's spare protects it as children do.
    waited = [pset("busy", in_use=1), pset("old", waiting=1, last_used=10), pset("recent", last_used=90)]
    assert plan_packages(pview(*waited, max_zygotes=3, wanted="new")).evict == ("recent",)


def test_a_zygote_is_not_evicted_by_the_bounds_before_it_served():
    """Still starting, or ready without a cold start taken from it yet: it
    stays until it did (or idles out), and the bounds wait."""
    busy = [pset("a", in_use=1, last_used=10), pset("b", in_use=1, last_used=20)]
    assert plan_packages(pview(*busy, pset("c", ready=False, last_used=90), max_zygotes=2)).evict == ()
    assert plan_packages(pview(*busy, pset("c", served=False, last_used=90), max_zygotes=2)).evict == ()
    assert plan_packages(pview(*busy, pset("c", last_used=90), max_zygotes=2)).evict == ("c",)
    # The idle rule still ends one that never served.
    assert plan_packages(pview(pset("c", served=False, last_used=10))).evict == ("c",)


# ---------------------------------------------------------------------------
# spares sized to the recent cold-start rate
# ---------------------------------------------------------------------------

from supervisor.pool.plan import REFILL_S, spares_for  # noqa: E402
from supervisor.pool.rate import EventRate  # noqa: E402


def test_a_decayed_rate_settles_at_the_event_rate_and_falls_back_when_quiet() -> None:
    rate = EventRate(half_life_s=1.0)
    assert rate.per_second(0.0) == 0.0
    for i in range(200):  # 50 a second for 4 s
        rate.record(i * 0.02)
    assert 45 < rate.per_second(4.0) < 52
    assert 20 < rate.per_second(5.0) < 26  # one half-life later, half
    assert rate.per_second(30.0) < 0.001
    with pytest.raises(ValueError, match="half_life_s"):
        EventRate(0)


def test_spares_cover_the_cold_starts_during_a_refill_within_floor_and_ceiling() -> None:
    assert spares_for(8, 64, 0.0) == 8
    assert spares_for(8, 64, 0.9) == 8  # under one a second: the floor
    assert spares_for(8, 64, 50.0) == 8  # 50/s x REFILL_S + 1 = 6: the floor covers it
    assert spares_for(8, 64, 200.0) == 21
    storm = 1000.0
    assert spares_for(8, 64, storm) == min(64, int(storm * REFILL_S) + 1)
    assert spares_for(8, 16, storm) == 16
    assert spares_for(1, 4, 20.0) == 3


def test_the_plan_forks_more_spares_while_cold_starts_come_fast() -> None:
    fast = dict(spares=2, cold_rate=500.0, spares_ceiling=64, max_children=100)
    assert plan(view(**{**fast, "cold_rate": 0.0})).fork == 0
    assert plan(view(**fast)).fork == 49  # 500/s x 0.1 s + 1 = 51 spares
    assert plan(view(**{**fast, "max_children": 20})).fork == 17  # the room under the cap
    burst = plan_packages(pview(pset("a", spares=1, cold_rate=20.0, last_used=99)))
    assert burst.fork == (("a", 2),)
    assert plan_packages(pview(pset("a", spares=1, cold_rate=20.0, last_used=99), ceiling=1)).fork == ()
