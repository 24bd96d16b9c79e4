"""The common request head, read without h11's event machinery.

Why: h11 spends ~17 us on a plain ``GET`` head (its receive buffer, event
classes, per-header validation calls, a state machine stepped twice), about a
tenth of the supervisor's CPU on a dispatched request, and the supervisor is
what caps the platform's throughput. Nearly every request is the same easy
case: a complete head in one read, HTTP/1.1, no body. Reading that case takes
~3 us with a split and h11's own grammar.

The rule that keeps this safe: a head is taken here only when h11 would read
it *exactly* the same way and find it complete with no body. Anything else
(a head split over reads, HTTP/1.0, a body's framing headers, ``Expect``,
``Upgrade``, ``CONNECT``, a missing or repeated ``Host``, any line h11's
grammar refuses or reads leniently, a head over the size limit) gets None and
goes to h11 unchanged, so every refusal, every error message and every edge
case stays h11's (and the framing checks' in :mod:`supervisor.edge.http_server`).
Lines are matched with h11's own regular expressions (``h11._abnf``), and
tests/test_simple_head.py checks the two readings against each other.
"""

from __future__ import annotations

import re

from h11._abnf import header_field, request_line

_REQUEST_LINE = re.compile(request_line.encode("ascii"))
_HEADER_FIELD = re.compile(header_field.encode("ascii"))

#: Headers that give a request a body, an interim response or another
#: protocol: their requests are h11's to read.
_NOT_SIMPLE = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})


class SimpleHead:
    """A complete, bodyless HTTP/1.1 request head (the attributes
    :class:`h11.Request` has that the server reads), and what followed it."""

    __slots__ = ("method", "target", "http_version", "headers", "rest")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                 rest: bytes) -> None:
        self.method = method
        self.target = target
        self.http_version = b"1.1"
        #: Names lowercased, in the order sent (as the server's own list from h11).
        self.headers = headers
        #: Bytes after the head: the start of a pipelined request, or nothing.
        self.rest = rest


def read_simple_head(data: bytes, limit: int) -> SimpleHead | None:
    """``data`` as a :class:`SimpleHead` if it starts with one h11 reads the
    same way, within ``limit`` bytes; else None (h11 reads it)."""
    end = data.find(b"\r\n\r\n")
    if end == -1 or end + 4 > limit:
        return None
    lines = data[:end].split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None or line.group("http_version") != b"1.1":
        return None
    method = line.group("method")
    if method == b"CONNECT":
        return None
    headers = []
    hosts = 0
    for raw in lines[1:]:
        field = _HEADER_FIELD.fullmatch(raw)
        if field is None:  # includes obs-fold, bare CR or LF, space before the colon
            return None
        name = field.group("field_name").lower()
        if name in _NOT_SIMPLE:
            return None
        if name == b"host":
            hosts += 1
        headers.append((name, field.group("field_value")))
    if hosts != 1:
        return None
    return SimpleHead(method, line.group("target"), headers, data[end + 4:])
