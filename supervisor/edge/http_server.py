"""HTTP/1.1 server connections on trio + h11, for ingress and the admin socket.

One task per connection (never per message). What a production edge needs
around the protocol:

* limits: header block size (431), body size (413, by Content-Length at once
  or while a chunked body streams), connection count (503);
* timeouts: a request head must arrive within ``header_timeout_s`` once
  started, an idle keep-alive connection is closed after ``idle_timeout_s``
  (kept by one sweeper task per server, to within a few tenths of a second,
  rather than a cancel scope per request: entering and leaving one cost ~5 us
  of the supervisor's ~200 us per dispatched request);
* malformed requests get a 400 with the parser's reason and a log line, and
  the connection closes without a reset (lingering close);
* request framing must be unambiguous (RFC 9112 sections 6.1 and 6.3): a
  request a proxy in front could delimit differently than we do is refused
  with a 400 that names the problem, and the connection is closed, so no byte
  after it is parsed as another request (request smuggling). h11 rejects most
  of this itself; :func:`_check_head` and :class:`ChunkedFraming` refuse what
  it is lenient about (both Content-Length and Transfer-Encoding, bare LF line
  ends, obs-fold, whitespace after a chunk size, a bare LF or CR in chunk lines
  and trailers);
* ``Expect: 100-continue`` gets its 100 when the body is first read (and
  the connection closes if the answer went out without the body);
* a small request body that is already in the buffer is handed over whole
  (it travels inline to the sandbox); larger ones stream with backpressure;
* any exception from the handler is logged and answered with a 500 (or the
  connection is closed if the response had started): it never reaches the
  accept loop, so one bad request cannot stop the server.

Division of labour, for speed on the request path (the supervisor is the
bottleneck of the whole platform): **h11 parses** every request but the
plain case, with a fresh parser per request cycle; the plain case (a
complete, bodyless HTTP/1.1 head in one read) is read with h11's own grammar
without its state machine (:mod:`supervisor.edge.simple_head`); **responses
are serialized here**, directly into one buffer, with header names and
values validated against response splitting; sockets are plain
non-blocking sockets driven by trio's ``wait_readable``/``wait_writable``,
one syscall per read or write.
"""

from __future__ import annotations

import http
import re
import socket
import time
from collections.abc import Awaitable, Callable

import h11
import trio

from protocol.http_grammar import TOKEN_BYTES
from protocol.messages import MAX_CHUNK
from supervisor.config import HttpConfig
from supervisor.edge.client_ip import parse_address
from supervisor.edge.idle_waits import IdleWaits
from supervisor.edge.simple_head import SimpleHead, read_simple_head
from supervisor.log import error, warn
from supervisor.pool.bodies import BodyError, BodyTooLarge

READ_SIZE = 64 * 1024
#: What the edge reads and drops of a request body the worker left unread,
#: and for how long, to keep the connection for the next request (nginx
#: discards an unread body likewise); past either, it closes, lingering.
DRAIN_BYTES = 4 * 1024 * 1024
DRAIN_S = 5.0
#: What a piece of a drained body counts for at least: a body sent as tiny
#: chunks costs the parsing of each, not its few bytes.
DRAIN_PIECE_COST = 1024

#: Hop-by-hop and framing headers a handler may not set: the server frames
#: responses itself (Content-Length or chunked) and manages the connection.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"upgrade", b"te",
    b"trailer", b"proxy-connection",
})
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
#: Not in a reason phrase (RFC 9110: HTAB / SP / VCHAR / obs-text; workerd
#: refuses HTAB too, as the sandbox does).
_BAD_REASON = re.compile(rb"[\x00-\x1f\x7f]")
#: The interim answer to ``Expect: 100-continue``, sent when the body is
#: first wanted: a client that waits for it before sending its body (as
#: RFC 9110 section 10.1.1 lets it) would otherwise wait out the worker's
#: wall limit while the worker waits for the body. h11 stops reporting the
#: client as waiting once a byte of its body arrives, so it goes out once.
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINES = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
    for status in http.HTTPStatus
}


