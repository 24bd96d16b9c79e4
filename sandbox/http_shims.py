"""``requests``, ``urllib3``, ``urllib.request``, ``httpx``, ``aiohttp`` and ``anyio.to_thread`` in the jail.

A child has no sockets: every outbound request is a call brokered by the
supervisor (its outbound worker, egress policy and subrequest limit apply).
When a tenant imports one of these libraries, an import hook patches it
right after it loads so that its requests go through ``workers.fetch``:

* ``urllib3``: ``HTTPConnectionPool.urlopen`` (which ``requests`` uses);
* ``urllib.request``: the HTTP and HTTPS handlers of ``urlopen``;
* ``httpx``: the default transport of ``Client`` (synchronous, through
  :func:`sandbox.run_sync.run_sync`) and of ``AsyncClient``, and the
  requests of its socket transports (``HTTPTransport``,
  ``AsyncHTTPTransport``) when a client is given one; the same for
  ``httpx2``, the httpx fork the OpenAI and Anthropic SDKs import instead;
* ``aiohttp``: ``ClientSession._request`` (Cloudflare documents aiohttp and
  httpx as the HTTP clients of Python Workers);
* ``anyio.to_thread.run_sync``: threads cannot start in the jail, so the
  function runs inline in the calling invocation (what Starlette and FastAPI
  use for ``def`` endpoints), where ``run_sync`` still works.

Nothing here imports those libraries: a script that does not use them pays
nothing.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import re
import socket
import types
from collections.abc import Callable
from typing import Any

from . import content_coding, import_patches
from .run_sync import run_sync


def _workers() -> Any:
    from . import workers
    return workers


async def _brokered(method: str, url: str, headers: list[tuple[str, str]], body: bytes | None,
                    timeout: float | None = None) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """One request through the supervisor; redirects are the library's business.

    ``timeout`` is the client's own (``requests.get(url, timeout=5)``): past it
    the subrequest is aborted and a ``FetchTimeout`` raised, which each
    library's shim turns into its timeout error, as urllib3's Pyodide backend
    does with an AbortController on Cloudflare. Without one, the
    supervisor's ``[outbound]`` timeouts still bound the wait."""
    workers = _workers()
    request = workers.Request(url, method=method, headers=headers,
                              body=body if body and method.upper() not in ("GET", "HEAD") else None,
                              redirect="manual")

    async def exchange() -> tuple[int, str, list[tuple[str, str]], bytes]:
        response = await workers.fetch(request)
        data = await response.bytes()
        # The upstream's headers as they came: each library's shim tells from
        # them whether the body was decoded as it was read (_decoded).
        return response.status, response.status_text, response.headers.items(), data

    if timeout is None:
        return await exchange()
    try:
        return await asyncio.wait_for(exchange(), timeout)
    except TimeoutError:
        raise workers.NetworkError("FetchTimeout", f"reading from {url} timed out: no response within the "
                                   f"client's timeout of {timeout:g} s") from None


def _seconds(*candidates: Any) -> float | None:
    """The first of ``candidates`` that is a number of seconds (a client's
    timeout settings hold None, or sentinels, for "no timeout")."""
    for value in candidates:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return None


