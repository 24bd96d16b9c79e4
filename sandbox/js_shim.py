"""``js``: the JavaScript globals Cloudflare's Python Workers reach for.

``from js import Response, console, fetch, JSON, Object`` works as there,
each answering with Corral's Python objects (``Response.new(...)`` is a
:class:`sandbox.workers.Response`). Globals that only mean something inside
a JavaScript engine raise an error that says so, by name.
"""

from __future__ import annotations

import datetime
import json as _json
import sys
import traceback
import types
from typing import Any

from . import js_globals, js_streams, logs, web_crypto, websockets, workers
from .html_rewriter import HTMLRewriter
from .js_url import URL, URLSearchParams
from .pyodide_shim import ArrayBuffer, JsException, Uint8Array, _unavailable, jsnull, to_py
from .sdk_types import Blob, File, FormData, JsDict, python_from_rpc


def _options(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """JS-style options: a positional dict (``to_js({...})``), a Request or a
    Response read as one, and/or keywords."""
    options: dict[str, Any] = {}
    for arg in args:
        if isinstance(arg, dict):
            options.update(arg)
        elif isinstance(arg, (workers.Request, workers.Response)):
            options.update(_init_of(arg))
    options.update(kwargs)
    return options


#: What JavaScript takes as a body as it is; anything else it turns into a string.
_BODY_TYPES = (str, bytes, bytearray, memoryview, FormData, Blob, workers.ReadableStream, workers.URLSearchParams)


def _js_body(body: Any) -> Any:
    """A body given to ``js.fetch``, ``js.Response.new`` or ``js.Request.new``
    as JavaScript reads a BodyInit: a value of no body type is converted with
    ``String(value)`` (Cloudflare's debugging-logs example posts an exception
    object; a URLSearchParams is its query string, a plain object
    ``[object Object]``), where the SDK's constructors would refuse it."""
    if body is None or body is jsnull:
        return None
    if isinstance(body, _BODY_TYPES) or hasattr(body, "__aiter__"):
        return body
    if isinstance(body, dict):
        return "[object Object]"
    return str(body)


def _init_of(message: workers.Request | workers.Response) -> dict[str, Any]:
    """A Request or Response given where JavaScript takes an init dictionary
    (``new Request(url, request)``, ``new Response(body, response)``,
    ``fetch(url, request)``, as Cloudflare's CORS proxy and Cache API examples
    write them): JavaScript reads its properties as the dictionary's members.
    A request's body moves to the new one, as JavaScript's does."""
    if isinstance(message, workers.Response):
        return {"status": message.status, "statusText": message.status_text, "headers": message.headers}
    init: dict[str, Any] = {"method": str(message.method), "headers": message.headers,
                            "redirect": message.redirect}
    if message._body is not None and not message._body_used:
        init["body"] = message._body
        message._body_used = True
    return init


class _ResponseClass:
    """``js.Response``: ``new(body, init)``, ``json(data, init)``, ``redirect(url, status)``."""

    @staticmethod
    def new(body: Any = None, *args: Any, **kwargs: Any) -> workers.Response:
        init = _options(args, kwargs)
        return workers.Response(_js_body(body), status=init.get("status"),
                                status_text=init.get("statusText", ""), headers=init.get("headers"),
                                web_socket=init.get("webSocket"),
                                encodeBody=init.get("encodeBody", "automatic"))

    @staticmethod
    def json(data: Any, *args: Any, **kwargs: Any) -> workers.Response:
        """JavaScript's ``Response.json``: ``JSON.stringify``'s text, no spaces
        (the SDK's own ``Response.json`` writes Python's ``json.dumps``)."""
        init = _options(args, kwargs)
        headers = workers.Headers(init.get("headers"))
        if not headers.has("content-type"):
            headers.set("content-type", "application/json")
        return workers.Response(_JSON.stringify(data).encode(), status=init.get("status", 200),
                                status_text=init.get("statusText", ""), headers=headers)

    @staticmethod
    def redirect(url: str, status: int = 302) -> workers.Response:
        return workers.Response.redirect(url, status)


class _WebSocketPairClass:
    """``js.WebSocketPair``: ``WebSocketPair.new().object_values()`` is (client, server)."""

    @staticmethod
    def new() -> Any:
        runtime = workers._runtime
        if runtime is None:
            raise RuntimeError("WebSocketPair can only be made while handling a request")
        return runtime.sockets.pair()


class _RequestClass:
    @staticmethod
    def new(url: Any, *args: Any, **kwargs: Any) -> workers.Request:
        init = _options(args, kwargs)
        extra = {key: init[key] for key in ("cf", "cache") if init.get(key) is not None}
        return workers.Request(url, method=init.get("method"), headers=init.get("headers"),
                               body=_js_body(init.get("body")), redirect=init.get("redirect"), **extra)


class _HeadersClass:
    @staticmethod
    def new(init: Any = None) -> workers.Headers:
        return workers.Headers(to_py(init) if init is not None else None)


class _Object:
    @staticmethod
    def fromEntries(entries: Any) -> JsDict:  # noqa: N802 - JS name
        pairs = entries.items() if hasattr(entries, "items") else entries
        return JsDict((k, v) for k, v in pairs)

    @staticmethod
    def new() -> JsDict:
        return JsDict()

    @staticmethod
    def keys(obj: dict) -> list:
        return list(obj.keys())

    @staticmethod
    def values(obj: dict) -> list:
        return list(obj.values())

    @staticmethod
    def entries(obj: dict) -> list:
        return [[k, v] for k, v in obj.items()]

    @staticmethod
    def assign(target: dict, *sources: dict) -> dict:
        for source in sources:
            target.update(source)
        return target


class _JSON:
    @staticmethod
    def stringify(value: Any, replacer: Any = None, space: Any = None) -> str:
        indent = space if isinstance(space, (int, str)) and space else None
        separators = None if indent else (",", ":")
        return _json.dumps(to_py(value), indent=indent, separators=separators, ensure_ascii=False,
                           default=_json_value)

    @staticmethod
    def parse(text: str) -> Any:
        try:
            value = _json.loads(text)
        except (ValueError, TypeError) as exc:  # JSON.parse throws a SyntaxError, a JsException here
            raise JsException("SyntaxError", f"JSON.parse: {exc}") from None
        return python_from_rpc(value)


def _json_value(value: Any) -> Any:
    """What ``JSON.stringify`` writes for a value JSON has no type for: a date
    its ISO string (``Date.prototype.toJSON``), another object its own
    enumerable data, which for a Request or any other object of a class is
    none: ``{}`` (Cloudflare's data-loss-prevention example stringifies
    ``{"time": datetime.now(), "request": request}``)."""
    if isinstance(value, datetime.datetime):
        return web_crypto.js_date_json(value)
    return {}


class _FormDataClass:
    """``js.FormData.new()``: the SDK's FormData (``FormData(js_form)`` takes it as is)."""

    @staticmethod
    def new(init: Any = None) -> FormData:
        return FormData(init)


class _FileClass:
    """``js.File.new(parts, name, {"type": ..., "lastModified": ...})``: the SDK's File."""

    @staticmethod
    def new(parts: Any, name: str, options: Any = None) -> File:
        options = options if isinstance(options, dict) else {}
        return File(parts, name, type=options.get("type", ""), last_modified=options.get("lastModified"))


class _Performance:
    """``js.performance``: as in workerd, ``timeOrigin`` is 0 and ``now()``
    the milliseconds of ``Date.now()``."""

    timeOrigin = 0.0  # noqa: N815 - the Web API's name

    @staticmethod
    def now() -> float:
        return float(js_globals.date_now())


class _BlobClass:
    """``js.Blob.new(parts, {"type": ...})``: the SDK's Blob."""

    @staticmethod
    def new(parts: Any = None, options: Any = None) -> Blob:
        kind = (options or {}).get("type", "") if isinstance(options, dict) else ""
        return Blob(parts, type=kind)


class _TextDecoder:
    """``js.TextDecoder.new(label="utf-8")``: ``decode(bytes, {"stream": True})``
    keeps a character split across chunks for the next call."""

    def __init__(self, label: str = "utf-8", options: Any = None) -> None:
        import codecs

        self.encoding = codecs.lookup(label).name
        self._decoder = codecs.getincrementaldecoder(self.encoding)("replace")

    @classmethod
    def new(cls, label: str = "utf-8", options: Any = None) -> _TextDecoder:
        return cls(label, options)

    def decode(self, data: Any = b"", options: Any = None) -> str:
        stream = bool((options or {}).get("stream")) if isinstance(options, dict) else False
        return self._decoder.decode(bytes(data) if data is not None else b"", final=not stream)


class _TextEncoder:
    """``js.TextEncoder.new().encode(text)``: UTF-8 bytes, as a ``Uint8Array``."""

    encoding = "utf-8"

    @classmethod
    def new(cls) -> _TextEncoder:
        return cls()

    def encode(self, text: str = "") -> Uint8Array:
        return Uint8Array(str(text).encode())


class _ErrorClass:
    """``js.Error`` (and its kin): calling it or ``.new(message)`` gives the
    error as Pyodide proxies one, a raisable :class:`JsException` with
    ``.name``, ``.message`` and V8's ``.stack`` (``"Error: message"``, then
    one ``"    at ..."`` line per caller, at most ``stackTraceLimit`` of them,
    which code sets as V8 lets it). django-cf's database backends raise
    ``Error(Error.new().stack)`` for every failed query."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stackTraceLimit: float = 10

    def __call__(self, message: Any = "", *args: Any, **kwargs: Any) -> JsException:
        text = "" if message is None or message is jsnull else str(message)
        error = JsException(self.name, text)
        error.stack = self._stack(text)  # type: ignore[attr-defined]
        return error

    new = __call__

    def _stack(self, message: str) -> str:
        """The callers (innermost first) in V8's layout, Python's frames standing in."""
        try:
            limit = max(0, int(min(float(self.stackTraceLimit), 1e6)))
        except (TypeError, ValueError):  # V8 leaves the stack out for a non-number
            limit = 0
        frames = traceback.extract_stack(sys._getframe(2), limit=limit or None)[::-1] if limit else []
        lines = [f"{self.name}: {message}" if message else self.name]
        lines += [f"    at {f.name} ({logs.strip_state_paths(f.filename)}:{f.lineno})" for f in frames[:limit]]
        return "\n".join(lines)


#: workerd's error for I/O started while the module loads (no request to do it for).
GLOBAL_SCOPE = ("Disallowed operation called within global scope. Asynchronous I/O (ex: fetch() or "
                "connect()), setting a timeout, and generating random values are not allowed within "
                "global scope. To fix this error, perform this operation within a handler. "
                "https://developers.cloudflare.com/workers/runtime-apis/handlers/")


def _fetch(resource: Any, *args: Any, **kwargs: Any) -> Any:
    """``js.fetch(...)``: a promise of the response. Called at global scope it
    throws at once, as JavaScript's fetch does in workerd (workerd's own
    Python hello test expects that JsException), rather than making a
    coroutine nobody can await."""
    if workers.current_invocation.get() == 0:
        raise JsException("Error", GLOBAL_SCOPE)
    init = _options(args, kwargs)
    return _as_js(workers.fetch(resource, method=init.get("method"), headers=init.get("headers"),
                                body=_js_body(init.get("body")), redirect=init.get("redirect")))


class JsResponse(workers.Response):
    """What ``js.fetch`` answers: on Cloudflare a JavaScript Response, whose
    ``await response.json()`` is a JS object (``data.name``, ``data.to_py()``,
    as the older examples read it), where the SDK's ``workers.fetch`` gives
    a Python dict. Otherwise the SDK's Response: a handler may return it."""

    async def json(self, **kwargs: Any) -> Any:
        return python_from_rpc(await super().json(**kwargs))


