"""``pyodide`` and ``pyodide.ffi`` as Cloudflare's Python Workers use them.

In Pyodide, these convert between Python and JavaScript values and let
synchronous code wait for a promise. Corral runs CPython, so values are
already Python: ``to_js``/``to_py`` convert between plain dicts and the
SDK's attribute dicts, bytes become a ``Uint8Array`` (bytes with ``.buffer``
and the other names Pyodide code uses), proxies are the objects themselves (with the
``destroy()`` tenants call), ``jsnull`` is a falsy singleton, and
``run_sync`` is real (:mod:`sandbox.run_sync`). ``JsException`` is the class
platform and binding errors raise, so ``except JsException`` works as there.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Generator
from typing import Any

from .run_sync import run_sync
from .sdk_types import JsList

__all__ = ["ArrayBuffer", "JsException", "JsProxy", "Uint8Array", "jsnull", "to_js", "to_py",
           "create_proxy", "create_once_callable", "run_sync", "install"]


class JsException(Exception):
    """An error from the host: a binding, a subrequest, the platform (``.name``, ``.message``)."""

    def __init__(self, name: str = "Error", message: str = "") -> None:
        super().__init__(message)
        self.name = name
        self.message = message


class ConversionError(Exception):
    """Pyodide's error for a value that cannot cross to JavaScript (``to_js``)."""


def can_run_sync() -> bool:
    """Whether :func:`run_sync` may be called here: in a handler, always
    (each invocation can suspend alone), as with JSPI in Pyodide."""
    return True


class JsProxy:
    """What Pyodide gives for a JavaScript object. Corral has none: nothing is a JsProxy."""


class JsArray(JsProxy):
    """Pyodide's JS array proxy type, for ``isinstance`` checks that are never true here."""


class JsBuffer(JsProxy):
    """Pyodide's typed-array proxy type, for ``isinstance`` checks that are never true here."""


#: Pyodide's other proxy types: code checks ``isinstance(x, JsPromise)`` and
#: the like; here nothing is one.
_PROXY_TYPES = ("JsDoubleProxy", "JsPromise", "JsFetchResponse", "JsCallable", "JsMap",
                "JsIterable", "JsIterator", "JsGenerator", "JsAsyncIterator", "JsAsyncGenerator",
                "JsTypedArray", "JsDomElement")


class ArrayBuffer(bytes):
    """A JavaScript ``ArrayBuffer``, as ``to_js(data).buffer`` gives it: here the
    bytes themselves (a Response, ``fetch`` or a binding takes it as bytes),
    with the names code written for Pyodide reaches for."""

    __slots__ = ()

    @property
    def byteLength(self) -> int:  # noqa: N802 - JS name
        return len(self)

    def to_bytes(self) -> bytes:
        return bytes(self)

    #: memoryview's names: the current SDK converts a binding's ArrayBuffer
    #: (KV's ``arrayBuffer``, an R2 body's) to a memoryview with ``to_py()``,
    #: and code written for it reaches for these.
    tobytes = to_bytes

    @property
    def nbytes(self) -> int:
        return len(self)

    def cast(self, format: str, *shape: Any) -> memoryview:  # noqa: A002 - memoryview's name
        return memoryview(self).cast(format, *shape)

    def tolist(self) -> list[int]:
        return list(self)

    def to_py(self, **_: Any) -> memoryview:
        return memoryview(self)

    to_memoryview = to_py


class Uint8Array(ArrayBuffer):
    """What ``to_js(bytes)`` gives in Pyodide: a typed array over the bytes
    (``.buffer`` is its ``ArrayBuffer``; ``Response(to_js(png).buffer)`` is
    how Cloudflare's image example answers)."""

    __slots__ = ()

    @property
    def buffer(self) -> ArrayBuffer:
        return ArrayBuffer(self)

    @property
    def length(self) -> int:
        return len(self)

    @classmethod
    def new(cls, data: Any = 0) -> Uint8Array:
        """``Uint8Array.new(length | bytes | list of ints)``, as from ``js``."""
        return cls(data if isinstance(data, int) else bytes(data))