#: errno by the OS's word for it (a brokered error names the reason so).
_ERRNOS = {os.strerror(number): number for number in errno.errorcode}
#: getaddrinfo's EAI_* code by glibc's word for it.
_EAI = {"Name or service not known": socket.EAI_NONAME,
        "Temporary failure in name resolution": socket.EAI_AGAIN,
        "Non-recoverable failure in name resolution": socket.EAI_FAIL,
        "No address associated with hostname": getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
_RESOLVING, _CONNECTING = "could not resolve ", "could not connect to "
#: How the supervisor words a connect timeout (supervisor.calls.http_client).
_CONNECT_TIMEOUT = re.compile(r"timed out after \S+ connecting to ")


def _timed_out_connecting(exc: Any) -> bool:
    """Whether a brokered ``FetchTimeout`` came while connecting (no
    connection was made), not while waiting for or reading the response."""
    return exc.timeout and _CONNECT_TIMEOUT.match(exc.message) is not None


def _socket_error(exc: Any) -> OSError | None:
    """The ``OSError`` the socket layer raises for what failed a brokered
    request, as the libraries' own connection code sees it:
    ``socket.gaierror`` for a failed lookup, ``ConnectionRefusedError`` (and
    the other errno subclasses) for a failed connect, ``TimeoutError`` for a
    timeout; None for failures no socket call would raise (a refused
    redirect, a malformed response). The supervisor words the first two
    ``could not resolve HOST: REASON`` and ``could not connect to
    HOST:PORT: REASON`` (supervisor.calls.egress_backend), REASON being the
    C library's own message, which gives the code back."""
    message = exc.message
    if exc.timeout:
        return TimeoutError(message)
    if message.startswith(_RESOLVING):
        reason = message[len(_RESOLVING):].partition(": ")[2] or message
        return socket.gaierror(_EAI.get(reason, socket.EAI_NONAME), reason)
    if message.startswith(_CONNECTING):
        reason = message[len(_CONNECTING):].partition(": ")[2]
        if reason in _ERRNOS:
            return OSError(_ERRNOS[reason], reason)  # its subclass: ConnectionRefusedError, ...
    return None


def _decoded(headers: list[tuple[str, str]]) -> bool:
    """Whether ``workers.fetch`` decoded the body these headers came with: it
    does when Content-Encoding names one coding it handles (``gzip``, and
    ``br`` under the script's brotli_content_encoding: see
    sandbox.content_coding), and leaves it be otherwise (deflate, zstd, a list)."""
    codings = [v for k, v in headers if k.lower() == "content-encoding"]
    return content_coding.coding_of(", ".join(codings)) is not None


def _urllib3_timeout(timeout: Any) -> float | None:
    """Seconds to wait for a response under urllib3's ``timeout`` (a number or
    a ``Timeout``; ``requests`` passes ``Timeout(connect=t, read=t)``)."""
    if hasattr(timeout, "total"):
        try:
            return _seconds(timeout.total, timeout.read_timeout, timeout.connect_timeout)
        except Exception:  # noqa: BLE001 - a Timeout in a state urllib3 refuses to read
            return None
    return _seconds(timeout)


def _body_bytes(body: Any) -> bytes | None:
    if body is None:
        return None
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if hasattr(body, "read"):
        data = body.read()
        return data.encode() if isinstance(data, str) else bytes(data)
    return b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in body)


# -- urllib3 (and requests) -----------------------------------------------------


