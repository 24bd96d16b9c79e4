"""Storage bindings on ``env`` (KV, D1, R2) and the Cache API, tenant side.

Every method is one :func:`call`: a ``BindingCall`` frame naming the
binding and the method, answered by the supervisor with a value (and bytes,
for values and objects). The child holds no database, file or socket: the
supervisor resolves the binding from the script it stored and does the
I/O. Failures raise ``pyodide.ffi.JsException`` with Cloudflare's message,
as tenants catch them there.

Options are accepted as Cloudflare's JavaScript passes them (a dict with
camelCase keys) and as Python keywords in camelCase or snake_case; results
are dicts that also allow attribute access (``result.results``,
``result.meta.changes``), and ``None`` stands for JavaScript's null.

:func:`make` builds the ``env`` object of a binding type; Durable Objects
and queues add one module here whose class is decorated with :func:`kind`
(every module of this package is imported at zygote time).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
from collections.abc import Callable
from typing import Any

import msgspec

from protocol.messages import Abort, BindingCall, SubFailed

from .. import workers
from ..pyodide_shim import JsException, JsNull
from ..sdk_types import Blob
from ..sdk_types import JsDict as AttrDict
from ..streams import IncomingBody, pump
from ..web_streams import ReadableStream

#: Arguments larger than this (encoded) travel as the call's body.
MAX_INLINE_ARGS = 512 * 1024

Body = "bytes | IncomingBody | None"


class BindingTypeError(JsException, TypeError):
    """A binding method's argument of the wrong type: the JavaScript TypeError
    workerd's binding throws, which Pyodide raises as a ``JsException`` (SPEC
    3: binding errors are one); Python's ``TypeError`` too, as Corral raised
    these, so that code written either way catches it."""

    def __init__(self, message: str) -> None:
        super().__init__("TypeError", message)


class AttrList(list):
    """A list with Pyodide's ``to_py()``, for code written against JsProxy."""

    def to_py(self) -> AttrList:
        return self


def wrap(value: Any) -> Any:
    """Plain data as AttrDict / AttrList, all the way down.

    Without recursion: a value nested a few hundred deep (which msgspec
    decodes, and the producer's SDK sends) took two Python frames a level
    here and overflowed the stack; in a queue consumer that failed the
    batch before its handler ran, and every message in it was dropped.

    Numbers come out as :func:`js_number` makes them: everything wrapped
    here reached the tenant through JavaScript on Cloudflare (a Durable
    Object's stored values, a queue message's body, a binding's answer),
    where a float 1.0 is the Number 1 and Pyodide gives it back as int."""
    if not isinstance(value, (dict, list)):
        return js_number(value)
    root = _shell(value)
    pending = [(value, root)]
    while pending:
        source, target = pending.pop()
        for key, item in (source.items() if isinstance(source, dict) else enumerate(source)):
            if isinstance(item, (dict, list)):
                copy = _shell(item)
                pending.append((item, copy))
            else:
                copy = js_number(item)
            if isinstance(target, AttrList):
                target.append(copy)  # in order: a nested copy is filled in later, in place
            else:
                target[key] = copy
    return root


def _shell(value: dict | list) -> AttrDict | AttrList:
    """An empty AttrDict or AttrList for :func:`wrap` to fill."""
    return AttrDict() if isinstance(value, dict) else AttrList()


