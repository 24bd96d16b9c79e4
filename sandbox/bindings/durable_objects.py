"""``env.COUNTER``: a Durable Object namespace, its ids and stubs.

Ids are 64 hex digits, as Cloudflare's: ``idFromName`` derives one from the
name (the same name always gives the same object of this binding),
``newUniqueId`` draws a random one, ``idFromString`` checks one. The child
never sees which class, script or namespace the binding reaches: a stub's
calls name the binding and the id, and the supervisor resolves the rest.

RPC arguments and results travel as plain data (str, numbers, bool, None,
bytes, lists, dicts) and what Cloudflare's Python RPC converts beyond it
(datetimes, sets, exceptions, Blobs, Requests and Responses: :mod:`.rpc_codec`);
dicts come back with attribute access, bytes as ``memoryview`` (Pyodide's
conversion of a Uint8Array). What structured clone cannot copy is a
``DataCloneError``. An exception in the object reaches
the caller as ``pyodide.ffi.JsException`` with its name and message.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from .. import workers
from . import (
    CLONE_DECODER,
    AttrDict,
    AttrList,
    JsException,
    call,
    clone_encode,
    data_clone_error,
    js_number,
    kind,
    read,
    rpc_codec,
    wrap,
)

_ID = re.compile(r"[0-9a-f]{64}")


class DurableObjectId:
    """An object's id: ``str(id)`` / ``id.toString()`` is its 64 hex digits."""

    __slots__ = ("_hex", "name")

    def __init__(self, hex_: str, name: str | None = None) -> None:
        self._hex = hex_
        self.name = name

    def toString(self) -> str:  # noqa: N802 - Workers API name
        return self._hex

    to_string = toString

    def equals(self, other: Any) -> bool:
        return isinstance(other, DurableObjectId) and other._hex == self._hex

    def __eq__(self, other: object) -> bool:
        return self.equals(other)

    def __hash__(self) -> int:
        return hash(self._hex)

    def __str__(self) -> str:
        return self._hex

    def __repr__(self) -> str:
        return f"DurableObjectId({self._hex!r})"


def encode(value: Any, where: str, *, rpc: bool = False) -> bytes:
    """``value`` as structured clone carries it for storage, attachments and
    (``rpc``) RPC arguments and results: what it cannot carry is Cloudflare's
    DataCloneError (see :func:`clone_encode`)."""
    try:
        if rpc:
            rpc_codec.refuse_disabled(value)
            # (A function never gets here: rpc_codec.to_wire made it a stub.)
            return clone_encode(rpc_codec.to_wire(value), data_clone_error)
        return clone_encode(value, data_clone_error)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{where}: only plain data can be sent (str, numbers, bool, None, bytes, "
                        f"lists, dicts, datetimes): {exc}") from None


async def encode_rpc(value: Any, where: str) -> tuple[bytes, list[int]]:
    """An RPC call's arguments or result, as :func:`encode` sends them, after
    reading the bodies of the requests and responses among them; and the
    functions they carry (the frame's ``functions``: sandbox.bindings.rpc_stubs)."""
    value = await rpc_codec.buffered(value)
    return rpc_codec.sending(value, lambda v: encode(v, where, rpc=True))


def rpc_response(data: bytes, functions: list[int]) -> workers.Response:
    """An RPC result as the response that carries it; the functions it
    names ride with it to the ResponseStart (sandbox.child)."""
    response = workers.Response(data)
    if functions:
        response._rpc_functions = functions  # type: ignore[attr-defined]
    return response


def decode(data: bytes) -> Any:
    return wrap(CLONE_DECODER.decode(data)) if data else None


def rpc_value(value: Any) -> Any:
    """Plain data as Python code receives it over Workers RPC on Cloudflare:
    workers-py's ``python_from_rpc`` converts with Pyodide's ``to_py``, which
    makes every ArrayBuffer and typed array a ``memoryview``, at any depth
    (workers-py's own RPC test asserts it). Code written for Cloudflare calls
    ``.tobytes()`` on it; dicts and lists are as :func:`wrap` makes them."""
    if isinstance(value, bytes):
        return memoryview(value)
    if isinstance(value, dict):
        return AttrDict({k: rpc_value(v) for k, v in value.items()})
    if isinstance(value, list):
        return AttrList(rpc_value(v) for v in value)
    return js_number(value)  # a float 2.0 crossed as the Number 2: Pyodide's int


def decode_result(data: bytes, functions: list[int] | tuple[int, ...] = ()) -> Any:
    """An RPC call's result, as :func:`encode` sent it (see :func:`rpc_value`),
    its functions stubs of ``functions`` (the handles the supervisor granted)."""
    return rpc_value(rpc_codec.receiving(data, functions)) if data else None


