"""``caches``: the Cache API, a cache private to the script.

``await caches.open(name)`` gives a :class:`Cache` with ``match``, ``put``
and ``delete``. In a dispatch namespace's script ``caches.default`` is
refused, as Workers for Platforms refuses it to user workers: a tenant
must not read or poison a cache shared with others.
"""

from __future__ import annotations

import email.utils
from typing import Any

from protocol.messages import CACHE_BINDING

from .. import workers
from . import call, options, read

DEFAULT_REFUSED = ("caches.default is not available to scripts in a dispatch namespace "
                   "(Workers for Platforms user workers); use `await caches.open(name)` for a "
                   "cache private to this script")


def _request(request: Any) -> tuple[str, str]:
    if isinstance(request, workers.Request):
        return request.url, request._method
    if isinstance(request, str):
        return request, "GET"
    raise TypeError(f"a cache key is a URL or a Request, not {type(request).__name__}")


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
        if isinstance(request, workers.Request) and _not_modified(request.headers, headers):
            return workers.Response(None, status=304, headers=headers)
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
        return Cache(name)

    @property
    def default(self) -> Cache:
        runtime = workers._runtime
        if runtime is not None and runtime.script is not None and runtime.script.namespace:
            raise TypeError(DEFAULT_REFUSED)
        return Cache("")


caches = CacheStorage()
