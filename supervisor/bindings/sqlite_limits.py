"""The limits a tenant's SQL runs under, for D1 and Durable Object storage alike.

Both run tenants' SQL in the storage threads every tenant shares, on files
on the host's disk: a query that never ends would hold a thread for ever, and
a table that grows without bound would fill the disk. SQLite enforces both
itself: ``max_page_count`` caps the file (a write past it fails with
SQLITE_FULL and keeps nothing), and a progress handler interrupts a
statement past its deadline (SQLITE_INTERRUPT).
"""

from __future__ import annotations

import sqlite3
import time

#: SQLite's own bound on a database's pages: no cap.
UNLIMITED_PAGES = 1073741823


#: What a result row and each of its values cost the supervisor beyond their
#: bytes (a list and its slots): a result limit counted only the values' bytes,
#: so ten million rows of '' were 0 bytes to it and ~900 MB to the supervisor.
ROW_OVERHEAD = 16
VALUE_OVERHEAD = 8


def row_cost(row: tuple[object, ...]) -> int:
    """A result row's charge against a result-size limit."""
    return ROW_OVERHEAD + sum(VALUE_OVERHEAD + len(v) if isinstance(v, (str, bytes)) else VALUE_OVERHEAD
                              for v in row)


def hold_to(conn: sqlite3.Connection, max_bytes: int | None) -> int:
    """Cap ``conn``'s database at ``max_bytes`` (None: no cap); returns its page size."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = UNLIMITED_PAGES if max_bytes is None else max(1, max_bytes // page_size)
    conn.execute(f"PRAGMA max_page_count = {int(pages)}")
    return page_size


class Deadline:
    """A progress handler (``conn.set_progress_handler(deadline.progress, 1000)``)
    that interrupts the statement running once ``timeout_s`` have passed, and
    remembers that it did, so the caller can say why it was interrupted."""

    def __init__(self, timeout_s: float) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.timed_out = False

    def progress(self) -> int:
        if time.monotonic() > self.deadline:
            self.timed_out = True
            return 1
        return 0
