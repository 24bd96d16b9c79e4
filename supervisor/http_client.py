"""Outbound HTTP/1.1 client used by the supervisor to broker tenant ``fetch()``.

Tenant code never touches the network itself: its ``fetch()`` calls are sent
over IPC to the supervisor, which performs them with this client.  Because the
requests are made *on behalf of untrusted code*, the client is deliberately
small and strict:

* it only speaks http/https, and every new connection goes through an optional
  ``resolve`` hook so the supervisor's egress policy can see (and veto) the
  host and the exact addresses that will be dialled, including on redirects;
* message framing (``Host``, ``Content-Length``, ``Transfer-Encoding``) and
  connection-management headers are owned by the client, never by the caller,
  so tenant code cannot smuggle requests or poison pooled connections;
* every wait on the network has a deadline and response bodies are streamed
  with a hard size cap, so a hostile or broken upstream cannot pin supervisor
  memory or tasks;
* it runs entirely inside the caller's trio task (no background tasks): if the
  caller is cancelled, the socket in use is closed before the cancellation
  propagates.

It is built on trio + h11 + the stdlib ``ssl`` module only.  Content codings
(gzip etc.) are *not* decoded: bodies are passed through as received.
"""

from __future__ import annotations

import ipaddress
import math
import select
import socket
import ssl
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import h11
import trio

from .fetch_errors import FetchError, FetchTimeout, ResponseTooLarge

__all__ = [
    "ClientResponse",
    "FetchError",
    "FetchTimeout",
    "HTTPClient",
    "ResponseTooLarge",
    "TooManyRedirects",
]

_T = TypeVar("_T")

Resolver = Callable[[str, int], Awaitable[list[tuple[str, int]]]]

# Size of socket reads and of the pieces request bodies are written in.  Small
# enough that per-operation timeouts measure progress, not total transfer time.
_CHUNK = 64 * 1024
# Largest response head (status line + headers) we are willing to buffer.
_MAX_HEAD_BYTES = 64 * 1024
# A pooled connection idle for longer than this is closed rather than reused:
# most servers drop idle keep-alive connections well before this anyway.
_IDLE_EXPIRY = 30.0
# Happy-eyeballs style stagger between connection attempts to successive addresses.
_CONNECT_STAGGER = 0.25
# How much of a redirect response's body we read to keep its connection reusable.
_REDIRECT_DRAIN_LIMIT = 64 * 1024

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Printable ASCII left as-is in request targets; everything else (space, controls,
# non-ASCII, quotes, angle brackets, braces, backslash) is percent-encoded.
_URL_SAFE = "!$%&'()*+,/:;=?@[]^|~"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Methods that are safe to replay when a pooled connection turns out to be dead.
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Like fetch(): these names are upper-cased, any other method is sent as given.
_NORMALIZED_METHODS = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"})
# CONNECT would turn the connection into a tunnel; TRACE/TRACK echo credentials.
_FORBIDDEN_METHODS = frozenset({"CONNECT", "TRACE", "TRACK"})
# Framing and hop-by-hop headers: set by the client, caller values are ignored.
_CLIENT_OWNED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
        "expect",
    }
)
# Credentials that must not follow a redirect to another origin.
_CROSS_ORIGIN_STRIP = frozenset({"authorization", "cookie", "proxy-authorization"})
# Headers describing the request body, dropped when a redirect turns it into a GET.
_REQUEST_BODY_HEADERS = frozenset(
    {"content-encoding", "content-language", "content-location", "content-type"}
)
_BODYLESS_METHODS_NEEDING_LENGTH = frozenset({"POST", "PUT", "PATCH"})


# --------------------------------------------------------------------------- errors


class TooManyRedirects(FetchError):
    """More than ``max_redirects`` redirects were encountered."""


class _ConnectionLost(FetchError):
    """Internal: the transport failed or was closed by the peer.

    Kept separate so a dead keep-alive connection can be told apart from a
    genuine failure and retried; never escapes the module.
    """


# --------------------------------------------------------------------------- URLs