def camel(name: str) -> str:
    """``expiration_ttl`` -> ``expirationTtl``; camelCase stays as it is."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def options(positional: Any, keywords: dict[str, Any], where: str,
            nested: tuple[str, ...] = ()) -> dict[str, Any]:
    """Merge a JavaScript-style options dict and Python keywords.

    Keys become camelCase at the top level and inside the ``nested``
    option objects (``onlyIf``, ``range``, ``httpMetadata``); user data
    (``metadata``, ``customMetadata``) keeps its keys.
    """
    merged: dict[str, Any] = {}
    if positional is not None:
        if not isinstance(positional, dict):
            raise BindingTypeError(f"{where}: options must be a dict, got {type(positional).__name__}")
        merged.update(positional)
    merged.update(keywords)
    out = {camel(k): v for k, v in merged.items()}
    for key in nested:
        if isinstance(out.get(key), dict):
            out[key] = {camel(k): v for k, v in out[key].items()}
    return out


#: JavaScript's Number.MAX_SAFE_INTEGER.
MAX_SAFE_INTEGER = 2**53 - 1


def js_number(value: Any) -> Any:
    """A number as Python code on Cloudflare receives it: values cross from
    JavaScript, where 2.0 is the number 2, and Pyodide makes a number that
    ``Number.isSafeInteger`` an ``int`` (Pyodide's type conversions). A D1
    REAL of 2.0, or ``{"a": 1.0}`` read as JSON, is the int 2 or 1 there."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
        return int(value)
    return value


def js_double(value: Any) -> Any:
    """A number that was a JavaScript Number (a double) on its way to Python:
    :func:`js_number`, and an integer past 2**53 the float it rounds to, as a
    Number holds it and Pyodide gives it (not a safe integer: a float). D1
    and ``ctx.storage.sql`` hand SQLite's 64-bit INTEGERs to JavaScript as
    Numbers (d1-api.ts, sql.c++ "We will coerce to a double here"), and
    ``JSON.parse`` reads every number as one."""
    if type(value) is int and abs(value) > MAX_SAFE_INTEGER:
        return float(value)
    return js_number(value)


def js_string(number: float) -> str:
    """``String(number)`` in JavaScript: ``1.0`` is ``"1"``, ``1e21`` is ``"1e+21"``,
    ``1e-7`` is ``"1e-7"``, infinities and NaN by name. An int (a BigInt past
    2**53 in Pyodide) is its digits."""
    if isinstance(number, int):
        return str(number)
    if number != number:  # noqa: PLR0124 - NaN is the one value unequal to itself
        return "NaN"
    if number in (float("inf"), float("-inf")):
        return "Infinity" if number > 0 else "-Infinity"
    mantissa, _, exponent = repr(number).partition("e")
    if number.is_integer() and abs(number) < 1e21:
        if not exponent:
            return str(int(number))
        # From 1e16 JavaScript writes the shortest digits, then zeros (1.2345678901234568e+20
        # is "123456789012345680000"), not the double's exact value.
        sign, digits = ("-", mantissa[1:]) if mantissa.startswith("-") else ("", mantissa)
        digits = digits.replace(".", "")
        return sign + digits + "0" * (int(exponent) + 1 - len(digits))
    if not exponent:
        return mantissa
    if -7 < int(exponent) < 0:  # JavaScript writes 1e-5 as "0.00001", from 1e-7 with an exponent
        sign, digits = ("-", mantissa[1:]) if mantissa.startswith("-") else ("", mantissa)
        return f"{sign}0.{'0' * (-int(exponent) - 1)}{digits.replace('.', '')}"
    sign = "-" if exponent.startswith("-") else "+"
    return f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"


def js_key(key: Any) -> Any:
    """A key (of KV, R2 or a Durable Object's storage) as workerd takes it, a
    ``kj::String``: Web IDL converts a number or a boolean (a JavaScript
    primitive; Pyodide passes 5 as the Number 5) to its string, so ``get(5)``
    reads the key "5" on Cloudflare. Anything else is left to the binding's
    own checks."""
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, (int, float)):
        return js_string(key)
    return key


def js_keys(keys: Any) -> Any:
    """``keys``, one or a list of them, as :func:`js_key` makes them."""
    return [js_key(k) for k in keys] if isinstance(keys, (list, tuple)) else js_key(keys)


def webidl_int(value: Any) -> Any:
    """An ``int`` option (KV's ``expiration``, ``expirationTtl``, ``cacheTtl``
    and ``limit``; R2's and a Durable Object's list ``limit``) as workerd
    converts a number to it (jsg/value.h): a fractional one is truncated
    toward zero, so ``expirationTtl=expires - time.time()`` works, as on
    Cloudflare. Anything else (an int, a value that is not finite or does not
    fit, another type) goes on to the supervisor's checks."""
    if isinstance(value, float) and math.isfinite(value) and -(2**31) <= value < 2**31:
        return int(value)
    return value


def js_json(data: bytes | str) -> Any:
    """``JSON.parse`` as Python sees its result through Pyodide (numbers by
    :func:`js_double`); raises ValueError for text that is not JSON."""
    return wrap(json.loads(data, parse_float=lambda text: js_number(float(text)),
                           parse_int=lambda text: js_double(int(text)), parse_constant=_not_json))


