"""Scripts as the request path reads them: a hit inline, a miss in a thread.

Routing a request and resolving a call both need a script's full record. A
cache hit costs a dict lookup and stays synchronous (the hot path); a miss
means a SQLite read and a bundle decode, milliseconds for a large script,
which must never stall the event loop that serves every other tenant. So the
request path calls :meth:`ScriptLookup.cached` and awaits
:meth:`ScriptLookup.load` only when that says :data:`NOT_CACHED`.

Concurrent misses of one script share a single read. A deploy stays atomic:
the store drops the old record from its cache (and bumps its generation) as
it commits, so a request arriving afterwards misses and reads the new row; a
request that joined a read begun before the commit checks the cache again
and reads for itself when the shared read was not remembered.
"""

from __future__ import annotations

from typing import Protocol

import trio

from supervisor.model import ScriptRecord
from supervisor.store.store import NOT_CACHED, NotCached, Store

__all__ = ["NOT_CACHED", "NotCached", "ScriptLookup", "ScriptSource"]


class ScriptSource(Protocol):
    """What the ingress and the calls need to find a script."""

    def cached(self, namespace: str, name: str) -> ScriptRecord | None | NotCached:
        """Without blocking: the record, None (not deployed) or NOT_CACHED."""

    async def load(self, namespace: str, name: str, sticky: str = "") -> ScriptRecord | None:
        """The record (None: not deployed), read off the event loop if need be;
        ``sticky``: the same key, the same version of a split (cache.pick)."""


class ScriptLookup:
    """:class:`ScriptSource` over the :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.cached = store.cached  # the hot path: no extra call layer
        self._reads: dict[tuple[str, str], trio.Event] = {}

    async def load(self, namespace: str, name: str, sticky: str = "") -> ScriptRecord | None:
        key = (namespace, name)
        if sticky:  # picked by its key: from the cache, or the store
            record = self._store.cached(namespace, name, sticky)
            if record is not NOT_CACHED:
                return record
            return await trio.to_thread.run_sync(self._store.get_script, namespace, name, sticky)
        pending = self._reads.get(key)
        if pending is not None:
            await pending.wait()  # someone read it: it is likely cached now
            record = self._store.cached(namespace, name)
            if record is not NOT_CACHED:
                return record
            # Not remembered (a deploy raced that read, or too big to cache).
            return await trio.to_thread.run_sync(self._store.get_script, namespace, name)
        done = self._reads[key] = trio.Event()
        try:
            return await trio.to_thread.run_sync(self._store.get_script, namespace, name)
        finally:
            del self._reads[key]
            done.set()
