"""The supervisor's clock (supervisor.loop_clock): trio's, one C call to read."""

from __future__ import annotations

import time

import trio

from supervisor import loop_clock


async def _report_clock(task_status: trio.TaskStatus) -> None:
    task_status.started(loop_clock.CLOCK.get())


def test_the_supervisors_clock_is_perf_counter_and_trio_sleeps_on_it():
    async def main() -> tuple[float, float, object]:
        with loop_clock.installed():
            reader = loop_clock.CLOCK.get()
            before = reader()
            seen = []
            async with trio.open_nursery() as nursery:  # tasks started here read it too
                nursery.start_soon(lambda: trio.sleep(0.02))
                nursery.start_soon(lambda: trio.to_thread.run_sync(lambda: None))
                seen.append(await nursery.start(_report_clock))
            slept = reader() - before
            assert seen == [reader]
            return trio.current_time() - time.perf_counter(), slept, reader

    gap, slept, reader = trio.run(main, clock=loop_clock.PerfCounterClock())
    assert reader is time.perf_counter  # no Python frame on a read
    assert abs(gap) < 0.01
    assert 0.02 <= slept < 1.0
    assert loop_clock.CLOCK.get() is trio.current_time  # back to trio's own outside the run


def test_under_another_clock_now_is_that_runs_time():
    # trio's default clock has a random offset: deadlines made from CLOCK
    # must still be trio's.
    async def main() -> tuple[float, float]:
        assert loop_clock.CLOCK.get() is trio.current_time
        outside = trio.current_time() - loop_clock.CLOCK.get()()
        with loop_clock.installed():
            start = time.perf_counter()
            with trio.move_on_at(loop_clock.CLOCK.get()() + 0.05):
                await trio.sleep(5)
            return outside, time.perf_counter() - start

    outside, waited = trio.run(main)
    assert abs(outside) < 0.01
    assert 0.05 <= waited < 2.0
    assert loop_clock.CLOCK.get() is trio.current_time
