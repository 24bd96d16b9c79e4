"""Outbound HTTP client used by the supervisor to broker tenant ``fetch()``.

Tenant code never touches the network itself: its ``fetch()`` calls are sent
over IPC to the supervisor, which performs them with this client. Because the
requests are made *on behalf of untrusted code*, the client is strict:

* it only speaks http/https, and every new connection is opened by the
  egress backend (supervisor.calls.egress_backend), which resolves the host, vets
  every address with the platform's egress policy and dials an allowed IP;
  redirects are followed here, hop by hop (supervisor.calls.redirects), so each hop
  that needs a connection goes through that backend again;
* message framing (``Host``, ``Content-Length``, ``Transfer-Encoding``) and
  connection-management headers are owned by the client, never by the caller,
  so tenant code cannot smuggle requests or poison pooled connections;
* every wait on the network has a deadline (connect, each write, the
  response head, each body read) and response bodies are streamed with a
  hard size cap, so a hostile or broken upstream cannot pin supervisor
  memory or tasks;
* no cookie jar, no credentials from URLs, no proxies or certificates from
  the environment: nothing of one tenant's requests leaks into another's;
* it runs inside the caller's trio task (httpcore starts no background
  tasks): if the caller is cancelled, the connection in use is closed.

It is httpx on trio (HTTP/1.1 only, via httpcore and h11). Content codings
(gzip etc.) are *not* decoded here: bodies are passed through as received,
with their ``content-encoding`` header, and the child decodes one when the
worker reads it (sandbox.content_coding), as workerd's fetch does; returned
unread, it reaches the client as the upstream sent it.
"""

from __future__ import annotations

import http.cookiejar
import re
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any

import httpcore
import httpx
import trio

from protocol.http_grammar import TOKEN_BYTES
from supervisor.calls.egress import EgressPolicy
from supervisor.calls.egress_backend import EgressBackend, Resolver
from supervisor.calls.fetch_errors import FetchError, FetchTimeout, ResponseTooLarge
from supervisor.calls.redirects import MAX_REDIRECTS, RedirectPolicy, TooManyRedirects

__all__ = [
    "ClientResponse",
    "FetchError",
    "FetchTimeout",
    "HTTPClient",
    "ResponseTooLarge",
    "TooManyRedirects",
]

Header = tuple[bytes, bytes]

# Request bodies are written in pieces of at most this size, so the write
# timeout measures progress, not the time to send one huge chunk.
_CHUNK = 64 * 1024
# How much of a redirect response's body is read to keep its connection reusable.
_REDIRECT_DRAIN_LIMIT = 64 * 1024
# An idle pooled connection older than this is closed rather than reused.
_KEEPALIVE_EXPIRY = 30.0
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Methods that are safe to send again when a pooled connection turns out dead.
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Like fetch(): these names are upper-cased, any other method is sent as given.
_NORMALIZED_METHODS = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"})
# CONNECT would turn the connection into a tunnel; TRACE/TRACK echo credentials.
_FORBIDDEN_METHODS = frozenset({"CONNECT", "TRACE", "TRACK"})
# Framing and hop-by-hop headers: set by the client, caller values are ignored.
_CLIENT_OWNED_HEADERS = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
     b"proxy-connection", b"upgrade", b"te", b"trailer", b"expect"}
)
# What httpcore says when a server closes the connection before any response
# byte: the signature of a keep-alive connection the server dropped meanwhile.
_NO_RESPONSE = "Server disconnected without sending a response."
# RFC 9110 field names, and the bytes no field value may hold: checked before
# connecting, so a bad header costs no connection (h11 checks again on send).
_BAD_VALUE = re.compile(rb"[\x00\r\n]")


