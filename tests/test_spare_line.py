"""Spares are handed out in the order requests asked (supervisor.pool.spare_line).

Pure trio logic, run in-process: the pool's real-process tests cover the
spares themselves (test_lifecycle, test_zygote_priority, test_hash_seed).
"""

from __future__ import annotations

import trio
import trio.testing

from supervisor.pool.spare_line import SpareLine


class Spare:
    def __init__(self, name: str, alive: bool = True) -> None:
        self.name = name
        self.alive = alive

    def __repr__(self) -> str:
        return self.name


def test_a_ready_spare_goes_to_the_longest_waiting_request_not_to_a_newcomer() -> None:
    async def main() -> None:
        line: SpareLine[Spare] = SpareLine()
        got: list[tuple[str, Spare | None]] = []

        async def request(name: str) -> None:
            got.append((name, await line.take()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(request, "first")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(request, "second")
            await trio.testing.wait_all_tasks_blocked()
            line.offer(Spare("a"))
            # A request arriving now, before the woken one ran, gets nothing.
            assert line.take_now() is None
            line.offer(Spare("b"))
        assert {name: repr(spare) for name, spare in got} == {"first": "a", "second": "b"}
        assert len(line) == 0

    trio.run(main)


def test_spares_without_anyone_waiting_are_taken_front_first_and_dead_ones_skipped() -> None:
    line: SpareLine[Spare] = SpareLine()
    line.offer(Spare("dead", alive=False))
    line.offer(Spare("c"))
    line.offer(Spare("front"), first=True)
    assert [repr(line.take_now()), repr(line.take_now()), line.take_now()] == ["front", "c", None]


def test_a_request_that_gives_up_passes_its_place_and_any_spare_on() -> None:
    async def main() -> None:
        line: SpareLine[Spare] = SpareLine()
        got: list[Spare | None] = []

        async def patient() -> None:
            got.append(await line.take())

        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as impatient:
                nursery.start_soon(patient)  # queued behind the impatient one below
                impatient.cancel()
                await line.take()  # cancelled at once: out of line
            await trio.testing.wait_all_tasks_blocked()
            line.offer(Spare("a"))
        assert [s.name for s in got if s] == ["a"]

    trio.run(main)


def test_release_wakes_everyone_in_line_without_a_spare() -> None:
    async def main() -> None:
        line: SpareLine[Spare] = SpareLine()
        got: list[Spare | None] = []

        async def request() -> None:
            got.append(await line.take())

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(request)
            await trio.testing.wait_all_tasks_blocked()
            line.release()
        assert got == [None, None, None]
        line.offer(Spare("later"))
        assert repr(line.take_now()) == "later"

    trio.run(main)
