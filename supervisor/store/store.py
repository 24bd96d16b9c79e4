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

import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import msgspec

from supervisor.edge.routes import RouteError, RouteTable, normalize_pattern
from supervisor.errors import Conflict, Invalid, NotFound
from supervisor.model import MAX_TAGS, PLATFORM, ScriptRecord, check_name, check_tag
from supervisor.store import schema
from supervisor.store.cache import RecordCache
from supervisor.store.cursors import TagFilter, coerce_filters, decode_cursor, encode_cursor
from supervisor.store.records import (
    packages_lock_of,
    LIST_COLUMNS,
    NamespaceInfo,
    RouteInfo,
    encode_metadata,
    encode_modules,
    record_from_row,
    tags_decoder,
)

__all__ = ["MAX_PER_PAGE", "NOT_CACHED", "NamespaceInfo", "NotCached", "RouteInfo", "Store", "namespace_not_found",
           "script_not_found"]

MAX_PER_PAGE = 1000
#: Cloudflare's error code for a missing script.
SCRIPT_NOT_FOUND_CODE = 10007


def script_not_found(namespace: str, name: str) -> NotFound:
    """The error for a missing script, naming where it was looked for."""
    where = f"in dispatch namespace {namespace!r}" if namespace != PLATFORM else "among platform scripts"
    return NotFound(f"script {name!r} not found {where}", code=SCRIPT_NOT_FOUND_CODE)


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
        cache_entries: int = 1000,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        self.path = os.fspath(path)
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._writer = schema.connect(self.path)
        with self._transaction() as db:
            schema.migrate(db, self.path)
        self._reader = schema.connect(self.path)
        self._route_table: RouteTable | None = None
        versions = {
            (ns, name): version
            for ns, name, version in self._reader.execute("SELECT namespace, name, version FROM scripts")
        }
        self._cache = RecordCache(versions, entries=cache_entries, max_bytes=cache_bytes)

    # -- plumbing -----------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, serialised with every other writer."""
        with self._write_lock:
            db = self._writer
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
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
            db.execute("DELETE FROM script_tags WHERE namespace = ?", (name,))
            db.execute("DELETE FROM scripts WHERE namespace = ?", (name,))
            db.execute("DELETE FROM namespaces WHERE name = ?", (name,))
        keys = [(name, script) for script in names]
        self._cache.forget(keys, dict.fromkeys(keys))
        return names

    # -- scripts ------------------------------------------------------------

    def put_script(self, record: ScriptRecord) -> ScriptRecord:
        """Create or replace a script; keeps ``created_on`` of an existing one.

        Returns the stored record (timestamps set, tags normalised).
        """
        if record.namespace != PLATFORM:
            check_name("namespace", record.namespace)
        check_name("script", record.name)
        tags = normalize_tags(record.tags)
        metadata = encode_metadata(record)
        modules = encode_modules(record)
        key = (record.namespace, record.name)
        now = schema.now()
        with self._transaction() as db:
            self._require_namespace(db, record.namespace)
            row = db.execute(
                "SELECT created_on FROM scripts WHERE namespace = ? AND name = ?", key
            ).fetchone()
            created_on = row[0] if row else now
            db.execute(
                "INSERT OR REPLACE INTO scripts (namespace, name, version, main_module, modules, "
                "metadata, tags, created_on, modified_on) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*key, record.version, record.main_module, modules, metadata,
                 msgspec.json.encode(tags).decode(), created_on, now),
            )
            self._write_tag_rows(db, key, tags)
        stored = msgspec.structs.replace(record, tags=tags, created_on=created_on, modified_on=now)
        self._cache.forget([key], {key: record.version})
        return stored

    def cached(self, namespace: str, name: str) -> ScriptRecord | None | NotCached:
        """The record if the cache holds it, None if no such script is deployed,
        else :data:`NOT_CACHED`: never touches SQLite, so the event loop may call
        it on the request path (a miss is then read with :meth:`get_script` in a
        worker thread; see supervisor.store.lookup)."""
        key = (namespace, name)
        with self._cache_lock:
            if key not in self._versions:
                return None
            entry = self._cache.get(key)
            if entry is None:
                return NOT_CACHED
            self._cache.move_to_end(key)
            return entry[0]

    def cached(self, namespace: str, name: str) -> ScriptRecord | None | NotCached:
        """The record if the cache holds it, None if no such script is deployed,
        else :data:`NOT_CACHED`: never touches SQLite, so the event loop may call
        it on the request path (a miss is then read with :meth:`get_script` in a
        worker thread; see supervisor.store.lookup)."""
        record, known, _generation = self._cache.lookup((namespace, name))
        if record is not None or not known:
            return record
        return NOT_CACHED

    def get_script(self, namespace: str, name: str) -> ScriptRecord | None:
        """The full record (with code), or None. Hot path: cached; read-only result."""
        key = (namespace, name)
        record, known, generation = self._cache.lookup(key)
        if record is not None or not known:
            return record
        rows = self._read(
            f"SELECT {LIST_COLUMNS}, modules FROM scripts WHERE namespace = ? AND name = ?", key
        )
        if not rows:
            return None
        record = record_from_row(rows[0][:-1], rows[0][-1])
        self._cache.remember(key, record, generation)
        return record

    def get_version(self, namespace: str, name: str) -> str | None:
        """The deployed version (content hash), or None: a dict lookup."""
        return self._cache.version((namespace, name))

    def script_names(self) -> list[tuple[str, str]]:
        """Every ``(namespace, name)`` deployed, from the in-memory index."""
        return self._cache.names()

    def package_locks(self) -> set[str]:
        """Package-store locks some stored script uses (for the package store's GC). Blocking."""
        with self._transaction() as db:
            rows = db.execute("SELECT metadata FROM scripts WHERE metadata LIKE '%packages_lock%'").fetchall()
        return {lock for (metadata,) in rows if (lock := packages_lock_of(metadata))}

    def delete_script(self, namespace: str, name: str) -> bool:
        """True if the script existed."""
        key = (namespace, name)
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM scripts WHERE namespace = ? AND name = ?", key).rowcount
            db.execute("DELETE FROM script_tags WHERE namespace = ? AND name = ?", key)
        if deleted:
            self._cache.forget([key], {key: None})
        return bool(deleted)

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

    def delete_scripts_by_tags(self, namespace: str, filters: Iterable[str | TagFilter]) -> list[str]:
        """Delete every script matching all filters; returns their names.

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
            for name in names:
                db.execute("DELETE FROM scripts WHERE namespace = ? AND name = ?", (namespace, name))
                db.execute("DELETE FROM script_tags WHERE namespace = ? AND name = ?", (namespace, name))
        keys = [(namespace, name) for name in names]
        self._cache.forget(keys, dict.fromkeys(keys))
        return names

    def delete_by_tags(self, namespace: str, filters: Iterable[str | TagFilter]) -> int:
        """Like :meth:`delete_scripts_by_tags`, returning only the count."""
        return len(self.delete_scripts_by_tags(namespace, filters))

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
        self._cache.forget([key], {})
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

    # -- routes -------------------------------------------------------------

    def add_route(self, pattern: str, script: str) -> RouteInfo:
        """Route ``pattern`` to platform script ``script`` (which may be deployed later)."""
        try:
            canonical = normalize_pattern(pattern)
        except RouteError as exc:
            raise Invalid(str(exc)) from None
        check_name("script", script)
        info = RouteInfo(id=uuid.uuid4().hex, pattern=canonical, script=script)
        with self._transaction() as db:
            row = db.execute("SELECT id, script FROM routes WHERE pattern = ?", (canonical,)).fetchone()
            if row is not None:
                raise Conflict(
                    f"route {canonical!r} already exists (id {row[0]}, script {row[1]!r}); delete it first",
                )
            db.execute(
                "INSERT INTO routes (id, pattern, script) VALUES (?, ?, ?)",
                (info.id, info.pattern, info.script),
            )
            self._route_table = None
        return info

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

    def route_table(self) -> RouteTable:
        """The compiled routes, rebuilt only after a route was added or deleted.

        Hot path: the ingress calls this per request and then ``.match()``.
        """
        table = self._route_table
        if table is None:
            with self._write_lock:  # no write may slip in between reading and caching
                table = self._route_table
                if table is None:
                    table = self._route_table = RouteTable(self.list_routes())
        return table
