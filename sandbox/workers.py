"""The ``workers`` module tenant code imports (SPEC.md section 3).

It mirrors the Python SDK of Cloudflare's Python Workers closely enough that
their code runs unmodified: ``WorkerEntrypoint``, ``Request``, ``Response``,
``fetch`` and ``env``, plus ``Headers``. Bodies are lazy and streamed: a body
nobody reads never crosses the channel, and a request or response passed on
untouched is forwarded by reference (see :mod:`protocol.messages`).

Everything that talks to the supervisor goes through :data:`_runtime`, set by
:mod:`sandbox.child` when the child starts.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import email.message
import http
import http.client
import json as _json
import re
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping
from sys import _getframe
from typing import Any

from protocol.http_grammar import TOKEN

from . import compat, content_coding
from .js_url import URLSearchParams
from .pyodide_shim import ArrayBuffer, JsException
from .sdk_types import Blob, CfProperties, File, FormData, JsDict, encode_form, parse_form
from .streams import IncomingBody
from .tail_call import is_tail as _is_tail
from .web_streams import ReadableStream

#: The child's runtime (a ``sandbox.child.Runtime``); None only in the zygote.
_runtime: Any = None
#: The invocation on whose behalf the running code works.
current_invocation: contextvars.ContextVar[int] = contextvars.ContextVar(
    "corral_invocation", default=0
)

__all__ = [
    "WorkerEntrypoint", "Request", "Response", "Headers", "fetch", "env", "Context",
    "PlatformError", "NetworkError", "DurableObject", "WorkflowEntrypoint", "FetchResponse", "Blob", "File",
    "FormData", "handler", "import_from_javascript", "patch_env", "python_from_rpc",
    "python_to_rpc", "waitUntil", "wait_until", "BlobEnding", "BlobValue", "Body", "FetchKwargs",
    "FormDataValue", "JSBody", "RequestInitCfProperties",
]


class PlatformError(JsException):
    """An error the platform raised into tenant code (``Worker not found``,
    a limit exceeded by a callee, an outbound fetch that failed).

    ``name`` is machine-readable (``"WorkerNotFound"``, ``"exceededCpu"``, ...);
    ``str(error)`` is the human message, as in Cloudflare's runtime.
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(name, message)


class NetworkError(PlatformError, OSError):
    """An outbound ``fetch`` that got no response: the connection failed or
    timed out, or a redirect was refused.

    Pyodide's ``pyfetch``, which Cloudflare's SDK wraps, raises ``OSError``
    for these, so tenants' ``except OSError:`` fallbacks must catch it; it
    stays a ``JsException`` too (``name`` is ``"FetchError"``, or
    ``"FetchTimeout"`` for a timeout). ``requests``, ``urllib3``, ``httpx``
    and ``urllib`` raise their own exception types for it
    (:mod:`sandbox.http_shims`).
    """

    #: SubFailed names that mean this.
    NAMES = frozenset({"FetchError", "FetchTimeout"})

    @property
    def timeout(self) -> bool:
        return self.name == "FetchTimeout"

    def __str__(self) -> str:
        return self.message


def platform_error(name: str, message: str) -> PlatformError:
    """The exception a failed call raises in tenant code."""
    cls = NetworkError if name in NetworkError.NAMES else PlatformError
    return cls(name, message)


# ---------------------------------------------------------------------------
# Headers
# ---------------------------------------------------------------------------

#: ``Request._cf`` of a request from a client, until ``request.cf`` is read.
INCOMING = object()


#: The default port of each scheme WHATWG's URL parser calls special: a URL
#: naming it explicitly is read back without it.
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


#: Redirect modes a Request takes: workerd's two, and the Fetch standard's
#: "error" (which workerd refuses; here the redirect fails the fetch).
REDIRECT_MODES = ("follow", "manual", "error")


def _redirect_mode(value: Any) -> str:
    """A Request's redirect mode, any case, checked where workerd checks it:
    at the constructor (it failed at the supervisor, as the platform's error)."""
    mode = str(value).lower()
    if mode not in REDIRECT_MODES:
        raise TypeError('Invalid redirect value, must be one of "follow", "manual" or "error"')
    return mode


class InvalidURL(JsException, TypeError):
    """workerd's TypeError for a URL that does not parse on its own (a
    Request's, a redirect's): a JsException named TypeError, and a Python
    TypeError, as the SDK raises it."""

    def __init__(self, message: str) -> None:
        super().__init__("TypeError", message)


def _absolute_url(url: str) -> str:
    """A Request's URL, as JavaScript's constructor takes it: one that does
    not parse on its own (``/path``, ``""``) is workerd's TypeError "Invalid
    URL" (it was taken, and failed only at ``fetch()``, if at all)."""
    from .js_url import URL

    if URL.parse(url) is None:
        raise InvalidURL(f"Invalid URL: {url[:200]}")
    return _normalized_url(url)


