"""Live tails as Cloudflare's API makes them, for ``wrangler tail``.

``POST /accounts/{a}/workers/scripts/{name}/tails`` with wrangler's filter
message (``{"filters": [{"outcome": [...]}, {"method": [...]}, {"header":
{"key", "query"}}, {"client_ip": [...]}, {"query": "..."},
{"sampling_rate": 0.5}]}``) makes a tail of that platform script: an id, a
WebSocket ``url`` and when it expires. The client then opens that URL with
the ``trace-v1`` subprotocol (sending no credentials: the URL's random id is
the tail's only credential, as on Cloudflare) and receives each of the
script's trace events as one JSON text message, filtered as ``corral tail``
filters them (:class:`supervisor.observability.tail.TailFilter`). ``GET``
lists a script's tails and ``DELETE .../tails/{id}`` ends one, closing its
socket.

The socket is served by the admin TCP listener
(:mod:`supervisor.admin.tcp`), which hands an upgrade of a tail's URL to
:meth:`TailSessions.serve`; events come from the same live tail hub as
``GET /tail`` (:class:`supervisor.observability.tail.LiveTail`), so its
limits hold: at most ``max_live_tails`` at once, and a reader that falls
behind is disconnected.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import trio
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Event, Pong, TextMessage

from supervisor.edge.websockets import accept_key
from supervisor.errors import Invalid, NotFound
from supervisor.lifecycle import Outcome
from supervisor.log import log
from supervisor.observability.tail import LiveTail, TailFilter

#: How long a tail lives (Cloudflare's tails expire after a few hours).
TTL_S = 6 * 3600.0
#: Tails made and not yet ended, across scripts.
MAX_SESSIONS = 64
#: The subprotocol wrangler asks for.
TRACE_VERSION = "trace-v1"
#: ``[/client/v4]/accounts/{a}/workers/tails/{id}/ws``: where a tail's socket is.
SOCKET_SUFFIX = "ws"
#: The outcomes Corral reports.
_OUTCOMES = frozenset(outcome.value for outcome in Outcome)


class Session(msgspec.Struct, kw_only=True):
    id: str
    script: str
    filter: TailFilter
    expires: float
    #: Cancels the connected socket's relay when the tail is deleted.
    scope: trio.CancelScope | None = None


def filter_of(script: str, body: Any, client_ip: str = "") -> TailFilter:
    """wrangler's filter message as a :class:`TailFilter` on ``script``'s events
    (``client_ip``: the address of whoever asks, for wrangler's ``--ip self``)."""
    query: dict[str, list[str]] = {"script": [script]}
    filters = body.get("filters") if isinstance(body, dict) else None
    if (body is not None and not isinstance(body, dict)) or not isinstance(filters, (list, type(None))):
        raise Invalid('send {"filters": [...]} as wrangler does (each a one-key object: outcome, method, '
                      'header, client_ip, query, sampling_rate)')
    for item in filters or ():
        if not isinstance(item, dict) or len(item) != 1:
            raise Invalid(f"tail filter {str(item)[:80]!r} is not a one-key object")
        (key, value), = item.items()
        if key == "outcome" and isinstance(value, list):
            # wrangler's "error" also asks for "unknown", an outcome Corral never reports;
            # only outcomes it does not know at all are refused (by TailFilter, naming them).
            query["outcome"] = [str(v) for v in value if v in _OUTCOMES] or [str(v) for v in value]
        elif key == "method" and isinstance(value, list):
            query["method"] = [str(v) for v in value]
        elif key == "header" and isinstance(value, dict) and isinstance(value.get("key"), str):
            wanted = value["key"] + (f":{value['query']}" if isinstance(value.get("query"), str) else "")
            query.setdefault("header", []).append(wanted)
        elif key == "client_ip" and isinstance(value, list):
            query["ip"] = [client_ip if v == "self" and client_ip else str(v) for v in value]
        elif key == "query" and isinstance(value, str):
            query["search"] = [value]
        elif key == "sampling_rate" and isinstance(value, (int, float)):
            query["sampling_rate"] = [str(value)]
        elif key == "scriptVersion":
            continue  # one version serves at a time here (a split's traces carry it)
        else:
            raise Invalid(f"tail filter {key[:40]!r} is not one Corral knows (outcome, method, header, "
                          "client_ip, query, sampling_rate)")
    return TailFilter.parse(query)


class TailSessions:
    """The tails made through the API, and their sockets."""

    def __init__(self, live: LiveTail) -> None:
        self.live = live
        self.sessions: dict[str, Session] = {}

    def _expire(self) -> None:
        now = time.monotonic()
        for session in [s for s in self.sessions.values() if s.expires <= now]:
            self.end(session.id)

    def create(self, script: str, body: Any, client_ip: str = "") -> Session:
        self._expire()
        if len(self.sessions) >= MAX_SESSIONS:
            raise Invalid(f"{len(self.sessions)} tails are open, the most allowed: delete one first")
        session = Session(id=secrets.token_hex(16), script=script, filter=filter_of(script, body, client_ip),
                          expires=time.monotonic() + TTL_S)
        self.sessions[session.id] = session
        return session

    def of_script(self, script: str) -> list[Session]:
        self._expire()
        return [s for s in self.sessions.values() if s.script == script]

    def end(self, tail_id: str) -> bool:
        session = self.sessions.pop(tail_id, None)
        if session is None:
            return False
        if session.scope is not None:
            session.scope.cancel()
        return True

    def json(self, session: Session, base: str) -> dict[str, Any]:
        """Cloudflare's tail record; ``base``: ``ws://HOST/client/v4/accounts/{a}``."""
        remaining = max(0.0, session.expires - time.monotonic())
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + remaining))
        return {"id": session.id, "url": f"{base}/workers/tails/{session.id}/{SOCKET_SUFFIX}",
                "expires_at": expires}

    async def serve(self, tail_id: str, headers: dict[bytes, bytes], stream: trio.abc.Stream,
                    send_head: Any) -> None:
        """Accept the socket of tail ``tail_id`` and relay its events until it
        closes, the tail is deleted or expires, or the reader falls behind.
        ``send_head(status, headers)`` writes the HTTP answer."""
        session = self.sessions.get(tail_id)
        key = headers.get(b"sec-websocket-key")
        if session is None or session.expires <= time.monotonic():
            raise NotFound("no such tail: its URL is wrong, or it was deleted or has expired")
        if key is None or b"websocket" not in headers.get(b"upgrade", b"").lower():
            raise Invalid("a tail's URL is a WebSocket: open it with 'Upgrade: websocket'")
        if session.scope is not None:
            raise Invalid("this tail already has its socket open")
        head = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"sec-websocket-accept", accept_key(key))]
        if TRACE_VERSION.encode() in headers.get(b"sec-websocket-protocol", b""):
            head.append((b"sec-websocket-protocol", TRACE_VERSION.encode()))
        sub = self.live.subscribe(session.filter)  # or Unavailable: too many live tails
        # Ended by DELETE, or when the tail expires, as Cloudflare's do.
        scope = session.scope = trio.CancelScope(
            deadline=trio.current_time() + session.expires - time.monotonic())
        sock = _Socket(stream)
        try:
            await send_head(101, head)
            log("tail.socket_connected", id=tail_id, script=session.script)
            with scope, sub.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_read_until_closed, sock, nursery.cancel_scope)
                    await _relay(sub.receive, sock)
                    nursery.cancel_scope.cancel()
            if scope.cancelled_caught or sub.dropped:
                with trio.move_on_after(1):
                    await sock.send(CloseConnection(1000, "tail ended"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            session.scope = None
            self.live.unsubscribe(sub)
            log("tail.socket_disconnected", id=tail_id, dropped=sub.dropped)


#: The largest frame a tail's client may send: it sends pings and one small message.
MAX_CLIENT_FRAME = 64 * 1024


def client_frames(buffer: bytearray) -> Iterator[tuple[int, bytes]]:
    """Take each whole frame off ``buffer``: ``(opcode, payload)``, unmasked.

    Why not wsproto, which the ingress's WebSockets use: wrangler sends its
    one message (``{"debug": ...}``) unmasked, which RFC 6455 forbids a
    client and wsproto refuses (a close, 1002), while Cloudflare's server
    takes it; its pings, every 10 s, must be answered or wrangler exits. So
    this reads frames masked or not. A frame past :data:`MAX_CLIENT_FRAME`
    raises ``ValueError``."""
    while len(buffer) >= 2:
        opcode, masked, length = buffer[0] & 0x0F, buffer[1] & 0x80, buffer[1] & 0x7F
        start = 2
        if length == 126:
            start, length = 4, int.from_bytes(buffer[2:4], "big") if len(buffer) >= 4 else -1
        elif length == 127:
            start, length = 10, int.from_bytes(buffer[2:10], "big") if len(buffer) >= 10 else -1
        if length < 0:
            return
        if length > MAX_CLIENT_FRAME:
            raise ValueError(f"a frame of {length} bytes from a tail's client")
        # The whole mask key is awaited too: a key cut short by a read is not
        # "no key" (that took a masked empty ping's key for the next frame).
        key_length = 4 if masked else 0
        end = start + key_length + length
        if len(buffer) < end:
            return
        key = bytes(buffer[start:start + key_length])
        payload = bytes(buffer[start + key_length:end])
        if key:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        del buffer[:end]
        yield opcode, payload


class _Socket:
    """A tail's socket, written one frame at a time by the relay (events) and
    the reader (pongs, the answer to a close).

    Why a lock and a state check: the relay waits in ``send_all`` for as long
    as its client does not read, and a second task in ``send_all`` is trio's
    ``BusyResourceError``; and after the close is sent wsproto refuses any
    frame (``LocalProtocolError``). Either escaped the socket's task and
    ended the whole supervisor: a client had only to stop reading and ping,
    or to close while events flowed."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WsConnection(ConnectionType.SERVER)
        self.lock = trio.Lock()

    async def send(self, event: Event) -> None:
        """Send ``event``, after whatever frame is being sent; nothing once the socket is closing."""
        async with self.lock:
            if self.ws.state is ConnectionState.OPEN:
                await self.stream.send_all(self.ws.send(event))


async def _relay(lines: trio.MemoryReceiveChannel[bytes], sock: _Socket) -> None:
    """Each event as one text message, until there are no more or the client
    is gone. Its broken pipe is caught here, inside the nursery: out of it,
    trio raises it in an ExceptionGroup, which no ``except`` of it matches,
    and a client that went away while an event was being sent to it ended
    the whole supervisor."""
    try:
        async for line in lines:
            await sock.send(TextMessage(line.decode().rstrip("\n")))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _read_until_closed(sock: _Socket, scope: trio.CancelScope) -> None:
    """Answer pings and see the client's close; its only other message, the
    ``{"debug": ...}`` wrangler sends once, changes nothing here."""
    buffer = bytearray()
    try:
        while data := await sock.stream.receive_some(65536):
            buffer += data
            for opcode, payload in client_frames(buffer):
                if opcode == 0x9:
                    await sock.send(Pong(payload))
                elif opcode == 0x8:
                    with trio.move_on_after(1):
                        await sock.send(CloseConnection(1000))
                    return
    except (ValueError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        scope.cancel()


__all__ = ["Session", "TailSessions", "filter_of"]