def decode_args(data: bytes, functions: list[int] | tuple[int, ...] = ()) -> list[Any]:
    """An RPC call's argument list, as :func:`encode` sent it (see :func:`rpc_value`)."""
    args = rpc_codec.receiving(data, functions) if data else []
    if not isinstance(args, list):
        raise TypeError("an RPC call's arguments must be a list")
    return [rpc_value(a) for a in args]


class DurableObjectStub:
    """``namespace.get(id)``: call the object's methods, or ``fetch`` it."""

    def __init__(self, binding: str, id_: DurableObjectId) -> None:
        self._binding = binding
        self.id = id_
        self.name = id_.name

    async def fetch(self, resource: Any, *extra: Any, method: str | None = None, headers: Any = None,
                    body: Any = None, **init: Any) -> workers.Response:
        workers.one_positional(extra)
        request = resource
        if not isinstance(resource, workers.Request) or any(v is not None for v in (method, headers, body)):
            request = workers.Request(resource, method=method, headers=headers, body=body)
        workers.fetchable(request)
        value, out = await call(self._binding, "fetch",
                                [self.id._hex, self.name, request.method, request.url,
                                 list(request.headers.items())], request._body)
        response = workers.response_with(value["status"], out, None, value.get("status_text", ""))
        response.headers = workers.Headers(value["headers"])
        return response

    def dup(self) -> DurableObjectStub:
        """A copy of the stub (Cloudflare's reserved ``dup``: never an RPC call)."""
        return DurableObjectStub(self._binding, self.id)

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        async def rpc(*args: Any, **kwargs: Any) -> Any:
            # Keywords travel as one trailing object, as Pyodide passes them
            # to JavaScript in Cloudflare's SDK: the method gets a dict last.
            values = [*args, kwargs] if kwargs else list(args)
            packed, functions = await encode_rpc(values, f"{method}()")
            head = [self.id._hex, self.name, method, packed]
            value, body = await call(self._binding, "call", [*head, functions] if functions else head)
            returned = value.get("functions", ()) if isinstance(value, dict) else ()
            return decode_result(await read(body), returned)

        rpc.__name__ = method
        return rpc

    def __repr__(self) -> str:
        return f"<DurableObjectStub {self.id._hex[:12]}...>"


#: Cloudflare's jurisdictions for Durable Objects.
JURISDICTIONS = ("eu", "fedramp", "fedramp-high")


@kind("durable_object_namespace")
class DurableObjectNamespace:
    def __init__(self, name: str, jurisdiction: str = "") -> None:
        self._name = name
        self._jurisdiction = jurisdiction

    def jurisdiction(self, name: str) -> DurableObjectNamespace:
        """The subnamespace whose objects live in jurisdiction ``name``. One host
        is one place, but as on Cloudflare its ids are its own: a name gives
        another object there than in the namespace itself."""
        if name not in JURISDICTIONS:
            raise JsException("TypeError", f"Invalid jurisdiction {name!r}: use one of "
                                           f"{', '.join(JURISDICTIONS)}")
        return DurableObjectNamespace(self._name, name)

    def idFromName(self, name: str) -> DurableObjectId:  # noqa: N802 - Workers API name
        if not isinstance(name, str):
            raise TypeError("idFromName() takes a string")
        salt = b"corral-do\0" + (self._jurisdiction.encode() + b"\0" if self._jurisdiction else b"")
        return DurableObjectId(hashlib.sha256(salt + name.encode()).hexdigest(), name)

    def newUniqueId(self, options: Any = None, **keywords: Any) -> DurableObjectId:  # noqa: N802
        return DurableObjectId(secrets.token_hex(32))

    def idFromString(self, hex_id: str) -> DurableObjectId:  # noqa: N802 - Workers API name
        if not isinstance(hex_id, str) or not _ID.fullmatch(hex_id):
            raise JsException("TypeError",
                              "Invalid Durable Object ID. Durable Object IDs must be 64 hex digits.")
        return DurableObjectId(hex_id)

    def get(self, id_: Any, options: Any = None, **keywords: Any) -> DurableObjectStub:
        if not isinstance(id_, DurableObjectId):
            raise TypeError("get() takes a DurableObjectId (from idFromName, newUniqueId or "
                            "idFromString)")
        return DurableObjectStub(self._name, id_)

    def getByName(self, name: str, options: Any = None, **keywords: Any) -> DurableObjectStub:  # noqa: N802
        return self.get(self.idFromName(name))

    id_from_name = idFromName
    new_unique_id = newUniqueId
    id_from_string = idFromString
    get_by_name = getByName

    def __repr__(self) -> str:
        return f"<DurableObjectNamespace {self._name}>"
