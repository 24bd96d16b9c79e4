"""Crash-loop back-off (audit F12): a script version whose child dies on
every request stops costing a fork per request.

The rules (supervisor.pool.crash_loop) are pure and tested here without a
process; the last test drives a real ``corral serve`` with a script that
exits in its handler and counts the cold starts (forks taken) on /metrics.
"""

from __future__ import annotations

import time

from supervisor.pool.crash_loop import (
    CRASH_LOOP_DEATHS,
    FIRST_BACKOFF_S,
    MAX_BACKOFF_S,
    CrashLoops,
    Streak,
    backing_off,
    backoff_s,
    died,
)
from tests.harness import Corral
from tests.test_observability import metric

KEY = ("ns", "crashy", "v1")


def test_a_back_off_starts_after_enough_deaths_in_a_row() -> None:
    streak = Streak()
    for _ in range(CRASH_LOOP_DEATHS - 1):
        streak = died(streak, 100.0)
        assert not backing_off(streak, 100.0)
    streak = died(streak, 100.0)
    assert backing_off(streak, 100.0)
    assert backing_off(streak, 100.0 + FIRST_BACKOFF_S - 0.01)
    assert not backing_off(streak, 100.0 + FIRST_BACKOFF_S)


def test_each_further_death_doubles_the_back_off_up_to_the_most() -> None:
    assert [backoff_s(n) for n in range(3)] == [FIRST_BACKOFF_S, 2 * FIRST_BACKOFF_S, 4 * FIRST_BACKOFF_S]
    assert backoff_s(60) == MAX_BACKOFF_S
    streak = Streak()
    for _ in range(CRASH_LOOP_DEATHS):
        streak = died(streak, 0.0)
    # The probe after the back-off dies too: backed off again at once, twice as long.
    streak = died(streak, 10.0)
    assert streak.until == 10.0 + 2 * FIRST_BACKOFF_S


def test_a_completed_invocation_or_a_deploy_ends_the_streak() -> None:
    loops = CrashLoops()
    for _ in range(CRASH_LOOP_DEATHS - 1):
        assert loops.died(KEY, 0.0) is None
    assert loops.died(KEY, 0.0) == FIRST_BACKOFF_S  # the back-off starts: the pool logs it
    assert loops.backing_off(KEY, 0.5) and not loops.backing_off(("ns", "crashy", "v2"), 0.5)
    loops.succeeded(KEY)
    assert not loops.backing_off(KEY, 0.5) and len(loops) == 0
    for _ in range(CRASH_LOOP_DEATHS):
        loops.died(KEY, 0.0)
    loops.forget("ns", "crashy")
    assert not loops.backing_off(KEY, 0.5)


def test_the_streaks_kept_are_bounded() -> None:
    loops = CrashLoops(max_tracked=2)
    for i in range(5):
        loops.died(("ns", f"s{i}", "v"), 0.0)
    assert len(loops) == 2


TENANT = '''
import os
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("?crash"):
            os._exit(1)
        return Response("ok")
'''


def test_a_crash_looping_script_is_answered_without_a_fork(tmp_path) -> None:
    server = Corral(tmp_path / "state").start()
    try:
        server.deploy("crashy", TENANT, namespace=None)
        server.route("crashy.localhost/*", "crashy")

        def ask(query: str) -> int:
            return server.request(f"/?{query}", host="crashy.localhost").status

        def cold_starts() -> float:
            return metric(server, "corral_cold_starts_total")

        before = cold_starts()
        assert [ask("crash") for _ in range(CRASH_LOOP_DEATHS)] == [502] * CRASH_LOOP_DEATHS
        assert cold_starts() - before == CRASH_LOOP_DEATHS  # a fresh child each time

        # Backed off: the same answer as a crash, at once, and no child at all.
        before = cold_starts()
        answers = [ask("crash") for _ in range(20)] + [ask("ok")]
        assert cold_starts() == before, "a backed-off version still took spares"
        assert answers == [502] * 21
        assert '"event":"script.crash_loop"' in server.log_path.read_text(errors="replace")

        # Once the back-off is over, a child is tried again; one that serves ends the streak.
        time.sleep(FIRST_BACKOFF_S + 0.2)
        assert ask("ok") == 200
        assert ask("crash") == 502
        assert ask("ok") == 200  # one death is not a crash loop
    finally:
        server.stop()
