"""Usage for billing and analytics: per minute, per script and per tag.

Each finished invocation (every one of a tree: the dispatcher and each user
worker it called are billed apart) adds to an in-memory rollup keyed by
minute and script, and by minute and tag: requests, outcomes, CPU and wall
milliseconds (sum, and a mergeable log-bucket sketch for p50 and p99, within
2 %), and subrequests. A flusher task writes minutes that are over to SQLite
(``usage.db`` in the state dir) in one transaction per flush, in a worker
thread; queries read SQLite in a thread and add what is still in memory, so
a figure is right the moment the request is over. Rows older than the
retention period are deleted as flushes go.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from math import ceil, log
from typing import TYPE_CHECKING, Any

import trio

from supervisor.lifecycle import Outcome
from supervisor.log import warn

if TYPE_CHECKING:
    from supervisor.pool.invocation import Invocation

#: Sketch resolution: bucket bounds grow by this factor (relative error 1 %).
GAMMA = 1.02
_LOG_GAMMA = math.log(GAMMA)
#: Rollup keys held in memory at most; past it, figures are dropped (counted).
MAX_PENDING_KEYS = 200_000
#: Rows a query returns at most.
MAX_ROWS = 50_000

Key = tuple[str, int, str, str]  # kind ("script" | "tag"), minute (epoch s), namespace, name


def _bucket_value(index: int) -> float:
    """A bucket's representative value in ms (its geometric middle)."""
    return 0.0 if index <= 0 else GAMMA ** (index - 0.5) / 1000.0


def quantile(sketch: dict[int, int], q: float) -> float:
    """The ``q`` quantile by nearest rank (the ``ceil(q * n)``-th smallest):
    a p99 of fewer than 100 requests is their slowest, as it must be to show
    a slow one; a lower rank made a minute's p99 of two requests the faster."""
    total = sum(sketch.values())
    if not total:
        return 0.0
    rank = max(1, ceil(q * total))
    seen = 0
    for index in sorted(sketch):
        seen += sketch[index]
        if seen >= rank:
            return round(_bucket_value(index), 3)
    return round(_bucket_value(max(sketch)), 3)


class Rollup:
    """One key's figures; merges with another (a flushed row, a later one)."""

    __slots__ = ("requests", "outcomes", "cpu_ms", "cpu_sketch", "wall_ms", "wall_sketch",
                 "subrequests")

    def __init__(self) -> None:
        self.requests = 0
        self.outcomes: dict[str, int] = {}
        self.cpu_ms = 0.0
        self.cpu_sketch: dict[int, int] = {}
        self.wall_ms = 0.0
        self.wall_sketch: dict[int, int] = {}
        self.subrequests = 0

    def add(self, outcome: str, cpu_ms: float, wall_ms: float, subrequests: int) -> None:
        self.requests += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        # A duration's sketch bucket: ceil(log_gamma(microseconds)), 0 at or under 1 us.
        self.cpu_ms += cpu_ms
        micros = cpu_ms * 1000.0
        b = 0 if micros <= 1.0 else ceil(log(micros) / _LOG_GAMMA)
        self.cpu_sketch[b] = self.cpu_sketch.get(b, 0) + 1
        self.wall_ms += wall_ms
        micros = wall_ms * 1000.0
        b = 0 if micros <= 1.0 else ceil(log(micros) / _LOG_GAMMA)
        self.wall_sketch[b] = self.wall_sketch.get(b, 0) + 1
        self.subrequests += subrequests

    def merge(self, other: Rollup) -> None:
        self.requests += other.requests
        for k, v in other.outcomes.items():
            self.outcomes[k] = self.outcomes.get(k, 0) + v
        self.cpu_ms += other.cpu_ms
        self.wall_ms += other.wall_ms
        for k, v in other.cpu_sketch.items():
            self.cpu_sketch[k] = self.cpu_sketch.get(k, 0) + v
        for k, v in other.wall_sketch.items():
            self.wall_sketch[k] = self.wall_sketch.get(k, 0) + v
        self.subrequests += other.subrequests

    def copy(self) -> Rollup:
        out = Rollup()
        out.merge(self)
        return out

    # -- storage ------------------------------------------------------------------
    def to_row(self) -> tuple[Any, ...]:
        return (self.requests, json.dumps(self.outcomes), self.cpu_ms, json.dumps(self.cpu_sketch),
                self.wall_ms, json.dumps(self.wall_sketch), self.subrequests)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Rollup:
        out = cls()
        out.requests, outcomes, out.cpu_ms, cpu, out.wall_ms, wall, out.subrequests = row
        out.outcomes = json.loads(outcomes)
        out.cpu_sketch = {int(k): v for k, v in json.loads(cpu).items()}
        out.wall_sketch = {int(k): v for k, v in json.loads(wall).items()}
        return out

    def to_json(self, kind: str, minute: int, namespace: str, name: str) -> dict[str, Any]:
        errors = sum(n for outcome, n in self.outcomes.items() if outcome != Outcome.OK)
        return {
            "minute": datetime.datetime.fromtimestamp(minute, datetime.UTC)
            .strftime("%Y-%m-%dT%H:%M:00Z"),
            "timestamp": minute * 1000,
            "namespace": namespace or None,
            kind: name,
            "requests": self.requests,
            "errors": errors,
            "outcomes": dict(sorted(self.outcomes.items())),
            "cpuTimeMs": {"sum": round(self.cpu_ms, 3), "p50": quantile(self.cpu_sketch, 0.5),
                          "p99": quantile(self.cpu_sketch, 0.99)},
            "wallTimeMs": {"sum": round(self.wall_ms, 3), "p50": quantile(self.wall_sketch, 0.5),
                           "p99": quantile(self.wall_sketch, 0.99)},
            "subrequests": self.subrequests,
        }


