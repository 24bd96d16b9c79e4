"""Request smuggling at the edge: every ambiguous framing is refused over a real socket.

Each attack is one raw write of a request whose end a proxy could read
differently than Corral, followed by a second request (``GET /smuggled``) on
the same connection. Corral must answer the first with a 400 that names the
problem, close the connection, log the refusal, and never answer the second.
The controls check that unambiguous framings (pipelining included) still work.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket

import pytest

from supervisor.edge.http_server import ChunkedFraming, FramingError
from tests.harness import Corral
from tests.test_spine import ECHO

HOST = b"Host: echo.localhost\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: echo.localhost\r\n\r\n"
SECOND = b"GET /second HTTP/1.1\r\nHost: echo.localhost\r\nConnection: close\r\n\r\n"


def post(headers: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST / HTTP/" + version + b"\r\n" + HOST + headers + b"\r\n" + body


CHUNKED = b"Transfer-Encoding: chunked\r\n"

#: name -> (request, words the 400's body must contain). Each was checked
#: against the server before the fix: the ``smuggled`` ones had the second
#: request answered, the others were already refused (some with a 501).
ATTACKS: dict[str, tuple[bytes, str]] = {
    # Smuggled before the fix: both headers, chunked won, connection kept.
    "cl-then-te": (post(b"Content-Length: 40\r\n" + CHUNKED, b"0\r\n\r\n"),
                   "both Content-Length and Transfer-Encoding"),
    "te-then-cl": (post(CHUNKED + b"Content-Length: 3\r\n", b"0\r\n\r\n"),
                   "both Content-Length and Transfer-Encoding"),
    # Transfer codings other than one chunked (h11 answered 501 before).
    "te-gzip-chunked": (post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
                        "Transfer-Encoding must be exactly one 'chunked'"),
    "te-chunked-not-last": (post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"),
                            "Transfer-Encoding must be exactly one 'chunked'"),
    "te-chunked-identity": (post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
                            "Transfer-Encoding must be exactly one 'chunked'"),
    "te-xchunked": (post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
                    "Transfer-Encoding must be exactly one 'chunked'"),
    "te-chunked-twice": (post(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"),
                         "Transfer-Encoding must be exactly one 'chunked'"),
    "te-quoted": (post(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n"),
                  "Transfer-Encoding must be exactly one 'chunked'"),
    "te-empty": (post(b"Transfer-Encoding: \r\nContent-Length: 0\r\n"),
                 "Transfer-Encoding must be exactly one 'chunked'"),
    "te-header-twice": (post(CHUNKED + CHUNKED, b"0\r\n\r\n"), "multiple Transfer-Encoding headers"),
    "te-vertical-tab": (post(b"Transfer-Encoding: \x0bchunked\r\n", b"0\r\n\r\n"), "illegal header line"),
    # Smuggled before the fix: HTTP/1.0 with Transfer-Encoding was read as chunked.
    "http10-te": (post(CHUNKED + b"Connection: keep-alive\r\n", b"0\r\n\r\n", b"1.0"),
                  "Transfer-Encoding in an HTTP/1.0 request"),
    # Content-Length values.
    "cl-list-differs": (post(b"Content-Length: 1, 2\r\n", b"xx"), "conflicting Content-Length"),
    "cl-twice-differs": (post(b"Content-Length: 1\r\nContent-Length: 2\r\n", b"xx"),
                         "conflicting Content-Length"),
    "cl-plus": (post(b"Content-Length: +2\r\n", b"xx"), "bad Content-Length"),
    "cl-minus": (post(b"Content-Length: -2\r\n", b"xx"), "bad Content-Length"),
    "cl-hex": (post(b"Content-Length: 0x2\r\n", b"xx"), "bad Content-Length"),
    "cl-junk": (post(b"Content-Length: 2a\r\n", b"xx"), "bad Content-Length"),
    "cl-empty": (post(b"Content-Length: \r\n", b"xx"), "bad Content-Length"),
    "cl-too-many-digits": (post(b"Content-Length: " + b"0" * 30 + b"2\r\n", b"xx"), "bad Content-Length"),
    # Header syntax.
    "space-before-colon": (post(b"Content-Length : 2\r\n", b"xx"), "illegal header line"),
    "tab-before-colon": (post(b"Transfer-Encoding\t: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),
                         "illegal header line"),
    "bare-cr-in-header": (post(b"X-A: b\rContent-Length: 2\r\n", b"xx"), "illegal header line"),
    # Smuggled before the fix: h11 takes a bare LF as a line end.
    "bare-lf-everywhere": (b"POST / HTTP/1.1\nHost: echo.localhost\nContent-Length: 2\n\nxx", "bare LF"),
    "bare-lf-one-header": (post(b"X-A: b\nContent-Length: 2\r\n", b"xx"), "bare LF"),
    "bare-lf-request-line": (b"POST / HTTP/1.1\n" + HOST + b"Content-Length: 2\r\n\r\nxx", "bare LF"),
    # Smuggled before the fix: h11 unfolds obs-fold lines.
    "obs-fold-hides-te": (post(b"X-A: b\r\n Transfer-Encoding: chunked\r\nContent-Length: 2\r\n", b"xx"),
                          "obsolete line folding"),
    "obs-fold-te-value": (post(b"Transfer-Encoding:\r\n\tchunked\r\n", b"0\r\n\r\n"), "obsolete line folding"),
    # Chunk-size lines.
    "chunk-size-junk": (post(CHUNKED, b"2zz\r\nxx\r\n0\r\n\r\n"), "malformed chunk-size line"),
    "chunk-size-0x": (post(CHUNKED, b"0x2\r\nxx\r\n0\r\n\r\n"), "malformed chunk-size line"),
    "chunk-size-leading-space": (post(CHUNKED, b" 2\r\nxx\r\n0\r\n\r\n"), "malformed chunk-size line"),
    # Smuggled before the fix (h11 is lenient about these).
    "chunk-size-trailing-space": (post(CHUNKED, b"2 \r\nxx\r\n0\r\n\r\n"), "malformed chunk-size line"),
    "chunk-ext-bare-cr": (post(CHUNKED, b"2;a\rb\r\nxx\r\n0\r\n\r\n"), "malformed chunk-size line"),
    "chunk-ext-bare-lf": (post(CHUNKED, b"2;a\nxx\r\nxx\r\n0\r\n\r\n"), "bare LF"),
    "chunk-data-too-long": (post(CHUNKED, b"2\r\nxxxx\r\n0\r\n\r\n"), "chunk"),
    "chunk-data-bare-lf": (post(CHUNKED, b"2\r\nxx\n0\r\n\r\n"), "bare LF"),
    "last-chunk-bare-lf": (post(CHUNKED, b"2\r\nxx\r\n0\r\n\n"), "bare LF"),
    "trailer-bare-lf": (post(CHUNKED, b"2\r\nxx\r\n0\r\nX: a\nY: b\r\n\r\n"), "bare LF"),
    "trailer-obs-fold": (post(CHUNKED, b"2\r\nxx\r\n0\r\nX: a\r\n b\r\n\r\n"), "obsolete line folding"),
}

#: Framings that are unambiguous: answered, and the next request on the
#: connection is answered too.
CONTROLS: dict[str, tuple[bytes, int]] = {
    "content-length": (post(b"Content-Length: 2\r\n", b"xx"), 2),
    "chunked": (post(CHUNKED, b"2\r\nxx\r\n0\r\n\r\n"), 2),
    "chunked-capitalised": (post(b"Transfer-Encoding: Chunked\r\n", b"2\r\nxx\r\n0\r\n\r\n"), 2),
    "chunked-trailing-ows": (post(b"Transfer-Encoding: chunked \r\n", b"2\r\nxx\r\n0\r\n\r\n"), 2),
    "chunk-extensions": (post(CHUNKED, b'2;a=b;c\r\nxx\r\n3;q="x y\\"z"\r\nyyy\r\n0;end\r\n\r\n'), 5),
    "chunk-size-leading-zeros": (post(CHUNKED, b"0002\r\nxx\r\n0\r\n\r\n"), 2),
    "trailer-fields": (post(CHUNKED, b"2\r\nxx\r\n0\r\nX-Checksum: 1\r\n\r\n"), 2),
    "cl-repeated-equal": (post(b"Content-Length: 2\r\nContent-Length: 2\r\n", b"xx"), 2),
    "cl-list-equal": (post(b"Content-Length: 2, 2\r\n", b"xx"), 2),
    "cl-leading-zero": (post(b"Content-Length: 02\r\n", b"xx"), 2),
}

# A response that sets its own framing headers: the server must frame it itself.
FRAMING_HEADERS = '''
from workers import WorkerEntrypoint, Response

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("hello world", headers={"transfer-encoding": "chunked", "content-length": "3",
                                                "connection": "keep-alive", "x-ok": "1"})
'''


# A worker that answers HEAD itself, as Werkzeug does: no body, GET's length.
HEAD_LENGTH = '''
from workers import WorkerEntrypoint, Response

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        body = None if request.method == "HEAD" else "hello world"
        return Response(body, headers={"content-length": "11"})
'''


@pytest.fixture(scope="module")
def edge(corral: Corral) -> Corral:
    corral.deploy("echo", ECHO)
    corral.deploy("framing", FRAMING_HEADERS)
    corral.deploy("headlength", HEAD_LENGTH)
    return corral


def logged_reasons(server: Corral, event: str) -> list[str]:
    """The ``reason`` of every ``event`` line in the server's recent log."""
    reasons = []
    for line in server.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # the first line may be cut
        if entry.get("event") == event:
            reasons.append(entry.get("reason"))
    return reasons


