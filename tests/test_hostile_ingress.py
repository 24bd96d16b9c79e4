"""The public HTTP ingress attacked as a hostile internet client would.

Raw bytes over real sockets to a real ``corral serve`` with the bundled
dispatcher routing to user workers, and every invocation's trace logged, so
a test sees exactly which requests reached a worker. Each attack checks the
answer (a 4xx naming the problem, or a closed connection), that nothing was
smuggled past the framing (the worker saw only the requests meant), that the
supervisor answers another client normally afterwards, and that nothing was
logged as an internal error. What tests/test_edge_framing.py,
tests/test_simple_head.py and tests/test_websockets.py already cover is not
repeated here: this is what they did not reach.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.harness import Corral
from tests.test_spine import ECHO
from tests.test_websockets import ECHO as WS_ECHO

MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 40
CONFIG = f"""log_invocations = true
[http_limits]
max_body_bytes = {MAX_BODY}
max_connections = {MAX_CONNECTIONS}
"""


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corral]:
    server = Corral(tmp_path_factory.mktemp("hostile-ingress"), config=CONFIG).start()
    try:
        server.deploy_dispatcher()
        server.deploy("echo", ECHO)
        server.deploy("ws", WS_ECHO)
        yield server
    finally:
        server.stop()


# -- helpers ---------------------------------------------------------------------------------


def connect(server: Corral, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (the socket's timeout bounds a hang)."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def read_head(sock: socket.socket, buffered: bytes = b"") -> tuple[bytes, bytes]:
    """One response head, and what came after it."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def statuses(answer: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> object:
    """Poll ``predicate`` until it holds; the deadline only bounds a hang."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def seen_urls(server: Corral) -> list[str]:
    """The URL of every request that reached a worker (the dispatcher's traces)."""
    urls = []
    for event in server.log_events():
        if event.get("event") == "invocation":
            request = (event.get("trace", {}).get("event") or {}).get("request") or {}
            if request.get("url"):
                urls.append(request["url"])
    return urls


def settled(server: Corral, marker: str) -> list[str]:
    """The URLs workers saw, once a control request (``/settle-<marker>``) on
    a new connection has been answered and traced: a request the attack
    smuggled in earlier would have been traced by then too."""
    resp = server.request(f"/settle-{marker}", host="echo.localhost")
    assert resp.status == 200, resp
    assert wait_for(lambda: any(f"/settle-{marker}" in url for url in seen_urls(server))), marker
    return seen_urls(server)


@pytest.fixture
def before(edge: Corral) -> int:
    """How many lines the server had logged when the test began."""
    return len(edge.log_events())


def assert_healthy(server: Corral, before: int) -> None:
    """Alive, serving another client, and no internal error logged since ``before``."""
    assert server.alive()
    assert server.request("/ok", host="echo.localhost").json()["url"] == "http://echo.localhost/ok"
    events = server.log_events()[before:]
    errors = [e for e in events if e.get("level") == "error"
              or "handler_error" in str(e.get("event")) or "connection_error" in str(e.get("event"))]
    assert not errors, errors
    # (A worker's own exceptions are in its invocation's trace, not the supervisor's.)
    tracebacks = [e for e in events if "Traceback" in str(e) and e.get("event") != "invocation"]
    tracebacks += [line for line in server.log_path.read_text(errors="replace").splitlines()
                   if "Traceback" in line and not line.startswith("{")]
    assert not tracebacks, tracebacks


def logged(server: Corral, event: str) -> list[str]:
    return [str(e.get("reason")) for e in server.log_events() if e.get("event") == event]


# -- targets and Host headers ------------------------------------------------------------------

def get(target: bytes, host: bytes | None = b"echo.localhost", version: bytes = b"1.1",
        method: bytes = b"GET") -> bytes:
    head = method + b" " + target + b" HTTP/" + version + b"\r\n"
    if host is not None:
        head += b"Host: " + host + b"\r\n"
    return head + b"\r\n"


#: name -> (request, words the 400 names). Before the fix each reached the
#: dispatcher: an empty or missing Host was a 500 ("Worker threw
#: exception"); a Host with a '/', '#' or '@' moved the path or host the
#: worker's URL has away from what the router matched (``Host: a.example#``
#: made ``/admin`` a fragment: the worker saw ``/``); an absolute-form target
#: was routed by the Host header but handed to the worker as its URL (two
#: hosts); ``*`` and CONNECT's ``host:port`` were 404s naming
#: ``echo.localhost*``.
BAD_TARGETS: dict[str, tuple[bytes, str]] = {
    "host-empty": (get(b"/bt", b""), "no Host header"),
    "host-absent-http10": (get(b"/bt", None, b"1.0"), "no Host header"),
    "host-with-path": (get(b"/bt", b"echo.localhost/admin"), "malformed Host header"),
    "host-with-fragment": (get(b"/bt", b"echo.localhost#"), "malformed Host header"),
    "host-with-userinfo": (get(b"/bt", b"evil@echo.localhost"), "malformed Host header"),
    "host-with-query": (get(b"/bt", b"echo.localhost?x"), "malformed Host header"),
    "host-list": (get(b"/bt", b"echo.localhost, evil.localhost"), "malformed Host header"),
    "host-space": (get(b"/bt", b"echo localhost"), "malformed Host header"),
    "host-non-ascii": (get(b"/bt", "\u00e9cho.localhost".encode()), "malformed Host header"),
    "host-backslash": (get(b"/bt", b"echo.localhost\\x"), "malformed Host header"),
    "host-bad-port": (get(b"/bt", b"echo.localhost:80x"), "malformed Host header"),
    "host-open-bracket": (get(b"/bt", b"[::1"), "malformed Host header"),
    "absolute-other-host": (get(b"http://evil.localhost/bt"), "they must agree"),
    "absolute-empty-host": (get(b"http:///bt"), "they must agree"),
    "absolute-ftp": (get(b"ftp://echo.localhost/bt"), "must be a path starting with '/'"),
    "asterisk-options": (get(b"*", method=b"OPTIONS"), "asterisk-form"),
    "asterisk-get": (get(b"*"), "asterisk-form"),
    "connect": (get(b"echo.localhost:443", b"echo.localhost:443", method=b"CONNECT"), "CONNECT"),
    "authority-form-get": (get(b"echo.localhost:80"), "must be a path starting with '/'"),
    "relative-path": (get(b"bt"), "must be a path starting with '/'"),
    "fragment": (get(b"/bt#frag"), "fragment"),
}


@pytest.mark.parametrize("name", list(BAD_TARGETS))
def test_a_target_or_host_naming_no_worker_url_is_a_400(edge: Corral, before: int, name: str) -> None:
    request, words = BAD_TARGETS[name]
    with connect(edge) as sock:
        # A well-framed request after it: it may be served (the framing is
        # clear), and is the only request a worker may see.
        sock.sendall(request + get(f"/next-{name}".encode())[:-2] + b"Connection: close\r\n\r\n")
        answer = read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert words in body.decode(), body
    assert statuses(answer)[1:] in ([], [b"200"]), answer[:600]
    reason = body.decode().split("\n")[0].removeprefix("Bad request: ")
    assert reason in logged(edge, "ingress.bad_target")
    urls = settled(edge, name)
    assert not [url for url in urls if "/bt" in url], urls
    assert_healthy(edge, before)


@pytest.mark.parametrize("request_, url", [
    (get(b"http://echo.localhost/abs-1?q=1"), "http://echo.localhost/abs-1?q=1"),
    (get(b"HTTPS://echo.localhost/abs-2", b"ECHO.LOCALHOST"), "http://echo.localhost/abs-2"),
    (get(b"http://echo.localhost?abs-3"), "http://echo.localhost/?abs-3"),
    # HTTP/1.0 needs no Host: the absolute-form target names it, and the
    # dispatcher (which routes on the Host header) is given it.
    (get(b"http://echo.localhost:80/abs-4", None, b"1.0"), "http://echo.localhost:80/abs-4"),
])
def test_an_absolute_form_target_is_read_as_its_host_and_path(edge: Corral, before: int, request_: bytes,
                                                              url: str) -> None:
    answer = edge.raw(request_ if b"HTTP/1.0" in request_ else request_[:-2] + b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["url"] == url
    assert_healthy(edge, before)


#: Refused by h11 before any worker runs; not in the framing tests' list.
REFUSED_HEADS: dict[str, tuple[bytes, int, str]] = {
    "host-twice": (b"GET /rh HTTP/1.1\r\nHost: echo.localhost\r\nHost: evil.localhost\r\n\r\n", 400,
                   "multiple Host"),
    "host-twice-same": (b"GET /rh HTTP/1.1\r\nHost: echo.localhost\r\nHost: echo.localhost\r\n\r\n", 400,
                        "multiple Host"),
    "host-absent-http11": (b"GET /rh HTTP/1.1\r\nX: y\r\n\r\n", 400, "Missing mandatory Host"),
    "http09": (b"GET /rh\r\n\r\n", 400, "illegal request line"),
    "nul-in-value": (b"GET /rh HTTP/1.1\r\nHost: echo.localhost\r\nX: a\x00b\r\n\r\n", 400, "illegal header line"),
    "nul-in-name": (b"GET /rh HTTP/1.1\r\nHost: echo.localhost\r\nX\x00Y: a\r\n\r\n", 400, "illegal header line"),
    "bare-cr-request-line": (b"GET /rh HTTP/1.1\rHost: echo.localhost\r\n\r\n", 400, "illegal request line"),
    "bare-cr-line-end": (b"GET /rh HTTP/1.1\r\nHost: echo.localhost\rX: y\r\n\r\n", 400, "illegal header line"),
    "tls-client-hello": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", 400,
                         "illegal request line"),
    "non-ascii-method": (b"G\xc3\x89T /rh HTTP/1.1\r\nHost: echo.localhost\r\n\r\n", 400, "illegal request line"),
    "leading-blank-lines": (b"\r\n\r\nGET /rh HTTP/1.1\r\nHost: echo.localhost\r\n\r\n", 400,
                            "no request line"),
}
SMUGGLED = b"GET /smuggled-rh HTTP/1.1\r\nHost: echo.localhost\r\n\r\n"


@pytest.mark.parametrize("name", list(REFUSED_HEADS))
def test_a_malformed_head_is_refused_and_closes(edge: Corral, before: int, name: str) -> None:
    request, status, words = REFUSED_HEADS[name]
    answer = edge.raw(request + SMUGGLED)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:300]
    assert b"\r\nconnection: close" in head and words in body.decode("latin-1"), answer[:300]
    assert statuses(answer) == [b"%d" % status], "a second request was parsed"
    assert not [url for url in settled(edge, name) if "/rh" in url or "smuggled" in url]
    assert_healthy(edge, before)