def _normalized_url(url: str) -> str:
    """As JavaScript's URL gives it back, which is what ``request.url`` is on
    Cloudflare: for http(s) and ws(s), the host in lower case, no default port
    (urllib3, so requests too, writes ``https://host:443/``: the outbound
    worker and the upstream see ``https://host/``), and "/" for no path."""
    parts = urllib.parse.urlsplit(url)
    default = DEFAULT_PORTS.get(parts.scheme)
    if default is None or not parts.netloc:
        return url
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host, port = hostport, None
    if not hostport.endswith("]"):  # "[::1]" has colons of its own
        head, colon, tail = hostport.rpartition(":")
        if colon:
            host, port = head, tail
    if port == "" or (port is not None and port.isdigit() and int(port) == default):
        port = None  # "host:" and "host:443" (https) are both "host"
    netloc = f"{userinfo}{at}{host.lower()}" + ("" if port is None else f":{port}")
    if netloc == parts.netloc and parts.path:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, path=parts.path or "/"))


def _text(value: str | bytes) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # as JavaScript's String(true)
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)


class HeaderError(JsException, TypeError):
    """workerd's ``TypeError`` for a header name that is not an HTTP token, or
    a value holding NUL, CR or LF or a character past U+00FF (a ByteString).
    Thrown where the header is set, as workerd does: such a header used to be
    found only when the response was sent (a 500, or an encoding error
    reported as the worker's exception to its caller)."""

    def __init__(self, what: str, text: str) -> None:
        super().__init__("TypeError", f"Invalid header {what}: {text[:100]!r}")


#: What a header's value may not hold (its name must be an HTTP token).
_BAD_HEADER_VALUE = re.compile(r"[\x00\r\n]|[^\x00-\xff]")


def _name(name: str | bytes) -> str:
    text = _text(name)
    if not TOKEN.fullmatch(text):
        raise HeaderError("name", text)
    return text.lower()


def _value(value: str | bytes) -> str:
    """A header value as the Fetch standard normalises it: without leading or
    trailing HTTP whitespace. Django's WSGI handler sends ``Set-Cookie`` as
    ``Morsel.output(header="")``, which starts with a space; workerd drops it,
    and a raw one would be refused at the edge."""
    text = _text(value).strip("\t\n\r ")
    if _BAD_HEADER_VALUE.search(text):
        raise HeaderError("value", text)
    return text


def _name_of(pair: tuple[str, str]) -> str:
    return pair[0]