def patch_urllib3(module: types.ModuleType) -> None:
    pool_cls = module.HTTPConnectionPool

    class BrokeredHTTPResponse(module.HTTPResponse):
        """urllib3's response over a body ``workers.fetch`` has decoded as it
        read it: its headers stay the upstream's (``Content-Encoding: gzip``
        and the compressed Content-Length, as urllib3 shows them beside the
        body it decodes), and it does not decode a second time."""

        def _init_decoder(self) -> None:
            if not _decoded(list(self.headers.items())):
                super()._init_decoder()

        def _init_length(self, request_method: Any) -> Any:
            # The Content-Length counts the encoded bytes, not these.
            return None if _decoded(list(self.headers.items())) else super()._init_length(request_method)

    response_cls = BrokeredHTTPResponse

    retry_cls = module.util.Retry
    errors = module.exceptions

    def urlopen(self: Any, method: str, url: str, body: Any = None, headers: Any = None,
                retries: Any = None, redirect: bool = True, assert_same_host: bool = True,
                timeout: Any = None, pool_timeout: Any = None, release_conn: Any = None,
                chunked: bool = False, body_pos: Any = None, preload_content: bool = True,
                decode_content: bool = True, **kw: Any) -> Any:
        """urllib3's own ``urlopen`` over the brokered fetch: its ``Retry``
        decides on errors, statuses and redirects, as it does there."""
        if url.startswith("/"):
            port = f":{self.port}" if self.port else ""
            url = f"{self.scheme}://{self.host}{port}{url}"
        if not isinstance(retries, retry_cls):
            retries = retry_cls.from_int(retries, redirect=redirect, default=self.retries)
        pairs = list((headers or self.headers or {}).items())
        if timeout is not None and not isinstance(timeout, (int, float)) and not hasattr(timeout, "total"):
            timeout = self.timeout  # urllib3's default sentinel: the pool's (None is no timeout)
        wait = _urllib3_timeout(timeout)
        again = (assert_same_host, timeout, pool_timeout, release_conn, chunked, body_pos,
                 preload_content, decode_content)
        try:
            status, reason, out_headers, data = run_sync(
                _brokered(method, url, pairs, _body_bytes(body), wait))
        except _workers().NetworkError as exc:
            # The Retry's verdict raises (MaxRetryError, or the error itself
            # when retries are off), or it is a Retry with one try fewer.
            retries = retries.increment(method, url, error=_urllib3_reason(module, self, url, exc), _pool=self)
            retries.sleep()
            return self.urlopen(method, url, body, headers, retries, redirect, *again)
        response = response_cls(body=io.BytesIO(data), headers=out_headers, status=status,
                                reason=reason, preload_content=preload_content,
                                decode_content=decode_content, request_method=method,
                                request_url=url, enforce_content_length=False, retries=retries,
                                original_response=_OriginalResponse(out_headers, status, reason))
        location = redirect and response.get_redirect_location()
        if location:
            import urllib.parse
            following = next_try(retries, method, url, response, self, retries.raise_on_redirect)
            if following is None:
                return response
            following.sleep_for_retry(response)
            follow = "GET" if status == 303 else method
            return self.urlopen(follow, urllib.parse.urljoin(url, location),
                                None if follow == "GET" else body, headers, following, redirect, *again)
        if retries.is_retry(method, status, bool(response.headers.get("Retry-After"))):
            again_with = next_try(retries, method, url, response, self, retries.raise_on_status)
            if again_with is None:
                return response
            again_with.sleep(response)
            return self.urlopen(method, url, body, headers, again_with, redirect, *again)
        return response

    def next_try(retries: Any, method: str, url: str, response: Any, pool: Any, raising: bool) -> Any:
        """The Retry for one more try after ``response`` (a redirect, a status
        to retry), or None when there is none and the response is the answer
        (MaxRetryError raised instead when ``raising``)."""
        try:
            return retries.increment(method, url, response=response, _pool=pool)
        except errors.MaxRetryError:
            if raising:
                raise
            return None

    pool_cls.urlopen = urlopen


def _urllib3_reason(urllib3: Any, pool: Any, url: str, exc: Any) -> Exception:
    """What urllib3 raises itself when no response came: ``ReadTimeoutError``
    or ``ConnectTimeoutError`` for a timeout, ``NameResolutionError`` (2.x)
    for a failed lookup, else ``NewConnectionError``; its Retry then wraps
    it in ``MaxRetryError``, or raises it as it is (``requests`` passes
    ``Retry(0, read=False)``, and turns these into its ``ConnectionError``,
    ``ConnectTimeout`` and ``ReadTimeout``)."""
    errors = urllib3.exceptions
    if exc.timeout:
        if _timed_out_connecting(exc):
            return errors.ConnectTimeoutError(pool, exc.message)
        return errors.ReadTimeoutError(pool, url, exc.message)
    failure = _socket_error(exc)
    if isinstance(failure, socket.gaierror) and hasattr(errors, "NameResolutionError"):
        return errors.NameResolutionError(pool.host, pool, failure)
    if failure is not None:  # worded as urllib3's HTTPConnection words it
        return errors.NewConnectionError(pool, f"Failed to establish a new connection: {failure}")
    return errors.NewConnectionError(pool, exc.message)


class _OriginalResponse:
    """What ``requests`` reads of the ``http.client`` response underneath
    urllib3's (its cookie jar takes Set-Cookie from ``msg``)."""

    def __init__(self, headers: list[tuple[str, str]], status: int, reason: str) -> None:
        import http.client

        self.msg = http.client.HTTPMessage()
        for name, value in headers:
            self.msg[name] = value
        self.headers = self.msg
        self.status, self.reason = status, reason

    def isclosed(self) -> bool:
        return True

    def close(self) -> None:
        pass


# -- urllib.request ------------------------------------------------------------------