# -- keep-alive, pipelining and refusals ----------------------------------------------------------


def test_http10_keep_alive_is_one_request_per_connection(edge: Corral, before: int) -> None:
    answer = edge.raw(b"GET /ka-1 HTTP/1.0\r\nHost: echo.localhost\r\nConnection: keep-alive\r\n\r\n"
                      b"GET /smuggled-ka HTTP/1.0\r\nHost: echo.localhost\r\n\r\n")
    assert statuses(answer) == [b"200"] and b"\r\nconnection: close" in answer, answer[:400]
    urls = settled(edge, "ka")
    assert urls.count("http://echo.localhost/ka-1") == 1 and not [u for u in urls if "smuggled-ka" in u]
    assert_healthy(edge, before)


@pytest.mark.parametrize("name, first, status", [
    ("declared-too-large", b"POST /pl HTTP/1.1\r\nHost: echo.localhost\r\nContent-Length: %d\r\n\r\n"
     % (MAX_BODY + 1), 413),
    ("chunked-too-large", b"POST /pl HTTP/1.1\r\nHost: echo.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
     + b"%x\r\n" % (MAX_BODY + 1) + b"x" * (MAX_BODY + 1) + b"\r\n0\r\n\r\n", 413),
    ("bad-chunk", b"POST /pl HTTP/1.1\r\nHost: echo.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"zz\r\n", 400),
    ("huge-chunk-size", b"POST /pl HTTP/1.1\r\nHost: echo.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"1ffffffffffffffff\r\n", 400),
])
def test_a_pipelined_request_behind_a_refused_one_is_never_read(edge: Corral, before: int, name: str, first: bytes,
                                                                 status: int) -> None:
    with connect(edge, timeout=15) as sock:
        sock.sendall(first + b"GET /smuggled-pl HTTP/1.1\r\nHost: echo.localhost\r\n\r\n")
        try:
            answer = read_all(sock)
        except ConnectionResetError:  # the server stopped reading a body it refused
            answer = b""
    if answer:
        assert statuses(answer) == [b"%d" % status], answer[:400]
    urls = settled(edge, f"pl-{name}")
    assert not [url for url in urls if "smuggled-pl" in url], urls
    assert_healthy(edge, before)


# -- Expect: 100-continue ----------------------------------------------------------------------

EXPECT = b"POST /ex HTTP/1.1\r\nHost: echo.localhost\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"


def test_expect_100_continue_gets_its_100_when_the_body_is_wanted(edge: Corral, before: int) -> None:
    """A client that waits for the 100 before its body (RFC 9110 section
    10.1.1) got nothing before the fix while the worker waited for the body:
    both sides waited out the worker's wall limit."""
    with connect(edge) as sock:
        sock.sendall(EXPECT)
        head, rest = read_head(sock)
        assert head == b"HTTP/1.1 100 Continue" and rest == b"", head
        sock.sendall(b"hello")
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in head, head
        # The same connection serves the next request (keep-alive).
        sock.sendall(b"GET /ex-next HTTP/1.1\r\nHost: echo.localhost\r\nConnection: close\r\n\r\n")
        answer = rest + read_all(sock)
    assert json.loads(answer.split(b"HTTP/1.1 ")[0])["length"] == 5
    assert statuses(answer) == [b"200"] and b"/ex-next" in answer, answer[:400]
    assert_healthy(edge, before)


@pytest.mark.parametrize("name, request_, status", [
    # The body came with the head: no 100 is owed.
    ("body-sent-anyway", EXPECT + b"hello", 200),
    # Too large by its Content-Length: a final answer at once, no 100.
    ("too-large", EXPECT.replace(b"Length: 5", b"Length: %d" % (MAX_BODY + 1)), 413),
    # The worker answers without reading the body (no worker of that name):
    # no 100, and the connection ends, since the client may send its body or not.
    ("answered-unread", EXPECT.replace(b"echo.localhost", b"nobody.localhost"), 404),
    # HTTP/1.0 knows no 100: the expectation is ignored.
    ("http10", EXPECT.replace(b"HTTP/1.1", b"HTTP/1.0") + b"hello", 200),
])
def test_expect_100_continue_without_a_100(edge: Corral, before: int, name: str, request_: bytes,
                                          status: int) -> None:
    with connect(edge) as sock:
        sock.sendall(request_)
        head, _ = read_head(sock)
        assert head.startswith(b"HTTP/1.1 %d " % status), head
        if status != 200:  # the connection ends with the answer
            assert b"\r\nconnection: close" in head, head
            read_all(sock)
    assert_healthy(edge, before)


# -- connections held -----------------------------------------------------------------------------


def test_idle_connections_past_the_limit_get_a_503_and_others_are_served_after(edge: Corral, before: int) -> None:
    extra = 5
    held = [connect(edge) for _ in range(MAX_CONNECTIONS + extra)]
    try:
        # Those past the limit (whichever the server took last) are answered 503 and closed.
        answers: dict[socket.socket, bytes] = {}
        while len(answers) < extra:
            ready, _, _ = select.select([s for s in held if s not in answers], [], [], 10)
            assert ready, f"only {len(answers)} connections were refused"
            for sock in ready:
                answers[sock] = read_all(sock)
        for answer in answers.values():
            assert answer.startswith(b"HTTP/1.1 503 ") and b"too many connections" in answer, answer[:300]
        # A held connection still works.
        kept = next(s for s in held if s not in answers)
        kept.sendall(b"GET /held HTTP/1.1\r\nHost: echo.localhost\r\nConnection: close\r\n\r\n")
        assert read_all(kept).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()
    assert wait_for(lambda: edge.request("/after-idle", host="echo.localhost").status == 200)
    assert_healthy(edge, before)


# -- WebSockets ------------------------------------------------------------------------------


def ws_connect(server: Corral) -> tuple[socket.socket, bytes]:
    """An upgraded connection to the ``ws`` worker; what followed the 101."""
    sock = connect(server)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: ws.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
    head, rest = read_head(sock)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock, rest


def frame(opcode: int, payload: bytes = b"", fin: bool = True, length: int | None = None) -> bytes:
    """A masked client frame; ``length`` overrides the length field."""
    n = len(payload) if length is None else length
    first = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        size = bytes([0x80 | n])
    elif n < 1 << 16:
        size = bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        size = bytes([0x80 | 127]) + struct.pack(">Q", n)
    mask = b"\x11\x22\x33\x44"
    return first + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_close(sock: socket.socket, buffered: bytes) -> bytes:
    """Read the server's (unmasked) frames until its close frame; what followed it."""
    data = buffered
    while True:
        while len(data) >= 2:
            n, at = data[1] & 0x7F, 2
            if n == 126:
                n, at = struct.unpack(">H", data[2:4])[0] if len(data) >= 4 else 1 << 62, 4
            elif n == 127:
                n, at = struct.unpack(">Q", data[2:10])[0] if len(data) >= 10 else 1 << 62, 10
            if len(data) < at + n:
                break
            opcode, data = data[0] & 0x0F, data[at + n:]
            if opcode == 8:
                return data
        chunk = sock.recv(65536)
        assert chunk, "closed before the server's close frame"
        data += chunk


def read_until_closed(sock: socket.socket, rest: bytes) -> bytes:
    try:
        return rest + read_all(sock)
    except ConnectionResetError:
        return rest


def ws_closes(server: Corral, before: int) -> list[int]:
    """The close codes of sockets closed since the log had ``before`` events."""
    return [e.get("code") for e in server.log_events()[before:] if e.get("event") == "websocket.closed"]


CLOSE_1000 = frame(8, struct.pack(">H", 1000))


@pytest.mark.parametrize("name, attack, code", [
    # Before the fix: the pong to a ping crossing the server's close raised
    # in wsproto and was logged as ingress.handler_error with a traceback.
    # (None: wait for the server's close frame.)
    ("ping-after-servers-close", [frame(1, b"bye"), None, frame(9, b"hi"), CLOSE_1000], 1000),
    ("ping-after-1009", [frame(1, b"x" * (1024 * 1024 + 1)), None, frame(9, b"hi"), frame(1, b"more"),
                         CLOSE_1000], 1000),
    ("fragmented-ping", [frame(9, b"p", fin=False)], 1002),
    ("long-control-frame", [frame(9, b"p" * 126)], 1002),
    ("length-2-to-63", [frame(2, b"", length=1 << 63)], 1002),
    ("continuation-first", [frame(0, b"x")], 1002),
    ("text-not-utf8", [frame(1, b"\xff\xfe")], 1007),
    ("unmasked", [b"\x81\x02hi"], 1002),
    ("reserved-bits", [b"\xc1" + frame(1, b"hi")[1:]], 1002),
    ("garbage", [b"\x00" * 64 + os.urandom(64)], 1002),
])
def test_a_hostile_websocket_client_is_cut_off_alone(edge: Corral, before: int, name: str,
                                                      attack: list[bytes | None], code: int) -> None:
    sock, rest = ws_connect(edge)
    with sock:
        for data in attack:
            if data is None:
                rest = server_close(sock, rest)
                continue
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                break
        read_until_closed(sock, rest)  # the server ends the connection
    assert wait_for(lambda: code in ws_closes(edge, before)), ws_closes(edge, before)
    assert_healthy(edge, before)


def test_a_client_streaming_pings_does_not_hold_the_supervisor(edge: Corral, before: int) -> None:
    """Before the fix the relay's reader never yielded while pings kept
    coming (a read with bytes waiting is no checkpoint, and a ping delivers
    nothing): every other client of the supervisor waited for the flood to
    end. Now another client is answered while the flood is still going, so
    the flood is stopped before it has sent all it would."""
    sock, _ = ws_connect(edge)
    bursts, sent, stop = 400, [0], threading.Event()
    burst = frame(9, b"p" * 125) * 2000  # ~260 kB of pings

    def drain() -> None:  # read the pongs, so that TCP never stalls the flood
        try:
            while sock.recv(1 << 16):
                pass
        except OSError:
            pass

    def flood() -> None:
        try:
            for _ in range(bursts):
                if stop.is_set():
                    return
                sock.sendall(burst)
                sent[0] += 1
        except OSError:
            pass

    threads = [threading.Thread(target=drain), threading.Thread(target=flood)]
    for thread in threads:
        thread.start()
    try:
        assert wait_for(lambda: sent[0] >= 2)
        resp = edge.request("/during-flood", host="echo.localhost", timeout=60)
    finally:
        stop.set()
        threads[1].join(60)
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        threads[0].join(60)
    assert resp.status == 200, resp
    assert sent[0] < bursts, "the other client was answered only once the flood was over"
    assert_healthy(edge, before)


def pings_unread(sock: socket.socket) -> None:
    """Pings until the connection takes no more, none of the pongs read: the
    server's writer is then stuck writing to this client."""
    sock.setblocking(False)
    burst = frame(9, b"p" * 125) * 500
    try:
        for _ in range(400):
            sock.send(burst)
    except BlockingIOError:
        pass
    sock.setblocking(True)


@pytest.mark.parametrize("how", ["mid-message", "pongs-unread"])
def test_a_reset_is_a_1006_for_the_worker(edge: Corral, before: int, how: str) -> None:
    """Before the fix a reset that the relay's writer met first (sending to
    the client) left its nursery as an internal error with a traceback."""
    sock, _ = ws_connect(edge)
    if how == "mid-message":
        sock.sendall(frame(1, b"half of a message", fin=False) + frame(0, b"x" * 1000)[:500])
    else:
        pings_unread(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset, not a FIN
    assert wait_for(lambda: 1006 in ws_closes(edge, before)), ws_closes(edge, before)
    assert_healthy(edge, before)


def close_code(sock: socket.socket, buffered: bytes) -> int | None:
    """The status code of the server's close frame (None: the connection
    ended without one)."""
    data = buffered
    while True:
        while len(data) >= 2 and len(data) >= 2 + (data[1] & 0x7F) and data[1] & 0x7F < 126:
            opcode, n = data[0] & 0x0F, data[1] & 0x7F
            payload, data = data[2:2 + n], data[2 + n:]
            if opcode == 8:
                return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk


@pytest.mark.parametrize("attack, code", [
    pytest.param(frame(1, b"\xff\xfe"), 1007, id="text-not-utf8"),
    pytest.param(frame(1, b"caf\xc3", fin=False) + frame(0, b"\x28"), 1007, id="text-not-utf8-in-a-continuation"),
    pytest.param(frame(9, b"p", fin=False), 1002, id="fragmented-ping"),
    pytest.param(frame(0, b"x"), 1002, id="continuation-first"),
    pytest.param(b"\x81\x02hi", 1002, id="unmasked"),
    pytest.param(b"\xc1" + frame(1, b"hi")[1:], 1002, id="reserved-bits"),
])
def test_a_frame_that_fails_the_connection_gets_a_close_frame_saying_why(
        edge: Corral, before: int, attack: bytes, code: int) -> None:
    """RFC 6455 section 7.1.7: an endpoint that fails the connection sends a
    close frame with the status code first. Before the fix the TCP
    connection just ended, and the client read 1006 with no reason."""
    sock, rest = ws_connect(edge)
    with sock:
        sock.sendall(attack)
        assert close_code(sock, rest) == code
    assert wait_for(lambda: code in ws_closes(edge, before)), ws_closes(edge, before)
    assert_healthy(edge, before)


@pytest.mark.parametrize("upgrade", [
    b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
], ids=["h2c", "websocket"])
def test_an_upgrade_a_plain_worker_declines_says_the_connection_ends(edge: Corral, before: int,
                                                                       upgrade: bytes) -> None:
    """A worker that answers an Upgrade request with an ordinary response:
    the server cannot read a next request (the client may already speak the
    new protocol), so its answer says ``connection: close`` and the
    connection ends. Before the fix it ended without saying so, and a client
    reusing the connection lost its next request."""
    with connect(edge) as sock:
        sock.sendall(b"GET /declined HTTP/1.1\r\nHost: echo.localhost\r\n" + upgrade + b"\r\n")
        answer = read_all(sock)
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200 "), answer[:300]
    assert b"\r\nconnection: close" in head, head
    assert_healthy(edge, before)
