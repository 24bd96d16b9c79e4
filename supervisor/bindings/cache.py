"""The Cache API (``caches.open(name)``): a cache private to each script.

Every script may call it (``CACHE_BINDING``); its scope is the script itself
(namespace + name), so two tenants never see each other's entries, whatever
URLs they use. ``put`` honours the response's ``Cache-Control`` as
Cloudflare's cache does: ``no-store`` and ``private`` responses and those
setting cookies are not stored, except that ``private=<fields>`` (say
``private=Set-Cookie``) stores the response without the fields it names;
``s-maxage``, ``max-age`` or ``Expires`` say for how long; ``match``
ignores expired entries. Non-GET requests,
``206`` responses and ``Vary: *`` are refused with Cloudflare's words; a
``304`` is accepted and not stored, as workerd discards it.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import re
import sqlite3
import time
from typing import Any

import msgspec

from supervisor.bindings import Services, register, remove_tree
from supervisor.bindings.base import BindingError, Context, Reply, Scope, arg, integer, options, string
from supervisor.bindings.quota import quota_error
from supervisor.log import log

MAX_ENTRY_BYTES = 32 * 1024 * 1024
#: workerd's bound on a cache's name (cache.c++): shorter than 1024 bytes.
MAX_CACHE_NAME_BYTES = 1024
#: How long a response without a lifetime of its own is kept, by status:
#: Cloudflare's default edge TTLs ("200, 206, 301: 120m; 302, 303: 20m; 404,
#: 410: 3m. All other status codes are not cached by default").
DEFAULT_TTL_S = {200: 7200.0, 206: 7200.0, 301: 7200.0, 302: 1200.0, 303: 1200.0, 404: 180.0, 410: 180.0}


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS entries (cache TEXT NOT NULL, url TEXT NOT NULL, "
                 "status INTEGER NOT NULL, headers BLOB NOT NULL, body BLOB NOT NULL, "
                 "expires REAL NOT NULL, PRIMARY KEY (cache, url))")


def _header(headers: list[list[str]], name: str) -> str | None:
    values = [v for k, v in headers if k.lower() == name]
    return ", ".join(values) if values else None


#: One Cache-Control directive: a token, then ``=`` and a token or a quoted
#: string, whose commas (``private="Set-Cookie, X-Id"``) do not end it.
_DIRECTIVE = re.compile(r'\s*([^\s=,]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^,]*)))?\s*(?:,|$)')


def _directives(value: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, quoted, plain in _DIRECTIVE.findall(value or ""):
        out[name.lower()] = quoted if quoted else plain.strip()
    return out


def stored_headers(headers: list[list[str]]) -> list[list[str]] | None:
    """The headers a response is cached with, or None if it must not be.

    ``private`` with field names (RFC 9111 section 5.2.2.7) makes only those
    fields private: the response is stored without them. That is Cloudflare's
    documented way to cache a response that sets a cookie,
    ``Cache-Control: private=Set-Cookie``; any other response with a
    ``Set-Cookie`` is never stored, as it may hold one user's data."""
    control = _directives(_header(headers, "cache-control"))
    if "no-store" in control or ("no-cache" in control and not control["no-cache"]):
        # no-cache: never to be reused without revalidation, which a Cache API
        # entry cannot have (Cloudflare's cache stores none: its default cache
        # behavior, "private, no-store, no-cache, or max-age=0"); one naming
        # fields (no-cache="Set-Cookie") only says those, as private= does.
        return None
    if "private" in control:
        private = {field.strip().lower() for field in control["private"].split(",") if field.strip()}
        if not private:
            return None
        headers = [h for h in headers if h[0].lower() not in private]
    if _header(headers, "set-cookie") is not None:
        return None
    return headers


def lifetime(headers: list[list[str]], now: float, status: int = 200) -> float | None:
    """Seconds a storable response (:func:`stored_headers`) of ``status`` may
    be cached, or None if it must not be: its own ``Cache-Control`` or
    ``Expires`` whatever the status, else the default for the status (none
    for a 500: a worker caching whatever its upstream said kept an outage)."""
    control = _directives(_header(headers, "cache-control"))
    for name in ("s-maxage", "max-age"):
        if name in control:
            return _delta_seconds(control[name])
    expires = _header(headers, "expires")
    if expires:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(expires).timestamp() - now)
        except (TypeError, ValueError):
            return 0.0  # an invalid Expires means already expired
    return DEFAULT_TTL_S.get(status)


#: RFC 9111 section 1.2.2: a ``delta-seconds`` greater than a cache can
#: represent is taken as 2^31 (68 years).
MAX_DELTA_SECONDS = 2**31


def _delta_seconds(text: str) -> float | None:
    """A ``max-age`` value as seconds, or None if it is not a number.

    A value of hundreds of digits was an ``OverflowError`` converting it to
    a float (thousands, a ``ValueError`` from ``int()``): an internal error
    to the tenant, for a header any upstream may send. Per RFC 9111 such a
    value is 2^31 seconds."""
    text = text.strip()
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits.isascii() or not digits.isdigit():
        return None
    if text.startswith("-"):
        return 0.0  # already stale
    digits = digits.lstrip("0") or "0"
    # Eleven digits are past 2^31 already: no need to read the rest.
    return float(min(int(digits[:11]), MAX_DELTA_SECONDS))


