"""``env.KV``: Workers KV with Cloudflare's methods and shapes."""

from __future__ import annotations

from typing import Any

import msgspec

from ..pyodide_shim import ArrayBuffer
from . import (
    AttrDict,
    BindingTypeError,
    JsException,
    call,
    js_json,
    js_key,
    js_keys,
    js_string,
    kind,
    options,
    read,
    stream_of,
    stream_value,
    webidl_int,
    wrap,
)

TYPES = ("text", "json", "arrayBuffer", "bytes", "stream")


def _check_key(key: Any) -> None:
    """workerd's ``validateKeyName``, run in the binding before any request
    (kv.c++): its words and its TypeError, where the supervisor's check of
    the same names speaks for a child that skipped the SDK."""
    if key == "":
        raise JsException("TypeError", "Key name cannot be empty.")
    if key in (".", ".."):
        raise JsException("TypeError", f'"{key}" is not allowed as a key name.')


def _get_options(type_: Any, keywords: dict[str, Any], where: str) -> dict[str, Any]:
    """What a ``get`` sends: its type and, when given, its ``cacheTtl``, from
    ``get(key, "json")``, ``get(key, {"type": "json", "cacheTtl": 60})`` or
    keywords (``type=``, ``cacheTtl=`` or ``cache_ttl=``). The supervisor
    checks ``cacheTtl`` as Cloudflare's KV does, so it is sent, not dropped."""
    if isinstance(type_, str) or type_ is None:
        opts = options(None, keywords, where)
        kind = type_ or opts.get("type") or "text"
    else:
        opts = options(type_, keywords, where)
        kind = opts.get("type") or "text"
    if kind not in TYPES:
        raise BindingTypeError('Unknown response type. Possible types are "text", "arrayBuffer", '
                        '"json", and "stream".')
    sent: dict[str, Any] = {"type": kind}
    if opts.get("cacheTtl") is not None:
        sent["cacheTtl"] = webidl_int(opts["cacheTtl"])
    return sent


async def _decode(body: Any, kind: str) -> Any:
    if kind == "stream":
        return stream_of(body)
    data = await read(body)
    if kind == "text":
        return data.decode("utf-8", "replace")
    if kind == "json":
        return _json(data)
    # On Cloudflare the binding answers a JavaScript ArrayBuffer (the SDK
    # passes KV through), which code reads with ``.to_bytes()`` or
    # ``.to_py()``; "bytes" is Corral's own bytes.
    return ArrayBuffer(data) if kind == "arrayBuffer" else data


def _decode_bulk(data: bytes, kind: str) -> Any:
    """One value of a bulk get. KV parses JSON on its side for a bulk get, and
    one value that is not JSON fails the whole call with its 400, not
    JavaScript's SyntaxError (miniflare's KV tests hold the words)."""
    if kind != "json":
        return data.decode("utf-8", "replace")
    try:
        return js_json(data)
    except ValueError:
        raise JsException("Error", "KV GET_BULK failed: 400 At least one of the requested keys "
                                   "corresponds to a non-json value") from None


def _json(data: bytes) -> Any:
    """A value read as JSON. On Cloudflare, JavaScript parses it, and a value
    that is not JSON is its SyntaxError, a JsException in Python."""
    try:
        return js_json(data)
    except ValueError as exc:  # JSONDecodeError, and bytes that are not UTF-8
        raise JsException("SyntaxError", f"Unexpected token in JSON: {exc}") from None


def _put_value(value: Any) -> Any:
    """``put``'s value as workerd's ``KvNamespace::put`` takes it: a number or
    a boolean (a JavaScript primitive) is stored as its string, as JavaScript's
    ``String()`` writes it; any other object that is not bytes, text or a stream
    is its TypeError, in its words (kv.c++)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return js_string(value)
    if isinstance(value, (dict, list, tuple, set)):
        raise JsException("TypeError", "KV put() accepts only strings, ArrayBuffers, ArrayBufferViews, "
                                       "and ReadableStreams as values.")
    return value


@kind("kv_namespace")
class KvNamespace:
    """A KV namespace binding (``kv_namespaces`` / ``kv_namespace``)."""

    def __init__(self, name: str) -> None:
        self._name = name

    async def _get(self, key: Any, type_: Any, keywords: dict[str, Any], with_meta: bool) -> Any:
        where = "KV.getWithMetadata()" if with_meta else "KV.get()"
        key = js_keys(key)
        sent = _get_options(type_, keywords, where)
        kind = sent["type"]
        if isinstance(key, list):
            if kind not in ("text", "json"):
                raise BindingTypeError(f'{where}: bulk gets take type "text" or "json"')
            _, body = await call(self._name, "get", [list(key), sent])
            packed = msgspec.msgpack.decode(await read(body))
            out: dict[str, Any] = {}
            for name in key:
                hit = packed.get(name)
                if hit is None:
                    out[name] = None  # "keys not found having null values" (KV docs), with metadata too
                    continue
                value = _decode_bulk(hit[0], kind)
                out[name] = AttrDict(value=value, metadata=wrap(hit[1])) if with_meta else value
            return out
        _check_key(key)
        value, body = await call(self._name, "get", [key, sent])
        if value is None:
            return AttrDict(value=None, metadata=None, cacheStatus=None) if with_meta else None
        data = await _decode(body, kind)
        if with_meta:
            return AttrDict(value=data, metadata=wrap(value.get("metadata")), cacheStatus=None)
        return data

    async def get(self, key: Any, type: Any = None, **keywords: Any) -> Any:  # noqa: A002
        return await self._get(key, type, keywords, False)

    async def getWithMetadata(self, key: Any, type: Any = None, **keywords: Any) -> Any:  # noqa: A002,N802
        return await self._get(key, type, keywords, True)

    get_with_metadata = getWithMetadata

    async def put(self, key: str, value: Any, options_: Any = None, **keywords: Any) -> None:
        key = js_key(key)
        _check_key(key)
        opts = options(options_, keywords, "KV.put()")
        body = stream_value(_put_value(value), "KV put()")
        sent = {k: opts[k] for k in ("expiration", "expirationTtl", "metadata") if k in opts}
        for name in ("expiration", "expirationTtl"):
            if sent.get(name) is not None:
                sent[name] = webidl_int(sent[name])
        await call(self._name, "put", [key, sent], body)

    async def delete(self, key: str) -> None:
        key = js_key(key)
        _check_key(key)
        await call(self._name, "delete", [key])

    async def list(self, options_: Any = None, **keywords: Any) -> AttrDict:
        opts = options(options_, keywords, "KV.list()")
        sent = {k: opts[k] for k in ("prefix", "limit", "cursor") if opts.get(k) is not None}
        if "limit" in sent:
            sent["limit"] = webidl_int(sent["limit"])
        if isinstance(sent.get("limit"), (int, float)) and not isinstance(sent["limit"], bool) \
                and sent["limit"] <= 0:
            # workerd sends key_count_limit only when it is positive (kv.c++):
            # a limit of 0 or less lists with the default, 1000.
            del sent["limit"]
        value, _ = await call(self._name, "list", [sent])
        return wrap(value)

    def __repr__(self) -> str:
        return f"<KvNamespace {self._name}>"