class Headers(http.client.HTTPMessage):
    """Case-insensitive, multi-valued HTTP headers, iterated in the order of their names.

    Answers both the JS ``Headers`` API (``get``, ``set``, ``append``,
    ``has``, ``delete``) and ``http.client.HTTPMessage``, which is what
    Cloudflare's SDK hands Python code as ``request.headers``: it *is* one
    (``isinstance`` holds), so ``headers["X"]`` of a missing header is None
    and ``get_content_type()``, ``get_param()``, ``get_content_charset()``
    and ``as_string()`` work. ``get`` of a repeated header joins the values
    with ", " as fetch does. Setting a header replaces it, as JS's ``set``
    does (``HTTPMessage`` would add a second one).
    """

    #: ``_raw_items``: the frame's own list while the headers are as they
    #: arrived (None once changed), so that headers a worker passes on (a
    #: dispatcher forwarding its request and the response it got back) are
    #: not encoded again: two passes over every header of every request.
    #: ``_undecoded``: the frame's list of headers made from one
    #: (:meth:`_from_raw`), whose ``_items`` are decoded on first use
    #: (:meth:`__getattr__`): a user worker that never reads its request's
    #: headers (most answer from the path) is spared a str pair per header.
    __slots__ = ("_items", "_raw_items", "_undecoded")

    # What email.message.Message.__init__ would set, as class attributes:
    # every request's headers are made without running any __init__.
    policy = email.message.compat32
    _payload = None
    _charset = None
    _unixfrom = None
    _default_type = "text/plain"
    preamble = epilogue = None
    defects: list[Any] = []  # noqa: RUF012 - read only, as Message's own

    @property
    def _headers(self) -> list[tuple[str, str]]:
        """Message's own name for the list its methods read and edit in place
        (``set_param``, ``replace_header``): the frame's bytes are stale then."""
        self._raw_items = None
        return self._items

    @_headers.setter
    def _headers(self, items: list[tuple[str, str]]) -> None:
        self._raw_items = None
        self._items = [(name.lower(), value) for name, value in items]

    def __init__(self, init: Any = None) -> None:
        self._items: list[tuple[str, str]] = []
        self._raw_items: list[tuple[bytes, bytes]] | None = None
        if init is None:
            return
        if isinstance(init, Headers):
            self._items = list(init._items)
            self._raw_items = init._raw_items
            return
        # An HTTPMessage (a urllib or http.client response's headers, say)
        # iterates over its names alone, as a Mapping does.
        pairs = init.items() if isinstance(init, (Mapping, email.message.Message)) else init
        if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__iter__"):
            # The SDK's words (a str is iterable, but of characters, not pairs).
            raise TypeError("Received unexpected type for headers argument")
        for pair in pairs:
            if isinstance(pair, (str, bytes)) or len(pair) != 2:
                raise TypeError("Received unexpected type for headers argument: each header is a "
                                f"(name, value) pair, not {pair!r:.60}")
            name, value = pair
            self._items.append((_name(name), _value(value)))

    @classmethod
    def _from_raw(cls, raw: list[tuple[bytes, bytes]]) -> Headers:
        headers = cls.__new__(cls)  # every request's headers: no __init__ to run
        headers._undecoded = raw
        headers._raw_items = raw
        return headers

    def __getattr__(self, name: str) -> Any:
        """Only an attribute not found otherwise gets here: ``_items`` of
        headers made from a frame, before their first use (see ``__slots__``)."""
        if name != "_items":
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        try:
            raw = object.__getattribute__(self, "_undecoded")
        except AttributeError:
            raise AttributeError(name) from None
        items = self._items = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in raw]
        return items

    def _raw(self) -> list[tuple[bytes, bytes]]:
        if self._raw_items is not None:
            return list(self._raw_items)  # a copy: callers may add to theirs
        return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in self._items]

    def get(self, name: str, default: Any = None) -> Any:
        name = name.lower()
        values = [v for n, v in self._items if n == name]
        if not values:
            return default
        return ", ".join(values)

    def get_all(self, name: str, default: Any = None) -> Any:
        """As the SDK answers it over JavaScript's Headers: ``Set-Cookie`` values
        one by one, any other header's values joined into one (a list of one)."""
        name = name.lower()
        values = [v for n, v in self._items if n == name]
        if not values:
            return default
        return values if name == "set-cookie" else [", ".join(values)]

    getAll = get_all

    def getSetCookie(self) -> list[str]:  # noqa: N802 - the Fetch standard's name
        """Every ``Set-Cookie`` value, one by one (JavaScript's Headers; the
        SDK reads a response's cookies with it)."""
        return [v for n, v in self._items if n == "set-cookie"]

    get_set_cookie = getSetCookie

    def has(self, name: str) -> bool:
        name = name.lower()
        return any(n == name for n, _ in self._items)

    def set(self, name: str, value: str) -> None:
        name, value = _name(name), _value(value)
        self._raw_items = None
        self._items = [(n, v) for n, v in self._items if n != name]
        self._items.append((name, value))

    def append(self, name: str, value: str) -> None:
        name, value = _name(name), _value(value)
        self._raw_items = None
        self._items.append((name, value))

    def _set_default(self, name: str, value: str) -> None:
        """``name`` (lower case) is ``value`` unless already there: the type a
        body implies. One pass and no new list: a ``Response("...")`` does
        this on every request."""
        for present, _ in self._items:
            if present == name:
                return
        self._raw_items = None
        self._items.append((name, value))

    def delete(self, name: str) -> None:
        name = name.lower()
        self._raw_items = None
        self._items = [(n, v) for n, v in self._items if n != name]

    def items(self) -> list[tuple[str, str]]:
        """One pair per name, its values joined as :meth:`get` joins them
        (``Set-Cookie``'s one pair per value), in the order of the names, as
        the SDK builds a request's headers from JavaScript's Headers, which
        the Fetch standard's "sort and combine" iterates (workerd sorts them
        by name)."""
        names = self.keys()
        if len(names) == len(self._items):
            return sorted(self._items, key=_name_of)  # no name twice: nothing to join
        pairs: list[tuple[str, str]] = []
        for name in names:
            if name == "set-cookie":
                pairs += [(n, v) for n, v in self._items if n == name]
            else:
                pairs.append((name, self.get(name)))
        return pairs

    def keys(self) -> list[str]:
        """Each name once, sorted (the Fetch standard's iteration order)."""
        return sorted({n for n, _ in self._items})

    def values(self) -> list[str]:
        return [self.get(n) for n in self.keys()]

    entries = items

    def __getitem__(self, name: str) -> str | None:  # type: ignore[override]
        return self.get(name)  # None when missing, as HTTPMessage answers

    def __setitem__(self, name: str, value: str) -> None:
        self.set(name, value)

    def replace_header(self, name: str, value: str) -> None:  # type: ignore[override]
        """Message's in-place edit, held to the checks ``set`` makes (it wrote
        into the list as given: a CR LF in a value reached the frame)."""
        super().replace_header(_name(name), _value(value))

    def __delitem__(self, name: str) -> None:
        self.delete(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


# ---------------------------------------------------------------------------
# Bodies shared by Request and Response
# ---------------------------------------------------------------------------


def _encode_body(body: Any, headers: Headers, owner: str = "Response") -> Any:
    """Normalise a body given by tenant code; sets a content-type for str."""
    if body is None or type(body) is bytes or isinstance(body, IncomingBody):
        return body
    if isinstance(body, str):
        headers._set_default("content-type", "text/plain;charset=UTF-8")
        return body.encode()
    if isinstance(body, (bytes, bytearray, memoryview)):  # bytes subclasses too (to_js(...).buffer)
        return bytes(body)
    if isinstance(body, URLSearchParams):
        # A BodyInit as the Fetch standard extracts it (the SDK lists URLSearchParams).
        headers._set_default("content-type", "application/x-www-form-urlencoded;charset=UTF-8")
        return str(body).encode()
    if isinstance(body, FormData):
        data, content_type = encode_form(body)
        headers._set_default("content-type", content_type)
        return data
    if isinstance(body, Blob):
        if body.type:
            headers._set_default("content-type", body.type)
        return body._data
    if type(body) is ReadableStream and (source := body.source) is not None \
            and (type(source) is bytes or not source.started) \
            and body.coding == content_coding.coding_of(headers.get("content-encoding")):
        # Another body's stream handed on unread (``Response(request.body)``,
        # ``Response(resp.body, headers=...)``, ``Response(obj.body)`` of an R2
        # object): the body itself, so that it is passed on by reference (or
        # sent as the bytes it is) and keeps a length its source knows, as
        # workerd hands on the stream underneath. An encoded one only under
        # its own Content-Encoding: else it is read, decoded.
        return source
    if hasattr(body, "__aiter__"):
        return body
    if hasattr(body, "__iter__") and not isinstance(body, (dict, list)):
        chunks = body

        async def from_iterable() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)

        return from_iterable()
    # The SDK's wording (a body is str, bytes, a Blob, FormData or an async iterator of bytes).
    raise TypeError(f"Unsupported type in {owner}: {type(body).__name__}")


