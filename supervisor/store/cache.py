"""What makes the request path cheap: the version index and a record cache.

* an in-memory *index* ``(namespace, name) -> version`` of every script,
  loaded at open and updated after each commit, so a version lookup and a
  miss for an unknown script are a dict lookup;
* an LRU cache of full records, bounded by count and by bytes of code, so a
  warm lookup costs microseconds.

Only the supervisor writes the database, so the index is authoritative. A
generation counter keeps a slow cache fill (a read done in a worker thread)
from re-inserting a record that a concurrent write just replaced.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable

from supervisor.model import ScriptRecord
from supervisor.store.records import record_size

Key = tuple[str, str]


class RecordCache:
    """Thread-safe: the store's writes run in worker threads."""

    def __init__(self, versions: dict[Key, str], *, entries: int, max_bytes: int) -> None:
        self._lock = threading.Lock()
        self._versions = versions
        self._entries = entries
        self._max_bytes = max_bytes
        self._records: collections.OrderedDict[Key, tuple[ScriptRecord, int]] = collections.OrderedDict()
        self._bytes = 0
        self._generation = 0

    def lookup(self, key: Key) -> tuple[ScriptRecord | None, bool, int]:
        """``(record, known, generation)``: the cached record if any, whether
        the script exists at all, and the generation to fill the cache with."""
        with self._lock:
            if key not in self._versions:
                return None, False, self._generation
            entry = self._records.get(key)
            if entry is not None:
                self._records.move_to_end(key)
                return entry[0], True, self._generation
            return None, True, self._generation

    def remember(self, key: Key, record: ScriptRecord, generation: int) -> None:
        size = record_size(record)
        if size > self._max_bytes // 4:
            return  # one huge script must not flush the whole cache
        with self._lock:
            if generation != self._generation or key in self._records:
                return
            self._records[key] = (record, size)
            self._bytes += size
            while len(self._records) > self._entries or self._bytes > self._max_bytes:
                _, (_, old_size) = self._records.popitem(last=False)
                self._bytes -= old_size

    def forget(self, keys: Iterable[Key], versions: dict[Key, str | None]) -> None:
        """After a commit: drop stale records and update the index."""
        with self._lock:
            self._generation += 1
            for key in keys:
                entry = self._records.pop(key, None)
                if entry is not None:
                    self._bytes -= entry[1]
            for key, version in versions.items():
                if version is None:
                    self._versions.pop(key, None)
                else:
                    self._versions[key] = version

    def version(self, key: Key) -> str | None:
        return self._versions.get(key)

    def names(self) -> list[Key]:
        with self._lock:
            return list(self._versions)

    def clear(self) -> None:
        """Drop every cached record (the index stays: it is the truth)."""
        self.forget(list(self._records), {})

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records
