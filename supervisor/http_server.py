"""HTTP/1.1 server connections on trio + h11, for ingress and the admin socket.

One task per connection (never per message). h11 owns the protocol state;
this module adds what a production edge needs around it:

* limits: header block size (431), body size (413, by Content-Length at once
  or while a chunked body streams), connection count (503);
* timeouts: a request head must arrive within ``header_timeout_s`` once
  started, an idle keep-alive connection is closed after ``idle_timeout_s``;
* malformed requests get a 400 with the parser's reason and a log line;
* a small request body that is already in the buffer is handed over whole
  (it travels inline to the sandbox); larger ones stream with backpressure;
* any exception from the handler is logged and answered with a 500 (or the
  connection is closed if the response had started): it never reaches the
  listener, so one bad request cannot stop the server.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import h11
import trio

from protocol.messages import MAX_CHUNK

from .bodies import BodyError
from .config import HttpConfig
from .log import error, warn

READ_SIZE = 64 * 1024

#: Hop-by-hop and framing headers a handler may not set: the server frames
#: responses itself (Content-Length or chunked) and manages the connection.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"upgrade", b"te",
    b"trailer", b"proxy-connection",
})


class BodyTooLarge(BodyError):
    """The client sent more body than the server accepts."""


class ClientGone(Exception):
    """The client closed the connection or broke the protocol mid-request."""


class Request:
    __slots__ = ("method", "target", "headers", "http_version", "body", "host")

    def __init__(self, event: h11.Request, body: "RequestBody | bytes") -> None:
        self.method: bytes = event.method
        self.target: bytes = event.target
        self.headers: list[tuple[bytes, bytes]] = list(event.headers)
        self.http_version: bytes = event.http_version
        self.body = body
        self.host = b""
        for name, value in self.headers:
            if name == b"host":
                self.host = value
                break


class Connection:
    """One client connection; also the request body source and the writer."""

    def __init__(self, stream: trio.abc.Stream, config: HttpConfig, peer: str = "") -> None:
        self.stream = stream
        self.config = config
        self.peer = peer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)
        self.response_started = False
        self.linger = False

    # -- reading ---------------------------------------------------------------
    async def _next_event(self) -> object:
        conn = self.h11
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ClientGone(str(exc)) from None
            conn.receive_data(data)

    async def read_body_chunk(self) -> bytes:
        """Next piece of the current request's body; ``b""`` at its end."""
        try:
            event = await self._next_event()
        except h11.RemoteProtocolError as exc:
            raise ClientGone(f"malformed request body: {exc}") from None
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            return b""
        if isinstance(event, h11.ConnectionClosed):
            raise ClientGone("the client closed the connection mid-body")
        raise ClientGone(f"unexpected {type(event).__name__} in a request body")

    # -- writing -----------------------------------------------------------------
    async def _send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientGone(str(exc)) from None

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                      head_only: bool = False) -> None:
        """A complete response in one write."""
        self.response_started = True
        clean = [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP]
        clean.append((b"content-length", str(len(body)).encode()))
        conn = self.h11
        data = conn.send(h11.Response(status_code=status, headers=clean))
        if body and not head_only:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await self._send(data)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Begin a streamed response (chunked, or close-delimited for HTTP/1.0)."""
        self.response_started = True
        clean = [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP]
        await self._send(self.h11.send(h11.Response(status_code=status, headers=clean)))

    async def send_data(self, data: bytes) -> None:
        if data:
            await self._send(self.h11.send(h11.Data(data=data)))

    async def end(self) -> None:
        await self._send(self.h11.send(h11.EndOfMessage()))


class RequestBody:
    """The current request's body as a BodySource, capped at ``limit`` bytes."""

    __slots__ = ("_conn", "_first", "_limit", "_seen", "_done", "closed")

    def __init__(self, conn: Connection, first: list[bytes], limit: int) -> None:
        self._conn = conn
        self._first = first
        self._limit = limit
        self._seen = sum(len(c) for c in first)
        self._done = False
        self.closed = False

    async def receive(self) -> bytes:
        if self._first:
            return self._first.pop(0)
        if self._done or self.closed:
            return b""
        try:
            chunk = await self._conn.read_body_chunk()
        except ClientGone as exc:
            raise BodyError(str(exc)) from None
        if not chunk:
            self._done = True
            return b""
        self._seen += len(chunk)
        if self._seen > self._limit:
            self.closed = True
            raise BodyTooLarge(f"request body larger than {self._limit} bytes")
        return chunk

    @property
    def complete(self) -> bool:
        return self._done

    def close(self) -> None:
        self.closed = True


Handler = Callable[[Request, Connection], Awaitable[None]]


async def _simple(conn: Connection, status: int, message: str) -> None:
    """An error answer after which the connection closes (lingering)."""
    body = (message + "\n").encode()
    conn.linger = True
    await conn.respond(status, [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"connection", b"close")], body)


