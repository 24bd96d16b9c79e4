"""Storage I/O off the request loop, one writer per database.

SQLite and file calls block; the supervisor's trio thread must not. Every
storage operation runs in a worker thread drawn from one bounded
:class:`Offload` (a ``trio.CapacityLimiter``), so storage can never take
more threads than configured, whatever the tenants do.

A :class:`Database` is one SQLite file with one connection and a FIFO
``trio.Lock``: operations on one database are serialised (SQLite allows one
writer anyway) in arrival order, so a busy database delays only its own
callers, never another tenant's database, and a burst of writers is served
in turn instead of spinning on ``SQLITE_BUSY``. The :class:`Databases`
cache keeps a bounded number open and closes the least recently used.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import sqlite3
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


#: The tenant a storage call is for, ``(namespace, script)``: set by the
#: binding call's own task (supervisor.bindings), read by :class:`Offload`.
STORAGE_OWNER: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "storage_owner", default=None)
#: Whether this task holds its tenant's slot already (a database call takes it
#: before the database's lock, and the thread it then runs must not again).
_HOLDING: contextvars.ContextVar[bool] = contextvars.ContextVar("storage_slot_held", default=False)


class Offload:
    """Runs blocking calls in at most ``threads`` worker threads, and at most
    a quarter of them (one at least) for any one tenant at a time.

    Without the second bound one tenant took them all: its Durable Objects'
    endless SQL (each cut off only at ``d1_query_ms``, 30 s) held every
    thread, and another tenant's KV get took 28 s instead of 30 ms. A
    tenant's slots are taken before any database's lock, so a tenant waiting
    for its own slots never holds a database another tenant needs."""

    def __init__(self, threads: int) -> None:
        self.limiter = trio.CapacityLimiter(max(1, threads))
        self.per_tenant = max(1, threads // 4)
        self._tenants: dict[tuple[str, str], trio.CapacityLimiter] = {}

    @contextlib.asynccontextmanager
    async def tenant_slot(self) -> AsyncIterator[None]:
        """Hold one of the current tenant's slots (none to take without one)."""
        owner = STORAGE_OWNER.get()
        if owner is None or _HOLDING.get():
            yield
            return
        slots = self._tenants.get(owner)
        if slots is None:
            slots = self._tenants[owner] = trio.CapacityLimiter(self.per_tenant)
        token = _HOLDING.set(True)
        try:
            async with slots:
                yield
        finally:
            _HOLDING.reset(token)
            stats = slots.statistics()
            if not stats.borrowed_tokens and not stats.tasks_waiting and self._tenants.get(owner) is slots:
                del self._tenants[owner]  # an idle tenant costs nothing

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        # Not abandoned on cancel: a thread halfway through a transaction is
        # let finish (or roll back) before its database is touched again.
        async with self.tenant_slot():
            return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self.limiter)


Setup = Callable[[sqlite3.Connection], None]


class Database:
    """One SQLite file, its connection and the lock that serialises its use."""

    def __init__(self, path: str, setup: Setup) -> None:
        self.path = path
        self._setup = setup
        self.conn: sqlite3.Connection | None = None
        self.lock = trio.Lock()
        self.users = 0  # calls holding or waiting for the lock (not evictable)

    def _open(self) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            # WAL with synchronous=NORMAL: a committed transaction survives a
            # crash (kill -9) of the supervisor; only a power loss can take
            # the last ones back.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            self._setup(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def run(self, offload: Offload, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` in a thread, alone on this database."""
        self.users += 1
        try:
            async with offload.tenant_slot(), self.lock:
                return await offload.run(self._call, fn, args)
        finally:
            self.users -= 1

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self.conn is None:
            self.conn = self._open()
        return fn(self.conn, *args)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Databases:
    """Open databases by path, at most ``limit`` of them idle at once.

    A database opened by a tenant's call (``STORAGE_OWNER``: its Durable
    Objects, its D1 databases...) counts against that tenant's share, a
    quarter of ``limit``: past it, the tenant's own least recently used one
    is closed, not another tenant's. One tenant
    touching thousands of objects cycled every slot, and every other
    tenant's databases were reopened on their next call (red team 5: a
    victim's object calls at p90 23 ms, against 5 ms)."""

    def __init__(self, offload: Offload, limit: int) -> None:
        self.offload = offload
        self.limit = max(1, limit)
        self.share = max(1, self.limit // 4)
        self._open: OrderedDict[str, Database] = OrderedDict()
        #: The owner of each open database that has one, and how many each holds.
        self._owner_of: dict[str, tuple[str, str]] = {}
        self._held: dict[tuple[str, str], int] = {}

    async def run(self, path: str, setup: Setup, fn: Callable[..., T], *args: Any) -> T:
        db = self._open.get(path)
        if db is None:
            db = self._open[path] = Database(path, setup)
            owner = STORAGE_OWNER.get()
            if owner is not None:
                self._owner_of[path] = owner
                self._held[owner] = self._held.get(owner, 0) + 1
            for old in self._evict(keep=path, owner=owner):
                # Closing checkpoints the WAL: disk work, so in a thread too.
                await self.offload.run(old.close)
        else:
            self._open.move_to_end(path)
        return await db.run(self.offload, fn, *args)

    def is_open(self, path: str) -> bool:
        return path in self._open

    async def forget(self, path: str) -> None:
        """Close ``path``'s connection once the calls on it are done, and stop
        caching it: the file is about to be deleted, and a connection kept
        open would go on reading and writing the deleted file."""
        db = self._open.get(path)
        if db is None:
            return
        async with db.lock:  # calls already waiting run first, on the old file
            if self._open.get(path) is db:
                self._drop(path)
            await self.offload.run(db.close)

    def _drop(self, path: str) -> Database:
        owner = self._owner_of.pop(path, None)
        if owner is not None:
            self._held[owner] -= 1
            if not self._held[owner]:
                del self._held[owner]
        return self._open.pop(path)

    def _evict(self, keep: str, owner: tuple[str, str] | None) -> list[Database]:
        gone: list[Database] = []
        if owner is not None and self._held.get(owner, 0) > self.share:
            # Past its share: its own least recently used one goes.
            for path in list(self._open):
                if self._owner_of.get(path) == owner and path != keep and self._idle(path):
                    gone.append(self._drop(path))
                    break
        for path in list(self._open):
            if len(self._open) <= self.limit:
                break
            if path != keep and self._idle(path):
                gone.append(self._drop(path))
        return gone

    def _idle(self, path: str) -> bool:
        """Nobody holds or waits for its lock."""
        db = self._open[path]
        return db.users == 0 and not db.lock.locked()

    def close(self) -> None:
        for db in self._open.values():
            db.close()
        self._open.clear()
        self._owner_of.clear()
        self._held.clear()
