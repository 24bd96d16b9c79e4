"""The SQLite schema and how a connection is opened.

One file, ``<state_dir>/corral.db``, in WAL mode with ``synchronous=NORMAL``:
a deploy survives a crash of the process (a power cut may lose the last few
commits, never corrupt the file), and readers never wait for a writer.
"""

from __future__ import annotations

import datetime
import sqlite3
import uuid

SCHEMA_VERSION = 1
#: The namespace a brand-new state directory starts with.
DEFAULT_NAMESPACE = "default"

_DDL = """
CREATE TABLE IF NOT EXISTS namespaces (
    name TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    created_on TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS scripts (
    namespace TEXT NOT NULL,          -- '' for platform scripts
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    main_module TEXT NOT NULL,
    modules BLOB NOT NULL,            -- msgpack {path: bytes}
    metadata TEXT NOT NULL,           -- JSON: bindings, compatibility date and flags, tail_consumers
    tags TEXT NOT NULL,               -- JSON list, order kept, mirrored in script_tags
    created_on TEXT NOT NULL,
    modified_on TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS script_tags (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (namespace, name, tag)
);
CREATE INDEX IF NOT EXISTS script_tags_by_tag ON script_tags (namespace, tag, name);
CREATE TABLE IF NOT EXISTS routes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order, the last tie-breaker
    id TEXT NOT NULL UNIQUE,
    pattern TEXT NOT NULL UNIQUE,
    script TEXT NOT NULL
);
"""


def now() -> str:
    """Timestamps as the API shows them (RFC 3339, UTC, microseconds)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def migrate(db: sqlite3.Connection, path: str) -> None:
    """Create or upgrade the schema inside the caller's write transaction."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"{path} was written by a newer Corral (schema {version} > {SCHEMA_VERSION})")
    for statement in _DDL.split(";"):
        if statement.strip():
            db.execute(statement)
    if version == 0:
        # A brand-new state directory: give it the namespace most setups need.
        db.execute(
            "INSERT OR IGNORE INTO namespaces (name, id, created_on) VALUES (?, ?, ?)",
            (DEFAULT_NAMESPACE, str(uuid.uuid4()), now()),
        )
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
