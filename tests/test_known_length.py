"""A response body whose length is known in advance reaches the client with a
Content-Length, however it travelled, as workerd sends it (``Response::send``
in src/workerd/api/http.c++ frames with ``jsBody.tryGetLength``).

Known: bytes and str bodies too large to travel inline (``MAX_CHUNK``), a
subrequest's response passed on untouched whose upstream declared a length, a
user worker's response a dispatcher returns untouched, a static asset
streamed from its file. Unknown, so chunked: an async generator's body, an
upstream's chunked body. A child that declares a length and sends another
amount gets its client's connection closed (a short body, as from any origin
that breaks off), never a mis-framed keep-alive connection.

Framing is checked on the wire, with raw sockets.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from protocol.messages import MAX_CHUNK
from tests.harness import REPO, Corral
from tests.upstream import Upstream, pattern

BIG = 500_000
TEXT = 300_000
assert BIG > MAX_CHUNK and TEXT > MAX_CHUNK

WORKER = f'''
from urllib.parse import urlparse, parse_qs
from workers import Response, WorkerEntrypoint, fetch


async def generated():
    for _ in range(3):
        yield b"g" * 100_000


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlparse(request.url)
        query = parse_qs(url.query)
        if url.path == "/bytes":
            return Response(b"x" * {BIG})
        if url.path == "/str":
            return Response("s" * {TEXT})
        if url.path == "/gen":  # a length header on a stream of unknown length is not trusted
            return Response(generated(), headers={{"content-length": "5"}})
        if url.path == "/proxy":
            return await fetch(query["u"][0])
        if url.path == "/rewrap":  # the body handed on, under headers of the worker's own
            upstream = await fetch(query["u"][0])
            return Response(upstream.body, status=upstream.status, headers={{"x-rewrapped": "yes"}})
        if url.path == "/echo":
            return Response(request.body)
        if url.path == "/call":  # a service call with a big body: the callee hears its length
            answer = await self.env.MEASURE.fetch("https://measure/", method="POST", body=b"c" * 250_000)
            return Response(await answer.text())
        return Response("small")
'''

#: Objects in R2 and values in KV, returned as their bodies' streams unread:
#: a big object streams from the supervisor's file, a small one is in the
#: child whole; either way its length is known (workerd: Content-Length).
STORED = '''
from urllib.parse import urlparse
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlparse(request.url).path
        size = int(path.rsplit("/", 1)[1])
        if path.startswith("/r2/"):
            await self.env.BUCKET.put(f"o{size}", b"r" * size)
            obj = await self.env.BUCKET.get(f"o{size}")
            return Response(obj.body, headers={"etag": obj.httpEtag})
        if path.startswith("/kv/"):
            await self.env.KV.put(f"v{size}", b"k" * size)
            return Response(await self.env.KV.get(f"v{size}", type="stream"))
        obj = await self.env.BUCKET.get(f"o{size}")  # /read/: a stream read from is re-sent
        stream = obj.body
        first = await stream.getReader().read()
        async def rest():
            yield bytes(first.value)
            async for chunk in stream:
                yield chunk
        return Response(rest())
'''

#: Writes the protocol itself (see tests/test_compromised_child.py): a head
#: that declares ``declared`` bytes, then ``sent`` bytes on the stream.
LIAR = '''
import sys
from urllib.parse import urlparse, parse_qs
import workers
from workers import Response, WorkerEntrypoint

M = sys.modules["protocol.messages"]
OutgoingBody = sys.modules["sandbox.streams"].OutgoingBody


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        query = parse_qs(urlparse(request.url).query)
        declared, sent = int(query["declared"][0]), int(query["sent"][0])
        runtime, inv = workers._runtime, workers.current_invocation.get()
        out = runtime.outgoing[inv] = OutgoingBody(runtime.channel, inv)
        runtime.send(M.ResponseStart(inv, 200, [], M.STREAMED, "", declared))
        try:
            await out.write(b"L" * sent)
            out.end()
        except Exception:
            pass  # the supervisor stopped reading: the stream was aborted
        return Response("ignored: the head went out already")
'''

#: A platform script that says what length its request declared and had.
MEASURE = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(f"{request.headers.get('content-length')} {len(await request.bytes())}")
'''

#: Uploads to an upstream: bodies of known length and not.
UPLOADER = '''
from urllib.parse import urlparse, parse_qs
from workers import Response, WorkerEntrypoint, fetch


async def generated():
    yield b"g" * 150_000
    yield b"g" * 150_000


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlparse(request.url)
        target = parse_qs(url.query)["u"][0]
        body = {"/bytes": lambda: b"u" * 400_000, "/str": lambda: "s" * 250_000,
                "/forward": lambda: request.body, "/gen": generated}[url.path]()
        answer = await fetch(target, method="PUT", body=body)
        return Response(await answer.text())
'''

#: A child that declares one length for an upload and streams another.
UPLOAD_LIAR = '''
import sys
from urllib.parse import urlparse, parse_qs
import workers
from workers import Response, WorkerEntrypoint

M = sys.modules["protocol.messages"]
OutgoingBody = sys.modules["sandbox.streams"].OutgoingBody


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        query = {k: v[0] for k, v in parse_qs(urlparse(request.url).query).items()}
        declared, sent = int(query["declared"]), int(query["sent"])
        runtime, inv = workers._runtime, workers.current_invocation.get()
        call = runtime._next_call
        runtime._next_call -= 1
        answer = runtime.calls[call] = runtime.loop.create_future()
        out = runtime.outgoing[call] = OutgoingBody(runtime.channel, call)
        runtime.send(M.SubRequest(call=call, parent=inv, kind="fetch", method=b"PUT", url=query["u"],
                                  headers=[], body=M.STREAMED, length=declared))
        try:
            await out.write(b"L" * sent)
            out.end()
        except Exception:
            pass  # the supervisor stopped reading
        result = await answer
        return Response(type(result).__name__ + ": " + str(getattr(getattr(result, "error", None), "message", "")))
'''

DIRECT = f'''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(b"d" * {BIG})
'''

ASSET_SIZE = 600_000  # above the asset server's inline size: streamed from its file


@pytest.fixture(scope="module")
def corral(tmp_path_factory):
    state = tmp_path_factory.mktemp("known-length")
    server = Corral(state).start()
    try:
        server.deploy_dispatcher()
        server.deploy("measure", MEASURE, namespace=None)
        server.deploy("big", WORKER, bindings=[{"type": "service", "name": "MEASURE", "service": "measure"}])
        server.deploy("liar", LIAR)
        server.deploy("direct", DIRECT, namespace=None)
        server.deploy("uploader", UPLOADER)
        server.deploy("upload-liar", UPLOAD_LIAR)
        server.deploy("stored", STORED, bindings=[
            {"type": "r2_bucket", "name": "BUCKET", "bucket_name": "known-length"},
            {"type": "kv_namespace", "name": "KV", "namespace_id": "known-length"}])
        server.route("direct.localhost/*", "direct")
        _deploy_site(server, state / "site")
        yield server
    finally:
        server.stop()


def _deploy_site(server: Corral, project: Path) -> None:
    """A user worker with a static asset larger than the asset server inlines."""
    (project / "assets").mkdir(parents=True)
    (project / "worker.py").write_text(
        "from workers import Response, WorkerEntrypoint\n\nclass Default(WorkerEntrypoint):\n"
        "    async def fetch(self, request):\n        return Response('worker')\n")
    (project / "corral.toml").write_text('main = "worker.py"\n[assets]\ndirectory = "assets"\n')
    (project / "assets" / "big.bin").write_bytes(b"".join(pattern(ASSET_SIZE)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "CORRAL_ADMIN_SOCKET": server.socket_path}
    result = subprocess.run([sys.executable, "-m", "supervisor", "deploy", "-n", "default", "site", str(project)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr


# -- raw HTTP/1.1 ---------------------------------------------------------------------


class Wire:
    """One client connection, read exactly as its framing says."""

    def __init__(self, corral: Corral) -> None:
        self.sock = socket.create_connection(("127.0.0.1", corral.port), timeout=30)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, path: str, host: str, method: str = "GET", version: str = "1.1",
             extra: str = "") -> None:
        self.sock.sendall(f"{method} {path} HTTP/{version}\r\nHost: {host}\r\n{extra}\r\n".encode())

    def _more(self) -> bytes:
        data = self.sock.recv(1 << 16)
        self.buffer += data
        return data

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._more():
                break
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def head(self) -> tuple[bytes, dict[bytes, bytes]]:
        """The status line and the headers (names lower-cased; each seen once)."""
        while b"\r\n\r\n" not in self.buffer:
            assert self._more(), f"closed before a head: {self.buffer[:200]!r}"
        raw, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status, *lines = raw.split(b"\r\n")
        headers: dict[bytes, bytes] = {}
        for line in lines:
            name, value = line.split(b":", 1)
            assert name.lower() not in headers, f"{name!r} twice"
            headers[name.lower()] = value.strip()
        return status, headers

    def body(self, headers: dict[bytes, bytes]) -> bytes:
        """The body as its framing delimits it (all of it to the close if neither)."""
        if b"content-length" in headers:
            return self._take(int(headers[b"content-length"]))
        if headers.get(b"transfer-encoding") == b"chunked":
            parts = []
            while True:
                while b"\r\n" not in self.buffer:
                    assert self._more(), "closed inside a chunked body"
                line, self.buffer = self.buffer.split(b"\r\n", 1)
                size = int(line, 16)
                data = self._take(size + 2)
                if not size:
                    return b"".join(parts)
                parts.append(data[:-2])
        while self._more():
            pass
        data, self.buffer = self.buffer, b""
        return data

    def closed(self) -> bool:
        """Whether the server closed the connection with nothing more sent."""
        return not self.buffer and not self._more()

    def exchange(self, path: str, host: str, **kw: str) -> tuple[bytes, dict[bytes, bytes], bytes]:
        self.send(path, host, **kw)
        status, headers = self.head()
        return status, headers, b"" if kw.get("method") == "HEAD" else self.body(headers)


def get(corral: Corral, path: str, host: str = "big.localhost", **kw: str) -> tuple[bytes, dict, bytes]:
    wire = Wire(corral)
    try:
        return wire.exchange(path, host, **kw)
    finally:
        wire.close()


def assert_length_framed(status: bytes, headers: dict, body: bytes, size: int) -> None:
    assert status.startswith(b"HTTP/1.1 200"), status
    assert headers.get(b"content-length") == str(size).encode(), headers
    assert b"transfer-encoding" not in headers, headers
    assert len(body) == size


# -- bodies of known length --------------------------------------------------------------


def test_large_bytes_and_str_bodies_carry_a_content_length_and_a_generator_stays_chunked(corral):
    status, headers, body = get(corral, "/bytes")
    assert_length_framed(status, headers, body, BIG)
    assert body == b"x" * BIG
    status, headers, body = get(corral, "/str")
    assert_length_framed(status, headers, body, TEXT)
    assert body == b"s" * TEXT
    # An async generator's length is unknown, whatever length header it sets.
    status, headers, body = get(corral, "/gen")
    assert headers.get(b"transfer-encoding") == b"chunked", headers
    assert b"content-length" not in headers
    assert body == b"g" * 300_000


def test_a_platform_script_answering_directly_carries_a_content_length(corral):
    status, headers, body = get(corral, "/", host="direct.localhost")
    assert_length_framed(status, headers, body, BIG)
    assert body == b"d" * BIG


@pytest.mark.parametrize("size", [700_000, 5_000])
def test_an_r2_object_or_kv_stream_returned_unread_carries_a_content_length(corral, size):
    for kind, byte in (("r2", b"r"), ("kv", b"k")):
        status, headers, body = get(corral, f"/{kind}/{size}", host="stored.localhost")
        assert_length_framed(status, headers, body, size)
        assert body == byte * size, kind
    # Read from first, the rest is a stream like any other: chunked.
    status, headers, body = get(corral, f"/read/{size}", host="stored.localhost")
    assert headers.get(b"transfer-encoding") == b"chunked", headers
    assert body == b"r" * size


def test_keep_alive_goes_on_after_a_streamed_response_of_known_length(corral):
    wire = Wire(corral)
    try:
        for path in ("/bytes", "/str", "/bytes"):
            status, headers, body = wire.exchange(path, "big.localhost")
            assert headers.get(b"content-length") == str(len(body)).encode()
            assert b"connection" not in headers
        status, headers, body = wire.exchange("/small", "big.localhost")
        assert body == b"small"
    finally:
        wire.close()


def test_head_keeps_the_length_and_sends_no_body(corral):
    wire = Wire(corral)
    try:
        status, headers, _ = wire.exchange("/bytes", "big.localhost", method="HEAD")
        assert status.startswith(b"HTTP/1.1 200")
        assert headers.get(b"content-length") == str(BIG).encode(), headers
        assert b"transfer-encoding" not in headers
        # No body followed: the next answer on the connection starts right here.
        status, headers, body = wire.exchange("/small", "big.localhost")
        assert status.startswith(b"HTTP/1.1 200") and body == b"small"
    finally:
        wire.close()


def test_http_1_0_gets_a_content_length_rather_than_a_close_delimited_body(corral):
    wire = Wire(corral)
    try:
        status, headers = (wire.send("/bytes", "big.localhost", version="1.0"), wire.head())[1]
        assert headers.get(b"content-length") == str(BIG).encode(), headers
        assert b"transfer-encoding" not in headers
        assert wire.body(headers) == b"x" * BIG
    finally:
        wire.close()


def test_a_proxied_upstream_response_keeps_its_content_length_or_its_chunks(corral, upstream):
    status, headers, body = get(corral, f"/proxy?u={quote(upstream.url('/big?n=400000'), safe='')}")
    assert_length_framed(status, headers, body, 400_000)
    assert body == b"".join(pattern(400_000))
    # An upstream that sent chunks declared no length: its body stays chunked.
    status, headers, body = get(corral, f"/proxy?u={quote(upstream.url('/big?n=300000&chunked=1'), safe='')}")
    assert headers.get(b"transfer-encoding") == b"chunked", headers
    assert b"content-length" not in headers
    assert body == b"".join(pattern(300_000))


def test_an_upstream_body_rewrapped_with_new_headers_keeps_its_content_length(corral, upstream):
    status, headers, body = get(corral, f"/rewrap?u={quote(upstream.url('/big?n=300000'), safe='')}")
    assert_length_framed(status, headers, body, 300_000)
    assert headers.get(b"x-rewrapped") == b"yes"
    assert body == b"".join(pattern(300_000))


def test_a_request_body_echoed_untouched_keeps_its_content_length(corral):
    wire = Wire(corral)
    try:
        payload = b"e" * 200_000
        wire.sock.sendall(b"POST /echo HTTP/1.1\r\nHost: big.localhost\r\nContent-Length: %d\r\n\r\n%b"
                          % (len(payload), payload))
        status, headers = wire.head()
        assert_length_framed(status, headers, wire.body(headers), len(payload))
    finally:
        wire.close()


def test_a_static_asset_larger_than_inline_carries_a_content_length(corral):
    status, headers, body = get(corral, "/big.bin", host="site.localhost")
    assert_length_framed(status, headers, body, ASSET_SIZE)
    assert body == b"".join(pattern(ASSET_SIZE))


# -- uploads: a subrequest's body of known length ----------------------------------------


def _upload(corral: Corral, upstream: Upstream, path: str, body: bytes | None = None) -> dict:
    """What the upstream saw of the worker's PUT for ``path``."""
    target = upstream.url(f"/echo/upload{path}")
    resp = corral.request(f"{path}?u={target}", host="uploader.localhost", method="POST", body=body)
    assert resp.status == 200, resp.text
    return [r for r in upstream.requests if r["path"] == f"/echo/upload{path}"][-1]