#: The Fetch standard's null body statuses: a response with one has no body.
NULL_BODY_STATUSES = frozenset({101, 204, 205, 304})


class NullBodyStatusError(JsException, TypeError):
    """JavaScript's ``TypeError`` for a body given with a null body status.
    The SDK surfaces the one ``Response(...)`` throws as a ``JsException``
    named TypeError, and ``Response.json``'s as Python's ``TypeError``: this
    is both, so code written against either catches it."""

    def __init__(self) -> None:
        super().__init__("TypeError", "Response with null body status (101, 204, 205, or 304) "
                                      "cannot have a body.")


class StatusRangeError(JsException, ValueError):
    """JavaScript's ``RangeError`` for a status a Response may not have:
    outside 200-599, or other than 101 with a WebSocket. The SDK surfaces the
    one ``Response(...)`` throws as a ``JsException`` named RangeError, and
    ``Response.json``'s as Python's ``ValueError`` (as Corral raised it so
    far): this is both."""

    def __init__(self, message: str) -> None:
        super().__init__("RangeError", message)


class StatusTextError(JsException, TypeError):
    """JavaScript's ``TypeError`` for a statusText that cannot be a reason
    phrase: workerd refuses any control character (CR and LF would let it
    write headers of its own), and RFC 9110 DEL too. Both a ``JsException``
    named TypeError and Python's ``TypeError``, as :class:`NullBodyStatusError`."""

    def __init__(self, text: str) -> None:
        super().__init__("TypeError", f"Invalid statusText {text!r}: a reason phrase may not contain "
                                      f"control characters (CR, LF, NUL, tab) or DEL")


#: What a statusText may not hold (workerd: any byte below 0x20; RFC 9110's
#: reason-phrase has no DEL either).
_BAD_STATUS_TEXT = re.compile(r"[\x00-\x1f\x7f]")


def _checked_status_text(text: str) -> str:
    """``text`` as a reason phrase, or :class:`StatusTextError`. A lone
    surrogate becomes U+FFFD, as a JavaScript string does on its way to
    workerd's UTF-8 (it could not cross to the supervisor otherwise)."""
    if type(text) is not str:
        raise TypeError(f"statusText must be a str, not {type(text).__name__}")
    if _BAD_STATUS_TEXT.search(text):
        raise StatusTextError(text)
    if not text.isascii():
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _check_null_body(body: Any) -> None:
    """A response with a null body status takes a body as workerd does: a
    zero-length buffer counts as none (Cloudflare still allows it, from the
    Workers beta), anything else throws; a stream does even when empty, its
    length being unknown."""
    if body is not None and not (isinstance(body, bytes) and not body):
        raise NullBodyStatusError


class BodyUsedError(OSError, TypeError):
    """A body read a second time. Pyodide's responses (and so the SDK's) raise
    an ``OSError`` for it and JavaScript a ``TypeError``: code written for
    either catches this one."""


class HttpStatusError(OSError):
    """What ``raise_for_status()`` raises for a 4xx or 5xx response, as
    ``pyodide.http.HttpStatusError``: the status, its text and the URL."""

    def __init__(self, status: int, status_text: str, url: str) -> None:
        self.status, self.status_text, self.url = status, status_text, url
        kind = "Client" if status < 500 else "Server"
        super().__init__(f"{status} {kind} Error: {status_text} for url: {url}")