class JsNull:
    """JavaScript's ``null``: falsy, distinct from ``None`` (undefined) as in Pyodide."""

    _instance: JsNull | None = None

    def __new__(cls) -> JsNull:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "jsnull"


jsnull = JsNull()


def to_js(value: Any, *, dict_converter: Callable[[Any], Any] | None = None, depth: int = -1,
          create_pyproxies: bool = True, **_: Any) -> Any:
    """A value for a JavaScript API: here it stays Python (``dict_converter`` still applies)."""
    if depth == 0:
        return value
    if isinstance(value, dict):
        items = [(k, to_js(v, dict_converter=dict_converter, depth=depth - 1)) for k, v in value.items()]
        return dict_converter(items) if dict_converter is not None else dict(items)
    if isinstance(value, (list, tuple)):
        return JsList(to_js(v, dict_converter=dict_converter, depth=depth - 1) for v in value)
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)) and not isinstance(value, ArrayBuffer):
        return Uint8Array(value)
    return value


def to_py(value: Any, *, depth: int = -1, default_converter: Any = None, **_: Any) -> Any:
    """A host value as plain Python: attribute dicts become dicts, ``jsnull`` None."""
    if value is jsnull:
        return None
    if depth == 0:
        return value
    if isinstance(value, dict):
        return {k: to_py(v, depth=depth - 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_py(v, depth=depth - 1) for v in value]
    if hasattr(value, "to_py") and callable(value.to_py):
        return value.to_py()
    return value


class _Proxy:
    """``create_proxy(obj)``: calls and attributes go to ``obj``; ``destroy()`` is accepted."""

    def __init__(self, obj: Any, once: bool = False) -> None:
        self._obj = obj
        self._once = once
        self._destroyed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._destroyed:
            raise JsException("Error", "This borrowed proxy was automatically destroyed")
        if self._once:
            self._destroyed = True
        return self._obj(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._obj, name)

    def destroy(self) -> None:
        self._destroyed = True


class _AwaitableProxy(_Proxy):
    """A proxy of an awaitable is awaitable too: in Pyodide it is a thenable,
    so Cloudflare's examples hand ``ctx.waitUntil`` a
    ``create_proxy(cache.put(...))`` or ``create_once_callable(post_log(e))``
    (``await`` looks ``__await__`` up on the type, which ``__getattr__``
    does not reach)."""

    def __await__(self) -> Generator[Any, None, Any]:
        return type(self._obj).__await__(self._obj)


def _proxy(obj: Any, once: bool = False) -> _Proxy:
    kind = _AwaitableProxy if hasattr(type(obj), "__await__") else _Proxy
    return kind(obj, once)


def create_proxy(obj: Any, *, capture_this: bool = False, roundtrip: bool = True) -> Any:
    return _proxy(obj)


def create_once_callable(obj: Callable[..., Any], *, _may_syncify: bool = False) -> Any:
    return _proxy(obj, once=True)


def destroy_proxies(proxies: Any) -> None:
    for proxy in proxies:
        getattr(proxy, "destroy", lambda: None)()


def _unavailable(module: str) -> Callable[[str], Any]:
    def missing(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"{module}.{name} is not available in Corral: it needs Pyodide's JavaScript host, "
            f"and Corral runs Python natively (values are already Python objects)")
    return missing


def _make_http() -> types.ModuleType:
    """``pyodide.http.pyfetch``: the brokered fetch with Pyodide's response names."""
    http = types.ModuleType("pyodide.http", "pyfetch over Corral's brokered fetch")

    from .workers import BodyUsedError, HttpStatusError

    class AbortError(OSError):
        """Pyodide's error for a fetch its AbortSignal ended."""

    class FetchResponse:
        """What ``pyfetch`` answers: Pyodide's names over a brokered response."""

        def __init__(self, response: Any) -> None:
            self.js_response = response
            self.status = response.status
            self.status_text = response.status_text
            self.ok = response.ok
            self.url = response.url
            self.redirected = response.redirected
            self.type = response.type
            self.headers = dict(response.headers.items())

        @property
        def body_used(self) -> bool:
            return self.js_response.body_used

        async def bytes(self) -> bytes:
            return await self.js_response.bytes()

        async def buffer(self) -> ArrayBuffer:
            return await self.js_response.buffer()

        async def text(self) -> str:
            return await self.js_response.text()

        string = text

        async def json(self, **kwargs: Any) -> Any:
            return await self.js_response.json(**kwargs)

        async def memoryview(self) -> memoryview:
            return memoryview(await self.bytes())

        def clone(self) -> FetchResponse:
            return FetchResponse(self.js_response.clone())

        def raise_for_status(self) -> None:
            self.js_response.raise_for_status()

    async def pyfetch(url: str, **kwargs: Any) -> FetchResponse:
        from . import workers
        return FetchResponse(await workers.fetch(url, **kwargs))

    def open_url(url: str) -> Any:
        """``pyodide.http.open_url``: a URL's text, synchronously (the
        invocation waits, as :func:`run_sync` makes it)."""
        import io

        from . import workers

        async def text() -> str:
            return await (await workers.fetch(url)).text()

        return io.StringIO(run_sync(text()))

    http.FetchResponse = FetchResponse  # type: ignore[attr-defined]
    http.HttpStatusError = HttpStatusError  # type: ignore[attr-defined]
    http.BodyUsedError = BodyUsedError  # type: ignore[attr-defined]
    http.AbortError = AbortError  # type: ignore[attr-defined]
    http.pyfetch = pyfetch  # type: ignore[attr-defined]
    http.open_url = open_url  # type: ignore[attr-defined]
    http.__getattr__ = _unavailable("pyodide.http")  # type: ignore[attr-defined]
    return http


def install() -> None:
    """Register ``pyodide``, ``pyodide.ffi`` and ``pyodide.http`` for tenant imports."""
    pyodide = types.ModuleType("pyodide", "Pyodide's Python side, as Corral provides it")
    ffi = types.ModuleType("pyodide.ffi", __doc__)
    for name in ("JsException", "JsProxy", "JsArray", "JsBuffer", "JsNull", "jsnull", "to_js",
                 "to_py", "create_proxy", "create_once_callable", "destroy_proxies", "run_sync"):
        setattr(ffi, name, globals()[name])
    for name in _PROXY_TYPES:
        setattr(ffi, name, type(name, (JsProxy,), {"__module__": "pyodide.ffi"}))
    ffi.ConversionError = ConversionError  # type: ignore[attr-defined]
    ffi.can_run_sync = can_run_sync  # type: ignore[attr-defined]
    ffi.IN_BROWSER = False  # type: ignore[attr-defined]
    ffi.__getattr__ = _unavailable("pyodide.ffi")  # type: ignore[attr-defined]
    http = _make_http()
    webloop = types.ModuleType("pyodide.webloop", "Pyodide's event loop: here asyncio's own")
    # Code written for Pyodide patches methods of WebLoop (as workers-py's own
    # test workers do); a class of its own takes them and changes nothing else.
    webloop.WebLoop = type("WebLoop", (), {"__module__": "pyodide.webloop"})  # type: ignore[attr-defined]
    pyodide.ffi = ffi  # type: ignore[attr-defined]
    pyodide.http = http  # type: ignore[attr-defined]
    pyodide.webloop = webloop  # type: ignore[attr-defined]
    pyodide.__version__ = "0.0-corral"  # type: ignore[attr-defined]
    pyodide.__path__ = []  # type: ignore[attr-defined]  # a package: its submodules import
    pyodide.__getattr__ = _unavailable("pyodide")  # type: ignore[attr-defined]
    sys.modules["pyodide"] = pyodide
    sys.modules["pyodide.ffi"] = ffi
    sys.modules["pyodide.http"] = http
    sys.modules["pyodide.webloop"] = webloop