def test_an_upload_of_known_length_carries_a_content_length(corral, upstream):
    # workerd sends a known-length request body with a Content-Length; S3's
    # presigned PUT, for one, refuses a chunked upload (411).
    for path, size in (("/bytes", 400_000), ("/str", 250_000)):
        seen = _upload(corral, upstream, path)
        assert seen["headers"].get("content-length") == str(size), seen["headers"]
        assert "transfer-encoding" not in seen["headers"] and seen["body_len"] == size
    # The client's own request body, handed on: its Content-Length travels.
    seen = _upload(corral, upstream, "/forward", b"f" * 300_000)
    assert seen["headers"].get("content-length") == "300000", seen["headers"]
    assert seen["body_len"] == 300_000
    # A generator's length is unknown: chunked.
    seen = _upload(corral, upstream, "/gen")
    assert seen["headers"].get("transfer-encoding") == "chunked", seen["headers"]
    assert seen["body_len"] == 300_000


def test_a_service_call_with_a_body_of_known_length_tells_the_callee_its_length(corral):
    resp = corral.request("/call", host="big.localhost")
    assert resp.status == 200 and resp.text == "250000 250000", resp.text


@pytest.mark.parametrize("declared, sent", [(200_000, 100_000), (100_000, 200_000)],
                         ids=["too-short", "too-long"])