def patch_urllib_request(module: types.ModuleType) -> None:
    """``urlopen``'s HTTP and HTTPS handlers: the brokered fetch. Redirects and
    ``HTTPError`` stay urllib's own (its processors see the 3xx/4xx response)."""
    import http.client

    def open_brokered(self: Any, req: Any) -> Any:
        headers = [(k, v) for k, v in req.header_items() if k.lower() not in ("host", "connection")]
        try:
            status, reason, out_headers, data = run_sync(
                _brokered(req.get_method(), req.full_url, headers, _body_bytes(req.data),
                          _seconds(getattr(req, "timeout", None))))
        except _workers().NetworkError as exc:
            raise _urllib_error(module, exc) from None
        # urllib decodes nothing itself, so a body workers.fetch decoded must
        # not be labelled with its coding nor with the encoded length.
        dropped = ("content-encoding", "content-length") if _decoded(out_headers) else ()
        message = http.client.HTTPMessage()
        for name, value in out_headers:
            if name.lower() not in dropped:
                message[name] = value
        response = module.addinfourl(io.BytesIO(data), message, req.full_url, status)
        response.msg = response.reason = reason  # as http.client.HTTPResponse has them
        return response

    module.HTTPHandler.http_open = open_brokered
    module.HTTPSHandler.https_open = open_brokered


def _urllib_error(urllib_request: Any, exc: Any) -> OSError:
    """What ``urlopen`` raises when no response came, as CPython's
    ``AbstractHTTPHandler.do_open``: a failure sending the request (lookup,
    connect, connect timeout) is a ``URLError`` whose ``reason`` is the
    socket's ``OSError``; a timeout waiting for the response comes out of
    ``getresponse()`` bare, as ``TimeoutError`` (``socket.timeout``)."""
    failure = _socket_error(exc)
    if exc.timeout and not _timed_out_connecting(exc):
        return failure
    return urllib_request.URLError(failure if failure is not None else exc)


# -- httpx ---------------------------------------------------------------------------


def patch_httpx(module: types.ModuleType) -> None:
    httpx = module

    class BrokeredTransport(httpx.BaseTransport):
        """``httpx.Client``'s transport: the brokered fetch, awaited with run_sync."""

        def handle_request(self, request: Any) -> Any:
            try:
                status, _, headers, data = run_sync(_brokered(
                    request.method, str(request.url), list(request.headers.items()), request.read(),
                    _httpx_timeout(request)))
            except _workers().NetworkError as exc:
                raise _httpx_error(httpx, exc, request) from None
            return _httpx_response(httpx, status, headers, data)

    class AsyncBrokeredTransport(httpx.AsyncBaseTransport):
        """``httpx.AsyncClient``'s transport: the brokered fetch."""

        async def handle_async_request(self, request: Any) -> Any:
            try:
                status, _, headers, data = await _brokered(
                    request.method, str(request.url), list(request.headers.items()), await request.aread(),
                    _httpx_timeout(request))
            except _workers().NetworkError as exc:
                raise _httpx_error(httpx, exc, request) from None
            return _httpx_response(httpx, status, headers, data)

    def sync_transport(self: Any, *args: Any, transport: Any = None, **kwargs: Any) -> Any:
        return transport if transport is not None else BrokeredTransport()

    def async_transport(self: Any, *args: Any, transport: Any = None, **kwargs: Any) -> Any:
        return transport if transport is not None else AsyncBrokeredTransport()

    httpx.Client._init_transport = sync_transport
    httpx.Client._init_proxy_transport = lambda self, proxy, *a, **k: BrokeredTransport()
    httpx.AsyncClient._init_transport = async_transport
    httpx.AsyncClient._init_proxy_transport = lambda self, proxy, *a, **k: AsyncBrokeredTransport()
    httpx.BrokeredTransport = BrokeredTransport
    httpx.AsyncBrokeredTransport = AsyncBrokeredTransport
    # A client given httpx's own socket transport explicitly (the Anthropic
    # SDK builds ``HTTPTransport(socket_options=...)`` for its keep-alive
    # settings; users pass ``HTTPTransport(retries=3)``) would reach for a
    # socket the jail refuses: its requests take the brokered fetch too.
    httpx.HTTPTransport.handle_request = BrokeredTransport.handle_request
    httpx.AsyncHTTPTransport.handle_async_request = AsyncBrokeredTransport.handle_async_request