class FramingError(h11.RemoteProtocolError):
    """The request's framing could be read two ways, so it is refused (400 and close).

    A proxy in front of us that reads the request's end differently would
    forward the bytes after it as a request of the client's choosing.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_status_hint=400)


class ClientGone(Exception):
    """The client closed the connection or broke the protocol mid-request."""


class LengthMismatch(BodyError):
    """A response framed with a Content-Length got a body of another length.

    The head is out, so the only honest signal left is a closed connection
    (the client sees a short body, as from any origin that breaks off); the
    next request must not be read on it, since the client cannot tell where
    this response ended."""

    def __init__(self, declared: int, received: int, longer: bool) -> None:
        self.declared = declared
        self.received = received
        what = "at least " if longer else ""
        super().__init__(f"the response body declared {declared} bytes but gave {what}{received}")


class InvalidResponse(Exception):
    """A handler produced a response that cannot be sent (a bad header)."""


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise InvalidResponse(f"invalid status code {status}")
        line = b"HTTP/1.1 %d \r\n" % status
    return line


def _own_status_line(status: int, status_text: str) -> bytes:
    """The status line with a worker's own reason phrase, as UTF-8 (as
    workerd sends it). Checked here, though the sandbox checks it too: the
    child is not trusted, and a CR or LF would write headers of its own."""
    reason = status_text.encode("utf-8", "replace")
    if _BAD_REASON.search(reason):
        raise InvalidResponse(f"invalid status text {status_text[:100]!r}")
    line = _status_line(status)  # checks the status
    return line[:13] + reason + b"\r\n"  # b"HTTP/1.1 200 "


def serialize_head(status: int, headers: list[tuple[bytes, bytes]], framing: bytes,
                   status_text: str = "") -> bytearray:
    """Status line and headers; ``framing`` holds the server's own headers.
    ``status_text``: a reason phrase other than the status's standard one."""
    out = bytearray(_own_status_line(status, status_text) if status_text else _status_line(status))
    for name, value in headers:
        if name.lower() in HOP_BY_HOP:
            continue
        if not TOKEN_BYTES.fullmatch(name) or _BAD_VALUE.search(value):
            raise InvalidResponse(f"invalid response header {name[:100]!r}")
        out += name
        out += b": "
        out += value
        out += b"\r\n"
    out += framing
    out += b"\r\n"
    return out


def _tagged(headers: list[tuple[bytes, bytes]], tag: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``tag`` last and no other header of its name."""
    name = tag[0]
    return [h for h in headers if h[0].lower() != name] + [tag]


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The Content-Length a worker gave its bodiless answer to a HEAD (0
    without a valid one). A HEAD's answer says what GET would send (RFC 9110
    section 9.3.2; 8.6: never a length other than GET's): a framework that
    answers HEAD itself, as Werkzeug does, leaves the body out and keeps the
    length, which the server's own framing replaced with 0. No body follows a
    HEAD's answer, so the value frames nothing on this connection."""
    for name, value in headers:
        if name.lower() == b"content-length" and value.isdigit() and len(value) <= 18:
            return int(value)
    return 0


def _no_body(status: int) -> bool:
    return status < 200 or status in (204, 304)


def _check_head(raw: bytes, limit: int) -> int:
    """Refuse what h11 is lenient about in a request head; returns the head's length.

    ``raw`` starts with the head h11 just parsed. h11 takes a bare LF as a
    line end and unfolds obs-fold lines; a proxy that does neither sees other
    header lines than we do (e.g. a ``Transfer-Encoding`` we do not see). Plain
    byte searches, no regex: this runs on every request.
    """
    end = raw.find(b"\r\n\r\n")
    if end == -1:  # h11 found the head's end, so it ended in a bare LF
        raise FramingError("the request head ends with a bare LF; lines must end with CRLF")
    end += 4
    if raw.count(b"\n", 0, end) != raw.count(b"\r\n", 0, end):
        raise FramingError("a line of the request head ends with a bare LF; lines must end with CRLF")
    if raw.find(b"\r\n ", 0, end) != -1 or raw.find(b"\r\n\t", 0, end) != -1:
        raise FramingError("obsolete line folding (a header line starting with a space or tab) "
                           "is not accepted (RFC 9112 section 5.2)")
    if end > limit:
        # h11 only enforces its limit on a head that arrives in pieces.
        raise h11.RemoteProtocolError(f"request head larger than {limit} bytes", error_status_hint=431)
    return end


def _header_list(event: h11.Request) -> list[tuple[bytes, bytes]]:
    """The request's headers, names lowercased, as h11 iterates them, made
    once per request: iterating ``event.headers`` itself costs a Python call
    per header (it is a ``Sequence``), and three readers need the list."""
    return [(name.lower(), value) for name, value in event.headers.raw_items()]


def _body_framing(event: h11.Request, headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """``(content_length, chunked)`` of a request whose framing is unambiguous.

    h11 has already refused a Transfer-Encoding other than one ``chunked``,
    differing or malformed Content-Length values and bad header lines; it
    still accepts both headers at once (and lets chunked win), and
    Transfer-Encoding in HTTP/1.0. A loop over the parsed headers: cheap.
    """
    length: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            length = int(value)  # h11 checked: digits only, one value
        elif name == b"transfer-encoding":
            chunked = True
    if chunked:
        if length is not None:
            raise FramingError(
                "the request has both Content-Length and Transfer-Encoding, so its body could be "
                "framed two ways (RFC 9112 section 6.3); send one of them")
        if event.http_version < b"1.1":
            raise FramingError(
                f"Transfer-Encoding in an HTTP/{event.http_version.decode()} request is faulty "
                "framing (RFC 9112 section 6.1); use HTTP/1.1 or Content-Length")
    return length, chunked


_TOKEN_RE = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED_RE = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
#: chunk-size [chunk-ext] exactly as RFC 9112 section 7.1.1 has it (h11 also
#: takes trailing whitespace and any bytes but LF after a ';').
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*"
    % (_TOKEN_RE, _TOKEN_RE, _QUOTED_RE))
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedFraming:
    """A strict reading of a chunked body's frame lines, fed the bytes h11 gets.

    h11 decodes the body; this only follows its framing (chunk-size lines,
    the CRLF after each chunk's data, trailer lines) to refuse what h11
    accepts but a stricter or differently lenient proxy could read as another
    end of the body: whitespace after a chunk size, a bare CR in an extension,
    a bare LF ending any line, a folded trailer line. Data bytes are skipped
    by count, so a large body costs next to nothing.
    """

    __slots__ = ("_state", "_remaining", "_line", "_max_line")

    def __init__(self, max_line: int) -> None:
        self._state = _SIZE
        self._remaining = 0
        self._line = bytearray()
        self._max_line = max_line

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes, start: int = 0) -> None:
        """Check ``data[start:]``; raises :class:`FramingError` at the first bad line."""
        i, n = start, len(data)
        while i < n and self._state != _DONE:
            if self._state == _DATA:
                step = min(self._remaining, n - i)
                i += step
                self._remaining -= step
                if not self._remaining:
                    self._state = _DATA_END
                continue
            j = data.find(b"\n", i)
            stop = n if j == -1 else j + 1
            self._line += data[i:stop]
            i = stop
            if len(self._line) > self._max_line:
                raise FramingError(f"a line of the chunked body is longer than {self._max_line} bytes")
            if j != -1:
                line = bytes(self._line)
                self._line.clear()
                self._end_line(line)

    def _end_line(self, line: bytes) -> None:
        if not line.endswith(b"\r\n"):
            raise FramingError("a line of the chunked body ends with a bare LF; lines must end with CRLF")
        content = line[:-2]
        if self._state == _SIZE:
            match = _CHUNK_LINE.fullmatch(content)
            if match is None:
                raise FramingError(f"malformed chunk-size line {content[:60]!r}: expected hex digits "
                                   "and optional ';name=value' extensions (RFC 9112 section 7.1)")
            self._remaining = int(match.group(1), 16)
            self._state = _DATA if self._remaining else _TRAILER
        elif self._state == _DATA_END:
            if content:
                raise FramingError("chunk data is longer than its chunk-size says")
            self._state = _SIZE
        elif not content:
            self._state = _DONE
        elif content[:1] in (b" ", b"\t"):
            raise FramingError("obsolete line folding in the chunked body's trailer is not accepted")
        elif b"\r" in content:
            raise FramingError("a bare CR in the chunked body's trailer")