def responses(answer: bytes) -> list[bytes]:
    """The status codes of the responses in a raw answer (no body here holds a status line)."""
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_ambiguous_framing_is_refused_and_closed(edge: Corral, name: str) -> None:
    request, words = ATTACKS[name]
    answer = edge.raw(request + SMUGGLED)  # returns when the server closes
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert b"\r\nconnection: close" in head
    assert words in body.decode(), body
    assert len(responses(answer)) == 1 and b"smuggled" not in answer, "a second request was parsed"
    reason = body.decode().removeprefix("Bad request: ").strip()
    assert reason in logged_reasons(edge, "ingress.bad_request"), f"no log line for {reason!r}"
    assert edge.request("/", host="echo.localhost").status == 200


@pytest.mark.parametrize("name", list(CONTROLS))
def test_unambiguous_framing_still_served_and_pipelined(edge: Corral, name: str) -> None:
    request, length = CONTROLS[name]
    answer = edge.raw(request + SECOND)
    assert responses(answer) == [b"200", b"200"], answer[:400]
    first, second = [json.loads(part.split(b"HTTP/1.1 ")[0]) for part in answer.split(b"\r\n\r\n")[1:]]
    assert first["length"] == length
    assert second["url"].endswith("/second")


def test_chunked_framing_followed_across_reads(edge: Corral) -> None:
    """A 2 MB chunked body arrives in many reads: the strict check keeps its place."""
    block = b"x" * 4000
    body = b"".join(b"%x;n=%d\r\n%s\r\n" % (len(block), i, block) for i in range(500))
    head = b"POST / HTTP/1.1\r\nHost: echo.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = edge.raw(head + body + b"0\r\n\r\n" + SECOND, timeout=30)
    assert responses(answer) == [b"200", b"200"], answer[:400]
    data = json.loads(answer.split(b"\r\n\r\n")[1].split(b"HTTP/1.1")[0])
    assert data["length"] == len(block) * 500
    assert data["sha256"] == hashlib.sha256(block * 500).hexdigest()

    # The same body with a lax chunk line at its end: refused while streaming,
    # and nothing after it is ever read as a request.
    answer = edge.raw(head + body + b"5 \r\nhello\r\n0\r\n\r\n" + SMUGGLED, timeout=30)
    assert not answer.startswith(b"HTTP/1.1 200") and b"smuggled" not in answer, answer[:300]
    assert len(responses(answer)) <= 1
    assert any("malformed chunk-size line b'5 '" in reason
               for reason in logged_reasons(edge, "ingress.bad_request_body"))


