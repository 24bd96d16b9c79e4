"""R2 (``r2_buckets``): objects as files under the state dir, indexed in SQLite.

``put`` streams the call's body into a temporary file (hashing as it goes),
then, under the bucket's lock, checks conditions and the bytes cap, renames
the file into place and commits the index row: a reader sees the old object
or the new one, never a part, and a crash leaves at worst an orphan file.
``get`` opens the object's file while holding the lock, so a concurrent
overwrite cannot pull it away, and streams it (or a range) with credit.

Keys never become paths: objects are stored under random names and found
through the index, so ``../x``, ``/etc/passwd`` or any other key stays a
name inside its bucket. Keys holding NUL are refused.

Multipart uploads keep R2's part rules: completing one whose parts but the
last are under 5 MiB, or not all of one size, is refused with R2's codes.
As R2's default lifecycle policy does, an upload expires seven days after it
was created: it no longer exists, and its parts are removed (and stop
counting against the bucket) as the bucket's next upload is created, so an
abandoned upload cannot hold a tenant's quota or the disk for ever.

Storage is behind :class:`R2Store` so a fleet can use an S3-compatible
store; :class:`FileR2` is the embedded one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from supervisor.bindings import BOUND_DATA, Services, register
from supervisor.bindings.base import BindingError, Context, Reply, Scope, arg, integer, options, string
from supervisor.bindings.quota import quota_error
from supervisor.pool.bodies import BodyError

#: ``<storage>/<folder>/<scope key>/``: a bucket's index and blobs, per (namespace, bucket).
_FOLDER, _INDEX = BOUND_DATA["r2_bucket"]

MAX_KEY_BYTES = 1024
MAX_LIST = 1000
MAX_DELETE = 1000
MAX_PARTS = 10_000
#: R2's smallest part, except the last one of an upload (5 MiB).
MIN_PART_BYTES = 5 * 1024**2
MAX_OBJECT_BYTES = 5 * 1024**3 - 5 * 1024**2
#: R2's default lifecycle policy: multipart uploads expire 7 days after initiation.
UPLOAD_EXPIRY_S = 7 * 24 * 3600
READ_CHUNK = 64 * 1024
HASHES = ("md5", "sha1", "sha256", "sha384", "sha512")
HTTP_FIELDS = ("contentType", "contentLanguage", "contentDisposition", "contentEncoding",
               "cacheControl", "cacheExpiry")
#: R2's storage classes (workers-types' ``R2PutOptions.storageClass``); an
#: object stored without one, or by a Corral that did not keep it, is Standard.
STORAGE_CLASSES = ("Standard", "InfrequentAccess")
#: An object's index row, in the order :func:`_object_json` reads it.
_OBJECT_COLUMNS = "key, blob, size, etag, version, uploaded, http, custom, checksums, storage_class"


def _setup(conn: sqlite3.Connection) -> None:
    conn.executescript("""
        CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, blob TEXT NOT NULL,
            size INTEGER NOT NULL, etag TEXT NOT NULL, version TEXT NOT NULL,
            uploaded INTEGER NOT NULL, http TEXT, custom TEXT, checksums TEXT, storage_class TEXT);
        CREATE TABLE IF NOT EXISTS uploads (upload_id TEXT PRIMARY KEY, key TEXT NOT NULL,
            http TEXT, custom TEXT, created INTEGER, storage_class TEXT);
        CREATE TABLE IF NOT EXISTS parts (upload_id TEXT NOT NULL, number INTEGER NOT NULL,
            blob TEXT NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,
            PRIMARY KEY (upload_id, number));
        CREATE TABLE IF NOT EXISTS stats (id INTEGER PRIMARY KEY CHECK (id = 1), bytes INTEGER);
        INSERT OR IGNORE INTO stats VALUES (1, 0);
    """)
    if "created" not in [row[1] for row in conn.execute("PRAGMA table_info(uploads)")]:
        # A bucket of an older Corral: its open uploads get their 7 days from now.
        conn.execute("ALTER TABLE uploads ADD COLUMN created INTEGER")
        conn.execute("UPDATE uploads SET created = ?", (int(time.time()),))
    # Every createMultipartUpload looks for expired uploads: by this index, not
    # a scan of every open upload (a tenant may leave any number of them open).
    conn.execute("CREATE INDEX IF NOT EXISTS uploads_created ON uploads (created)")
    _add_storage_class(conn)


def _add_storage_class(conn: sqlite3.Connection) -> None:
    """A bucket of a Corral that kept no storage class gets the column, in
    place; its objects and open uploads (NULL) read as Standard, which is
    what that Corral said they were."""
    for table in ("objects", "uploads"):
        if "storage_class" not in [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN storage_class TEXT")


def _err(op: str, message: str, code: int, name: str = "Error") -> BindingError:
    return BindingError(f"{op}: {message} ({code})", name)


def _key(value: Any, op: str) -> str:
    key = string(value, "key")
    raw = key.encode("utf-8", "surrogatepass")
    if not raw or len(raw) > MAX_KEY_BYTES or "\0" in key:
        raise _err(op, "The specified object name is not valid: keys are 1 to "
                       f"{MAX_KEY_BYTES} bytes of UTF-8 without NUL", 10020)
    return key


def _object_json(row: tuple, include: tuple[str, ...] = ("httpMetadata", "customMetadata")
                 ) -> dict[str, Any]:
    key, _blob, size, etag, version, uploaded, http, custom, checksums, storage_class = row
    out = {
        "key": key, "version": version, "size": size, "etag": etag, "httpEtag": f'"{etag}"',
        "uploaded": uploaded, "storageClass": storage_class or "Standard",
        "checksums": json.loads(checksums) if checksums else {},
    }
    # A list sends only the metadata its ``include`` names; the rest is
    # undefined, as workerd's R2 list has it (compatibility flag
    # r2_list_honor_include, on since 2022-08-04).
    if "httpMetadata" in include:
        out["httpMetadata"] = json.loads(http) if http else {}
    if "customMetadata" in include:
        out["customMetadata"] = json.loads(custom) if custom else {}
    return out


def _storage_class(value: Any, op: str) -> str | None:
    """``storageClass`` of a put or multipart upload: one of R2's classes, or
    None (the bucket's default, Standard). R2 refuses any other name."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BindingError(f"storageClass must be a string, got {type(value).__name__}", "TypeError")
    if value not in STORAGE_CLASSES:
        raise _err(op, f"The storage class specified is not valid: {value[:64]!r} is not one of "
                       f"{', '.join(STORAGE_CLASSES)}", 10029)
    return value


#: The kinds of etag an ``onlyIf`` names (see sandbox.bindings.r2._conditional_etags).
ETAG_KINDS = ("strong", "weak", "wildcard")


def _holds(etags: list[tuple[str, str]], etag: str, weak_ok: bool) -> bool:
    """Whether ``etag`` is among ``etags``: any wildcard matches; a weak
    etag only where the comparison is weak (``etagDoesNotMatch``), as R2's
    gateway compares."""
    return any(kind == "wildcard" or (value == etag and (kind == "strong" or weak_ok))
               for kind, value in etags)


def _precondition(cond: dict[str, Any], row: tuple | None) -> bool:
    """Whether R2's ``onlyIf`` holds for the current object (``row``), as R2's
    gateway decides (RFC 7232 section 6): a date condition yields to the etag
    condition beside it when that one is given and holds (a revalidation
    with a changed etag gets the body even if the dates say otherwise); for
    a missing object only ``etagMatches`` and ``uploadedAfter`` fail."""
    if not cond:
        return True
    match, none_match = cond.get("etagMatches"), cond.get("etagDoesNotMatch")
    before, after = cond.get("uploadedBefore"), cond.get("uploadedAfter")
    if row is None:
        return match is None and after is None
    etag, uploaded = row[3], row[5]
    if_match = match is None or _holds(match, etag, weak_ok=False)
    if_none_match = none_match is None or not _holds(none_match, etag, weak_ok=True)
    if cond.get("secondsGranularity"):
        # From HTTP headers, whose dates have whole seconds: compared in seconds,
        # so an object is not "modified since" the Last-Modified it was served with.
        uploaded = uploaded // 1000 * 1000
        before = None if before is None else before // 1000 * 1000
        after = None if after is None else after // 1000 * 1000
    modified_since = after is None or after < uploaded or (none_match is not None and if_none_match)
    unmodified_since = before is None or uploaded < before or (match is not None and if_match)
    return if_match and if_none_match and modified_since and unmodified_since


def _etag_list(value: Any, name: str) -> list[tuple[str, str]] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or not value
            or not all(isinstance(e, list) and len(e) == 2 and e[0] in ETAG_KINDS
                       and isinstance(e[1], str) for e in value)):
        raise BindingError(f"onlyIf.{name} must be a list of [kind, etag] pairs", "TypeError")
    return [(kind, etag) for kind, etag in value]


