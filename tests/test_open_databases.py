"""A tenant's share of the supervisor's open databases (supervisor.bindings.io).

One tenant touching thousands of Durable Objects cycled every one of the
shared slots, and every other tenant's databases were closed and reopened
on their next call. A tenant's databases now count against its share (a
quarter of the slots); past it, its own least recently used one closes.
Real SQLite files, the real Databases and Offload, under trio.
"""

from __future__ import annotations

from pathlib import Path

import trio

from supervisor.bindings.io import STORAGE_OWNER, Databases, Offload


def _setup(conn) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS t (x)")


def _write(conn, value: int) -> int:
    conn.execute("INSERT INTO t VALUES (?)", (value,))
    return value


def test_one_tenant_cannot_close_the_others_databases(tmp_path: Path) -> None:
    async def main() -> tuple[list[bool], int, int]:
        databases = Databases(Offload(4), limit=8)  # a share of 2
        victim = [str(tmp_path / f"victim{i}.db") for i in range(2)]
        STORAGE_OWNER.set(("ns", "victim"))
        for i, path in enumerate(victim):
            await databases.run(path, _setup, _write, i)
        STORAGE_OWNER.set(("ns", "hostile"))
        for i in range(50):
            await databases.run(str(tmp_path / f"hostile{i}.db"), _setup, _write, i)
        hostile_open = sum(databases.is_open(str(tmp_path / f"hostile{i}.db")) for i in range(50))
        return [databases.is_open(p) for p in victim], hostile_open, len(databases._open)

    victims_open, hostile_open, total = trio.run(main)
    assert victims_open == [True] * 2, victims_open  # each was closed by the hostile tenant's opens
    assert hostile_open == 2 and total == 4, (hostile_open, total)


def test_a_tenant_past_its_share_closes_its_own_least_recently_used(tmp_path: Path) -> None:
    async def main() -> list[bool]:
        databases = Databases(Offload(4), limit=8)
        STORAGE_OWNER.set(("ns", "busy"))
        paths = [str(tmp_path / f"busy{i}.db") for i in range(4)]
        for i, path in enumerate(paths):
            await databases.run(path, _setup, _write, i)
        await databases.run(paths[2], _setup, _write, 9)  # used again: the most recent
        await databases.run(str(tmp_path / "busy-new.db"), _setup, _write, 9)
        return [databases.is_open(p) for p in paths]

    assert trio.run(main) == [False, False, True, False]


def test_without_owners_the_least_recently_used_go(tmp_path: Path) -> None:
    async def main() -> list[bool]:
        databases = Databases(Offload(4), limit=3)
        paths = [str(tmp_path / f"d{i}.db") for i in range(5)]
        for i, path in enumerate(paths):
            await databases.run(path, _setup, _write, i)
        return [databases.is_open(p) for p in paths]

    assert trio.run(main) == [False, False, True, True, True]