async def _linger(stream: trio.abc.Stream) -> None:
    """Close after an error without a reset: stop sending, then drop what the
    client is still sending for a moment, so it reads our answer first."""
    with trio.move_on_after(1.0):
        try:
            await stream.send_eof()  # type: ignore[attr-defined]
            budget = 1 << 20
            while budget > 0 and (data := await stream.receive_some(READ_SIZE)):
                budget -= len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, AttributeError):
            pass


class Server:
    """Accepts connections and runs ``handler`` for every request on them."""

    def __init__(self, handler: Handler, config: HttpConfig, name: str = "http") -> None:
        self.handler = handler
        self.config = config
        self.name = name
        self.connections = 0
        self.requests = 0

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Listener callback: never raises, whatever the client does."""
        if self.connections >= self.config.max_connections:
            conn = Connection(stream, self.config)
            try:
                await _simple(conn, 503, "Server busy: too many connections")
            except Exception:  # noqa: BLE001
                pass
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        conn = Connection(stream, self.config)
        try:
            await self._serve(conn)
            if conn.linger:
                await _linger(stream)
        except ClientGone:
            pass
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            error(f"{self.name}.connection_error", exc_info=exc)
        finally:
            self.connections -= 1
            await trio.aclose_forcefully(stream)

    async def _serve(self, conn: Connection) -> None:
        config = self.config
        h = conn.h11
        while True:
            # 1. The request head: idle timeout before its first byte, header timeout after.
            try:
                event = await self._read_head(conn)
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if exc.error_status_hint != 400 else 400
                warn(f"{self.name}.bad_request", reason=str(exc), status=status)
                if h.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    reason = "Request header fields too large" if status == 431 else f"Bad request: {exc}"
                    try:
                        await _simple(conn, status, reason)
                    except Exception:  # noqa: BLE001
                        pass
                return
            if event is None or isinstance(event, h11.ConnectionClosed):
                return
            assert isinstance(event, h11.Request)
            self.requests += 1

            # 2. The body: declared too large -> 413 straight away.
            length = _content_length(event.headers)
            if length is not None and length > config.max_body_bytes:
                warn(f"{self.name}.body_too_large", declared=length)
                await _simple(conn, 413, f"Request body larger than {config.max_body_bytes} bytes")
                return
            first: list[bytes] = []
            body: RequestBody | bytes = b""
            complete = False
            try:
                while True:  # take what is already buffered, without I/O
                    nxt = h.next_event()
                    if isinstance(nxt, h11.Data):
                        first.append(bytes(nxt.data))
                        if sum(map(len, first)) > MAX_CHUNK:
                            break
                        continue
                    complete = isinstance(nxt, h11.EndOfMessage)
                    break
            except h11.RemoteProtocolError as exc:
                await _simple(conn, 400, f"Bad request body: {exc}")
                return
            if sum(map(len, first)) > config.max_body_bytes:
                warn(f"{self.name}.body_too_large", streamed=True)
                await _simple(conn, 413, f"Request body larger than {config.max_body_bytes} bytes")
                return
            if complete:
                body = b"".join(first)
            else:
                body = RequestBody(conn, first, config.max_body_bytes)
            request = Request(event, body)

            # 3. The handler.
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

            # 4. Keep-alive: finish the request body, then the next cycle.
            if h.our_state is h11.MUST_CLOSE or h.their_state is h11.MUST_CLOSE:
                return
            if h.their_state is h11.SEND_BODY:
                if not await self._drain(conn, body):
                    return
            if h.our_state is not h11.DONE or h.their_state is not h11.DONE:
                return
            h.start_next_cycle()
            conn.response_started = False

    async def _read_head(self, conn: Connection) -> object:
        h = conn.h11
        event = h.next_event()
        if event is not h11.NEED_DATA:
            return event
        # Nothing buffered: wait for the first byte under the idle timeout.
        with trio.move_on_after(self.config.idle_timeout_s):
            try:
                data = await conn.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            h.receive_data(data)
            event = h.next_event()
            if event is not h11.NEED_DATA:
                return event
        if h.their_state is h11.IDLE and not h.trailing_data[0]:
            return None  # idle connection: close quietly
        with trio.move_on_after(self.config.header_timeout_s):
            return await conn._next_event()
        warn(f"{self.name}.header_timeout")
        try:
            await _simple(conn, 408, "Request header timeout")
        except Exception:  # noqa: BLE001
            pass
        return None

    async def _drain(self, conn: Connection, body: RequestBody | bytes) -> bool:
        """Read and drop what the handler left of the body (bounded)."""
        if not isinstance(body, RequestBody) or body.closed:
            return False
        budget = 1024 * 1024
        with trio.move_on_after(5):
            while budget > 0:
                chunk = await conn.read_body_chunk()
                if not chunk:
                    return True
                budget -= len(chunk)
        return False


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
