"""Durable Object alarms: when each object's alarm is due, and running it.

The alarm time is part of the object's state (its own SQLite file); an
index in ``<storage>/do/alarms.sqlite3`` lists every object with an alarm so
the scheduler finds them after a restart without opening every object. The
index is written after the object's own file and re-checked against it
before an alarm runs, so a crash between the two at worst runs nothing.

A due alarm invokes the object's ``alarm(alarm_info)`` through its input
gate; if the handler raises, it is retried with exponential backoff (2 s
doubling, up to six retries, as on Cloudflare), with
``alarm_info.retryCount`` and ``isRetry`` set. It is cleared once it ran,
unless the handler set a new time.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from supervisor.log import warn

MAX_RETRIES = 6
FIRST_BACKOFF_S = 2.0
#: After the index fails to be read or written, the scheduler waits this
#: long before it tries again (doubling up to the most, for reads).
STORAGE_RETRY_S = 1.0
MAX_STORAGE_RETRY_S = 30.0

#: Runs one alarm: (key, scheduled time ms, retry count) -> handler succeeded.
AlarmRunner = Callable[[tuple[str, str, str, str], float, int], Awaitable[bool]]


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS alarms (namespace TEXT, script TEXT, class_name TEXT, "
                 "object_id TEXT, time REAL NOT NULL, retries INTEGER NOT NULL DEFAULT 0, "
                 "PRIMARY KEY (namespace, script, class_name, object_id))")


class Alarms:
    """The alarm index and the task that fires alarms on time."""

    def __init__(self, databases: Any, root: str) -> None:
        self.databases = databases
        self.path = os.path.join(root, "do", "alarms.sqlite3")
        self.runner: AlarmRunner | None = None
        self._changed = trio.Event()

    async def set(self, key: tuple[str, str, str, str], when: float | None) -> None:
        """Index ``key``'s alarm at ``when`` (ms since the epoch), or drop it."""
        await self.databases.run(self.path, _setup, _set, tuple(key), when)
        self._changed.set()

    async def of_script(self, namespace: str, script: str) -> list[tuple[str, str, str, str]]:
        """The keys of ``script``'s objects that have an alarm."""
        rows = await self.databases.run(self.path, _setup, _of_script, namespace, script)
        return [tuple(row) for row in rows]  # type: ignore[misc]

    async def _due(self) -> list[tuple[Any, ...]]:
        return await self.databases.run(self.path, _setup, _all)

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with trio.open_nursery() as nursery:
            running: set[tuple[str, str, str, str]] = set()
            pause = STORAGE_RETRY_S
            while True:
                self._changed = trio.Event()
                try:
                    rows = await self._due()
                    pause = STORAGE_RETRY_S
                except Exception as exc:  # noqa: BLE001 - the alarms stop a while, not the server
                    # A corrupt or unreadable index (a full disk, a truncated
                    # file) used to end the supervisor, at start-up too,
                    # every tenant with it (durability audit).
                    warn("dobject.alarms_unreadable", file=self.path, retry_s=pause,
                         reason=f"{type(exc).__name__}: {exc}"[:300])
                    await trio.sleep(pause)
                    pause = min(pause * 2, MAX_STORAGE_RETRY_S)
                    continue
                now_ms = time.time() * 1000
                next_ms = None
                for ns, script, cls, oid, when, retries in rows:
                    key = (ns, script, cls, oid)
                    if key in running:
                        continue
                    if when <= now_ms:
                        running.add(key)
                        nursery.start_soon(self._fire, key, when, retries, running)
                    elif next_ms is None or when < next_ms:
                        next_ms = when
                timeout = 3600.0 if next_ms is None else max(0.0, (next_ms - now_ms) / 1000)
                with trio.move_on_after(timeout):
                    await self._changed.wait()

    async def _fire(self, key: tuple[str, str, str, str], when: float, retries: int,
                    running: set[tuple[str, str, str, str]]) -> None:
        try:
            assert self.runner is not None
            try:
                ok = await self.runner(key, when, retries)
            except Exception as exc:  # noqa: BLE001 - one object's alarm, not the scheduler
                warn("dobject.alarm_failed", object_id=key[3][:16], reason=str(exc)[:200])
                ok = False
            try:
                if ok or retries >= MAX_RETRIES:
                    await self.databases.run(self.path, _setup, _done, key, when)
                else:
                    backoff = FIRST_BACKOFF_S * (2 ** retries)
                    await self.databases.run(self.path, _setup, _retry, key, when,
                                             time.time() * 1000 + backoff * 1000)
            except Exception as exc:  # noqa: BLE001 - one alarm's record, not the server
                # Not recorded (a full disk): it stays due, and is not run
                # again before this wait is over (it stays in ``running``).
                warn("dobject.alarm_not_recorded", object_id=key[3][:16], file=self.path,
                     retry_s=STORAGE_RETRY_S, reason=f"{type(exc).__name__}: {exc}"[:300])
                await trio.sleep(STORAGE_RETRY_S)
        finally:
            running.discard(key)
            self._changed.set()


def _set(conn: sqlite3.Connection, key: tuple[str, ...], when: float | None) -> None:
    if when is None:
        conn.execute("DELETE FROM alarms WHERE namespace = ? AND script = ? AND class_name = ? "
                     "AND object_id = ?", key)
    else:
        conn.execute("INSERT OR REPLACE INTO alarms VALUES (?, ?, ?, ?, ?, 0)", (*key, when))


def _all(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT namespace, script, class_name, object_id, time, retries "
                        "FROM alarms").fetchall()


def _of_script(conn: sqlite3.Connection, namespace: str, script: str) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT namespace, script, class_name, object_id FROM alarms "
                        "WHERE namespace = ? AND script = ?", (namespace, script)).fetchall()


def _done(conn: sqlite3.Connection, key: tuple[str, ...], when: float) -> None:
    """Ran: unindex, unless the handler set a new time meanwhile."""
    conn.execute("DELETE FROM alarms WHERE namespace = ? AND script = ? AND class_name = ? "
                 "AND object_id = ? AND time = ?", (*key, when))


def _retry(conn: sqlite3.Connection, key: tuple[str, ...], when: float, at: float) -> None:
    conn.execute("UPDATE alarms SET time = ?, retries = retries + 1 WHERE namespace = ? AND "
                 "script = ? AND class_name = ? AND object_id = ? AND time = ?", (at, *key, when))