def test_oversized_head_in_one_read_is_refused(edge: Corral) -> None:
    """h11 enforces the head limit only on a head that arrives in pieces."""
    request = b"GET / HTTP/1.1\r\nHost: echo.localhost\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    answer = edge.raw(request + SMUGGLED)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"smuggled" not in answer


def test_worker_framing_headers_are_not_trusted(edge: Corral) -> None:
    """A worker's Transfer-Encoding/Content-Length/Connection never reach the wire."""
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: framing.localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    assert b"content-length: 3" not in lines and b"connection: keep-alive" not in lines
    assert b"x-ok: 1" in lines
    framing = [line for line in lines if line.startswith((b"content-length:", b"transfer-encoding:"))]
    assert len(framing) == 1, head
    # Keep-alive: the client reads the whole body and the next response.
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=10)
    for _ in range(3):
        conn.request("GET", "/", headers={"host": "framing.localhost"})
        resp = conn.getresponse()
        assert resp.read() == b"hello world"
    conn.close()


@pytest.mark.parametrize("version", [b"2.0", b"3.0", b"0.9"])
def test_another_major_version_is_refused_with_505(edge: Corral, version: bytes) -> None:
    """h11 parses any ``HTTP/d.d``: a request line naming another protocol
    gets 505 and a closed connection, not an HTTP/1.1 answer it would misread."""
    answer = edge.raw(b"GET / HTTP/" + version + b"\r\n" + HOST + b"\r\n" + SMUGGLED)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 505 "), answer[:300]
    assert b"\r\nconnection: close" in head
    assert f"HTTP/{version.decode()} is not supported" in body.decode(), body
    assert len(responses(answer)) == 1 and b"smuggled" not in answer
    assert body.decode().strip() in logged_reasons(edge, "ingress.bad_request")