def _put(conn: sqlite3.Connection, cache: str, url: str, status: int, headers: bytes,
         body: bytes, expires: float, cap: int | None) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM entries WHERE expires <= ?", (time.time(),))
        if cap is not None:
            used = conn.execute("SELECT coalesce(sum(length(body) + length(headers)), 0) FROM "
                                "entries WHERE NOT (cache = ? AND url = ?)", (cache, url)).fetchone()[0]
            if used + len(body) + len(headers) > cap:
                raise BindingError(quota_error("Cache.put failed: cache full",
                                               used + len(body) + len(headers), cap, "cache_bytes"))
        conn.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                     (cache, url, status, headers, body, expires))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _match(conn: sqlite3.Connection, cache: str, url: str) -> tuple | None:
    return conn.execute("SELECT status, headers, body FROM entries WHERE cache = ? AND url = ? "
                        "AND expires > ?", (cache, url, time.time())).fetchone()


def _delete(conn: sqlite3.Connection, cache: str, url: str) -> bool:
    cursor = conn.execute("DELETE FROM entries WHERE cache = ? AND url = ? AND expires > ?",
                          (cache, url, time.time()))
    return cursor.rowcount > 0


def cache_path(services: Services, namespace: str, script: str) -> str:
    """The cache file of a script, or of one of its dynamic workers (named
    ``owner:binding:id``; a script's name has no ``:``): theirs lie in their
    owner's folder, so that deleting the owner deletes them too (they were
    kept, and the next script of that name read them)."""
    owner, dynamic, worker = script.partition(":")
    folder = services.path("cache", Scope(namespace, owner))
    if dynamic:
        folder = os.path.join(folder, "dynamic", hashlib.sha256(worker.encode()).hexdigest()[:40])
    return os.path.join(folder, "cache.sqlite3")


async def purge_script(services: Services, namespace: str, name: str) -> None:
    """Delete a deleted script's cache, its dynamic workers' with it (see
    ``Supervisor.purge_script_data``)."""
    folder = services.path("cache", Scope(namespace, name))
    for path in await services.offload.run(_cache_files, folder):
        await services.databases.forget(path)  # no connection left on the deleted file
    await services.offload.run(remove_tree, folder)


def _cache_files(folder: str) -> list[str]:
    return [os.path.join(root, name) for root, _dirs, names in os.walk(folder)
            for name in names if name == "cache.sqlite3"]


@register("cache")
class CacheHandler:
    def __init__(self, services: Services) -> None:
        self.services = services

    def close(self) -> None:
        pass

    async def _db(self, ctx: Context, fn: Any, *args: Any) -> Any:
        path = cache_path(self.services, ctx.record.namespace, ctx.record.name)
        return await self.services.databases.run(path, _setup, fn, *args)

    async def call(self, ctx: Context, method: str, args: list[Any]) -> Reply:
        cache = string(arg(args, 0), "cache name")
        # The sandbox prefixes an opened cache's name ("open:"), under caches.open()'s own limit.
        if len(cache.encode("utf-8", "surrogatepass")) >= MAX_CACHE_NAME_BYTES + 8:
            raise BindingError("Cache name is too long.", "TypeError")  # as caches.open() says
        url = string(arg(args, 1), "request url")
        request_method = string(arg(args, 2, "GET"), "request method").upper()
        if method == "put":
            return await self._put(ctx, cache, url, request_method, args)
        opts = options(args, 3)
        if request_method != "GET" and not opts.get("ignoreMethod"):
            return Reply(False if method == "delete" else None)
        if method == "match":
            row = await self._db(ctx, _match, cache, url)
            if row is None:
                return Reply(None)
            return Reply({"status": row[0], "headers": msgspec.msgpack.decode(row[1])}, row[2])
        if method == "delete":
            return Reply(await self._db(ctx, _delete, cache, url))
        raise BindingError(f"Cache has no method {method[:64]!r}", "TypeError")

    async def _put(self, ctx: Context, cache: str, url: str, request_method: str,
                   args: list[Any]) -> Reply:
        status = integer(arg(args, 3), "status", 200, 599)
        headers = arg(args, 4) or []
        if not isinstance(headers, list) or not all(
                isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)
                for h in headers):
            raise BindingError("headers must be a list of [name, value] strings", "TypeError")
        if request_method != "GET":
            raise BindingError("Cannot cache response to non-GET request.", "TypeError")
        if status == 206:
            # workerd's words (cache.c++ Cache::put).
            raise BindingError("Cannot cache response to a range request (206 Partial Content).",
                               "TypeError")
        if "*" in (_header(headers, "vary") or ""):  # anywhere in it, as workerd refuses it
            raise BindingError("Cannot cache response with 'Vary: *' header.", "TypeError")
        body = await ctx.read_body_within(MAX_ENTRY_BYTES, "Cache.put failed: the response body")
        if body is None:
            # Resolved, not stored: workerd does not throw for a body the cache
            # refuses ("we never guaranteed the script we'd actually cache anything").
            log("cache.put_too_large", namespace=ctx.scope.namespace, limit=MAX_ENTRY_BYTES)
            return Reply()
        if status == 304:
            # workerd silently discards a 304 (cache.c++ Cache::put): a cached 304
            # would answer later unconditional requests with no body.
            return Reply()
        now = time.time()
        kept = stored_headers(headers)
        ttl = None if kept is None else lifetime(kept, now, status)
        if ttl is None or ttl <= 0:
            return Reply()  # not cacheable: accepted and not stored, as Cloudflare does
        await self._db(ctx, _put, cache, url, status, msgspec.msgpack.encode(kept), body,
                       now + ttl, ctx.quota.cache_bytes)
        return Reply()
