"""WebSockets a worker serves, over a real server, real jailed children and a
real client speaking RFC 6455 on a TCP socket (wsproto on the client side too).

* a worker accepts its end (``server.accept()``), sends before the 101 has
  left, echoes text and binary messages through its listeners and closes;
* a Durable Object accepts sockets to hibernate (the chat room of
  Cloudflare's Python examples): messages reach ``webSocketMessage`` and are
  broadcast to ``getWebSockets()``, survive the instance's eviction with their
  attachments, and a client leaving reaches ``webSocketClose``;
* a client hears why its socket ends: 1009 for a message over 1 MiB, 1011
  when its worker's process dies, 1012 when its worker is redeployed;
* what cannot be a WebSocket is refused by name, at once.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time

import pytest
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, TextMessage

from supervisor.edge.websockets import accept_key
from tests import storage_helpers as h


class Client:
    """A WebSocket client on a plain socket: the handshake by hand, frames by wsproto."""

    def __init__(self, port: int, host: str, path: str = "/") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() +
                          b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                          b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed during the handshake: {head!r}"
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        self.head = head.decode("latin-1")
        assert self.head.startswith("HTTP/1.1 101"), self.head
        fields = dict(line.split(": ", 1) for line in self.head.split("\r\n")[1:])
        headers = {name.lower(): value for name, value in fields.items()}
        assert headers["sec-websocket-accept"] == accept_key(key).decode(), self.head
        assert headers["upgrade"].lower() == "websocket", self.head
        self.ws = Connection(ConnectionType.CLIENT, trailing_data=rest)
        self.events: list = []

    def send(self, data: str | bytes) -> None:
        self.sock.sendall(self.ws.send(Message(data)))

    def next(self):
        """The next message (str or bytes) or CloseConnection, waiting for it."""
        parts: list = []
        while True:
            for event in self.ws.events():
                if isinstance(event, (TextMessage, BytesMessage)):
                    parts.append(event.data)
                    if event.message_finished:
                        return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
                elif isinstance(event, CloseConnection):
                    if self.ws.state is ConnectionState.REMOTE_CLOSING:  # theirs: answer it
                        self.sock.sendall(self.ws.send(event.response()))
                    return event
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            if not data:
                return None

    def close(self, code: int = 1000, reason: str = "") -> None:
        from wsproto.events import CloseConnection as Close

        self.sock.sendall(self.ws.send(Close(code, reason)))

    def drop(self) -> None:
        self.sock.close()


ECHO = '''
from js import WebSocketPair
from pyodide.ffi import create_proxy
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.headers.get("upgrade") != "websocket":
            if request.url.endswith("/unasked"):
                client, server = WebSocketPair.new().object_values()
                server.accept()
                return Response(None, status=101, web_socket=client)
            if request.url.endswith("/unaccepted"):
                client, server = WebSocketPair.new().object_values()
                return Response(None, status=101, web_socket=client)
            if request.url.endswith("/used"):  # not a WebSocket: a response that cannot be sent
                response = Response("read already")
                await response.text()
                return response
            try:
                Response(None, status=200, web_socket=WebSocketPair.new()[0])
            except ValueError as e:
                return Response(str(e))
        client, server = WebSocketPair.new().object_values()
        server.accept()
        if request.url.endswith("/flood"):  # more than a socket may queue before its client comes
            for _ in range(9):
                server.send(b"x" * (1024 * 1024))
            return Response(None, status=101, web_socket=client)
        server.send("welcome")  # before the client has the 101

        def on_message(event):
            if event.data == "die":
                import os
                os._exit(3)
            if event.data == "bye":
                server.close(1000, "bye to you")
            elif event.data == "attach":  # a copy, as structured clone makes, within 16 KiB
                kept = {"n": 1}
                server.serializeAttachment(kept)
                kept["n"] = 2
                try:
                    server.serializeAttachment("x" * 17000)
                    big = "accepted"
                except Exception as e:
                    big = f"{e.name}: {e}"
                server.send(f"attached:{server.deserializeAttachment()['n']}:{big}")
            elif event.data == "reserved":
                try:
                    server.close(1005)
                except TypeError as e:
                    server.send(f"refused:{e}")
            elif event.data == "close-errors":  # workerd's DOMExceptions, the socket left open
                import json
                from pyodide.ffi import JsException
                out = []
                unaccepted = WebSocketPair.new().object_values()[1]
                for ws, args in ((server, (999,)), (server, (1005,)), (server, (5000,)),
                                 (server, (1000, "x" * 124)), (server, (1000, "\u00e9" * 62)),
                                 (unaccepted, (1000,)), (unaccepted, ())):
                    try:
                        ws.close(*args)
                        out.append(None)
                    except JsException as e:
                        out.append([e.name, str(e), isinstance(e, TypeError)])
                try:
                    unaccepted.send("x")
                except JsException as e:
                    out.append([e.name, str(e), isinstance(e, TypeError)])
                server.send(json.dumps([out, server.readyState]))
                server.close(1000, "\u00e9" * 61 + "x")  # 123 bytes: the most a reason may be
            elif event.data == "bye1011":  # Cloudflare's chat example closes so on an error
                server.close(1011, "internal error")
            elif event.data == "bye-nocode":  # a reason needs a code; no code is no status at all
                from pyodide.ffi import JsException
                try:
                    server.close(None, "why")
                except JsException as e:
                    server.send(f"refused:{e.name}:{e}")
                server.close()
            elif isinstance(event.data, str):
                server.send("echo:" + event.data)
            elif event.data[:1] == b"\\xff":  # as workers-py's ASGI loop reads binary data
                server.send(event.data.to_bytes()[1:] + str(event.data.byteLength).encode())
            else:
                server.send(bytes(reversed(event.data)))

        server.addEventListener("message", create_proxy(on_message))
        return Response(None, status=101, web_socket=client)
'''

CHAT = r'''
import json
from js import WebSocketPair, WebSocketRequestResponsePair
from workers import DurableObject, Response, WorkerEntrypoint


class Room(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        import uuid
        # Each construction leaves a mark the worker can count without waking the object.
        ctx.blockConcurrencyWhile(lambda: env.BUILT.put(f"{ctx.id}-{uuid.uuid4()}", "1"))

    async def fetch(self, request):
        client, server = WebSocketPair.new().object_values()
        name = request.url.rsplit("/", 1)[-1]
        # A ping is answered without webSocketMessage running (and so without waking the object).
        self.ctx.setWebSocketAutoResponse(WebSocketRequestResponsePair.new("ping", "pong"))
        self.ctx.acceptWebSocket(server, [name])
        server.serializeAttachment({"name": name})
        for ws in self.ctx.getWebSockets():
            ws.send(json.dumps({"joined": name, "count": len(self.ctx.getWebSockets())}))
        return Response(None, status=101, web_socket=client)

    async def webSocketMessage(self, ws, message):
        if message == "leave":
            ws.close()
            return
        who = ws.deserializeAttachment()["name"]
        for other in self.ctx.getWebSockets():
            other.send(json.dumps({"from": who, "text": message, "tags": self.ctx.getTags(ws)}))

    async def webSocketClose(self, ws, code, reason, wasClean):
        await self.ctx.storage.put("closed", [ws.deserializeAttachment()["name"], code, wasClean] +
                                   ([reason] if code == 1006 else []))

    async def count(self):
        return {"open": len(self.ctx.getWebSockets()), "closed": await self.ctx.storage.get("closed")}

    async def pinged(self):
        return [self.ctx.getWebSocketAutoResponseTimestamp(ws) is not None
                for ws in self.ctx.getWebSockets()]


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        _, _, _, action, room, *rest = request.url.split("/")
        stub = self.env.ROOMS.getByName(room)
        if action == "count":
            return Response.json(await stub.count())
        if action == "pinged":
            return Response.json(await stub.pinged())
        if action == "built":  # how many times a room was constructed, from KV: the room sleeps on
            return Response.json(len((await self.env.BUILT.list()).keys))
        if action == "drop":  # takes the room's 101 and does not hand it on
            response = await stub.fetch(request)
            return Response(f"dropped a {response.status}")
        return await stub.fetch(request)  # its 101, handed on through this worker
'''
ROOM = {"type": "durable_object_namespace", "name": "ROOMS", "class_name": "Room"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = h.start(tmp_path_factory.mktemp("websockets"), "[storage]\ndurable_object_idle_s = 0.3\n")
    srv.deploy("echo", ECHO)
    srv.deploy("chat", CHAT, bindings=[ROOM, {"type": "kv_namespace", "name": "BUILT", "namespace_id": "built"}])
    yield srv
    srv.stop()


def test_a_worker_accepts_echoes_and_closes(server):
    c = Client(server.port, "echo.localhost")
    assert c.next() == "welcome"
    c.send("hi")
    assert c.next() == "echo:hi"
    c.send(b"\x01\x02\x03")
    assert c.next() == b"\x03\x02\x01"
    c.send(b"\xffab")  # an ArrayBuffer, as Pyodide hands binary data over: to_bytes(), byteLength
    assert c.next() == b"ab3"
    text = "é" * 400_000 + "x" * 200_000  # ~1 MB: it leaves the child in parts, one message
    c.send(text)
    assert c.next() == "echo:" + text
    most = bytes(range(256)) * 4096  # exactly the 1 MiB a message may be
    c.send(most)
    assert c.next() == most[::-1]
    c.send("bye")
    close = c.next()
    assert isinstance(close, CloseConnection) and (close.code, close.reason) == (1000, "bye to you")
    assert c.next() is None  # and the connection ends
    c.drop()


def test_close_codes_and_attachments_as_cloudflare_takes_them(server):
    c = Client(server.port, "echo.localhost")
    assert c.next() == "welcome"
    c.send("attach")
    assert c.next() == ("attached:1:Error: A WebSocket 'attachment' cannot be larger than 16384 bytes."
                        "'attachment' was 17003 bytes.")  # workerd's words (web-socket.c++)
    c.send("reserved")
    assert c.next() == "refused:Invalid WebSocket close code: 1005."
    c.send("bye1011")
    close = c.next()
    assert isinstance(close, CloseConnection) and (close.code, close.reason) == (1011, "internal error")
    c.drop()


def test_close_refuses_a_bad_code_or_reason_as_workerd_does(server):
    """``close()`` throws what workerd throws: a DOMException named
    InvalidAccessError for a code it may not send, SyntaxError for a reason
    over 123 bytes in UTF-8, and a TypeError on a socket not accepted yet;
    each a ``JsException`` (and Python's ``TypeError`` too, as Corral has
    raised them); ``send()`` on a socket not accepted is that TypeError too.
    The socket stays open, and a 123-byte reason goes out."""
    c = Client(server.port, "echo.localhost")
    assert c.next() == "welcome"
    c.send("close-errors")
    errors, state = json.loads(c.next())
    code = [["InvalidAccessError", f"Invalid WebSocket close code: {n}.", True] for n in (999, 1005, 5000)]
    reason = ["SyntaxError", "WebSocket close reason must not be longer than 123 bytes when UTF-8 encoded.", True]
    unaccepted = ["TypeError", "You must call one of accept() or state.acceptWebSocket() on this "
                               "WebSocket before sending messages.", True]
    assert errors == code + [reason, reason, unaccepted, unaccepted, unaccepted], errors
    assert state == 1
    close = c.next()
    assert isinstance(close, CloseConnection) and (close.code, close.reason) == (1000, "é" * 61 + "x")
    c.drop()


def _closed_by(server, trigger) -> int:
    """Connect to the echo worker, do ``trigger(client)``, return the close code it hears."""
    client = Client(server.port, "echo.localhost")
    assert client.next() == "welcome"
    trigger(client)
    close = client.next()
    client.drop()
    assert isinstance(close, CloseConnection), close
    return close.code


def test_a_socket_may_queue_only_so_much_for_its_client(server):
    flooded = Client(server.port, "echo.localhost", "/flood")
    close = flooded.next()
    flooded.drop()
    assert isinstance(close, CloseConnection) and close.code == 1011, close
    assert "too much data queued" in close.reason, close


def test_a_client_that_breaks_the_protocol_is_cut_off_alone(server):
    """Frames no client may send (unmasked, a reserved opcode): its connection
    ends, the worker hears a close, and the next client is served as before."""
    rogue = Client(server.port, "echo.localhost")
    assert rogue.next() == "welcome"
    rogue.sock.sendall(b"\x83\x05hello")  # unmasked, opcode 3 (reserved)
    ending = rogue.next()
    assert ending is None or isinstance(ending, CloseConnection), ending
    rogue.drop()
    # wsproto answers the broken frame with a close 1002 (protocol error).
    assert wait_for(lambda: '"code":1002' in server.log()), server.log()[-2000:]
    fine = Client(server.port, "echo.localhost")
    assert fine.next() == "welcome"
    fine.send("ok?")
    assert fine.next() == "echo:ok?"
    fine.drop()


def test_the_client_hears_why_its_socket_ends(server):
    assert _closed_by(server, lambda c: c.send(b"x" * (1024 * 1024 + 1))) == 1009  # too big
    assert _closed_by(server, lambda c: c.send("die")) == 1011  # its worker's process died
    # Its worker is redeployed: 1012, come back (to the new version).
    assert _closed_by(server, lambda c: server.deploy("echo", ECHO + "\n# v2\n")) == 1012
    again = Client(server.port, "echo.localhost")
    assert again.next() == "welcome"
    again.send("still")
    assert again.next() == "echo:still"
    again.drop()


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def test_a_durable_object_chat_room_hibernates_its_sockets(server):
    alice = Client(server.port, "chat.localhost", "/join/lobby/alice")
    assert alice.next() == '{"joined": "alice", "count": 1}'
    bob = Client(server.port, "chat.localhost", "/join/lobby/bob")
    assert bob.next() == '{"joined": "bob", "count": 2}'
    assert alice.next() == '{"joined": "bob", "count": 2}'
    alice.send("hello")
    expected = '{"from": "alice", "text": "hello", "tags": ["alice"]}'
    assert alice.next() == expected and bob.next() == expected
    # The object is evicted when idle (0.3 s here); the sockets stay open and
    # the next message builds a new instance that still has them, attachments too.
    assert wait_for(lambda: "dobject.evicted" in server.log()), server.log()[-2000:]
    # Its auto-response outlives the instance too: a ping gets its pong, and
    # nobody else hears of it (webSocketMessage did not run), nor is the room
    # woken: as Cloudflare's "without waking your Durable Object", no
    # constructor runs (it did, with its side effects, on every ping).
    built = server.request("/built/lobby", host="chat.localhost").json()
    alice.send("ping")
    assert alice.next() == "pong"
    assert server.request("/built/lobby", host="chat.localhost").json() == built
    assert server.request("/pinged/lobby", host="chat.localhost").json() == [True, False]
    bob.send("still here")
    expected = '{"from": "bob", "text": "still here", "tags": ["bob"]}'
    assert alice.next() == expected and bob.next() == expected
    # A client that leaves reaches webSocketClose; the room counts one socket.
    bob.close(1001, "going away")
    assert isinstance(bob.next(), CloseConnection)
    bob.drop()
    def count():
        return server.request("/count/lobby", host="chat.localhost").json()

    result = wait_for(lambda: (r := count())["closed"] and r)
    assert result == {"open": 1, "closed": ["bob", 1001, True]}, result
    # One that just drops its connection: a close with 1006, not clean.
    alice.drop()
    result = wait_for(lambda: (r := count())["open"] == 0 and r)
    # (with workerd's reason for it: it was empty)
    assert result == {"open": 0, "closed": ["alice", 1006, False,
                                            "WebSocket disconnected without sending Close frame."]}, result


def test_a_close_without_a_code_has_no_status(server):
    """``close()`` sends a close frame without a status code: the client reads
    1005, and the worker's close listener (the client's answer, empty too)
    1005 and clean, for a worker's socket and a Durable Object's alike."""
    c = Client(server.port, "echo.localhost")
    assert c.next() == "welcome"
    c.send("bye-nocode")
    assert c.next() == ("refused:InvalidAccessError:If you specify a WebSocket close reason, "
                        "you must also specify a code.")
    close = c.next()
    assert isinstance(close, CloseConnection) and (close.code, close.reason) == (1005, ""), close
    c.drop()
    # The worker's close listener hears the client's answer: 1005 too.
    assert wait_for(lambda: any("websocket.closed" in line and '"code":1005' in line
                                for line in server.log().splitlines())), server.log()[-2000:]

    dana = Client(server.port, "chat.localhost", "/join/den/dana")
    assert dana.next() == '{"joined": "dana", "count": 1}'
    dana.send("leave")
    close = dana.next()
    assert isinstance(close, CloseConnection) and (close.code, close.reason) == (1005, ""), close
    dana.drop()
    result = wait_for(lambda: (r := server.request("/count/den", host="chat.localhost").json())["closed"] and r)
    assert result == {"open": 0, "closed": ["dana", 1005, True]}, result


def test_a_websocket_no_client_gets_is_closed_for_its_worker(server):
    """A worker that takes a Durable Object's 101 and answers something else:
    the object's socket is closed (1006, not clean), and the object hears it."""
    upgrade = {"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "13",
               "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}
    resp = server.request("/drop/attic/carol", host="chat.localhost", headers=upgrade)
    assert (resp.status, resp.text) == (200, "dropped a 101"), resp

    def count():
        return server.request("/count/attic", host="chat.localhost").json()

    result = wait_for(lambda: (r := count())["closed"] and r)
    assert result == {"open": 0, "closed": ["carol", 1006, False, ""]}, result  # no client ever came


def test_what_cannot_be_a_websocket_is_refused_by_name(server):
    plain = server.request("/", host="echo.localhost")
    assert plain.text == "Responses with a WebSocket must have status code 101."  # workerd's RangeError
    unasked = server.request("/unasked", host="echo.localhost")
    assert unasked.status == 500 and b"did not ask for one" in unasked.body, unasked
    # A response that fails as it is sent fails its invocation at once (the
    # dispatcher here turns that into a 502 naming it), not at its wall limit.
    unaccepted = server.request("/unaccepted", host="echo.localhost")
    assert unaccepted.status == 502 and b"was not accepted: call server.accept()" in unaccepted.body
    used = server.request("/used", host="echo.localhost")
    assert used.status == 502 and b"body was already read" in used.body, used


def test_a_message_in_many_fragments_empty_ones_included_arrives_whole(server):
    """Fragments were kept one list entry each: a client's endless empty
    continuation frames (6 bytes each) grew the supervisor's memory for ever
    under the 1 MiB message limit. They are one buffer now, and a message in
    thousands of fragments, empty ones among them, arrives whole, text and
    bytes alike."""
    c = Client(server.port, "echo.localhost")
    assert c.next() == "welcome"
    frames = b"".join(c.ws.send(Message(piece, message_finished=False)) for piece in ["a", ""] * 5000)
    c.sock.sendall(frames + c.ws.send(Message("z", message_finished=True)))
    assert c.next() == "echo:" + "a" * 5000 + "z"
    frames = b"".join(c.ws.send(Message(piece, message_finished=False)) for piece in [b"\x01", b""] * 3000)
    c.sock.sendall(frames + c.ws.send(Message(b"\x02", message_finished=True)))
    assert c.next() == (b"\x01" * 3000 + b"\x02")[::-1]  # the echo worker reverses bytes
    c.drop()


WAITING = '''
import asyncio
from js import WebSocketPair
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        client, server = WebSocketPair.new().object_values()
        server.accept()
        released = asyncio.get_running_loop().create_future()

        async def on_message(event):
            if event.data == "wait":  # waits for the next message, as a JavaScript listener may
                server.send("waiting")
                server.send("released by " + await released)
            elif event.data == "go":
                released.set_result("go")
            else:
                server.send("echo:" + event.data)

        server.addEventListener("message", on_message)
        return Response(None, status=101, web_socket=client)
'''


def test_a_listener_that_awaits_does_not_hold_back_the_sockets_next_messages(server):
    """workerd hands a socket's next message to its listeners without waiting
    for the last listener's promise: a listener awaiting something held back
    every later message, the pings and the close, and one waiting for the
    next message waited until its wall limit."""
    server.deploy("waiting", WAITING)
    c = Client(server.port, "waiting.localhost")
    c.send("wait")
    assert c.next() == "waiting"
    c.send("hi")
    assert c.next() == "echo:hi"  # while "wait" still waits
    c.send("go")
    assert c.next() == "released by go"
    c.close(1000, "done")
    assert isinstance(c.next(), CloseConnection)
    c.drop()


LEAKED = '''
from js import WebSocketPair
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        client, server = WebSocketPair.new().object_values()
        server.accept()
        server.send("welcome")
        if request.url.endswith("/leak"):
            raise ValueError("failed before returning the socket")
        return Response(None, status=101, web_socket=client)
'''


def test_a_socket_no_101_carried_does_not_keep_its_child(tmp_path):
    """A pair accepted and sent on, whose handler then failed: the socket
    stayed in the child for ever, so the child was never idle (never
    trimmed) and 10,000 of them killed it with its live sockets. Closed with
    the invocation that made it, as workerd's pair goes with its request."""
    server = h.start(tmp_path / "state", "[pool]\nidle_timeout_s = 0.5\n")
    try:
        server.deploy("leaked", LEAKED)
        assert server.request("/leak", host="leaked.localhost").status >= 500
        deadline = time.monotonic() + 20
        while not any(e.get("event") == "child.ended" and e.get("script") == "default/leaked"
                      and e.get("reason") == "idle"
                      for e in server.log_events()):
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.1)  # waiting on the log, not touching the child
        c = Client(server.port, "leaked.localhost")  # a socket it returns still works
        assert c.next() == "welcome"
        c.drop()
    finally:
        server.stop()


DETACHED = '''
import asyncio
from js import WebSocketPair
from workers import Response, WorkerEntrypoint

SEEN = []


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/seen"):
            return Response(repr(SEEN))

        async def later():  # a task left running past its request
            await asyncio.sleep(0.05)
            client, server = WebSocketPair.new().object_values()
            try:
                server.accept()
                SEEN.append("accepted")
            except Exception as exc:
                SEEN.append(type(exc).__name__)

        asyncio.ensure_future(later())
        return Response("started")
'''


def test_a_pair_accepted_after_its_request_ended_is_refused(server):
    """A task that outlived its request accepted a pair: the socket could
    never be returned, and it kept its child from ever being idle. workerd
    allows no I/O outside its request; accept() raises there."""
    server.deploy("detached", DETACHED)
    assert server.request("/", host="detached.localhost").text == "started"
    deadline = time.monotonic() + 10
    while (seen := server.request("/seen", host="detached.localhost").text) == "[]":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert seen == "['RuntimeError']", seen
