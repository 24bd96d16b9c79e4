"""``caches``: the Cache API, a cache private to the script.

``await caches.open(name)`` gives a :class:`Cache` with ``match``, ``put``
and ``delete``. ``match`` answers conditional requests (304) and ranges
(206, or 416) from the stored response, as Cloudflare's cache does.

In a dispatch namespace's script ``caches.default`` is refused, as Workers
for Platforms refuses it to user workers: a tenant must not read or poison
a cache shared with others.
"""

from __future__ import annotations

import email.utils
from typing import Any
from urllib.parse import quote, urlsplit

from protocol.messages import CACHE_BINDING
from protocol.url_path import normalised

from .. import workers
from . import JsException, call, options, read

#: workerd's bound on a cache's name (cache.c++ CacheStorage::open): a name
#: must be shorter than this many bytes.
MAX_CACHE_NAME_BYTES = 1024
#: ``caches.default``'s name to the supervisor, and the prefix of an opened
#: one's: ``caches.open("")`` is a cache of its own in workerd, not the
#: default (it was the same here).
DEFAULT_CACHE = "default"
OPENED = "open:"

DEFAULT_REFUSED = ("caches.default is not available to scripts in a dispatch namespace "
                   "(Workers for Platforms user workers); use `await caches.open(name)` for a "
                   "cache private to this script")


def _request(request: Any) -> tuple[str, str]:
    if isinstance(request, workers.Request):
        return _checked_key(request.url), request._method
    if isinstance(request, str):
        return _checked_key(request), "GET"
    raise TypeError(f"a cache key is a URL or a Request, not {type(request).__name__}")


#: What a URL's path keeps as it is; the rest is percent-encoded, as the
#: WHATWG parser encodes a path (a space is %20).
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


def _checked_key(url: str) -> str:
    """``url`` as a cache key: workerd parses the key as a URL (``Request``'s
    constructor), so ``https://EXAMPLE.com:443/a/../b c`` and
    ``https://example.com/b%20c`` are one key (host in lower case, no default
    port, "/" for no path, dot segments resolved, the path percent-encoded).
    A key that is no fully-qualified URL (a path, "foo", a URL with no host)
    is refused, as workerd's cache.c++ ``validateUrl`` refuses it."""
    url = url.strip()
    parts = urlsplit(url)
    if not (parts.scheme and parts.netloc) or any(c in url for c in "\t\r\n"):
        raise JsException("TypeError", "Invalid URL. Cache API keys must be fully-qualified, valid URLs.")
    path = normalised(quote(parts.path or "/", safe=_PATH_SAFE))
    return workers._normalized_url(parts._replace(path=path, fragment="").geturl())


def _not_modified(asked: workers.Headers, stored: workers.Headers) -> bool:
    """Cloudflare's ``match`` evaluates ``If-None-Match`` against the stored
    ``ETag`` (weakly) and, without it, ``If-Modified-Since`` against
    ``Last-Modified``: a match is a 304."""
    tags = asked.get("if-none-match")
    if tags is not None:
        etag = stored.get("etag")
        wanted = {tag.strip().removeprefix("W/") for tag in tags.split(",")}
        return etag is not None and ("*" in wanted or etag.strip().removeprefix("W/") in wanted)
    since, modified = asked.get("if-modified-since"), stored.get("last-modified")
    if not since or not modified:
        return False
    try:
        return email.utils.parsedate_to_datetime(modified) <= email.utils.parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False  # a date that is none: no condition


def _if_range_holds(asked: workers.Headers, stored: workers.Headers) -> bool:
    """RFC 9110 13.1.5: with ``If-Range``, the ``Range`` counts only if its
    validator names what is stored (an ETag, strongly; a date, exactly the
    ``Last-Modified``); else the whole response is the answer, and a client
    resuming a download never splices in bytes of another version."""
    condition = asked.get("if-range")
    if condition is None:
        return True
    condition = condition.strip()
    if condition.startswith(('"', 'W/"')):
        etag = stored.get("etag")
        return etag is not None and not condition.startswith("W/") and condition == etag.strip()
    return condition == (stored.get("last-modified") or "").strip()


