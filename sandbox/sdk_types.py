"""The parts of Cloudflare's Python SDK that are plain data: Blob, File,
FormData, the attribute-dict shape of binding results, RPC conversions.

On Cloudflare these wrap JavaScript objects; here values are already Python,
so each keeps the SDK's names and shapes (``JsDict`` results that allow
``result.key`` as well as ``result["key"]``, ``None`` for JavaScript's null)
without a JavaScript host behind them.
"""

from __future__ import annotations

import datetime
import email.parser
import email.policy
import time
import urllib.parse
import uuid
from collections.abc import Iterator, MutableMapping
from typing import Any

__all__ = ["JsDict", "Blob", "File", "FormData", "python_to_rpc", "python_from_rpc",
           "encode_form", "parse_form"]


#: The dict methods a field of the same name would hide.
_DICT_METHODS = frozenset(name for name in dir(dict) if not name.startswith("_"))


class JsDict(dict):
    """A dict that also answers attribute access, as a JavaScript object
    converted by Pyodide would (``result.meta.changes``, ``event.scriptName``).
    The one such class of the SDK: binding results, RPC values and tail
    workers' trace events all are one.

    A field named like a dict method gives the field (``listing.keys`` is
    KV's list of keys, ``row.items`` a column), and stays callable as the
    method: ``json.dumps(row)``, ``row.items()`` and ``row.get(...)`` work as
    on the SDK's dict whatever the columns are called. A None or bool field
    (which cannot be made callable) leaves the method."""

    def __getattribute__(self, name: str) -> Any:
        if name[:1] != "_" and dict.__contains__(self, name):
            value = dict.__getitem__(self, name)
            if name not in _DICT_METHODS:
                return value
            return _callable_as(value, super().__getattribute__(name))
        return super().__getattribute__(name)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def to_py(self, **_options: Any) -> JsDict:
        """Pyodide's ``to_py(depth=..., default_converter=...)``: already Python."""
        return self

    # The rest of a JsProxy's object API, as Pyodide has it for a JS object.
    typeof = "object"

    def as_object_map(self, **_options: Any) -> JsDict:
        return self

    def object_keys(self) -> JsList:
        return JsList(dict.keys(self))

    def object_values(self) -> JsList:
        return JsList(dict.values(self))

    def object_entries(self) -> JsList:
        return JsList(JsList(item) for item in dict.items(self))


class JsList(list):
    """A JavaScript array, as code written for Pyodide uses one: a list with
    ``push`` and ``length`` (``js.Array.new()``, ``to_js(list)``; workers-py
    collects proxies to destroy so)."""

    @property
    def length(self) -> int:
        return len(self)

    def push(self, *items: Any) -> int:
        self.extend(items)
        return len(self)

    def to_py(self, **_options: Any) -> list[Any]:
        return list(self)


class _CallsMethod:
    """A field's value that is also the dict method it shares its name with."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return object.__getattribute__(self, "_method")(*args, **kwargs)


class _CallableList(_CallsMethod, list):
    def to_py(self) -> _CallableList:
        return self


class _CallableStr(_CallsMethod, str):
    pass


class _CallableInt(_CallsMethod, int):
    pass


class _CallableFloat(_CallsMethod, float):
    pass


class _CallableJsDict(_CallsMethod, JsDict):
    pass


#: In order: a bool is an int, and stays the method.
_CALLABLE: tuple[tuple[type, type | None], ...] = (
    (bool, None), (list, _CallableList), (str, _CallableStr), (int, _CallableInt),
    (float, _CallableFloat), (dict, _CallableJsDict))


def _callable_as(value: Any, method: Any) -> Any:
    """``value`` that also calls ``method`` (see JsDict); ``method`` itself
    for a value no such type can hold (None, a bool, bytes)."""
    for base, kind in _CALLABLE:
        if isinstance(value, base):
            if kind is None:
                break
            both = kind(value)
            object.__setattr__(both, "_method", method)
            return both
    return method


class CfProperties(JsDict):
    """``request.cf`` of an incoming request. Cloudflare's edge fills in where
    the client is (``country``, ``colo``, ``asn``, ...); a self-hosted Corral
    knows only what the request itself says, and a field it does not know is
    None rather than an error."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.get(name)