class Request:
    __slots__ = ("method", "target", "headers", "http_version", "body", "host")

    def __init__(self, event: h11.Request | SimpleHead, body: RequestBody | bytes,
                 headers: list[tuple[bytes, bytes]]) -> None:
        self.method: bytes = event.method
        self.target: bytes = event.target
        self.headers = headers
        self.http_version: bytes = event.http_version
        self.body = body
        self.host = b""
        for name, value in self.headers:
            if name == b"host":
                self.host = value
                break


def _wants_close(event: h11.Request | SimpleHead, headers: list[tuple[bytes, bytes]]) -> bool:
    if event.http_version != b"1.1":
        return True  # HTTP/1.0: one request per connection
    for name, value in headers:
        if name == b"connection" and b"close" in value.lower():
            return True
        if name == b"upgrade":
            # A switch we do not make (a WebSocket's 101 ends keep-alive on
            # its own): the client may already be speaking the new protocol
            # (h2c's preface follows its request at once), so no next request
            # can be read here, and the answer says the connection ends.
            return True
    return False


class Connection:
    """One client connection: request parsing, body source and response writer."""

    def __init__(self, sock: socket.socket, config: HttpConfig, name: str = "http") -> None:
        sock.setblocking(False)
        self.sock = sock
        self.config = config
        self.name = name
        self.h11 = self._parser()
        #: time.monotonic() past which the sweeper ends the idle wait (see Server).
        self.idle_until = 0.0
        #: Set by the sweeper when it ended the idle wait.
        self.idle_expired = False
        #: A request of its was on its way when the drain began: counted in
        #: :attr:`Server.starting` until it is read (or never comes).
        self.starting = False
        self.response_started = False
        self.linger = False
        self.keep_alive = True
        self.http11 = True
        self._chunked = False
        self._head_only = False
        #: The Content-Length the streamed response under way was framed
        #: with (None: chunked or close-delimited), and what went out of it.
        self._fixed: int | None = None
        self._sent = 0
        #: What was received while h11 waited for a request head (the head
        #: and whatever followed it), for :meth:`check_framing`.
        self._head_bytes: list[bytes] = []
        #: The strict check of the current request's chunked body, if any.
        self._chunk_check: ChunkedFraming | None = None
        #: What h11 gave after the body's last piece read (its end), not yet returned.
        self._after_body: object = None
        #: Bytes received after the last request, not yet read as the next
        #: head; and whether the client had closed after them.
        self.pending = b""
        self.peer_closed = False
        self._peer_address: str | None = None
        #: How the server's own error answers look (see :data:`ErrorBody`).
        self.error_body: ErrorBody = plain_error
        #: A header every response head carries until the request is answered
        #: (ingress' request id), in place of one of that name the worker set.
        self.tag: tuple[bytes, bytes] | None = None
        #: Where the wait for the next request head goes (see
        #: supervisor.edge.idle_waits); None: through trio's ``wait_readable``.
        self.idle_waits: IdleWaits | None = None

    @property
    def peer_address(self) -> str:
        """The client's IP address as text (IPv4-mapped IPv6 as IPv4; "" for
        a unix socket), read once per connection."""
        if self._peer_address is None:
            try:
                peer = self.sock.getpeername()
            except OSError:
                peer = None
            address = parse_address(peer[0]) if isinstance(peer, tuple) else None
            self._peer_address = "" if address is None else str(address)
        return self._peer_address

    def _parser(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_header_bytes)

    async def wait_peer_closed(self) -> None:
        """Return once the client has closed its end; never, if it sends more.

        Only meaningful while the client owes nothing (the request body is
        read, or the response is a stream it only listens to): bytes then
        are a pipelined request, which is no sign of leaving, so the wait
        goes on forever and the caller's scope ends it.
        """
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                data = self.sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                await trio.sleep_forever()
            return

    def next_cycle(self, rest: bytes | None = None) -> None:
        """A fresh parser for the next request; what is already buffered
        (``rest`` after a :class:`SimpleHead`, else h11's trailing data)
        waits in :attr:`pending` for the next head to be read from."""
        if rest is None:
            leftover, self.peer_closed = self.h11.trailing_data
            rest = bytes(leftover)
            self.h11 = self._parser()
            self._head_bytes = []
            self._chunk_check = None
            self._after_body = None
        # else h11 was never fed this cycle: it is as fresh as a new one.
        self.pending = rest
        self.response_started = False

    def feed(self, data: bytes) -> None:
        """Give received bytes to h11, letting the framing checks see them first."""
        if self._chunk_check is not None:
            self._chunk_check.feed(data)
        elif data and self.h11.their_state is h11.IDLE:
            self._head_bytes.append(data)
        self.h11.receive_data(data)

    def check_framing(self, event: h11.Request, headers: list[tuple[bytes, bytes]]) -> int | None:
        """Refuse an ambiguously framed request (:class:`FramingError`); its Content-Length.

        Called once h11 has parsed the head, before any body event is taken.
        A major version other than 1 is refused with 505 here: h11 parses any
        ``HTTP/d.d``, and answering an ``HTTP/2.0`` line as HTTP/1.1 would
        misread a client that means another protocol (RFC 9110 section 15.6.6).
        """
        if not event.http_version.startswith(b"1."):
            raise h11.RemoteProtocolError(
                f"HTTP/{event.http_version.decode()} is not supported; this server speaks "
                "HTTP/1.1 (and 1.0)", error_status_hint=505)
        chunks = self._head_bytes
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._head_bytes = []
        end = _check_head(raw, self.config.max_header_bytes)
        length, chunked = _body_framing(event, headers)
        if chunked:
            self._chunk_check = ChunkedFraming(self.config.max_header_bytes)
            self._chunk_check.feed(raw, end)
        return length

    # -- socket ------------------------------------------------------------------
    async def receive_some(self, wait_first: bool = False) -> bytes:
        """The next bytes from the client; ``b""`` once it has closed.

        ``wait_first`` for the first bytes of the next request on an idle
        keep-alive connection: the client sends it only after it has this
        response, so an immediate ``recv`` would nearly always fail with
        EAGAIN (a syscall and a Python exception per request). Bytes already
        here (a pipelined request) are in :attr:`pending`.
        """
        sock = self.sock
        idle_waits = self.idle_waits
        if wait_first:
            if idle_waits is not None:
                await idle_waits.wait(sock.fileno())
            else:
                await trio.lowlevel.wait_readable(sock)
        while True:
            try:
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                raise ClientGone(str(exc)) from None
            if len(data) == READ_SIZE and idle_waits is not None:
                idle_waits.more(sock.fileno())  # the rest came under an edge already reported
            return data

    async def _send(self, data: bytes | bytearray) -> None:
        sock = self.sock
        view = memoryview(data)
        try:
            while view:
                try:
                    sent = sock.send(view)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
                    continue
                view = view[sent:]
        except OSError as exc:
            raise ClientGone(str(exc)) from None
        finally:
            view.release()

    # -- reading -----------------------------------------------------------------
    async def next_event(self) -> object:
        conn = self.h11
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.feed(await self.receive_some())

    async def read_body_chunk(self) -> bytes:
        """Next piece of the current request's body; ``b""`` at its end.

        The chunks already received come as one piece (up to
        :data:`READ_SIZE`), and every piece is a checkpoint: a client sending
        a body of one-byte chunks as fast as it can made a reader of it loop
        without ever yielding (the socket always had data), and the whole
        supervisor froze for as long as it kept sending."""
        if self.h11.they_are_waiting_for_100_continue and not self.response_started:
            await self._send(CONTINUE)
        try:
            event = self._after_body or await self.next_event()
            self._after_body = None
            if isinstance(event, h11.Data):
                data = bytes(event.data)
                if len(data) < READ_SIZE:
                    data = self._more_body(data)
                await trio.lowlevel.checkpoint()
                return data
        except h11.RemoteProtocolError as exc:
            warn(f"{self.name}.bad_request_body", reason=str(exc))
            raise ClientGone(f"malformed request body: {exc}") from None
        if isinstance(event, h11.EndOfMessage):
            return b""
        if isinstance(event, h11.ConnectionClosed):
            raise ClientGone("the client closed the connection mid-body")
        raise ClientGone(f"unexpected {type(event).__name__} in a request body")

    def _more_body(self, first: bytes) -> bytes:
        """``first`` and the body's pieces h11 already holds, up to
        :data:`READ_SIZE`; the event that ends them waits in
        :attr:`_after_body` for the next read."""
        parts, size = [first], len(first)
        while size < READ_SIZE:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                break
            if not isinstance(event, h11.Data):
                self._after_body = event
                break
            parts.append(bytes(event.data))
            size += len(event.data)
        return b"".join(parts)

    # -- writing -----------------------------------------------------------------
    def _framing(self, extra: bytes) -> bytes:
        if self.keep_alive and self.h11.they_are_waiting_for_100_continue:
            # Answered before the body was wanted: the client may now send it
            # or not (RFC 9110 section 10.1.1), so where the next request
            # starts is unknown; the connection ends with this response.
            self.keep_alive = False
        return extra if self.keep_alive else extra + b"connection: close\r\n"

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                      head_only: bool = False, status_text: str = "") -> None:
        """A complete response in one write; ``status_text`` as in :func:`serialize_head`."""
        if _no_body(status):
            body = b""
            framing = self._framing(b"")
        else:
            length = len(body) if body or not head_only else _declared_length(headers)
            framing = self._framing(b"content-length: %d\r\n" % length)
        if self.tag is not None:
            headers = _tagged(headers, self.tag)
        out = serialize_head(status, headers, framing, status_text)
        self.response_started = True
        if body and not head_only:
            out += body
        await self._send(out)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]],
                    head_only: bool = False, status_text: str = "",
                    length: int | None = None) -> None:
        """Begin a streamed response: with ``length`` known, framed by a
        Content-Length (as workerd frames a body of known length; HTTP/1.0
        included), else chunked, or close-delimited for HTTP/1.0. A HEAD's
        answer keeps the length and sends nothing. With a length, the bytes
        are counted: :meth:`send_data` and :meth:`end` raise
        :class:`LengthMismatch` at the first sign they differ."""
        self._head_only = head_only or _no_body(status)
        self._fixed = None
        if self._head_only:
            framing = self._framing(b"" if length is None or _no_body(status)
                                    else b"content-length: %d\r\n" % length)
        elif length is not None:
            self._chunked = False
            self._fixed = length
            self._sent = 0
            framing = self._framing(b"content-length: %d\r\n" % length)
        elif self.http11:
            # Chunked even when closing: a body cut short then shows as such.
            self._chunked = True
            framing = self._framing(b"transfer-encoding: chunked\r\n")
        else:
            self._chunked = False
            self.keep_alive = False
            framing = b"connection: close\r\n"
        if self.tag is not None:
            headers = _tagged(headers, self.tag)
        out = serialize_head(status, headers, framing, status_text)
        self.response_started = True
        await self._send(out)

    async def send_data(self, data: bytes) -> None:
        if not data or self._head_only:
            return
        if self._chunked:
            await self._send(b"%x\r\n%b\r\n" % (len(data), data))
            return
        if self._fixed is not None:
            self._count(len(data))
        await self._send(data)

    def _count(self, size: int) -> None:
        """Count ``size`` more bytes against the declared length; past it,
        refuse them all (none of them are sent, as kj's fixed-length writer
        refuses a write that overruns) and end the connection."""
        sent = self._sent + size
        if sent > self._fixed:  # type: ignore[operator]
            self._mis_framed(sent, longer=True)
        self._sent = sent

    def _mis_framed(self, received: int, longer: bool) -> None:
        """End the connection after the body went wrong (lingering: bytes the
        client sent meanwhile, a next request, must not turn the close into a
        reset that could discard what it has not read yet)."""
        declared, self._fixed = self._fixed, None
        self.keep_alive = False
        self.linger = True
        raise LengthMismatch(declared or 0, received, longer)

    async def end(self) -> None:
        if self._chunked and not self._head_only:
            await self._send(b"0\r\n\r\n")
        self._chunked = False
        if self._fixed is not None:
            if self._sent != self._fixed:
                self._mis_framed(self._sent, longer=False)
            self._fixed = None


