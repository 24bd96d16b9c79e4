"""WebSockets a worker answers with: the handshake, then a relay.

A worker that answers ``Response(status=101, web_socket=client)`` keeps the
server end of its socket in its child (sandbox.websockets); the response's
body is a :class:`SocketSource` naming it, which may pass through callers
(a worker returning its Durable Object's response) as any body does. When
it reaches the client's connection, :class:`Session` completes the
handshake (RFC 6455: ``Sec-WebSocket-Accept``) and relays:

* frames from the client are parsed by wsproto (the sans-IO WebSocket
  library of h11's authors; pings answered, fragments joined, messages over
  :data:`MAX_MESSAGE` refused with 1009) and each message, and the close,
  becomes an invocation of its own (:class:`Deliverer`): a
  ``WebSocketEvent`` in the socket's child, or for a socket a Durable Object
  accepted to hibernate, its ``#webSocket`` call through the object's gate;
* what the worker sends (``WsSend``, ``WsClose`` frames, which may come
  before the client is even connected: the child's :class:`SocketState`
  holds them) is framed and written in order by one writer task.

A client that disconnects is a close with 1006; a hibernatable socket whose
connection fails otherwise (a message over the limit, a protocol error) is an
``error`` for the object's ``webSocketError``, with no close after it, as
workerd's hibernation manager has it; a child that dies closes
its clients with 1011; a worker that never reads its outbox fast enough is
cut at :data:`MAX_OUTBOX` bytes queued (1011); the sockets of one child hold
at most :data:`CHILD_BUFFER` bytes together and those of the host
:data:`HOST_BUFFER` (a tenant that floods slow readers can take neither the
supervisor's memory nor the other tenants' share of it). Nothing here limits how long
a connection lives: each message's invocation has the limits.

A socket a worker opens to a server (``new WebSocket(url)``) is the same
relay with the supervisor as the client (:class:`ServerSession`): the
handshake goes through the HTTP client, so the egress policy applies.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
import trio
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from protocol.messages import DurableObjectEvent, WebSocketEvent
from supervisor.calls.fetch_errors import FetchError
from supervisor.edge.http_server import ClientGone
from supervisor.log import log, warn
from supervisor.objects.host import ObjectKey

if TYPE_CHECKING:
    from supervisor.edge.http_server import Connection

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Largest message either side may send (Cloudflare's limit per message).
MAX_MESSAGE = 1024 * 1024
#: Frames handled in a row before the reader lets the loop's other tasks run.
EVENTS_PER_TURN = 256
#: Bytes a socket may have queued toward its client (before it connects, or
#: while the client reads slowly) before it is closed.
MAX_OUTBOX = 8 * 1024 * 1024
#: Bytes queued toward clients by every socket of this supervisor together,
#: and by the sockets of one child.
HOST_BUFFER = 256 * 1024 * 1024
CHILD_BUFFER = 32 * 1024 * 1024


#: The reason of a close with 1006, as workerd words it (web-socket.c++): the
#: peer went away without a close frame.
GONE_REASON = "WebSocket disconnected without sending Close frame."


class Buffered:
    """Bytes queued toward WebSocket clients: the host's total, and one
    child's (so that one tenant's flood does not use up what others need)."""

    host_total = 0

    def __init__(self, limit: int = CHILD_BUFFER) -> None:
        self.limit = limit
        self.total = 0

    def take(self, n: int) -> bool:
        if self.total + n > self.limit or Buffered.host_total + n > HOST_BUFFER:
            return False
        self.total += n
        Buffered.host_total += n
        return True

    def give(self, n: int) -> None:
        self.total -= n
        Buffered.host_total -= n


#: Sockets one child may have open (a chat room's Durable Object holds many).
MAX_SOCKETS = 10_000
#: Of those, the sockets it opened to servers (``new WebSocket(url)``): each
#: holds one of the supervisor's file descriptors for as long as it stays
#: open, past the request that opened it and its subrequest limit.
MAX_SERVER_SOCKETS = 256
#: How long a close waits for the other side's close frame.
CLOSE_TIMEOUT_S = 5.0
#: Response headers of the worker's 101 that are the handshake's own.
HANDSHAKE_HEADERS = frozenset({b"upgrade", b"connection", b"sec-websocket-accept",
                               b"sec-websocket-extensions", b"content-length", b"transfer-encoding"})


class SocketSource:
    """A 101 response's WebSocket: the server end ``ws`` in ``child``.

    ``object`` is ``(namespace, script, class_name, object_id)`` when a
    Durable Object accepted it to hibernate. ``close()`` is what any body
    gets when nobody will read it: the socket is closed as if its client
    left."""

    def __init__(self, child: Any, ws: int, hibernate: bool, url: str,
                 object_: tuple[str, str, str, str] | None) -> None:
        self.child = child
        self.ws = ws
        self.hibernate = hibernate
        self.url = url
        self.object = object_
        self.taken = False

    def close(self) -> None:
        if not self.taken:
            self.taken = True
            state = self.child.sockets.get(self.ws)
            if state is not None:
                state.abandon()
            self.child.forget_socket(self.ws)
            deliverer = getattr(self.child.owner, "websockets", None)
            if deliverer is not None:  # its worker hears that it is closed (1006: no client came)
                self.child.spawn(deliverer.deliver, self, "close", b"", False, 1006, "", False)


class SocketState:
    """The supervisor's side of one socket of a child: what the worker sent
    before its client connected, and the session once it did."""

    __slots__ = ("buffered", "source", "session", "pending", "pending_bytes", "closed_by_worker",
                 "abandoned")

    def __init__(self, buffered: Buffered) -> None:
        #: Its child's account of bytes queued toward clients.
        self.buffered = buffered
        self.source: SocketSource | None = None
        self.session: Session | None = None
        self.pending: list[tuple[bytes, bool, bool]] = []
        self.pending_bytes = 0
        self.closed_by_worker: tuple[int, str] | None = None
        self.abandoned = False

    def send(self, data: bytes, text: bool, fin: bool = True) -> None:
        if self.session is not None:
            self.session.from_worker(data, text, fin)
        elif not self.abandoned and self.closed_by_worker is None:
            if self.pending_bytes + len(data) > MAX_OUTBOX or not self.buffered.take(len(data)):
                self._drop_pending()
                self.closed_by_worker = (1011, "too much data queued before the client connected")
                return
            self.pending_bytes += len(data)
            self.pending.append((data, text, fin))

    def take_pending(self) -> list[tuple[bytes, bool, bool]]:
        """What waited for the client (it now goes through the session's queue)."""
        pending = self.pending
        self._drop_pending()
        return pending

    def _drop_pending(self) -> None:
        self.buffered.give(self.pending_bytes)
        self.pending, self.pending_bytes = [], 0

    def close(self, code: int, reason: str) -> None:
        if self.session is not None:
            self.session.close_from_worker(code, reason)
        elif self.closed_by_worker is None:
            self.closed_by_worker = (code, reason)

    def abandon(self) -> None:
        """No client will connect (the response went nowhere, or its child died)."""
        self.abandoned = True
        self._drop_pending()


class Deliverer:
    """Hands a client's messages and close to the worker, each as an invocation."""

    def __init__(self, pool: Any, host: Any, limits: Any, on_trace: Any) -> None:
        self.pool = pool
        self.host = host
        self.limits = limits
        self.on_trace = on_trace

    async def deliver(self, source: SocketSource, kind: str, data: bytes = b"", text: bool = False,
                      code: int = 0, reason: str = "", clean: bool = False,
                      window: MessageWindow | None = None) -> bool:
        """False when the socket's worker is gone (its child ended or was replaced).

        With a ``window``, returns once the event is with the worker (in
        order: a Durable Object's past its gate's queue), not once its
        handler is done, as workerd dispatches a message event without
        waiting for its listener's promise."""
        child = source.child
        if not _takes_events(child):
            return False
        if source.object is not None:  # hibernatable, or one the object opened to a server
            key = ObjectKey(*source.object)
            args = msgspec.msgpack.encode([source.ws, kind, data, text, code, reason, clean])
            event = DurableObjectEvent(key.class_name, key.object_id, "#webSocket", socket_event=kind,
                                       socket_code=code, socket_clean=clean)

            async def invoke(delivered: trio.Event | None = None) -> None:
                try:
                    await self.host.invoke(key, event, None, args=args, trace=True, delivered=delivered)
                except Exception as exc:  # noqa: BLE001 - a handler's failure is in its trace; the socket stays
                    log("websocket.handler_failed", script=key.script, reason=str(exc)[:300])
                finally:
                    if delivered is not None:
                        delivered.set()

            if window is None:
                await invoke()
            else:
                delivered = trio.Event()
                await window.reserve()
                window.spawn(invoke, delivered)
                await delivered.wait()
            return True
        if window is not None:
            await window.reserve()  # before the invocation starts: at most so many under way
            if not _takes_events(child):
                window.release()  # it went while this waited for a slot
                return False
        record = child.record
        inv = self.pool.start(child, record, b"GET", source.url, [], None, self.limits.defaults_for(record),
                              event=WebSocketEvent(source.ws, kind, data, text, code, reason, clean))
        inv.on_done = self.on_trace
        if window is None:
            await inv.wait_head()
        else:
            window.spawn(inv.wait_head)
        return True


def _takes_events(child: Any) -> bool:
    """Whether the socket's child still takes its events (a condemned child,
    ``kill_reason``, has left the warm set: it takes no invocation)."""
    return child.alive and not child.retired and child.record is not None and child.kill_reason is None


#: A socket's messages under way at once: the next one goes to the worker
#: without waiting for the last one's listener (one that awaited held back
#: the socket's later messages, its pings and its close, and one waiting for
#: the next message waited for ever), up to this many; past it, the reader
#: waits, and the client with it.
MESSAGES_IN_FLIGHT = 16


class MessageWindow:
    """The deliveries of one socket's messages under way: each a task of its
    session's own nursery, :data:`MESSAGES_IN_FLIGHT` at most."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._slots = trio.Semaphore(MESSAGES_IN_FLIGHT)

    async def reserve(self) -> None:
        """A slot for the next delivery (waits while all are taken)."""
        await self._slots.acquire()

    def release(self) -> None:
        """Give back a slot :meth:`reserve` took and nothing used."""
        self._slots.release()

    def spawn(self, work: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Run ``work`` in the slot :meth:`reserve` took; the slot is freed when it ends."""
        self._nursery.start_soon(self._run, work, *args)

    async def _run(self, work: Callable[..., Awaitable[object]], *args: Any) -> None:
        try:
            await work(*args)
        finally:
            self._slots.release()


def accept_key(key: bytes) -> bytes:
    """RFC 6455's ``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def close_frame(code: int, reason: str) -> CloseConnection:
    """The close a worker asked for. 1005 is a frame with no status code (a
    ``close()`` without one; the client reads 1005): wsproto sends that only
    for its own enum member, and turns a plain 1005 into 1000."""
    if code == CloseReason.NO_STATUS_RCVD:
        return CloseConnection(CloseReason.NO_STATUS_RCVD)
    return CloseConnection(code, reason)


def handshake_problem(method: bytes, headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why this request cannot become a WebSocket (None: it can)."""
    values = {name: value for name, value in headers}
    if b"websocket" not in values.get(b"upgrade", b"").lower():
        return ("the worker answered with a WebSocket (status 101) a request that did not ask for "
                "one (no 'Upgrade: websocket' header)")
    if method != b"GET":
        return "a WebSocket handshake must be a GET request"
    if b"upgrade" not in values.get(b"connection", b"").lower():
        return "a WebSocket handshake needs 'Connection: Upgrade'"
    if values.get(b"sec-websocket-version", b"").strip() != b"13":
        return "only WebSocket version 13 is supported (Sec-WebSocket-Version)"
    key = values.get(b"sec-websocket-key", b"").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        return "the Sec-WebSocket-Key header is missing or not 16 bytes in base64"
    return None


class Session:
    """One upgraded client connection, relayed to its worker's socket."""

    def __init__(self, conn: Connection, source: SocketSource, deliverer: Deliverer) -> None:
        self.conn = conn
        self.source = source
        self.deliverer = deliverer
        self.ws = WsConnection(ConnectionType.SERVER)
        send, self._outbox = trio.open_memory_channel[bytes](float("inf"))
        self._send = send
        self._queued = 0
        self._closing = False
        #: Why the connection failed (a message over the limit, a protocol
        #: error), in workerd's words; None while it has not.
        self._error: str | None = None
        self._drained: trio.Event | None = None
        self._cancel: trio.CancelScope | None = None
        #: The deliveries of this socket's messages under way (set while it runs).
        self._window: MessageWindow | None = None
        self.state = source.child.socket_state(source.ws)

    # -- from the worker (its child's reader: synchronous) ----------------------------
    def from_worker(self, data: bytes, text: bool, fin: bool = True) -> None:
        """A message, or a part of one (``fin`` false), from the worker; none
        once the connection is no longer open (the peer's close or reset came
        in and the worker had not heard of it yet: wsproto refused the send,
        and its error killed the child as a protocol violation)."""
        if self._closing or self.ws.state is not ConnectionState.OPEN:
            return
        self._emit(self.ws.send(Message(data.decode("utf-8", "replace") if text else data,
                                        message_finished=fin)))

    def close_from_worker(self, code: int, reason: str) -> None:
        self._start_close(code, reason)

    def _start_close(self, code: int, reason: str) -> None:
        if self._closing or self.ws.state is not ConnectionState.OPEN:
            return
        self._closing = True
        self._emit(self.ws.send(close_frame(code, reason)))

    def _emit(self, data: bytes) -> None:
        if self._queued + len(data) > MAX_OUTBOX or not self.state.buffered.take(len(data)):
            if not self._closing:
                warn("websocket.outbox_full", script=self._script(), queued=self._queued,
                     child_queued=self.state.buffered.total, host_queued=Buffered.host_total)
                self._closing = True
                if self._cancel is not None:
                    self._cancel.cancel()
            return
        self._queued += len(data)
        self._send.send_nowait(data)

    def _script(self) -> str:
        record = self.source.child.record
        return f"{record.namespace}/{record.name}" if record is not None else "?"

    # -- the connection ----------------------------------------------------------------
    async def run(self, request_headers: list[tuple[bytes, bytes]],
                  response_headers: list[tuple[bytes, bytes]]) -> None:
        """Answer the handshake, relay until either side closes, tell the
        worker; its messages' deliveries still under way are waited for."""
        async with trio.open_nursery() as deliveries:
            self._window = MessageWindow(deliveries)
            await self._relay(request_headers, response_headers)

    async def _relay(self, request_headers: list[tuple[bytes, bytes]],
                     response_headers: list[tuple[bytes, bytes]]) -> None:
        key = dict(request_headers)[b"sec-websocket-key"].strip()
        head = [b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n",
                b"sec-websocket-accept: " + accept_key(key) + b"\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in response_headers
                 if name.lower() not in HANDSHAKE_HEADERS]
        state = self.state
        close = (1006, GONE_REASON, False)
        try:
            self.conn.response_started = True
            self.conn.keep_alive = False  # the connection is the socket's from here on
            await self.conn._send(b"".join(head) + b"\r\n")
            leftover, _ = self.conn.h11.trailing_data
            state.session = self
            for data, text, fin in state.take_pending():
                self.from_worker(data, text, fin)
            if state.closed_by_worker is not None:
                self._start_close(*state.closed_by_worker)
            log("websocket.open", script=self._script(), ws=self.source.ws, hibernate=self.source.hibernate)
            with trio.CancelScope() as self._cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    close = await self._reader(bytes(leftover))
                    nursery.cancel_scope.cancel()
        finally:
            state.session = None
            state.buffered.give(self._queued)  # what the writer never sent
            self._queued = 0
            self.source.child.forget_socket(self.source.ws)
            # The worker hears of the close in any case: its socket is closed now. A
            # hibernatable socket that failed hears of the error instead, as
            # workerd's hibernation manager tells it (webSocketError, no close).
            failed = self._error is not None and self.source.hibernate
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                if failed:
                    await self.deliverer.deliver(self.source, "error", reason=self._error or "")
                else:
                    await self.deliverer.deliver(self.source, "close", code=close[0], reason=close[1],
                                                 clean=close[2])
            log("websocket.closed", script=self._script(), ws=self.source.ws, code=close[0])

    async def _writer(self) -> None:
        try:
            await self._write()
        except ClientGone:
            # The client left (a reset) while frames were going out: the relay
            # ends as when the reader hears it (1006), rather than the error
            # leaving the nursery as an internal one.
            if self._cancel is not None:
                self._cancel.cancel()

    async def _write(self) -> None:
        async for data in self._outbox:
            await self.conn._send(data)
            self._queued -= len(data)
            self.state.buffered.give(len(data))
            if not self._queued and self._drained is not None:
                self._drained.set()
            if self._closing and self.ws.state is not ConnectionState.OPEN and not self._queued:
                # Our close went out: the client has this long to answer it.
                await trio.sleep(CLOSE_TIMEOUT_S)
                if self._cancel is not None:
                    self._cancel.cancel()
                return

    async def _reader(self, leftover: bytes) -> tuple[int, str, bool]:
        """Client frames to the worker, until a close; the close's (code, reason, clean)."""
        # A message's fragments so far, in one buffer: a list of them grew by
        # an entry per frame, and a client's endless empty fragments (6 bytes
        # each on the wire) grew it for ever under the byte limit.
        buffer: bytearray | io.StringIO | None = None
        size = 0
        data = leftover
        while True:
            if data:
                try:
                    self.ws.receive_data(data)
                except (RemoteProtocolError, LocalProtocolError) as exc:
                    warn("websocket.protocol_error", script=self._script(), reason=str(exc)[:200])
                    self._failed(1002, str(exc))
                    return await self._fail(1002, "protocol error")
            for count, event in enumerate(self.ws.events(), 1):
                if count % EVENTS_PER_TURN == 0:
                    # One read holds ~10,000 empty frames: let the other tasks
                    # (every tenant's requests) run between their handlings.
                    await trio.lowlevel.checkpoint()
                if isinstance(event, Ping):
                    self._pong(event)
                elif isinstance(event, (TextMessage, BytesMessage)):
                    if buffer is None:
                        buffer = io.StringIO() if isinstance(event, TextMessage) else bytearray()
                    if isinstance(buffer, bytearray):
                        buffer += event.data  # type: ignore[operator]
                    else:
                        buffer.write(event.data)  # type: ignore[arg-type]
                    size += len(event.data)
                    if size > MAX_MESSAGE:
                        self._failed(1009, f"Message is too large: {size} > {MAX_MESSAGE}")
                        self._start_close(1009, f"messages are limited to {MAX_MESSAGE} bytes")
                        buffer, size = None, 0
                        continue
                    if event.message_finished:
                        text = isinstance(event, TextMessage)
                        payload = buffer.getvalue().encode() if isinstance(buffer, io.StringIO) else bytes(buffer)
                        buffer, size = None, 0
                        if not self._closing and not await self.deliverer.deliver(
                                self.source, "message", payload, text, window=self._window):
                            self._start_close(1012, "the worker was replaced or ended")
                elif isinstance(event, CloseConnection):
                    if self.ws.state is ConnectionState.OPEN:
                        # Not the client's close: wsproto's report of a frame
                        # it could not parse (bad UTF-8 is 1007, the rest 1002).
                        warn("websocket.protocol_error", script=self._script(), reason=event.reason[:200])
                        self._failed(event.code, event.reason)
                        return await self._fail(event.code, event.reason)
                    if self.ws.state is ConnectionState.REMOTE_CLOSING:
                        self._emit(self.ws.send(event.response()))
                    await self._flushed()
                    return (event.code, event.reason or "", True)
            data = await self._receive()
            if data is None:
                return (1006, GONE_REASON, False)

    def _failed(self, code: int, description: str) -> None:
        """Keep why the connection failed (the first reason), as workerd's
        error says it (kj's WebSocket protocol error, util/websocket-error-handler.c++)."""
        if self._error is None:
            self._error = (f"WebSocket protocol error; protocolError.statusCode = {int(code)}; "
                           f"protocolError.description = {description[:500]}")

    async def _fail(self, code: int, reason: str) -> tuple[int, str, bool]:
        """_Fail the WebSocket Connection_ (RFC 6455 section 7.1.7): a close
        frame saying why goes out before the connection ends, so the client
        reads a code rather than a bare TCP close (1006 on its side)."""
        self._start_close(code, reason.encode()[:123].decode("utf-8", "ignore"))
        await self._flushed()
        return (code, reason, False)

    def _pong(self, ping: Ping) -> None:
        """Answer a client's ping, unless our close has gone out: no frame may
        follow it (RFC 6455 section 5.5.1), and wsproto raises on a pong then,
        so a ping that crossed our close on the wire ended as an internal error."""
        if self.ws.state is ConnectionState.OPEN:
            self._emit(self.ws.send(ping.response()))

    async def _receive(self) -> bytes | None:
        # A checkpoint per read: the connection's ``receive_some`` returns
        # without one while bytes are waiting, and frames that deliver nothing
        # (pings, pongs, parts of a message) await nothing else, so a client
        # streaming them would hold the event loop (every other client of the
        # supervisor waited) and never see the cancel of an outbox cut.
        await trio.lowlevel.checkpoint()
        try:
            data = await self.conn.receive_some()
        except Exception:  # noqa: BLE001 - a reset connection is a client that left
            return None
        if not data:
            self.ws.receive_data(None)
            return None
        return data

    async def _flushed(self) -> None:
        """Let the writer send what is queued (the close's answer) before the end."""
        if self._queued:
            self._drained = trio.Event()
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await self._drained.wait()


class _Upstream:
    """A server's connection (httpcore's upgraded stream) as :class:`Session`
    uses a client's."""

    def __init__(self, stream: Any, session: ServerSession) -> None:
        self.stream = stream
        self.session = session

    async def _send(self, data: bytes) -> None:
        try:
            await self.stream.write(data)
        except Exception as exc:  # noqa: BLE001 - a reset connection is a server that left
            # As a client that left: the relay ends (1006), the supervisor stays.
            warn("websocket.server_gone", script=self.session._script(), ws=self.session.source.ws,
                 reason=str(exc)[:200])
            if self.session._cancel is not None:
                self.session._cancel.cancel()

    async def receive_some(self) -> bytes:
        return await self.stream.read(65536)


class ServerSession(Session):
    """A socket the worker opened to a server (``new WebSocket(url)``): the
    supervisor is the WebSocket client, and relays as for a client's
    socket; the worker hears ``open`` (or ``error``), the server's
    messages and the ``close``, each as an invocation of its own."""

    def __init__(self, source: SocketSource, deliverer: Deliverer, client: Any,
                 protocols: list[str], extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(None, source, deliverer)  # type: ignore[arg-type] - connected in run()
        self.ws = WsConnection(ConnectionType.CLIENT)
        self.client = client
        self.protocols = protocols
        #: Sent with the handshake (the loop limit's count: supervisor.limits.loop_limit).
        self.extra_headers = extra_headers or []

    async def connect(self, refused: str | None = None) -> None:
        """Connect (unless ``refused`` says why not), relay until either side
        closes, and tell the worker each step (its messages' deliveries
        still under way are waited for)."""
        async with trio.open_nursery() as deliveries:
            self._window = MessageWindow(deliveries)
            await self._connect(refused)

    async def _connect(self, refused: str | None) -> None:
        state = self.state
        close = (1006, "", False)
        response = stream = None
        answered = 0  # the status of a server that answered, but not with a 101
        try:
            failure = refused
            if failure is None:
                key = base64.b64encode(os.urandom(16))
                headers = [(b"sec-websocket-key", key), (b"sec-websocket-version", b"13")]
                if self.protocols:
                    headers.append((b"sec-websocket-protocol", ", ".join(self.protocols).encode()))
                headers += self.extra_headers
                try:
                    status, answer, stream, response = await self.client.upgrade(self.source.url, headers)
                except FetchError as exc:
                    failure = str(exc)
                else:
                    fields = {name.lower(): value for name, value in answer}
                    if stream is None:
                        answered = status
                        failure = f"the server answered {status}, not 101: it did not accept a WebSocket"
                    elif fields.get(b"sec-websocket-accept", b"").strip() != accept_key(key):
                        failure = "the server's Sec-WebSocket-Accept does not match the key sent"
            if failure is not None:
                log("websocket.connect_failed", script=self._script(), ws=self.source.ws, reason=failure[:300])
                # ``code``: that status (fetch() with Upgrade answers the worker with it).
                await self.deliverer.deliver(self.source, "error", code=answered, reason=failure[:1000])
                return
            self.conn = _Upstream(stream, self)  # type: ignore[assignment]
            state.session = self
            if state.closed_by_worker is not None:
                self._start_close(*state.closed_by_worker)
            protocol = fields.get(b"sec-websocket-protocol", b"").decode("latin-1").strip()
            log("websocket.connected", script=self._script(), ws=self.source.ws)
            await self.deliverer.deliver(self.source, "open", reason=protocol)
            with trio.CancelScope() as self._cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    close = await self._reader(b"")
                    nursery.cancel_scope.cancel()
        finally:
            state.session = None
            state.buffered.give(self._queued)
            self._queued = 0
            self.source.child.forget_socket(self.source.ws)
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                if response is not None:
                    try:
                        if stream is not None:
                            await stream.aclose()
                        await response.aclose()
                    except Exception as exc:  # noqa: BLE001 - the server's connection broke first
                        log("websocket.server_close_failed", script=self._script(), ws=self.source.ws,
                            reason=str(exc)[:200])
                await self.deliverer.deliver(self.source, "close", code=close[0], reason=close[1],
                                             clean=close[2])
            log("websocket.closed", script=self._script(), ws=self.source.ws, code=close[0])