class _Body:
    """Lazy body access for Request and Response."""

    _body: Any
    _body_used: bool
    #: The ReadableStream ``body`` gave, made once.
    _stream: ReadableStream | None = None
    #: The content coding of a body ``fetch()`` got, decoded as it is read
    #: (see sandbox.content_coding); handed on unread, it stays encoded.
    _coding: str | None = None

    @property
    def bodyUsed(self) -> bool:  # noqa: N802 - fetch API name
        return self._body_used

    body_used = bodyUsed

    async def bytes(self) -> bytes:
        if self._body_used:
            raise BodyUsedError("body already used")
        self._body_used = True
        body = self._body
        if body is None:
            return b""
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, IncomingBody):
            data = await body.read_all()
        else:
            parts = []
            async for chunk in body:
                parts.append(chunk.encode() if isinstance(chunk, str) else bytes(chunk))
            data = b"".join(parts)
        return content_coding.decode(data, self._coding) if self._coding else data

    async def buffer(self) -> ArrayBuffer:
        """The body as an ``ArrayBuffer`` (bytes with Pyodide's ``to_bytes()``,
        ``to_py()`` and ``byteLength``), as the SDK's ``buffer()`` gives it."""
        return ArrayBuffer(await self.bytes())

    arrayBuffer = buffer  # noqa: N815 - fetch API name

    async def memoryview(self) -> memoryview:
        return memoryview(await self.bytes())

    async def text(self) -> str:
        text = (await self.bytes()).decode("utf-8", errors="replace")
        if text.startswith("\ufeff") and compat.on("strip_bom_in_read_all_text", "do_not_strip_bom_in_read_all_text",
                                                   "2026-01-13"):
            return text[1:]  # workerd's readAllText strips a leading UTF-8 byte-order mark
        return text

    string = text  # Pyodide's older name

    async def json(self, **kwargs: Any) -> Any:
        """The body parsed as JSON; ``kwargs`` go to :func:`json.loads` (as in the SDK)."""
        return _json.loads(await self.bytes(), **kwargs)

    async def form_data(self) -> FormData:
        """The body as FormData (multipart or urlencoded), as ``formData()`` in JS."""
        content_type = self.headers.get("content-type") or ""  # type: ignore[attr-defined]
        return parse_form(await self.bytes(), content_type)

    formData = form_data  # noqa: N815 - fetch API name

    async def blob(self) -> Blob:
        content_type = self.headers.get("content-type") or ""  # type: ignore[attr-defined]
        return Blob([await self.bytes()], type=content_type)

    @property
    def body(self) -> ReadableStream | None:
        """The body as an async iterator of bytes that is also a JavaScript-style
        ``ReadableStream`` (``getReader()``). The same stream each time, as
        JavaScript's ``body`` is: looking at it uses nothing (a dispatcher may
        check ``request.body`` and still forward the request); reading from
        it uses the body."""
        if self._body is None:
            return None
        stream = self._stream
        if stream is None:
            if self._body_used:
                raise BodyUsedError("body already used")
            body = self._body
            if isinstance(body, bytes):

                async def once() -> AsyncIterator[bytes]:
                    yield body

                chunks: AsyncIterator[bytes] = once()
                source: Any = body
            else:
                chunks = body.__aiter__()
                source = body if isinstance(body, IncomingBody) else None
            if self._coding:
                chunks = content_coding.decoding(chunks, self._coding)
            stream = ReadableStream(chunks, source, owner=self, coding=self._coding)
            self._stream = stream
        return stream

    def _tee(self) -> Any:
        """Duplicate the body for ``clone()``. A body already read cannot be
        cloned, whatever holds it (JS and the SDK refuse). A stream is split
        as JavaScript's ``tee()`` splits it: each copy gets every chunk as it
        arrives (a proxy can stream the response while ``waitUntil(cache.put(
        key, response.clone()))`` reads the other), and the slower copy keeps
        what it has not read yet."""
        if self._body_used:
            raise BodyUsedError("cannot clone: body already used")
        body = self._body
        self._stream = None
        if body is None or isinstance(body, bytes):
            return body
        source = body.__aiter__()
        pending: tuple[collections.deque[bytes], collections.deque[bytes]] = (
            collections.deque(), collections.deque())
        done = False
        pulling = asyncio.Lock()

        async def branch(mine: collections.deque[bytes]) -> AsyncIterator[bytes]:
            nonlocal done
            while True:
                if mine:
                    yield mine.popleft()
                    continue
                if done:
                    return
                async with pulling:  # one copy reads the source, the other waits for the chunk
                    if mine or done:
                        continue
                    try:
                        chunk = await source.__anext__()
                    except StopAsyncIteration:
                        done = True
                        continue
                    for queue in pending:
                        queue.append(chunk)

        self._body = branch(pending[0])
        return branch(pending[1])


# ---------------------------------------------------------------------------
# Request
# ---------------------------------------------------------------------------


def _cache_mode(mode: Any) -> str:
    """Workers honour ``cache: "no-store"`` on a request (there is no cache
    between a worker and its origin here to bypass); any other mode is
    refused with Cloudflare's own wording."""
    if mode != "no-store":
        raise TypeError(f"Unsupported cache mode: {mode}")
    return str(mode)


def _method(method: Any) -> str:
    """A request's method, upper-cased, refused as workerd refuses it when it
    is no HTTP token: ``"GET\\r\\nX: y"`` reached the script a service or
    dispatch call invoked as its ``request.method``."""
    if not isinstance(method, str) or not TOKEN.fullmatch(method):
        raise TypeError(f"Invalid HTTP method string: {str(method)[:80]!r}")
    return method.upper()