class RequestBody:
    """The current request's body as a BodySource, capped at ``limit`` bytes."""

    __slots__ = ("_conn", "_first", "_limit", "_seen", "_done", "closed", "too_large", "timed_out", "length")

    def __init__(self, conn: Connection, first: list[bytes], limit: int,
                 length: int | None = None) -> None:
        #: The request's Content-Length (None: chunked): a worker that answers
        #: with its request's body untouched answers with this length.
        self.length = length
        self._conn = conn
        self._first = first
        self._limit = limit
        self._seen = sum(len(c) for c in first)
        self._done = False
        self.closed = False
        #: The client sent more than the limit: whatever the worker made of the
        #: body's failure, the answer is a 413 (see supervisor.edge.ingress).
        self.too_large = False
        #: The client stalled mid-body past ``body_timeout_s``: a 408, likewise.
        self.timed_out = False

    async def receive(self) -> bytes:
        if self._first:
            return self._first.pop(0)
        if self._done or self.closed:
            return b""
        timeout = self._conn.config.body_timeout_s
        try:
            with trio.move_on_after(timeout) as waited:
                chunk = await self._conn.read_body_chunk()
        except ClientGone as exc:
            raise BodyError(str(exc)) from None
        if waited.cancelled_caught:
            self.closed = self.timed_out = True
            raise BodyError(f"the client sent nothing more of its request body for {timeout:g} s")
        if not chunk:
            self._done = True
            return b""
        self._seen += len(chunk)
        if self._seen > self._limit:
            self.closed = self.too_large = True
            raise BodyTooLarge(f"request body larger than {self._limit} bytes")
        return chunk

    def close(self) -> None:
        self.closed = True