def _httpx_timeout(request: Any) -> float | None:
    """Seconds to wait for a response under the request's httpx timeouts."""
    timeouts = request.extensions.get("timeout") or {}
    return _seconds(timeouts.get("read"), timeouts.get("connect"))


def _httpx_error(httpx: Any, exc: Any, request: Any) -> Exception:
    """httpx's own exception for a request that got no response."""
    if not exc.timeout:
        return httpx.ConnectError(exc.message, request=request)
    cls = httpx.ConnectTimeout if _timed_out_connecting(exc) else httpx.ReadTimeout
    return cls(exc.message, request=request)


def _httpx_response(httpx: Any, status: int, headers: list[tuple[str, str]], data: bytes) -> Any:
    """httpx's response over the brokered one. It is built without the
    framing headers and a coding ``workers.fetch`` already undid (httpx
    reads ``content`` at once, decoding by Content-Encoding), then given
    the upstream's headers as they came, as httpx shows them beside the
    body it decoded (``content-encoding: gzip``, the compressed length)."""
    decoded = _decoded(headers)
    framing = ("content-length", "transfer-encoding") + (("content-encoding",) if decoded else ())
    response = httpx.Response(status, headers=[(k, v) for k, v in headers if k.lower() not in framing],
                              content=data)
    response.headers = httpx.Headers(headers)
    return response


# -- aiohttp -------------------------------------------------------------------------


def patch_aiohttp(module: types.ModuleType) -> None:
    """``aiohttp.ClientSession``'s requests: the brokered fetch. Its
    ``_request`` (behind ``get``/``post``/``request``, awaited or used with
    ``async with``) answers a :class:`BrokeredResponse`; the session's base
    URL, default headers, ``auth``, cookies (its jar, both ways), ``params``,
    ``json``/``data`` bodies (``FormData`` too), redirects and
    ``raise_for_status`` are honoured, its connector is never used."""
    aiohttp = module

    async def _request(self: Any, method: str, str_or_url: Any, *, params: Any = None, data: Any = None,
                       json: Any = None, headers: Any = None, allow_redirects: bool = True,
                       max_redirects: int = 10, raise_for_status: Any = None, auth: Any = None,
                       cookies: Any = None, **_options: Any) -> Any:
        import yarl

        url = yarl.URL(str(str_or_url))
        if getattr(self, "_base_url", None) is not None and not url.is_absolute():
            url = self._base_url.join(url)
        if params:
            url = url.extend_query(params)
        sent = _aiohttp_headers(aiohttp, self, headers)
        auth = auth if auth is not None else getattr(self, "_default_auth", None)
        if auth is not None and "Authorization" not in sent:
            sent["Authorization"] = auth.encode()
        body = await _aiohttp_body(aiohttp, data, json, sent)
        jar = getattr(self, "_cookie_jar", None)
        history = []
        while True:
            request_headers = sent.copy()
            if "Cookie" not in request_headers:
                # As aiohttp's ClientRequest: the jar's cookies for the URL, then
                # the request's own (which do not join the jar).
                pairs = {m.key: m.value for m in (jar.filter_cookies(url).values() if jar is not None else ())}
                pairs.update((str(k), str(getattr(v, "value", v)))
                             for k, v in (cookies.items() if hasattr(cookies, "items") else cookies or ()))
                if pairs:
                    request_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in pairs.items())
            try:
                status, reason, out, payload = await _brokered(
                    method, str(url), list(request_headers.items()), body,
                    _aiohttp_timeout(_options.get("timeout"), self))
            except _workers().NetworkError as exc:
                raise _aiohttp_error(aiohttp, exc, url) from None
            response = BrokeredResponse(aiohttp, method, url, status, reason, out, payload, request_headers,
                                        history)
            if jar is not None and response.cookies:
                jar.update_cookies(response.cookies, url)
            location = response.headers.get("location")
            if not (allow_redirects and status in (301, 302, 303, 307, 308) and location):
                break
            if len(history) >= max_redirects:
                raise aiohttp.TooManyRedirects(response.request_info, tuple(history))
            history.append(response)
            url = url.join(yarl.URL(location))
            if status == 303 or (status in (301, 302) and method.upper() == "POST"):
                method, body = "GET", None
        check = self._raise_for_status if raise_for_status is None else raise_for_status
        if callable(check):
            await check(response)
        elif check:
            response.raise_for_status()
        return response

    aiohttp.ClientSession._request = _request


