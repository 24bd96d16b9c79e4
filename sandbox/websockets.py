"""WebSockets a worker serves: ``WebSocketPair``, ``accept``, ``send``, events.

``client, server = WebSocketPair.new().object_values()``; the worker accepts
the server end (``server.accept()``, or in a Durable Object
``ctx.acceptWebSocket(server)`` to hibernate) and answers
``Response(None, status=101, web_socket=client)``. The supervisor completes
the handshake with the client and keeps the connection; this child keeps
only the server end, by number:

* what the server end sends (``send``, ``close``) goes out as ``WsSend`` and
  ``WsClose`` frames, and may start before the 101 leaves (a welcome
  message): the supervisor holds it until the client is connected;
* what the client sends arrives as an invocation of its own, so that each
  message has its own CPU budget and trace, as on Cloudflare: a
  :class:`~protocol.messages.WebSocketEvent` for a socket a worker accepted
  (its ``message`` and ``close`` listeners run), and for one a Durable
  Object accepted to hibernate, a call of the object's ``webSocketMessage``,
  ``webSocketClose`` (through its input gate, on a new instance if the old
  one was evicted: the socket outlives it here).

A socket lives as long as this child; if the child ends, the supervisor
closes its clients' connections (1011).

A worker may also open a socket to a server, ``js.WebSocket.new(url)``
(:class:`OutboundWebSocket`): the supervisor connects (``WsConnect``) and
its ``open`` (or ``error``), the server's messages and the ``close`` come as
the same events; sends go out as above. ``fetch()`` with ``Upgrade:
websocket`` opens one the same way and answers once the server has: a 101
whose ``webSocket`` the worker accepts (then uses as its own) or returns
in its response, which relays it to the worker's client (a proxy).
"""

from __future__ import annotations

import asyncio
import inspect
import urllib.parse
from typing import Any

from protocol.http_grammar import TOKEN
from protocol.messages import Socket, WebSocketEvent, WsClose, WsConnect, WsSend

from . import workers
from .pyodide_shim import ArrayBuffer, JsException
from .sdk_types import JsDict

#: Close codes a worker may not send (RFC 6455: reserved for the endpoints'
#: own reports); Cloudflare's runtime takes the rest of 1000-4999.
RESERVED_CLOSE_CODES = frozenset({1004, 1005, 1006, 1015})
#: The code a close without one reads as (RFC 6455 7.1.5); in a ``WsClose``
#: it asks for a close frame with no status code at all.
NO_STATUS = 1005
#: Cloudflare's limit on a hibernatable WebSocket's attachment, serialised (workerd's
#: MAX_ATTACHMENT_SIZE, web-socket.h).
MAX_ATTACHMENT_BYTES = 16 * 1024
#: Cloudflare's limit on each side of an auto-response pair, checked by
#: ``ctx.setWebSocketAutoResponse`` (workerd's actor-state.c++).
MAX_AUTO_RESPONSE_BYTES = 2048

CONNECTING, OPEN, CLOSING, CLOSED = 0, 1, 2, 3
#: Largest message a worker may send (Cloudflare's limit is 1 MiB per message).
MAX_MESSAGE = 1024 * 1024
#: A message goes to the supervisor in parts of at most this many bytes (a
#: frame from a child is at most 1 MiB, its envelope included).
PART = 256 * 1024


#: workerd's words for a socket used before it is accepted (``send``, ``close``).
NOT_ACCEPTED = ("You must call one of accept() or state.acceptWebSocket() on this WebSocket before "
                "sending messages.")


#: The schemes ``new WebSocket(url)`` takes (http(s) as the standard reads them).
SERVER_SCHEMES = ("ws", "wss", "http", "https")

class OutboundWebSocket:
    """``js.WebSocket``: ``WebSocket.new(url, protocols=None)`` opens a socket to
    a server. The supervisor connects (a subrequest of the invocation, under
    the egress policy); the socket's ``open`` or ``error``, the server's
    messages and its ``close`` reach the listeners, each as an invocation of
    its own, as a client's do on an accepted socket."""

    @staticmethod
    def new(url: Any, protocols: Any = None) -> WebSocket:
        runtime = workers._runtime
        if runtime is None:
            raise RuntimeError("new WebSocket() can only be used while handling a request")
        return runtime.sockets.connect(str(url), protocols)


