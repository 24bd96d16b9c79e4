"""Which Durable Object classes are KV-backed, as their migrations made them.

On Cloudflare a class's storage backend is chosen once, by the migration
step that creates it: ``new_sqlite_classes`` makes a SQLite-backed class
(``ctx.storage.sql``, the synchronous ``ctx.storage.kv``, 2 MiB values),
``new_classes`` a KV-backed one (neither API; values of at most 128 KiB).
Corral keeps every object in SQLite either way; what differs is what the
object may do, so the kind is kept per class, in the object index, as the
steps are applied (supervisor.bindings.do_migrations), and each event for
an object carries it (``DurableObjectEvent.kv_backed``).

A class no step created (deployed without migrations, or before Corral kept
kinds) has no row and stays SQLite-backed, as it always was here. A rename
carries the kind to the new name; a delete forgets it.
"""

from __future__ import annotations

import sqlite3
from typing import Any


def setup(conn: sqlite3.Connection) -> None:
    """The table (in the object index, beside the migration tags)."""
    conn.execute("CREATE TABLE IF NOT EXISTS class_backends (namespace TEXT, script TEXT, class_name TEXT, "
                 "kv INTEGER NOT NULL, PRIMARY KEY (namespace, script, class_name)) WITHOUT ROWID")


def apply_step(conn: sqlite3.Connection, namespace: str, script: str, step: dict[str, Any]) -> None:
    """Record what one migration step does to its script's classes' kinds."""
    for rename in step.get("renamed_classes") or []:
        conn.execute("UPDATE OR REPLACE class_backends SET class_name = ? WHERE namespace = ? AND script = ? "
                     "AND class_name = ?", (rename["to"], namespace, script, rename["from"]))
    for class_name in step.get("deleted_classes") or []:
        conn.execute("DELETE FROM class_backends WHERE namespace = ? AND script = ? AND class_name = ?",
                     (namespace, script, class_name))
    for key, kv in (("new_classes", 1), ("new_sqlite_classes", 0)):
        for class_name in step.get(key) or []:
            if isinstance(class_name, str):
                conn.execute("INSERT OR REPLACE INTO class_backends VALUES (?, ?, ?, ?)",
                             (namespace, script, class_name, kv))


def forget(conn: sqlite3.Connection, namespace: str, script: str) -> None:
    """``script`` was deleted: a script given its name later starts afresh."""
    conn.execute("DELETE FROM class_backends WHERE namespace = ? AND script = ?", (namespace, script))


def kv_classes(conn: sqlite3.Connection, namespace: str, script: str) -> frozenset[str]:
    """The KV-backed classes of ``script``."""
    return frozenset(row[0] for row in conn.execute(
        "SELECT class_name FROM class_backends WHERE namespace = ? AND script = ? AND kv = 1",
        (namespace, script)))