@pytest.mark.parametrize("version", [b"1.0", b"1.2"])
def test_other_minor_versions_of_http1_are_served(edge: Corral, version: bytes) -> None:
    """RFC 9112 section 2.3: a higher minor version is read as the highest one known."""
    answer = edge.raw(b"GET /v HTTP/" + version + b"\r\n" + HOST + b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["url"].endswith("/v")


def test_server_alive_after_attacks(edge: Corral) -> None:
    assert edge.alive()
    assert edge.request("/", host="echo.localhost").json()["url"] == "http://echo.localhost/"
    assert "Traceback" not in edge.log() and "connection_error" not in edge.log()


# -- the chunk-line check on its own, fed one byte at a time ------------------------------


@pytest.mark.parametrize("body", [b"0\r\n\r\n", b"2\r\nxx\r\n0\r\n\r\n", b"A;x=1\r\n0123456789\r\n0\r\nT: v\r\n\r\n",
                                  b'1;q="a;b"\r\nx\r\n0\r\n\r\n'])
def test_chunked_framing_byte_by_byte(body: bytes) -> None:
    check = ChunkedFraming(1024)
    for i in range(len(body)):
        check.feed(body[i:i + 1])
    assert check.done
    check.feed(b"GET / HTTP/1.1\r\n\n")  # what follows the body is not its business


@pytest.mark.parametrize("body", [b"2 \r\nxx\r\n0\r\n\r\n", b"2\r\nxx\n", b"0\r\n\n", b"0\r\nA: b\r\n c\r\n\r\n",
                                  b"2;\r\nxx\r\n", b"1" * 17 + b"\r\n", b"2;" + b"a" * 2000 + b"\r\n"])
def test_chunked_framing_rejects_byte_by_byte(body: bytes) -> None:
    check = ChunkedFraming(1024)
    with pytest.raises(FramingError):
        for i in range(len(body)):
            check.feed(body[i:i + 1])


def test_a_head_answer_keeps_the_length_get_would_send(edge: Corral) -> None:
    """RFC 9110 8.6: a HEAD's Content-Length, if sent, is GET's. The server
    framed the bodiless answer as content-length: 0, telling the client GET
    would send nothing; the next request on the connection is still read."""
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=10)
    conn.request("HEAD", "/", headers={"host": "headlength.localhost"})
    head = conn.getresponse()
    assert (head.status, head.getheader("content-length"), head.read()) == (200, "11", b"")
    conn.request("GET", "/", headers={"host": "headlength.localhost"})
    get = conn.getresponse()
    assert (get.getheader("content-length"), get.read()) == ("11", b"hello world")
    conn.close()


def _padded_get(path: str, size: int, close: bool = False) -> bytes:
    """A GET of exactly ``size`` bytes (padded with a header)."""
    head = f"GET {path} HTTP/1.1\r\nHost: echo.localhost\r\n" + ("Connection: close\r\n" if close else "")
    pad = size - len(head) - len("X-Pad: \r\n\r\n")
    return (head + "X-Pad: " + "p" * pad + "\r\n\r\n").encode()


