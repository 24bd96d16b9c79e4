"""Gaps found by deploying Cloudflare's python-workers-examples unmodified.

Each test is tenant code of its own that uses the API an example used, over
a real ``corral serve`` (tests/harness.py) with the bundled dispatcher; the
examples themselves are not copied here.

* a URL with its scheme's default port (urllib3, so ``requests`` too,
  writes ``https://host:443/``) reaches the outbound worker as JavaScript's
  URL reads it back: ``https://host/``, the host in lower case;
* an outbound WebSocket (``js.WebSocket.new(url)``, ``fetch()`` with
  ``Upgrade: websocket``), which Corral does not have yet, fails with an
  error that says so (not one about Pyodide, nor a plain GET sent on).
"""

from __future__ import annotations

import json
import textwrap

import pytest

from supervisor.admin import multipart
from tests.harness import Corral

NS = "default"

#: The platform's outbound worker: answers every subrequest itself with the
#: URL it was given, so no upstream (nor the internet) is needed.
ECHO_URL = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(request.url)
'''


def deploy(c: Corral, name: str, source: str, requirements: tuple[str, ...] = ()) -> None:
    """Upload one user worker, with a requirement part per package (wrangler's shape)."""
    metadata = {"main_module": "worker.py", "bindings": []}
    parts = [multipart.Part(name="metadata", content_type="application/json",
                            data=json.dumps(metadata).encode()),
             multipart.Part(name="worker.py", filename="worker.py", content_type="text/x-python",
                            data=textwrap.dedent(source).encode())]
    parts += [multipart.Part(name=r, filename=r, content_type="text/x-python-requirement", data=b"")
              for r in requirements]
    ctype, body = multipart.encode(parts)
    resp = c.admin("PUT", f"/accounts/local/workers/dispatch/namespaces/{NS}/scripts/{name}", body, ctype)
    assert resp.status == 200, f"deploy {name} failed: {resp.status} {resp.text}\n{c.log()}"


@pytest.fixture(scope="module")
def corral(tmp_path_factory):
    server = Corral(tmp_path_factory.mktemp("cf-examples")).start()
    try:
        server.deploy("echo_url", ECHO_URL, namespace=None)
        server.deploy_dispatcher(namespace=NS, outbound={"worker": {"service": "echo_url"}})
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

OUTBOUND_SOCKET = '''
import js
from workers import Response, WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        errors = []
        try:
            js.WebSocket.new("wss://feed.example/subscribe")
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
        try:
            await fetch("https://feed.example/subscribe", headers={"Upgrade": "websocket"})
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
        return Response.json(errors)
'''


def test_an_outbound_websocket_is_refused_with_an_error_naming_it(corral):
    deploy(corral, "outws", OUTBOUND_SOCKET)
    resp = corral.request("/", host="outws.localhost")
    assert resp.status == 200, (resp, corral.log())
    errors = resp.json()
    assert len(errors) == 2, errors
    for error in errors:
        assert "outbound WebSocket" in error and "not supported by Corral" in error, error
        assert "Pyodide" not in error, error
