"""The supervisor's clock (supervisor.loop_clock): trio's, one C call to read."""

from __future__ import annotations

import time

import trio

from supervisor import loop_clock


def test_the_supervisors_clock_is_perf_counter_and_trio_sleeps_on_it():
    async def main() -> tuple[float, float, object]:
        with loop_clock.installed():
            reader = loop_clock.now
            before = loop_clock.now()
            await trio.sleep(0.02)
            slept = loop_clock.now() - before
            return trio.current_time() - time.perf_counter(), slept, reader

    gap, slept, reader = trio.run(main, clock=loop_clock.PerfCounterClock())
    assert reader is time.perf_counter  # no Python frame on a read
    assert abs(gap) < 0.01
    assert 0.02 <= slept < 1.0
    assert loop_clock.now is trio.current_time  # back to trio's own outside the run


def test_under_another_clock_now_is_that_runs_time():
    # trio's default clock has a random offset: deadlines made from now()
    # must still be trio's.
    async def main() -> tuple[float, float]:
        assert loop_clock.now is trio.current_time
        outside = trio.current_time() - loop_clock.now()
        with loop_clock.installed():
            start = time.perf_counter()
            with trio.move_on_at(loop_clock.now() + 0.05):
                await trio.sleep(5)
            return outside, time.perf_counter() - start

    outside, waited = trio.run(main)
    assert abs(outside) < 0.01
    assert 0.05 <= waited < 2.0
    assert loop_clock.now is trio.current_time
