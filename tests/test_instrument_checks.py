"""trio's instrument collection as a dict (supervisor.instrument_checks)."""

from __future__ import annotations

import collections

import trio
import trio.lowlevel

from supervisor import instrument_checks


class _Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: object) -> None:
        self.steps += 1


class _Broken(trio.abc.Instrument):
    def before_task_step(self, task: object) -> None:
        raise RuntimeError("an instrument that fails is dropped, as trio does")


def test_instruments_still_work_once_the_checks_are_dicts():
    early = _Steps()

    async def main() -> tuple[int, int, bool, bool]:
        runner = trio._core._run.GLOBAL_RUN_CONTEXT.runner  # noqa: SLF001
        assert isinstance(runner.instruments, collections.UserDict)
        assert instrument_checks.install() and instrument_checks.install()  # twice is fine
        collection = runner.instruments
        # `hook in collection` is dict's own (C) test, not UserDict's Python one.
        assert type(collection).__contains__ is dict.__contains__
        assert "before_task_step" in collection and "after_task_step" not in collection
        late = _Steps()
        trio.lowlevel.add_instrument(late)
        trio.lowlevel.add_instrument(_Broken())
        for _ in range(5):
            await trio.sleep(0)
        seen = late.steps
        trio.lowlevel.remove_instrument(late)
        for _ in range(5):
            await trio.sleep(0)
        return seen, late.steps, "before_task_step" in collection, len(collection["_all"]) == 1

    seen, after_removal, still_hooked, only_early = trio.run(main, instruments=[early])
    assert seen >= 5 and after_removal == seen  # called while added, not after
    assert early.steps > seen and still_hooked and only_early  # the broken one was dropped
