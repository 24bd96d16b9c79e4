"""Live tails as ``wrangler tail`` opens them, against a real `corral serve`:
a tail made through Cloudflare's API (the official SDK's
``client.workers.scripts.tail``), then its WebSocket on the TCP admin
listener, spoken as wrangler speaks it (the ``trace-v1`` subprotocol, one
unmasked message, pings), filtered as wrangler's filters ask."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from cloudflare import Cloudflare
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, RejectConnection, RejectData, TextMessage
from wsproto.events import Request as WsRequest

from tests.harness import with_tcp_admin

A = "/client/v4/accounts/local"
CODE = '''from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        print("seen", request.method)
        return Response("ok", status=201 if request.method == "POST" else 200)
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    corral = with_tcp_admin(tmp_path_factory.mktemp("tails")).start()
    corral.deploy("plat", CODE, namespace=None)
    corral.route("plat.test/*", "plat")
    corral.deploy("other", CODE, namespace=None)
    corral.route("other.test/*", "other")
    yield corral
    corral.stop()


@pytest.fixture(scope="module")
def cf(server):
    token = server.admin("POST", "/accounts/local/corral/tokens", {"name": "tails", "scope": "admin"})
    client = Cloudflare(api_token=token.json()["result"]["value"], max_retries=0,
                        base_url=f"http://127.0.0.1:{server.tcp_port}/client/v4")
    yield client
    client.close()


class Socket:
    """A tail's WebSocket, as wrangler's ``ws`` client opens it."""

    def __init__(self, server, url: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.tcp_port), timeout=10)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(WsRequest(host="127.0.0.1", target=url.split(str(server.tcp_port), 1)[1],
                                                 subprotocols=["trace-v1"])))
        self.pending: list = []

    def events(self) -> list:
        data = self.sock.recv(65536)
        if not data:
            return [None]
        self.ws.receive_data(data)
        return list(self.ws.events())

    def next(self, kind):
        while True:
            while self.pending:
                event = self.pending.pop(0)
                if isinstance(event, kind) or event is None:
                    return event
            self.pending = self.events()

    def send_unmasked(self, text: str) -> None:
        """As wrangler sends its ``{"debug": ...}``: RFC 6455 says a client masks, wrangler does not."""
        payload = text.encode()
        self.sock.sendall(bytes([0x81, len(payload)]) + payload)


def test_wrangler_tail_streams_the_scripts_events_through_its_filters(server, cf):
    tail = cf.workers.scripts.tail.create("plat", account_id="local", extra_body={"filters": [
        {"method": ["POST"]}, {"outcome": ["ok", "exception", "exceededCpu", "exceededMemory", "unknown"]}]})
    assert tail.url.startswith(f"ws://127.0.0.1:{server.tcp_port}/client/v4/accounts/local/workers/tails/")
    listed = httpx.get(f"http://127.0.0.1:{server.tcp_port}{A}/workers/scripts/plat/tails",
                       headers={"authorization": f"Bearer {cf.api_token}"}).json()["result"]
    assert [t["id"] for t in listed] == [tail.id]
    ws = Socket(server, tail.url)  # no credentials: the URL's id is the tail's
    assert ws.next(AcceptConnection).subprotocol == "trace-v1"
    ws.send_unmasked(json.dumps({"debug": False}))
    ws.sock.sendall(ws.ws.send(Ping(b"wrangler tail ping")))
    assert ws.next(Pong).payload == b"wrangler tail ping"
    server.request("/skipped", host="plat.test")  # a GET: not what the filter asks for
    server.request("/not-this-script", host="other.test", method="POST")
    server.request("/wanted", host="plat.test", method="POST")
    event = json.loads(ws.next(TextMessage).data)
    assert (event["scriptName"], event["event"]["request"]["url"], event["event"]["response"]["status"]) == (
        "plat", "http://plat.test/wanted", 201)
    assert event["logs"][0]["message"] == ["seen POST"]
    # Deleted (as wrangler does on Ctrl-C): the socket is closed from here.
    cf.workers.scripts.tail.delete(tail.id, account_id="local", script_name="plat")
    closed = ws.next(CloseConnection)
    assert (closed.code, closed.reason) == (1000, "tail ended")
    ws.sock.close()
    again = Socket(server, tail.url)
    refused = again.next(RejectConnection)
    assert refused.status_code == 404
    body = b""
    while not isinstance(event := again.next(RejectData), type(None)):
        body += event.data
        if event.body_finished:
            break
    assert b"no such tail" in body


def test_a_tail_is_made_only_with_a_token_and_for_a_deployed_script(server, cf):
    base = f"http://127.0.0.1:{server.tcp_port}{A}/workers"
    assert httpx.post(f"{base}/scripts/plat/tails", json={}).status_code == 401
    headers = {"authorization": f"Bearer {cf.api_token}"}
    missing = httpx.post(f"{base}/scripts/nobody/tails", json={}, headers=headers)
    assert missing.status_code == 404 and "nobody" in missing.text
    bad = httpx.post(f"{base}/scripts/plat/tails", json={"filters": [{"colour": ["red"]}]}, headers=headers)
    assert bad.status_code == 400 and "'colour' is not one Corral knows" in bad.text
    for body in ([1, 2], {"filters": "all"}, {"filters": [{"outcome": ["sideways"]}]}):
        bad = httpx.post(f"{base}/scripts/plat/tails", json=body, headers=headers)
        assert bad.status_code == 400 and ("filters" in bad.text or "sideways" in bad.text), bad.text
    made = httpx.post(f"{base}/scripts/plat/tails", json={}, headers=headers).json()["result"]
    plain = httpx.get(made["url"].replace("ws://", "http://"))  # not an upgrade
    assert plain.status_code == 400 and "WebSocket" in plain.text
    assert httpx.delete(f"{base}/scripts/plat/tails/{made['id']}", headers=headers).status_code == 200
    assert httpx.delete(f"{base}/scripts/plat/tails/{made['id']}", headers=headers).status_code == 404


def test_wrangler_tail_ip_self_is_the_address_that_asked(server, cf):
    """``wrangler tail --ip self`` sends ``client_ip: ["self"]``, which the
    server replaces with the address the tail request came from (wrangler's
    changeset that added the filter says so); it was refused with a 400."""
    tail = cf.workers.scripts.tail.create("plat", account_id="local",
                                          extra_body={"filters": [{"client_ip": ["self"]}]})
    ws = Socket(server, tail.url)
    assert ws.next(AcceptConnection).subprotocol == "trace-v1"
    ws.send_unmasked(json.dumps({"debug": False}))
    server.request("/from-here", host="plat.test")  # from 127.0.0.1, as the tail request was
    event = json.loads(ws.next(TextMessage).data)
    assert event["event"]["request"]["url"] == "http://plat.test/from-here", event
    cf.workers.scripts.tail.delete(tail.id, account_id="local", script_name="plat")
    ws.sock.close()