def _only_if(value: Any) -> dict[str, Any]:
    """R2's ``onlyIf`` option, checked when the call arrives: a value that is
    not an object, or an ``uploadedBefore`` / ``uploadedAfter`` that is not a
    time, was a TypeError or ValueError deep in :func:`_precondition` (after
    a put had stored its body), logged as the platform's internal error."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BindingError(f"onlyIf must be an object or Headers, got {type(value).__name__}",
                           "TypeError")
    out: dict[str, Any] = {"secondsGranularity": bool(value.get("secondsGranularity"))}
    for name in ("uploadedBefore", "uploadedAfter"):
        when = value.get(name)
        if when is not None and (isinstance(when, bool) or not isinstance(when, (int, float))
                                 or not math.isfinite(when)):
            raise BindingError(f"onlyIf.{name} must be a Date (ms since the epoch), got "
                               f"{str(when)[:60]!r}", "TypeError")
        out[name] = None if when is None else float(when)
    for name in ("etagMatches", "etagDoesNotMatch"):
        out[name] = _etag_list(value.get(name), name)
    return out


class _FileBody:
    """Bytes ``[offset, offset+length)`` of an open file, read in threads."""

    def __init__(self, services: Services, fd: int, offset: int, length: int) -> None:
        self._services = services
        self._fd = fd
        self._pos = offset
        self._left = length
        #: Known in advance: passed on untouched, the body keeps a
        #: Content-Length (see supervisor.pool.bodies.body_length).
        self.length = length

    async def receive(self) -> bytes:
        if self._left <= 0 or self._fd < 0:
            self.close()
            return b""
        size = min(READ_CHUNK, self._left)
        data = await self._services.offload.run(os.pread, self._fd, size, self._pos)
        if not data:
            self.close()
            raise BodyError("the object's file ended early")
        self._pos += len(data)
        self._left -= len(data)
        return data

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class _Upload:
    """A temporary file being filled from the call's body, hashed as it goes."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.name = uuid.uuid4().hex
        self.path = os.path.join(directory, self.name + ".tmp")
        self.file = open(self.path, "wb")
        self.hashes = {name: hashlib.new(name) for name in HASHES}
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        for h in self.hashes.values():
            h.update(data)
        self.size += len(data)

    def finish(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def discard(self) -> None:
        self.file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class FileR2:
    """Embedded R2: ``<state>/storage/r2/<scope>/{index.sqlite3,blobs/,tmp/}``."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def dir(self, scope: Scope, *parts: str) -> str:
        return self.services.path(_FOLDER, scope, *parts)

    async def db(self, scope: Scope, fn: Any, *args: Any) -> Any:
        return await self.services.databases.run(self.dir(scope, _INDEX), _setup,
                                                 fn, self.dir(scope), *args)

    async def receive(self, ctx: Context, op: str, cap: int | None) -> _Upload:
        """The call's body into a temporary file, within the bytes cap.

        A body larger than the whole cap stops here; whether it fits next to
        what the bucket holds (less the object it replaces) is decided at
        commit, under the bucket's lock.
        """
        run = self.services.offload.run
        upload = await run(_Upload, self.dir(ctx.scope, "tmp"))
        body, ctx.body = ctx.body, None
        try:
            while body is not None:
                chunk = body if isinstance(body, bytes) else await body.receive()
                if isinstance(body, bytes):
                    body = None
                if not chunk:
                    break
                if upload.size + len(chunk) > MAX_OBJECT_BYTES:
                    raise _err(op, f"the object is larger than {MAX_OBJECT_BYTES} bytes", 100100)
                if cap is not None and upload.size + len(chunk) > cap:
                    raise BindingError(quota_error(f"{op}: bucket full", upload.size
                                                   + len(chunk), cap, "r2_bytes"))
                await run(upload.write, chunk)
            await run(upload.finish)
        except BaseException as exc:
            if body is not None and not isinstance(body, bytes):
                body.close()
            with trio.CancelScope(shield=True):
                await run(upload.discard)
            if isinstance(exc, BodyError):
                raise _err(op, f"the body could not be read: {exc}", 10001) from None
            raise
        return upload


def _used(conn: sqlite3.Connection, root: str) -> int:
    return conn.execute("SELECT bytes FROM stats WHERE id = 1").fetchone()[0]


def _row(conn: sqlite3.Connection, key: str) -> tuple | None:
    return conn.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE key = ?", (key,)).fetchone()


def _remove_blob(root: str, blob: str) -> None:
    try:
        os.unlink(os.path.join(root, "blobs", blob))
    except FileNotFoundError:
        pass


def _commit(conn: sqlite3.Connection, root: str, key: str, upload_path: str, size: int,
            etag: str, http: dict, custom: dict, checksums: dict, cond: dict,
            cap: int | None, op: str, drop_upload: str | None = None,
            storage_class: str | None = None) -> tuple | None:
    """Put a finished file in place as ``key``; None if ``onlyIf`` failed."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        old = _row(conn, key)
        if not _precondition(cond, old):
            conn.execute("ROLLBACK")
            os.unlink(upload_path)
            return None
        growth = size - (old[2] if old else 0)
        freed = 0
        if drop_upload is not None:
            freed = conn.execute("SELECT coalesce(sum(size), 0) FROM parts WHERE upload_id = ?",
                                 (drop_upload,)).fetchone()[0]
        used = _used(conn, root)
        if cap is not None and growth > 0 and used - freed + growth > cap:
            raise BindingError(quota_error(f"{op}: bucket full", used - freed + growth, cap,
                                           "r2_bytes"))
        blob = uuid.uuid4().hex
        os.makedirs(os.path.join(root, "blobs"), exist_ok=True)
        os.replace(upload_path, os.path.join(root, "blobs", blob))
        row = (key, blob, size, etag, uuid.uuid4().hex, int(time.time() * 1000),
               json.dumps(http), json.dumps(custom), json.dumps(checksums), storage_class)
        conn.execute(f"INSERT OR REPLACE INTO objects ({_OBJECT_COLUMNS}) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        parts: list[str] = []
        if drop_upload is not None:
            parts = [r[0] for r in conn.execute("SELECT blob FROM parts WHERE upload_id = ?",
                                                (drop_upload,))]
            conn.execute("DELETE FROM parts WHERE upload_id = ?", (drop_upload,))
            conn.execute("DELETE FROM uploads WHERE upload_id = ?", (drop_upload,))
        conn.execute("UPDATE stats SET bytes = bytes + ? WHERE id = 1", (growth - freed,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        try:
            os.unlink(upload_path)
        except FileNotFoundError:
            pass
        raise
    if old is not None:
        _remove_blob(root, old[1])
    for part in parts:
        _remove_blob(root, part)
    return row


def _open(conn: sqlite3.Connection, root: str, key: str) -> tuple[tuple | None, int]:
    row = _row(conn, key)
    if row is None:
        return None, -1
    return row, os.open(os.path.join(root, "blobs", row[1]), os.O_RDONLY | os.O_CLOEXEC)


@contextmanager
def _writing(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on the bucket's index (rolled back if the body raises)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _delete(conn: sqlite3.Connection, root: str, keys: list[str]) -> None:
    blobs: list[str] = []
    with _writing(conn):
        for key in keys:
            row = conn.execute("SELECT blob, size FROM objects WHERE key = ?", (key,)).fetchone()
            if row is not None:
                conn.execute("DELETE FROM objects WHERE key = ?", (key,))
                conn.execute("UPDATE stats SET bytes = bytes - ? WHERE id = 1", (row[1],))
                blobs.append(row[0])
    for blob in blobs:
        _remove_blob(root, blob)


def _after(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``
    (None: there is none, ``prefix`` is all U+10FFFF)."""
    stem = prefix.rstrip("\U0010ffff")
    return stem[:-1] + chr(ord(stem[-1]) + 1) if stem else None


def _list(conn: sqlite3.Connection, root: str, prefix: str, start: str, inclusive: bool,
          limit: int, delimiter: str, include: tuple[str, ...]) -> dict[str, Any]:
    objects: list[dict[str, Any]] = []
    prefixes: list[str] = []
    resume: tuple[str, bool] | None = None
    position, incl = max(start, prefix), inclusive or start < prefix
    while len(objects) + len(prefixes) < limit:
        op = ">=" if incl else ">"
        # Stepped row by row, not fetched whole: after a delimited prefix the
        # next query starts past it, and fetching each query's limit + 1 rows
        # read (limit + 1) x limit rows, metadata and all, for one call.
        rows = conn.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE key {op} ? "
                            "ORDER BY key LIMIT ?", (position, limit + 1))
        count = 0
        for row in rows:
            count += 1
            key = row[0]
            if not key.startswith(prefix):
                return _listing(objects, prefixes, None)
            if len(objects) + len(prefixes) >= limit:
                return _listing(objects, prefixes, (key, True))
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = key[: cut + len(delimiter)]
                prefixes.append(common)
                after = _after(common)
                if after is None:  # nothing sorts after it
                    return _listing(objects, prefixes, None)
                position, incl = after, True
                resume = (position, True)
                break  # skip every key under this prefix with a new query
            objects.append(_object_json(row, include))
            position, incl = key, False
            resume = (key, False)
        else:
            if count <= limit and len(objects) + len(prefixes) < limit:
                return _listing(objects, prefixes, None)
    more = conn.execute(f"SELECT key FROM objects WHERE key {'>=' if incl else '>'} ? "
                        "ORDER BY key LIMIT 1", (position,)).fetchone()
    if more is None or not more[0].startswith(prefix):
        return _listing(objects, prefixes, None)
    return _listing(objects, prefixes, resume)


def _listing(objects: list, prefixes: list, resume: tuple[str, bool] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"objects": objects, "delimitedPrefixes": prefixes,
                           "truncated": resume is not None}
    if resume is not None:
        out["cursor"] = base64.urlsafe_b64encode(json.dumps(resume).encode()).decode()
    return out


def _cursor(value: Any) -> tuple[str, bool]:
    if not value:
        return "", False
    try:
        start, inclusive = json.loads(base64.urlsafe_b64decode(string(value, "cursor")))
        return str(start), bool(inclusive)
    except (ValueError, TypeError):
        raise _err("list", "The cursor is not valid", 10033) from None


#: The most an object's ``httpMetadata`` or ``customMetadata`` may hold (as JSON),
#: R2's cap on custom metadata. Neither counts against the bucket's bytes, so
#: without a cap a tenant stored 512 KiB (more for an upload) in the index per empty object.
MAX_METADATA_BYTES = 8192


def _http_metadata(value: Any, op: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BindingError("httpMetadata must be an object or Headers", "TypeError")
    fields = {k: value[k] for k in HTTP_FIELDS if value.get(k) is not None}
    for name, field in fields.items():
        if not isinstance(field, (str, int, float)) or isinstance(field, bool):
            raise BindingError(f"httpMetadata.{name} must be a string", "TypeError")
    if len(json.dumps(fields)) > MAX_METADATA_BYTES:
        raise _err(op, f"httpMetadata is larger than {MAX_METADATA_BYTES} bytes", 10012)
    return fields


def _custom_metadata(value: Any, op: str) -> dict[str, str]:
    if value is None:
        return {}
    # Keys too: a child may send a bytes key, which json.dumps refused as a TypeError.
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        raise BindingError("customMetadata must be an object of strings", "TypeError")
    if len(json.dumps(value)) > MAX_METADATA_BYTES:
        raise _err(op, f"customMetadata is larger than {MAX_METADATA_BYTES} bytes", 10012)
    return {str(k): v for k, v in value.items()}


def _include(value: Any) -> tuple[str, ...]:
    """``list``'s ``include``: a list of field names (a number was a TypeError
    inside the handler, an internal error to the tenant)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BindingError('include must be a list of "httpMetadata" and "customMetadata"',
                           "TypeError")
    return tuple(value)


def _range(value: Any, size: int) -> tuple[int, int] | None:
    """(offset, length) of R2's ``range`` option, or None for the whole object."""
    if not value:
        return None
    if not isinstance(value, dict):
        raise BindingError("range must be an object", "TypeError")
    if value.get("suffix") is not None:
        suffix = integer(value["suffix"], "range.suffix", 0)
        return max(0, size - suffix), min(suffix, size)
    offset = integer(value.get("offset", 0), "range.offset", 0)
    length = value.get("length")
    length = size - offset if length is None else integer(length, "range.length", 0)
    if offset > size or (offset == size and size > 0):
        raise _err("get", "The requested range is not satisfiable", 10039, "RangeError")
    return offset, min(length, size - offset)


@register("r2_bucket")
class R2Handler:
    def __init__(self, services: Services, store: FileR2 | None = None) -> None:
        self.services = services
        self.store = store or FileR2(services)

    def close(self) -> None:
        pass

    async def call(self, ctx: Context, method: str, args: list[Any]) -> Reply:
        handler = getattr(self, "_" + method, None) if method in _METHODS else None
        if handler is None:
            raise BindingError(f"R2 buckets have no method {method[:64]!r}", "TypeError")
        return await handler(ctx, args)

    async def _head(self, ctx: Context, args: list[Any]) -> Reply:
        key = _key(arg(args, 0), "head")
        row, fd = await self.store.db(ctx.scope, _open, key)
        if fd >= 0:
            os.close(fd)
        return Reply(None if row is None else _object_json(row))

    async def _get(self, ctx: Context, args: list[Any]) -> Reply:
        key = _key(arg(args, 0), "get")
        opts = options(args, 1)
        only_if = _only_if(opts.get("onlyIf"))
        row, fd = await self.store.db(ctx.scope, _open, key)
        if row is None:
            return Reply(None)
        try:
            obj = _object_json(row)
            if not _precondition(only_if, row):
                os.close(fd)
                return Reply({**obj, "body": False})
            span = _range(opts.get("range"), row[2])
        except BaseException:
            os.close(fd)
            raise
        offset, length = span if span is not None else (0, row[2])
        if span is not None:
            obj["range"] = {"offset": offset, "length": length}
        obj["body"] = True
        return Reply(obj, _FileBody(self.services, fd, offset, length))

    async def _put(self, ctx: Context, args: list[Any]) -> Reply:
        key = _key(arg(args, 0), "put")
        opts = options(args, 1)
        http = _http_metadata(opts.get("httpMetadata"), "put")
        custom = _custom_metadata(opts.get("customMetadata"), "put")
        only_if = _only_if(opts.get("onlyIf"))
        storage_class = _storage_class(opts.get("storageClass"), "put")
        expected = {name: opts[name] for name in HASHES if opts.get(name) is not None}
        upload = await self.store.receive(ctx, "put", ctx.quota.r2_bytes)
        digests = {name: h.hexdigest() for name, h in upload.hashes.items()}
        for name, want in expected.items():
            want_hex = want.hex() if isinstance(want, bytes) else str(want).lower()
            if want_hex != digests[name]:
                await self.services.offload.run(upload.discard)
                raise _err("put", f"The {name.upper()} checksum you specified did not match what "
                                  "we received.", 10037)
        checksums = {name: digests[name] for name in ("md5", *expected)}
        row = await self.store.db(ctx.scope, _commit, key, upload.path, upload.size,
                                  digests["md5"], http, custom, checksums,
                                  only_if, ctx.quota.r2_bytes, "put", None, storage_class)
        return Reply(None if row is None else _object_json(row))

    async def _delete(self, ctx: Context, args: list[Any]) -> Reply:
        target = arg(args, 0)
        keys = target if isinstance(target, list) else [target]
        if len(keys) > MAX_DELETE:
            raise _err("delete", f"at most {MAX_DELETE} keys can be deleted at once", 10029)
        await self.store.db(ctx.scope, _delete, [_key(k, "delete") for k in keys])
        return Reply()

    async def _list(self, ctx: Context, args: list[Any]) -> Reply:
        opts = options(args, 0)
        limit = opts.get("limit")
        limit = MAX_LIST if limit is None else integer(limit, "limit", 1, MAX_LIST)
        prefix = string(opts.get("prefix") or "", "prefix")
        delimiter = string(opts.get("delimiter") or "", "delimiter")
        include = _include(opts.get("include"))
        start, inclusive = _cursor(opts.get("cursor"))
        if opts.get("startAfter") and not start:
            start, inclusive = string(opts["startAfter"], "startAfter"), False
        return Reply(await self.store.db(ctx.scope, _list, prefix, start, inclusive, limit,
                                         delimiter, include))

    # -- multipart ------------------------------------------------------------------
    async def _createMultipartUpload(self, ctx: Context, args: list[Any]) -> Reply:  # noqa: N802
        key = _key(arg(args, 0), "createMultipartUpload")
        opts = options(args, 1)
        upload_id = uuid.uuid4().hex
        await self.store.db(ctx.scope, _new_upload, upload_id, key,
                            json.dumps(_http_metadata(opts.get("httpMetadata"), "createMultipartUpload")),
                            json.dumps(_custom_metadata(opts.get("customMetadata"), "createMultipartUpload")),
                            _storage_class(opts.get("storageClass"), "createMultipartUpload"))
        return Reply({"key": key, "uploadId": upload_id})

    async def _uploadPart(self, ctx: Context, args: list[Any]) -> Reply:  # noqa: N802
        key = _key(arg(args, 0), "uploadPart")
        upload_id = string(arg(args, 1), "uploadId")
        number = integer(arg(args, 2), "partNumber", 1, MAX_PARTS)
        await self.store.db(ctx.scope, _upload_of, upload_id, key, "uploadPart")
        upload = await self.store.receive(ctx, "uploadPart", ctx.quota.r2_bytes)
        etag = upload.hashes["md5"].hexdigest()
        await self.store.db(ctx.scope, _save_part, upload_id, key, number, upload.path,
                            upload.size, etag, ctx.quota.r2_bytes)
        return Reply({"partNumber": number, "etag": etag})

    async def _abortMultipartUpload(self, ctx: Context, args: list[Any]) -> Reply:  # noqa: N802
        key = _key(arg(args, 0), "abortMultipartUpload")
        await self.store.db(ctx.scope, _abort_upload, string(arg(args, 1), "uploadId"), key)
        return Reply()

    async def _completeMultipartUpload(self, ctx: Context, args: list[Any]) -> Reply:  # noqa: N802
        key = _key(arg(args, 0), "completeMultipartUpload")
        upload_id = string(arg(args, 1), "uploadId")
        parts = arg(args, 2)
        if not isinstance(parts, list) or not parts:
            raise BindingError("completeMultipartUpload needs the list of uploaded parts", "TypeError")
        if len(parts) > MAX_PARTS:
            raise _err("completeMultipartUpload", f"an upload has at most {MAX_PARTS} parts, "
                                                  f"not {len(parts)}", 10025)
        wanted: list[tuple[int, str]] = []
        for part in parts:
            if not isinstance(part, dict):
                raise BindingError("each part must be {partNumber, etag}", "TypeError")
            number = integer(part.get("partNumber"), "partNumber", 1, MAX_PARTS)
            if wanted and number <= wanted[-1][0]:
                # Each part once, in order (S3's InvalidPartOrder): a part named
                # again would be joined again, an object larger than the parts
                # the bucket holds, written to disk before any cap was checked.
                raise _err("completeMultipartUpload", f"the parts must be listed in ascending order of "
                                                      f"partNumber, each once: part {number} comes after "
                                                      f"part {wanted[-1][0]}", 10025)
            wanted.append((number, string(part.get("etag"), "etag").strip().strip('"')))
        http, custom, storage_class, blobs = await self.store.db(ctx.scope, _parts_of, upload_id, key,
                                                                 wanted)
        run = self.services.offload.run
        upload = await run(_Upload, self.store.dir(ctx.scope, "tmp"))
        try:
            await run(_concatenate, upload, [self.store.dir(ctx.scope, "blobs", b) for b in blobs])
        except BaseException:
            with trio.CancelScope(shield=True):
                await run(upload.discard)
            raise
        binary = b"".join(bytes.fromhex(etag) for _, etag in wanted)
        etag = f"{hashlib.md5(binary).hexdigest()}-{len(wanted)}"
        row = await self.store.db(ctx.scope, _commit, key, upload.path, upload.size, etag,
                                  json.loads(http or "{}"), json.loads(custom or "{}"), {}, {},
                                  ctx.quota.r2_bytes, "completeMultipartUpload", upload_id,
                                  storage_class)
        return Reply(_object_json(row))  # type: ignore[arg-type]


_METHODS = frozenset({"head", "get", "put", "delete", "list", "createMultipartUpload",
                      "uploadPart", "abortMultipartUpload", "completeMultipartUpload"})


def _new_upload(conn: sqlite3.Connection, root: str, upload_id: str, key: str, http: str,
                custom: str, storage_class: str | None) -> None:
    now = int(time.time())
    _expire_uploads(conn, root, now - UPLOAD_EXPIRY_S)
    conn.execute("INSERT INTO uploads (upload_id, key, http, custom, created, storage_class) "
                 "VALUES (?, ?, ?, ?, ?, ?)", (upload_id, key, http, custom, now, storage_class))


def _expire_uploads(conn: sqlite3.Connection, root: str, created_before: int) -> None:
    """Drop the uploads created before ``created_before`` and their parts."""
    with _writing(conn):
        expired = [r[0] for r in conn.execute("SELECT upload_id FROM uploads WHERE created < ?",
                                              (created_before,))]
        blobs = [blob for upload_id in expired for blob in _drop_upload(conn, upload_id)]
    for blob in blobs:
        _remove_blob(root, blob)


def _drop_upload(conn: sqlite3.Connection, upload_id: str) -> list[str]:
    """Forget an upload and its parts, in the caller's transaction; returns
    the parts' blobs, for the caller to remove once it has committed."""
    rows = conn.execute("SELECT blob, size FROM parts WHERE upload_id = ?", (upload_id,)).fetchall()
    conn.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
    conn.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
    if rows:
        conn.execute("UPDATE stats SET bytes = bytes - ? WHERE id = 1", (sum(r[1] for r in rows),))
    return [blob for blob, _ in rows]


def _upload_of(conn: sqlite3.Connection, root: str, upload_id: str, key: str, op: str) -> tuple:
    row = conn.execute("SELECT http, custom FROM uploads WHERE upload_id = ? AND key = ? AND created >= ?",
                       (upload_id, key, int(time.time()) - UPLOAD_EXPIRY_S)).fetchone()
    if row is None:
        raise _err(op, "The specified multipart upload does not exist", 10024)
    return row


def _save_part(conn: sqlite3.Connection, root: str, upload_id: str, key: str, number: int,
               path: str, size: int, etag: str, cap: int | None) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        _upload_of(conn, root, upload_id, key, "uploadPart")
        old = conn.execute("SELECT blob, size FROM parts WHERE upload_id = ? AND number = ?",
                           (upload_id, number)).fetchone()
        total = _used(conn, root) + size - (old[1] if old else 0)
        if cap is not None and total > cap:
            raise BindingError(quota_error("uploadPart: bucket full", total, cap, "r2_bytes"))
        blob = uuid.uuid4().hex
        os.makedirs(os.path.join(root, "blobs"), exist_ok=True)
        os.replace(path, os.path.join(root, "blobs", blob))
        conn.execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?)",
                     (upload_id, number, blob, size, etag))
        conn.execute("UPDATE stats SET bytes = bytes + ? WHERE id = 1",
                     (size - (old[1] if old else 0),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if os.path.exists(path):
            os.unlink(path)
        raise
    if old is not None:
        _remove_blob(root, old[0])


def _parts_of(conn: sqlite3.Connection, root: str, upload_id: str, key: str,
              wanted: list[tuple[int, str]]) -> tuple[str, str, str | None, list[str]]:
    http, custom = _upload_of(conn, root, upload_id, key, "completeMultipartUpload")
    storage_class = conn.execute("SELECT storage_class FROM uploads WHERE upload_id = ?",
                                 (upload_id,)).fetchone()[0]
    blobs = []
    sizes = []
    for number, etag in wanted:
        row = conn.execute("SELECT blob, etag, size FROM parts WHERE upload_id = ? AND number = ?",
                           (upload_id, number)).fetchone()
        if row is None or row[1] != etag:
            raise _err("completeMultipartUpload", f"part {number} was not uploaded with etag "
                                                  f"{etag!r}", 10025)
        blobs.append(row[0])
        sizes.append((number, row[2]))
    _check_part_sizes(sizes)
    return http, custom, storage_class, blobs


def _check_part_sizes(sizes: list[tuple[int, int]]) -> None:
    """R2's rules for the parts of an object, ``(number, size)`` in the order
    they are joined: every part but the last is at least 5 MiB and all of
    those are the same size; the last may be smaller, never larger.

    R2 checks this when the upload is completed, not as parts arrive (a
    part's size is only known to be wrong once it is known not to be the
    last), and so does this; a refused completion leaves the upload and its
    parts in place, to be completed with the right parts or aborted.
    """
    op = "completeMultipartUpload"
    *leading, (last, last_size) = sizes
    for number, size in leading:
        if size < MIN_PART_BYTES:
            raise _err(op, f"Your proposed upload is smaller than the minimum allowed object "
                           f"size: part {number} is {size} bytes, and every part but the last "
                           f"must be at least {MIN_PART_BYTES} bytes (5 MiB)", 10011)
    if not leading:
        return
    first, part_size = leading[0]
    for number, size in leading[1:]:
        if size != part_size:
            raise _err(op, f"All non-trailing parts must have the same size: part {number} is "
                           f"{size} bytes, part {first} {part_size} bytes", 10048)
    if last_size > part_size:
        raise _err(op, f"The last part must not be larger than the others: part {last} is "
                       f"{last_size} bytes, the other parts {part_size} bytes", 10048)


def _concatenate(upload: _Upload, paths: list[str]) -> None:
    for path in paths:
        with open(path, "rb") as part:
            while chunk := part.read(1 << 20):
                upload.write(chunk)
    upload.finish()


def _abort_upload(conn: sqlite3.Connection, root: str, upload_id: str, key: str) -> None:
    with _writing(conn):
        _upload_of(conn, root, upload_id, key, "abortMultipartUpload")
        blobs = _drop_upload(conn, upload_id)
    for blob in blobs:
        _remove_blob(root, blob)


async def namespaces_holding(services: Services, namespaces: list[str], bucket: str) -> list[str]:
    """Those of ``namespaces`` whose bucket ``bucket`` holds objects: Cloudflare
    deletes only an empty bucket."""
    holding = []
    for namespace in namespaces:
        index = services.path(_FOLDER, Scope(namespace, bucket), _INDEX)
        if os.path.exists(index) and await services.databases.run(index, _setup, _holds_objects):
            holding.append(namespace)
    return holding


def _holds_objects(conn: sqlite3.Connection) -> bool:
    return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM objects)").fetchone()[0])