_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, minute INTEGER NOT NULL,
    requests INTEGER NOT NULL, outcomes TEXT NOT NULL, cpu_ms REAL NOT NULL, cpu_sketch TEXT NOT NULL,
    wall_ms REAL NOT NULL, wall_sketch TEXT NOT NULL, subrequests INTEGER NOT NULL,
    PRIMARY KEY (kind, namespace, name, minute)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_minute ON usage (minute);
"""
_COLUMNS = "requests, outcomes, cpu_ms, cpu_sketch, wall_ms, wall_sketch, subrequests"


class UsageStore:
    """The SQLite side; every method runs in a worker thread, one at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def check(self) -> None:
        """Open the database now (at start), so that one that cannot be read
        stops the start naming it, as Corral's own does, rather than failing
        every flush and every usage query later (their figures lost)."""
        with self._lock:
            self._conn().execute("SELECT count(*) FROM usage WHERE minute < 0").fetchone()

    def write(self, rows: dict[Key, Rollup], prune_before: int) -> None:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                for (kind, minute, namespace, name), rollup in rows.items():
                    found = db.execute(f"SELECT {_COLUMNS} FROM usage WHERE kind=? AND namespace=? "
                                       "AND name=? AND minute=?", (kind, namespace, name, minute)).fetchone()
                    if found is not None:
                        merged = Rollup.from_row(found)
                        merged.merge(rollup)
                        rollup = merged
                    db.execute(f"INSERT OR REPLACE INTO usage (kind, namespace, name, minute, {_COLUMNS}) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (kind, namespace, name, minute, *rollup.to_row()))
                db.execute("DELETE FROM usage WHERE minute < ?", (prune_before,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLITE_FULL rolls back itself: a ROLLBACK then hid the cause
                    db.execute("ROLLBACK")
                raise

    def read(self, kind: str, namespace: str | None, name: str | None, since: int,
             until: int) -> dict[Key, Rollup]:
        with self._lock:
            sql = f"SELECT kind, minute, namespace, name, {_COLUMNS} FROM usage " \
                  "WHERE kind=? AND minute>=? AND minute<=?"
            args: list[Any] = [kind, since, until]
            if namespace is not None:
                sql += " AND namespace=?"
                args.append(namespace)
            if name is not None:
                sql += " AND name=?"
                args.append(name)
            sql += f" ORDER BY minute, namespace, name LIMIT {MAX_ROWS}"
            return {tuple(r[:4]): Rollup.from_row(r[4:])  # type: ignore[misc]
                    for r in self._conn().execute(sql, args)}

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class Usage:
    """The in-memory rollups and their flusher (a task of the supervisor)."""

    def __init__(self, path: str, retention_days: float, flush_s: float,
                 on_drop: Callable[[int], None] | None = None) -> None:
        self.store = UsageStore(path)
        self.retention_s = int(retention_days * 86400)
        self.flush_s = flush_s
        self.pending: dict[Key, Rollup] = {}
        self.on_drop = on_drop
        self._write_lock = trio.Lock()

    def record(self, figures: list[tuple[Invocation, str, float]]) -> None:
        """A finished invocation tree, each invocation with its outcome and wall
        time (see ``Metrics.observe``): every one is billed to its script."""
        minute = int(time.time()) // 60 * 60
        for node, outcome, wall_ms in figures:
            record = node.record
            args = (outcome, node.cpu_ns / 1e6, wall_ms, node.subrequests)
            self._add(("script", minute, record.namespace, record.name), args)
            for tag in record.tags:
                self._add(("tag", minute, record.namespace, tag), args)

    def _add(self, key: Key, args: tuple[str, float, float, int]) -> None:
        rollup = self.pending.get(key)
        if rollup is None:
            if len(self.pending) >= MAX_PENDING_KEYS:
                if self.on_drop is not None:
                    self.on_drop(1)
                return
            rollup = self.pending[key] = Rollup()
        rollup.add(*args)

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Flush minutes that are over every ``flush_s``; everything on the way out."""
        task_status.started()
        try:
            while True:
                await trio.sleep(self.flush_s)
                await self.flush(everything=False)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.flush(everything=True)
            await trio.to_thread.run_sync(self.store.close)

    async def flush(self, everything: bool) -> None:
        async with self._write_lock:  # a query sees rows in memory or stored, never both
            now_minute = int(time.time()) // 60 * 60
            rows = {k: v for k, v in self.pending.items() if everything or k[1] < now_minute}
            if not rows:
                return
            for key in rows:
                del self.pending[key]
            try:
                await trio.to_thread.run_sync(self.store.write, rows, now_minute - self.retention_s)
            except (sqlite3.Error, OSError) as exc:
                warn("usage.flush_failed", rows=len(rows), reason=str(exc))
                if self.on_drop is not None:
                    self.on_drop(len(rows))

    async def query(self, namespace: str | None, script: str | None, tag: str | None,
                    since: int, until: int) -> list[dict[str, Any]]:
        """Per-minute rows between ``since`` and ``until`` (epoch seconds, inclusive)."""
        kind, name = ("tag", tag) if tag is not None else ("script", script)
        async with self._write_lock:  # no flush moves rows while we look at both places
            fresh = {k: v.copy() for k, v in self.pending.items()
                     if k[0] == kind and since <= k[1] <= until
                     and (namespace is None or k[2] == namespace) and (name is None or k[3] == name)}
            stored = await trio.to_thread.run_sync(self.store.read, kind, namespace, name, since, until)
        for key, rollup in fresh.items():
            if key in stored:
                stored[key].merge(rollup)
            else:
                stored[key] = rollup
        return [rollup.to_json(kind, key[1], key[2], key[3])
                for key, rollup in sorted(stored.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3]))]