def test_a_pipelined_burst_longer_than_one_read_is_answered_whole(edge: Corral) -> None:
    """Nine 8 KiB requests in one write: the first read took 64 KiB (eight of
    them), and the ninth, left in the socket under an edge already reported,
    was never read; the connection was reset at the idle timeout with it
    unanswered. RFC 9112 9.3.2: every request received is answered, in order."""
    burst = b"".join(_padded_get(f"/n{i}", 8192, close=i == 8) for i in range(9))
    answer = edge.raw(burst, timeout=30)
    assert responses(answer) == [b"200"] * 9, answer[-300:]
    assert b'/n8"' in answer


def test_a_half_closed_client_is_answered_then_closed(edge: Corral) -> None:
    """A client that sends its request and shuts down its side (nc -N, a
    health checker) was answered at once but held open for the idle timeout
    (60 s): the close came with the request, under one edge."""
    request = b"GET /half HTTP/1.1\r\nHost: echo.localhost\r\n\r\n"
    with socket.create_connection(("127.0.0.1", edge.port), timeout=20) as sock:
        sock.sendall(request)
        assert responses(sock.recv(65536)) == [b"200"]  # served once: now idle, its wait parked
        # The request and the close must arrive together, as one edge: the
        # server is stopped while both are sent.
        os.kill(edge.proc.pid, signal.SIGSTOP)
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        finally:
            os.kill(edge.proc.pid, signal.SIGCONT)
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes (a timeout fails the test)
            answer += chunk
    assert responses(answer) == [b"200"], answer[:300]


def test_a_url_past_cloudflares_16_kb_is_414_at_the_edge(edge: Corral) -> None:
    """A 17,000-character URL was served by a platform script but failed
    inside the dispatcher passing it on (its fetch refuses a URL past 16 KB),
    a 500 blamed on the dispatcher's code. The edge answers 414 for it."""
    long = edge.request("/x?" + "q" * 17_000, host="echo.localhost")
    assert long.status == 414 and b"URI Too Long" in long.body, long
    fits = edge.request("/x?" + "q" * 16_000, host="echo.localhost")
    assert fits.status == 200, fits


IGNORES_BODY = '''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("not read")
'''


@pytest.mark.parametrize("size", [10, 70_000, 600_000])
def test_a_body_the_worker_leaves_unread_keeps_the_connection(edge: Corral, size: int) -> None:
    """A worker that answers without reading its request's body: the edge
    reads and drops the rest, and the next request on the connection is
    served. Past 64 KiB (what the edge pumps ahead) the body counted as
    closed and the connection ended with the client's bytes unread, a reset
    for a pooled client's next request."""
    edge.deploy("ignores", IGNORES_BODY)
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=20)
    try:
        for _ in range(2):
            conn.request("POST", "/", body=b"x" * size, headers={"Host": "ignores.localhost"})
            first = conn.getresponse()
            assert (first.status, first.read(), first.getheader("connection")) == (200, b"not read", None)
        conn.request("GET", "/", headers={"Host": "ignores.localhost"})
        second = conn.getresponse()
        assert (second.status, second.read()) == (200, b"not read")
    finally:
        conn.close()


def test_a_body_sent_in_one_byte_chunks_does_not_freeze_the_server(edge: Corral) -> None:
    """A client floods a body of one-byte chunks at a worker that does not
    read it (so the edge drains it): the drain's reads never yielded while
    data kept coming, and every other request, the admin API's too, waited
    until the drain gave up on the connection (or the client stopped)."""
    import threading

    edge.deploy("ignores", IGNORES_BODY)
    stop, draining, closed = threading.Event(), threading.Event(), threading.Event()

    def flood() -> None:
        try:
            with socket.create_connection(("127.0.0.1", edge.port), timeout=30) as sock:
                sock.sendall(b"POST / HTTP/1.1\r\nHost: ignores.localhost\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                burst = b"1\r\nx\r\n" * 4096
                sock.sendall(burst)
                answer = b""
                while b"not read" not in answer:  # answered: the edge drains the rest now
                    answer += sock.recv(65536) or b"not read"
                while not stop.is_set():
                    draining.set()
                    sock.sendall(burst)
        except OSError:
            pass
        finally:
            closed.set()  # the edge gave up on it

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        assert draining.wait(10)
        answer = edge.request("/", host="echo.localhost", timeout=60)
        assert answer.status == 200, answer
        # Answered while the drain went on, not once it ended.
        assert not closed.is_set()
    finally:
        stop.set()
        flooder.join(30)
