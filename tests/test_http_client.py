"""Tests for supervisor.calls.http_client against real local servers (127.0.0.1 only).

Two kinds of servers are used: a threaded stdlib ``http.server`` (an
independent HTTP implementation, for ordinary round trips) and small raw trio
servers for misbehaving upstreams (stalls, garbage, dropped keep-alives).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import h11
import pytest
import trio

from supervisor.calls.egress import EgressDenied, EgressPolicy
from supervisor.calls.http_client import (
    FetchError,
    FetchTimeout,
    HTTPClient,
    ResponseTooLarge,
    TooManyRedirects,
)
from supervisor.config import OutboundConfig

TEST_DEADLINE = 10  # seconds; no single test should get anywhere near this
GZIPPED = gzip.compress(b"hello, compressed world " * 100)


def run(fn: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        with trio.fail_after(TEST_DEADLINE):
            await fn()

    trio.run(main)


# --------------------------------------------------------------------------- stdlib server


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LocalServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_GET(self) -> None:
        self.route()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    def read_body(self) -> tuple[bytes, list[int]]:
        """Body plus the sizes of the chunks it arrived in (empty if not chunked)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data, sizes = b"", []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data, sizes
                data += self.rfile.read(size)
                sizes.append(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0)), []

    def reply(self, status: int, body: bytes = b"", headers: list[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def route(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        body, chunk_sizes = self.read_body()
        if path == "/echo":
            payload = {
                "method": self.command,
                "path": self.path,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
                "body": body.decode("latin-1"),
                "chunks": chunk_sizes,
                "connection": self.server.connections,
            }
            self.reply(200, json.dumps(payload).encode(), [("Content-Type", "application/json")])
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(int(query.get("n", "5"))):
                piece = b"piece-%d;" % i
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/close":
            # No Content-Length, no chunking: the body ends when the connection does.
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until-close:" + b"x" * 10000)
            self.close_connection = True
        elif path == "/big":
            size = int(query["n"])
            chunked = query.get("chunked") == "1"
            self.send_response(200)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(size))
            self.end_headers()
            block = b"z" * (256 * 1024)
            sent = 0
            try:
                while sent < size:
                    piece = block[: size - sent]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                    sent += len(piece)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            except OSError:
                self.close_connection = True
        elif path.startswith("/chain/"):
            n = int(path.rsplit("/", 1)[1])
            port = self.server.server_address[1]
            location = {3: "/chain/2", 2: "1?from=2", 1: f"http://127.0.0.1:{port}/echo"}[n]
            self.reply(302, b"moved", [("Location", location)])
        elif path == "/redirect":
            self.reply(int(query.get("status", "302")), b"see other", [("Location", query["to"])])
        elif path == "/loop":
            self.reply(302, b"", [("Location", "/loop")])
        elif path == "/slow-body":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"0123456789")
            time.sleep(3)
            self.close_connection = True
        elif path == "/gzip":
            self.reply(200, GZIPPED, [("Content-Encoding", "gzip"), ("Content-Type", "text/plain")])
        elif path == "/conn-close":
            self.reply(200, b"bye", [("Connection", "close")])
            self.close_connection = True
        else:
            self.reply(404, b"not found")


class LocalServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.connections = 0
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-response is expected in these tests


@contextlib.contextmanager
def serving(ssl_context: ssl.SSLContext | None = None):
    server = LocalServer(ssl_context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def server():
    with serving() as s:
        yield s


@pytest.fixture
def server2():
    with serving() as s:
        yield s


# --------------------------------------------------------------------------- raw trio servers


@contextlib.asynccontextmanager
async def raw_server(handler: Callable[[trio.SocketStream], Awaitable[None]]) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def read_head(stream: trio.abc.Stream) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            break
        buf += data
    return buf


async def wait_for_eof(stream: trio.abc.Stream, timeout: float = 5) -> None:
    with trio.move_on_after(timeout):
        with contextlib.suppress(trio.BrokenResourceError):
            while await stream.receive_some(65536):
                pass


def answering(raw: bytes) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A server that reads the request head, sends ``raw`` verbatim, half-closes,
    and waits for the client to hang up (so the client never sees an RST)."""

    async def handler(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(raw)
        await stream.send_eof()
        await wait_for_eof(stream)

    return handler


# --------------------------------------------------------------------------- helpers


async def echo(resp) -> dict:
    assert resp.status == 200, resp
    return json.loads(await resp.read_all())


def header_values(payload: dict, name: str) -> list[str]:
    return [v for k, v in payload["headers"] if k == name]


async def stream_body(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await trio.sleep(0)
        yield chunk


# --------------------------------------------------------------------------- round trips


def test_get_and_post_round_trip(server: LocalServer) -> None:
    async def main() -> None:
        async with HTTPClient() as client:
            resp = await client.request("get", server.url("/echo?x=1&y=caf\u00e9 ok"))
            assert (resp.status, resp.reason, resp.redirected) == (200, "OK", False)
            assert resp.url == server.url("/echo?x=1&y=caf%C3%A9%20ok")
            assert (b"content-type", b"application/json") in resp.headers
            got = await echo(resp)
            assert got["method"] == "GET"
            assert got["path"] == "/echo?x=1&y=caf%C3%A9%20ok"
            assert header_values(got, "host") == [f"127.0.0.1:{server.port}"]
            assert header_values(got, "user-agent") == ["corral"]
            assert header_values(got, "content-length") == []
            assert header_values(got, "transfer-encoding") == []

            # Caller headers are kept (including repeats), but framing headers
            # and Host are the client's: never duplicated, never caller-controlled.
            resp = await client.request(
                "POST",
                server.url("/echo"),
                [
                    ("User-Agent", "tenant/1.0"),
                    ("X-Multi", "a"),
                    ("X-Multi", "b"),
                    ("Host", "evil.example"),
                    ("Content-Length", "999"),
                    ("Transfer-Encoding", "chunked"),
                    ("Content-Type", "text/plain"),
                ],
                b"hello world",
            )
            got = await echo(resp)
            assert got["method"] == "POST"
            assert got["body"] == "hello world"
            assert header_values(got, "user-agent") == ["tenant/1.0"]
            assert header_values(got, "x-multi") == ["a", "b"]
            assert header_values(got, "host") == [f"127.0.0.1:{server.port}"]
            assert header_values(got, "content-length") == ["11"]
            assert header_values(got, "transfer-encoding") == []

            # A POST without a body still says Content-Length: 0.
            got = await echo(await client.request("POST", server.url("/echo")))
            assert header_values(got, "content-length") == ["0"] and got["body"] == ""

            # HEAD has no body even though the server sends Content-Length.
            resp = await client.request("HEAD", server.url("/echo"))
            assert resp.status == 200 and await resp.read_all() == b""

    run(main)


def test_chunked_upload(server: LocalServer) -> None:
    async def main() -> None:
        big = bytes(range(256)) * 1024  # 256 KiB, written in 64 KiB chunks
        async with HTTPClient() as client:
            resp = await client.request(
                "PUT", server.url("/echo"), body=stream_body(b"first,", b"", b"second,", big)
            )
            got = await echo(resp)
            assert got["method"] == "PUT"
            assert header_values(got, "transfer-encoding") == ["chunked"]
            assert header_values(got, "content-length") == []
            assert got["body"].encode("latin-1") == b"first,second," + big
            assert got["chunks"][:2] == [6, 7] and max(got["chunks"]) <= 64 * 1024

            with pytest.raises(TypeError):
                await client.request("POST", server.url("/echo"), body="not bytes")  # type: ignore[arg-type]

    run(main)


def test_chunked_and_close_delimited_responses(server: LocalServer) -> None:
    async def main() -> None:
        async with HTTPClient() as client:
            resp = await client.request("GET", server.url("/chunked?n=4"))
            assert (b"transfer-encoding", b"chunked") in resp.headers
            assert await resp.read_all() == b"piece-0;piece-1;piece-2;piece-3;"
            assert await resp.receive_some() == b""  # stays at end

            resp = await client.request("GET", server.url("/close"))
            assert all(name != b"content-length" for name, _ in resp.headers)
            assert await resp.read_all() == b"until-close:" + b"x" * 10000

    run(main)


def test_streams_50mb_response_chunk_by_chunk(server: LocalServer) -> None:
    size = 50 * 2**20

    async def main() -> None:
        async with HTTPClient(max_response_bytes=size) as client:
            for chunked in ("0", "1"):
                resp = await client.request("GET", server.url(f"/big?n={size}&chunked={chunked}"))
                total = biggest = chunks = 0
                while chunk := await resp.receive_some():
                    total += len(chunk)
                    biggest = max(biggest, len(chunk))
                    chunks += 1
                assert total == size
                assert biggest <= 64 * 1024  # never more than one read buffer at a time
                assert chunks >= size // (64 * 1024)

    run(main)


def test_response_size_cap(server: LocalServer) -> None:
    async def main() -> None:
        async with HTTPClient(max_response_bytes=100_000) as client:
            # Declared too large: the head is still available, the body refuses.
            resp = await client.request("GET", server.url("/big?n=1000000"))
            assert resp.status == 200
            with pytest.raises(ResponseTooLarge, match="100000-byte limit"):
                await resp.receive_some()
            with pytest.raises(FetchError):
                await resp.receive_some()  # connection is gone

            # Undeclared (chunked): caught while streaming, after some data.
            resp = await client.request("GET", server.url("/big?n=1000000&chunked=1"))
            seen = 0
            with pytest.raises(ResponseTooLarge):
                while chunk := await resp.receive_some():
                    seen += len(chunk)
            assert 0 < seen <= 100_000

            # read_all honours the cap too; exactly-at-the-limit is fine.
            resp = await client.request("GET", server.url("/big?n=100001&chunked=1"))
            with pytest.raises(ResponseTooLarge):
                await resp.read_all()
            resp = await client.request("GET", server.url("/big?n=100000"))
            assert len(await resp.read_all()) == 100_000

    run(main)


def test_content_codings_pass_through_undecoded(server: LocalServer) -> None:
    async def main() -> None:
        async with HTTPClient() as client:
            resp = await client.request("GET", server.url("/gzip"), [("Accept-Encoding", "gzip")])
            assert (b"content-encoding", b"gzip") in resp.headers
            assert resp.header(b"content-length") == str(len(GZIPPED)).encode()
            assert await resp.read_all() == GZIPPED  # as sent: the child decodes what the worker reads
            # The client asks for no coding itself.
            got = await echo(await client.request("GET", server.url("/echo")))
            assert header_values(got, "accept-encoding") == []

    run(main)


def test_sync_close_releases_the_connection() -> None:
    saw_eof = trio.Event()

    async def half_body(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await wait_for_eof(stream)
        saw_eof.set()

    async def main() -> None:
        async with raw_server(half_body) as port, HTTPClient() as client:
            resp = await client.request("GET", f"http://127.0.0.1:{port}/")
            assert await resp.receive_some() == b"0123456789"
            resp.close()  # from sync code, e.g. a body consumer that went away
            await saw_eof.wait()
            with pytest.raises(FetchError, match="closed"):
                await resp.receive_some()

    run(main)


# --------------------------------------------------------------------------- redirects


def test_redirect_chain_relative_and_absolute(server: LocalServer) -> None:
    async def main() -> None:
        async with HTTPClient() as client:
            resp = await client.request("GET", server.url("/chain/3"))
            got = await echo(resp)
            assert resp.redirected
            assert resp.url == server.url("/echo")
            assert got["method"] == "GET"
            # The whole chain ran over one kept-alive connection.
            assert server.connections == 1

            async with HTTPClient(max_redirects=3) as limited:
                resp = await limited.request("GET", server.url("/chain/3"))
                assert (await echo(resp))["path"] == "/echo"
                with pytest.raises(TooManyRedirects, match="more than 3"):
                    await limited.request("GET", server.url("/loop"))

            resp = await client.request("GET", server.url("/chain/3"), redirect="manual")
            assert resp.status == 302 and not resp.redirected
            assert (b"location", b"/chain/2") in resp.headers
            assert await resp.read_all() == b"moved"

            with pytest.raises(FetchError, match="redirect"):
                await client.request("GET", server.url("/chain/3"), redirect="error")
            with pytest.raises(ValueError):
                await client.request("GET", server.url("/echo"), redirect="bogus")

            # A redirect to a non-http scheme is refused.
            with pytest.raises(FetchError, match="scheme"):
                await client.request("GET", server.url("/redirect?to=file:///etc/passwd"))

    run(main)


def test_redirect_method_and_body_rules(server: LocalServer) -> None:
    async def main() -> None:
        echo_url = server.url("/echo")
        hdrs = [("Content-Type", "text/plain"), ("X-Keep", "1")]
        async with HTTPClient() as client:
            for status, method, expect_method, expect_body in [
                (303, "POST", "GET", ""),
                (303, "PUT", "GET", ""),
                (302, "POST", "GET", ""),
                (301, "POST", "GET", ""),
                (302, "PUT", "PUT", "payload"),
                (307, "POST", "POST", "payload"),
                (308, "PUT", "PUT", "payload"),
            ]:
                url = server.url(f"/redirect?status={status}&to={echo_url}")
                got = await echo(await client.request(method, url, hdrs, b"payload"))
                assert (got["method"], got["body"]) == (expect_method, expect_body), status
                assert header_values(got, "x-keep") == ["1"]
                if expect_method == "GET":
                    assert header_values(got, "content-type") == []
                    assert header_values(got, "content-length") == []
                else:
                    assert header_values(got, "content-type") == ["text/plain"]

            # A streamed body cannot be replayed for 307/308 ...
            url = server.url(f"/redirect?status=307&to={echo_url}")
            with pytest.raises(FetchError, match="streamed"):
                await client.request("POST", url, body=stream_body(b"once"))
            # ... but a 303 drops it anyway, so that works.
            url = server.url(f"/redirect?status=303&to={echo_url}")
            got = await echo(await client.request("POST", url, body=stream_body(b"once")))
            assert (got["method"], got["body"]) == ("GET", "")

    run(main)


def test_redirect_drops_credentials_across_origins(server: LocalServer, server2: LocalServer) -> None:
    async def main() -> None:
        secrets = [("Authorization", "Bearer s3cret"), ("Cookie", "session=1"), ("X-Other", "ok")]
        async with HTTPClient() as client:
            same = server.url(f"/redirect?to={server.url('/echo')}")
            got = await echo(await client.request("GET", same, secrets))
            assert header_values(got, "authorization") == ["Bearer s3cret"]
            assert header_values(got, "cookie") == ["session=1"]

            # Same host, different port: a different origin.
            cross = server.url(f"/redirect?to={server2.url('/echo')}")
            resp = await client.request("GET", cross, secrets)
            got = await echo(resp)
            assert resp.url == server2.url("/echo")
            assert header_values(got, "authorization") == []
            assert header_values(got, "cookie") == []
            assert header_values(got, "x-other") == ["ok"]
            assert header_values(got, "host") == [f"127.0.0.1:{server2.port}"]

    run(main)


# --------------------------------------------------------------------------- timeouts


def test_connect_timeout() -> None:
    # A listener with a full accept backlog never completes new handshakes.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(16):
        filler = socket.socket()
        filler.setblocking(False)
        fillers.append(filler)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        probe = socket.socket()
        probe.settimeout(0.1)
        try:
            probe.connect(("127.0.0.1", port))
        except TimeoutError:
            break
        finally:
            probe.close()

    async def main() -> None:
        async with HTTPClient(connect_timeout=0.3) as client:
            with pytest.raises(FetchTimeout, match=f"connecting to 127.0.0.1:{port}"):
                await client.request("GET", f"http://127.0.0.1:{port}/")

    try:
        run(main)
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_connect_timeout_covers_resolve_and_tls_handshake() -> None:
    async def slow_resolve(host: str, port: int) -> list[str]:
        await trio.sleep_forever()
        raise AssertionError

    async def silent(stream: trio.SocketStream) -> None:
        await wait_for_eof(stream)  # accepts TCP, never says a word of TLS

    async def main() -> None:
        async with HTTPClient(connect_timeout=0.3, resolve=slow_resolve) as client:
            with pytest.raises(FetchTimeout, match="connecting to example.test:80"):
                await client.request("GET", "http://example.test/")
        async with raw_server(silent) as port:
            async with HTTPClient(connect_timeout=0.3) as client:
                with pytest.raises(FetchTimeout, match="connecting to 127.0.0.1"):
                    await client.request("GET", f"https://127.0.0.1:{port}/")

    run(main)


def test_read_timeouts(server: LocalServer) -> None:
    async def never_answers(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await wait_for_eof(stream)

    async def main() -> None:
        async with raw_server(never_answers) as port:
            async with HTTPClient(read_timeout=0.3) as client:
                with pytest.raises(FetchTimeout, match="response headers from 127.0.0.1") as info:
                    await client.request("GET", f"http://127.0.0.1:{port}/")
                assert "0.3s" in str(info.value)

        # Slow body: the head arrives, then the upstream stalls mid-body.
        async with HTTPClient(read_timeout=0.3) as client:
            resp = await client.request("GET", server.url("/slow-body"))
            assert await resp.receive_some() == b"0123456789"
            with pytest.raises(FetchTimeout, match="reading the response body from 127.0.0.1"):
                await resp.receive_some()

    run(main)


# --------------------------------------------------------------------------- connection reuse


def test_keep_alive_reuse(server: LocalServer) -> None:
    resolved: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        resolved.append((host, port))
        return ["127.0.0.1"]

    async def main() -> None:
        async with HTTPClient(resolve=resolve, max_idle_connections=1) as client:
            for _ in range(5):
                got = await echo(await client.request("GET", server.url("/echo")))
                assert got["connection"] == 1
            assert server.connections == 1
            assert len(resolved) == 1  # pooled connections are not re-resolved

            # A response abandoned mid-body is closed, never reused.
            resp = await client.request("GET", server.url("/big?n=1000000"))
            await resp.receive_some()
            await resp.aclose()
            await echo(await client.request("GET", server.url("/echo")))
            assert server.connections == 2

            # A server saying "Connection: close" is believed.
            resp = await client.request("GET", server.url("/conn-close"))
            assert await resp.read_all() == b"bye"
            await echo(await client.request("GET", server.url("/echo")))
            assert server.connections == 3

            # Two concurrent requests need two connections; only one stays idle.
            async def fetch() -> None:
                resp = await client.request("GET", server.url("/echo"))
                await trio.sleep(0.05)
                await echo(resp)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch)
                nursery.start_soon(fetch)
            assert server.connections == 4
            await echo(await client.request("GET", server.url("/echo")))
            await echo(await client.request("GET", server.url("/echo")))
            assert server.connections == 4

        with pytest.raises(RuntimeError):
            await client.request("GET", server.url("/echo"))

    run(main)


def test_stale_pooled_connection_is_retried_for_idempotent_methods() -> None:
    connections = 0

    async def one_request_per_connection(stream: trio.SocketStream) -> None:
        # Advertises keep-alive, then drops the connection when the next
        # request arrives: the classic keep-alive race, made deterministic.
        nonlocal connections
        connections += 1
        conn = h11.Connection(h11.SERVER)
        served = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.EndOfMessage):
                if served:
                    await stream.aclose()
                    return
                await stream.send_all(
                    conn.send(h11.Response(status_code=200, headers=[("content-length", "2")]))
                    + conn.send(h11.Data(data=b"ok"))
                    + conn.send(h11.EndOfMessage())
                )
                conn.start_next_cycle()
                served += 1

    async def main() -> None:
        async with raw_server(one_request_per_connection) as port:
            url = f"http://127.0.0.1:{port}/"
            async with HTTPClient() as client:
                assert await (await client.request("GET", url)).read_all() == b"ok"
                assert await (await client.request("GET", url)).read_all() == b"ok"
                assert connections == 2
                # POST is not idempotent: it must not be replayed.
                with pytest.raises(FetchError, match="closed the connection without sending a response"):
                    await client.request("POST", url, body=b"x")
                assert connections == 2

    run(main)


# --------------------------------------------------------------------------- malformed / broken upstreams


def test_malformed_responses() -> None:
    cases = [
        (b"garbage\r\n\r\n", None),
        (b"HTTP/1.1 2000 Nope\r\n\r\n", None),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", None),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", "body"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nshort", "body"),
        (b"HTTP/1.1 200 OK\r\nX-Huge: " + b"a" * 300_000 + b"\r\n\r\n", None),
    ]

    async def main() -> None:
        async with HTTPClient(read_timeout=2) as client:
            for raw, where in cases:
                async with raw_server(answering(raw)) as port:
                    url = f"http://127.0.0.1:{port}/"
                    if where is None:
                        with pytest.raises(FetchError, match="bad response from 127.0.0.1"):
                            await client.request("GET", url)
                    else:
                        resp = await client.request("GET", url)
                        with pytest.raises(FetchError, match="bad response from 127.0.0.1"):
                            await resp.read_all()

            async def hang_up(stream: trio.SocketStream) -> None:
                await read_head(stream)
                await stream.aclose()

            async with raw_server(hang_up) as port:
                with pytest.raises(FetchError, match="without sending a response"):
                    await client.request("GET", f"http://127.0.0.1:{port}/")

    run(main)


def test_early_response_on_body_upload_is_returned() -> None:
    # The upstream refuses a large upload (413) without reading the body and
    # slams the connection shut, so the client's write fails part-way; the
    # response that was already sent should still be surfaced.
    async def refuse(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 413 Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope")
        await stream.aclose()

    async def main() -> None:
        async with raw_server(refuse) as port, HTTPClient(read_timeout=2) as client:
            resp = await client.request("POST", f"http://127.0.0.1:{port}/", body=b"x" * 5_000_000)
            assert resp.status == 413 and await resp.read_all() == b"nope"

    run(main)


# --------------------------------------------------------------------------- URLs, resolve hook, cancellation


def test_urls_and_resolve_hook(server: LocalServer) -> None:
    seen: list[tuple[str, int]] = []

    async def to_loopback(host: str, port: int) -> list[str]:
        seen.append((host, port))
        if host in ("denied.test", "default-port.test"):
            raise PermissionError(f"egress to {host} is not allowed")
        if host == "name.test":
            return ["localhost"]  # must be an IP, not a name
        return ["127.0.0.1"]

    async def main() -> None:
        port = server.port
        async with HTTPClient(resolve=to_loopback) as client:
            # IPv6 literal in the URL; the hook pins the actual dial to 127.0.0.1.
            resp = await client.request("GET", f"http://[::1]:{port}/echo#frag")
            got = await echo(resp)
            assert seen[-1] == ("::1", port)
            assert header_values(got, "host") == [f"[::1]:{port}"]
            assert resp.url == f"http://[::1]:{port}/echo"

            resp = await client.request("GET", f"http://Example.TEST:{port}/echo")
            got = await echo(resp)
            assert seen[-1] == ("example.test", port)
            assert header_values(got, "host") == [f"example.test:{port}"]
            with pytest.raises(PermissionError):
                await client.request("GET", "https://Default-Port.test/")
            assert seen[-1] == ("default-port.test", 443)

            with pytest.raises(PermissionError):
                await client.request("GET", "http://denied.test/")
            with pytest.raises(FetchError, match="non-IP"):
                await client.request("GET", "http://name.test/")
            for bad in ["ftp://127.0.0.1/", "file:///etc/passwd", "http:///nohost", "http://u:p@127.0.0.1/",
                        "http://127.0.0.1:99999/", "nonsense"]:
                with pytest.raises(FetchError):
                    await client.request("GET", bad)
            with pytest.raises(FetchError):
                await client.request("CONNECT", "http://127.0.0.1/")
            with pytest.raises(FetchError, match="invalid request"):
                await client.request("GET", "http://127.0.0.1/", [("X-Bad", "a\r\nInjected: 1")])

    run(main)


def test_cancellation_closes_socket() -> None:
    saw_eof = trio.Event()

    async def hold(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await wait_for_eof(stream)
        saw_eof.set()

    async def main() -> None:
        async with raw_server(hold) as port, HTTPClient() as client:
            with trio.move_on_after(0.2) as scope:
                await client.request("GET", f"http://127.0.0.1:{port}/")
            assert scope.cancelled_caught
            with trio.fail_after(2):
                await saw_eof.wait()

    run(main)


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=corral-test",
         "-addext", "subjectAltName=DNS:tls.corral.test,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def test_https_round_trip(tls_files: tuple[str, str]) -> None:
    cert, key = tls_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: sni.append(name)
    client_ctx = ssl.create_default_context(cafile=cert)

    with serving(server_ctx) as server:
        port = server.port

        async def to_loopback(host: str, p: int) -> list[str]:
            return ["127.0.0.1"]

        async def main() -> None:
            async with HTTPClient(ssl_context=client_ctx, resolve=to_loopback) as client:
                resp = await client.request("POST", f"https://tls.corral.test:{port}/echo", body=b"secret")
                got = await echo(resp)
                assert got["body"] == "secret"
                assert header_values(got, "host") == [f"tls.corral.test:{port}"]
                assert sni == ["tls.corral.test"]
                # Keep-alive works over TLS too.
                await echo(await client.request("GET", f"https://tls.corral.test:{port}/echo"))
                assert server.connections == 1
                # Redirect https -> https on the same origin, chunked response over TLS.
                resp = await client.request("GET", f"https://tls.corral.test:{port}/chunked?n=2")
                assert await resp.read_all() == b"piece-0;piece-1;"

            # The default context does not trust the self-signed certificate.
            async with HTTPClient(resolve=to_loopback) as client:
                with pytest.raises(FetchError, match="TLS handshake with tls.corral.test failed"):
                    await client.request("GET", f"https://tls.corral.test:{port}/echo")
            # Hostname verification: the cert is not valid for other names. The
            # backend dials the IP 127.0.0.1, which the cert *does* name, so this
            # also shows TLS verifies the URL's host name, not the address dialled.
            async with HTTPClient(ssl_context=client_ctx, resolve=to_loopback) as client:
                with pytest.raises(FetchError, match="TLS handshake"):
                    await client.request("GET", f"https://other.corral.test:{port}/echo")

        run(main)


# --------------------------------------------------------------------------- egress policy in the backend


def _egress_client(**kwargs: object) -> HTTPClient:
    """Private networks blocked, ``allowed.test`` allowed by name; test names are
    pinned by a resolver (``rebind.test`` resolves to private addresses)."""
    names = {"allowed.test": ["127.0.0.1"], "rebind.test": ["10.1.2.3", "127.0.0.1"],
             "nat64.test": ["64:ff9b::7f00:1", "::7f00:1"]}

    async def resolve(host: str, port: int) -> list[str]:
        return names.get(host, [host])

    policy = EgressPolicy(OutboundConfig(allow_hosts=["allowed.test"]))
    return HTTPClient(policy=policy, resolve=resolve, **kwargs)  # type: ignore[arg-type]


def test_egress_policy_vets_every_connection(server: LocalServer) -> None:
    async def main() -> None:
        async with _egress_client() as client:
            allowed = f"http://allowed.test:{server.port}"
            got = await echo(await client.request("GET", f"{allowed}/echo"))
            assert header_values(got, "host") == [f"allowed.test:{server.port}"]
            assert server.connections == 1

            # A host name that resolves to private addresses: refused before connecting.
            with pytest.raises(EgressDenied, match=r"fetch to rebind.test \(10.1.2.3, 127.0.0.1\) is not allowed"):
                await client.request("GET", f"http://rebind.test:{server.port}/echo")
            # So is a literal loopback address.
            with pytest.raises(EgressDenied, match="127.0.0.1"):
                await client.request("GET", server.url("/echo"))
            # And loopback spelt as IPv6 (NAT64, IPv4-compatible): refused, not dialled.
            with pytest.raises(EgressDenied, match=r"fetch to nat64.test \(64:ff9b::7f00:1"):
                await client.request("GET", f"http://nat64.test:{server.port}/echo")
            assert server.connections == 1

            # A redirect from the allowed host to loopback: the hop's new
            # connection goes through the backend, which refuses it.
            for target in (server.url("/echo"), f"http://rebind.test:{server.port}/echo"):
                with pytest.raises(EgressDenied, match="loopback, private and link-local"):
                    await client.request("GET", f"{allowed}/redirect?to={target}")
            assert server.connections == 1  # only the allowed host's pooled connection

            # Same-origin hops reuse the vetted connection.
            resp = await client.request("GET", f"{allowed}/redirect?to=/echo")
            assert resp.redirected and (await echo(resp))["path"] == "/echo"
            assert server.connections == 1

    run(main)


def test_egress_policy_rules() -> None:
    blocked = EgressPolicy(OutboundConfig())
    public = ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
    assert blocked.vet("example.com", public) == public
    # Private addresses are dropped from a mixed answer, and an answer with
    # nothing public is refused.
    assert blocked.vet("mixed.test", ["10.0.0.1", "93.184.216.34"]) == ["93.184.216.34"]
    for private in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                    "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1"):
        with pytest.raises(EgressDenied, match="not allowed"):
            blocked.vet("x.test", [private])
    # F10: IPv6 spellings of private IPv4 addresses are judged by the IPv4
    # address inside them: IPv4-compatible, -mapped, -translated, NAT64 (the
    # well-known prefix; the local-use one cannot be judged), 6to4, Teredo
    # (client 127.0.0.1), ISATAP; and site-local.
    for spelt in ("::7f00:1", "::a9fe:a9fe", "::ffff:7f00:1", "::ffff:0:7f00:1", "::ffff:0:a00:1",
                  "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::808:808", "2002:7f00:1::",
                  "2002:a9fe:a9fe::1", "2002:c0a8:101::", "2001:0:4136:e378:8000:63bf:80ff:fffe",
                  "2001:4860::5efe:7f00:1", "2001:4860::200:5efe:a9fe:a9fe", "fec0::1"):
        with pytest.raises(EgressDenied, match="not allowed"):
            blocked.vet("x.test", [spelt])
    # The same forms around a public IPv4 address stay reachable.
    public_v4 = ["::ffff:808:808", "64:ff9b::808:808", "2002:808:808::1", "2001:4860::5efe:808:808"]
    assert blocked.vet("y.test", public_v4) == public_v4
    assert EgressPolicy(OutboundConfig(allow_hosts=["Internal.Test"])).vet(
        "internal.test", ["10.0.0.1"]) == ["10.0.0.1"]
    assert EgressPolicy(OutboundConfig(allow_private_networks=True)).vet(
        "x.test", ["127.0.0.1"]) == ["127.0.0.1"]