def _aiohttp_error(aiohttp: Any, exc: Any, url: Any) -> Exception:
    """What aiohttp raises when no response came: ``ServerTimeoutError`` for
    a timeout; as its ``TCPConnector``, ``ClientConnectorDNSError`` for a
    failed lookup and ``ClientConnectorError`` for a failed connect (both
    ``OSError``s, naming the connection and the socket's error)."""
    if exc.timeout:
        return aiohttp.ServerTimeoutError(exc.message)
    failure = _socket_error(exc)
    if failure is None:
        return aiohttp.ClientConnectionError(exc.message)
    cls = aiohttp.ClientConnectorError
    if isinstance(failure, socket.gaierror):  # aiohttp before 3.11 has no DNS subclass
        cls = getattr(aiohttp, "ClientConnectorDNSError", cls)
    return cls(_aiohttp_connection_key(url), failure)


def _aiohttp_connection_key(url: Any) -> Any:
    """The ``ConnectionKey`` aiohttp's request gives its connector errors (a
    NamedTuple lately, an attrs class before; fields come and go)."""
    import inspect

    from aiohttp.client_reqrep import ClientRequest, ConnectionKey

    # A request's default ``ssl`` (True lately, None before 3.10): its str says "ssl:default".
    ssl = inspect.signature(ClientRequest).parameters["ssl"].default
    values = {"host": url.raw_host or "", "port": url.port, "is_ssl": url.scheme in ("https", "wss"),
              "ssl": ssl, "proxy": None, "proxy_auth": None, "proxy_headers_hash": None,
              "server_hostname": None}
    fields = inspect.signature(ConnectionKey).parameters
    return ConnectionKey(**{name: value for name, value in values.items() if name in fields})


def _aiohttp_timeout(timeout: Any, session: Any) -> float | None:
    """Seconds to wait for a response under a request's ``timeout=`` (a
    ``ClientTimeout`` or a number) or else its session's."""
    chosen = timeout if timeout is not None else getattr(session, "_timeout", None)
    if hasattr(chosen, "total"):
        return _seconds(chosen.total, chosen.sock_read, chosen.connect)
    return _seconds(chosen)


def _aiohttp_headers(aiohttp: Any, session: Any, headers: Any) -> Any:
    """The session's default headers with the request's over them."""
    from multidict import CIMultiDict

    merged = CIMultiDict(getattr(session, "_default_headers", None) or {})
    for name, value in (headers.items() if hasattr(headers, "items") else headers or ()):
        merged[name] = value
    return merged


async def _aiohttp_body(aiohttp: Any, data: Any, json_value: Any, headers: Any) -> bytes | None:
    """aiohttp's body rules: ``json=`` is JSON, a dict of ``data=`` a form, a
    str UTF-8, a ``FormData`` (or any payload) as aiohttp writes it."""
    import json
    import urllib.parse

    if isinstance(data, aiohttp.FormData):
        data = data()
    if isinstance(data, aiohttp.payload.Payload):
        out = _Collect()
        await data.write(out)
        for name, value in data.headers.items():
            headers.setdefault(name, value)
        return bytes(out.data)
    if json_value is not None:
        headers.setdefault("Content-Type", "application/json")
        return json.dumps(json_value).encode()
    if isinstance(data, dict):
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        return urllib.parse.urlencode(data).encode()
    if isinstance(data, str):
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    return _body_bytes(data)