class _NoCookies(http.cookiejar.CookieJar):
    """A jar that keeps nothing: the client is shared by all tenants."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        pass


class _Transport(httpx.AsyncHTTPTransport):
    """httpx's transport over an httpcore pool that dials through ``backend``.

    httpx 0.28 takes no network backend (encode/httpx#3180), so the pool it
    builds is swapped for one with ours, failing closed if httpx ever keeps
    its pool elsewhere (a pool without the backend would skip egress checks).
    """

    def __init__(self, backend: httpcore.AsyncNetworkBackend, ssl_context: ssl.SSLContext,
                 limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("unsupported httpx version: its transport has no pool to replace")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=backend,
        )


# --------------------------------------------------------------------------- response


def _own_phrase(status: int, phrase: bytes | None) -> str:
    """The reason phrase httpcore read, as workerd hands it to JavaScript
    (UTF-8; obs-text that is not UTF-8 becomes U+FFFD), or "" when it is
    the standard one. httpx's own ``reason_phrase`` drops non-ASCII."""
    if not phrase:
        return ""
    text = phrase.decode("utf-8", "replace")
    return "" if text == httpx.codes.get_reason_phrase(status) else text


class ClientResponse:
    """Response head plus a streaming body.

    The body is pulled from the connection only as the caller asks for it, so
    a large download never sits in memory; the connection goes back to the
    pool once the body has been read to the end, and is closed otherwise.
    Always finish with :meth:`read_all`, reading until ``b""``,
    :meth:`aclose` or :meth:`close`.
    """

    status: int
    reason: str
    #: fetch's ``statusText``: the upstream's own reason phrase, "" when it
    #: is the status's standard one (the child then gives that).
    status_text: str
    url: str
    #: ``(name, value)`` as received, names lower-cased.
    headers: list[Header]
    redirected: bool

    def __init__(self, client: HTTPClient, response: httpx.Response, url: str,
                 redirected: bool) -> None:
        self.status = response.status_code
        self.reason = response.reason_phrase
        self.status_text = _own_phrase(self.status, response.extensions.get("reason_phrase"))
        self.url = url
        self.headers = [(name.lower(), value) for name, value in response.headers.raw]
        self.redirected = redirected
        self._client = client
        self._response = response
        self._host = response.request.url.host
        self._chunks: AsyncIterator[bytes] = response.aiter_raw()
        self._received = 0
        self._complete = False
        self._closed = False
        self._declared_length: int | None = None
        length = response.headers.get("content-length")
        if (response.request.method != "HEAD" and self.status not in (204, 304)
                and "transfer-encoding" not in response.headers and length is not None):
            self._declared_length = int(length)

    def __repr__(self) -> str:
        return f"<ClientResponse {self.status} {self.reason!r} {self.url}>"

    @property
    def length(self) -> int | None:
        """The body's length as the upstream declared it (Content-Length;
        None for a chunked or close-delimited body, a HEAD's, a 204's or a 304's)."""
        return self._declared_length

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), if any."""
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
        if self._closed:
            if self._complete:
                return b""
            raise FetchError(f"response body from {self._host} is closed")
        limit = self._client._max_response_bytes
        try:
            if self._declared_length is not None and self._declared_length > limit:
                raise ResponseTooLarge(
                    f"response body from {self._host} ({self._declared_length} bytes) "
                    f"exceeds the {limit}-byte limit")
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:  # the response released its connection
                self._complete = self._closed = True
                return b""
            except httpx.HTTPError as exc:
                raise self._client._error(exc, self._host, "reading the response body from") from None
            self._received += len(chunk)
            if self._received > limit:
                raise ResponseTooLarge(f"response body from {self._host} exceeds the {limit}-byte limit")
            return chunk
        except BaseException:
            await self.aclose()
            raise

    async def read_all(self) -> bytes:
        """Read the rest of the body into memory (still capped by ``max_response_bytes``)."""
        chunks = []
        while chunk := await self.receive_some():
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        """Stop reading: the connection is closed unless the body was complete."""
        if not self._closed:
            self._closed = True
            await self._response.aclose()

    def close(self) -> None:
        """:meth:`aclose` for callers that cannot await (a consumer that went
        away): the connection is closed by a system task, never pooled."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.spawn_system_task(_close_quietly, self._response)

    async def _discard(self) -> None:
        """Throw away a redirect's body, keeping the connection if it is short."""
        try:
            seen = 0
            while seen <= _REDIRECT_DRAIN_LIMIT and (chunk := await self.receive_some()):
                seen += len(chunk)
        except FetchError:
            pass
        await self.aclose()


