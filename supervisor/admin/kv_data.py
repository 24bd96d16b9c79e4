"""A KV namespace's keys and values through Cloudflare's REST API
(``/storage/kv/namespaces/{id}/values|keys|metadata|bulk``): what
``wrangler kv key put|get|list|delete`` and the SDK's
``client.kv.namespaces.values`` call to seed or read a tenant's data.

KV data lives per (dispatch namespace, id), so each call takes the dispatch
namespace as ``?namespace=NS`` (none: the platform's), as the D1 query
endpoint does. Keys, values, metadata and expirations are checked as the
binding checks them (:mod:`supervisor.bindings.kv`), in the same words; the
operator is not held to tenants' key quota.
"""

from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from supervisor.admin import multipart
from supervisor.admin.decode import body_as, decode_json, query_int
from supervisor.admin.handlers import namespace_in_query
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.bindings.base import BindingError, Scope
from supervisor.bindings.kv import (
    MAX_BULK,
    MAX_LIST,
    MAX_METADATA_BYTES,
    MAX_VALUE_BYTES,
    Entry,
    KVHandler,
    check_key,
    decode_cursor,
    encode_cursor,
    expiration_of,
    key_json,
)
from supervisor.errors import Invalid, NotFound, TooLarge

if TYPE_CHECKING:
    from supervisor.bindings import Bindings

_NS = "accounts/*/storage/kv/namespaces/{kv}"
#: The most pairs one bulk write or delete takes (Cloudflare's).
MAX_BULK_WRITE = 10_000


class _Pair(msgspec.Struct, kw_only=True):
    """One pair of ``PUT .../bulk``, with Cloudflare's fields."""

    key: str
    value: str
    base64: bool = False
    expiration: int | None = None
    expiration_ttl: int | None = None
    metadata: Any = None


class _BulkGet(msgspec.Struct, kw_only=True):
    keys: list[str]
    type: Literal["text", "json"] = "text"
    withMetadata: bool = False  # noqa: N815 - Cloudflare's field name


def _scope(request: Request) -> Scope:
    return Scope(namespace_in_query(request), request.params["kv"])


def _checked(call: Any) -> Any:
    """A binding check's refusal as the API's 400 (its words kept)."""
    try:
        return call()
    except BindingError as exc:
        raise Invalid(exc.message) from None


def _entry(key: str, value: bytes, now: int, expiration: Any, ttl: Any, metadata: Any) -> Entry:
    key = _checked(lambda: check_key(key, "PUT"))
    if len(value) > MAX_VALUE_BYTES:
        raise TooLarge(f"KV PUT failed: 413 Value length exceeds limit of {MAX_VALUE_BYTES}.")
    if metadata is not None and len(msgspec.json.encode(metadata)) > MAX_METADATA_BYTES:
        raise TooLarge(f"KV PUT failed: 413 Metadata length exceeds limit of {MAX_METADATA_BYTES}.")
    options = {k: v for k, v in (("expiration", expiration), ("expirationTtl", ttl)) if v is not None}
    return Entry(key, value, _checked(lambda: expiration_of(options, now)), metadata)


def _query_number(request: Request, field: str) -> int | None:
    raw = request.query.get(field)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise Invalid(f"{field} must be an integer, got {raw[:40]!r}") from None