def test_a_child_declaring_a_wrong_upload_length_gets_its_fetch_failed(corral, upstream, declared, sent):
    target = upstream.url(f"/echo/liar-{declared}")
    resp = corral.request(f"/?declared={declared}&sent={sent}&u={target}", host="upload-liar.localhost")
    assert resp.status == 200 and resp.text.startswith("SubFailed: "), resp.text
    # Nothing past the declared length ever left for the upstream (a request
    # it could read whole, if any, has exactly that length).
    assert all(r["body_len"] == declared for r in upstream.requests
               if r["path"] == f"/echo/liar-{declared}")
    assert corral.alive()
    assert _upload(corral, upstream, "/bytes")["body_len"] == 400_000


# -- a child that lies about the length ----------------------------------------------------


@pytest.mark.parametrize("declared, sent", [(200_000, 100_000), (100_000, 200_000)],
                         ids=["too-short", "too-long"])
def test_a_child_declaring_a_wrong_length_gets_the_connection_closed(corral, declared, sent):
    wire = Wire(corral)
    try:
        wire.send(f"/?declared={declared}&sent={sent}", "liar.localhost")
        status, headers = wire.head()
        assert headers.get(b"content-length") == str(declared).encode(), headers
        # A second request on the same connection is never answered.
        wire.sock.sendall(b"GET /small HTTP/1.1\r\nHost: big.localhost\r\n\r\n")
        received = wire._take(declared)
        assert len(received) < declared and set(received) <= {ord("L")}
        assert wire.closed()
    finally:
        wire.close()
    assert any(e.get("event") == "ingress.body_length_mismatch" and e.get("declared") == declared
               for e in corral.log_events()), corral.log()
    assert corral.alive()
    status, headers, body = get(corral, "/bytes")  # a new connection is served as ever
    assert_length_framed(status, headers, body, BIG)


def test_a_child_declaring_a_negative_length_is_refused_and_the_server_serves_on(corral):
    status, headers, body = get(corral, "/?declared=-1&sent=10", host="liar.localhost")
    assert not status.startswith(b"HTTP/1.1 200"), (status, headers, body)
    assert corral.alive()
    status, headers, body = get(corral, "/bytes")
    assert_length_framed(status, headers, body, BIG)
