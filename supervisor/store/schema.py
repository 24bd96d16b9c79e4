"""The SQLite schema and how a connection is opened.

One file, ``<state_dir>/corral.db``, in WAL mode with ``synchronous=NORMAL``:
a deploy survives a crash of the process (a power cut may lose the last few
commits, never corrupt the file), and readers never wait for a writer.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sqlite3
import uuid

#: 1: scripts hold their code. 2: immutable versions over content-addressed
#: bundles, deployments (percentage splits), asset manifests, API tokens.
SCHEMA_VERSION = 2
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
    version_id TEXT NOT NULL DEFAULT '',  -- the deployed (primary) version
    split TEXT NOT NULL DEFAULT '',       -- JSON [[version_id, percentage], ...] of a gradual deployment
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS script_tags (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (namespace, name, tag)
);
CREATE INDEX IF NOT EXISTS script_tags_by_tag ON script_tags (namespace, tag, name);
CREATE TABLE IF NOT EXISTS bundles (
    hash TEXT PRIMARY KEY,            -- of everything below: identical uploads share one row
    main_module TEXT NOT NULL,
    modules BLOB NOT NULL,            -- msgpack {path: bytes}
    metadata TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    id TEXT PRIMARY KEY,              -- Cloudflare's version id (a UUID)
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    number INTEGER NOT NULL,          -- 1, 2, ... per script
    content TEXT NOT NULL,            -- ScriptRecord.version: what a warm child runs
    bundle TEXT NOT NULL REFERENCES bundles (hash),
    assets TEXT NOT NULL DEFAULT '',  -- JSON: the version's asset manifest and serving config
    source TEXT NOT NULL DEFAULT 'api',
    message TEXT NOT NULL DEFAULT '',
    created_on TEXT NOT NULL,
    tag TEXT NOT NULL DEFAULT '',     -- the upload's workers/tag annotation
    UNIQUE (namespace, name, number)
);
CREATE INDEX IF NOT EXISTS versions_by_bundle ON versions (bundle);
CREATE TABLE IF NOT EXISTS deployments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    versions TEXT NOT NULL,           -- JSON [{"version_id": ..., "percentage": ...}]
    source TEXT NOT NULL DEFAULT 'api',
    message TEXT NOT NULL DEFAULT '',
    created_on TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deployments_by_script ON deployments (namespace, name, seq);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,        -- sha256 of the token: the token itself is never stored
    name TEXT NOT NULL,
    scope TEXT NOT NULL,              -- read, deploy or admin
    namespaces TEXT NOT NULL,         -- JSON list, empty for every namespace
    created_on TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL,               -- the binding type: kv_namespace or d1
    id TEXT NOT NULL,                 -- what bindings name
    name TEXT NOT NULL,               -- a KV namespace's title, a D1 database's name
    created_on TEXT NOT NULL,
    settings TEXT NOT NULL DEFAULT '',  -- JSON of a kind's own settings (an HTTP pull consumer's), or ''
    PRIMARY KEY (kind, id),
    UNIQUE (kind, name)
);
CREATE TABLE IF NOT EXISTS routes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order, the last tie-breaker
    id TEXT NOT NULL UNIQUE,
    pattern TEXT NOT NULL UNIQUE,
    script TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS domains (   -- custom domains: a whole host to a platform script
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    hostname TEXT NOT NULL UNIQUE,
    service TEXT NOT NULL,
    zone_name TEXT NOT NULL
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


class NewerSchema(RuntimeError):
    """The database is a later Corral's: this one would misread it."""


def migrate(db: sqlite3.Connection, path: str) -> None:
    """Create or upgrade the schema inside the caller's write transaction."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise NewerSchema(f"{path} was written by a newer Corral (schema {version}, this one knows up to "
                          f"{SCHEMA_VERSION}): run that Corral, or restore a backup this one wrote")
    for statement in _DDL.split(";"):
        if statement.strip():
            db.execute(statement)
    if version == 0:
        # A brand-new state directory: give it the namespace most setups need.
        db.execute(
            "INSERT OR IGNORE INTO namespaces (name, id, created_on) VALUES (?, ?, ?)",
            (DEFAULT_NAMESPACE, str(uuid.uuid4()), now()),
        )
    elif version == 1:
        _upgrade_1_to_2(db)
    _add_resource_settings(db)
    _add_version_tag(db)
    if version < SCHEMA_VERSION:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _add_resource_settings(db: sqlite3.Connection) -> None:
    """``resources.settings`` came after schema 2's first release: a column
    added with a default, which older code reading the table never names."""
    if "settings" not in {row[1] for row in db.execute("PRAGMA table_info(resources)")}:
        db.execute("ALTER TABLE resources ADD COLUMN settings TEXT NOT NULL DEFAULT ''")


def _add_version_tag(db: sqlite3.Connection) -> None:
    """``versions.tag`` (a version's ``workers/tag`` annotation) came later
    still: added the same way, and "" for the versions before it."""
    if "tag" not in {row[1] for row in db.execute("PRAGMA table_info(versions)")}:
        db.execute("ALTER TABLE versions ADD COLUMN tag TEXT NOT NULL DEFAULT ''")


def bundle_hash(main_module: str, modules: bytes, metadata: str) -> str:
    """A bundle's key: the hash of everything it stores (identical uploads share it)."""
    digest = hashlib.sha256()
    for item in (main_module.encode(), metadata.encode(), modules):
        digest.update(len(item).to_bytes(8, "big") + item)
    return digest.hexdigest()[:32]


def _upgrade_1_to_2(db: sqlite3.Connection) -> None:
    """Schema 1 kept one copy of each script's code in ``scripts``: move it to a
    bundle, and give every script a version 1 deployed at 100%."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(scripts)")}
    if "version_id" not in columns:
        db.execute("ALTER TABLE scripts ADD COLUMN version_id TEXT NOT NULL DEFAULT ''")
    if "split" not in columns:
        db.execute("ALTER TABLE scripts ADD COLUMN split TEXT NOT NULL DEFAULT ''")
    rows = db.execute(
        "SELECT namespace, name, version, main_module, modules, metadata, modified_on FROM scripts"
    ).fetchall()
    for namespace, name, content, main_module, modules, metadata, modified_on in rows:
        key = bundle_hash(main_module, modules, metadata)
        version_id = str(uuid.uuid4())
        db.execute("INSERT OR IGNORE INTO bundles (hash, main_module, modules, metadata) VALUES (?, ?, ?, ?)",
                   (key, main_module, modules, metadata))
        db.execute("INSERT INTO versions (id, namespace, name, number, content, bundle, source, created_on) "
                   "VALUES (?, ?, ?, 1, ?, ?, 'migration', ?)",
                   (version_id, namespace, name, content, key, modified_on))
        db.execute("INSERT INTO deployments (id, namespace, name, versions, source, created_on) "
                   "VALUES (?, ?, ?, ?, 'migration', ?)",
                   (str(uuid.uuid4()), namespace, name,
                    json.dumps([{"version_id": version_id, "percentage": 100.0}]), modified_on))
        db.execute("UPDATE scripts SET modules = x'', version_id = ? WHERE namespace = ? AND name = ?",
                   (version_id, namespace, name))