def python_from_rpc(value: Any) -> Any:
    """A value received from a binding or an RPC call, in the SDK's Python shape."""
    if isinstance(value, dict):
        return JsDict((k, python_from_rpc(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [python_from_rpc(v) for v in value]
    from .pyodide_shim import jsnull
    return None if value is jsnull else value


def python_to_rpc(value: Any) -> Any:
    """A value to hand to a binding or an RPC call, checked as workers-py's
    ``python_to_rpc`` checks it (``_raise_on_disabled_type``, the rule the
    RPC codec applies: sandbox.bindings.rpc_codec.refuse_disabled): a tuple,
    a bytearray or an awaitable anywhere is a ``TypeError``. What RPC
    carries passes as itself (dates, sets, exceptions, Blobs, Requests and
    Responses: the RPC codec converts them on the wire), dicts and lists are
    copied with their keys as strings, a memoryview is its bytes; anything
    else is refused by name."""
    from .bindings.rpc_codec import refuse_disabled  # it imports this module

    refuse_disabled(value)
    return _to_rpc(value)


def _to_rpc(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool, bytes)):
        return value
    if isinstance(value, dict):
        return {str(k): _to_rpc(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_rpc(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {_to_rpc(v) for v in value}
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, (Blob, FormData, datetime.datetime, datetime.date, BaseException)):
        return value
    from . import workers  # the SDK module imports this one

    if isinstance(value, (workers.Request, workers.Response)):
        return value
    if callable(value) and not isinstance(value, type):
        return value  # a function crosses as a stub to call back (supervisor.pool.rpc_stubs)
    raise TypeError(f"{type(value).__name__} cannot be sent over RPC: use plain data "
                    "(str, numbers, bool, None, bytes, lists, dicts, sets, datetimes, functions)")


class Blob:
    """Immutable bytes with a MIME type (``Blob(["a", b"b"], type="text/plain")``)."""

    def __init__(self, blob_parts: Any = None, type: str = "",  # noqa: A002
                 endings: str = "transparent", content_type: str | None = None) -> None:
        if content_type is not None:  # the SDK's spelling
            type = content_type  # noqa: A001
        elif isinstance(blob_parts, Blob) and not type:
            type = blob_parts.type  # noqa: A001 - Blob(blob) keeps its type, Blob([blob]) does not
        if blob_parts is None:
            data = b""
        elif isinstance(blob_parts, (bytes, bytearray, memoryview, str, Blob)):
            data = _part_bytes(blob_parts)
        else:
            data = b"".join(_part_bytes(p) for p in blob_parts)
        self._data = data
        self.type = type.lower()

    @property
    def content_type(self) -> str:
        return self.type

    @property
    def js_object(self) -> Blob:
        """What the SDK's Blob wraps (``blob.js_object.type``): here the Blob itself."""
        return self

    @property
    def size(self) -> int:
        return len(self._data)

    async def bytes(self) -> bytes:
        return self._data

    arrayBuffer = bytes  # noqa: N815 - Web API name
    array_buffer = bytes

    async def text(self) -> str:
        return self._data.decode("utf-8", errors="replace")

    def slice(self, start: int = 0, end: int | None = None, content_type: str = "") -> Blob:
        return Blob([self._data[start:end]], type=content_type)

    def __repr__(self) -> str:
        return f"<Blob {self.size} bytes {self.type!r}>"


class File(Blob):
    """A Blob with a name and a modification time."""

    def __init__(self, blob_parts: Any, filename: str, type: str = "",  # noqa: A002
                 endings: str = "transparent", last_modified: int | None = None,
                 content_type: str | None = None, **kwargs: Any) -> None:
        # The SDK's order (parts, name, content type, endings, last modified).
        super().__init__(blob_parts, type=type, endings=endings, content_type=content_type)
        if isinstance(blob_parts, File) and last_modified is None:
            last_modified = blob_parts.last_modified  # File(file) keeps its time, as in the SDK
        self.name = filename
        #: Milliseconds since the epoch, an integer as JavaScript's ``lastModified``.
        self.last_modified = int(kwargs.get("lastModified", last_modified) or time.time() * 1000)

    lastModified = property(lambda self: self.last_modified)  # noqa: N815

    def __repr__(self) -> str:
        return f"<File {self.name!r} {self.size} bytes {self.type!r}>"


def _part_bytes(part: Any) -> bytes:
    if isinstance(part, Blob):
        return part._data
    if isinstance(part, str):
        return part.encode()
    if isinstance(part, (bytes, bytearray, memoryview)):
        return bytes(part)
    raise TypeError(f"a Blob part must be str, bytes or a Blob, not {type(part).__name__}")


class FormData(MutableMapping):
    """Ordered, multi-valued form fields (``append``, ``get``, ``get_all``, ``set``, ``delete``).

    A ``MutableMapping`` of names, as the SDK's FormData is: iterating gives
    the names, ``form[name]`` the first value, ``del form[name]`` drops them
    all, and ``pop``, ``update`` and ``setdefault`` come with it."""

    def __init__(self, init: Any = None) -> None:
        self._items: list[tuple[str, Any]] = []
        if init is None:
            return
        pairs = init.items() if hasattr(init, "items") else init
        for name, value in pairs:
            self.append(name, value)

    def append(self, name: str, value: Any, filename: str | None = None) -> None:
        self._items.append((str(name), _form_value(value, filename)))

    @property
    def js_object(self) -> FormData:
        """What the SDK's FormData wraps: here the FormData itself."""
        return self

    def set(self, name: str, value: Any, filename: str | None = None) -> None:
        self.delete(name)
        self.append(name, value, filename)

    def get(self, name: str, default: Any = None) -> Any:
        return next((v for n, v in self._items if n == name), default)

    def get_all(self, name: str) -> list[Any]:
        return [v for n, v in self._items if n == name]

    getAll = get_all  # noqa: N815

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self._items)

    def delete(self, name: str) -> None:
        self._items = [(n, v) for n, v in self._items if n != name]

    def items(self) -> list[tuple[str, Any]]:
        return list(self._items)

    entries = items

    def keys(self) -> Iterator[str]:
        """Every entry's name, repeats included, as JavaScript's FormData.keys()."""
        return iter([n for n, _ in self._items])

    def values(self) -> list[Any]:
        return [v for _, v in self._items]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has(name)

    def __getitem__(self, name: str) -> Any:
        """The first value, or None for a name not there: the SDK's is
        JavaScript's ``get()``, whose null is None (not a KeyError)."""
        return self.get(name)

    def __setitem__(self, name: str, value: Any) -> None:
        if isinstance(value, list):  # the SDK's check: append() adds a second value
            raise TypeError("Expected single item in arguments to FormData.__setitem__")
        self.set(name, value)

    def __delitem__(self, name: str) -> None:
        self.delete(name)  # JavaScript's delete(): a name not there is no error, as in the SDK

    def __iter__(self) -> Iterator[str]:
        return self.keys()

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"FormData({self._items!r})"


def _form_value(value: Any, filename: str | None) -> Any:
    if isinstance(value, Blob):
        if filename is not None or not isinstance(value, File):
            return File([value], filename or "blob", type=value.type)
        return value
    return str(value)


def encode_form(form: FormData) -> tuple[bytes, str]:
    """``multipart/form-data`` bytes and content type, as fetch sends a FormData body."""
    boundary = "----corral" + uuid.uuid4().hex
    out = bytearray()
    for name, value in form.items():
        quoted = name.replace('"', "%22")
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, File):
            out += (f'Content-Disposition: form-data; name="{quoted}"; '
                    f'filename="{value.name.replace(chr(34), "%22")}"\r\n').encode()
            out += f"Content-Type: {value.type or 'application/octet-stream'}\r\n\r\n".encode()
            out += value._data
        else:
            out += f'Content-Disposition: form-data; name="{quoted}"\r\n\r\n'.encode()
            out += value.encode()
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def parse_form(body: bytes, content_type: str) -> FormData:
    """A request body as FormData: urlencoded or multipart (``request.form_data()``)."""
    form = FormData()
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        for name, value in urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
            form.append(name, value)
        return form
    if kind != "multipart/form-data":
        raise TypeError(f"cannot parse a {kind or 'body without content-type'} body as form data: "
                        "expected multipart/form-data or application/x-www-form-urlencoded")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise TypeError("the multipart/form-data body could not be parsed (bad boundary?)")
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name is None:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            form.append(name, File([payload], filename, type=part.get_content_type()))
        else:
            form.append(name, payload.decode(part.get_content_charset() or "utf-8", "replace"))
    return form