class _Collect:
    """A stream writer that keeps what an aiohttp payload writes."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.data += chunk

    async def write_eof(self, chunk: bytes = b"") -> None:
        self.data += chunk

    async def drain(self) -> None:
        pass


class BrokeredResponse:
    """What aiohttp's ``ClientResponse`` offers code, for a brokered response:
    ``status``, ``reason``, ``headers``, ``url``, ``ok``, ``read()``,
    ``text()``, ``json()``, ``raise_for_status()``, ``content``, and the
    ``async with`` and ``release()`` of a connection there is none of."""

    def __init__(self, aiohttp: Any, method: str, url: Any, status: int, reason: str,
                 headers: list[tuple[str, str]], body: bytes, sent: Any, history: list[Any]) -> None:
        from multidict import CIMultiDict, CIMultiDictProxy

        self._aiohttp, self._body = aiohttp, body
        self.method, self.url, self.real_url, self.status, self.reason = method, url, url, status, reason
        # The upstream's headers as they came, as aiohttp shows them beside
        # the body it decoded (``Content-Encoding: gzip``, the compressed length).
        self.headers = CIMultiDictProxy(CIMultiDict(headers))
        from http.cookies import CookieError, SimpleCookie

        self.cookies: SimpleCookie = SimpleCookie()
        for value in self.headers.getall("Set-Cookie", ()):
            try:
                self.cookies.load(value)
            except CookieError:
                pass  # as aiohttp: a malformed one is skipped
        self.history = tuple(history)
        self.request_info = aiohttp.RequestInfo(url, method, CIMultiDictProxy(CIMultiDict(sent)), url)
        self.content = _Content(body)
        self.closed = False

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def content_type(self) -> str:
        return (self.headers.get("content-type") or "application/octet-stream").split(";")[0].strip().lower()

    @property
    def charset(self) -> str | None:
        for part in (self.headers.get("content-type") or "").split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.lower() == "charset":
                return value.strip('"') or None
        return None

    async def read(self) -> bytes:
        return self._body

    async def text(self, encoding: str | None = None, errors: str = "strict") -> str:
        return self._body.decode(encoding or self.charset or "utf-8", errors)

    async def json(self, *, encoding: str | None = None, loads: Any = None,
                   content_type: str | None = "application/json") -> Any:
        import json

        if content_type and content_type not in self.content_type:
            raise self._aiohttp.ContentTypeError(
                self.request_info, self.history, status=self.status,
                message=f"Attempt to decode JSON with unexpected mimetype: {self.content_type}",
                headers=self.headers)
        text = await self.text(encoding)
        return (loads or json.loads)(text) if text.strip() else None

    def raise_for_status(self) -> None:
        if not self.ok:
            raise self._aiohttp.ClientResponseError(self.request_info, self.history, status=self.status,
                                                    message=self.reason, headers=self.headers)

    def release(self) -> None:
        self.closed = True

    close = release

    async def wait_for_close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> BrokeredResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class _Content:
    """``response.content``: aiohttp's StreamReader reads over the whole body."""

    def __init__(self, body: bytes) -> None:
        self._body, self._at = body, 0

    async def read(self, n: int = -1) -> bytes:
        end = len(self._body) if n < 0 else self._at + n
        chunk, self._at = self._body[self._at:end], min(end, len(self._body))
        return chunk

    async def iter_chunked(self, n: int) -> Any:
        while chunk := await self.read(n):
            yield chunk

    async def iter_any(self) -> Any:
        if chunk := await self.read():
            yield chunk

    def at_eof(self) -> bool:
        return self._at >= len(self._body)


# -- anyio ---------------------------------------------------------------------------


def patch_anyio_to_thread(module: types.ModuleType) -> None:
    async def run_sync_inline(func: Callable[..., Any], *args: Any, abandon_on_cancel: bool = False,
                              cancellable: Any = None, limiter: Any = None) -> Any:
        """No threads in the jail: run ``func`` in the calling invocation."""
        return func(*args)

    module.run_sync = run_sync_inline


#: Module name -> what patches it once it has loaded.
PATCHES: dict[str, Callable[[types.ModuleType], None]] = {
    "urllib3": patch_urllib3,
    "urllib.request": patch_urllib_request,
    "httpx": patch_httpx,
    # The fork of httpx the OpenAI SDK (3.x) imports in its place: same
    # Client/AsyncClient transport hooks, and without the patch its requests
    # reach for a socket the jail refuses (openai.APIConnectionError).
    "httpx2": patch_httpx,
    "aiohttp": patch_aiohttp,
    "anyio.to_thread": patch_anyio_to_thread,
}


def install() -> None:
    import_patches.install(PATCHES)
