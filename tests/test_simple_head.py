"""The edge's fast reading of plain request heads agrees with h11's, byte for byte.

:func:`supervisor.edge.simple_head.read_simple_head` may decline any head
(h11 then reads it), but a head it takes must be one h11 reads the same way
(method, target, version, headers in order), as complete with no body, with
the same bytes left over, and one the edge's own framing checks accept. The
corpus is hand-picked heads plus seeded random mutations of them (bytes a
parser could read two ways: CR, LF, NUL, spaces, tabs, colons, obs-text).
"""

from __future__ import annotations

import json
import random
import re

import h11
import pytest

from supervisor.edge.http_server import _check_head, _header_list
from supervisor.edge.simple_head import read_simple_head
from tests.harness import Corral
from tests.test_spine import ECHO

LIMIT = 16 * 1024

PLAIN = b"GET /a?b=1 HTTP/1.1\r\nHost: t0.localhost\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
BASES = [
    PLAIN,
    b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n",
    b"DELETE /x HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nX-Spaces:   a  b  \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /next HTTP/1.1\r\n",
    b"GET http://x/abs HTTP/1.1\r\nHost: x\r\nX-Obs: caf\xe9\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok",
    b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
    b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\nHost: x\n\n",
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n",
]
TRICKY = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b"\x0b", b"\x7f", b"\xff", b"a", b"\r\n\r\n",
          b"Content-Length: 1\r\n", b"Host: y\r\n"]


def _mutations(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(BASES))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data) + 1)
            if rng.random() < 0.3 and at < len(data):
                del data[at]
            else:
                data[at:at] = rng.choice(TRICKY)
        out.append(bytes(data))
    return out


def _h11_reading(data: bytes) -> tuple[h11.Request, object, bytes] | None:
    """h11's request, the event after it, and its leftover bytes; None if it refuses."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=LIMIT)
    conn.receive_data(data)
    try:
        request = conn.next_event()
        if not isinstance(request, h11.Request):
            return None
        after = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    return request, after, bytes(conn.trailing_data[0])


def _check_agrees(data: bytes) -> None:
    head = read_simple_head(data, LIMIT)
    if head is None:
        return
    reading = _h11_reading(data)
    assert reading is not None, "h11 refuses a head the fast path took"
    request, after, leftover = reading
    assert (head.method, head.target, head.http_version) == (
        request.method, request.target, request.http_version)
    assert head.headers == _header_list(request)
    assert isinstance(after, h11.EndOfMessage), "h11 expects a body the fast path did not"
    assert head.rest == leftover
    assert _check_head(data, LIMIT) == len(data) - len(head.rest)  # the framing checks agree


def test_a_head_taken_is_read_as_h11_reads_it() -> None:
    for data in BASES + _mutations(1729, 4000):
        try:
            _check_agrees(data)
        except AssertionError as exc:
            raise AssertionError(f"{data!r}: {exc}") from None


def test_the_plain_cases_are_taken_and_the_rest_declined() -> None:
    """The mutations above test nothing if nothing is taken; this pins what is."""
    taken = [b for b in BASES if read_simple_head(b, LIMIT) is not None]
    assert taken == BASES[:5]
    assert read_simple_head(PLAIN, len(PLAIN) - 1) is None  # over the limit: h11 answers 431
    assert sum(read_simple_head(d, LIMIT) is not None for d in _mutations(1729, 4000)) > 200


@pytest.fixture(scope="module")
def edge(corral: Corral) -> Corral:
    corral.deploy("echo", ECHO)
    return corral


def test_pipelined_plain_and_framed_requests_alternate_over_a_real_socket(edge: Corral) -> None:
    """Plain heads (fast path) and a head with a body (h11) in one write,
    then a close: each answered in order, nothing lost or doubled."""
    host = b"Host: echo.localhost\r\n"
    raw = (b"GET /one HTTP/1.1\r\n" + host + b"\r\n"
           + b"POST /two HTTP/1.1\r\n" + host + b"Content-Length: 5\r\n\r\nhello"
           + b"GET /three HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n")
    answer = edge.raw(raw)  # returns when the server closes
    bodies = [json.loads(part.split(b"HTTP/1.1 ")[0]) for part in answer.split(b"\r\n\r\n")[1:]]
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"200"] * 3, answer[:600]
    assert [(b["method"], b["url"].rsplit("/", 1)[1], b["length"]) for b in bodies] == [
        ("GET", "one", 0), ("POST", "two", 5), ("GET", "three", 0)]
