"""Durable state of the supervisor: namespaces, scripts, tags and routes.

This module holds the transactions; the schema is :mod:`.schema`, rows and
their typed values :mod:`.records`, the version index and record cache that
make the request path cheap :mod:`.cache`, cursors and tag filters
:mod:`.cursors`.

Two connections are kept: one for writes (serialised by a lock; the server
calls writes from worker threads via ``trio.to_thread.run_sync``) and one for
reads. Records handed out are shared with the cache: treat them as read-only.

Every expected failure raises a domain error (:mod:`supervisor.errors`:
``Invalid``, ``NotFound``, ``Conflict``) with a message meant for the
operator; the admin API decides what status that is.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import msgspec

from supervisor.edge.routes import RouteError, RouteTable, check_wildcards, normalize_hostname, normalize_pattern
from supervisor.errors import Conflict, Invalid, NotFound
from supervisor.model import MAX_TAGS, PLATFORM, Binding, ScriptRecord, check_name, check_tag
from supervisor.store import schema
from supervisor.store.cache import Deployed, RecordCache, pick
from supervisor.store.cursors import TagFilter, coerce_filters, decode_cursor, encode_cursor
from supervisor.store.records import (
    LIST_COLUMNS,
    DeploymentInfo,
    DomainInfo,
    NamespaceInfo,
    ResourceInfo,
    RouteInfo,
    Split,
    TokenInfo,
    VersionInfo,
    bindings_of,
    encode_metadata,
    encode_modules,
    keep_unversioned,
    packages_lock_of,
    record_from_row,
    splits_decoder,
    tags_decoder,
    unversioned_of,
    with_unversioned,
)

__all__ = ["MAX_PER_PAGE", "NOT_CACHED", "NamespaceInfo", "NotCached", "RouteInfo", "Store", "namespace_not_found",
           "script_not_found"]

MAX_PER_PAGE = 1000
#: How often, at most, a write copies the write-ahead log into corral.db (Store._checkpoint).
CHECKPOINT_EVERY_S = 30.0
#: Cloudflare's error code for a missing script.
SCRIPT_NOT_FOUND_CODE = 10007
#: Cloudflare's error code for an unknown version id.
VERSION_NOT_FOUND_CODE = 10218


#: What an API token may do: read (GETs), deploy (scripts in its namespaces), admin (all).
TOKEN_SCOPES = ("read", "deploy", "admin")


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


#: Cloudflare's error for a route naming a Worker that does not exist.
ROUTE_SCRIPT_NOT_FOUND_CODE = 10019


def script_not_found(namespace: str, name: str) -> NotFound:
    """The error for a missing script, naming where it was looked for."""
    where = f"in dispatch namespace {namespace!r}" if namespace != PLATFORM else "among platform scripts"
    return NotFound(f"script {name!r} not found {where}", code=SCRIPT_NOT_FOUND_CODE)


def _named(namespace: str, name: str) -> str:
    """The script as ``corral``'s command line names it, for hints to run."""
    return f"--namespace {namespace} {name}" if namespace != PLATFORM else name


def namespace_not_found(namespace: str) -> NotFound:
    return NotFound(f"dispatch namespace {namespace!r} does not exist")


def normalize_tags(tags: Iterable[object]) -> list[str]:
    """Validated, de-duplicated, order kept."""
    seen: dict[str, None] = {}
    for tag in tags:
        seen[check_tag(tag)] = None
    if len(seen) > MAX_TAGS:
        raise Invalid(f"a script can have at most {MAX_TAGS} tags, got {len(seen)}")
    return list(seen)


