"""An R2 bucket's objects through Cloudflare's REST API
(``/r2/buckets/{bucket}/objects/{key}``): what ``wrangler r2 object
put|get|delete --remote`` calls, and the listing the SDK pages through
(``client.r2.buckets.objects.list``), so a platform can seed, list or read a
tenant's bucket the Cloudflare way.

Each call goes through the ``r2_bucket`` binding's own handler
(:mod:`supervisor.bindings.r2`): the same checks, in its words, and the same
storage a tenant's ``env.BUCKET`` reaches. Objects live per dispatch
namespace, so ``?namespace=NS`` chooses whose (the platform's without it),
as the KV and D1 data endpoints do. The bucket must be one the account has
(made through ``/r2/buckets`` or bound by a deployed script): anything else
is a 404, which wrangler reports as "The specified bucket does not exist".
The operator is not held to tenants' caps.

A body travels whole in one admin request and answer, so an object here is
at most :data:`MAX_BYTES`; a tenant's binding streams larger ones.
"""

from __future__ import annotations

import datetime
import re
from typing import TYPE_CHECKING, Any

from supervisor.admin.decode import query_int
from supervisor.admin.handlers import Handlers, namespace_in_query
from supervisor.admin.r2_buckets import R2BucketHandlers
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.bindings.base import BindingError, Context, Scope
from supervisor.bindings.r2 import MAX_LIST, R2Handler
from supervisor.config import QuotaLimits
from supervisor.errors import Invalid, NotFound, TooLarge

if TYPE_CHECKING:
    from supervisor.bindings import Bindings

#: The largest object put or read here: the admin listener's body limit.
MAX_BYTES = 64 * 2**20
#: Request headers a put keeps as the object's HTTP metadata, by R2's names.
_HTTP_HEADERS = {"content-type": "contentType", "content-language": "contentLanguage",
                 "content-disposition": "contentDisposition", "content-encoding": "contentEncoding",
                 "cache-control": "cacheControl", "expires": "cacheExpiry"}
_UNCAPPED = QuotaLimits()
#: What an HTTP header's value may be (h11's rule): no NUL, CR or LF, and no space at either end.
_HEADER_VALUE = re.compile(rb"[^\x00\s]+(?:[ \t]+[^\x00\s]+)*")


def key_of(request: Request) -> str:
    """The object's key as the client wrote it: the router's ``{key+}`` (the
    path's segments after ``objects``, percent-decoded), with the trailing
    slash the router's segments drop, which a key such as ``photos/`` keeps.

    Not the raw path after its first ``/objects/``: a bucket (or an account
    label) may itself be called ``objects``, and the key then took the
    bucket's name in front (``objects/photo.jpg`` for ``photo.jpg``)."""
    return request.params["key"] + ("/" if request.path.endswith("/") else "")


def _header_value(value: Any) -> bytes | None:
    """An object's HTTP metadata ``value`` as a response header, trimmed, or
    None when no header can carry it. A tenant's binding stores any text
    there, and one with a line break or a NUL made every read of the object
    through this API a 500."""
    data = str(value).encode("utf-8", "replace").strip(b" \t")
    return data if _HEADER_VALUE.fullmatch(data) else None


def register(router: Router, core: Handlers, bindings: Bindings) -> None:
    handler = bindings.handlers["r2_bucket"]
    assert isinstance(handler, R2Handler)
    buckets = R2BucketHandlers(core)

    async def call(request: Request, method: str, args: list[Any], body: bytes | None = None) -> Any:
        bucket, _ = await buckets._one(request, "r2_bucket", "bucket_name", "R2 bucket", "bucket")
        ctx = Context(None, None, Scope(namespace_in_query(request), bucket), _UNCAPPED, body)  # type: ignore[arg-type]
        try:
            return await handler.call(ctx, method, args)
        except BindingError as exc:
            raise Invalid(exc.message) from None

    async def put_object(request: Request) -> Response:
        if len(request.body) > MAX_BYTES:
            raise TooLarge(f"an object put through the API is at most {MAX_BYTES} bytes")
        http = {field: request.headers[name] for name, field in _HTTP_HEADERS.items()
                if request.headers.get(name)}
        reply = await call(request, "put", [key_of(request), {"httpMetadata": http}], request.body)
        return envelope(200, reply.value)

    async def get_object(request: Request) -> Response:
        key = key_of(request)
        reply = await call(request, "get", [key])
        found, body = reply.value, reply.body
        if found is None:
            raise NotFound(f"The specified key does not exist: {key[:200]!r}")
        chunks: list[bytes] = []
        try:
            if found["size"] > MAX_BYTES:
                raise TooLarge(f"object {found['key'][:200]!r} is {found['size']} bytes; the API reads "
                               f"at most {MAX_BYTES} (a worker's binding streams any size)")
            while chunk := await body.receive():
                chunks.append(chunk)
        finally:
            body.close()
        http = found["httpMetadata"]
        headers = [(b"content-type", _header_value(http.get("contentType") or "") or b"application/octet-stream"),
                   (b"etag", found["httpEtag"].encode())]
        headers += [(name.encode(), value) for name, field in _HTTP_HEADERS.items()
                    if name != "content-type" and (value := _header_value(http.get(field) or ""))]
        return 200, headers, b"".join(chunks)

    async def delete_object(request: Request) -> Response:
        key = key_of(request)
        await call(request, "delete", [key])
        return envelope(200, {"key": key})

    async def list_objects(request: Request) -> Response:
        """A page of the bucket's objects (``client.r2.buckets.objects.list``),
        by key, through the binding's ``list``: ``prefix``, ``delimiter``,
        ``start_after``, ``per_page`` and the ``cursor`` of the page before."""
        per_page = query_int(request.query, "per_page", MAX_LIST, MAX_LIST)
        options = {"limit": per_page, "prefix": request.query.get("prefix", ""),
                   "delimiter": request.query.get("delimiter", ""), "cursor": request.query.get("cursor", ""),
                   "startAfter": request.query.get("start_after", ""),
                   "include": ["httpMetadata", "customMetadata"]}
        listed = (await call(request, "list", [options])).value
        objects = [listed_object_json(o) for o in listed["objects"]]
        return envelope(200, objects, result_info={
            "cursor": listed.get("cursor", ""), "is_truncated": listed["truncated"], "per_page": per_page,
            "count": len(objects), "delimited": listed["delimitedPrefixes"]})

    router.add("accounts/*/r2/buckets/{bucket}/objects", GET=list_objects)
    router.add("accounts/*/r2/buckets/{bucket}/objects/{key+}", GET=get_object, PUT=put_object,
               DELETE=delete_object)


def listed_object_json(found: dict[str, Any]) -> dict[str, Any]:
    """An object of the binding's listing as Cloudflare's REST API lists it:
    snake_case, the bare etag, the upload time as ``last_modified``."""
    return {"key": found["key"], "etag": found["etag"], "size": found["size"],
            "last_modified": _iso(found["uploaded"]), "storage_class": found["storageClass"],
            "http_metadata": found.get("httpMetadata", {}), "custom_metadata": found.get("customMetadata", {})}


def _iso(uploaded: Any) -> Any:
    """The binding's upload time (milliseconds since the epoch) as ISO 8601."""
    if not isinstance(uploaded, int | float):
        return uploaded
    return datetime.datetime.fromtimestamp(uploaded / 1000, datetime.UTC).isoformat().replace("+00:00", "Z")


__all__ = ["register"]