Handler = Callable[[Request, Connection], Awaitable[None]]


#: ``(status, message) -> (headers, body)`` of an answer the server itself
#: makes (a malformed request, a body too large): text by default, the admin
#: API's JSON envelope on its socket.
ErrorBody = Callable[[int, str], tuple[list[tuple[bytes, bytes]], bytes]]


def plain_error(status: int, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    return [(b"content-type", b"text/plain; charset=utf-8")], (message + "\n").encode()


async def _simple(conn: Connection, status: int, message: str) -> None:
    """An error answer after which the connection closes (lingering)."""
    conn.linger = True
    conn.keep_alive = False
    headers, body = conn.error_body(status, message)
    await conn.respond(status, headers, body)


def _has_data(sock: socket.socket) -> bool:
    """Whether the client has sent something not yet read (or closed its side)."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset: reading it is how the connection learns so
    return True


async def _linger(sock: socket.socket) -> None:
    """Close after an error without a reset: stop sending, then drop what the
    client is still sending for a moment, so it reads our answer first."""
    with trio.move_on_after(1.0):
        try:
            sock.shutdown(socket.SHUT_WR)
            budget = 1 << 20
            while budget > 0:
                try:
                    data = sock.recv(READ_SIZE)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                    continue
                if not data:
                    break
                budget -= len(data)
        except OSError:
            pass


def bind_tcp(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` but not listening yet.

    ``serve`` binds at start-up, so an address in use fails at once with an
    error that says so, before any zygote is forked; it listens only once
    it can serve, so until then clients find the port closed, as before.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class Server:
    """Accepts connections and runs ``handler`` for every request on them."""

    def __init__(self, handler: Handler, config: HttpConfig, name: str = "http",
                 error_body: ErrorBody = plain_error) -> None:
        self.handler = handler
        self.config = config
        self.name = name
        self.error_body = error_body
        self.connections = 0
        self.requests = 0
        self.in_flight = 0
        #: Set on shutdown: finish the current request, then close.
        self.draining = False
        #: Connections that had a request on its way when the drain began
        #: (:meth:`begin_drain`) and have not yet read its head (and so are
        #: not yet :attr:`in_flight`): the drain waits for them too.
        self.starting = 0
        self._connections: trio.Nursery | None = None
        #: Connections waiting for the first byte of a request head.
        self._idle: set[Connection] = set()
        self._idle_waits = IdleWaits()

    async def serve(self, listener: socket.socket,
                    task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """The accept loop; connections live in its nursery."""
        listener.setblocking(False)
        tcp = listener.family in (socket.AF_INET, socket.AF_INET6)
        async with trio.open_nursery() as nursery:
            self._connections = nursery
            nursery.start_soon(self._sweep_idle)
            await nursery.start(self._idle_waits.run)
            task_status.started()
            while True:
                try:
                    sock, _addr = listener.accept()
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(listener)
                    continue
                except OSError as exc:  # EMFILE and friends: back off, keep serving
                    warn(f"{self.name}.accept_failed", reason=str(exc))
                    await trio.sleep(0.1)
                    continue
                if tcp:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Starting until its first request is read (or it closes): a stop
                # that comes meanwhile waits for that request, as for one still in
                # the backlog (a connection just accepted was cut without an answer).
                self.starting += 1
                nursery.start_soon(self.serve_socket, sock, True)

    def begin_drain(self, listener: socket.socket) -> None:
        """Shutdown: every request a client has sent gets its answer, and no
        connection is cut while its request is on its way.

        The connections the kernel has already accepted (they wait in the
        listen backlog, and their clients may have sent a request) are taken
        and served before the listener closes, which would reset them. An
        idle keep-alive connection with nothing to read is closed now; one
        whose next request has arrived but not yet been read is served.
        Responses from here on say ``connection: close``; the caller waits
        while :attr:`in_flight` or :attr:`starting`."""
        self.draining = True
        nursery = self._connections
        tcp = listener.family in (socket.AF_INET, socket.AF_INET6)
        while nursery is not None:
            try:
                sock, _addr = listener.accept()
            except OSError:  # BlockingIOError: the backlog is empty
                break
            if tcp:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.starting += 1
            nursery.start_soon(self.serve_socket, sock, True)
        listener.close()
        for conn in list(self._idle):
            self._idle.discard(conn)
            if _has_data(conn.sock):
                if not conn.starting:  # (a fresh connection is starting already)
                    conn.starting = True
                    self.starting += 1
            else:
                conn.idle_expired = True
                if conn.idle_waits is not None:
                    conn.idle_waits.notify_closing(conn.sock.fileno())
                else:
                    trio.lowlevel.notify_closing(conn.sock)

    def _started(self, conn: Connection) -> None:
        """``conn``'s request, waited for by the drain, was read (or never came)."""
        if conn.starting:
            conn.starting = False
            self.starting -= 1

    async def serve_socket(self, sock: socket.socket, starting: bool = False) -> None:
        """One connection; never raises, whatever the client does.
        ``starting``: its first request not yet read (see :meth:`serve`, :meth:`begin_drain`)."""
        conn = Connection(sock, self.config, self.name)
        conn.starting = starting
        conn.error_body = self.error_body
        fd = sock.fileno()
        if self._idle_waits.add(fd):
            conn.idle_waits = self._idle_waits
        try:
            if self.connections >= self.config.max_connections:
                await _simple(conn, 503, "Server busy: too many connections")
                await _linger(sock)
                return
            self.connections += 1
            try:
                await self._serve(conn)
                if conn.linger:
                    await _linger(sock)
            finally:
                self.connections -= 1
        except ClientGone:
            pass
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            error(f"{self.name}.connection_error", exc_info=exc)
        finally:
            self._started(conn)
            if conn.idle_waits is not None:
                conn.idle_waits.remove(fd)
            sock.close()

    async def _serve(self, conn: Connection) -> None:
        config = self.config
        while True:
            h = conn.h11
            # 1. The request head: idle timeout before its first byte, header timeout after.
            length: int | None = None
            headers: list[tuple[bytes, bytes]] = []
            try:
                event = await self._read_head(conn)
                if type(event) is SimpleHead:
                    headers = event.headers
                elif isinstance(event, h11.Request):
                    headers = _header_list(event)
                    length = conn.check_framing(event, headers)
            except h11.RemoteProtocolError as exc:
                self._started(conn)
                await self._bad_request(conn, exc)
                return
            if event is None or isinstance(event, h11.ConnectionClosed):
                return
            assert isinstance(event, (h11.Request, SimpleHead))
            self.requests += 1
            conn.keep_alive = not (self.draining or _wants_close(event, headers))
            conn.http11 = event.http_version == b"1.1"

            # 2. The body: declared too large -> 413 straight away.
            if length is not None and length > config.max_body_bytes:
                warn(f"{self.name}.body_too_large", declared=length)
                await _simple(conn, 413, f"Request body larger than {config.max_body_bytes} bytes")
                return
            first: list[bytes] = []
            size = 0
            complete = type(event) is SimpleHead  # it has no body
            try:
                while not complete:  # take what is already buffered, without I/O
                    nxt = h.next_event()
                    if isinstance(nxt, h11.Data):
                        first.append(bytes(nxt.data))
                        size += len(nxt.data)
                        if size > MAX_CHUNK:
                            break
                        continue
                    complete = isinstance(nxt, h11.EndOfMessage)
                    break
            except h11.RemoteProtocolError as exc:
                warn(f"{self.name}.bad_request_body", reason=str(exc))
                await _simple(conn, 400, f"Bad request body: {exc}")
                return
            if size > config.max_body_bytes:
                warn(f"{self.name}.body_too_large", streamed=True)
                await _simple(conn, 413, f"Request body larger than {config.max_body_bytes} bytes")
                return
            body: RequestBody | bytes
            body = b"".join(first) if complete else RequestBody(conn, first, config.max_body_bytes, length)
            request = Request(event, body, headers)

            # 3. The handler.
            self.in_flight += 1
            if conn.starting:
                self._started(conn)
            try:
                await self.handler(request, conn)
            except BodyTooLarge as exc:
                if not conn.response_started:
                    await _simple(conn, 413, str(exc))
                return
            except (ClientGone, BodyError):
                return
            except Exception as exc:  # noqa: BLE001
                error(f"{self.name}.handler_error", exc_info=exc,
                      target=event.target.decode("latin-1")[:200])
                if not conn.response_started:
                    await _simple(conn, 500, "Internal server error")
                return
            finally:
                self.in_flight -= 1

            # 4. Keep-alive: finish the request body, then the next cycle.
            if not conn.keep_alive or self.draining:
                if type(event) is not SimpleHead and h.their_state is h11.SEND_BODY:
                    conn.linger = True  # the client still sends: no reset before it reads the answer
                return
            if type(event) is SimpleHead:
                conn.next_cycle(event.rest)
                continue
            if h.their_state is h11.SEND_BODY and not await self._drain(conn, body):
                return
            if h.their_state is not h11.DONE:
                return
            conn.next_cycle()

    async def _bad_request(self, conn: Connection, exc: h11.RemoteProtocolError) -> None:
        """Answer a request h11 or the framing checks refused, log it, and close."""
        status = exc.error_status_hint
        reason = str(exc)
        if status == 501:
            # h11's answer to a Transfer-Encoding other than one "chunked". A
            # coding we do not apply leaves the body's end unknown: bad framing.
            status = 400
            reason = (f"Transfer-Encoding must be exactly one 'chunked', with no other coding and "
                      f"no repeated header (RFC 9112 section 6.1): {reason}")
        elif reason in ("bad Content-Length", "conflicting Content-Length headers"):
            reason = (f"{reason}: Content-Length must be one unsigned decimal number, and repeated "
                      "values must agree (RFC 9112 section 6.3)")
        warn(f"{self.name}.bad_request", reason=reason, status=status)
        await _simple(conn, status, "Request header fields too large" if status == 431
                      else reason if status == 505 else f"Bad request: {reason}")

    async def _sweep_idle(self) -> None:
        """End the idle waits that ran past ``idle_timeout_s``: wake the
        connection's task (``notify_closing`` makes its wait raise), which
        then closes it. Checking a float per connection a few
        times a second is cheaper than a cancel scope per request."""
        period = min(0.5, self.config.idle_timeout_s / 4)
        while True:
            await trio.sleep(period)
            now = time.monotonic()
            for conn in [c for c in self._idle if now >= c.idle_until]:
                conn.idle_expired = True
                self._idle.discard(conn)
                if conn.idle_waits is not None:
                    conn.idle_waits.notify_closing(conn.sock.fileno())
                else:
                    trio.lowlevel.notify_closing(conn.sock)

    async def _read_head(self, conn: Connection) -> object:
        """The next request head: a :class:`SimpleHead` when it is one, else
        h11's event (None once the connection is to close quietly)."""
        h = conn.h11
        data = conn.pending
        if data:  # what came of the next head (pipelined)
            conn.pending = b""
        elif conn.peer_closed:
            h.receive_data(b"")
            return h.next_event()
        else:
            if self.draining and not _has_data(conn.sock):
                return None  # shutting down, and no request came: close quietly
            # Nothing buffered: wait for the first byte under the idle timeout
            # (kept by _sweep_idle).
            conn.idle_until = time.monotonic() + self.config.idle_timeout_s
            conn.idle_expired = False
            idle = self._idle
            idle.add(conn)
            try:
                data = await conn.receive_some(wait_first=True)
            except trio.ClosedResourceError:
                if not conn.idle_expired:
                    raise
                return None  # idle connection: close quietly
            finally:
                idle.discard(conn)
        head = read_simple_head(data, self.config.max_header_bytes)
        if head is not None:
            return head
        conn.feed(data)
        if conn.peer_closed:
            h.receive_data(b"")
        event = h.next_event()
        if event is not h11.NEED_DATA:
            return event
        # A head has started (a partial one may have come pipelined behind the
        # last request): all of it must arrive within the header timeout.
        with trio.move_on_after(self.config.header_timeout_s):
            return await conn.next_event()
        warn(f"{self.name}.header_timeout")
        await _simple(conn, 408, "Request header timeout")
        return None

    async def _drain(self, conn: Connection, body: RequestBody | bytes) -> bool:
        """Read and drop what the handler left of the body, so the connection
        goes on to the next request (bounded: past the bound, or after a body
        that failed, it closes, lingering).

        A body the worker stopped reading (it answered without it) is
        ``closed`` for the worker only: the client's bytes are still to come,
        and closing on them was a reset that lost a pooled client its next
        request."""
        if isinstance(body, RequestBody) and not (body.too_large or body.timed_out):
            budget = DRAIN_BYTES
            with trio.move_on_after(DRAIN_S):
                while budget > 0:
                    chunk = await conn.read_body_chunk()
                    if not chunk:
                        return True
                    budget -= max(len(chunk), DRAIN_PIECE_COST)  # tiny chunks cost their parsing
        conn.linger = True
        return False