class Request(_Body):
    """An HTTP request: the incoming event, or one built for ``fetch``.

    ``Request(input, method=, headers=, body=, redirect=)`` copies ``input``
    (a URL or a Request) and applies the overrides, as the fetch API does.
    """

    def __init__(
        self,
        input: str | Request,  # noqa: A002 - fetch API name
        method: str | None = None,
        headers: Any = None,
        body: Any = None,
        redirect: str | None = None,
        **init: Any,
    ) -> None:
        if isinstance(input, Request):
            base = input
            self.url = base.url
            self._method = base._method
            self.headers = Headers(base.headers)
            self._body = base._body if body is None else None
            self.redirect = base.redirect
            self._cf = base._cf
            if body is None and base._body is not None:
                base._body_used = True  # ownership moves to the copy
        else:
            self.url = _absolute_url(str(input))
            self._method = "GET"
            self.headers = Headers()
            self._body = None
            self.redirect = "follow"
            self._cf = None
        if init.get("cf") is not None:
            self._cf = init["cf"]  # cache and image options: accepted, no edge to apply them
        if init.get("cache") is not None:
            self.cache = _cache_mode(init["cache"])
        elif isinstance(input, Request):
            self.cache = input.cache
        if method is not None:
            self._method = _method(method)
        if headers is not None:
            self.headers = Headers(headers)
        if body is not None:
            self._body = _encode_body(body, self.headers, "Request")
        if redirect is not None:
            self.redirect = _redirect_mode(redirect)
        self._body_used = False
        if self._method in ("GET", "HEAD") and self._body not in (None, b""):
            raise TypeError(f"a {self._method} request cannot have a body")

    #: What workerd's Request has beyond the above (the Fetch standard's
    #: browser-only fields, ``mode``, ``credentials``, ``referrer`` and the
    #: like, it has not, nor has the SDK's request over it): ``cache`` is
    #: undefined (``None``) unless set, ``integrity`` empty, no ``keepalive``.
    cache: str | None = None
    integrity = ""
    keepalive = False

    @property
    def cf(self) -> Any:
        """``request.cf``: for an incoming request, what is known of the client
        (:class:`CfProperties`, built on first use: most handlers never ask);
        for one built here, the ``cf`` it was given."""
        if self._cf is INCOMING:
            self._cf = CfProperties(httpProtocol="HTTP/1.1",
                                    clientAcceptEncoding=self.headers.get("accept-encoding"))
        return self._cf

    @property
    def method(self) -> http.HTTPMethod | str:
        try:
            return http.HTTPMethod(self._method)
        except ValueError:
            return self._method

    def clone(self) -> Request:
        copy = Request.__new__(Request)
        copy.url = self.url
        copy._method = self._method
        copy.headers = Headers(self.headers)
        copy.redirect = self.redirect
        copy._cf = self._cf
        copy.cache = self.cache
        copy._body_used = False
        copy._body = self._tee()
        return copy

    @property
    def js_object(self) -> Request:
        return self

    #: What Pyodide code hands on to a JavaScript API (``entrypoint.fetch(request._js_request)``).
    _js_request = js_object

    def __repr__(self) -> str:
        return f"Request(method={self._method!r}, url={self.url!r})"


# ---------------------------------------------------------------------------
# Response
# ---------------------------------------------------------------------------



def _redirect_location(url: str) -> str:
    """``url`` as JavaScript's ``Response.redirect`` writes it: parsed and
    serialized (``https://example.com`` becomes ``https://example.com/``, the
    host in lower case). A URL that does not parse on its own (a relative
    one: ``/login``) is workerd's TypeError, "Unable to parse URL" (it was
    kept as written here, and code that worked failed on Cloudflare)."""
    from .js_url import URL

    parsed = URL.parse(url)
    if parsed is None:
        raise InvalidURL(f"Unable to parse URL: {url[:200]}")
    return parsed.href