async def _close_quietly(response: httpx.Response) -> None:
    try:
        await response.aclose()
    except Exception:  # a system task must not raise; the socket is closed either way
        pass


# --------------------------------------------------------------------------- client


class HTTPClient:
    """Pooled HTTP/1.1 client; one instance per supervisor.

    ``connect_timeout`` bounds DNS + TCP, and separately the TLS handshake;
    ``read_timeout`` bounds the wait for the response head, each body read
    and each write of the request (so a server that stops reading an upload
    cannot hang us). ``policy`` is the egress policy applied to every
    resolved address (None allows all); ``resolve`` replaces the system
    resolver (it returns IP literals; its exceptions propagate unchanged).
    ``max_connections`` caps open connections (None: no cap, as each
    tenant's concurrency is already bounded by its subrequest limit);
    ``max_idle_connections`` caps those kept alive for reuse.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 10,
        read_timeout: float = 30,
        max_response_bytes: int = 128 * 2**20,
        max_redirects: int = MAX_REDIRECTS,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int | None = None,
        max_idle_connections: int = 32,
        policy: EgressPolicy | None = None,
        resolve: Resolver | None = None,
    ) -> None:
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if max_response_bytes < 0 or max_redirects < 0 or max_idle_connections < 0:
            raise ValueError("limits must not be negative")
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_response_bytes = max_response_bytes
        self._max_redirects = max_redirects
        if ssl_context is None:
            ssl_context = ssl.create_default_context()  # the system's trust store
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_idle_connections,
                              keepalive_expiry=_KEEPALIVE_EXPIRY)
        self._client = httpx.AsyncClient(
            transport=_Transport(EgressBackend(policy, resolve), ssl_context, limits),
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout,
                                  write=read_timeout, pool=connect_timeout),
            cookies=_NoCookies(),
            follow_redirects=False,
            trust_env=False,
        )

    async def __aenter__(self) -> HTTPClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close all pooled connections; the client cannot be used afterwards."""
        await self._client.aclose()

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[bytes | str, bytes | str]] = (),
        body: bytes | AsyncIterable[bytes] | None = None,
        *,
        redirect: str = "follow",
        length: int | None = None,
        on_redirect: Callable[[], None] | None = None,
    ) -> ClientResponse:
        """Send a request and return once the response head has arrived.

        ``redirect`` is fetch's redirect mode (see supervisor.calls.redirects);
        ``on_redirect`` is called before each redirect is followed, and what
        it raises ends the request (a subrequest limit: every hop is one).
        ``length``: a streamed body's length, when its source knows it: sent
        as its Content-Length (not chunked, as from workerd), and held to it
        by the HTTP/1.1 writer (a body that gives more or fewer bytes fails the
        request). The caller must consume or close the returned response.
        """
        method = _normalize_method(method)
        if body is not None and not isinstance(body, bytes):
            if isinstance(body, (bytearray, memoryview)):
                body = bytes(body)
            elif not hasattr(body, "__aiter__"):
                raise TypeError("body must be bytes, an async iterator of bytes or None, "
                                f"not {type(body).__name__}")
        streamed = body is not None and not isinstance(body, bytes)
        policy = RedirectPolicy(url, method, _raw_headers(headers), mode=redirect,
                                streamed_body=streamed, max_redirects=self._max_redirects)
        while True:
            response = await self._send(policy, body, length)
            try:
                hop = policy.next_hop(response.status, response.header(b"location"))
            except BaseException:
                await response.aclose()
                raise
            if hop is None:
                response.redirected = policy.redirected
                return response
            await response._discard()
            if on_redirect is not None:
                on_redirect()
            if hop.drop_body:
                body, length = None, None

    async def upgrade(self, url: str, headers: Iterable[tuple[bytes | str, bytes | str]]
                      ) -> tuple[int, list[Header], Any, httpx.Response]:
        """A WebSocket handshake (``ws:``/``wss:`` or ``http(s):`` ``url``):
        the GET with ``Upgrade: websocket`` and ``headers`` (the key, version
        and protocols; the caller's own), on a connection of its own, under
        the egress policy as any fetch. Returns the status, the response
        headers, and on a 101 the connection's stream (``read``, ``write``,
        ``aclose``; None otherwise) and the response to close when done."""
        scheme, colon, rest = url.strip().partition(":")
        scheme = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme)
        parsed = _parse_url(scheme + colon + rest)
        wire = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"user-agent", b"corral")]
        wire += [(n.encode() if isinstance(n, str) else n, v.encode() if isinstance(v, str) else v)
                 for n, v in headers]
        request = httpx.Request("GET", parsed, headers=wire)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._error(exc, parsed.host, "waiting for the handshake's answer from",
                              port=parsed.port or _DEFAULT_PORTS[parsed.scheme]) from None
        stream = response.extensions.get("network_stream") if response.status_code == 101 else None
        if stream is None:
            await _close_quietly(response)
        return response.status_code, list(response.headers.raw), stream, response

    # ------------------------------------------------------------------ internals

    async def _send(self, policy: RedirectPolicy, body: bytes | AsyncIterable[bytes] | None,
                    length: int | None = None) -> ClientResponse:
        """One request/response, sent once more on a fresh connection if the
        server closed a (pooled) connection without answering and the request
        is safe to repeat."""
        url = _parse_url(policy.url)
        request = _build_request(policy.method, url, policy.headers, body, length)
        replayable = policy.method in _IDEMPOTENT_METHODS and not isinstance(body, AsyncIterable)
        try:
            try:
                response = await self._client.send(request, stream=True)
            except httpx.RemoteProtocolError as exc:
                if not (replayable and str(exc) == _NO_RESPONSE):
                    raise
                response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._error(exc, url.host, "waiting for the response headers from",
                              port=url.port or _DEFAULT_PORTS[url.scheme]) from None
        href = str(url).partition("#")[0]
        return ClientResponse(self, response, href, policy.redirected)

    def _error(self, exc: httpx.HTTPError, host: str, reading: str, *,
               port: int | None = None) -> FetchError:
        """The tenant-facing error for an httpx failure."""
        where = f"{host}:{port}" if port else host
        if isinstance(exc, httpx.ConnectTimeout):
            return FetchTimeout(f"timed out after {self._connect_timeout:g}s connecting to {where}")
        if isinstance(exc, httpx.PoolTimeout):
            return FetchTimeout(
                f"timed out after {self._connect_timeout:g}s waiting for a free connection to {host}")
        if isinstance(exc, httpx.WriteTimeout):
            return FetchTimeout(f"timed out after {self._read_timeout:g}s sending the request to {host}")
        if isinstance(exc, httpx.TimeoutException):
            return FetchTimeout(f"timed out after {self._read_timeout:g}s {reading} {host}")
        if isinstance(exc, httpx.ConnectError):
            tls = _ssl_error(exc)
            if tls is not None:
                return FetchError(f"TLS handshake with {host} failed: {tls}")
            return FetchError(str(exc) or f"could not connect to {where}")
        if isinstance(exc, httpx.RemoteProtocolError):
            if str(exc) == _NO_RESPONSE:
                return FetchError(f"{host} closed the connection without sending a response")
            return FetchError(f"bad response from {host}: {exc}")
        if isinstance(exc, httpx.LocalProtocolError):
            return FetchError(f"invalid request to {host}: {exc}")
        if isinstance(exc, (httpx.ReadError, httpx.WriteError)):
            return FetchError(f"connection to {host} failed: {_cause(exc)}")
        return FetchError(f"request to {host} failed: {exc}")