class _URL:
    """A parsed, validated http(s) URL, reduced to what the wire needs."""

    __slots__ = ("scheme", "host", "port", "target", "host_header", "href")

    def __init__(self, scheme: str, host: str, port: int, target: str) -> None:
        self.scheme = scheme
        self.host = host  # lower-case, IPv6 without brackets
        self.port = port
        self.target = target  # path + query, fragment stripped
        bracketed = f"[{host}]" if ":" in host else host
        self.host_header = (
            bracketed if port == _DEFAULT_PORTS[scheme] else f"{bracketed}:{port}"
        )
        self.href = f"{scheme}://{self.host_header}{target}"

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def _parse_url(url: str) -> _URL:
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise FetchError(f"invalid URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise FetchError(
            f"unsupported URL scheme {parts.scheme!r} in {url!r}: only http and https are allowed"
        )
    if parts.username is not None or parts.password is not None:
        raise FetchError(f"invalid URL {url!r}: embedded credentials are not supported")
    host = parts.hostname or ""
    if not host:
        raise FetchError(f"invalid URL {url!r}: missing host")
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise FetchError(f"invalid URL {url!r}: bad IPv6 address") from None
    else:
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                raise FetchError(f"invalid URL {url!r}: bad host name") from None
        if any(c in host for c in " \t\r\n/\\@?#%:") or not host.isprintable():
            raise FetchError(f"invalid URL {url!r}: bad host name")
    if port is None:
        port = _DEFAULT_PORTS[scheme]
    elif port == 0:
        raise FetchError(f"invalid URL {url!r}: port 0")
    # Percent-encode anything that is not allowed raw on the request line
    # (spaces, non-ASCII), leaving existing escapes alone, as URL parsers in
    # browsers do.
    target = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_URL_SAFE)
    return _URL(scheme, host, port, target)


# --------------------------------------------------------------------------- bodies


class _Body:
    """The request body and whether it can still be sent (again)."""

    __slots__ = ("data", "stream", "started")

    def __init__(self, body: bytes | AsyncIterable[bytes] | None) -> None:
        self.data: bytes | None = None
        self.stream: AsyncIterable[bytes] | None = None
        self.started = False
        if body is None:
            return
        if isinstance(body, bytes):
            self.data = body
        elif isinstance(body, (bytearray, memoryview)):
            self.data = bytes(body)
        elif hasattr(body, "__aiter__"):
            self.stream = body
        else:
            raise TypeError(
                f"body must be bytes, an async iterator of bytes or None, not {type(body).__name__}"
            )

    @property
    def replayable(self) -> bool:
        return self.stream is None or not self.started


# --------------------------------------------------------------------------- connections


class _Deadline:
    """The request-wide deadline from ``request(timeout=...)`` (inf if none)."""

    __slots__ = ("at", "timeout")

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.at = math.inf if timeout is None else trio.current_time() + timeout


class _Connection:
    __slots__ = ("origin", "stream", "sock", "h11", "reused", "bytes_in", "eof", "idle_since")

    def __init__(
        self, origin: tuple[str, str, int], stream: trio.abc.Stream, sock: trio.socket.SocketType
    ) -> None:
        self.origin = origin
        self.stream = stream
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD_BYTES)
        self.reused = False
        self.bytes_in = 0  # received during the current request/response cycle
        self.eof = False
        self.idle_since = 0.0

    def looks_reusable(self) -> bool:
        """An idle connection must have nothing to read: readability means the
        server closed it (EOF / RST) or sent something unsolicited (e.g. a 408),
        and either way reusing it would fail or mis-attribute a response."""
        try:
            fd = self.sock.fileno()
            if fd < 0:
                return False
            if hasattr(select, "poll"):
                poller = select.poll()
                poller.register(fd, select.POLLIN | select.POLLPRI)
                return not poller.poll(0)
            readable, _, _ = select.select([fd], [], [], 0)
            return not readable
        except (OSError, ValueError):
            return False

    async def aclose(self) -> None:
        # Forceful: works under cancellation and never waits on the peer (no
        # TLS close_notify exchange, which https_compatible streams skip anyway).
        await trio.aclose_forcefully(self.stream)