def register(router: Router, bindings: Bindings) -> None:
    handler = bindings.handlers["kv_namespace"]
    assert isinstance(handler, KVHandler)
    backend = handler.backend

    async def found(request: Request) -> Entry:
        key = _checked(lambda: check_key(request.params["key"], "GET"))
        entry = (await backend.get(_scope(request), [key], int(time.time()))).get(key)
        if entry is None:
            raise NotFound(f"get: 'key not found': {key[:80]!r}")
        return entry

    async def get_value(request: Request) -> Response:
        return 200, [(b"content-type", b"application/octet-stream")], (await found(request)).value or b""

    async def get_metadata(request: Request) -> Response:
        return envelope(200, (await found(request)).metadata)

    async def put_value(request: Request) -> Response:
        """The value as the body, or multipart ``value`` and ``metadata`` parts (as the SDK sends both)."""
        value, metadata = request.body, None
        content_type = request.headers.get("content-type", "")
        if content_type.lower().startswith("multipart/"):
            parts = {p.name: p.data for p in multipart.parse(content_type, request.body,
                                                             max_part_bytes=MAX_VALUE_BYTES)}
            if "value" not in parts:
                raise Invalid("the multipart upload has no 'value' part")
            value = parts["value"]
            if "metadata" in parts:
                metadata = decode_json(parts["metadata"], "the 'metadata' part", MAX_METADATA_BYTES * 4)
        now = int(time.time())
        entry = _entry(request.params["key"], value, now, _query_number(request, "expiration"),
                       _query_number(request, "expiration_ttl"), metadata)
        await backend.put(_scope(request), entry, now, None)
        return envelope(200, {})

    async def delete_value(request: Request) -> Response:
        key = _checked(lambda: check_key(request.params["key"], "DELETE"))
        await backend.delete(_scope(request), key)
        return envelope(200, {})

    async def list_keys(request: Request) -> Response:
        limit = query_int(request.query, "limit", MAX_LIST, MAX_LIST)
        after = _checked(lambda: decode_cursor(request.query.get("cursor")))
        entries, more = await backend.list(_scope(request), request.query.get("prefix", ""), after, limit,
                                           int(time.time()))
        return envelope(200, [key_json(e) for e in entries],
                        result_info={"count": len(entries), "cursor": encode_cursor(entries[-1].key) if more else ""})

    async def bulk_put(request: Request) -> Response:
        pairs = body_as(request.body, list[_Pair], '[{"key": "k", "value": "v"}, ...]', "write keys in bulk")
        if len(pairs) > MAX_BULK_WRITE:
            raise Invalid(f"{len(pairs)} pairs, more than the {MAX_BULK_WRITE} one bulk write takes")
        now = int(time.time())
        entries = []
        for pair in pairs:
            try:
                value = base64.b64decode(pair.value, validate=True) if pair.base64 else pair.value.encode()
            except ValueError:
                raise Invalid(f"the value of {pair.key[:80]!r} is not base64") from None
            entries.append(_entry(pair.key, value, now, pair.expiration, pair.expiration_ttl, pair.metadata))
        scope = _scope(request)
        for entry in entries:  # all checked before the first is written
            await backend.put(scope, entry, now, None)
        return envelope(200, {"successful_key_count": len(entries), "unsuccessful_keys": []})

    async def bulk_delete(request: Request) -> Response:
        keys = body_as(request.body, list[str], '["k1", "k2", ...]', "delete keys in bulk")
        if len(keys) > MAX_BULK_WRITE:
            raise Invalid(f"{len(keys)} keys, more than the {MAX_BULK_WRITE} one bulk delete takes")
        checked = [_checked(lambda k=k: check_key(k, "DELETE")) for k in keys]
        scope = _scope(request)
        for key in checked:
            await backend.delete(scope, key)
        return envelope(200, {"successful_key_count": len(checked), "unsuccessful_keys": []})

    async def bulk_get(request: Request) -> Response:
        """Up to 100 keys' values, as text or JSON, with their metadata if asked."""
        asked = body_as(request.body, _BulkGet, '{"keys": ["k1", "k2"], "type": "text"}', "read keys in bulk")
        if not 1 <= len(asked.keys) <= MAX_BULK:
            raise Invalid(f"KV GET_BULK failed: 400 You can request a maximum of {MAX_BULK} keys")
        keys = [_checked(lambda k=k: check_key(k, "GET_BULK")) for k in asked.keys]
        found = await backend.get(_scope(request), keys, int(time.time()))
        values: dict[str, Any] = {}
        for key in keys:
            entry = found.get(key)
            value: Any = None
            if entry is not None and asked.type == "json":
                value = decode_json(entry.value or b"null", f"the value of {key[:80]!r}")
            elif entry is not None:
                value = (entry.value or b"").decode("utf-8", "replace")
            if not asked.withMetadata:
                values[key] = value
                continue
            values[key] = {"value": value, "metadata": entry.metadata if entry else None}
            if entry is not None and entry.expiration is not None:  # Cloudflare's "with metadata" result
                values[key]["expiration"] = entry.expiration
        return envelope(200, {"values": values})

    router.add(f"{_NS}/values/{{key}}", GET=get_value, PUT=put_value, DELETE=delete_value)
    router.add(f"{_NS}/metadata/{{key}}", GET=get_metadata)
    router.add(f"{_NS}/keys", GET=list_keys)
    router.add(f"{_NS}/bulk", PUT=bulk_put, DELETE=bulk_delete)
    router.add(f"{_NS}/bulk/delete", POST=bulk_delete)
    router.add(f"{_NS}/bulk/get", POST=bulk_get)


__all__ = ["register"]