# --------------------------------------------------------------------------- helpers


def _normalize_method(method: str) -> str:
    if not isinstance(method, str) or not method:
        raise FetchError(f"invalid method {method!r}")
    upper = method.upper()
    if upper in _FORBIDDEN_METHODS:
        raise FetchError(f"method {method!r} is not allowed")
    return upper if upper in _NORMALIZED_METHODS else method


def _raw_headers(headers: Iterable[tuple[bytes | str, bytes | str]]) -> list[Header]:
    out = []
    for name, value in headers:
        try:
            out.append((name.encode("latin-1") if isinstance(name, str) else bytes(name),
                        value.encode("latin-1") if isinstance(value, str) else bytes(value)))
        except (UnicodeEncodeError, TypeError):
            raise TypeError(f"invalid header {name!r}: names and values must be str "
                            "(latin-1) or bytes") from None
    return out


def _parse_url(url: str) -> httpx.URL:
    """``url`` as httpx parses it (percent-encoding, IDNA), if fetch may use it."""
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise FetchError(f"invalid URL {url!r}: {exc}") from None
    if parsed.scheme not in _DEFAULT_PORTS:
        raise FetchError(f"unsupported URL scheme {parsed.scheme!r} in {url!r}: "
                         "only http and https are allowed")
    if parsed.userinfo:
        raise FetchError(f"invalid URL {url!r}: embedded credentials are not supported")
    if not parsed.host:
        raise FetchError(f"invalid URL {url!r}: missing host")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise FetchError(f"invalid URL {url!r}: bad port {parsed.port}")
    return parsed