def _cause(exc: BaseException) -> str:
    """The most specific description of a transport error (trio wraps the
    OSError / SSLError that actually happened as ``__cause__``)."""
    root = exc.__cause__ if exc.__cause__ is not None else exc
    return str(root) or type(root).__name__


async def default_resolve(host: str, port: int) -> list[tuple[str, int]]:
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # gaierror, or IDNA rejecting the name
        reason = getattr(exc, "strerror", None) or str(exc)
        raise FetchError(f"could not resolve {host}: {reason}") from None
    out: list[tuple[str, int]] = []
    for *_, sockaddr in infos:
        addr = (str(sockaddr[0]), int(sockaddr[1]))
        if addr not in out:
            out.append(addr)
    return out


async def _open_tcp(addrs: list[tuple[str, int]], host: str, port: int) -> trio.SocketStream:
    """Connect to the first address that answers, starting a new attempt every
    ``_CONNECT_STAGGER`` seconds (or as soon as the previous one fails), so one
    black-holed address does not eat the whole connect timeout."""
    winner: trio.socket.SocketType | None = None
    errors: list[OSError] = []

    async def attempt(ip: str, p: int, failed: trio.Event, nursery: trio.Nursery) -> None:
        nonlocal winner
        try:
            sock = trio.socket.socket(
                socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM
            )
        except OSError as exc:
            errors.append(exc)
            failed.set()
            return
        try:
            await sock.connect((ip, p))
        except OSError as exc:
            sock.close()
            errors.append(exc)
            failed.set()
            return
        except BaseException:
            sock.close()
            raise
        if winner is None:
            winner = sock
            nursery.cancel_scope.cancel()
        else:
            sock.close()

    try:
        async with trio.open_nursery() as nursery:
            for ip, p in addrs:
                failed = trio.Event()
                nursery.start_soon(attempt, ip, p, failed, nursery)
                with trio.move_on_after(_CONNECT_STAGGER):
                    await failed.wait()
    except BaseException:
        if winner is not None:
            winner.close()
        raise
    if winner is None:
        reason = (errors[-1].strerror or str(errors[-1])) if errors else "no addresses"
        raise FetchError(f"could not connect to {host}:{port}: {reason}")
    return trio.SocketStream(winner)