def js_stringify(value: Any) -> str:
    """``JSON.stringify`` of a Python value as it crosses to JavaScript:
    compact, UTF-8 (not ``\\u`` escapes), a NaN or an infinity ``null``, a
    datetime its ISO string (``Date.prototype.toJSON``); an int past 2**53
    is a BigInt, which JSON.stringify refuses (TypeError)."""
    from ..web_crypto import js_date_json

    def jsonable(item: Any) -> Any:
        if isinstance(item, float):
            return item if math.isfinite(item) else None
        if type(item) is int and abs(item) > MAX_SAFE_INTEGER:
            raise TypeError("Do not know how to serialize a BigInt")
        if isinstance(item, dict):
            return {str(k): jsonable(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [jsonable(v) for v in item]
        if isinstance(item, datetime.datetime):
            return js_date_json(item)
        return item

    return json.dumps(jsonable(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _not_json(name: str) -> Any:
    """``NaN`` and ``Infinity``, which Python's json reads and JSON.parse refuses."""
    raise ValueError(f"{name} is not JSON")


def plain(value: Any) -> Any:
    """``value`` as msgpack takes it: JavaScript-side values from ``to_js``
    made Python's own (typed arrays and buffers as bytes, ``jsnull`` as None,
    attribute dicts as dicts)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, JsNull):
        return None
    return value


class _Unclonable(Exception):
    """Raised by the encoder's hook: ``value`` is no plain data."""

    def __init__(self, value: Any) -> None:
        super().__init__(type(value).__name__)
        self.value = value


def _refuse(value: Any) -> Any:
    raise _Unclonable(value)


_CLONE_ENCODER = msgspec.msgpack.Encoder(enc_hook=_refuse)


def data_clone_error(value: Any) -> JsException:
    """JavaScript's ``DataCloneError`` for a value structured clone cannot
    copy, in workerd's words, naming the Python type: what Cloudflare raises
    when such a value (a PyProxy there) is serialised for a queue, storage or
    RPC."""
    return JsException("DataCloneError", f'Could not serialize object of type '
                                         f'"{type(value).__name__}". This type does not support '
                                         f'serialization.')


#: The msgpack extension code of an int beyond msgpack's 64 bits, as its
#: decimal digits: structured clone carries any int (Pyodide makes one past
#: 2**53 a BigInt, and ``to_py`` an int again).
BIG_INT = 7
#: The ints msgpack carries as they are: from INT_MIN up to, not including, INT_END.
INT_MIN, INT_END = -(2**63), 2**64


def beyond_msgpack(value: int) -> bool:
    """Whether an int is past msgpack's 64 bits. Compared, not ``in range()``:
    range's membership test is arithmetic for an exact int only, and walks
    the whole range for a subclass (an IntEnum spun until its CPU limit)."""
    return not INT_MIN <= value < INT_END


def big_ints(value: Any) -> Any:
    """``value`` with each int beyond msgpack's range an extension value."""
    if isinstance(value, int) and not isinstance(value, bool) and beyond_msgpack(value):
        return msgspec.msgpack.Ext(BIG_INT, str(value).encode())
    if isinstance(value, dict):
        return {k: big_ints(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [big_ints(v) for v in value]
    return value


def clone_value(code: int, data: memoryview) -> Any:
    """The ``ext_hook`` of what :func:`clone_encode` wrote."""
    if code == BIG_INT:
        return int(bytes(data))
    raise TypeError(f"a stored value has an unknown extension type {code}")


#: Reads what :func:`clone_encode` wrote (storage, queue messages).
CLONE_DECODER = msgspec.msgpack.Decoder(ext_hook=clone_value)


def clone_encode(value: Any, refuse: Callable[[Any], Exception] = data_clone_error) -> bytes:
    """``value`` as msgpack, the stand-in for V8's structured clone. A value it
    cannot carry raises ``refuse(that value)``: by default
    :func:`data_clone_error`, as Cloudflare's queues and storage do. An int
    beyond msgpack's 64 bits is an extension value (:data:`BIG_INT`), found
    only when the plain encoding overflows."""
    try:
        return _CLONE_ENCODER.encode(value)
    except _Unclonable as exc:
        raise refuse(exc.value) from None
    except OverflowError:
        try:
            return _CLONE_ENCODER.encode(big_ints(value))
        except _Unclonable as exc:
            raise refuse(exc.value) from None


def _plain(value: Any, where: str) -> None:
    try:
        msgspec.msgpack.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BindingTypeError(f"{where}: arguments must be plain data (str, numbers, bool, None, "
                        f"bytes, lists, dicts): {exc}") from None


async def call(binding: str, method: str, args: list[Any], body: Any = None
               ) -> tuple[Any, bytes | IncomingBody | None]:
    """Call ``method`` of ``binding`` in the supervisor; ``(value, body)``.

    ``body`` (bytes, str, or an async iterator of bytes) is sent inline
    when small, else streamed with credit. The returned body is bytes or,
    when large, an :class:`IncomingBody` that streams on demand.
    """
    runtime = workers._runtime
    parent = workers.current_invocation.get()
    if runtime is None or parent == 0 or parent not in runtime.invocations:
        raise RuntimeError(f"{method}() can only be called while handling a request "
                           "(not at import time)")
    try:
        packed = msgspec.msgpack.encode(args)
    except TypeError:
        args = plain(args)  # to_js(...) gives bytes subclasses
        _plain(args, f"{method}()")
        packed = msgspec.msgpack.encode(args)
    except (ValueError, OverflowError):
        _plain(args, f"{method}()")
        raise
    fields: dict[str, Any] = {"args": args}
    if len(packed) > MAX_INLINE_ARGS:
        if body is not None:
            raise TypeError(f"{method}(): the arguments are too large")
        fields = {"args_in_body": True}
        body = packed
    if isinstance(body, str):
        body = body.encode()
    elif isinstance(body, (bytes, bytearray, memoryview)) and type(body) is not bytes:
        body = bytes(body)
    call_id = runtime._next_call
    runtime._next_call -= 1
    future = runtime.loop.create_future()
    runtime.calls[call_id] = future
    sending: asyncio.Task | None = None
    fields["body"], out = runtime.send_body(body, call_id)
    try:
        runtime.send(BindingCall(call=call_id, parent=parent, binding=binding, method=method,
                                 **fields))
    except BaseException:  # MessageTooLarge (a huge key, SQL text...): nothing was sent
        runtime.calls.pop(call_id, None)
        runtime.outgoing.pop(call_id, None)
        raise
    if out is not None:
        sending = runtime.loop.create_task(pump(body, out))
    try:
        result = await future
    except asyncio.CancelledError:
        runtime.send(Abort(call_id, "caller cancelled"))
        if sending is not None:
            sending.cancel()
        raise
    finally:
        runtime.calls.pop(call_id, None)
        if sending is not None and sending.done():
            runtime.outgoing.pop(call_id, None)
    if isinstance(result, SubFailed):
        if sending is not None:
            sending.cancel()
            runtime.outgoing.pop(call_id, None)
        raise JsException(result.error.name, result.error.message)
    return result.value, runtime.receive_body(result.body, call_id)


async def read(body: bytes | IncomingBody | None) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    return await body.read_all()


async def iterate(body: bytes | IncomingBody | None):  # type: ignore[no-untyped-def]
    """A body as an async iterator of bytes (a ReadableStream's stand-in)."""
    if isinstance(body, IncomingBody):
        async for chunk in body:
            yield chunk
    elif body:
        yield body


def stream_of(body: bytes | IncomingBody | None, owner: Any = None) -> ReadableStream:
    """A binding's body (an R2 object's, a KV value's) as a ReadableStream
    that knows what it reads: returned as a Response's body unread, it keeps
    its length (the client gets a Content-Length, as from workerd). Its
    ``owner``'s body is used at the first read."""
    return ReadableStream(iterate(body), body or None, owner=owner)


def stream_value(value: Any, where: str) -> Any:
    """A value to send as a body: bytes, str, or an async iterator of bytes."""
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return value
    if isinstance(value, workers.Request | workers.Response):
        return value.body
    if isinstance(value, Blob):
        return value._data
    if hasattr(value, "__aiter__"):
        return value
    raise BindingTypeError(f"{where} accepts only strings, bytes and async iterators of bytes "
                    f"(ReadableStreams) as values, not {type(value).__name__}")


class GenericBinding:
    """A brokered binding this SDK has no class for yet: every attribute is
    a method call the supervisor answers (or refuses, by name)."""

    def __init__(self, name: str, kind: str) -> None:
        self._name = name
        self._kind = kind

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)

        async def invoke(*args: Any) -> Any:
            value, _ = await call(self._name, method, list(args))
            return wrap(value)

        return invoke

    def __repr__(self) -> str:
        return f"<{self._kind} binding {self._name}>"


#: The ``env`` class of each binding type (metadata ``type``), filled by
#: :func:`kind` as the modules of this package are imported.
KINDS: dict[str, Callable[[str], Any]] = {}


def kind(name: str) -> Callable[[type], type]:
    """Class decorator: the ``env`` object of bindings of type ``name``."""

    def add(cls: type) -> type:
        KINDS[name] = cls
        return cls

    return add


def make(kind_: str, name: str) -> Any:
    """The ``env`` object of a binding of type ``kind_``."""
    factory = KINDS.get(kind_)
    return factory(name) if factory is not None else GenericBinding(name, kind_)


def _load() -> None:
    # Every module of this package, imported now, at zygote time: the jail
    # has no file system to import from later.
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_load()


__all__ = ["AttrDict", "AttrList", "JsException", "call", "clone_encode", "data_clone_error", "make",
           "options", "plain", "wrap"]