class NotCached:
    """The type of :data:`NOT_CACHED`: deployed, but a read would touch SQLite."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_CACHED"


NOT_CACHED = NotCached()


class Store:
    """The SQLite-backed state; see the module docstring for the threading model."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        cache_entries: int = 10_000,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        self.path = os.fspath(path)
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._writer = schema.connect(self.path)
        self._checkpointed = time.monotonic()
        with self._transaction() as db:
            schema.migrate(db, self.path)
        self._reader = schema.connect(self.path)
        self._route_table: RouteTable | None = None
        self._cache = RecordCache(entries=cache_entries, max_bytes=cache_bytes)

    # -- plumbing -----------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, serialised with every other writer."""
        with self._write_lock, self._begin() as db:
            yield db

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        """Copy the write-ahead log into ``corral.db`` now and then: the
        control plane writes little, so SQLite's own checkpoint (at 4 MB of
        log) could be weeks away, and everything lived in ``corral.db-wal``,
        which a file backup taking only ``corral.db`` lost whole."""
        now = time.monotonic()
        if now - self._checkpointed >= CHECKPOINT_EVERY_S:
            self._checkpointed = now
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    @contextmanager
    def _begin(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the caller holds ``_write_lock`` (and may do
        more under it once this commits: a deploy caches its record there, so
        that two deploys of one script cache in the order they committed)."""
        db = self._writer
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
            self._checkpoint(db)
        except BaseException:
            # A failed COMMIT (a full disk) may leave the transaction open:
            # the next write would nest in it, and be lost with it.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: the queries inside see one committed state."""
        with self._read_lock:
            db = self._reader
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def close(self) -> None:
        """Close both connections (checkpoints the WAL). The store is unusable afterwards."""
        with self._write_lock, self._read_lock:
            self._reader.close()
            self._writer.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- namespaces ---------------------------------------------------------

    def _namespace_exists(self, db: sqlite3.Connection, name: str) -> bool:
        return db.execute("SELECT 1 FROM namespaces WHERE name = ?", (name,)).fetchone() is not None

    def _require_namespace(self, db: sqlite3.Connection, namespace: str) -> None:
        if namespace != PLATFORM and not self._namespace_exists(db, namespace):
            raise namespace_not_found(namespace)

    def create_namespace(self, name: str) -> NamespaceInfo:
        check_name("namespace", name)
        with self._transaction() as db:
            if self._namespace_exists(db, name):
                raise Conflict(f"dispatch namespace {name!r} already exists")
            info = NamespaceInfo(id=str(uuid.uuid4()), name=name, created_on=schema.now())
            db.execute(
                "INSERT INTO namespaces (name, id, created_on) VALUES (?, ?, ?)",
                (info.name, info.id, info.created_on),
            )
        return info

    def list_namespaces(self) -> list[NamespaceInfo]:
        rows = self._read(
            "SELECT n.name, n.id, n.created_on, COUNT(s.name) FROM namespaces n "
            "LEFT JOIN scripts s ON s.namespace = n.name GROUP BY n.name ORDER BY n.name"
        )
        return [NamespaceInfo(name=r[0], id=r[1], created_on=r[2], script_count=r[3]) for r in rows]

    def get_namespace(self, name: str) -> NamespaceInfo | None:
        rows = self._read(
            "SELECT n.name, n.id, n.created_on, "
            "(SELECT COUNT(*) FROM scripts s WHERE s.namespace = n.name) "
            "FROM namespaces n WHERE n.name = ?",
            (name,),
        )
        if not rows:
            return None
        r = rows[0]
        return NamespaceInfo(name=r[0], id=r[1], created_on=r[2], script_count=r[3])

    def delete_namespace(self, name: str) -> list[str]:
        """Delete a namespace and its scripts; returns the deleted script names."""
        with self._transaction() as db:
            if not self._namespace_exists(db, name):
                raise namespace_not_found(name)
            names = [r[0] for r in db.execute("SELECT name FROM scripts WHERE namespace = ?", (name,))]
            self._purge(db, name, names)
            db.execute("DELETE FROM namespaces WHERE name = ?", (name,))
        self._cache.forget([(name, script) for script in names])
        return names

    # -- scripts ------------------------------------------------------------

    def put_script(self, record: ScriptRecord, *, deploy: bool = True, source: str = "api",
                   message: str = "") -> ScriptRecord:
        """Store ``record`` as a new immutable version of its script, and deploy
        it to 100% of traffic unless ``deploy`` is False (then the script must
        exist already). Keeps ``created_on`` of an existing script.

        Returns the stored record (version id and timestamps set, tags normalised).
        The version keeps the record's ``version_tag`` and ``version_message``
        (its upload's annotations); ``message``, if given, is its message and
        the deployment's.
        """
        if record.namespace != PLATFORM:
            check_name("namespace", record.namespace)
        check_name("script", record.name)
        tags = normalize_tags(record.tags)
        metadata = encode_metadata(record)
        modules = encode_modules(record)
        bundle = schema.bundle_hash(record.main_module, modules, metadata)
        assets = msgspec.json.encode(record.assets).decode() if record.assets else ""
        key = (record.namespace, record.name)
        now = schema.now()
        version_id = str(uuid.uuid4())
        message = message or record.version_message
        deployed: Deployed | None = None
        with self._write_lock:
            with self._begin() as db:
                self._require_namespace(db, record.namespace)
                row = db.execute(
                    "SELECT created_on, tags FROM scripts WHERE namespace = ? AND name = ?", key
                ).fetchone()
                if row is None and not deploy:
                    raise script_not_found(*key)
                created_on = row[0] if row else now
                (number,) = db.execute(
                    "SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE namespace = ? AND name = ?", key
                ).fetchone()
                db.execute("INSERT OR IGNORE INTO bundles (hash, main_module, modules, metadata) VALUES (?, ?, ?, ?)",
                           (bundle, record.main_module, modules, metadata))
                db.execute(
                    "INSERT INTO versions (id, namespace, name, number, content, bundle, assets, source, message, "
                    "tag, created_on) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (version_id, *key, number, record.version, bundle, assets, source, message, record.version_tag,
                     now),
                )
                if deploy:
                    db.execute(
                        "INSERT OR REPLACE INTO scripts (namespace, name, version, main_module, modules, "
                        "metadata, tags, created_on, modified_on, version_id, split) "
                        "VALUES (?, ?, ?, ?, x'', ?, ?, ?, ?, ?, '')",
                        (*key, record.version, record.main_module, metadata,
                         msgspec.json.encode(tags).decode(), created_on, now, version_id),
                    )
                    self._write_tag_rows(db, key, tags)
                    self._insert_deployment(db, key, [Split(version_id=version_id, percentage=100.0)],
                                            source, message, now)
                    deployed = self._load_deployed(db, key)
                else:
                    tags = tags_decoder.decode(row[1])
            if deploy:
                self._cache.replace(key, deployed)  # its first request needs no read
        return msgspec.structs.replace(record, tags=tags, created_on=created_on, modified_on=now,
                                       version_id=version_id, version_message=message)

    def cached(self, namespace: str, name: str, sticky: str = "") -> ScriptRecord | None | NotCached:
        """The record if the cache holds it, None if no such script is deployed,
        else :data:`NOT_CACHED`: never touches SQLite, so the event loop may call
        it on the request path (a miss is then read with :meth:`get_script` in a
        worker thread; see supervisor.store.lookup)."""
        deployed, missing, _generation = self._cache.lookup((namespace, name))
        if deployed is not None:
            return pick(deployed, sticky)  # a gradual deployment picks per request (or per key)
        return None if missing else NOT_CACHED

    def get_script(self, namespace: str, name: str, sticky: str = "") -> ScriptRecord | None:
        """The record a request runs now (with code), or None.

        Hot path: cached. While a gradual deployment splits traffic, each call
        picks a version by its percentage (by ``sticky``'s hash, if given: see
        cache.pick). Read-only result.
        """
        deployed = self.get_deployed(namespace, name)
        return pick(deployed, sticky) if deployed is not None else None

    def get_primary(self, namespace: str, name: str) -> ScriptRecord | None:
        """The deployed version with the largest share of traffic (what the API
        shows as the script, and what a settings or secret change builds on)."""
        deployed = self.get_deployed(namespace, name)
        if deployed is None:
            return None
        records, edges = deployed
        shares = [edge - (edges[i - 1] if i else 0.0) for i, edge in enumerate(edges)]
        return records[shares.index(max(shares))]

    def get_deployed(self, namespace: str, name: str) -> Deployed | None:
        """Every record serving the script now, with cumulative percentages."""
        key = (namespace, name)
        deployed, missing, generation = self._cache.lookup(key)
        if deployed is not None or missing:
            return deployed
        with self._snapshot() as db:
            deployed = self._load_deployed(db, key)
        self._cache.remember(key, deployed, generation)
        return deployed

    def _load_deployed(self, db: sqlite3.Connection, key: tuple[str, str]) -> Deployed | None:
        row = db.execute(
            "SELECT tags, created_on, modified_on, version_id, split, metadata FROM scripts "
            "WHERE namespace = ? AND name = ?",
            key,
        ).fetchone()
        if row is None:
            return None
        tags, created_on, modified_on, version_id, split, metadata = row
        unversioned = unversioned_of(metadata)
        splits = splits_decoder.decode(split) if split else [Split(version_id=version_id, percentage=100.0)]
        records: list[ScriptRecord] = []
        edges: list[float] = []
        total = 0.0
        for item in splits:
            record = self._version_record(db, key, item.version_id, tags, created_on, modified_on)
            if record is None:
                continue
            record = msgspec.structs.replace(record, **unversioned)
            total += item.percentage
            records.append(record)
            edges.append(total)
        return (tuple(records), tuple(edges)) if records else None

    @staticmethod
    def _version_record(db: sqlite3.Connection, key: tuple[str, str], version_id: str, tags: str,
                        created_on: str, modified_on: str) -> ScriptRecord | None:
        row = db.execute(
            "SELECT v.content, b.main_module, b.metadata, b.modules, v.assets, v.created_on, v.tag, v.message "
            "FROM versions v "
            "JOIN bundles b ON b.hash = v.bundle WHERE v.id = ? AND v.namespace = ? AND v.name = ?",
            (version_id, *key),
        ).fetchone()
        if row is None:
            return None
        content, main_module, metadata, modules, assets, version_created_on, tag, message = row
        record = record_from_row((*key, content, main_module, metadata, tags, created_on, modified_on,
                                  version_id), modules, assets)
        record.version_created_on = version_created_on
        record.version_tag = tag
        record.version_message = message
        return record

    def get_version(self, namespace: str, name: str) -> str | None:
        """The deployed version's content hash, or None."""
        record = self.get_script(namespace, name)
        return record.version if record is not None else None

    def script_names(self) -> list[tuple[str, str]]:
        """Every ``(namespace, name)`` deployed (a scan: not for the request path)."""
        return [(r[0], r[1]) for r in self._read("SELECT namespace, name FROM scripts ORDER BY namespace, name")]

    def bound_ids(self, namespace: str, binding_type: str, field: str) -> list[str]:
        """The ids (``field``) that the deployed scripts of ``namespace`` name in
        their bindings of ``binding_type``, sorted: Corral's KV namespaces and D1
        databases exist by being named in a binding (a scan of one namespace's
        metadata). Blocking."""
        assert field.isidentifier(), field  # a constant of the caller's, never input
        if namespace != PLATFORM and not self._read("SELECT 1 FROM namespaces WHERE name = ?", (namespace,)):
            raise namespace_not_found(namespace)
        return [r[0] for r in self._read(
            f"SELECT DISTINCT json_extract(b.value, '$.{field}') FROM scripts s, "
            "json_each(s.metadata, '$.bindings') b WHERE s.namespace = ? "
            "AND json_extract(b.value, '$.type') = ? ORDER BY 1", (namespace, binding_type))]

    def queue_consumers(self, namespace: str, queue: str) -> list[str]:
        """The scripts of ``namespace`` whose queue consumers name ``queue``
        (a scan of one namespace's metadata). Blocking."""
        return [r[0] for r in self._read(
            "SELECT DISTINCT s.name FROM scripts s, json_each(s.metadata, '$.queue_consumers') c "
            "WHERE s.namespace = ? AND json_extract(c.value, '$.queue') = ? ORDER BY 1", (namespace, queue))]

    def script_exists(self, namespace: str | None, name: str) -> bool:
        """Whether a script ``name`` is deployed in ``namespace`` (None: in any). Blocking."""
        if namespace is None:
            return bool(self._read("SELECT 1 FROM scripts WHERE name = ? LIMIT 1", (name,)))
        return bool(self._read("SELECT 1 FROM scripts WHERE namespace = ? AND name = ?", (namespace, name)))

    def scripts_naming(self, name: str) -> list[ScriptRecord]:
        """Deployed scripts, of every namespace and without their code, whose
        metadata has the JSON string ``name`` somewhere (a bound service, a tail
        consumer, ...): the candidates that refer to a script of that name. Blocking."""
        return self.scripts_naming_any([name])

    def scripts_naming_any(self, names: list[str]) -> list[ScriptRecord]:
        """As :meth:`scripts_naming`, for any of ``names``: one scan of the
        table per 200 names (a bulk delete's check of thousands). Blocking."""
        found: dict[tuple[str, str], ScriptRecord] = {}
        for at in range(0, len(names), 200):
            chunk = names[at:at + 200]
            needles = ["%" + msgspec.json.encode(n).decode() + "%" for n in chunk]
            where = " OR ".join(["s.metadata LIKE ?"] * len(needles))
            for row in self._read(f"SELECT {LIST_COLUMNS} FROM scripts s WHERE {where}", needles):
                record = record_from_row(row, None)
                found[(record.namespace, record.name)] = record
        return [found[key] for key in sorted(found)]

    def warm_cache(self) -> int:
        """Read the most recently changed deployed scripts into the record
        cache, as many as it holds; returns how many it holds. Blocking.

        After a restart every tenant's first request would miss the cache and
        wait for a worker thread's read, one at a time behind the store's read
        lock: in a storm of first requests that was ~40% of the median
        (6 storms of 300 with 1,000 against 10,000 records cached, 3 pairs).
        """
        keys = self._read("SELECT namespace, name FROM scripts ORDER BY modified_on DESC LIMIT ?",
                          (self._cache.capacity,))
        for namespace, name in reversed(keys):  # the most recent end up most recently used
            self.get_deployed(namespace, name)
        return len(self._cache)

    def stored_versions(self) -> set[str]:
        """The content version of every record serving traffic, both of a
        gradual deployment's included (what bundle collection keeps). Blocking.

        Two queries and no code read: this runs at every bundle collection,
        and reading each script's record instead (as it once did) read every
        script's code and churned the record cache, for 100,000 scripts
        every time a script was deployed.
        """
        with self._snapshot() as db:
            rows = db.execute("SELECT version, split FROM scripts").fetchall()
            versions = {version for version, _split in rows}
            ids = [item.version_id for _version, split in rows if split
                   for item in splits_decoder.decode(split)]
            for first in range(0, len(ids), 500):
                chunk = ids[first:first + 500]
                versions.update(content for (content,) in db.execute(
                    f"SELECT content FROM versions WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        return versions

    def deployed_mains(self) -> list[tuple[str, str]]:
        """Each deployed ``(version, main_module)``, most recently changed first (a scan). Blocking."""
        return [(r[0], r[1]) for r in self._read(
            "SELECT DISTINCT version, main_module FROM scripts ORDER BY modified_on DESC")]

    def package_locks(self) -> set[str]:
        """Package-store locks some stored script uses (for the package store's GC). Blocking."""
        with self._transaction() as db:
            rows = db.execute("SELECT metadata FROM scripts WHERE metadata LIKE '%packages_lock%'").fetchall()
        return {lock for (metadata,) in rows if (lock := packages_lock_of(metadata))}

    def delete_script(self, namespace: str, name: str) -> bool:
        """True if the script existed. Its versions and deployments go with
        it, and a platform script's custom domains (a Custom Domain is its
        Worker's own on Cloudflare, and would otherwise keep its host name
        claimed by a script that no longer exists)."""
        key = (namespace, name)
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM scripts WHERE namespace = ? AND name = ?", key).rowcount
            if deleted:
                self._purge(db, namespace, [name])
                if namespace == PLATFORM and db.execute("DELETE FROM domains WHERE service = ?",
                                                        (name,)).rowcount:
                    self._route_table = None
        if deleted:
            self._cache.forget([key])
        return bool(deleted)

    @staticmethod
    def _purge(db: sqlite3.Connection, namespace: str, names: list[str]) -> None:
        """Delete what hangs off deleted scripts, and bundles no version uses any more."""
        pairs = [(namespace, name) for name in names]
        bundles = set()
        for pair in pairs:
            bundles.update(r[0] for r in db.execute(
                "SELECT DISTINCT bundle FROM versions WHERE namespace = ? AND name = ?", pair))
        db.executemany("DELETE FROM scripts WHERE namespace = ? AND name = ?", pairs)
        db.executemany("DELETE FROM script_tags WHERE namespace = ? AND name = ?", pairs)
        db.executemany("DELETE FROM versions WHERE namespace = ? AND name = ?", pairs)
        db.executemany("DELETE FROM deployments WHERE namespace = ? AND name = ?", pairs)
        db.executemany(
            "DELETE FROM bundles WHERE hash = ? AND NOT EXISTS (SELECT 1 FROM versions WHERE bundle = ?)",
            [(b, b) for b in bundles],
        )

    def list_scripts(
        self,
        namespace: str,
        tags: Iterable[str | TagFilter] | None = None,
        cursor: str | None = None,
        per_page: int = 100,
    ) -> tuple[list[ScriptRecord], str | None]:
        """One page of scripts ordered by name, without their code.

        ``tags``: plain strings the script must have, or ``(tag, wanted)``
        filters. ``cursor`` is the ``next_cursor`` of the previous page; it
        encodes the last name seen, so pages stay consistent while scripts are
        added or removed. ``next_cursor`` is None on the last page.
        """
        if isinstance(per_page, bool) or not isinstance(per_page, int) or not 1 <= per_page <= MAX_PER_PAGE:
            raise Invalid(f"per_page must be an integer from 1 to {MAX_PER_PAGE}, got {per_page!r}")
        filters = coerce_filters(tags)
        after = decode_cursor(cursor) if cursor else ""
        if namespace != PLATFORM and not self._read("SELECT 1 FROM namespaces WHERE name = ?", (namespace,)):
            raise namespace_not_found(namespace)
        where, params = self._filter_sql(namespace, filters)
        rows = self._read(
            f"SELECT {LIST_COLUMNS} FROM scripts s WHERE {where} AND s.name > ? "
            "ORDER BY s.name LIMIT ?",
            (*params, after, per_page + 1),
        )
        records = [record_from_row(row, None) for row in rows[:per_page]]
        next_cursor = encode_cursor(records[-1].name) if len(rows) > per_page else None
        return records, next_cursor

    @staticmethod
    def _filter_sql(namespace: str, filters: list[TagFilter]) -> tuple[str, list[Any]]:
        clauses = ["s.namespace = ?"]
        params: list[Any] = [namespace]
        for tag, wanted in filters:
            clauses.append(
                ("" if wanted else "NOT ")
                + "EXISTS (SELECT 1 FROM script_tags t WHERE t.namespace = s.namespace "
                "AND t.name = s.name AND t.tag = ?)"
            )
            params.append(tag)
        return " AND ".join(clauses), params

    def names_by_tags(self, namespace: str, filters: Iterable[str | TagFilter]) -> list[str]:
        """The names of the scripts a bulk delete with ``filters`` would
        delete now (for its check of who still uses them). Blocking."""
        where, params = self._filter_sql(namespace, coerce_filters(filters))
        return [r[0] for r in self._read(f"SELECT s.name FROM scripts s WHERE {where}", params)]

    def delete_scripts_by_tags(self, namespace: str, filters: Iterable[str | TagFilter]) -> list[str]:
        """Delete every script matching all filters, in one transaction; returns their names.

        At least one filter is required: an empty filter list would delete the
        whole namespace, which has its own, explicit call.
        """
        checked = coerce_filters(filters)
        if not checked:
            raise Invalid("bulk delete needs at least one tag filter, e.g. tags=plan:free:yes")
        where, params = self._filter_sql(namespace, checked)
        with self._transaction() as db:
            self._require_namespace(db, namespace)
            names = [r[0] for r in db.execute(f"SELECT s.name FROM scripts s WHERE {where}", params)]
            self._purge(db, namespace, names)
        self._cache.forget([(namespace, name) for name in names])
        return names

    # -- versions and deployments -------------------------------------------

    @staticmethod
    def _insert_deployment(db: sqlite3.Connection, key: tuple[str, str], splits: list[Split],
                           source: str, message: str, now: str) -> DeploymentInfo:
        info = DeploymentInfo(id=str(uuid.uuid4()), created_on=now, versions=splits, source=source,
                              message=message)
        db.execute(
            "INSERT INTO deployments (id, namespace, name, versions, source, message, created_on) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (info.id, *key, msgspec.json.encode(splits).decode(), source, message, now),
        )
        return info

    def list_versions(self, namespace: str, name: str, page: int = 1,
                      per_page: int = 100) -> tuple[list[VersionInfo], int]:
        """Versions newest first, one page; and how many there are."""
        if not 1 <= per_page <= MAX_PER_PAGE or page < 1:
            raise Invalid(f"page must be 1 or more and per_page from 1 to {MAX_PER_PAGE}")
        key = (namespace, name)
        rows = self._read(
            "SELECT id, number, content, created_on, source, message, assets != '', tag FROM versions "
            "WHERE namespace = ? AND name = ? ORDER BY number DESC LIMIT ? OFFSET ?",
            (*key, per_page, (page - 1) * per_page),
        )
        total = self._read("SELECT COUNT(*) FROM versions WHERE namespace = ? AND name = ?", key)[0][0]
        if not total and not self._read("SELECT 1 FROM scripts WHERE namespace = ? AND name = ?", key):
            raise script_not_found(namespace, name)
        return [VersionInfo(id=r[0], number=r[1], content=r[2], created_on=r[3], source=r[4], message=r[5],
                            has_assets=bool(r[6]), tag=r[7]) for r in rows], total

    def version_info(self, namespace: str, name: str, version_id: str) -> VersionInfo:
        rows = self._read(
            "SELECT id, number, content, created_on, source, message, assets != '', tag FROM versions "
            "WHERE id = ? AND namespace = ? AND name = ?", (version_id, namespace, name))
        if not rows:
            raise NotFound(f"script {name!r} has no version {version_id[:80]!r}: list them with "
                           f"`corral versions {_named(namespace, name)}`", code=VERSION_NOT_FOUND_CODE)
        r = rows[0]
        return VersionInfo(id=r[0], number=r[1], content=r[2], created_on=r[3], source=r[4], message=r[5],
                           has_assets=bool(r[6]), tag=r[7])

    def get_version_record(self, namespace: str, name: str, version_id: str) -> ScriptRecord:
        """One version as a full record (code included), deployed or not."""
        key = (namespace, name)
        with self._snapshot() as db:
            row = db.execute("SELECT tags, created_on, modified_on FROM scripts WHERE namespace = ? AND name = ?",
                             key).fetchone()
            if row is None:
                raise script_not_found(namespace, name)
            record = self._version_record(db, key, version_id, *row)
            number = db.execute("SELECT number, created_on FROM versions WHERE id = ?", (version_id,)).fetchone()
        if record is None:
            raise NotFound(f"script {name!r} has no version {version_id[:80]!r}: list them with "
                           f"GET .../scripts/{name}/versions", code=VERSION_NOT_FOUND_CODE)
        return msgspec.structs.replace(record, created_on=number[1])

    def versions_bindings(self, namespace: str, name: str, version_ids: list[str]) -> dict[str, list[Binding]]:
        """Each version's bindings, by id, without its code (a versions list's
        ``resources.bindings``, which wrangler reads)."""
        if not version_ids:
            return {}
        marks = ", ".join("?" * len(version_ids))
        rows = self._read(f"SELECT v.id, b.metadata FROM versions v JOIN bundles b ON b.hash = v.bundle "
                          f"WHERE v.namespace = ? AND v.name = ? AND v.id IN ({marks})",
                          (namespace, name, *version_ids))
        return {row[0]: bindings_of(row[1]) for row in rows}

    def latest_version_id(self, namespace: str, name: str) -> str | None:
        """The newest version's id, deployed or not (None: no script)."""
        rows = self._read("SELECT id FROM versions WHERE namespace = ? AND name = ? ORDER BY number DESC LIMIT 1",
                          (namespace, name))
        return rows[0][0] if rows else None

    def get_latest(self, namespace: str, name: str) -> ScriptRecord | None:
        """The newest version as a full record, deployed or not (None: no script):
        what a new version's ``inherit`` bindings come from, as on Cloudflare."""
        version_id = self.latest_version_id(namespace, name)
        if version_id is None:
            return None
        try:
            return self.get_version_record(namespace, name, version_id)
        except NotFound:  # deleted in between
            return None

    def deploy(self, namespace: str, name: str, splits: list[Split], *, source: str = "api",
               message: str = "") -> DeploymentInfo:
        """Send the script's traffic to these versions in these shares (a rollback
        is a deployment of an older version). The largest share is the version
        the API shows as deployed."""
        if not 1 <= len(splits) <= 2:
            raise Invalid("a deployment names one version (100%) or two (a gradual deployment)")
        if len({s.version_id for s in splits}) != len(splits):
            raise Invalid("a deployment names the same version twice")
        if any(not 0 <= s.percentage <= 100 for s in splits) or abs(sum(s.percentage for s in splits) - 100) > 1e-6:
            raise Invalid("the percentages of a deployment must each be 0 to 100 and add up to 100, got "
                          + " + ".join(f"{s.percentage:g}" for s in splits))
        key = (namespace, name)
        now = schema.now()
        primary = max(splits, key=lambda s: s.percentage)
        with self._write_lock:
            with self._begin() as db:
                current = db.execute("SELECT metadata FROM scripts WHERE namespace = ? AND name = ?", key).fetchone()
                if current is None:
                    raise script_not_found(namespace, name)
                for split in splits:
                    if db.execute("SELECT 1 FROM versions WHERE id = ? AND namespace = ? AND name = ?",
                                  (split.version_id, *key)).fetchone() is None:
                        raise NotFound(f"script {name!r} has no version {split.version_id[:80]!r}: list them "
                                       f"with `corral versions {_named(namespace, name)}`",
                                       code=VERSION_NOT_FOUND_CODE)
                content, main_module, metadata = db.execute(
                    "SELECT v.content, b.main_module, b.metadata FROM versions v JOIN bundles b ON b.hash = v.bundle "
                    "WHERE v.id = ?", (primary.version_id,)).fetchone()
                metadata = keep_unversioned(metadata, current[0])  # a rollback keeps crons and consumers
                db.execute(
                    "UPDATE scripts SET version = ?, main_module = ?, metadata = ?, version_id = ?, split = ?, "
                    "modified_on = ? WHERE namespace = ? AND name = ?",
                    (content, main_module, metadata, primary.version_id,
                     msgspec.json.encode(splits).decode() if len(splits) > 1 else "", now, *key),
                )
                info = self._insert_deployment(db, key, splits, source, message, now)
                deployed = self._load_deployed(db, key)
            self._cache.replace(key, deployed)
        return info

    def set_unversioned(self, namespace: str, name: str, **settings: Any) -> ScriptRecord:
        """Change the script's own settings (:data:`records.UNVERSIONED`: its
        crons, its queue consumers) as Cloudflare does, with no new version
        and no deployment: the versions and what serves stay as they are.
        Returns the deployed primary record, with the change."""
        key = (namespace, name)
        with self._write_lock:
            with self._begin() as db:
                row = db.execute("SELECT metadata FROM scripts WHERE namespace = ? AND name = ?", key).fetchone()
                if row is None:
                    raise script_not_found(namespace, name)
                db.execute("UPDATE scripts SET metadata = ?, modified_on = ? WHERE namespace = ? AND name = ?",
                           (with_unversioned(row[0], settings), schema.now(), *key))
                deployed = self._load_deployed(db, key)
            self._cache.replace(key, deployed)
        primary = self.get_primary(namespace, name)
        if primary is None:  # deleted meanwhile
            raise script_not_found(namespace, name)
        return primary

    def list_deployments(self, namespace: str, name: str, limit: int = 100) -> list[DeploymentInfo]:
        """Deployments newest first (the first one is what serves now)."""
        key = (namespace, name)
        rows = self._read(
            "SELECT id, created_on, versions, source, message FROM deployments "
            "WHERE namespace = ? AND name = ? ORDER BY seq DESC LIMIT ?", (*key, limit))
        if not rows and not self._read("SELECT 1 FROM scripts WHERE namespace = ? AND name = ?", key):
            raise script_not_found(namespace, name)
        return [DeploymentInfo(id=r[0], created_on=r[1], versions=splits_decoder.decode(r[2]), source=r[3],
                               message=r[4]) for r in rows]

    def delete_deployment(self, namespace: str, name: str, deployment_id: str) -> None:
        """Drop a past deployment from the script's history, as Cloudflare
        allows; the one serving now (the latest) is refused: deploy another
        version first. The versions it named stay."""
        key = (namespace, name)
        with self._write_lock:
            with self._begin() as db:
                latest = db.execute("SELECT id FROM deployments WHERE namespace = ? AND name = ? "
                                    "ORDER BY seq DESC LIMIT 1", key).fetchone()
                if latest is None and db.execute("SELECT 1 FROM scripts WHERE namespace = ? AND name = ?",
                                                 key).fetchone() is None:
                    raise script_not_found(namespace, name)
                if db.execute("SELECT 1 FROM deployments WHERE id = ? AND namespace = ? AND name = ?",
                              (deployment_id, *key)).fetchone() is None:
                    raise NotFound(f"script {name!r} has no deployment {deployment_id[:100]!r}")
                if latest is not None and latest[0] == deployment_id:
                    raise Invalid(f"deployment {deployment_id!r} is the latest of script {name!r}, the one "
                                  "serving: it cannot be deleted; deploy another version first")
                db.execute("DELETE FROM deployments WHERE id = ?", (deployment_id,))

    # -- tags ---------------------------------------------------------------

    @staticmethod
    def _write_tag_rows(db: sqlite3.Connection, key: tuple[str, str], tags: list[str]) -> None:
        db.execute("DELETE FROM script_tags WHERE namespace = ? AND name = ?", key)
        db.executemany(
            "INSERT INTO script_tags (namespace, name, tag) VALUES (?, ?, ?)",
            [(*key, tag) for tag in tags],
        )

    def get_tags(self, namespace: str, name: str) -> list[str]:
        record = self.get_script(namespace, name)
        if record is None:
            raise script_not_found(namespace, name)
        return list(record.tags)

    def _update_tags(self, namespace: str, name: str, change: Any) -> list[str]:
        key = (namespace, name)
        with self._transaction() as db:
            row = db.execute("SELECT tags FROM scripts WHERE namespace = ? AND name = ?", key).fetchone()
            if row is None:
                raise script_not_found(namespace, name)
            tags = normalize_tags(change(tags_decoder.decode(row[0])))
            db.execute(
                "UPDATE scripts SET tags = ?, modified_on = ? WHERE namespace = ? AND name = ?",
                (msgspec.json.encode(tags).decode(), schema.now(), *key),
            )
            self._write_tag_rows(db, key, tags)
        self._cache.forget([key])
        return tags

    def put_tags(self, namespace: str, name: str, tags: Iterable[str]) -> list[str]:
        """Replace the script's tags; returns them."""
        new = normalize_tags(tags)
        return self._update_tags(namespace, name, lambda _old: new)

    def add_tag(self, namespace: str, name: str, tag: str) -> list[str]:
        check_tag(tag)
        return self._update_tags(namespace, name, lambda old: [*old, tag])

    def remove_tag(self, namespace: str, name: str, tag: str) -> list[str]:
        """Removing a tag the script does not have is not an error (idempotent)."""
        check_tag(tag)
        return self._update_tags(namespace, name, lambda old: [t for t in old if t != tag])

    # -- API tokens (the TCP admin listener) --------------------------------

    def create_token(self, name: str, scope: str, namespaces: list[str]) -> tuple[TokenInfo, str]:
        """A new token: its info and its secret, which is shown once and stored
        only as a SHA-256 hash."""
        if scope not in TOKEN_SCOPES:
            raise Invalid(f"token scope {scope!r} is not one of {', '.join(TOKEN_SCOPES)}")
        for ns in namespaces:
            check_name("namespace", ns)
        if not isinstance(name, str) or not 1 <= len(name) <= 200:
            raise Invalid("a token needs a name of 1 to 200 characters (what it is for)")
        secret = "crl_" + secrets.token_urlsafe(32)
        info = TokenInfo(id=uuid.uuid4().hex, name=name, scope=scope, namespaces=sorted(set(namespaces)),
                         created_on=schema.now())
        with self._transaction() as db:
            db.execute("INSERT INTO tokens (id, hash, name, scope, namespaces, created_on) VALUES (?, ?, ?, ?, ?, ?)",
                       (info.id, token_hash(secret), info.name, info.scope,
                        msgspec.json.encode(info.namespaces).decode(), info.created_on))
        return info, secret

    def lookup_token(self, secret: str) -> TokenInfo | None:
        rows = self._read("SELECT id, name, scope, namespaces, created_on FROM tokens WHERE hash = ?",
                          (token_hash(secret),))
        return self._token(rows[0]) if rows else None

    @staticmethod
    def _token(r: Sequence[Any]) -> TokenInfo:
        return TokenInfo(id=r[0], name=r[1], scope=r[2], namespaces=tags_decoder.decode(r[3]), created_on=r[4])

    def list_tokens(self) -> list[TokenInfo]:
        return [self._token(r) for r in self._read(
            "SELECT id, name, scope, namespaces, created_on FROM tokens ORDER BY created_on")]

    def delete_token(self, token_id: str) -> bool:
        with self._transaction() as db:
            return bool(db.execute("DELETE FROM tokens WHERE id = ?", (token_id,)).rowcount)

    # -- KV namespaces and D1 databases made through the API ---------------

    def create_resource(self, kind: str, resource_id: str, name: str, settings: str = "") -> ResourceInfo:
        """Record that ``resource_id`` of binding type ``kind`` is called ``name``
        (with ``settings``, JSON, where the kind has them); a name already taken
        is a :class:`Conflict` naming its id."""
        info = ResourceInfo(kind=kind, id=resource_id, name=name, created_on=schema.now(), settings=settings)
        with self._transaction() as db:
            row = db.execute("SELECT id FROM resources WHERE kind = ? AND name = ?", (kind, name)).fetchone()
            if row is not None:
                raise Conflict(f"{name!r} is taken: it names {row[0]}")
            db.execute("INSERT INTO resources (kind, id, name, created_on, settings) VALUES (?, ?, ?, ?, ?)",
                       (info.kind, info.id, info.name, info.created_on, info.settings))
        return info

    def list_resources(self, kind: str) -> list[ResourceInfo]:
        return [ResourceInfo(kind=kind, id=r[0], name=r[1], created_on=r[2], settings=r[3]) for r in self._read(
            "SELECT id, name, created_on, settings FROM resources WHERE kind = ? ORDER BY id", (kind,))]

    def set_resource_settings(self, kind: str, resource_id: str, settings: str) -> ResourceInfo | None:
        """Replace ``resource_id``'s settings (JSON); None if it has no record."""
        with self._transaction() as db:
            if not db.execute("UPDATE resources SET settings = ? WHERE kind = ? AND id = ?",
                              (settings, kind, resource_id)).rowcount:
                return None
            row = db.execute("SELECT name, created_on FROM resources WHERE kind = ? AND id = ?",
                             (kind, resource_id)).fetchone()
        return ResourceInfo(kind=kind, id=resource_id, name=row[0], created_on=row[1], settings=settings)

    def rename_resource(self, kind: str, resource_id: str, name: str) -> ResourceInfo:
        """Call ``resource_id`` ``name`` (recorded now if it was only bound); its settings stay."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM resources WHERE kind = ? AND name = ? AND id != ?",
                             (kind, name, resource_id)).fetchone()
            if row is not None:
                raise Conflict(f"{name!r} is taken: it names {row[0]}")
            found = db.execute("SELECT created_on, settings FROM resources WHERE kind = ? AND id = ?",
                               (kind, resource_id)).fetchone()
            created_on, settings = found if found else (schema.now(), "")
            db.execute("INSERT OR REPLACE INTO resources (kind, id, name, created_on, settings) "
                       "VALUES (?, ?, ?, ?, ?)", (kind, resource_id, name, created_on, settings))
        return ResourceInfo(kind=kind, id=resource_id, name=name, created_on=created_on, settings=settings)

    def delete_resource(self, kind: str, resource_id: str) -> bool:
        """Forget ``resource_id``'s name; True if it had one."""
        with self._transaction() as db:
            return bool(db.execute("DELETE FROM resources WHERE kind = ? AND id = ?",
                                   (kind, resource_id)).rowcount)

    # -- routes -------------------------------------------------------------

    @staticmethod
    def _route_of(pattern: str, script: str) -> tuple[str, str]:
        """The canonical pattern and checked script of a route to be written.

        An empty ``script`` is an exclusion, as on Cloudflare ("the route is
        skipped when the script is blank"): requests it matches are served by
        no script, whatever less specific route also matches them.
        """
        try:
            canonical = check_wildcards(normalize_pattern(pattern))
        except RouteError as exc:
            raise Invalid(str(exc)) from None
        if script:
            check_name("script", script)
        return canonical, script

    @staticmethod
    def _route_taken(db: sqlite3.Connection, pattern: str, route_id: str = "") -> None:
        row = db.execute("SELECT id, script FROM routes WHERE pattern = ? AND id != ?",
                         (pattern, route_id)).fetchone()
        if row is not None:
            raise Conflict(f"route {pattern!r} already exists (id {row[0]}, script {row[1]!r}); delete it first")

    @staticmethod
    def _route_script_deployed(db: sqlite3.Connection, script: str) -> None:
        """Refuse a route to a platform script that is not deployed, as
        Cloudflare refuses one to a Worker that does not exist (a typo, or a
        route moved to one, silently stopped serving); "" is an exclusion."""
        if script and db.execute("SELECT 1 FROM scripts WHERE namespace = ? AND name = ?",
                                 (PLATFORM, script)).fetchone() is None:
            raise Invalid(f"Cannot configure a route for a Worker which does not exist: no platform script "
                          f"{script!r} is deployed. Please ensure this Worker exists and try again.",
                          code=ROUTE_SCRIPT_NOT_FOUND_CODE)

    def add_route(self, pattern: str, script: str, *, deployed_only: bool = False) -> RouteInfo:
        """Route ``pattern`` to platform script ``script`` ("" excludes the
        pattern, see :meth:`_route_of`), which the admin API wants deployed
        (``deployed_only``); the store's own callers may route ahead of it."""
        canonical, script = self._route_of(pattern, script)
        info = RouteInfo(id=uuid.uuid4().hex, pattern=canonical, script=script)
        with self._transaction() as db:
            self._route_taken(db, canonical)
            if deployed_only:
                self._route_script_deployed(db, script)
            db.execute(
                "INSERT INTO routes (id, pattern, script) VALUES (?, ?, ?)",
                (info.id, info.pattern, info.script),
            )
            self._route_table = None
        return info

    def update_route(self, route_id: str, pattern: str, script: str, *,
                     deployed_only: bool = False) -> RouteInfo | None:
        """Give route ``route_id`` a new pattern and script (deployed, with
        ``deployed_only``, as in :meth:`add_route`); None if there is no such
        route. It keeps its place in the creation order (the last tie-breaker)."""
        canonical, script = self._route_of(pattern, script)
        with self._transaction() as db:
            self._route_taken(db, canonical, route_id)
            if deployed_only:
                if db.execute("SELECT 1 FROM routes WHERE id = ?", (route_id,)).fetchone() is None:
                    return None
                self._route_script_deployed(db, script)
            if not db.execute("UPDATE routes SET pattern = ?, script = ? WHERE id = ?",
                              (canonical, script, route_id)).rowcount:
                return None
            self._route_table = None
        return RouteInfo(id=route_id, pattern=canonical, script=script)

    def set_script_routes(self, script: str, patterns: Sequence[str]) -> list[RouteInfo]:
        """Make ``patterns`` the routes of ``script``, all or none (Cloudflare's
        ``PUT .../scripts/{name}/routes``): its other routes are deleted, those
        it already has keep their ids, and a pattern another script holds is a
        conflict that changes nothing."""
        check_name("script", script)
        wanted: dict[str, None] = {}
        for pattern in patterns:
            wanted[self._route_of(pattern, script)[0]] = None
        with self._transaction() as db:
            held = dict(db.execute("SELECT pattern, id FROM routes WHERE script = ?", (script,)).fetchall())
            for pattern in wanted:
                if pattern not in held:
                    self._route_taken(db, pattern)
            db.executemany("DELETE FROM routes WHERE id = ?",
                           [(held[p],) for p in held if p not in wanted])
            routes = []
            for pattern in wanted:
                route_id = held.get(pattern) or uuid.uuid4().hex
                if pattern not in held:
                    db.execute("INSERT INTO routes (id, pattern, script) VALUES (?, ?, ?)",
                               (route_id, pattern, script))
                routes.append(RouteInfo(id=route_id, pattern=pattern, script=script))
            self._route_table = None
        return routes

    def list_routes(self) -> list[RouteInfo]:
        """All routes in creation order (the order :mod:`supervisor.edge.routes` breaks ties by)."""
        return [
            RouteInfo(id=r[0], pattern=r[1], script=r[2])
            for r in self._read("SELECT id, pattern, script FROM routes ORDER BY seq")
        ]

    def delete_route(self, route_id: str) -> bool:
        """True if the route existed."""
        with self._transaction() as db:
            deleted = bool(db.execute("DELETE FROM routes WHERE id = ?", (route_id,)).rowcount)
            self._route_table = None
        return deleted

    # -- custom domains -------------------------------------------------------

    @staticmethod
    def _hostname_of(hostname: str) -> str:
        try:
            return normalize_hostname(hostname)
        except RouteError as exc:
            raise Invalid(str(exc)) from None

    def list_domains(self) -> list[DomainInfo]:
        """Every custom domain, in the order they were first attached."""
        return [DomainInfo(id=r[0], hostname=r[1], service=r[2], zone_name=r[3])
                for r in self._read("SELECT id, hostname, service, zone_name FROM domains ORDER BY seq")]

    def attach_domain(self, hostname: str, service: str, zone_name: str) -> DomainInfo:
        """Send every request for ``hostname`` to platform script ``service``
        (Cloudflare's ``PUT /workers/domains``). A host already attached moves
        to ``service`` and keeps its id."""
        host = self._hostname_of(hostname)
        check_name("script", service)
        with self._transaction() as db:
            row = db.execute("SELECT id FROM domains WHERE hostname = ?", (host,)).fetchone()
            if row is None:
                info = DomainInfo(id=uuid.uuid4().hex, hostname=host, service=service, zone_name=zone_name)
                db.execute("INSERT INTO domains (id, hostname, service, zone_name) VALUES (?, ?, ?, ?)",
                           (info.id, host, service, zone_name))
            else:
                info = DomainInfo(id=row[0], hostname=host, service=service, zone_name=zone_name)
                db.execute("UPDATE domains SET service = ?, zone_name = ? WHERE id = ?",
                           (service, zone_name, info.id))
            self._route_table = None
        return info

    def detach_domain(self, domain_id: str) -> bool:
        """True if the custom domain existed."""
        with self._transaction() as db:
            detached = bool(db.execute("DELETE FROM domains WHERE id = ?", (domain_id,)).rowcount)
            self._route_table = None
        return detached

    def set_script_domains(self, script: str, wanted: Sequence[tuple[str, str]], *, take: bool,
                           only: bool) -> list[DomainInfo]:
        """Attach ``wanted`` (hostname, zone name) to ``script``, all or none
        (``wrangler deploy``'s custom domains). A host another script holds is
        a conflict unless ``take``; with ``only`` the script's other domains
        are detached."""
        check_name("script", script)
        hosts = {self._hostname_of(host): zone for host, zone in wanted}
        with self._transaction() as db:
            rows = db.execute("SELECT id, hostname, service FROM domains").fetchall()
            held = {host: (domain_id, service) for domain_id, host, service in rows}
            taken = sorted(f"{host} ({held[host][1]!r})" for host in hosts
                           if host in held and held[host][1] != script)
            if taken and not take:
                raise Conflict(f"custom domain already attached to another script: {', '.join(taken)}; "
                               "send override_existing_origin to move it")
            if only:
                db.executemany("DELETE FROM domains WHERE id = ?",
                               [(d,) for host, (d, service) in held.items()
                                if service == script and host not in hosts])
            attached = []
            for host, zone in hosts.items():
                domain_id = held[host][0] if host in held else uuid.uuid4().hex
                db.execute("INSERT INTO domains (id, hostname, service, zone_name) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (hostname) DO UPDATE SET service = excluded.service, "
                           "zone_name = excluded.zone_name", (domain_id, host, script, zone))
                attached.append(DomainInfo(id=domain_id, hostname=host, service=script, zone_name=zone))
            self._route_table = None
        return attached

    def route_table(self) -> RouteTable:
        """The compiled routes, rebuilt only after a route was added or deleted.

        Hot path: the ingress calls this per request and then ``.match()``.
        """
        table = self._route_table
        if table is None:
            with self._write_lock:  # no write may slip in between reading and caching
                table = self._route_table
                if table is None:
                    table = self._route_table = RouteTable(self.list_routes(), self.list_domains())
        return table
