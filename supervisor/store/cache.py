"""What makes the request path cheap: a bounded cache of deployed scripts.

Each entry is what a script serves: one record, or several with their
percentages while a gradual deployment splits its traffic. The cache is an
LRU bounded by count and by bytes of code, so the supervisor's memory does
not grow with the number of scripts that exist, only with the ones in use.

There is no longer an in-memory index of every script: at 100,000 scripts it
cost tens of megabytes whether or not they ran, and a miss on an unknown
name is one primary-key lookup in SQLite (microseconds) anyway. Unknown names
are remembered in a small bounded set of their own, so a storm of requests
for a name that does not exist does not reach the disk either.

A generation counter keeps a slow cache fill (a read done in a worker thread)
from re-inserting what a concurrent write just replaced.
"""

from __future__ import annotations

import collections
import hashlib
import random
import threading
from collections.abc import Iterable

from supervisor.model import ScriptRecord
from supervisor.store.records import record_size

Key = tuple[str, str]
#: ``(records, cumulative percentages)``: one record at 100, or a split.
Deployed = tuple[tuple[ScriptRecord, ...], tuple[float, ...]]

MAX_MISSING = 10_000


def pick(deployed: Deployed, sticky: str = "") -> ScriptRecord:
    """The record one request runs: by percentage when traffic is split, at
    random, or (``sticky``) by where the key's hash falls: the same key the
    same version while the split lasts (a Durable Object's id: "requests to
    each Durable Object will always use the same Worker version")."""
    records, cumulative = deployed
    if len(records) == 1:
        return records[0]
    if sticky:
        fraction = int.from_bytes(hashlib.sha256(sticky.encode()).digest()[:8], "big") / 2**64
    else:
        fraction = random.random()
    point = fraction * cumulative[-1]
    for record, edge in zip(records, cumulative, strict=False):
        if point < edge:
            return record
    return records[-1]


class RecordCache:
    """Thread-safe: the store's writes run in worker threads."""

    def __init__(self, *, entries: int, max_bytes: int) -> None:
        self._lock = threading.Lock()
        self._entries = entries
        self._max_bytes = max_bytes
        self._records: collections.OrderedDict[Key, tuple[Deployed, int]] = collections.OrderedDict()
        self._missing: collections.OrderedDict[Key, None] = collections.OrderedDict()
        self._bytes = 0
        self._generation = 0

    def lookup(self, key: Key) -> tuple[Deployed | None, bool, int]:
        """``(deployed, known_missing, generation)``."""
        with self._lock:
            entry = self._records.get(key)
            if entry is not None:
                self._records.move_to_end(key)
                return entry[0], False, self._generation
            return None, key in self._missing, self._generation

    def remember(self, key: Key, deployed: Deployed | None, generation: int) -> None:
        """Fill the cache after a read; ``None`` records that the script does not exist."""
        with self._lock:
            if generation != self._generation or key in self._records:
                return
            if deployed is None:
                self._missing[key] = None
                if len(self._missing) > MAX_MISSING:
                    self._missing.popitem(last=False)
                return
            size = sum(record_size(r) for r in deployed[0])
            if size > self._max_bytes // 4:
                return  # one huge script must not flush the whole cache
            self._records[key] = (deployed, size)
            self._bytes += size
            while len(self._records) > self._entries or self._bytes > self._max_bytes:
                _, (_, old_size) = self._records.popitem(last=False)
                self._bytes -= old_size

    def replace(self, key: Key, deployed: Deployed | None) -> None:
        """After a commit that changed ``key``: what it serves now, read in
        that commit's transaction (reads begun before it are not remembered)."""
        self.forget([key])
        with self._lock:
            generation = self._generation
        self.remember(key, deployed, generation)

    def forget(self, keys: Iterable[Key]) -> None:
        """After a commit: drop what is stale (records, and names now known)."""
        with self._lock:
            self._generation += 1
            for key in keys:
                entry = self._records.pop(key, None)
                if entry is not None:
                    self._bytes -= entry[1]
                self._missing.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._records.clear()
            self._missing.clear()
            self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def capacity(self) -> int:
        """How many scripts' records it may hold (fewer if their code fills ``max_bytes``)."""
        return self._entries

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records