async def _next_event(conn: _Connection, host: str) -> Any:
    """Next h11 event, reading from the network as needed (no timeout here)."""
    while True:
        try:
            event = conn.h11.next_event()
        except h11.RemoteProtocolError as exc:
            if conn.eof and conn.bytes_in == 0:
                raise _ConnectionLost(f"{host} closed the connection without sending a response") from None
            raise FetchError(f"bad response from {host}: {exc}") from None
        if event is not h11.NEED_DATA:
            return event
        try:
            data = await conn.stream.receive_some(_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _ConnectionLost(f"connection to {host} failed: {_cause(exc)}") from exc
        if data:
            conn.bytes_in += len(data)
        else:
            conn.eof = True
        conn.h11.receive_data(data)


# --------------------------------------------------------------------------- response


class ClientResponse:
    """Response head plus a streaming body.

    The body is pulled from the socket only as the caller asks for it, so a
    large download never sits in memory; the connection goes back to the pool
    once the body has been read to the end, and is closed otherwise.  Always
    finish with :meth:`read_all`, reading until ``b""``, or :meth:`aclose`.
    """

    status: int
    reason: str
    url: str
    headers: list[tuple[str, str]]
    redirected: bool

    def __init__(
        self,
        client: HTTPClient,
        conn: _Connection,
        url: _URL,
        method: str,
        head: h11.Response,
        deadline: _Deadline,
    ) -> None:
        self.status = head.status_code
        self.reason = head.reason.decode("latin-1")
        self.url = url.href
        self.headers = [(n.decode("ascii"), v.decode("latin-1")) for n, v in head.headers]
        self.redirected = False
        self._client = client
        self._conn: _Connection | None = conn
        self._host = url.host
        self._deadline = deadline
        self._received = 0
        self._complete = False
        self._declared_length: int | None = None
        names = {name for name, _ in head.headers}
        if method != "HEAD" and self.status not in (204, 304) and b"transfer-encoding" not in names:
            for name, value in head.headers:
                if name == b"content-length":
                    self._declared_length = int(value)

    def __repr__(self) -> str:
        return f"<ClientResponse {self.status} {self.reason!r} {self.url}>"

    def _header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def receive_some(self) -> bytes:
        """Return the next chunk of the body (at most 64 KiB), or ``b""`` at its end.

        Raises :class:`ResponseTooLarge` as soon as the body is known to exceed
        ``max_response_bytes``, :class:`FetchTimeout` if no data arrives within
        ``read_timeout``, and :class:`FetchError` for a broken or malformed body.
        After any error the connection is closed and further calls raise.
        """
        if self._conn is None:
            if self._complete:
                return b""
            raise FetchError(f"response body from {self._host} is closed")
        client = self._client
        try:
            limit = client._max_response_bytes
            if self._declared_length is not None and self._declared_length > limit:
                raise ResponseTooLarge(
                    f"response body from {self._host} ({self._declared_length} bytes) "
                    f"exceeds the {limit}-byte limit"
                )
            return await client._timed(
                client._read_timeout, self._deadline, "reading the response body from",
                self._host, self._receive,
            )
        except _ConnectionLost as exc:
            await self._abort()
            raise FetchError(str(exc)) from exc.__cause__
        except BaseException:
            await self._abort()
            raise

    async def _receive(self) -> bytes:
        conn = self._conn
        assert conn is not None
        limit = self._client._max_response_bytes
        while True:
            event = await _next_event(conn, self._host)
            if isinstance(event, h11.Data):
                if not event.data:
                    continue
                self._received += len(event.data)
                if self._received > limit:
                    raise ResponseTooLarge(
                        f"response body from {self._host} exceeds the {limit}-byte limit"
                    )
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                self._complete = True
                self._conn = None
                await self._client._release(conn)
                return b""
            raise FetchError(f"bad response from {self._host}: unexpected {type(event).__name__}")

    async def read_all(self) -> bytes:
        """Read the rest of the body into memory (still capped by ``max_response_bytes``)."""
        chunks = []
        while chunk := await self.receive_some():
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        """Stop reading: the connection is closed unless the body was already
        complete (including a complete body still sitting in the read buffer,
        e.g. an empty or small response), in which case it is pooled."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        try:
            while True:
                event = conn.h11.next_event()
                if isinstance(event, h11.EndOfMessage):
                    self._complete = True
                    await self._client._release(conn)
                    return
                if not isinstance(event, h11.Data):
                    break
        except h11.RemoteProtocolError:
            pass
        await conn.aclose()

    def close(self) -> None:
        """Synchronous, forceful :meth:`aclose` for callers that cannot await
        (a consumer that went away): the connection is dropped, not pooled."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.sock.close()

    async def _abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    async def _discard(self) -> None:
        """Throw away a redirect's body, keeping the connection if it is short."""
        try:
            seen = 0
            while seen <= _REDIRECT_DRAIN_LIMIT:
                chunk = await self.receive_some()
                if not chunk:
                    return
                seen += len(chunk)
        except FetchError:
            pass
        await self.aclose()

    async def __aenter__(self) -> ClientResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# --------------------------------------------------------------------------- client


class HTTPClient:
    """Pooled HTTP/1.1 client; one instance per supervisor (or per tenant).

    ``connect_timeout`` bounds DNS + TCP + TLS; ``read_timeout`` bounds the wait
    for the response head and each individual body read (and each write of the
    request, so a server that stops reading an upload cannot hang us).
    ``resolve(host, port)`` is awaited before every new connection (also on
    redirects) with the URL's lower-cased host (IPv6 without brackets); it
    returns the ``(ip, port)`` pairs to dial (IP literals only, tried in order)
    or raises to veto the connection, and its exceptions propagate unchanged.
    Idle keep-alive connections live until :meth:`aclose`.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 10,
        read_timeout: float = 30,
        max_response_bytes: int = 128 * 2**20,
        max_redirects: int = 20,
        ssl_context: ssl.SSLContext | None = None,
        max_idle_per_host: int = 8,
        resolve: Resolver | None = None,
    ) -> None:
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if max_response_bytes < 0 or max_redirects < 0 or max_idle_per_host < 0:
            raise ValueError("limits must not be negative")
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_response_bytes = max_response_bytes
        self._max_redirects = max_redirects
        self._max_idle_per_host = max_idle_per_host
        self._resolve: Resolver = resolve or default_resolve
        if ssl_context is None:
            ssl_context = ssl.create_default_context()
            ssl_context.set_alpn_protocols(["http/1.1"])
        self._ssl_context = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._closed = False

    async def __aenter__(self) -> HTTPClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close all idle connections; responses still being read close theirs when done."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await conn.aclose()

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | AsyncIterable[bytes] | None = None,
        *,
        redirect: str = "follow",
        timeout: float | None = None,
    ) -> ClientResponse:
        """Send a request and return once the response head has arrived.

        ``redirect`` follows WHATWG fetch: ``"follow"`` (up to
        ``max_redirects``), ``"manual"`` (return the 3xx as is) or ``"error"``
        (raise on any redirect).  ``timeout`` is an overall deadline for the
        whole exchange, redirects and body reads included.  The caller must
        consume or :meth:`~ClientResponse.aclose` the returned response.
        """
        if self._closed:
            raise RuntimeError("HTTPClient is closed")
        if redirect not in ("follow", "manual", "error"):
            raise ValueError(f"redirect must be 'follow', 'manual' or 'error', not {redirect!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be positive")
        method = _normalize_method(method)
        user_headers = _check_headers(headers)
        req_body = _Body(body)
        deadline = _Deadline(timeout)
        current = _parse_url(url)
        redirects = 0

        while True:
            response = await self._exchange(method, current, user_headers, req_body, deadline)
            if response.status not in _REDIRECT_STATUSES or redirect == "manual":
                response.redirected = redirects > 0
                return response
            try:
                if redirect == "error":
                    raise FetchError(
                        f"{current.host} answered {response.status} (redirect) and redirect mode is 'error'"
                    )
                location = response._header("location")
                if location is None:
                    response.redirected = redirects > 0
                    return response
                if redirects >= self._max_redirects:
                    raise TooManyRedirects(
                        f"too many redirects (more than {self._max_redirects}) fetching {url}"
                    )
                target = _parse_url(urljoin(current.href, _decode_location(location)))
                status = response.status
                if (status in (301, 302) and method == "POST") or (
                    status == 303 and method not in ("GET", "HEAD")
                ):
                    method = "GET"
                    req_body = _Body(None)
                    user_headers = [
                        (n, v) for n, v in user_headers if n.lower() not in _REQUEST_BODY_HEADERS
                    ]
                elif req_body.stream is not None:
                    raise FetchError(
                        f"cannot follow {status} redirect from {current.host}: "
                        "a streamed request body cannot be sent again"
                    )
                if target.origin != current.origin:
                    user_headers = [
                        (n, v) for n, v in user_headers if n.lower() not in _CROSS_ORIGIN_STRIP
                    ]
                await response._discard()
            except BaseException:
                await response.aclose()
                raise
            current = target
            redirects += 1

    # ------------------------------------------------------------------ internals

    async def _timed(
        self,
        phase_timeout: float,
        deadline: _Deadline,
        what: str,
        host: str,
        fn: Callable[..., Awaitable[_T]],
        *args: Any,
    ) -> _T:
        """Run ``fn`` under the tighter of the phase timeout and the overall deadline."""
        phase_at = trio.current_time() + phase_timeout
        with trio.move_on_at(min(phase_at, deadline.at)):
            return await fn(*args)
        if deadline.at < phase_at:
            raise FetchTimeout(
                f"request exceeded its overall {deadline.timeout:g}s timeout while {what} {host}"
            )
        raise FetchTimeout(f"timed out after {phase_timeout:g}s {what} {host}")

    async def _exchange(
        self,
        method: str,
        url: _URL,
        user_headers: list[tuple[str, str]],
        body: _Body,
        deadline: _Deadline,
    ) -> ClientResponse:
        """One request/response, retried once on a fresh connection if a pooled
        connection turns out to have been closed by the server meanwhile."""
        request = _make_request(method, url, user_headers, body)
        conn = await self._checkout(url, deadline)
        try:
            return await self._round_trip(conn, request, method, url, body, deadline)
        except _ConnectionLost as exc:
            stale = conn.reused and conn.bytes_in == 0
            if not (stale and method in _IDEMPOTENT_METHODS and body.replayable):
                raise FetchError(str(exc)) from exc.__cause__
        conn = await self._connect(url, deadline)
        try:
            return await self._round_trip(conn, request, method, url, body, deadline)
        except _ConnectionLost as exc:
            raise FetchError(str(exc)) from exc.__cause__

    async def _round_trip(
        self,
        conn: _Connection,
        request: h11.Request,
        method: str,
        url: _URL,
        body: _Body,
        deadline: _Deadline,
    ) -> ClientResponse:
        host = url.host
        try:
            write_error: _ConnectionLost | None = None
            try:
                await self._send(conn, request, host, deadline)
                await self._send_body(conn, body, host, deadline)
                await self._send(conn, h11.EndOfMessage(), host, deadline)
            except _ConnectionLost as exc:
                # The server may have answered early (e.g. 413) and closed its
                # end; try to read that answer before reporting the write error.
                write_error = exc
            try:
                head = await self._timed(
                    self._read_timeout, deadline, "waiting for the response headers from",
                    host, self._read_head, conn, host,
                )
            except _ConnectionLost:
                if write_error is not None:
                    raise write_error from write_error.__cause__
                raise
        except BaseException:
            await conn.aclose()
            raise
        return ClientResponse(self, conn, url, method, head, deadline)

    async def _read_head(self, conn: _Connection, host: str) -> h11.Response:
        while True:
            event = await _next_event(conn, host)
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):
                raise FetchError(f"bad response from {host}: unexpected {type(event).__name__}")

    async def _send(self, conn: _Connection, event: Any, host: str, deadline: _Deadline) -> None:
        try:
            data = conn.h11.send(event)
        except h11.LocalProtocolError as exc:
            raise FetchError(f"invalid request to {host}: {exc}") from None
        if data:
            await self._timed(
                self._read_timeout, deadline, "sending the request to", host,
                self._send_all, conn, data, host,
            )

    @staticmethod
    async def _send_all(conn: _Connection, data: bytes, host: str) -> None:
        try:
            await conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _ConnectionLost(f"connection to {host} failed: {_cause(exc)}") from exc

    async def _send_body(self, conn: _Connection, body: _Body, host: str, deadline: _Deadline) -> None:
        if body.data is not None:
            view = memoryview(body.data)
            for i in range(0, len(view), _CHUNK):
                await self._send(conn, h11.Data(data=view[i : i + _CHUNK]), host, deadline)
            return
        if body.stream is None:
            return
        body.started = True
        async for chunk in body.stream:
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError(f"request body chunks must be bytes, not {type(chunk).__name__}")
            view = memoryview(chunk).cast("B")
            for i in range(0, len(view), _CHUNK):
                await self._send(conn, h11.Data(data=view[i : i + _CHUNK]), host, deadline)

    async def _checkout(self, url: _URL, deadline: _Deadline) -> _Connection:
        # Pool bookkeeping is done synchronously (no checkpoints) so concurrent
        # requests on this client never see it half-updated; closing happens after.
        now = trio.current_time()
        discard: list[_Connection] = []
        for key, conns in list(self._idle.items()):
            fresh = [c for c in conns if now - c.idle_since < _IDLE_EXPIRY]
            discard.extend(c for c in conns if now - c.idle_since >= _IDLE_EXPIRY)
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]
        found: _Connection | None = None
        pool = self._idle.get(url.origin, [])
        while pool and found is None:
            conn = pool.pop()  # most recently used first
            if conn.looks_reusable():
                found = conn
            else:
                discard.append(conn)
        if not pool:
            self._idle.pop(url.origin, None)
        for conn in discard:
            await conn.aclose()
        if found is not None:
            found.reused = True
            return found
        return await self._connect(url, deadline)

    async def _release(self, conn: _Connection) -> None:
        """Pool a connection whose request/response cycle completed cleanly."""
        state = conn.h11
        if (
            self._closed
            or self._max_idle_per_host == 0
            or state.our_state is not h11.DONE
            or state.their_state is not h11.DONE
        ):
            await conn.aclose()
            return
        try:
            state.start_next_cycle()
        except h11.LocalProtocolError:
            await conn.aclose()
            return
        conn.bytes_in = 0
        conn.idle_since = trio.current_time()
        pool = self._idle.setdefault(conn.origin, [])
        pool.append(conn)
        excess = pool[: -self._max_idle_per_host]  # oldest first
        del pool[: -self._max_idle_per_host]
        for old in excess:
            await old.aclose()

    async def _connect(self, url: _URL, deadline: _Deadline) -> _Connection:
        return await self._timed(
            self._connect_timeout, deadline, "connecting to", f"{url.host}:{url.port}",
            self._do_connect, url,
        )

    async def _do_connect(self, url: _URL) -> _Connection:
        addrs = await self._resolve(url.host, url.port)
        checked: list[tuple[str, int]] = []
        for ip, port in addrs:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise FetchError(f"resolver returned a non-IP address {ip!r} for {url.host}") from None
            checked.append((ip, int(port)))
        if not checked:
            raise FetchError(f"could not resolve {url.host}: no addresses")
        tcp = await _open_tcp(checked, url.host, url.port)
        if url.scheme == "http":
            return _Connection(url.origin, tcp, tcp.socket)
        tls = trio.SSLStream(
            tcp, self._ssl_context, server_hostname=url.host, https_compatible=True
        )
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(tcp)
            raise FetchError(f"TLS handshake with {url.host} failed: {_cause(exc)}") from exc
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        return _Connection(url.origin, tls, tcp.socket)


# --------------------------------------------------------------------------- helpers


def _normalize_method(method: str) -> str:
    if not isinstance(method, str) or not method:
        raise FetchError(f"invalid method {method!r}")
    upper = method.upper()
    if upper in _FORBIDDEN_METHODS:
        raise FetchError(f"method {method!r} is not allowed")
    return upper if upper in _NORMALIZED_METHODS else method


def _check_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for item in headers:
        name, value = item
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("header names and values must be str")
        out.append((name, value))
    return out


def _make_request(
    method: str, url: _URL, user_headers: list[tuple[str, str]], body: _Body
) -> h11.Request:
    """Build (and thereby validate) the request head before touching the network."""
    wire: list[tuple[bytes, bytes]] = [(b"host", url.host_header.encode("ascii"))]
    close = False
    has_user_agent = False
    try:
        for name, value in user_headers:
            lname = name.lower()
            if lname in _CLIENT_OWNED_HEADERS:
                if lname == "connection" and "close" in {t.strip().lower() for t in value.split(",")}:
                    close = True
                continue
            has_user_agent = has_user_agent or lname == "user-agent"
            wire.append((name.encode("ascii"), value.encode("latin-1")))
    except UnicodeEncodeError:
        raise FetchError(f"invalid request header {name!r}: not representable in HTTP") from None
    if not has_user_agent:
        wire.append((b"user-agent", b"corral"))
    if body.data is not None:
        wire.append((b"content-length", str(len(body.data)).encode()))
    elif body.stream is not None:
        wire.append((b"transfer-encoding", b"chunked"))
    elif method in _BODYLESS_METHODS_NEEDING_LENGTH:
        wire.append((b"content-length", b"0"))
    if close:
        wire.append((b"connection", b"close"))
    try:
        return h11.Request(method=method, target=url.target, headers=wire)
    except h11.LocalProtocolError as exc:
        raise FetchError(f"invalid request to {url.host}: {exc}") from None


def _decode_location(value: str) -> str:
    # Header values are decoded as latin-1; servers in practice send UTF-8.
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value
