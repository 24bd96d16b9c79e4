"""A local HTTP/1.1 upstream for outbound-fetch tests (127.0.0.1 only).

Threaded, stdlib only, so it shares nothing with the code under test. Every
request it sees is recorded (method, path, headers, body length and SHA-256)
so a test can check what really left Corral. Endpoints:

* ``/echo/...``: answers JSON describing the request (the ``authorization``
  header is recorded but never echoed, so a test can prove a tenant did not
  see a credential an outbound worker added).
* ``/redirect/N``: a chain of N redirects (301, 302, 303, 307, 308 in turn)
  ending at ``/echo/final``.
* ``/big?n=BYTES[&chunked=1]``: ``n`` bytes of :func:`pattern`, streamed,
  with a Content-Length unless ``chunked=1``.
* ``/hang?max=S``: sends nothing until the client goes away (or ``S``
  seconds pass); records when the client disconnected.
* ``/slow?delay=S``: answers after ``S`` seconds.
* ``/reason?code=N&text=T``: status ``N`` with the reason phrase ``T`` (UTF-8).
* ``/gzip``: :data:`GZIP_TEXT`, gzip-encoded (``Content-Encoding: gzip``).
* ``/br``: :data:`BR_TEXT`, brotli-encoded (``Content-Encoding: br``; with
  the ``brotli`` package, a dependency of Corral's).
* ``/br-bomb``: :data:`BR_BOMB_BYTES` zero bytes, brotli-encoded (a few hundred bytes).
* ``/cookies``: sets the cookies ``a=1`` and ``b=2`` (two Set-Cookie headers).
* ``/flaky?key=K&fail=N``: 503 for the first N requests of key K, then 200.

It also keeps the most requests it had in hand at once (``most_in_flight``):
a request counts from its head being read until its answer is written.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

BLOCK = bytes(range(256)) * 256  # 64 KiB
#: What ``/gzip`` serves, before its gzip coding.
GZIP_TEXT = b'{"compressed": "' + b"z" * 2000 + b'"}'
#: What ``/br`` serves, before its brotli coding.
BR_TEXT = b'{"brotli": "' + b"b" * 3000 + b'"}'
#: What ``/br-bomb`` stands for: this many zero bytes, a few hundred bytes brotli-encoded.
BR_BOMB_BYTES = 256 * 1024 * 1024


@functools.lru_cache(maxsize=1)
def _br_bomb() -> bytes:
    import brotli

    packer = brotli.Compressor(quality=1)
    block = bytes(1024 * 1024)
    return b"".join(packer.process(block) for _ in range(BR_BOMB_BYTES // len(block))) + packer.finish()
REDIRECT_CODES = (301, 302, 303, 307, 308)


def pattern(n: int):
    """The ``n`` bytes ``/big`` serves, as 64 KiB chunks."""
    sent = 0
    while sent < n:
        chunk = BLOCK[: min(len(BLOCK), n - sent)]
        sent += len(chunk)
        yield chunk


def pattern_sha256(n: int) -> str:
    digest = hashlib.sha256()
    for chunk in pattern(n):
        digest.update(chunk)
    return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    # -- plumbing -------------------------------------------------------------
    def _read_body(self) -> tuple[int, str, bytes]:
        digest = hashlib.sha256()
        size = 0
        head = bytearray()
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            while True:
                line = self.rfile.readline(65537)
                length = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if length == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = length
                while remaining:
                    data = self.rfile.read(min(remaining, 1 << 16))
                    if not data:
                        raise ConnectionError("client closed mid-body")
                    remaining -= len(data)
                    size += len(data)
                    digest.update(data)
                    if len(head) < 4096:
                        head += data[: 4096 - len(head)]
                self.rfile.readline(3)
        else:
            remaining = int(self.headers.get("content-length") or 0)
            while remaining:
                data = self.rfile.read(min(remaining, 1 << 16))
                if not data:
                    raise ConnectionError("client closed mid-body")
                remaining -= len(data)
                size += len(data)
                digest.update(data)
                if len(head) < 4096:
                    head += data[: 4096 - len(head)]
        return size, digest.hexdigest(), bytes(head)

    def _record(self, **extra: Any) -> dict[str, Any]:
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "time": time.monotonic(),
            **extra,
        }
        with self.server.lock:
            self.server.requests.append(entry)
        return entry

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _client_gone(self, wait: float) -> bool:
        readable, _, _ = select.select([self.connection], [], [], wait)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # -- endpoints ----------------------------------------------------------------
    def _handle(self) -> None:
        server = self.server
        with server.lock:
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
        try:
            self._answer()
        finally:
            with server.lock:
                server.in_flight -= 1

    def _answer(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path
        size, sha, head = self._read_body()
        if path.startswith("/redirect/"):
            n = int(path.rsplit("/", 1)[1])
            self._record(body_len=size, sha256=sha)
            if n <= 0:
                return self._echo(size, sha, head)
            code = REDIRECT_CODES[n % len(REDIRECT_CODES)]
            location = "/echo/final" if n == 1 else f"/redirect/{n - 1}"
            return self._send(code, b"moved\n", {"location": location})
        if path == "/big":
            n = int(query.get("n", "0"))
            chunked = query.get("chunked") == "1"
            self._record(body_len=size, sha256=sha)
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            if chunked:
                self.send_header("transfer-encoding", "chunked")
            else:
                self.send_header("content-length", str(n))
            self.end_headers()
            try:
                for chunk in pattern(n):
                    if chunked:
                        self.wfile.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                    else:
                        self.wfile.write(chunk)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            except OSError:
                self.close_connection = True
            return
        if path == "/hang":
            entry = self._record(body_len=size, sha256=sha, disconnected_after=None)
            started = time.monotonic()
            limit = float(query.get("max", "10"))
            while time.monotonic() - started < limit:
                if self._client_gone(0.01):
                    entry["disconnected_after"] = time.monotonic() - started
                    self.close_connection = True
                    return
            return self._send(200, b"too late\n")
        if path == "/drip":
            # A chunked body, one small chunk every `every` seconds, `n` of them.
            self._record(body_len=size, sha256=sha)
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            try:
                for _ in range(int(query.get("n", "200"))):
                    self.wfile.write(b"5\r\ndrip\n\r\n")
                    self.wfile.flush()
                    if self._client_gone(float(query.get("every", "0.05"))):
                        break
                else:
                    self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            self.close_connection = True
            return
        if path == "/reason":  # a status line with the reason phrase ?text= (UTF-8)
            self._record(body_len=size, sha256=sha)
            text = query.get("text")  # http.server writes the status line as Latin-1
            self.send_response_only(int(query.get("code", "200")),
                                    None if text is None else text.encode().decode("latin-1"))
            self.send_header("content-length", "7")
            self.end_headers()
            self.wfile.write(b"reason\n")
            return
        if path == "/cookies":
            self._record(body_len=size, sha256=sha)
            self.send_response(200)
            self.send_header("set-cookie", "a=1; Path=/")
            self.send_header("set-cookie", "b=2; Path=/")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if path == "/flaky":
            self._record(body_len=size, sha256=sha)
            with self.server.lock:
                seen = self.server.flaky[query["key"]] = self.server.flaky.get(query["key"], 0) + 1
            if seen <= int(query.get("fail", "1")):
                return self._send(503, b"try again\n")
            return self._send(200, b"ok\n")
        if path == "/gzip":
            self._record(body_len=size, sha256=sha)
            return self._send(200, gzip.compress(GZIP_TEXT), {"content-type": "application/json",
                                                              "content-encoding": "gzip"})
        if path == "/br-bomb":
            self._record(body_len=size, sha256=sha)
            return self._send(200, _br_bomb(), {"content-encoding": "br"})
        if path == "/br":
            import brotli

            self._record(body_len=size, sha256=sha)
            return self._send(200, brotli.compress(BR_TEXT), {"content-type": "application/json",
                                                              "content-encoding": "br"})
        if path == "/slow":
            self._record(body_len=size, sha256=sha)
            time.sleep(float(query.get("delay", "0.5")))
            return self._send(200, b"slow done\n", {"content-type": "text/plain"})
        self._record(body_len=size, sha256=sha, authorization=self.headers.get("authorization"))
        return self._echo(size, sha, head)

    def _echo(self, size: int, sha: str, head: bytes) -> None:
        info = {
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("host"),
            "headers": {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"},
            "has_authorization": "authorization" in self.headers,
            "body_len": size,
            "sha256": sha,
            "body": head[:200].decode("latin-1") if size <= 200 else None,
        }
        self._send(200, json.dumps(info).encode(),
                   {"content-type": "application/json", "x-upstream": "yes"})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        #: Requests seen per key of ``/flaky``.
        self.flaky: dict[str, int] = {}


class Upstream:
    """``with Upstream() as up: up.url("/echo/x")``."""

    def __init__(self) -> None:
        self.server = _Server()
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def start(self) -> Upstream:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self.server.lock:
            return list(self.server.requests)

    @property
    def most_in_flight(self) -> int:
        with self.server.lock:
            return self.server.most_in_flight

    def seen(self, path_prefix: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].startswith(path_prefix)]

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()
