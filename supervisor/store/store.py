"""Durable state of the supervisor: namespaces, scripts, tags and routes.

Everything lives in one SQLite file, ``<state_dir>/corral.db``, in WAL mode
with ``synchronous=NORMAL``: a deploy survives a crash of the process (a
power cut may lose the last few commits, never corrupt the file), and
readers never wait for a writer.

Two connections are kept: one for writes (serialised by a lock; the server
calls writes from worker threads via ``trio.to_thread.run_sync``) and one for
reads. On top sits what makes the request path cheap:

* an in-memory *index* ``(namespace, name) -> version`` of every script,
  loaded at open and updated after each commit, so :meth:`Store.get_version`
  and a miss in :meth:`Store.get_script` are a dict lookup;
* an LRU cache of full records, bounded by count and by bytes of code, so a
  warm :meth:`Store.get_script` costs microseconds.

Only this process writes the file, so the index is authoritative. A
generation counter keeps a slow cache fill from re-inserting a record that a
concurrent write just replaced.

Records handed out are shared with the cache: treat them as read-only.

Every expected failure raises :class:`StoreError` with the HTTP status the
admin API answers, a numeric code, and a message meant for the operator.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import msgspec

from supervisor.edge.routes import RouteError, RouteTable, normalize_pattern
from supervisor.model import PLATFORM, ScriptRecord

__all__ = [
    "DEFAULT_NAMESPACE",
    "ErrorCode",
    "NamespaceInfo",
    "RouteInfo",
    "Store",
    "StoreError",
    "TagFilter",
    "parse_tag_filters",
    "script_not_found",
    "validate_name",
    "validate_tag",
]

DEFAULT_NAMESPACE = "default"
MAX_TAGS = 8  # Cloudflare's limit per script
MAX_TAG_LENGTH = 256
MAX_PER_PAGE = 1000
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,63}")  # fullmatch: "$" would let a trailing newline in
_SCHEMA_VERSION = 1


class ErrorCode:
    """Numeric codes of the admin API's error envelope.

    Cloudflare's own numbers where one exists (script not found, validation,
    too large), otherwise 10000 + the HTTP status, so a code is never
    ambiguous and always hints at its status.
    """

    SCRIPT_NOT_FOUND = 10007
    VALIDATION_FAILED = 10021
    TOO_LARGE = 10027
    BAD_REQUEST = 10400
    NOT_FOUND = 10404
    METHOD_NOT_ALLOWED = 10405
    CONFLICT = 10409
    INTERNAL = 10500
    NOT_IMPLEMENTED = 10501


class StoreError(Exception):
    """An expected failure, carrying what the admin API needs to answer it."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"StoreError({self.status}, {self.code}, {self.message!r})"


class NamespaceInfo(msgspec.Struct, kw_only=True):
    id: str
    name: str
    created_on: str
    script_count: int = 0


class RouteInfo(msgspec.Struct, kw_only=True):
    id: str
    pattern: str
    script: str


#: ``(tag, wanted)``: the script must have ``tag`` (True) or must not (False).
TagFilter = tuple[str, bool]


# ---------------------------------------------------------------------------
# Validation shared with the admin API
# ---------------------------------------------------------------------------


def _bad(message: str) -> StoreError:
    return StoreError(400, ErrorCode.BAD_REQUEST, message)