class Response(_Body):
    """An HTTP response; ``body`` may be str, bytes or an async iterator.

    As JavaScript's constructor: a status outside 200-599 (101 is for a
    ``web_socket`` only, and needs one) is a :class:`StatusRangeError`, a
    JsException named RangeError; a body with a null body status (101, 204,
    205, 304) a :class:`NullBodyStatusError`."""

    def __init__(
        self,
        body: Any = None,
        status: int | None = None,
        status_text: str = "",
        headers: Any = None,
        *,
        statusText: str | None = None,  # noqa: N803 - fetch API name
        web_socket: Any = None,
        encodeBody: str = "automatic",  # noqa: N803 - fetch API name
        encode_body: str | None = None,
    ) -> None:
        if isinstance(body, Response):
            # ``Response(other.js_object)``: the SDK wraps a JavaScript Response
            # as it is, and refuses options beside it.
            if status is not None or status_text or statusText or headers is not None or web_socket:
                raise ValueError("Expected no options when constructing Response from a js.Response")
            self.__dict__.update(body.__dict__)
            return
        # The SDK passes a status on only when it is truthy: 0 is a 200 there too.
        self.status = int(status) if status else 200
        #: The client end of a WebSocketPair this 101 response hands to its client.
        self.web_socket = web_socket
        if web_socket is not None:
            if self.status != 101:
                raise StatusRangeError("Responses with a WebSocket must have status code 101.")
        elif not 200 <= self.status <= 599:
            raise StatusRangeError("Responses may only be constructed with status codes in the "
                                   "range 200 to 599, inclusive.")
        text = statusText if statusText is not None else status_text
        self.status_text = _checked_status_text(text) if text else _STATUS_TEXT.get(self.status, "")
        self.headers = Headers(headers)
        self._body = _encode_body(body, self.headers)
        if self.status in NULL_BODY_STATUSES:
            _check_null_body(self._body)
            self._body = None
        self._body_used = False
        self.url = ""
        self.redirected = False
        encoded = encode_body if encode_body is not None else encodeBody
        if encoded not in ("automatic", "manual"):
            raise TypeError(f'encodeBody must be "automatic" or "manual", not {encoded!r}')
        #: The body is in its Content-Encoding already: ``encodeBody: "manual"``,
        #: or a fetched body handed on unread under its own coding.
        self._encode_manual = encoded == "manual" or (
            type(body) is ReadableStream and body.coding is not None and self._body is body.source)

    #: See ``__init__``: a delivered response is sent as it came.
    _encode_manual = True

    @classmethod
    def _delivered(cls, status: int, headers: Headers, body: Any, status_text: str = "") -> Response:
        """What ``__init__`` sets, for a response the supervisor delivered
        and already checked (see :func:`response_with`): no validation and no
        body encoding. Kept beside ``__init__`` so that both set the same."""
        response = cls.__new__(cls)
        response.status = status
        response.status_text = status_text or _STATUS_TEXT.get(status, "")
        response.headers = headers
        response._body = body
        response._body_used = False
        response.url = ""
        response.redirected = False
        return response

    #: The Fetch standard's response type; every response a worker sees is "default".
    type = "default"
    web_socket: Any = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    statusText = property(lambda self: self.status_text)  # noqa: N815

    def raise_for_status(self) -> None:
        """Raise :class:`HttpStatusError` for a 4xx or 5xx status (Pyodide's FetchResponse API)."""
        if 400 <= self.status < 600:
            raise HttpStatusError(self.status, self.status_text, self.url)

    @property
    def js_object(self) -> Response:
        """The response as JavaScript sees it: here, itself."""
        return self

    webSocket = property(lambda self: self.web_socket)  # noqa: N815 - fetch API name

    @classmethod
    def json(  # type: ignore[override]  # classmethod on the class, .json() on instances
        cls, data: Any, status: int = 200, status_text: Any = "", headers: Any = None
    ) -> Response:
        """A JSON response: the SDK's ``from_json(data, status, status_text,
        headers)``, positionally too. Headers given third (the order Corral
        once took) are still headers: no status text is a mapping or a list."""
        if not isinstance(status_text, str) and headers is None:
            status_text, headers = "", status_text
        merged = Headers(headers)
        if not merged.has("content-type"):
            merged.set("content-type", "application/json")
        return cls(_json.dumps(data).encode(), status=status, headers=merged, status_text=status_text)

    @classmethod
    def from_json(cls, data: Any, status: int = 200, status_text: str = "",
                  headers: Any = None) -> Response:
        return cls._make_json(data, status=status, headers=headers, status_text=status_text)

    @classmethod
    def redirect(cls, url: str, status: int = 302) -> Response:
        status = int(status)
        if status not in (301, 302, 303, 307, 308):
            raise ValueError(f"redirect status must be 301, 302, 303, 307 or 308, not {status}")
        return cls(None, status=status, headers={"location": _redirect_location(str(url))})

    def clone(self) -> Response:
        copy = Response.__new__(Response)
        copy.status = self.status
        copy.status_text = self.status_text
        copy.headers = Headers(self.headers)
        copy.url = self.url
        copy.redirected = self.redirected
        copy._body_used = False
        copy._coding = self._coding
        copy._encode_manual = self._encode_manual
        copy._body = self._tee()
        return copy

    def replace_body(self, body: Any) -> Response:
        """A new response: this one's status and headers, ``body`` as its body."""
        copy = Response(body, status=self.status, status_text=self.status_text,
                        headers=Headers(self.headers))
        copy.url, copy.redirected = self.url, self.redirected
        return copy

    def __repr__(self) -> str:
        return (f"Response(status={self.status}, status_text={self.status_text!r}, "
                f"content_type={self.headers.get('content-type')!r})")


def response_with(status: int, body: Any, headers: Headers | None = None,
                  status_text: str = "") -> Response:
    """A response the supervisor delivered (a call's, a Durable Object's):
    ``body`` as it arrived, or the WebSocket of a 101 (a
    :class:`sandbox.websockets.HandedOn`, the one body with a ``readyState``);
    ``status_text`` its reason phrase when not the standard one.

    The supervisor already checked the status, so the usual case skips
    ``__init__``: a dispatcher makes one of these for every request it
    forwards."""
    if status == 101 and hasattr(body, "readyState"):
        response = Response(status=101, web_socket=body)
        if headers is not None:
            response.headers = headers
        return response
    if status in NULL_BODY_STATUSES:
        # As fetch() makes it in workerd: no body at all, so that handing it
        # on (``Response(r.body, status=r.status)``) passes the check above.
        body = None
    return Response._delivered(status, Headers() if headers is None else headers, body, status_text)


#: Status texts fetch gives a Response without one (``Response("x", status=404).status_text``).
_STATUS_TEXT = {status.value: status.phrase for status in http.HTTPStatus}

#: The SDK's name for a response ``fetch`` returned; one class here.
FetchResponse = Response


class _JsonDescriptor:
    """``Response.json(data)`` builds a response; ``response.json()`` reads one."""

    def __get__(self, instance: Any, owner: type) -> Any:
        if instance is None:
            return owner._make_json
        return instance._read_json


Response._make_json = Response.json  # type: ignore[attr-defined]
Response._read_json = _Body.json  # type: ignore[attr-defined]
Response.json = _JsonDescriptor()  # type: ignore[assignment]


# ---------------------------------------------------------------------------
# fetch and the entry point
# ---------------------------------------------------------------------------


def one_positional(extra: tuple[Any, ...]) -> None:
    """A binding's ``fetch(resource, **options)`` takes its options as keywords,
    as the SDK's does: options passed JavaScript's way (``fetch(url, {"headers":
    ...})``) are Python's own TypeError, in its words, not a dict read as the method."""
    if extra:
        raise TypeError(f"fetch() takes 1 positional argument but {1 + len(extra)} were given")