async def _as_js(pending: Any) -> JsResponse:
    response = await pending
    response.__class__ = JsResponse  # the same object: its body and state stay
    return response


def make_js() -> types.ModuleType:
    js = types.ModuleType("js", __doc__)
    js.console = logs.console  # type: ignore[attr-defined]
    js.Response = _ResponseClass()  # type: ignore[attr-defined]
    js.Request = _RequestClass()  # type: ignore[attr-defined]
    js.Headers = _HeadersClass()  # type: ignore[attr-defined]
    js.Object = _Object()  # type: ignore[attr-defined]
    js.JSON = _JSON()  # type: ignore[attr-defined]
    js.URL = URL  # type: ignore[attr-defined]
    js.URLSearchParams = URLSearchParams  # type: ignore[attr-defined]
    js.fetch = _fetch  # type: ignore[attr-defined]
    js.Uint8Array = Uint8Array  # type: ignore[attr-defined]
    js.TextDecoder = _TextDecoder  # type: ignore[attr-defined]
    js.FormData = _FormDataClass()  # type: ignore[attr-defined]
    js.Blob = _BlobClass()  # type: ignore[attr-defined]
    js.TextEncoder = _TextEncoder  # type: ignore[attr-defined]
    js.File = _FileClass()  # type: ignore[attr-defined]
    js.performance = _Performance()  # type: ignore[attr-defined]
    js.ArrayBuffer = ArrayBuffer  # type: ignore[attr-defined]
    js.crypto = web_crypto.Crypto()  # type: ignore[attr-defined]
    for name, constructor in js_streams.JS_NAMES.items():  # ReadableStream, TransformStream...
        setattr(js, name, constructor)
    for name in ("Error", "TypeError", "RangeError", "SyntaxError", "ReferenceError"):
        setattr(js, name, _ErrorClass(name))
    js.HTMLRewriter = HTMLRewriter  # type: ignore[attr-defined]
    js.WebSocketPair = _WebSocketPairClass()  # type: ignore[attr-defined]
    js.WebSocketRequestResponsePair = websockets.WebSocketRequestResponsePair  # type: ignore[attr-defined]
    js.WebSocket = websockets.OutboundWebSocket  # type: ignore[attr-defined]
    # ``from js import globalThis`` is the js module itself, as in Pyodide
    # (workerd's hello test asserts ``js == globalThis``); JavaScript's
    # undefined is None there, as it is here.
    timers = js_globals.Timers(workers.current_invocation.get,
                               lambda inv: inv in getattr(workers._runtime, "invocations", ()), GLOBAL_SCOPE)
    js_globals.install_into(js, timers)
    js.globalThis = js  # type: ignore[attr-defined]
    js.undefined = None  # type: ignore[attr-defined]
    js.__getattr__ = _unavailable("js")  # type: ignore[attr-defined]
    return js


def install() -> None:
    sys.modules["js"] = make_js()
