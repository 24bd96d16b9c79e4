"""Dispatch namespaces: dispatchers that route, authenticate, rewrite; namespaces; routes."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from tests.harness import Corral

SHOP = '''
from workers import WorkerEntrypoint, Response
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response.json({"shop": "NAME", "customer": request.headers.get("X-Customer-Id"),
                              "url": request.url})
'''

AUTH_DISPATCHER = '''
from workers import WorkerEntrypoint, Request, Response
TOKENS = {"tok-acme": "acme", "tok-beta": "beta"}

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        token = (request.headers.get("authorization") or "").removeprefix("Bearer ")
        customer = TOKENS.get(token)
        if customer is None:
            return Response("unauthorized\\n", status=401, headers={"www-authenticate": "Bearer"})
        # A new request for the user worker: changed URL, an added header.
        inner = Request(request.url.replace("/api/", "/"), headers=request.headers)
        inner.headers.set("x-customer-id", customer)
        inner.headers.delete("authorization")
        try:
            return await self.env.dispatcher.get(customer).fetch(inner)
        except Exception as e:
            if str(e).startswith("Worker not found"):
                return Response("no such customer worker\\n", status=404)
            raise
'''

REWRITE_DISPATCHER = '''
from workers import WorkerEntrypoint, Response
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        name = request.headers.get("host").split(".")[0]
        try:
            response = await self.env.dispatcher.get(name).fetch(request)
        except Exception as e:
            if str(e).startswith("Worker not found"):
                return Response("not found\\n", status=404)
            return Response.json({"caught": getattr(e, "name", type(e).__name__), "message": str(e)},
                                 status=500)
        text = await response.text()
        headers = dict(response.headers.items())
        headers["x-rewritten"] = "1"
        return Response(text.upper(), status=response.status, headers=headers)
'''

TWO_NAMESPACES = '''
from workers import WorkerEntrypoint, Response
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = request.url.split("/", 3)[3]
        ns, _, name = path.partition("/")
        binding = {"a": self.env.A, "b": self.env.B}[ns]
        try:
            return await binding.get(name).fetch(request)
        except Exception as e:
            if str(e).startswith("Worker not found"):
                return Response("missing\\n", status=404)
            raise
'''


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """One server: namespaces a/b, several dispatchers on distinct hosts."""
    c = Corral(tmp_path_factory.mktemp("dispatch")).start()
    for ns in ("a", "b", "customers"):
        assert c.namespace(ns).status == 200
    c.deploy_dispatcher()  # the bundled one, */*, namespace default
    c.deploy_dispatcher(AUTH_DISPATCHER, namespace="customers", name="auth", pattern="auth.test/*")
    c.deploy_dispatcher(REWRITE_DISPATCHER, name="rewrite", pattern="*.rewrite.test/*")
    c.deploy("two", TWO_NAMESPACES, namespace=None, bindings=[
        {"type": "dispatch_namespace", "name": "A", "namespace": "a"},
        {"type": "dispatch_namespace", "name": "B", "namespace": "b"},
    ])
    c.route("two.test/*", "two")
    c.deploy("shop", SHOP.replace("NAME", "shop-in-a"), namespace="a")
    c.deploy("shop", SHOP.replace("NAME", "shop-in-b"), namespace="b")
    c.deploy("acme", SHOP.replace("NAME", "acme"), namespace="customers")
    yield c
    c.stop()


def test_dispatcher_routes_by_subdomain(platform: Corral) -> None:
    platform.deploy("shop", SHOP.replace("NAME", "default-shop"))
    resp = platform.request("/x", host="shop.localhost")
    assert resp.status == 200 and resp.json()["shop"] == "default-shop"


def test_unknown_worker_404(platform: Corral) -> None:
    assert platform.request("/", host="ghost.localhost").status == 404
    assert platform.request("/", host="ghost.rewrite.test").status == 404


def test_authenticating_dispatcher(platform: Corral) -> None:
    assert platform.request("/api/orders", host="auth.test").status == 401
    bad = platform.request("/api/orders", host="auth.test", headers={"Authorization": "Bearer nope"})
    assert bad.status == 401
    ok = platform.request("/api/orders", host="auth.test", headers={"Authorization": "Bearer tok-acme"})
    assert ok.status == 200, ok
    data = ok.json()
    assert data["shop"] == "acme"
    assert data["customer"] == "acme", "the header the dispatcher added reached the user worker"
    assert data["url"] == "http://auth.test/orders", "the rewritten URL reached the user worker"
    # beta is a valid token without a deployed worker: the dispatcher maps it to 404.
    missing = platform.request("/api/x", host="auth.test", headers={"Authorization": "Bearer tok-beta"})
    assert missing.status == 404


def test_dispatcher_rewrites_response(platform: Corral) -> None:
    platform.deploy("hello", 'from workers import Response\n'
                             'async def on_fetch(request, env):\n'
                             '    return Response("hello there", headers={"x-from": "user"})\n')
    resp = platform.request("/", host="hello.rewrite.test")
    assert resp.status == 200
    assert resp.text == "HELLO THERE"
    assert resp.headers["x-rewritten"] == "1"
    assert resp.headers["x-from"] == "user"


def test_user_worker_exception_reaches_dispatcher(platform: Corral) -> None:
    platform.deploy("raiser", '''
from workers import WorkerEntrypoint
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        raise KeyError("no such order")
''')
    caught = platform.request("/", host="raiser.rewrite.test")
    assert caught.status == 500
    assert caught.json() == {"caught": "KeyError", "message": "'no such order'"}
    # The bundled dispatcher does not catch it: a 500 from Corral, no stack trace.
    plain = platform.request("/", host="raiser.localhost")
    assert plain.status == 500 and "Traceback" not in plain.text and "no such order" not in plain.text


def test_same_name_in_two_namespaces(platform: Corral) -> None:
    a = platform.request("/a/shop", host="two.test")
    b = platform.request("/b/shop", host="two.test")
    assert (a.status, b.status) == (200, 200)
    assert a.json()["shop"] == "shop-in-a"
    assert b.json()["shop"] == "shop-in-b"
    assert platform.request("/a/none", host="two.test").status == 404


def test_namespaces_listed_and_deleted(platform: Corral) -> None:
    names = [n["name"] for n in platform.admin("GET", "/accounts/local/workers/dispatch/namespaces").json()["result"]]
    assert {"default", "a", "b", "customers"} <= set(names)
    assert platform.namespace("temp").status == 200
    platform.deploy("gone", SHOP, namespace="temp")
    resp = platform.admin("DELETE", "/accounts/local/workers/dispatch/namespaces/temp")
    assert resp.status == 200
    resp = platform.admin("GET", "/accounts/local/workers/dispatch/namespaces/temp/scripts/gone")
    assert resp.status == 404


def test_body_passes_through_dispatcher_both_ways(platform: Corral) -> None:
    """The dispatcher forwards request and response untouched: bodies by reference."""
    platform.deploy("mirror", '''
from workers import WorkerEntrypoint, Response
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        # Read first: a streaming echo would need a full-duplex client.
        data = await request.bytes()
        return Response(data, headers={"content-type": "application/octet-stream"})
''')
    body = os.urandom(10 * 1024 * 1024)
    resp = platform.request("/", host="mirror.localhost", method="POST", body=body)
    assert resp.status == 200
    assert hashlib.sha256(resp.body).hexdigest() == hashlib.sha256(body).hexdigest()


def test_routes_most_specific_wins(platform: Corral) -> None:
    platform.deploy("special", 'from workers import Response\n'
                               'async def on_fetch(request, env):\n'
                               '    return Response("special route")\n', namespace=None)
    platform.route("api.special.test/v1/*", "special")
    assert platform.request("/v1/x", host="api.special.test").text == "special route"
    # The same host, another path: the catch-all dispatcher answers.
    assert platform.request("/v2/x", host="api.special.test").status == 404
    routes = platform.admin("GET", "/accounts/local/workers/routes").json()["result"]
    route_id = next(r["id"] for r in routes if r["pattern"] == "api.special.test/v1/*")
    assert platform.admin("DELETE", f"/accounts/local/workers/routes/{route_id}").status == 200
    assert platform.request("/v1/x", host="api.special.test").status == 404


def test_delete_while_requests_arrive(platform: Corral) -> None:
    platform.deploy("ephemeral", SHOP.replace("NAME", "ephemeral"))
    statuses: list[int] = []
    stop = threading.Event()
    seen = {200: threading.Event(), 404: threading.Event()}

    def hammer() -> None:
        while not stop.is_set():
            status = platform.request("/", host="ephemeral.localhost").status
            statuses.append(status)
            if status in seen:
                seen[status].set()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    assert seen[200].wait(10), "the script never answered before the delete"
    resp = platform.admin("DELETE", "/accounts/local/workers/dispatch/namespaces/default/scripts/ephemeral")
    assert resp.status == 200
    seen[404].wait(10)
    stop.set()
    for t in threads:
        t.join()
    assert statuses.count(200) > 0 and statuses.count(404) > 0
    assert set(statuses) <= {200, 404}, f"only 200 or 404 while deleting, saw {set(statuses)}"
    assert platform.request("/", host="ephemeral.localhost").status == 404
    assert platform.alive()


def test_tenant_api_round_out(platform: Corral) -> None:
    platform.deploy("api", '''
from workers import WorkerEntrypoint, Request, Response, Headers
import asyncio, json

SEEN = []

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/later"):
            return Response.json({"seen": SEEN})
        if request.url.endswith("/redirect"):
            return Response.redirect("https://example.com/next", status=307)
        copy = request.clone()
        data = await request.json()
        again = await copy.text()
        h = Headers({"X-One": "1"})
        h.append("x-one", "2")

        async def background():
            await asyncio.sleep(0.2)
            SEEN.append(data["n"])

        self.ctx.waitUntil(background())

        async def stream():
            yield b"["
            yield json.dumps({"data": data, "again": again, "method": request.method == "POST",
                              "ct": request.headers["Content-Type"], "h": h.get("x-one"),
                              "has": "content-type" in request.headers}).encode()
            yield b"]"

        return Response(stream(), status=201, headers={"content-type": "application/json"})
''')
    resp = platform.request("/", host="api.localhost", method="POST", body='{"n": 7}',
                            headers={"Content-Type": "application/json"})
    assert resp.status == 201, resp
    [out] = resp.json()
    assert out == {"data": {"n": 7}, "again": '{"n": 7}', "method": True, "ct": "application/json",
                   "h": "1, 2", "has": True}
    time.sleep(0.4)
    assert platform.request("/later", host="api.localhost").json() == {"seen": [7]}, \
        "waitUntil work outlived the response"
    redirect = platform.request("/redirect", host="api.localhost")
    assert redirect.status == 307 and redirect.headers["location"] == "https://example.com/next"
