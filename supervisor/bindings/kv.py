"""Workers KV (``kv_namespaces``): Cloudflare's methods, limits and words.

``get`` (one key, or up to 100; ``cacheTtl`` is checked, and then moot: one
location has no edge cache), ``getWithMetadata``, ``put`` (value as the
call's body; ``expiration``, ``expirationTtl``, ``metadata``), ``delete``
and ``list`` (``prefix``, ``limit``, ``cursor``). The SDK in the child turns
bytes into text, JSON or a stream; this side stores and checks.

Storage is behind :class:`KVBackend` so a fleet can put KV on Redis; the
embedded :class:`SqliteKV` keeps one SQLite file per (namespace, id).
"""

from __future__ import annotations

import base64
import sqlite3
import time
from typing import Any, Protocol

import msgspec

from supervisor.bindings import BOUND_DATA, Services, register
from supervisor.bindings.base import MAX_DATE_MS, BindingError, Context, Reply, Scope, arg, integer, options, string
from supervisor.bindings.quota import quota_error

#: ``<storage>/<folder>/<scope key>/<file>``: its data, per (namespace, id).
_FOLDER, _FILE = BOUND_DATA["kv_namespace"]

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 25 * 1024 * 1024
MAX_METADATA_BYTES = 1024
MIN_TTL_S = 60
#: The latest expiration a key may have: JavaScript's last Date, in seconds.
MAX_EXPIRATION_S = MAX_DATE_MS // 1000
#: The smallest ``cacheTtl`` of a read: 30 seconds since Cloudflare lowered it
#: from 60 (KV changelog, 2026-01-30).
MIN_CACHE_TTL_S = 30
MAX_LIST = 1000
MAX_BULK = 100


class Entry(msgspec.Struct, array_like=True):
    key: str
    value: bytes | None
    expiration: int | None
    metadata: Any


class KVBackend(Protocol):
    """Where KV data lives; every method is scoped, none sees another scope."""

    async def get(self, scope: Scope, keys: list[str], now: int) -> dict[str, Entry]:
        """Live entries of ``keys`` (absent: missing or expired)."""

    async def put(self, scope: Scope, entry: Entry, now: int, max_keys: int | None) -> None:
        """Store ``entry``; :class:`BindingError` past ``max_keys`` live keys."""

    async def delete(self, scope: Scope, key: str) -> None: ...

    async def list(self, scope: Scope, prefix: str, after: str, limit: int, now: int
                   ) -> tuple[list[Entry], bool]:
        """Up to ``limit`` live entries (no values) after ``after``; and whether more follow."""

    def close(self) -> None: ...


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
                 "expiration INTEGER, metadata BLOB)")
    conn.execute("CREATE INDEX IF NOT EXISTS kv_expiration ON kv (expiration) "
                 "WHERE expiration IS NOT NULL")


_LIVE = "(expiration IS NULL OR expiration > ?)"


