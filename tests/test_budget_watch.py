"""The budget watch looks at an armed budget as soon as it can have run out.

The meter is a stand-in for the kernel's counter (its answers are set by the
test); the watch, its task, its timerfd and trio's clock are the real ones.
Nothing here asserts how soon: only never early, and in the right order.
"""

from __future__ import annotations

import trio

from supervisor.limits.budget_watch import BudgetWatch


class _Meter:
    def __init__(self, left_ns: list[int | None]) -> None:
        self.left = left_ns  # what each successive look answers
        self.looked_at: list[float] = []

    def budget_left_ns(self) -> int | None:
        self.looked_at.append(trio.current_time())
        return self.left.pop(0)


class _Spent:
    def __init__(self, expected: int) -> None:
        self.keys: list[str] = []
        self.expected = expected
        self.all_in = trio.Event()

    def __call__(self, key: str) -> None:
        self.keys.append(key)
        if len(self.keys) == self.expected:
            self.all_in.set()


def test_a_budget_is_looked_at_no_sooner_than_it_can_be_spent_and_again_for_what_is_left() -> None:
    async def main() -> None:
        meters = {"a": _Meter([3_000_000, 0])}
        spent = _Spent(1)
        watch = BudgetWatch(meters.get, spent)
        async with trio.open_nursery() as nursery:
            await nursery.start(watch.run)
            armed_at = trio.current_time()
            watch.arm("a", 10_000_000)
            with trio.fail_after(10):
                await spent.all_in.wait()
            nursery.cancel_scope.cancel()
        first, second = meters["a"].looked_at
        # A single thread cannot spend 10 ms of CPU in less than 10 ms.
        assert first >= armed_at + 0.010
        # 3 ms were left (the child did not run all along): not looked at before they could pass.
        assert second >= first + 0.003
        assert spent.keys == ["a"] and len(watch) == 0

    trio.run(main)


def test_an_earlier_budget_armed_later_is_looked_at_first_and_disarmed_ones_never() -> None:
    async def main() -> None:
        meters = {"slow": _Meter([0]), "fast": _Meter([0]), "gone": _Meter([0])}
        spent = _Spent(2)
        watch = BudgetWatch(meters.get, spent)
        async with trio.open_nursery() as nursery:
            await nursery.start(watch.run)
            watch.arm("slow", 200_000_000)
            watch.arm("gone", 1_000_000)
            watch.arm("fast", 20_000_000)
            watch.disarm("gone")  # its invocation ended before its budget could run out
            with trio.fail_after(10):
                await spent.all_in.wait()
            nursery.cancel_scope.cancel()
        assert spent.keys == ["fast", "slow"]
        assert meters["gone"].looked_at == []

    trio.run(main)


def test_budgets_armed_before_the_watch_runs_are_kept_and_unarmed_meters_dropped() -> None:
    async def main() -> None:
        meters = {"early": _Meter([0]), "unarmed": _Meter([None])}
        spent = _Spent(1)
        watch = BudgetWatch(meters.get, spent)
        watch.arm("unarmed", 1_000_000)
        watch.arm("early", 2_000_000)
        async with trio.open_nursery() as nursery:
            await nursery.start(watch.run)
            with trio.fail_after(10):
                await spent.all_in.wait()
            nursery.cancel_scope.cancel()
        assert spent.keys == ["early"] and len(watch) == 0
        assert len(meters["unarmed"].looked_at) == 1

    trio.run(main)