class FetchURLError(InvalidURL):
    """workerd's ``TypeError`` for a URL ``fetch()`` cannot load: a relative one
    ("Invalid URL", as its Request constructor throws it) or one of another
    scheme than http and https. Raised before anything is sent: a relative
    URL reached the supervisor as a request to nowhere (a stub's answered
    with a URL of just its path, an assets fetch failed on a redirect)."""

    def __init__(self, url: str) -> None:
        try:
            scheme = urllib.parse.urlsplit(url).scheme
        except ValueError:
            scheme = ""
        super().__init__(f"Fetch API cannot load: {url[:200]}" if scheme else f"Invalid URL: {url[:200]}")


def fetchable(request: Request) -> Request:
    """``request``, if its URL is one ``fetch()`` can load (:class:`FetchURLError`)."""
    url = request.url
    if not url.startswith(_FETCHABLE) and not url[:8].lower().startswith(_FETCHABLE):
        raise FetchURLError(url)
    return request


_FETCHABLE = ("https://", "http://")


def as_request(resource: Any, method: str | None = None, headers: Any = None, body: Any = None,
               redirect: str | None = None) -> Request:
    """What a stub's ``fetch(resource, ...)`` sends: ``resource`` itself when it
    is a Request given no overrides, else a new one (the fetch API's rule)."""
    if isinstance(resource, Request) and method is None and headers is None and body is None \
            and redirect is None:
        return fetchable(resource)
    return fetchable(Request(resource, method=method, headers=headers, body=body, redirect=redirect))


async def fetch(
    resource: str | Request,
    *,
    method: str | None = None,
    headers: Any = None,
    body: Any = None,
    redirect: str | None = None,
    **init: Any,
) -> Response:
    """An outbound HTTP request, brokered by the supervisor.

    The sandbox has no sockets: the request goes over the channel, through
    the platform's outbound worker if the dispatcher set one, and is counted
    against the invocation's subrequest limit.
    """
    request = fetchable(Request(resource, method=method, headers=headers, body=body, redirect=redirect, **init))
    if (request.headers.get("upgrade") or "").lower() == "websocket":
        # The brokered fetch drops the hop-by-hop Upgrade: the socket is
        # opened as js.WebSocket opens one (sandbox.websockets).
        return await _runtime.sockets.fetch_upgrade(request)
    return await _runtime.sub_request("fetch", request, tail=_is_tail(_getframe(1)))


class Context:
    """``self.ctx``: keeps background work alive after the response; ``props``
    are what the service binding the call came through says of its caller."""

    #: Set for a call through a service binding with props (see ``props``).
    _props: Any = None

    def __init__(self, invocation: int, props: dict | None = None) -> None:
        self._invocation = invocation
        if props:
            self._props = JsDict(props)

    @property
    def props(self) -> Any:
        """Cloudflare's ``ctx.props``: the service binding's props, ``{}`` else."""
        if self._props is None:
            self._props = JsDict()
        return self._props

    def waitUntil(self, awaitable: Any) -> None:  # noqa: N802 - Workers API name
        _runtime.wait_until(self._invocation, awaitable)

    wait_until = waitUntil

    def passThroughOnException(self) -> None:  # noqa: N802 - Workers API name
        """Accepted for compatibility; Corral has no origin to fall back to."""

    pass_through_on_exception = passThroughOnException


class WorkerEntrypoint:
    """Base class of a worker: ``class Default(WorkerEntrypoint)``.

    A new instance serves each event, with ``self.env`` (the bindings) and
    ``self.ctx`` (``waitUntil``).
    """

    def __init__(self, ctx: Context, env: Any) -> None:
        self.ctx = ctx
        self.env = env


class DurableObject:
    """Base class of a Durable Object: ``class Counter(DurableObject)``, built
    once per live object with ``self.ctx`` (``id``, ``storage``,
    ``waitUntil``, ``blockConcurrencyWhile``) and ``self.env``; its public
    methods are callable over RPC from stubs, ``fetch`` and ``alarm`` are its
    handlers (sandbox.durable_objects)."""

    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env


class WorkflowEntrypoint(DurableObject):
    """Placeholder so that imports of the SDK's other entry points succeed."""


#: What ``patch_env`` put over the bindings, in this async context only
#: (sandbox.sdk_api.patch_env): None when nothing is patched.
env_patch: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "corral_env_patch", default=None)


class _EnvProxy:
    """``from workers import env``: the bindings, usable outside a handler,
    with what ``patch_env`` put over them in the current async context."""

    def __getattr__(self, name: str) -> Any:
        patch = env_patch.get()
        if patch is not None and name in patch:
            return patch[name]
        if _runtime is None or _runtime.env is None:
            raise AttributeError(name)
        return getattr(_runtime.env, name)

    def __repr__(self) -> str:
        return repr(_runtime.env) if _runtime is not None else "<env>"


env = _EnvProxy()


from .sdk_api import handler, import_from_javascript, patch_env, wait_until, waitUntil  # noqa: E402
from .sdk_hints import (  # noqa: E402, F401 - the SDK's names for type hints
    BlobEnding,
    BlobValue,
    Body,
    FetchKwargs,
    FormDataValue,
    JSBody,
    RequestInitCfProperties,
)
from .sdk_types import python_from_rpc, python_to_rpc  # noqa: E402