class SqliteKV:
    """Embedded KV: ``<state>/storage/kv/<scope>/kv.sqlite3``."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def _path(self, scope: Scope) -> str:
        return self.services.path(_FOLDER, scope, _FILE)

    async def _run(self, scope: Scope, fn: Any, *args: Any) -> Any:
        return await self.services.databases.run(self._path(scope), _setup, fn, *args)

    async def get(self, scope: Scope, keys: list[str], now: int) -> dict[str, Entry]:
        return await self._run(scope, _get, keys, now)

    async def put(self, scope: Scope, entry: Entry, now: int, max_keys: int | None) -> None:
        await self._run(scope, _put, entry, now, max_keys)

    async def delete(self, scope: Scope, key: str) -> None:
        await self._run(scope, _delete, key)

    async def list(self, scope: Scope, prefix: str, after: str, limit: int, now: int
                   ) -> tuple[list[Entry], bool]:
        return await self._run(scope, _list, prefix, after, limit, now)

    def close(self) -> None:
        pass  # its databases belong to services.databases


def _get(conn: sqlite3.Connection, keys: list[str], now: int) -> dict[str, Entry]:
    found: dict[str, Entry] = {}
    total = 0
    for key in keys:
        row = conn.execute(f"SELECT value, expiration, metadata FROM kv WHERE key = ? AND {_LIVE}",
                           (key, now)).fetchone()
        if row is not None:
            total += len(row[0])
            if total > MAX_VALUE_BYTES:
                # 100 keys of 25 MiB were 2.5 GiB in the supervisor's memory, for one call.
                raise BindingError(f"KV GET_BULK failed: 413 the values total more than {MAX_VALUE_BYTES} "
                                   "bytes; get fewer keys at once", "RangeError")
            found[key] = Entry(key, row[0], row[1], _meta(row[2]))
    return found


def _meta(raw: bytes | None) -> Any:
    return None if raw is None else msgspec.json.decode(raw)


def _put(conn: sqlite3.Connection, entry: Entry, now: int, max_keys: int | None) -> None:
    metadata = None if entry.metadata is None else msgspec.json.encode(entry.metadata)
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Expired keys go as writes come: they neither count nor linger.
        conn.execute("DELETE FROM kv WHERE rowid IN (SELECT rowid FROM kv WHERE expiration <= ? "
                     "LIMIT 100)", (now,))
        if max_keys is not None:
            exists = conn.execute(f"SELECT 1 FROM kv WHERE key = ? AND {_LIVE}",
                                  (entry.key, now)).fetchone()
            if exists is None:
                count = conn.execute(f"SELECT count(*) FROM kv WHERE {_LIVE}", (now,)).fetchone()[0]
                if count >= max_keys:
                    raise BindingError(quota_error("KV PUT failed", count, max_keys, "kv_keys")
                                       + f"; delete keys before adding {entry.key!r}")
        conn.execute("INSERT OR REPLACE INTO kv (key, value, expiration, metadata) VALUES (?, ?, ?, ?)",
                     (entry.key, entry.value, entry.expiration, metadata))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLITE_FULL rolls it back itself: a ROLLBACK then hid the cause
            conn.execute("ROLLBACK")
        raise


def _delete(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("DELETE FROM kv WHERE key = ?", (key,))


def _list(conn: sqlite3.Connection, prefix: str, after: str, limit: int, now: int
          ) -> tuple[list[Entry], bool]:
    start = max(prefix, after)
    op = ">" if after and after >= prefix else ">="
    rows = conn.execute(
        f"SELECT key, expiration, metadata FROM kv WHERE key {op} ? AND {_LIVE} ORDER BY key LIMIT ?",
        (start, now, limit + 1)).fetchall()
    entries = []
    for key, expiration, metadata in rows:
        if not key.startswith(prefix):
            return entries, False  # past the prefix: nothing more can match
        entries.append(Entry(key, None, expiration, _meta(metadata)))
    more = len(entries) > limit
    return entries[:limit], more


# ---------------------------------------------------------------------------
# The handler: Cloudflare's checks and shapes
# ---------------------------------------------------------------------------


def check_key(value: Any, op: str) -> str:
    key = string(value, "key")
    if key == "":
        raise BindingError("Key names must not be empty.", "TypeError")
    if key in (".", ".."):
        raise BindingError(f'"{key}" is not allowed as a key name.', "TypeError")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise BindingError(f"KV {op} failed: 414 UTF-8 encoded length of {size} exceeds key "
                           f"length limit of {MAX_KEY_BYTES}.")
    return key


def decode_cursor(value: Any) -> str:
    if not value:
        return ""
    try:
        return base64.urlsafe_b64decode(string(value, "cursor").encode() + b"==").decode()
    except (ValueError, UnicodeDecodeError):
        raise BindingError("KV LIST failed: 400 Invalid cursor.") from None


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _check_cache_ttl(opts: dict[str, Any], op: str) -> None:
    """Refuse a ``cacheTtl`` under KV's minimum, in Cloudflare's words.

    Corral has no edge cache for the value to live in, so a valid one
    changes nothing; an invalid one must still fail here, or code that
    works on Corral throws on Cloudflare.
    """
    ttl = opts.get("cacheTtl")
    if ttl is None:
        return
    ttl = integer(ttl, "cacheTtl")
    if ttl < MIN_CACHE_TTL_S:
        raise BindingError(f"KV {op} failed: 400 Invalid cache_ttl of {ttl}. Cache TTL must be at "
                           f"least {MIN_CACHE_TTL_S}.")


def expiration_of(opts: dict[str, Any], now: int) -> int | None:
    """The absolute expiration ``put``'s options ask for, in Cloudflare's
    checks and words: ``expirationTtl`` wins over ``expiration``, and either
    must land at least a minute from now."""
    ttl = opts.get("expirationTtl")
    if ttl is not None:
        ttl = integer(ttl, "expirationTtl")
        if ttl <= 0:
            raise BindingError(f"KV PUT failed: 400 Invalid expiration_ttl of {ttl}. Please "
                               "specify integer greater than 0.")
        if ttl < MIN_TTL_S:
            raise BindingError(f"KV PUT failed: 400 Invalid expiration_ttl of {ttl}. Expiration "
                               f"TTL must be at least {MIN_TTL_S}.")
        return _no_later_than_max(now + ttl, f"expiration_ttl of {ttl}")
    expiration = opts.get("expiration")
    if expiration is None:
        return None
    expiration = integer(expiration, "expiration")
    if expiration <= now:
        raise BindingError(f"KV PUT failed: 400 Invalid expiration of {expiration}. Please specify "
                           "integer greater than the current number of seconds since the UNIX "
                           "epoch.")
    if expiration < now + MIN_TTL_S:
        raise BindingError(f"KV PUT failed: 400 Invalid expiration of {expiration}. Expiration "
                           f"times must be at least {MIN_TTL_S} seconds in the future.")
    return _no_later_than_max(expiration, f"expiration of {expiration}")


def _no_later_than_max(expiration: int, what: str) -> int:
    """``expiration``, refused in Cloudflare's words when no Date can hold it
    (it overflowed the store's integer, an internal error to the tenant)."""
    if expiration > MAX_EXPIRATION_S:
        raise BindingError(f"KV PUT failed: 400 Invalid {what}. Expiration times must be at most "
                           f"{MAX_EXPIRATION_S} seconds since the UNIX epoch.")
    return expiration


def key_json(entry: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"name": entry.key}
    if entry.expiration is not None:
        out["expiration"] = entry.expiration
    if entry.metadata is not None:
        out["metadata"] = entry.metadata
    return out


@register("kv_namespace")
class KVHandler:
    def __init__(self, services: Services, backend: KVBackend | None = None) -> None:
        self.backend = backend or SqliteKV(services)

    def close(self) -> None:
        self.backend.close()

    async def call(self, ctx: Context, method: str, args: list[Any]) -> Reply:
        now = int(time.time())
        if method in ("get", "getWithMetadata"):
            return await self._get(ctx, args, now)
        if method == "put":
            return await self._put(ctx, args, now)
        if method == "delete":
            await self.backend.delete(ctx.scope, check_key(arg(args, 0), "DELETE"))
            return Reply()
        if method == "list":
            return await self._list(ctx, options(args, 0), now)
        raise BindingError(f"KV namespaces have no method {method[:64]!r}", "TypeError")

    async def _get(self, ctx: Context, args: list[Any], now: int) -> Reply:
        target = arg(args, 0)
        opts = options(args, 1)
        if isinstance(target, list):
            # KV's words for both (miniflare's KV service has them), as plain Errors:
            # workerd raises every failed KV response as Error "KV <op> failed: <status> ...".
            if not target:
                raise BindingError("KV GET_BULK failed: 400 You must request a minimum of 1 key")
            if len(target) > MAX_BULK:
                raise BindingError(f"KV GET_BULK failed: 400 You can request a maximum of "
                                   f"{MAX_BULK} keys")
            _check_cache_ttl(opts, "GET_BULK")
            keys = [check_key(k, "GET_BULK") for k in target]
            found = await self.backend.get(ctx.scope, keys, now)
            packed = {k: [found[k].value, found[k].metadata] if k in found else None for k in keys}
            return Reply({"bulk": True}, msgspec.msgpack.encode(packed))
        key = check_key(target, "GET")
        _check_cache_ttl(opts, "GET")
        entry = (await self.backend.get(ctx.scope, [key], now)).get(key)
        if entry is None:
            return Reply(None)
        return Reply({"metadata": entry.metadata}, entry.value or b"")

    async def _put(self, ctx: Context, args: list[Any], now: int) -> Reply:
        key = check_key(arg(args, 0), "PUT")
        opts = options(args, 1)
        expiration = expiration_of(opts, now)
        metadata = opts.get("metadata")
        if metadata is not None:
            size = len(msgspec.json.encode(metadata))
            if size > MAX_METADATA_BYTES:
                raise BindingError(f"KV PUT failed: 413 Metadata length of {size} exceeds limit of "
                                   f"{MAX_METADATA_BYTES}.")
        value = await ctx.read_body_within(MAX_VALUE_BYTES, "KV PUT failed: the value")
        if value is None:
            raise BindingError(f"KV PUT failed: 413 Value length exceeds limit of {MAX_VALUE_BYTES}.")
        await self.backend.put(ctx.scope, Entry(key, value, expiration, metadata), now,
                               ctx.quota.kv_keys)
        return Reply()

    async def _list(self, ctx: Context, opts: dict[str, Any], now: int) -> Reply:
        prefix = opts.get("prefix") or ""
        prefix = string(prefix, "prefix")
        limit = opts.get("limit")
        limit = MAX_LIST if limit is None else integer(limit, "limit")
        if not 1 <= limit <= MAX_LIST:
            raise BindingError(f"KV LIST failed: 400 Invalid key limit of {limit}: must be between "
                               f"1 and {MAX_LIST}.")
        after = decode_cursor(opts.get("cursor"))
        entries, more = await self.backend.list(ctx.scope, prefix, after, limit, now)
        result: dict[str, Any] = {"keys": [key_json(e) for e in entries], "list_complete": not more,
                                  "cacheStatus": None}
        if more:
            result["cursor"] = encode_cursor(entries[-1].key)
        return Reply(result)