class _Unsatisfiable(Exception):
    """A ``Range`` none of whose bytes the stored body has: a 416."""


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The one byte range ``(first, last)``, inclusive, that a ``Range``
    header asks of a body of ``size`` bytes: ``bytes=a-b``, ``bytes=a-`` or
    ``bytes=-n`` (the last n). None when the header is to be ignored and the
    whole response sent, as RFC 9110 has it for one that is malformed or of
    another unit, and as Corral does for several ranges (a multipart answer
    is allowed, not required). Raises :class:`_Unsatisfiable` for a range
    that starts past the end (or asks for the last 0 bytes)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = (part.strip() for part in spec.partition("-"))
    if not dash or not all(p == "" or (p.isascii() and p.isdigit()) for p in (first, last)):
        return None
    if not first:
        if not last:
            return None
        if int(last) == 0:
            raise _Unsatisfiable
        return max(0, size - int(last)), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _Unsatisfiable
    return start, size - 1 if not last else min(int(last), size - 1)


def _partial(header: str, data: bytes, headers: workers.Headers) -> workers.Response | None:
    """Cloudflare's ``match`` answers a ``Range`` request for a stored 200
    with a ``206`` of that range (``Content-Range: bytes a-b/size``), or a
    ``416`` with ``Content-Range: bytes */size`` when the body has none of
    it; None when the whole response is the answer."""
    try:
        span = _byte_range(header, len(data))
    except _Unsatisfiable:
        headers.set("content-range", f"bytes */{len(data)}")
        headers.delete("content-length")
        return workers.Response(None, status=416, headers=headers)
    if span is None:
        return None
    first, last = span
    headers.set("content-range", f"bytes {first}-{last}/{len(data)}")
    headers.set("content-length", str(last - first + 1))
    return workers.Response(data[first:last + 1], status=206, headers=headers)


class Cache:
    def __init__(self, name: str) -> None:
        self._name = name

    async def match(self, request: Any, options_: Any = None, **keywords: Any
                    ) -> workers.Response | None:
        url, method = _request(request)
        opts = options(options_, keywords, "Cache.match()")
        value, body = await call(CACHE_BINDING, "match", [self._name, url, method, opts])
        if value is None:
            return None
        headers = workers.Headers(value["headers"])
        headers.set("cf-cache-status", "HIT")
        data = await read(body)
        if isinstance(request, workers.Request):
            if _not_modified(request.headers, headers):
                return workers.Response(None, status=304, headers=headers)
            asked = request.headers.get("range")
            if asked is not None and value["status"] == 200 and data and _if_range_holds(request.headers, headers):
                partial = _partial(asked, data, headers)
                if partial is not None:
                    return partial
        return workers.Response(data, status=value["status"], headers=headers)

    async def put(self, request: Any, response: workers.Response) -> None:
        url, method = _request(request)
        if not isinstance(response, workers.Response):
            raise TypeError("Cache.put() takes a Response")
        body = await response.bytes()
        headers = [[k, v] for k, v in response.headers.items()]
        await call(CACHE_BINDING, "put", [self._name, url, method, response.status, headers], body)

    async def delete(self, request: Any, options_: Any = None, **keywords: Any) -> bool:
        url, method = _request(request)
        opts = options(options_, keywords, "Cache.delete()")
        value, _ = await call(CACHE_BINDING, "delete", [self._name, url, method, opts])
        return bool(value)


class CacheStorage:
    """The ``caches`` global."""

    async def open(self, name: str) -> Cache:  # noqa: A003 - the Cache API's name
        if not isinstance(name, str):
            raise TypeError("caches.open() takes a cache name")
        if len(name.encode("utf-8", "surrogatepass")) >= MAX_CACHE_NAME_BYTES:
            raise JsException("TypeError", "Cache name is too long.")
        return Cache(OPENED + name)

    @property
    def default(self) -> Cache:
        runtime = workers._runtime
        if runtime is not None and runtime.script is not None and runtime.script.namespace:
            raise TypeError(DEFAULT_REFUSED)
        return Cache(DEFAULT_CACHE)


caches = CacheStorage()
