"""Workers RPC values beyond plain data, as Cloudflare's Python SDK converts them.

workers-py's ``python_to_rpc`` hands JavaScript a ``Date`` for a
``datetime``, a ``Set`` for a ``set``, an ``Error`` for an exception and the
Blob itself for a Blob; ``python_from_rpc`` turns them back into a naive
``datetime`` (millisecond precision), a ``set``, an exception and a Blob.
A ``Request`` or ``Response`` crosses as itself (Workers RPC carries them),
its body read into bytes first (:func:`buffered`; the sender's copy stays
readable, where JavaScript would have transferred it).

It refuses a tuple and a bytearray anywhere in the value with a
``TypeError`` ("<class 'tuple'> cannot be sent over RPC."), where msgpack
would have carried a tuple as a list and a bytearray as bytes. A function
(any callable but a class) crosses as a stub to call back
(:mod:`.rpc_stubs`): the value holds its place in the frame's list of
functions, which :func:`sending` collects and :func:`receiving` reads.

msgpack carries the extra types as extension values (msgspec would write a
``datetime`` as an RFC 3339 string and a ``set`` as an array: the callee got
a ``str`` and a list). Only RPC arguments and results use this codec;
storage keeps its own encoding.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import inspect
import math
import struct
import uuid
from typing import Any

import msgspec

from .. import workers
from ..pyodide_shim import JsException
from ..sdk_types import Blob, File
from . import BIG_INT, beyond_msgpack, data_clone_error

#: Extension codes: one per type structured clone carries that msgpack has not
#: (BIG_INT, 7, is storage's too: an int beyond 64 bits).
DATE, SET, ERROR, BLOB, REQUEST, RESPONSE = 1, 2, 3, 4, 5, 6
#: A function: its index in the frame's ``functions`` list (8: 7 is BIG_INT).
STUB = 8

#: The functions of the value being encoded (their ``rpc_stubs.entry``),
#: and the handles of the one being decoded: set only around one
#: synchronous encode or decode, so no other task sees them.
_sending: list[int] | None = None
_receiving: list[int] | tuple[int, ...] = ()


def sending(value: Any, encode: Any) -> tuple[bytes, list[int]]:
    """``encode(value)`` and the functions it carries, each exported (or,
    a stub received, passed on); none are kept if the encoding fails."""
    global _sending
    _sending = entries = []
    try:
        data = encode(value)
    except BaseException:
        from .rpc_stubs import forget

        forget(entries)
        raise
    finally:
        _sending = None
    return data, entries


def receiving(data: bytes, handles: list[int] | tuple[int, ...]) -> Any:
    """``decode(data)`` with its functions as stubs of ``handles``."""
    global _receiving
    _receiving = handles
    try:
        return decode(data)
    finally:
        _receiving = ()

_DOUBLE = struct.Struct(">d")

#: What the SDK refuses wherever it is in the value (``_raise_on_disabled_type``).
_REFUSED = (tuple, bytearray)


#: Leaves that are never refused, told apart before the awaitable check.
_PLAIN = (str, int, float, bytes, type(None))


def refuse_disabled(value: Any) -> None:
    """Raise the SDK's ``TypeError`` for a tuple, a bytearray or an awaitable
    anywhere in ``value`` (an awaitable: what an ``async def`` RPC method
    returned un-awaited, as workerd awaits a method's result only once)."""
    if isinstance(value, _REFUSED):
        raise TypeError(f"{type(value)} cannot be sent over RPC.")
    if isinstance(value, dict):
        for item in value.values():
            refuse_disabled(item)
    elif isinstance(value, (list, set, frozenset)):
        for item in value:
            refuse_disabled(item)
    elif not isinstance(value, _PLAIN) and inspect.isawaitable(value):
        # The caller is expected to await it first, as the SDK says.
        raise TypeError(f"Awaitable {type(value)} cannot be sent over RPC.")


async def buffered(value: Any) -> Any:
    """``value`` with the body of each Request and Response in it read into
    bytes, so that :func:`to_wire` (which cannot wait) can carry it."""
    if isinstance(value, dict):
        return {k: await buffered(v) for k, v in value.items()}
    if isinstance(value, list):
        return [await buffered(v) for v in value]
    if isinstance(value, (workers.Request, workers.Response)) \
            and not (value._body is None or type(value._body) is bytes):
        value._body = await value.bytes()
        value._body_used = False
    return value


def _message(value: workers.Request | workers.Response) -> list[Any]:
    if not (value._body is None or type(value._body) is bytes):
        raise TypeError(f"a {type(value).__name__} with a streamed body must be read first (buffered())")
    head = [value._method, value.url] if isinstance(value, workers.Request) else \
        [value.status, value.status_text]
    return [*head, [list(item) for item in value.headers.items()], value._body]


#: Types msgpack's encoder would carry by itself (as a string, a map, an
#: int) that workers-py's ``python_to_rpc`` does not convert and Pyodide
#: cannot: on Cloudflare each is a DataCloneError (workerd's Python RPC test
#: asserts it of a custom class, which these are).
_NOT_CLONED = (uuid.UUID, decimal.Decimal, enum.Enum, datetime.date, datetime.time, datetime.timedelta)


def _js_key(key: Any) -> Any:
    """A dict key as a JavaScript object's (workers-py converts a dict with
    ``Object.fromEntries``): a number's is its string (``2.0`` is ``"2"``)."""
    if isinstance(key, bool) or not isinstance(key, (int, float)):
        return key
    if isinstance(key, float) and key.is_integer():
        return str(int(key))
    return str(key)


def to_wire(value: Any) -> Any:
    """``value`` with its dates, sets, exceptions and Blobs as msgpack extensions
    (the rest as it is, for the encoder and its hook to judge)."""
    if isinstance(value, dict):
        return {_js_key(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_wire(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        # An int subclass (an IntEnum, http.HTTPStatus) crosses as its number, as Pyodide converts it.
        value = int(value)
        return msgspec.msgpack.Ext(BIG_INT, str(value).encode()) if beyond_msgpack(value) else value
    if isinstance(value, str) and type(value) is not str:
        return str(value)  # a str subclass (request.method, a StrEnum) crosses as a string, as there
    if isinstance(value, datetime.datetime):
        # JavaScript's Date holds whole milliseconds (its constructor truncates).
        return msgspec.msgpack.Ext(DATE, _DOUBLE.pack(math.trunc(value.timestamp() * 1000)))
    if isinstance(value, (set, frozenset)):
        return msgspec.msgpack.Ext(SET, _ENCODER.encode([to_wire(v) for v in value]))
    if isinstance(value, BaseException):
        name = value.name if isinstance(value, JsException) else "Error"
        return msgspec.msgpack.Ext(ERROR, _ENCODER.encode([name, str(value)]))
    if isinstance(value, Blob):
        file = [value.name, value.last_modified] if isinstance(value, File) else []
        return msgspec.msgpack.Ext(BLOB, _ENCODER.encode([value.type, value._data, *file]))
    if isinstance(value, workers.Request):
        return msgspec.msgpack.Ext(REQUEST, _ENCODER.encode(_message(value)))
    if isinstance(value, workers.Response):
        return msgspec.msgpack.Ext(RESPONSE, _ENCODER.encode(_message(value)))
    if _sending is not None and callable(value) and not isinstance(value, type):
        from .rpc_stubs import entry

        _sending.append(entry(value))
        return msgspec.msgpack.Ext(STUB, (len(_sending) - 1).to_bytes(4, "big"))
    if isinstance(value, _NOT_CLONED) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        raise data_clone_error(value)
    return value


def from_wire(code: int, data: memoryview) -> Any:
    """msgspec's ``ext_hook``: an extension value back as the SDK's Python type."""
    if code == DATE:
        # JavaScript's Date as Pyodide converts it: naive, in local time
        # (whole seconds, then the milliseconds: exact, no float rounding).
        seconds, ms = divmod(int(_DOUBLE.unpack(data)[0]), 1000)
        return datetime.datetime.fromtimestamp(seconds) + datetime.timedelta(milliseconds=ms)
    if code == BIG_INT:
        return int(bytes(data))
    if code == SET:
        return set(decode(bytes(data)))
    if code == ERROR:
        name, message = decode(bytes(data))
        return JsException(name, message)
    if code == BLOB:
        kind, content, *file = decode(bytes(data))
        if file:
            return File([content], file[0], type=kind, last_modified=file[1])
        return Blob([content], type=kind)
    if code == REQUEST:
        method, url, headers, body = decode(bytes(data))
        return workers.Request(url, method=method, headers=headers, body=body)
    if code == RESPONSE:
        status, status_text, headers, body = decode(bytes(data))
        return workers.response_with(status, body, workers.Headers(headers), status_text)
    if code == STUB:
        index = int.from_bytes(data, "big")
        if index >= len(_receiving):
            raise TypeError("an RPC value names a function it does not carry")
        from .rpc_stubs import RemoteFunction

        return RemoteFunction(_receiving[index])
    raise TypeError(f"an RPC value has an unknown extension type {code}")


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(ext_hook=from_wire)


def decode(data: bytes) -> Any:
    """What :func:`to_wire` and msgpack made of a value, as Python again."""
    return _DECODER.decode(data)