class WebSocketError(JsException, TypeError):
    """What workerd's ``WebSocket.close()`` and ``send()`` throw (a DOMException named
    InvalidAccessError or SyntaxError, or a TypeError): the SDK surfaces it
    as a ``JsException`` with that name. It is Python's ``TypeError`` too,
    as Corral has raised these, so code written either way catches it."""


def _message_bytes(data: Any) -> tuple[bytes, bool]:
    if isinstance(data, str):
        payload, text = data.encode(), True
    elif isinstance(data, (bytes, bytearray, memoryview)):
        payload, text = bytes(data), False
    else:
        raise TypeError(f"WebSocket.send() takes str or bytes, not {type(data).__name__}")
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"a WebSocket message is limited to {MAX_MESSAGE} bytes")
    return payload, text


class WebSocket:
    """One end of a :class:`WebSocketPair`. The server end is the one used;
    the client end is what the 101 response carries."""

    READY_STATE_CONNECTING, READY_STATE_OPEN, READY_STATE_CLOSING, READY_STATE_CLOSED = (
        CONNECTING, OPEN, CLOSING, CLOSED)

    def __init__(self, sockets: Sockets | None, peer: WebSocket | None = None) -> None:
        self._sockets = sockets
        self._peer = peer
        self.id = 0
        self.readyState = CONNECTING  # noqa: N815 - Workers API name
        self._listeners: dict[str, list[Any]] = {}
        #: Opened by ``fetch()``: its events wait for ``accept()`` (or a relay).
        self._fetched = False
        self._held: list[WebSocketEvent] = []
        #: The socket this one's messages and close are passed to (a relay).
        self._relay: WebSocket | None = None
        self._hibernate = False
        self._attachment: Any = None
        self.url: str | None = None
        self.protocol = ""
        self.extensions = ""
        #: Opened to a server (``js.WebSocket.new``), not a pair's server end.
        self._to_server = False
        #: The invocation that accepted it (see Sockets.invocation_ended).
        self._made_in = 0

    # -- the server end ---------------------------------------------------------------
    def accept(self) -> None:
        """Take this end: its events go to the listeners added here."""
        self._sockets_or_raise().accept(self, hibernate=False)

    def send(self, data: Any) -> None:
        if self.readyState == CONNECTING and self._to_server:
            raise WebSocketError("InvalidStateError", "Failed to execute 'send' on 'WebSocket': "
                                                      "Still in CONNECTING state.")
        if self.readyState == CONNECTING:
            raise WebSocketError("TypeError", NOT_ACCEPTED)
        if self.readyState != OPEN:
            raise WebSocketError("TypeError", "Can't call WebSocket send() after close().")
        payload, text = _message_bytes(data)
        runtime = self._sockets_or_raise().runtime
        if len(payload) <= PART:
            runtime.send(WsSend(self.id, payload, text))
            return
        # In parts; a text message is cut between characters, never inside one.
        parts = [data[i:i + PART // 4].encode() for i in range(0, len(data), PART // 4)] if text \
            else [payload[i:i + PART] for i in range(0, len(payload), PART)]
        for i, part in enumerate(parts):
            runtime.send(WsSend(self.id, part, text, fin=i == len(parts) - 1))

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Start the closing handshake. Without a code the close frame carries
        none, and the peer reads 1005 ("no status received"), as the WebSocket
        standard and Cloudflare's runtime have it; a reason needs a code.

        As workerd checks them, in its order: a code outside 1000-4999 or
        reserved (1004, 1005, 1006, 1015) throws InvalidAccessError, a reason
        over 123 bytes in UTF-8 SyntaxError, a reason without a code
        InvalidAccessError (each a :class:`WebSocketError`, a ``JsException``
        named so); a socket closing or closed already ignores it, and one not
        accepted yet throws a TypeError."""
        if code is not None and (not 1000 <= code <= 4999 or code in RESERVED_CLOSE_CODES):
            raise WebSocketError("InvalidAccessError", f"Invalid WebSocket close code: {code}.")
        if reason is not None and len(reason.encode()) > 123:
            raise WebSocketError("SyntaxError", "WebSocket close reason must not be longer than "
                                                "123 bytes when UTF-8 encoded.")
        if reason is not None and code is None:
            # 1005 (no status) cannot carry a reason.
            raise JsException("InvalidAccessError",
                              "If you specify a WebSocket close reason, you must also specify a code.")
        if self.readyState in (CLOSING, CLOSED):
            return
        if (self.readyState == CONNECTING and not self._to_server) or not self.id:
            raise WebSocketError("TypeError", NOT_ACCEPTED)
        self.readyState = CLOSING
        self._sockets_or_raise().runtime.send(
            WsClose(self.id, NO_STATUS if code is None else code, reason or ""))

    def addEventListener(self, kind: str, listener: Any) -> None:  # noqa: N802 - Workers API name
        self._listeners.setdefault(kind, []).append(listener)

    def removeEventListener(self, kind: str, listener: Any) -> None:  # noqa: N802 - Workers API name
        listeners = self._listeners.get(kind, [])
        if listener in listeners:
            listeners.remove(listener)

    def serializeAttachment(self, value: Any) -> None:  # noqa: N802 - Workers API name
        """Data kept with the socket across hibernation (the object's instance
        may be evicted): a copy, as structured clone makes one, of at most
        :data:`MAX_ATTACHMENT_BYTES` serialised."""
        from .bindings.durable_objects import encode

        data = encode(value, "serializeAttachment()")
        if len(data) > MAX_ATTACHMENT_BYTES:
            # workerd's words, its missing space included (web-socket.c++).
            raise JsException("Error", f"A WebSocket 'attachment' cannot be larger than "
                                       f"{MAX_ATTACHMENT_BYTES} bytes.'attachment' was {len(data)} bytes.")
        self._attachment = data

    def deserializeAttachment(self) -> Any:  # noqa: N802 - Workers API name
        from .bindings.durable_objects import decode

        return None if self._attachment is None else decode(self._attachment)

    def _sockets_or_raise(self) -> Sockets:
        if self._sockets is None:
            raise TypeError("this WebSocket came from another worker's response: return it in a "
                            "Response(status=101, web_socket=...) to hand it on")
        return self._sockets

    def __repr__(self) -> str:
        return f"<WebSocket {self.id or 'unaccepted'} state={self.readyState}>"


class WebSocketPair:
    """``WebSocketPair.new()``: ``pair[0]`` the client end, ``pair[1]`` the server end."""

    def __init__(self, sockets: Sockets) -> None:
        server = WebSocket(sockets)
        client = WebSocket(None, peer=server)
        server._peer = client
        self._ends = (client, server)

    def object_values(self) -> tuple[WebSocket, WebSocket]:
        """``Object.values(pair)``: (client, server), as Python Workers unpack it."""
        return self._ends

    def __getitem__(self, index: int) -> WebSocket:
        return self._ends[index]

    def __iter__(self) -> Any:
        return iter(self._ends)


class HandedOn(WebSocket):
    """A WebSocket this child received in a response (a Durable Object's, a
    service's): it can only be returned in a 101 response in turn."""

    def __init__(self, handle: int) -> None:
        super().__init__(None)
        self.id = handle
        self.readyState = OPEN


class Sockets:
    """The server ends this child accepted, by number."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.open: dict[int, WebSocket] = {}
        #: Server ends accepted by each invocation that no 101 has carried yet.
        self._unhanded: dict[int, list[WebSocket]] = {}
        self._next = 1
        #: ``fetch()`` upgrades waiting for their server's answer, by socket.
        self._handshakes: dict[int, asyncio.Future] = {}
        self._replaying: set[asyncio.Future] = set()

    def pair(self) -> WebSocketPair:
        return WebSocketPair(self)

    def accept(self, ws: WebSocket, hibernate: bool) -> None:
        if ws._fetched:
            self._take_fetched(ws)
            return
        if ws._peer is None or ws._sockets is not self:
            raise TypeError("accept() is called on the server end of a WebSocketPair (pair[1])")
        if ws.readyState != CONNECTING:
            raise RuntimeError("this WebSocket was already accepted")
        made_in = workers.current_invocation.get()
        if made_in not in self.runtime.invocations:
            # A task left running past its request: the socket could never be
            # returned, and it kept its child from ever being idle.
            raise RuntimeError("accept() is called while handling a request (this task outlived the one "
                               "that started it)")
        ws.id = self._next
        self._next += 1
        ws._hibernate = hibernate
        ws.readyState = OPEN
        self.open[ws.id] = ws
        ws._made_in = made_in
        self._unhanded.setdefault(made_in, []).append(ws)

    def body_of(self, response: workers.Response) -> Any:
        """The ``Socket`` a 101 response carries (the client end's server end)."""
        client = response.web_socket
        if isinstance(client, HandedOn):
            return Socket(client.id)
        if isinstance(client, WebSocket) and client._fetched:
            client = self._relay_to_client(client)
        server = getattr(client, "_peer", None)
        if not isinstance(client, WebSocket) or server is None or server._sockets is not self:
            raise TypeError("web_socket must be the client end of a WebSocketPair (pair[0])")
        if server.readyState == CONNECTING:
            raise TypeError("the server end of the WebSocketPair was not accepted: call "
                            "server.accept() (or ctx.acceptWebSocket(server) in a Durable Object) "
                            "before returning the response")
        made = self._unhanded.get(server._made_in)
        if made is not None and server in made:
            made.remove(server)
        return Socket(server.id, hibernate=server._hibernate)

    def invocation_ended(self, inv: int) -> None:
        """The sockets ``inv`` accepted that no 101 carried are closed, as
        workerd's pair goes with its request: they kept their child from
        ever being idle, and 10,000 of them killed it with its live sockets."""
        for ws in self._unhanded.pop(inv, ()):
            if ws.readyState == OPEN and self.open.get(ws.id) is ws:
                self.closed(ws)
                self.runtime.send(WsClose(ws.id, orphan=True))

    def connect(self, url: str, protocols: Any) -> WebSocket:
        """A socket to a server (:class:`OutboundWebSocket`), CONNECTING until
        the supervisor's ``open`` event."""
        parent = workers.current_invocation.get()
        if parent == 0 or parent not in self.runtime.invocations:
            raise RuntimeError("new WebSocket() can only be used while handling a request")
        try:
            scheme = urllib.parse.urlsplit(url).scheme.lower()
            url = workers._normalized_url(url)
        except ValueError as exc:  # "ws://[::1": urllib's error, JavaScript's SyntaxError
            raise JsException("SyntaxError", f"Failed to construct 'WebSocket': the URL {url!r} is "
                                             f"invalid ({exc})") from None
        if scheme not in SERVER_SCHEMES or "#" in url:
            raise JsException("SyntaxError", f"Failed to construct 'WebSocket': the URL {url!r} is "
                                             "not a ws:, wss:, http: or https: URL without a fragment")
        protocols = [protocols] if isinstance(protocols, str) else [str(p) for p in protocols or ()]
        for protocol in protocols:
            # As browsers and workerd: a subprotocol is an HTTP token, named once.
            if not TOKEN.fullmatch(protocol) or protocols.count(protocol) > 1:
                raise JsException("SyntaxError", f"Failed to construct 'WebSocket': The subprotocol "
                                                 f"{protocol[:200]!r} is invalid or duplicated.")
        ws = WebSocket(self)
        ws._to_server = True
        ws.id = self._next
        self._next += 1
        ws.url = url
        self.runtime.send(WsConnect(ws.id, parent, ws.url, protocols))
        self.open[ws.id] = ws  # after: a URL too large to send opens nothing
        return ws

    async def fetch_upgrade(self, request: workers.Request) -> workers.Response:
        """``fetch()`` with ``Upgrade: websocket``: connect, and answer once the
        server has: a 101 with the socket (``response.webSocket``), or the
        status it answered instead; no answer at all is a NetworkError."""
        offered = request.headers.get("sec-websocket-protocol") or ""
        ws = self.connect(request.url, [p.strip() for p in offered.split(",") if p.strip()])
        ws._fetched = True
        handshake = asyncio.get_running_loop().create_future()
        self._handshakes[ws.id] = handshake
        try:
            kind, code, reason = await handshake
        finally:
            self._handshakes.pop(ws.id, None)
        if kind == "error":
            if code:
                return workers.Response(None, status=code)
            raise workers.NetworkError("FetchError", f"WebSocket connection to {request.url} failed: {reason}")
        ws._to_server = False  # a socket the worker must accept() before it sends
        ws.protocol = reason
        headers = {"upgrade": "websocket", "connection": "Upgrade"}
        if reason:
            headers["sec-websocket-protocol"] = reason
        return workers.Response(None, status=101, headers=headers, web_socket=ws)

    def _take_fetched(self, ws: WebSocket) -> None:
        """``accept()`` of a socket ``fetch()`` opened: it is the worker's now,
        and what came for it meanwhile reaches its listeners."""
        if ws.readyState != CONNECTING:
            raise RuntimeError("this WebSocket was already accepted")
        ws.readyState = OPEN
        ws._fetched = False
        held, ws._held = ws._held, []
        if held:
            task = asyncio.ensure_future(self._replay(held))
            self._replaying.add(task)
            task.add_done_callback(self._replaying.discard)

    async def _replay(self, held: list[WebSocketEvent]) -> None:
        for event in held:
            await self.deliver(event)

    def _relay_to_client(self, upstream: WebSocket) -> WebSocket:
        """A fetched socket returned in a response, unaccepted: a proxy. A pair
        takes the worker's client; each side's messages and close are passed
        to the other (each as an invocation of its own, as any message is)."""
        client, server = self.pair().object_values()
        self.accept(server, hibernate=False)
        server._relay, upstream._relay = upstream, server
        self._take_fetched(upstream)
        return client

    def closed(self, ws: WebSocket) -> None:
        """Its client's connection is over (the worker hears of it now)."""
        ws.readyState = CLOSED
        self.open.pop(ws.id, None)

    async def deliver(self, event: WebSocketEvent) -> None:
        """A client's message or close, to the listeners of a worker's socket."""
        ws = self.open.get(event.ws)
        if ws is None:
            return  # closed here already; nothing listens
        handshake = self._handshakes.get(event.ws)
        if handshake is not None and event.kind in ("open", "error"):
            if not handshake.done():
                handshake.set_result((event.kind, event.code, event.reason))
            return
        if ws._fetched:
            ws._held.append(event)  # until accept(), as workerd queues them
            if event.kind == "close":
                self.closed(ws)
            return
        if ws._relay is not None:
            await self._pass_on(ws, event)
            return
        if event.kind == "open":  # a socket to a server: connected (``reason``: its protocol)
            if ws.readyState == CONNECTING:
                ws.readyState = OPEN
            ws.protocol = event.reason
            await _dispatch(ws, "open", JsDict(type="open"))
        elif event.kind == "error":  # ... or not (``reason``: why); its close follows
            await _dispatch(ws, "error", JsDict(type="error", message=event.reason))
        elif event.kind == "message":
            await _dispatch(ws, "message", JsDict(data=message_of(event.data, event.text), type="message"))
        elif event.kind == "close":
            self.closed(ws)
            await _dispatch(ws, "close", JsDict(code=event.code, reason=event.reason,
                                                wasClean=event.clean, type="close"))


    async def _pass_on(self, ws: WebSocket, event: WebSocketEvent) -> None:
        """A relayed socket's message or close, to the other side."""
        other = ws._relay
        assert other is not None
        if event.kind == "message":
            if other.readyState == OPEN:
                other.send(message_of(event.data, event.text))
        elif event.kind == "close":
            self.closed(ws)
            if other.readyState in (CONNECTING, OPEN):
                code = event.code if event.code not in RESERVED_CLOSE_CODES else 1000
                other.close(code, event.reason if code != NO_STATUS else None)


async def _dispatch(ws: WebSocket, kind: str, event: JsDict) -> None:
    for listener in list(ws._listeners.get(kind, ())):
        handler = getattr(listener, "handleEvent", listener)
        result = handler(event)
        if inspect.isawaitable(result):
            await result


def message_of(data: bytes, text: bool) -> Any:
    """A message as handlers get it: ``str`` for a text frame, else an
    ``ArrayBuffer`` (bytes with ``to_bytes()``, as Pyodide's proxy of one:
    workers-py's own ASGI loop reads ``data.to_bytes()``)."""
    return data.decode("utf-8", "replace") if text else ArrayBuffer(data)


class WebSocketRequestResponsePair:
    """``js.WebSocketRequestResponsePair``: a text message and the answer a
    Durable Object gives it without its handler running
    (``ctx.setWebSocketAutoResponse``), e.g. a ping and its pong."""

    def __init__(self, request: str, response: str) -> None:
        for what, value in (("request", request), ("response", response)):
            if not isinstance(value, str):
                raise TypeError(f"WebSocketRequestResponsePair: the {what} must be a string")
        self.request = request
        self.response = response

    @classmethod
    def new(cls, request: str, response: str) -> WebSocketRequestResponsePair:
        """As Python code makes JavaScript objects: ``WebSocketRequestResponsePair.new(...)``."""
        return cls(request, response)

    def __repr__(self) -> str:
        return f"WebSocketRequestResponsePair({self.request!r}, {self.response!r})"