def _build_request(method: str, url: httpx.URL, headers: list[Header],
                   body: bytes | AsyncIterable[bytes] | None, length: int | None = None) -> httpx.Request:
    """The request as sent: caller headers minus the client's own, which
    httpx derives from the URL and body (Host, Content-Length or chunked),
    but a streamed body of known ``length`` says it (httpx then frames it
    by that Content-Length, not chunks)."""
    wire: list[Header] = []
    close = False
    for name, value in headers:
        if not TOKEN_BYTES.fullmatch(name) or _BAD_VALUE.search(value):
            raise FetchError(f"invalid request to {url.host}: bad header {name!r}: {value!r}")
        lname = name.lower()
        if lname in _CLIENT_OWNED_HEADERS:
            if lname == b"connection" and b"close" in {t.strip().lower() for t in value.split(b",")}:
                close = True
            continue
        wire.append((name, value))
    if not any(name.lower() == b"user-agent" for name, _ in wire):
        wire.append((b"user-agent", b"corral"))
    if close:
        wire.append((b"connection", b"close"))
    if length is not None and isinstance(body, AsyncIterable):
        wire.append((b"content-length", b"%d" % length))
    content = _pieces(body) if isinstance(body, AsyncIterable) else body
    request = httpx.Request(method, url, headers=wire, content=content)
    request.method = method  # httpx upper-cases every method; fetch only the standard ones
    return request


async def _pieces(body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """A streamed request body, checked and cut into writes of at most 64 KiB."""
    async for chunk in body:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"request body chunks must be bytes, not {type(chunk).__name__}")
        view = memoryview(chunk).cast("B")
        for i in range(0, len(view), _CHUNK):
            yield bytes(view[i : i + _CHUNK])


def _ssl_error(exc: BaseException) -> str | None:
    """The TLS failure behind a connect error, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return getattr(seen, "verify_message", None) or seen.reason or str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _cause(exc: BaseException) -> str:
    """The most specific description of a transport error (the OSError or
    trio error httpcore wrapped)."""
    root: BaseException = exc
    while root.__cause__ is not None:
        root = root.__cause__
    return str(root) or type(root).__name__
