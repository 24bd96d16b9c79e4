"""Gaps found by deploying Cloudflare's python-workers-examples unmodified.

Each test is tenant code of its own that uses the API an example used, over
a real ``corral serve`` (tests/harness.py) with the bundled dispatcher; the
examples themselves are not copied here.

* a URL with its scheme's default port (urllib3, so ``requests`` too,
  writes ``https://host:443/``) reaches the outbound worker as JavaScript's
  URL reads it back: ``https://host/``, the host in lower case;
* ``fetch()`` with ``Upgrade: websocket`` opens a socket to the server: the
  worker accepts the 101's ``webSocket`` and uses it, or returns the response
  and its client talks to the server through it (it was refused);
* ``js.WebSocket.new(url)`` opens a WebSocket to a server: ``open``, the
  server's messages and ``close`` reach the listeners (``error`` and a
  1006 close when it cannot connect, or when the platform has an outbound
  worker, which such a socket would bypass); a Durable Object's listeners
  run as the object's invocations, with its storage;
* a Durable Object's synchronous ``storage.kv`` serves any number of calls
  in a child's life (each is a ``run_sync`` wait).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Message, TextMessage
from wsproto.events import Request as WsRequest

from tests.harness import Corral
from tests.test_cf_gaps import NS, deploy

#: The platform's outbound worker: answers every subrequest itself with the
#: URL it was given, so no upstream (nor the internet) is needed.
ECHO_URL = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(request.url)
'''




@pytest.fixture(scope="module")
def corral(tmp_path_factory):
    server = Corral(tmp_path_factory.mktemp("cf-examples")).start()
    try:
        server.deploy("echo_url", ECHO_URL, namespace=None)
        server.deploy_dispatcher(namespace=NS, outbound={"worker": {"service": "echo_url"}})
        server.deploy_dispatcher(namespace=NS, name="dispatch_plain", pattern="*.plain.localhost/*")
        yield server
    finally:
        server.stop()


# -- 1. default ports ---------------------------------------------------------------------------

DEFAULT_PORTS = '''
import urllib3
from workers import Request, Response, WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        seen = [await (await fetch(url)).text() for url in (
            "https://Shop.Example:443/cart?item=1", "http://shop.example:80", "http://shop.example:8080/x")]
        seen.append(urllib3.PoolManager().request("GET", "https://shop.example/pay").data.decode())
        return Response.json({"seen": seen, "own": Request("https://Shop.Example:443").url})
'''


def test_a_default_port_is_dropped_from_urls_as_javascript_does(corral):
    deploy(corral, "ports", DEFAULT_PORTS, ("urllib3",))
    resp = corral.request("/", host="ports.localhost")
    assert resp.status == 200, (resp, corral.log())
    assert resp.json() == {
        "seen": ["https://shop.example/cart?item=1", "http://shop.example/",
                 "http://shop.example:8080/x", "https://shop.example/pay"],
        "own": "https://shop.example/",
    }


# -- 2. outbound WebSockets ---------------------------------------------------------------------

# -- 3. a WebSocket to a server -----------------------------------------------------------------

class EchoServer:
    """A WebSocket server on 127.0.0.1 (wsproto over plain sockets, a thread
    per connection): text comes back as ``echo:...``; a binary message makes
    it close with 4000 "done"; it takes the subprotocol ``chat`` if offered."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handshakes: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        with conn:
            while True:
                data = conn.recv(65536)
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, WsRequest):
                        self.handshakes.append(event.target)
                        chosen = "chat" if "chat" in event.subprotocols else None
                        conn.sendall(ws.send(AcceptConnection(subprotocol=chosen)))
                    elif isinstance(event, TextMessage):
                        conn.sendall(ws.send(Message("echo:" + event.data)))
                    elif isinstance(event, BytesMessage):
                        conn.sendall(ws.send(CloseConnection(4000, "done")))
                    elif isinstance(event, CloseConnection):
                        if ws.state is ConnectionState.REMOTE_CLOSING:
                            conn.sendall(ws.send(event.response()))
                        return
                if not data:
                    return

    def close(self) -> None:
        self.sock.close()


