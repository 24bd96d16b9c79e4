"""Cloudflare's loop limit (CF-EW-Via) across Corral's own listener.

A worker whose ``fetch()`` reaches Corral again (its own listener, as a
public address would in production; here 127.0.0.1, allowed by the egress
policy for the test) started a new client request with fresh limits each
time: a chain went 100 deep, and one request fanned out without end (red
team 5). Cloudflare: "A Worker cannot call itself or another Worker more
than 16 times ... the CF-EW-Via header's value is an integer that indicates
how many invocations are left ... If the count reaches zero, a 1019 error
is returned." A dispatcher and its user worker are two invocations each
pass, so a chain through both stops after 8.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import Corral

#: The user worker "127" (the example dispatcher names the user worker by the
#: Host's first label): it fetches itself through the listener, one level
#: deeper each time, and says what count each level saw. Its own
#: ``cf-ew-via: 16`` must not raise the count.
LOOPER = '''from workers import Response, WorkerEntrypoint, fetch

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        port = request.url.split("port=")[1]
        seen = request.headers.get("cf-ew-via") or "-"
        r = await fetch(f"http://127.0.0.1:{port}/?port={port}", headers={"cf-ew-via": "16"})
        return Response(seen + " " + await r.text(), status=r.status)
'''


@pytest.fixture()
def server(tmp_path: Path):
    corral = Corral(tmp_path / "state", config='[outbound]\nallow_hosts = ["127.0.0.1"]\n').start()
    corral.deploy_dispatcher()
    yield corral
    corral.stop()


def test_a_worker_fetching_itself_through_the_listener_stops_at_the_loop_limit(server: Corral) -> None:
    server.deploy("127", LOOPER)
    r = server.request(f"/?port={server.port}", host="127.0.0.1", timeout=60)
    words = r.text.split()
    # What each pass saw: none from the client, then 14, 12, ... 2; the
    # ninth is refused at the edge with Cloudflare's 1019.
    assert words[:8] == ["-", "14", "12", "10", "8", "6", "4", "2"], r.text
    assert r.status == 508 and "error code: 1019" in r.text, r.text
    assert "ingress.loop_limit" in server.log()


def test_a_client_may_lower_the_count_but_not_raise_it(server: Corral) -> None:
    server.deploy("127", LOOPER)
    r = server.request(f"/?port={server.port}", host="127.0.0.1", headers={"cf-ew-via": "0"})
    assert (r.status, r.text) == (508, "error code: 1019\nWorker hit loop limit: this request passed through "
                                       "Workers too many times\n"), r
    words = server.request(f"/?port={server.port}", host="127.0.0.1", headers={"cf-ew-via": "4"},
                           timeout=60).text.split()
    assert words[:2] == ["4", "2"] and "1019" in words, words
    words = server.request(f"/?port={server.port}", host="127.0.0.1", headers={"cf-ew-via": "999"},
                           timeout=60).text.split()
    assert words[:2] == ["999", "14"], words


#: Opens a WebSocket to itself through the listener; the accepting pass
#: sends the count it was handed, which the opening pass answers with.
WS_LOOPER = '''import asyncio
import js
from pyodide.ffi import create_proxy
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.headers.get("upgrade", "").lower() == "websocket":
            client, server = js.WebSocketPair.new().object_values()
            server.accept()
            server.send(request.headers.get("cf-ew-via") or "-")
            server.addEventListener("close", create_proxy(lambda e: server.close()))
            return Response(None, status=101, web_socket=client)
        port = request.url.split("port=")[1]
        heard = asyncio.get_running_loop().create_future()
        ws = js.WebSocket.new(f"ws://127.0.0.1:{port}/?port={port}")
        ws.addEventListener("message", create_proxy(lambda e: heard.done() or heard.set_result(e.data)))
        count = await asyncio.wait_for(heard, 20)
        ws.close()
        return Response(count)
'''


def test_a_websocket_a_worker_opens_carries_the_count_too(server: Corral) -> None:
    """A connect is a subrequest like a fetch: it went out without the count,
    and a worker opening sockets to itself recursed past the limit."""
    server.deploy("127", WS_LOOPER)
    r = server.request(f"/?port={server.port}", host="127.0.0.1", timeout=30)
    assert (r.status, r.text) == (200, "14"), r