def validate_name(kind: str, name: object) -> str:
    """Namespace and script names: 1-63 of ``A-Z a-z 0-9 _ -``.

    Narrow on purpose: names end up in host names (``NAME.localhost``), URL
    paths, log lines and metric labels.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise _bad(
            f"invalid {kind} name {name!r}: use 1 to 63 letters, digits, '_' or '-'"
        )
    return name


def validate_tag(tag: object) -> str:
    """Tags are free text except for ',' (the list separator) and control characters."""
    if not isinstance(tag, str) or not tag:
        raise _bad(f"invalid tag {tag!r}: tags are non-empty strings")
    if len(tag) > MAX_TAG_LENGTH:
        raise _bad(f"tag {tag[:40]!r}... is longer than {MAX_TAG_LENGTH} characters")
    if "," in tag or any(ord(c) < 0x20 or c == "\x7f" for c in tag):
        raise _bad(f"invalid tag {tag!r}: tags cannot contain ',' or control characters")
    return tag


def _normalize_tags(tags: Iterable[object]) -> list[str]:
    """Validated, de-duplicated, order kept."""
    seen: dict[str, None] = {}
    for tag in tags:
        seen[validate_tag(tag)] = None
    if len(seen) > MAX_TAGS:
        raise _bad(f"a script can have at most {MAX_TAGS} tags, got {len(seen)}")
    return list(seen)


def parse_tag_filters(text: str) -> list[TagFilter]:
    """Parse ``t1,t2:yes,t3:no`` as in the list and bulk-delete query strings.

    A bare tag means ``yes``. The suffix is only read as a filter when it is
    exactly ``yes`` or ``no``, so ``plan:free`` is the tag ``plan:free``.
    """
    filters: list[TagFilter] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        head, sep, tail = item.rpartition(":")
        if sep and tail.lower() in ("yes", "no"):
            filters.append((validate_tag(head), tail.lower() == "yes"))
        else:
            filters.append((validate_tag(item), True))
    return filters


def _coerce_filters(tags: Iterable[str | TagFilter] | None) -> list[TagFilter]:
    filters: list[TagFilter] = []
    for item in tags or ():
        if isinstance(item, str):
            filters.append((validate_tag(item), True))
        else:
            tag, wanted = item
            filters.append((validate_tag(tag), bool(wanted)))
    return filters


def script_not_found(namespace: str, name: str) -> StoreError:
    """The 404 for a missing script, naming where it was looked for."""
    where = f"in dispatch namespace {namespace!r}" if namespace != PLATFORM else "among platform scripts"
    return StoreError(404, ErrorCode.SCRIPT_NOT_FOUND, f"script {name!r} not found {where}")


def _encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        name = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        name = ""
    if not _NAME_RE.fullmatch(name):
        raise _bad(f"invalid cursor {cursor!r}: pass back the cursor of a previous page unchanged")
    return name


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------
# Row <-> record
# ---------------------------------------------------------------------------


class _Metadata(msgspec.Struct, kw_only=True):
    """What the ``metadata`` JSON column holds."""

    bindings: list[dict[str, Any]] = []
    compatibility_date: str = ""
    tail_consumers: list[dict[str, Any]] = []


_modules_decoder = msgspec.msgpack.Decoder(dict[str, bytes])
_metadata_decoder = msgspec.json.Decoder(_Metadata)
_tags_decoder = msgspec.json.Decoder(list[str])

_LIST_COLUMNS = "namespace, name, version, main_module, metadata, tags, created_on, modified_on"


def _record_from_row(row: Sequence[Any], modules: bytes | None) -> ScriptRecord:
    namespace, name, version, main_module, metadata, tags, created_on, modified_on = row
    meta = _metadata_decoder.decode(metadata)
    return ScriptRecord(
        namespace=namespace,
        name=name,
        version=version,
        main_module=main_module,
        modules=_modules_decoder.decode(modules) if modules is not None else {},
        bindings=meta.bindings,
        tags=_tags_decoder.decode(tags),
        compatibility_date=meta.compatibility_date,
        tail_consumers=meta.tail_consumers,
        created_on=created_on,
        modified_on=modified_on,
    )


def _record_size(record: ScriptRecord) -> int:
    return sum(len(v) + len(k) for k, v in record.modules.items()) + 512


_SCHEMA = """
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
    metadata TEXT NOT NULL,           -- JSON: bindings, compatibility_date, tail_consumers
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
        self._cache_lock = threading.Lock()
        self._writer = self._connect()
        self._init_schema()
        self._reader = self._connect()
        self._cache_entries = cache_entries
        self._cache_bytes = cache_bytes
        self._cache: collections.OrderedDict[tuple[str, str], tuple[ScriptRecord, int]] = (
            collections.OrderedDict()
        )
        self._cached_bytes = 0
        self._generation = 0
        self._route_table: RouteTable | None = None
        self._versions: dict[tuple[str, str], str] = {
            (ns, name): version
            for ns, name, version in self._reader.execute("SELECT namespace, name, version FROM scripts")
        }

    # -- plumbing -----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _init_schema(self) -> None:
        with self._transaction() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > _SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} was written by a newer Corral (schema {version} > {_SCHEMA_VERSION})"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if version == 0:
                # A brand-new state directory: give it the namespace most setups need.
                db.execute(
                    "INSERT OR IGNORE INTO namespaces (name, id, created_on) VALUES (?, ?, ?)",
                    (DEFAULT_NAMESPACE, str(uuid.uuid4()), _now()),
                )
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

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

    # -- cache --------------------------------------------------------------

    def _forget(self, keys: Iterable[tuple[str, str]], versions: dict[tuple[str, str], str | None]) -> None:
        """After a commit: update the index and drop stale cache entries."""
        with self._cache_lock:
            self._generation += 1
            for key in keys:
                entry = self._cache.pop(key, None)
                if entry is not None:
                    self._cached_bytes -= entry[1]
            for key, version in versions.items():
                if version is None:
                    self._versions.pop(key, None)
                else:
                    self._versions[key] = version

    def _remember(self, key: tuple[str, str], record: ScriptRecord, generation: int) -> None:
        size = _record_size(record)
        if size > self._cache_bytes // 4:
            return  # one huge script must not flush the whole cache
        with self._cache_lock:
            if generation != self._generation or key in self._cache:
                return
            self._cache[key] = (record, size)
            self._cached_bytes += size
            while len(self._cache) > self._cache_entries or self._cached_bytes > self._cache_bytes:
                _, (_, old_size) = self._cache.popitem(last=False)
                self._cached_bytes -= old_size

    # -- namespaces ---------------------------------------------------------

    def _namespace_exists(self, db: sqlite3.Connection, name: str) -> bool:
        return db.execute("SELECT 1 FROM namespaces WHERE name = ?", (name,)).fetchone() is not None

    def _require_namespace(self, db: sqlite3.Connection, namespace: str) -> None:
        if namespace != PLATFORM and not self._namespace_exists(db, namespace):
            raise StoreError(404, ErrorCode.NOT_FOUND, f"dispatch namespace {namespace!r} does not exist")

    def create_namespace(self, name: str) -> NamespaceInfo:
        validate_name("namespace", name)
        with self._transaction() as db:
            if self._namespace_exists(db, name):
                raise StoreError(409, ErrorCode.CONFLICT, f"dispatch namespace {name!r} already exists")
            info = NamespaceInfo(id=str(uuid.uuid4()), name=name, created_on=_now())
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
                raise StoreError(404, ErrorCode.NOT_FOUND, f"dispatch namespace {name!r} does not exist")
            names = [r[0] for r in db.execute("SELECT name FROM scripts WHERE namespace = ?", (name,))]
            db.execute("DELETE FROM script_tags WHERE namespace = ?", (name,))
            db.execute("DELETE FROM scripts WHERE namespace = ?", (name,))
            db.execute("DELETE FROM namespaces WHERE name = ?", (name,))
        keys = [(name, script) for script in names]
        self._forget(keys, dict.fromkeys(keys))
        return names

    # -- scripts ------------------------------------------------------------

    def put_script(self, record: ScriptRecord) -> ScriptRecord:
        """Create or replace a script; keeps ``created_on`` of an existing one.

        Returns the stored record (timestamps set, tags normalised).
        """
        if record.namespace != PLATFORM:
            validate_name("namespace", record.namespace)
        validate_name("script", record.name)
        tags = _normalize_tags(record.tags)
        metadata = msgspec.json.encode(
            _Metadata(
                bindings=record.bindings,
                compatibility_date=record.compatibility_date,
                tail_consumers=record.tail_consumers,
            )
        ).decode()
        modules = msgspec.msgpack.encode(record.modules)
        key = (record.namespace, record.name)
        now = _now()
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
        self._forget([key], {key: record.version})
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

    def get_script(self, namespace: str, name: str) -> ScriptRecord | None:
        """The full record (with code), or None. Hot path: cached; read-only result."""
        key = (namespace, name)
        with self._cache_lock:
            if key not in self._versions:
                return None
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
                return entry[0]
            generation = self._generation
        rows = self._read(
            f"SELECT {_LIST_COLUMNS}, modules FROM scripts WHERE namespace = ? AND name = ?", key
        )
        if not rows:
            return None
        record = _record_from_row(rows[0][:-1], rows[0][-1])
        self._remember(key, record, generation)
        return record

    def get_version(self, namespace: str, name: str) -> str | None:
        """The deployed version (content hash), or None: a dict lookup."""
        return self._versions.get((namespace, name))

    def script_names(self) -> list[tuple[str, str]]:
        """Every ``(namespace, name)`` deployed, from the in-memory index."""
        with self._cache_lock:
            return list(self._versions)

    def delete_script(self, namespace: str, name: str) -> bool:
        """True if the script existed."""
        key = (namespace, name)
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM scripts WHERE namespace = ? AND name = ?", key).rowcount
            db.execute("DELETE FROM script_tags WHERE namespace = ? AND name = ?", key)
        if deleted:
            self._forget([key], {key: None})
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
            raise _bad(f"per_page must be an integer from 1 to {MAX_PER_PAGE}, got {per_page!r}")
        filters = _coerce_filters(tags)
        after = _decode_cursor(cursor) if cursor else ""
        if namespace != PLATFORM and not self._read("SELECT 1 FROM namespaces WHERE name = ?", (namespace,)):
            raise StoreError(404, ErrorCode.NOT_FOUND, f"dispatch namespace {namespace!r} does not exist")
        where, params = self._filter_sql(namespace, filters)
        rows = self._read(
            f"SELECT {_LIST_COLUMNS} FROM scripts s WHERE {where} AND s.name > ? "
            "ORDER BY s.name LIMIT ?",
            (*params, after, per_page + 1),
        )
        records = [_record_from_row(row, None) for row in rows[:per_page]]
        next_cursor = _encode_cursor(records[-1].name) if len(rows) > per_page else None
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
        checked = _coerce_filters(filters)
        if not checked:
            raise _bad("bulk delete needs at least one tag filter, e.g. tags=plan:free:yes")
        where, params = self._filter_sql(namespace, checked)
        with self._transaction() as db:
            self._require_namespace(db, namespace)
            names = [r[0] for r in db.execute(f"SELECT s.name FROM scripts s WHERE {where}", params)]
            for name in names:
                db.execute("DELETE FROM scripts WHERE namespace = ? AND name = ?", (namespace, name))
                db.execute("DELETE FROM script_tags WHERE namespace = ? AND name = ?", (namespace, name))
        keys = [(namespace, name) for name in names]
        self._forget(keys, dict.fromkeys(keys))
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
            tags = _normalize_tags(change(_tags_decoder.decode(row[0])))
            db.execute(
                "UPDATE scripts SET tags = ?, modified_on = ? WHERE namespace = ? AND name = ?",
                (msgspec.json.encode(tags).decode(), _now(), *key),
            )
            self._write_tag_rows(db, key, tags)
        self._forget([key], {})
        return tags

    def put_tags(self, namespace: str, name: str, tags: Iterable[str]) -> list[str]:
        """Replace the script's tags; returns them."""
        new = _normalize_tags(tags)
        return self._update_tags(namespace, name, lambda _old: new)

    def add_tag(self, namespace: str, name: str, tag: str) -> list[str]:
        validate_tag(tag)
        return self._update_tags(namespace, name, lambda old: [*old, tag])

    def remove_tag(self, namespace: str, name: str, tag: str) -> list[str]:
        """Removing a tag the script does not have is not an error (idempotent)."""
        validate_tag(tag)
        return self._update_tags(namespace, name, lambda old: [t for t in old if t != tag])

    # -- routes -------------------------------------------------------------

    def add_route(self, pattern: str, script: str) -> RouteInfo:
        """Route ``pattern`` to platform script ``script`` (which may be deployed later)."""
        try:
            canonical = normalize_pattern(pattern)
        except RouteError as exc:
            raise _bad(str(exc)) from None
        validate_name("script", script)
        info = RouteInfo(id=uuid.uuid4().hex, pattern=canonical, script=script)
        with self._transaction() as db:
            row = db.execute("SELECT id, script FROM routes WHERE pattern = ?", (canonical,)).fetchone()
            if row is not None:
                raise StoreError(
                    409, ErrorCode.CONFLICT,
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