TO_SERVER = '''
import js
from pyodide.ffi import create_proxy
from workers import Response, WorkerEntrypoint

SEEN = []


def watch(ws, name):
    def on_open(event):
        SEEN.append([name, "open", ws.readyState, ws.protocol])
        ws.send("hello")

    async def on_message(event):
        SEEN.append([name, "message", event.data])
        ws.send(b"that will do")

    def on_error(event):
        SEEN.append([name, "error", ws.readyState])

    def on_close(event):
        SEEN.append([name, "close", event.code, event.reason, ws.readyState])

    for kind, listener in (("open", on_open), ("message", on_message), ("error", on_error),
                           ("close", on_close)):
        ws.addEventListener(kind, create_proxy(listener))


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/seen"):
            return Response.json(SEEN)
        name = request.url.rsplit("/", 1)[-1]
        ws = js.WebSocket.new(request.headers.get("x-target"), ["chat", "other"])
        watch(ws, name)
        try:
            ws.send("too early")
        except Exception as e:
            SEEN.append([name, "send", getattr(e, "name", ""), ws.readyState])
        return Response("opening")
'''


def seen_until(corral: Corral, host: str, done: Callable[[list], bool]) -> list:
    deadline = time.monotonic() + 10
    while True:
        seen = corral.request("/seen", host=host).json()
        if done(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def test_a_worker_opens_a_websocket_to_a_server(corral):
    server = EchoServer()
    try:
        deploy(corral, "toserver", TO_SERVER)
        resp = corral.request("/up", host="toserver.plain.localhost",
                              headers={"x-target": f"ws://127.0.0.1:{server.port}/feed?from=1"})
        assert (resp.status, resp.text) == (200, "opening"), (resp, corral.log())
        seen = seen_until(corral, "toserver.plain.localhost", lambda s: any(e[1] == "close" for e in s))
        assert seen == [
            ["up", "send", "InvalidStateError", 0],
            ["up", "open", 1, "chat"],
            ["up", "message", "echo:hello"],
            ["up", "close", 4000, "done", 3],
        ], (seen, corral.log())
        assert server.handshakes == ["/feed?from=1"]

        # Nothing listens there: the socket errs, then closes (1006).
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            dead = unused.getsockname()[1]
        corral.request("/down", host="toserver.plain.localhost",
                       headers={"x-target": f"ws://127.0.0.1:{dead}/"})
        # Through a dispatcher with an outbound worker: refused (it would bypass it).
        corral.request("/viaout", host="toserver.localhost",
                       headers={"x-target": f"ws://127.0.0.1:{server.port}/"})
        seen = seen_until(corral, "toserver.plain.localhost",
                          lambda s: sum(e[1] == "close" for e in s) == 3)
        for name in ("down", "viaout"):
            assert [e for e in seen if e[0] == name] == [
                [name, "send", "InvalidStateError", 0],
                [name, "error", 0],
                [name, "close", 1006, "", 3],
            ], (seen, corral.log())
        assert "outbound worker" in corral.log()
    finally:
        server.close()



def test_a_websocket_to_a_private_address_is_refused_by_the_egress_policy(tmp_path):
    """The supervisor opens a worker's WebSocket as it makes a fetch: under
    the egress policy, which by default refuses loopback and private
    addresses. The server listening there never sees a handshake."""
    server = EchoServer()
    corral = Corral(tmp_path / "state", allow_private_egress=False).start()
    try:
        corral.deploy_dispatcher(namespace=NS, name="dispatch_plain", pattern="*.plain.localhost/*")
        deploy(corral, "toserver", TO_SERVER)
        corral.request("/private", host="toserver.plain.localhost",
                       headers={"x-target": f"ws://127.0.0.1:{server.port}/"})
        seen = seen_until(corral, "toserver.plain.localhost", lambda s: any(e[1] == "close" for e in s))
        assert [e[1:] for e in seen] == [["send", "InvalidStateError", 0], ["error", 0],
                                         ["close", 1006, "", 3]], (seen, corral.log())
        assert server.handshakes == []
    finally:
        corral.stop()
        server.close()

FEED_OBJECT = '''
import js
from pyodide.ffi import create_proxy
from workers import DurableObject, Response, WorkerEntrypoint


class Feed(DurableObject):
    """Keeps a socket to a feed open; what arrives goes to the object's storage."""

    async def fetch(self, request):
        if request.url.endswith("/open"):
            self.ws = js.WebSocket.new(request.headers.get("x-target"))
            self.ws.addEventListener("open", create_proxy(lambda event: self.ws.send("first")))
            self.ws.addEventListener("message", create_proxy(self.on_message))
            self.ws.addEventListener("close", create_proxy(self.on_close))
            return Response("opening")
        return Response.json({"got": await self.ctx.storage.get("got"),
                              "closed": self.ctx.storage.kv.get("closed")})

    async def on_message(self, event):
        got = await self.ctx.storage.get("got") or []
        await self.ctx.storage.put("got", [*got, event.data])
        self.ws.send(b"enough")  # the server closes with 4000

    def on_close(self, event):
        self.ctx.storage.kv.put("closed", event.code)  # synchronous storage, as the object's too


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        stub = self.env.FEEDS.get(self.env.FEEDS.idFromName("one"))
        return await stub.fetch(request)
'''


def test_a_durable_objects_websocket_listeners_use_its_storage(corral):
    server = EchoServer()
    try:
        corral.deploy("feedobj", FEED_OBJECT, namespace=NS, bindings=[
            {"type": "durable_object_namespace", "name": "FEEDS", "class_name": "Feed"}])
        resp = corral.request("/open", host="feedobj.plain.localhost",
                              headers={"x-target": f"ws://127.0.0.1:{server.port}/"})
        assert (resp.status, resp.text) == (200, "opening"), (resp, corral.log())
        deadline = time.monotonic() + 10
        while True:
            resp = corral.request("/state", host="feedobj.plain.localhost")
            state = resp.json() if resp.status == 200 else {"status": resp.status, "body": resp.text}
            if state.get("closed") is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert state == {"got": ["echo:first"], "closed": 4000}, (state, corral.log())
    finally:
        server.close()


# -- 4. synchronous storage, many times over ----------------------------------------------------

COUNTER_OBJECT = '''
from workers import DurableObject, Response, WorkerEntrypoint


class Tally(DurableObject):
    def bump(self):
        count = (self.ctx.storage.kv.get("count") or 0) + 1
        self.ctx.storage.kv.put("count", count)
        return count


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        stub = self.env.TALLY.get(self.env.TALLY.idFromName("one"))
        count = 0
        for _ in range(int(request.headers.get("x-times"))):
            count = await stub.bump()
        return Response(str(count))
'''


def test_a_durable_objects_synchronous_storage_serves_many_calls(corral):
    """Each ``storage.kv`` call from synchronous code is a wait of its own
    (sandbox.run_sync): some 150 of them in a child's life killed it."""
    corral.deploy("tally", COUNTER_OBJECT, namespace=NS, bindings=[
        {"type": "durable_object_namespace", "name": "TALLY", "class_name": "Tally"}])
    for expected in (100, 200, 300):
        resp = corral.request("/", host="tally.localhost", headers={"x-times": "100"})
        assert (resp.status, resp.text) == (200, str(expected)), (resp, corral.log()[-3000:])


BAD_URL = '''
import js
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        out = []
        for url in ("ws://[::1", "ftp://host/"):
            try:
                js.WebSocket.new(url)
                out.append("opened")
            except Exception as e:
                out.append([type(e).__name__, getattr(e, "name", "")])
        return Response.json(out)
'''


def test_a_websocket_url_that_does_not_parse_is_a_syntax_error(corral):
    """As JavaScript's ``new WebSocket(url)`` throws: a SyntaxError, not
    urllib's ValueError (an unclosed IPv6 host) leaking out of the runtime."""
    deploy(corral, "badurl", BAD_URL)
    got = corral.request("/", host="badurl.plain.localhost").json()
    assert got == [["JsException", "SyntaxError"], ["JsException", "SyntaxError"]], got


MANY_SOCKETS = '''
import js
from pyodide.ffi import create_proxy
from workers import Response, WorkerEntrypoint

COUNTS = {"open": 0, "error": 0}
SOCKETS = []


def count(kind):
    def listener(event):
        COUNTS[kind] += 1
    return create_proxy(listener)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/counts"):
            return Response.json(COUNTS)
        for _ in range(int(request.headers.get("x-count"))):
            ws = js.WebSocket.new(request.headers.get("x-target"))
            ws.addEventListener("open", count("open"))
            ws.addEventListener("error", count("error"))
            SOCKETS.append(ws)
        return Response("opened")
'''


def test_a_sandbox_has_a_bounded_number_of_websockets_to_servers(corral):
    """Each socket to a server holds a supervisor file descriptor past the
    request that opened it (and its subrequest limit): one sandbox holds at
    most MAX_SERVER_SOCKETS; the others err, as a refused connection does."""
    from supervisor.edge.websockets import MAX_SERVER_SOCKETS

    server = EchoServer()
    try:
        deploy(corral, "manysockets", MANY_SOCKETS)
        extra = 20
        resp = corral.request("/", host="manysockets.plain.localhost",
                              headers={"x-target": f"ws://127.0.0.1:{server.port}/",
                                       "x-count": str(MAX_SERVER_SOCKETS + extra)})
        assert resp.text == "opened", resp
        deadline = time.monotonic() + 30
        while True:
            counts = corral.request("/counts", host="manysockets.plain.localhost").json()
            if counts["open"] + counts["error"] >= MAX_SERVER_SOCKETS + extra or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert counts == {"open": MAX_SERVER_SOCKETS, "error": extra}, counts
        assert "too many WebSockets to servers are open" in corral.log_path.read_text()
        assert corral.alive() and corral.admin("GET", "/metrics").status == 200
    finally:
        server.close()


def _resetting_server() -> socket.socket:
    """Accepts the handshake, sends one message and resets the connection
    (RST): the supervisor's answer to that message meets a reset socket."""
    import base64
    import hashlib
    import struct

    srv = socket.create_server(("127.0.0.1", 0))

    def talk(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        key = next(line.split(b":", 1)[1].strip() for line in data.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n\x81\x05hello")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=talk, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv


def test_a_server_that_resets_a_websocket_leaves_the_supervisor_up(corral):
    """Writing to a server's reset connection was an exception out of the
    socket's task, which stopped the supervisor."""
    server = _resetting_server()
    try:
        deploy(corral, "resetws", TO_SERVER)
        for i in range(3):
            resp = corral.request(f"/reset{i}", host="resetws.plain.localhost",
                                  headers={"x-target": f"ws://127.0.0.1:{server.getsockname()[1]}/"})
            assert resp.text == "opening", resp
        seen = seen_until(corral, "resetws.plain.localhost",
                          lambda s: sum(e[1] == "close" for e in s) == 3)
        assert sorted(e[0] for e in seen if e[1] == "close") == ["reset0", "reset1", "reset2"], seen
        assert all(e[2] == 1006 for e in seen if e[1] == "close"), seen
        assert corral.alive() and corral.admin("GET", "/metrics").status == 200
    finally:
        server.close()


DIES_WITH_A_SOCKET = '''
import os
import sys

import js
from workers import Response, WorkerEntrypoint
import workers


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        js.WebSocket.new(request.headers.get("x-target"))  # its handshake never gets an answer
        if request.url.endswith("/forge"):
            # A frame the SDK never sends (the socket's number again): a protocol violation.
            messages = sys.modules["protocol.messages"]
            runtime = workers._runtime
            inv = workers.current_invocation.get()
            runtime.send(messages.WsConnect(1, inv, request.headers.get("x-target"), []))
        else:
            os._exit(3)
        return Response("sent")
'''


@pytest.mark.parametrize("how", ["forge", "exit"])
def test_a_child_that_dies_with_a_websocket_connecting_leaves_the_supervisor_up(corral, how):
    """The socket's close went to the dying child as an invocation, after the
    pool had dropped it from the warm set: a KeyError that stopped corral."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    try:
        deploy(corral, f"dies{how}", DIES_WITH_A_SOCKET)
        resp = corral.request(f"/{how}", host=f"dies{how}.plain.localhost",
                              headers={"x-target": f"ws://127.0.0.1:{silent.getsockname()[1]}/"})
        assert resp.status >= 500, resp
        time.sleep(0.5)
        assert corral.alive(), corral.log()
        assert corral.admin("GET", "/metrics").status == 200
        assert "Traceback" not in corral.log_path.read_text()
    finally:
        silent.close()


FETCH_UPGRADE = '''
from workers import Response, WorkerEntrypoint, fetch

SEEN = []


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/seen"):
            return Response.json(SEEN)
        target = request.headers.get("x-target")
        if "/proxy?port=" in request.url:
            port = request.url.rsplit("=", 1)[1]
            # The client's own upgrade, relayed to the server.
            return await fetch(f"http://127.0.0.1:{port}/proxy", headers=request.headers)
        answer = await fetch(target, headers={"Upgrade": "websocket", "Sec-WebSocket-Protocol": "chat"})
        ws = answer.webSocket
        if ws is None:
            return Response(f"no socket: {answer.status}")
        try:
            ws.send("before accept")
        except Exception as e:
            SEEN.append(["send", getattr(e, "name", type(e).__name__)])
        ws.accept()
        ws.addEventListener("message", lambda event: SEEN.append(["message", event.data]))
        ws.addEventListener("close", lambda event: SEEN.append(["close", event.code, event.reason]))
        ws.send("hello")
        ws.send(b"enough")
        return Response(f"{answer.status} {answer.headers.get('sec-websocket-protocol')}")
'''


def test_fetch_with_an_upgrade_opens_a_websocket_the_worker_uses_or_relays(corral, upstream):
    """fetch() with Upgrade: websocket answers a 101 whose webSocket the worker
    accepts and uses, or returns for its client to talk through (it was
    refused); a server that answers otherwise answers with its status."""
    from tests.test_websockets import Client

    server = EchoServer()
    try:
        deploy(corral, "fetchws", FETCH_UPGRADE)
        host = "fetchws.plain.localhost"
        resp = corral.request("/use", host=host, headers={"x-target": f"http://127.0.0.1:{server.port}/use"})
        assert (resp.status, resp.text) == (200, "101 chat"), (resp, corral.log())
        seen = seen_until(corral, host, lambda s: any(e[0] == "close" for e in s))
        assert seen == [["send", "TypeError"], ["message", "echo:hello"], ["close", 4000, "done"]], seen
        plain = corral.request("/use", host=host, headers={"x-target": upstream.url("/echo/not-a-socket")})
        assert plain.text == "no socket: 200", plain.text
        client = Client(corral.port, host, f"/proxy?port={server.port}")
        client.sock.settimeout(10)
        client.send("through the worker")
        assert client.next() == "echo:through the worker"
        client.send(b"bye")
        close = client.next()
        assert isinstance(close, CloseConnection) and (close.code, close.reason) == (4000, "done"), close
        client.drop()
        assert server.handshakes == ["/use", "/proxy"], server.handshakes
    finally:
        server.close()

