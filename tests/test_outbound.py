"""Outbound control: a tenant's ``fetch`` and the platform's outbound worker.

Everything is real: ``corral serve`` in a subprocess, jailed children, and a
local upstream HTTP server (``tests/upstream.py``) on 127.0.0.1 that records
what actually reached it. Two dispatchers share the namespace ``default``:

* ``dispatch`` (route ``*/*``): no outbound worker, so a tenant's ``fetch``
  is made by the supervisor's own HTTP client;
* ``dispatch_out`` (route ``*.out.localhost/*``): its dispatch-namespace
  binding names the platform script ``egress`` as outbound worker with the
  parameter ``customer_name``, which the dispatcher fills per request from
  the ``x-customer`` header.

The user worker is picked by the first label of the Host header.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time

import pytest

from tests.harness import Corral
from tests.upstream import Upstream, pattern_sha256

SECRET = "s3cr3t-egress-token-7f1c"

DISPATCHER = r'''
import json, time
from workers import PlatformError, Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        host = request.headers.get("host", "")
        name = host.split(":")[0].split(".")[0]
        options = {}
        if request.headers.get("x-limits"):
            options["limits"] = json.loads(request.headers.get("x-limits"))
        if request.headers.get("x-customer") is not None:
            options["outbound"] = {"customer_name": request.headers.get("x-customer")}
        started = time.perf_counter()
        try:
            response = await self.env.dispatcher.get(name, options=options or None).fetch(request)
        except Exception as e:
            return Response.json(
                {"error": getattr(e, "name", type(e).__name__), "message": str(e),
                 "platform_error": isinstance(e, PlatformError),
                 "elapsed_ms": (time.perf_counter() - started) * 1000.0},
                status=502, headers={"x-dispatch-error": "1"})
        response.headers.set("x-elapsed-ms", "%.3f" % ((time.perf_counter() - started) * 1000.0))
        return response
'''

# The platform's outbound worker: blocks a host, rewrites a virtual API host to
# the real upstream with a credential the tenant never holds, forwards the rest.
EGRESS = r'''
from urllib.parse import urlsplit
from workers import Headers, Request, Response, WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        customer = self.env.customer_name
        url = urlsplit(request.url)
        if url.hostname == "localhost":
            return Response(f"egress: {url.hostname} is blocked for {customer}\n", status=403,
                            headers={"x-egress": "blocked"})
        if url.hostname == "api.internal":
            target = self.env.UPSTREAM + "/echo" + url.path + ("?" + url.query if url.query else "")
            headers = Headers(request.headers)
            headers.set("authorization", "Bearer " + self.env.API_TOKEN)
            headers.set("x-customer", str(customer))
            upstream = await fetch(Request(target, method=request.method, headers=headers,
                                           body=request.body))
            upstream.headers.set("x-egress", "rewritten")
            return upstream
        response = await fetch(request)
        response.headers.set("x-egress", "forwarded")
        response.headers.set("x-egress-customer", str(customer))
        return response
'''

# A user worker that runs a list of fetches described in its request body and
# reports everything it could observe.
PROBE = r'''
from workers import Request, Response, WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        plan = await request.json()
        results = []
        for step in plan["steps"]:
            kwargs = {k: step.get(k) for k in ("method", "headers", "body", "redirect")}
            try:
                if step.get("form") == "request":
                    r = await fetch(Request(step["url"], **kwargs))
                else:
                    r = await fetch(step["url"], **kwargs)
                text = await r.text()
                results.append({"status": r.status, "headers": dict(r.headers.items()),
                                "url": r.url, "redirected": r.redirected, "body": text})
            except Exception as e:
                results.append({"error": type(e).__name__, "name": getattr(e, "name", None),
                                "message": str(e)})
        return Response.json({"results": results, "env": sorted(vars(self.env)),
                              "token": getattr(self.env, "API_TOKEN", None)})
'''

NO_SOCKETS = r'''
import asyncio
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        port = int(request.headers.get("x-port"))
        out = {}
        try:
            import socket  # noqa: F401
            out["import_socket"] = "imported"
        except Exception as e:
            out["import_socket"] = type(e).__name__
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /echo/direct-socket HTTP/1.1\r\nhost: x\r\n\r\n")
            await writer.drain()
            out["connect"] = "connected"
        except BaseException as e:
            out["connect"] = type(e).__name__ + ": " + str(e)
        return Response.json(out)
'''

# Streams an upstream body through the child (not handed on by reference).
STREAMER = r'''
from workers import Response, WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        target = request.headers.get("x-target")
        mode = request.headers.get("x-mode", "stream")
        upstream = await fetch(target)
        if mode == "passthrough":
            return upstream
        if mode == "count":
            seen = 0
            try:
                async for chunk in upstream.body:
                    seen += len(chunk)
            except Exception as e:
                return Response.json({"status": upstream.status, "seen": seen,
                                      "error": type(e).__name__, "message": str(e)})
            return Response.json({"status": upstream.status, "seen": seen, "error": None})

        async def relay():
            async for chunk in upstream.body:
                yield chunk

        return Response(relay(), status=upstream.status,
                        headers={"content-type": "application/octet-stream", "x-streamed": "child"})
'''

# Forwards the client's request body to the upstream as it arrives.
UPLOADER = r'''
from workers import Request, Response, WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        target = request.headers.get("x-target")
        if request.headers.get("x-form") == "request":
            upstream = await fetch(Request(target, method="POST", body=request.body,
                                           headers={"content-type": "application/octet-stream"}))
        else:
            upstream = await fetch(target, method="POST", body=request.body,
                                   headers={"content-type": "application/octet-stream"})
        return Response(await upstream.text(), status=upstream.status,
                        headers={"content-type": "application/json"})
'''

SLOW = r'''
import asyncio, time
from workers import Response, WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        target = request.headers.get("x-target")
        timeout = float(request.headers.get("x-timeout", "0.3"))
        started = time.perf_counter()
        try:
            r = await asyncio.wait_for(fetch(target), timeout)
            return Response.json({"status": r.status, "body": await r.text()})
        except BaseException as e:
            if not isinstance(e, Exception):
                raise
            return Response.json({"error": type(e).__name__, "message": str(e),
                                  "name": getattr(e, "name", None),
                                  "elapsed_ms": (time.perf_counter() - started) * 1000.0})
'''


@pytest.fixture(scope="module")
def corral(tmp_path_factory, upstream):
    server = Corral(tmp_path_factory.mktemp("corral-outbound")).start()
    try:
        server.deploy("egress", EGRESS, namespace=None, bindings=[
            {"type": "plain_text", "name": "UPSTREAM", "text": upstream.url("")},
            {"type": "secret_text", "name": "API_TOKEN", "text": SECRET},
        ])
        server.deploy_dispatcher(DISPATCHER)
        server.deploy_dispatcher(
            DISPATCHER, name="dispatch_out", pattern="*.out.localhost/*",
            outbound={"worker": {"service": "egress"}, "params": ["customer_name"]})  # the SDKs' form
        for name, source in [("probe", PROBE), ("nosockets", NO_SOCKETS), ("streamer", STREAMER),
                             ("uploader", UPLOADER), ("slow", SLOW)]:
            server.deploy(name, source)
        yield server
    finally:
        server.stop()


def probe(corral: Corral, steps: list[dict], *, outbound: bool = False,
          customer: str | None = "acme") -> dict:
    host = "probe.out.localhost" if outbound else "probe.localhost"
    headers = {"content-type": "application/json"}
    if outbound and customer is not None:
        headers["x-customer"] = customer
    resp = corral.request("/", host=host, method="POST", body=json.dumps({"steps": steps}),
                          headers=headers)
    assert resp.status == 200, (resp, corral.log())
    return resp.json()


# ---------------------------------------------------------------------------
# fetch made by the supervisor
# ---------------------------------------------------------------------------


def test_fetch_keyword_form_reaches_upstream(corral, upstream):
    out = probe(corral, [{"url": upstream.url("/echo/kw?x=1"), "method": "PUT",
                          "headers": {"x-tenant": "t1", "content-type": "text/plain"},
                          "body": "hello upstream"}])
    result = out["results"][0]
    assert result["status"] == 200, result
    assert result["headers"]["x-upstream"] == "yes"
    echo = json.loads(result["body"])
    assert echo["method"] == "PUT"
    assert echo["path"] == "/echo/kw?x=1"
    assert echo["headers"]["x-tenant"] == "t1"
    assert echo["body"] == "hello upstream"
    assert echo["body_len"] == len("hello upstream")
    assert upstream.seen("/echo/kw"), "the upstream never saw the request"


def test_fetch_request_form_reaches_upstream(corral, upstream):
    out = probe(corral, [{"url": upstream.url("/echo/reqform"), "form": "request", "method": "POST",
                          "headers": {"x-tenant": "t2"}, "body": "from a Request"}])
    result = out["results"][0]
    assert result["status"] == 200, result
    echo = json.loads(result["body"])
    assert (echo["method"], echo["path"], echo["body"]) == ("POST", "/echo/reqform", "from a Request")
    assert echo["headers"]["x-tenant"] == "t2"


def test_child_has_no_sockets(corral, upstream):
    resp = corral.request("/", host="nosockets.localhost", headers={"x-port": str(upstream.port)})
    assert resp.status == 200, resp
    out = resp.json()
    # The module imports (the import system is no boundary); sockets cannot be made.
    assert out["import_socket"] == "imported", out
    assert out["connect"].startswith("PermissionError"), out
    assert not upstream.seen("/echo/direct-socket")


def test_redirect_chain_is_followed(corral, upstream):
    before = len(upstream.seen("/redirect/"))
    out = probe(corral, [
        {"url": upstream.url("/redirect/5")},
        {"url": upstream.url("/redirect/2"), "redirect": "manual"},
        {"url": upstream.url("/redirect/2"), "redirect": "error"},
    ])
    follow, manual, error = out["results"]
    assert follow["status"] == 200, follow
    assert follow["redirected"] is True
    assert follow["url"] == upstream.url("/echo/final")
    assert json.loads(follow["body"])["path"] == "/echo/final"
    # 5 hops: /redirect/5 .. /redirect/1 each answered 3xx, then /echo/final.
    # and the manual and error ones stop at the first: 5 + 1 + 1.
    assert len(upstream.seen("/redirect/")) - before == 7
    assert manual["status"] == 303  # REDIRECT_CODES[2 % 5]
    assert manual["headers"]["location"] == "/redirect/1"
    assert manual["redirected"] is False
    assert error.get("error") == "NetworkError", error  # a PlatformError that is an OSError
    assert "redirect" in error["message"], error


def test_huge_response_streams_through_tenant(corral, upstream):
    size = 50 * 1024 * 1024
    conn = http.client.HTTPConnection("127.0.0.1", corral.port, timeout=60)
    started = time.perf_counter()
    conn.request("GET", "/", headers={"host": "streamer.localhost",
                                      "x-target": upstream.url(f"/big?n={size}&chunked=1")})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("x-streamed") == "child"
    digest = hashlib.sha256()
    total = 0
    while chunk := resp.read(1 << 20):
        total += len(chunk)
        digest.update(chunk)
    elapsed = time.perf_counter() - started
    conn.close()
    print(f"\n50 MB through a tenant's fetch and its streamed Response: {elapsed:.2f} s "
          f"({size / elapsed / 2**20:.0f} MB/s)")
    assert total == size
    assert digest.hexdigest() == pattern_sha256(size)


def test_huge_response_passed_through_unread(corral, upstream):
    size = 50 * 1024 * 1024
    conn = http.client.HTTPConnection("127.0.0.1", corral.port, timeout=60)
    started = time.perf_counter()
    conn.request("GET", "/", headers={"host": "streamer.localhost", "x-mode": "passthrough",
                                      "x-target": upstream.url(f"/big?n={size}")})
    resp = conn.getresponse()
    assert resp.status == 200
    digest = hashlib.sha256()
    total = 0
    while chunk := resp.read(1 << 20):
        total += len(chunk)
        digest.update(chunk)
    elapsed = time.perf_counter() - started
    conn.close()
    print(f"\n50 MB returned unread (`return await fetch(url)`): {elapsed:.2f} s "
          f"({size / elapsed / 2**20:.0f} MB/s)")
    assert total == size
    assert digest.hexdigest() == pattern_sha256(size)


def test_response_size_cap_declared_length(corral, upstream):
    """An upstream declaring more than the 128 MiB cap: reading the body fails at once."""
    size = 128 * 1024 * 1024 + 1
    started = time.perf_counter()
    resp = corral.request("/", host="streamer.localhost",
                          headers={"x-mode": "count", "x-target": upstream.url(f"/big?n={size}")})
    time.perf_counter() - started
    assert resp.status == 200, resp
    out = resp.json()
    assert out["error"] is not None, out
    assert "exceeds" in out["message"] and "limit" in out["message"], out
    assert out["seen"] < size


def test_response_size_cap_streamed(corral, upstream):
    """A chunked body that grows past the cap is cut off (the tenant's read raises)."""
    size = 128 * 1024 * 1024 + 4 * 1024 * 1024
    started = time.perf_counter()
    resp = corral.request("/", host="streamer.localhost", timeout=60,
                          headers={"x-mode": "count",
                                   "x-target": upstream.url(f"/big?n={size}&chunked=1")})
    elapsed = time.perf_counter() - started
    assert resp.status == 200, resp
    out = resp.json()
    print(f"\nchunked body over the cap: tenant read {out['seen']} bytes then "
          f"{out['error']}: {out.get('message')} ({elapsed:.2f} s)")
    assert out["error"] is not None, out
    assert "limit" in out["message"], out
    assert out["seen"] <= 128 * 1024 * 1024


def test_slow_upstream_times_out_in_tenant(corral, upstream):
    """The outbound client's own read timeout (30 s) is not settable per request;
    what a tenant can do is bound its wait, and Corral must then drop the
    upstream connection (the call is aborted, not left running)."""
    resp = corral.request("/", host="slow.localhost",
                          headers={"x-target": upstream.url("/hang?max=10"), "x-timeout": "0.3"})
    assert resp.status == 200, resp
    out = resp.json()
    assert out.get("error") == "TimeoutError", out
    hung = upstream.seen("/hang")
    assert hung, "the upstream never saw the request"
    assert upstream.wait_for(lambda: upstream.seen("/hang")[-1]["disconnected_after"] is not None,
                             timeout=3), "the upstream connection was left open after the tenant gave up"


def test_slow_upstream_hits_the_platform_timeout(tmp_path, upstream):
    """The platform's own fetch timeout ([outbound] read_timeout_s) ends a call
    to an upstream that never answers, whatever the tenant does."""
    config = tmp_path / "corral.toml"
    config.write_text("[outbound]\nread_timeout_s = 0.4\n")
    server = Corral(tmp_path / "state", extra_args=["--config", str(config)]).start()
    try:
        server.deploy_dispatcher()
        server.deploy("slow", SLOW)
        resp = server.request("/", host="slow.localhost",
                              headers={"x-target": upstream.url("/hang?max=10"), "x-timeout": "30"})
        out = resp.json()
        assert out.get("error") == "NetworkError", out  # a PlatformError that is an OSError
        assert out.get("name") == "FetchTimeout", out
        assert "timed out" in out["message"], out
    finally:
        server.stop()


def test_slow_upstream_answers_within_wait(corral, upstream):
    resp = corral.request("/", host="slow.localhost",
                          headers={"x-target": upstream.url("/slow?delay=0.2"), "x-timeout": "5"})
    out = resp.json()
    assert out == {"status": 200, "body": "slow done\n"}


@pytest.mark.parametrize("form", ["keywords", "request"])
def test_request_body_streams_to_upstream(corral, upstream, form):
    size = 5 * 1024 * 1024
    body = bytes(range(256)) * (size // 256)
    resp = corral.request("/", host="uploader.localhost", method="POST", body=body, timeout=60,
                          headers={"x-target": upstream.url(f"/echo/upload-{form}"), "x-form": form,
                                   "content-type": "application/octet-stream"})
    assert resp.status == 200, resp
    echo = resp.json()
    assert echo["method"] == "POST"
    assert echo["body_len"] == size
    assert echo["sha256"] == hashlib.sha256(body).hexdigest()


# ---------------------------------------------------------------------------
# the outbound worker
# ---------------------------------------------------------------------------


def test_outbound_worker_forwards(corral, upstream):
    for customer in ("acme", "globex"):
        out = probe(corral, [{"url": upstream.url(f"/echo/fwd-{customer}"),
                              "headers": {"x-tenant": "t1"}}], outbound=True, customer=customer)
        result = out["results"][0]
        assert result["status"] == 200, result
        assert result["headers"].get("x-egress") == "forwarded", result
        assert result["headers"].get("x-egress-customer") == customer, result
        echo = json.loads(result["body"])
        assert echo["path"] == f"/echo/fwd-{customer}"
        assert echo["headers"]["x-tenant"] == "t1"
        assert len(upstream.seen(f"/echo/fwd-{customer}")) == 1


def test_outbound_worker_rewrites_and_injects_credentials(corral, upstream):
    out = probe(corral, [{"url": "http://api.internal/v1/items?q=1", "method": "POST",
                          "headers": {"content-type": "text/plain", "x-tenant": "t3"},
                          "body": "item"}], outbound=True, customer="acme")
    result = out["results"][0]
    assert result["status"] == 200, result
    assert result["headers"].get("x-egress") == "rewritten"
    echo = json.loads(result["body"])
    assert echo["path"] == "/echo/v1/items?q=1"
    assert echo["method"] == "POST" and echo["body"] == "item"
    assert echo["headers"]["x-customer"] == "acme"
    assert echo["headers"]["x-tenant"] == "t3"
    assert echo["has_authorization"] is True
    # The credential reached the upstream ...
    seen = upstream.seen("/echo/v1/items")
    assert seen and seen[-1]["authorization"] == f"Bearer {SECRET}"
    # ... and nothing the tenant can observe holds it.
    assert SECRET not in json.dumps(out)
    assert out["token"] is None and "API_TOKEN" not in out["env"]


def test_outbound_worker_blocks_by_host(corral, upstream):
    out = probe(corral, [{"url": upstream.url("/echo/blocked", host="localhost")},
                         {"url": upstream.url("/echo/allowed")}], outbound=True, customer="acme")
    blocked, allowed = out["results"]
    assert blocked["status"] == 403, blocked
    assert blocked["headers"].get("x-egress") == "blocked"
    assert "blocked for acme" in blocked["body"]
    assert not upstream.seen("/echo/blocked"), "a blocked request reached the upstream"
    assert allowed["status"] == 200 and allowed["headers"].get("x-egress") == "forwarded"


def test_outbound_worker_subrequests_count_against_tenant_limit(corral, upstream):
    resp = corral.request("/", host="probe.out.localhost", method="POST",
                          headers={"x-customer": "acme", "x-limits": json.dumps({"subRequests": 2}),
                                   "content-type": "application/json"},
                          body=json.dumps({"steps": [{"url": upstream.url(f"/echo/outsub-{i}")}
                                                     for i in range(3)]}))
    assert resp.status == 200, resp
    results = resp.json()["results"]
    assert [r.get("status") for r in results[:2]] == [200, 200], results
    assert all(r["headers"].get("x-egress") == "forwarded" for r in results[:2])
    assert results[2].get("error") == "PlatformError", results
    assert "subrequest" in results[2]["message"].lower(), results
    assert len(upstream.seen("/echo/outsub-")) == 2


@pytest.mark.parametrize("outbound", [False, True], ids=["direct", "outbound"])
def test_every_redirect_hop_is_a_subrequest(corral, upstream, outbound):
    """Cloudflare's limits page: "Each subrequest in a redirect chain counts
    against this limit." One fetch of a three-redirect chain sent four
    requests upstream under a limit of two, directly or through the
    outbound worker."""
    before = len(upstream.seen("/redirect/")) + len(upstream.seen("/echo/final"))
    headers = {"x-limits": json.dumps({"subRequests": 2}), "content-type": "application/json"}
    if outbound:
        headers["x-customer"] = "acme"
    resp = corral.request("/", host="probe.out.localhost" if outbound else "probe.localhost", method="POST",
                          headers=headers, body=json.dumps({"steps": [{"url": upstream.url("/redirect/3")}]}))
    assert resp.status == 200, resp
    (result,) = resp.json()["results"]
    assert result.get("error") == "PlatformError" and "subrequest" in result["message"].lower(), result
    assert len(upstream.seen("/redirect/")) + len(upstream.seen("/echo/final")) - before == 2


def test_outbound_worker_params_are_not_visible_to_tenant(corral, upstream):
    out = probe(corral, [{"url": upstream.url("/echo/params")}], outbound=True, customer="acme")
    assert "customer_name" not in out["env"], out["env"]


def test_outbound_worker_sees_every_redirect_hop(corral, upstream):
    """A tenant's fetch follows redirects as fetch does; with an outbound worker
    each hop is a subrequest delivered to it (as workerd re-issues a followed
    redirect through the same fetcher)."""
    out = probe(corral, [{"url": upstream.url("/redirect/3")},
                         {"url": upstream.url("/redirect/2"), "redirect": "manual"},
                         {"url": upstream.url("/redirect/2"), "redirect": "error"}],
                outbound=True, customer="acme")
    result, manual, error = out["results"]
    assert result["status"] == 200, result
    assert result["redirected"] is True
    assert result["url"] == upstream.url("/echo/final")
    assert result["headers"].get("x-egress") == "forwarded"
    assert json.loads(result["body"])["path"] == "/echo/final"
    # The same redirect modes as a direct fetch (supervisor.calls.redirects).
    assert manual["status"] == 303 and manual["redirected"] is False, manual
    assert error.get("error") == "NetworkError", error  # a PlatformError that is an OSError
    assert "redirect mode is 'error'" in error["message"], error


def test_outbound_worker_streams_request_body(corral, upstream):
    size = 5 * 1024 * 1024
    body = bytes(range(256)) * (size // 256)
    resp = corral.request("/", host="uploader.out.localhost", method="POST", body=body, timeout=60,
                          headers={"x-target": "http://api.internal/upload-out", "x-customer": "acme",
                                   "content-type": "application/octet-stream"})
    assert resp.status == 200, resp
    echo = resp.json()
    assert echo["path"] == "/echo/upload-out"
    assert echo["body_len"] == size
    assert echo["sha256"] == hashlib.sha256(body).hexdigest()
    assert echo["has_authorization"] is True


FETCHER = '''
from workers import Response, WorkerEntrypoint, fetch

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        target = request.headers.get("x-target")
        response = await fetch(target)
        return Response(await response.text())
'''


def test_a_tenants_fetch_url_stays_out_of_the_operators_log(tmp_path):
    """httpx logs each request's URL at INFO ("HTTP Request: GET ...?token=..."):
    a tenant's URLs, query strings and their secrets with them, are not the
    operator's log's to keep."""
    with Upstream() as up:
        server = Corral(tmp_path / "state").start()
        try:
            server.deploy("fetcher", FETCHER, namespace=None)
            server.route("fetcher.localhost/*", "fetcher")
            secret = "tenant-only-7d2e9a"
            resp = server.request("/", host="fetcher.localhost",
                                  headers={"x-target": up.url(f"/echo/x?token={secret}")})
            assert resp.status == 200, (resp, server.log())
            assert up.requests, "the fetch reached the upstream"
        finally:
            server.stop()
        log = server.log_path.read_text(errors="replace")
        assert secret not in log, [line for line in log.splitlines() if secret in line]


HOP = r'''
import json
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        # The tenant's own dispatch binding, to its own namespace, asking for more.
        stub = self.env.SELF.get("probe", options={"limits": {"subRequests": 1000}})
        return await stub.fetch(request)
'''


def test_a_tenants_own_dispatch_keeps_the_outbound_worker_and_its_limits(corral, upstream):
    """A user worker dispatching to its own namespace: its callee's fetches
    went straight to the network, past the platform's outbound worker, and
    with the limits the tenant asked for, not what the platform gave it."""
    corral.deploy("hop", HOP, bindings=[{"type": "dispatch_namespace", "name": "SELF", "namespace": "default"}])
    resp = corral.request("/", host="hop.out.localhost", method="POST",
                          headers={"x-customer": "acme", "x-limits": json.dumps({"subRequests": 3}),
                                   "content-type": "application/json"},
                          body=json.dumps({"steps": [{"url": upstream.url("/echo/hop-blocked", host="localhost")}]
                                          + [{"url": upstream.url(f"/echo/hop-{i}")} for i in range(4)]}))
    assert resp.status == 200, (resp, corral.log()[-2000:])
    results = resp.json()["results"]
    assert results[0]["status"] == 403 and results[0]["headers"].get("x-egress") == "blocked", results[0]
    # The hop's call is one of its 3; the callee has the 2 left: 1 blocked + 1 through.
    assert [r.get("status") for r in results[1:2]] == [200], results
    assert all(r.get("error") == "PlatformError" for r in results[2:]), results
    assert not upstream.seen("/echo/hop-blocked")
