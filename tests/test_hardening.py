"""Holes a hostile tenant found, attacked for real (issue 11).

A real ``corral serve`` with traces logged, a short ``waitUntil`` deadline
and the default background allowance. Each test is an attack that worked
before its fix: a user worker reaching platform scripts through the SDK's
internals, CPU burnt after the response by a task nobody awaits,
``waitUntil`` work that never ends, a streamed body outliving its wall limit.
Every test ends by checking that the supervisor still serves.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import Corral, status_field
from tests.test_limits import DISPATCHER, call, gone, pid_of

WAIT_UNTIL_MS = 400

SECRET_HOLDER = r'''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("internal secret: " + self.env.TOKEN)
'''

HARMLESS = r'''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("harmless")
'''

LOOPER = r'''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        try:
            r = await self.env.SELF.fetch(request)
            return Response(await r.text())
        except Exception as e:
            return Response("depth stopped: " + str(e))
'''

BURNER = r'''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        while True:
            pass
'''

NIBBLER = r'''
import time
from urllib.parse import parse_qs, urlsplit
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        ms = float(parse_qs(urlsplit(request.url).query)["ms"][0])
        began = time.thread_time()
        while time.thread_time() - began < ms / 1000:
            pass
        return Response("nibbled")
'''

SNEAKY = r'''
import asyncio, json, os, sys
from urllib.parse import parse_qs, urlsplit
from workers import Request, Response, WorkerEntrypoint


async def attempt(coro):
    try:
        r = await coro
        return {"status": r.status, "body": await r.text()}
    except Exception as e:
        return {"error": getattr(e, "name", type(e).__name__), "message": str(e)}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlsplit(request.url).path
        q = {k: v[-1] for k, v in parse_qs(urlsplit(request.url).query).items()}
        if path == "/pid":
            return Response.json({"pid": os.getpid()})
        if path == "/forge":
            stub = self.env.HARMLESS
            runtime = stub._runtime
            child = sys.modules["sandbox.child"]
            results = {}
            for target in ("internal", "dispatch", "harmless-not-really", ""):
                results["service:" + target] = await attempt(runtime.sub_request(
                    "service", Request("http://x/"), binding="HARMLESS", target=target))
                forged = child.Fetcher(runtime, "service", "HARMLESS", target)
                results["fetcher:" + target] = await attempt(forged.fetch("http://x/"))
            results["dispatch-via-service-binding"] = await attempt(runtime.sub_request(
                "dispatch", Request("http://x/"), binding="HARMLESS", target="internal"))
            results["service-via-unknown-binding"] = await attempt(runtime.sub_request(
                "service", Request("http://x/"), binding="NOPE", target="internal"))
            return Response.json(results)
        if path == "/loop":
            return Response(await (await self.env.LOOP.fetch(request)).text())
        if path == "/burn-service":
            return Response.json(await attempt(self.env.BURNER.fetch("http://x/")))
        if path == "/nibble-services":
            out = [await attempt(self.env.NIBBLER.fetch(f"http://x/?ms={q['ms']}"))
                   for _ in range(int(q["n"]))]
            return Response.json(out)
        if path == "/calls":
            out = [await attempt(self.env.HARMLESS.fetch("http://x/")) for _ in range(int(q["n"]))]
            return Response.json(out)
        if path == "/stray":
            # Not waitUntil: a task nobody awaits, burning CPU after the response.
            async def burn():
                await asyncio.sleep(float(q.get("delay", "0.05")))
                while True:
                    pass
            asyncio.get_running_loop().create_task(burn())
            return Response("answered")
        if path == "/nibble":
            # A little CPU after every response: must not add up to unbounded.
            import time as _t
            async def nibble():
                await asyncio.sleep(float(q.get("delay", "0.02")))  # after the response is out
                end = _t.process_time() + float(q["ms"]) / 1000.0
                while _t.process_time() < end:
                    pass
            asyncio.get_running_loop().create_task(nibble())
            return Response("nibbled")
        if path == "/wait-burn":
            def spin():
                while True:
                    pass
            async def burn():
                await asyncio.sleep(0)
                spin()
            self.ctx.waitUntil(burn())
            return Response("answered; now burning in waitUntil")
        if path == "/linger":
            self.ctx.waitUntil(asyncio.sleep(3600))
            return Response("lingering")
        if path == "/linger-hostile":
            async def stubborn():
                while True:
                    try:
                        await asyncio.sleep(3600)
                    except asyncio.CancelledError:
                        pass  # refuses to stop
            self.ctx.waitUntil(stubborn())
            return Response("lingering stubbornly")
        if path == "/drip":
            async def body():
                for _ in range(400):
                    yield b"drip\n"
                    await asyncio.sleep(0.05)
            return Response(body(), headers={"content-type": "text/plain"})
        if path == "/flood":
            # Skip the SDK's log budget: Log and Report frames straight to the channel.
            child = sys.modules["sandbox.child"]
            messages = sys.modules["protocol.messages"]
            runtime = self.env.HARMLESS._runtime
            inv = sys.modules["workers"].current_invocation.get()
            big = "x" * (900 * 1024)
            for i in range(int(q.get("n", "300"))):
                runtime.channel.send(messages.Log(inv, "error", big, 0.0))
                runtime.channel.send(messages.Report(inv, messages.ExceptionInfo("E", big[:400_000], "")))
                await runtime.channel.drain(1 << 16)
            return Response("flooded")
        if path == "/interim":
            r = Response("looks final")
            r.status = int(q.get("status", "100"))  # past the SDK's own check
            return r
        if path == "/proxy":
            from workers import fetch
            return await fetch(q["url"])
        return Response("ok")
'''


SNEAKY_BINDINGS = [{"type": "service", "name": "HARMLESS", "service": "harmless"},
                   {"type": "service", "name": "LOOP", "service": "looper"},
                   {"type": "service", "name": "BURNER", "service": "burner"},
                   {"type": "service", "name": "NIBBLER", "service": "nibbler"}]


@pytest.fixture(scope="module")
def corral(tmp_path_factory):
    state = tmp_path_factory.mktemp("corral-hardening")
    config = state / "corral.toml"
    config.write_text(f"log_invocations = true\n[limits]\nwait_until_ms = {WAIT_UNTIL_MS}\n")
    server = Corral(state / "state", extra_args=["--config", str(config)]).start()
    try:
        server.deploy("internal", SECRET_HOLDER, namespace=None,
                      bindings=[{"type": "secret_text", "name": "TOKEN", "text": "s3cr3t"}])
        server.deploy("harmless", HARMLESS, namespace=None)
        server.deploy("looper", LOOPER, namespace=None,
                      bindings=[{"type": "service", "name": "SELF", "service": "looper"}])
        server.deploy("burner", BURNER, namespace=None)
        server.deploy("nibbler", NIBBLER, namespace=None)
        server.deploy_dispatcher(DISPATCHER)
        server.deploy("sneaky", SNEAKY, bindings=SNEAKY_BINDINGS)
        yield server
    finally:
        server.stop()


def traces(server: Corral) -> list[dict[str, Any]]:
    return [json.loads(line)["trace"] for line in server.log_path.read_text().splitlines()
            if '"event":"invocation"' in line]


def wait_for_trace(server: Corral, match: Callable[[dict[str, Any]], bool],
                   timeout: float = 10.0) -> dict[str, Any]:
    """The first trace event (or nested child event) that ``match`` accepts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for trace in traces(server):
            for event in (trace, *trace.get("children", [])):
                if match(event):
                    return event
        time.sleep(0.05)
    raise AssertionError(f"no such trace event; log:\n{server.log()}")


def healthy(server: Corral) -> None:
    assert server.alive(), server.log()
    assert call(server, "sneaky", "/").text == "ok"


# ---------------------------------------------------------------------------
# 1. a binding's target comes from the stored binding
# ---------------------------------------------------------------------------


def test_service_call_target_is_the_bindings_not_the_childs(corral):
    resp = call(corral, "sneaky", "/forge")
    assert resp.status == 200, (resp, corral.log())
    results = resp.json()
    for key, result in results.items():
        assert "secret" not in json.dumps(result), (key, result)
    for target in ("internal", "dispatch", "harmless-not-really", ""):
        # Whatever the child names, the platform's binding decides: "harmless".
        assert results["service:" + target] == {"status": 200, "body": "harmless"}, results
        assert results["fetcher:" + target] == {"status": 200, "body": "harmless"}, results
    assert "dispatch_namespace binding" in results["dispatch-via-service-binding"]["message"]
    assert "service binding named 'NOPE'" in results["service-via-unknown-binding"]["message"]
    healthy(corral)


def test_service_calls_count_as_subrequests(corral):
    resp = call(corral, "sneaky", "/calls?n=3", {"subRequests": 2})
    assert resp.status == 200, resp
    first, second, third = resp.json()
    assert first == second == {"status": 200, "body": "harmless"}
    assert third["error"] == "exceededSubrequests", third
    event = wait_for_trace(corral, lambda t: t["scriptName"] == "sneaky"
                           and t["event"]["request"]["url"].endswith("/calls?n=3"))
    assert event["subrequests"] == 3, event


def test_a_chain_of_service_calls_stops_at_the_depth_limit(corral):
    resp = call(corral, "sneaky", "/loop")
    assert resp.status == 200, resp
    assert resp.text.startswith("depth stopped: Subrequest depth limit exceeded"), resp.text
    healthy(corral)


def test_a_service_call_runs_within_the_callers_cpu_budget(corral):
    """A platform script called with the platform's 30 s default would let a
    10 ms tenant burn 30 s: the callee gets what the caller has left."""
    resp = call(corral, "sneaky", "/burn-service", {"cpuMs": 40})
    assert resp.status == 200, resp
    assert resp.json()["error"] == "exceededCpu", resp.json()
    healthy(corral)


def test_calls_one_after_another_share_the_callers_cpu_budget(corral):
    """Cloudflare: workers connected by service bindings share the CPU of
    the top-level request. Six calls of 20 ms each under a 50 ms budget:
    each used to get the caller's whole remainder, and all six ran (120 ms of
    CPU for a 50 ms budget, audit F3); now what each call used comes off the
    caller's budget, and the calls (or the caller) stop as over it."""
    resp = call(corral, "sneaky", "/nibble-services?n=6&ms=20", {"cpuMs": 50})
    body = resp.json()
    if resp.status != 200:  # the caller itself was stopped
        assert body["error"] == "exceededCpu", body
    else:
        served = [r for r in body if r.get("status") == 200]
        assert len(served) <= 3, body
        assert any(r.get("error") == "exceededCpu" for r in body), body
    healthy(corral)


# ---------------------------------------------------------------------------
# 2. CPU outside any invocation is bounded; waitUntil CPU is the invocation's
# ---------------------------------------------------------------------------


def test_task_left_burning_after_the_response_is_killed(corral):
    pid = pid_of(corral, "sneaky")
    resp = call(corral, "sneaky", "/stray")
    assert resp.status == 200 and resp.text == "answered"
    assert gone(pid, timeout=10), "the child kept burning CPU after its response"
    # The supervisor reports the death once it has handled it: wait for that.
    event = wait_for_trace(corral, lambda t: t["scriptName"] == "sneaky" and t["event"] is None)
    assert event["outcome"] == "exceededCpu", event
    assert "child.background_cpu_exceeded" in corral.log_path.read_text()
    assert pid_of(corral, "sneaky") != pid  # a fresh child serves the next request
    healthy(corral)


def test_a_little_cpu_after_every_response_does_not_add_up(corral):
    """Idle between requests (the allowance is guarded), the allowance is not
    reset by each request: nibbling 5 ms a time runs out."""
    pid = pid_of(corral, "sneaky")
    for _ in range(200):
        assert call(corral, "sneaky", "/nibble?ms=5").status == 200
        if gone(pid, timeout=0.2):  # idle long enough for the watchdog to guard it
            break
    assert gone(pid, timeout=5), "background CPU after each response was never bounded"
    healthy(corral)


def test_cpu_after_a_response_is_charged_to_the_tenants_requests(corral):
    """Back to back, a task left burning after a response is not free: its CPU
    is on the tenant's invocations (the one that started it, or the next)."""
    assert call(corral, "sneaky", "/nibble?ms=40&delay=0").status == 200
    assert call(corral, "sneaky", "/?after-nibble").status == 200
    events = [wait_for_trace(corral, lambda t, end=end: t["scriptName"] == "sneaky" and t["event"]
                             and t["event"]["request"]["url"].endswith(end))
              for end in ("/nibble?ms=40&delay=0", "/?after-nibble")]
    assert sum(e["cpuTime"] for e in events) >= 30, [e["cpuTime"] for e in events]


def test_wait_until_cpu_is_charged_to_its_invocation(corral):
    resp = call(corral, "sneaky", "/wait-burn", {"cpuMs": 50})
    assert resp.status == 200, resp
    event = wait_for_trace(corral, lambda t: t["scriptName"] == "sneaky"
                           and t["event"] and t["event"]["request"]["url"].endswith("/wait-burn"))
    assert event["outcome"] == "exceededCpu", event
    assert event["response"] if "response" in event else True
    healthy(corral)


# ---------------------------------------------------------------------------
# 3. waitUntil has a deadline
# ---------------------------------------------------------------------------


def test_wait_until_that_never_ends_is_cancelled_at_its_deadline(corral):
    pid = pid_of(corral, "sneaky")
    assert call(corral, "sneaky", "/linger").text == "lingering"
    event = wait_for_trace(corral, lambda t: t["scriptName"] == "sneaky" and t["event"]
                           and t["event"]["request"]["url"].endswith("/linger"))
    assert event["outcome"] == "ok", event
    assert any("waitUntil() tasks did not complete" in log["message"][0] for log in event["logs"]), event
    assert pid_of(corral, "sneaky") == pid, "a cooperative child keeps serving"


def test_wait_until_that_refuses_to_stop_gets_its_child_killed(corral):
    pid = pid_of(corral, "sneaky")
    assert call(corral, "sneaky", "/linger-hostile").status == 200
    assert gone(pid, timeout=10), "a waitUntil that ignores cancellation pinned its process"
    event = wait_for_trace(corral, lambda t: t["scriptName"] == "sneaky" and t["event"]
                           and t["event"]["request"]["url"].endswith("/linger-hostile"))
    assert event["outcome"] == "ok", event  # it did answer; the trace is emitted anyway
    assert "child.wait_until_overrun" in corral.log_path.read_text()
    healthy(corral)


def test_a_stubborn_wait_until_beside_a_finished_request_still_meets_its_deadline(tmp_path):
    """The end of one invocation must not stop the watchdog keeping the
    deadlines of another on the same child. Found in stop 22 (it fails at
    4f46232): with budgets armed in the kernel (limits from the dispatcher),
    the child left the watchdog's set when a request beside a lingering one
    ended, and the lingering ``waitUntil`` pinned its process."""
    config = tmp_path / "corral.toml"
    config.write_text(f"[limits]\nwait_until_ms = {WAIT_UNTIL_MS}\n[observability]\nusage = false\n")
    server = Corral(tmp_path / "state", extra_args=["--config", str(config)]).start()
    try:
        for name, source in (("harmless", HARMLESS), ("looper", LOOPER), ("burner", BURNER),
                             ("nibbler", NIBBLER)):  # each a service SNEAKY_BINDINGS name
            server.deploy(name, source, namespace=None,
                          bindings=[{"type": "service", "name": "SELF", "service": "looper"}]
                          if name == "looper" else None)
        server.deploy_dispatcher(DISPATCHER)
        server.deploy("sneaky", SNEAKY, bindings=SNEAKY_BINDINGS)
        armed = {"cpuMs": 500}  # under PRECISE_BELOW_NS: the kernel keeps it
        pid = pid_of(server, "sneaky")
        assert call(server, "sneaky", "/linger-hostile", armed).status == 200
        assert call(server, "sneaky", "/", armed).text == "ok"  # same child, ends while the other lingers
        assert gone(pid, timeout=10), "a waitUntil beside a finished request pinned its process"
        assert "child.wait_until_overrun" in server.log_path.read_text()
        assert call(server, "sneaky", "/").text == "ok"
    finally:
        server.stop()


def test_retired_child_with_endless_wait_until_dies_at_the_deadline(corral):
    corral.deploy("lingerer", SNEAKY,
                  bindings=SNEAKY_BINDINGS)
    pid = pid_of(corral, "lingerer")
    assert call(corral, "lingerer", "/linger-hostile").status == 200
    corral.deploy("lingerer", SNEAKY + "\n# v2\n",
                  bindings=SNEAKY_BINDINGS)
    assert call(corral, "lingerer", "/").text == "ok"
    assert pid_of(corral, "lingerer") != pid
    assert gone(pid, timeout=10), "the old version's child is pinned by its waitUntil"
    corral.admin("DELETE", "/accounts/local/workers/dispatch/namespaces/default/scripts/lingerer")


# ---------------------------------------------------------------------------
# 5. the wall limit bounds the response body, however it travels
# ---------------------------------------------------------------------------


def read_raw_response(server: Corral, path: str, host: str, headers: dict[str, str]) -> bytes:
    """The whole response as bytes, until the server closes or ends it."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close",
             *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall("\r\n".join(lines).encode())
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    return bytes(data)


@pytest.mark.parametrize("how", ["streamed by the user worker", "passed on from its fetch"])
def test_wall_limit_cuts_a_body_passed_through_by_reference(corral, upstream, how):
    path = "/drip" if how.startswith("streamed") else "/proxy?url=" + upstream.url("/drip?n=400")
    raw = read_raw_response(corral, path, "sneaky.localhost", {"x-limits": json.dumps({"wallMs": 300})})
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw[:300]
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"drip" in body
    # Cut by the user worker's 300 ms, not streamed to the end (20 s):
    # no terminating chunk, and far fewer than 400 chunks.
    assert not body.endswith(b"0\r\n\r\n"), "the body ran to its end despite the wall limit"
    assert body.count(b"drip") < 200, body.count(b"drip")
    event = wait_for_trace(corral, lambda t: t["scriptName"] == "sneaky" and t["event"]
                           and t["event"]["request"]["url"].endswith(path))
    assert event["outcome"] == "exceededWallTime", event
    healthy(corral)


# ---------------------------------------------------------------------------
# the same class elsewhere: what a child sends is bounded by the supervisor
# ---------------------------------------------------------------------------


def supervisor_rss_mb(server: Corral) -> float:
    return status_field(server.proc.pid, "VmRSS") / 1024


def test_log_and_report_frames_past_the_sdk_budget_are_dropped(corral):
    """300 MB of forged log and exception frames: the trace keeps its budget."""
    before = supervisor_rss_mb(corral)
    resp = call(corral, "sneaky", "/flood?n=150")
    assert resp.status == 200 and resp.text == "flooded", resp
    event = wait_for_trace(corral, lambda t: t["scriptName"] == "sneaky" and t["event"]
                           and t["event"]["request"]["url"].endswith("/flood?n=150"))
    assert sum(len(log["message"][0]) for log in event["logs"]) <= 256 * 1024
    assert len(event["exceptions"]) <= 100
    assert all(len(e["message"]) <= 4096 for e in event["exceptions"])
    assert supervisor_rss_mb(corral) - before < 100, "the supervisor kept what the child flooded"
    healthy(corral)


@pytest.mark.parametrize("status", [100, 101, 103, 199])
def test_interim_status_from_a_child_is_refused(corral, status):
    """A 1xx final response would desync a keep-alive connection (and a proxy's pool)."""
    with socket.create_connection(("127.0.0.1", corral.port), timeout=30) as sock:
        request = (f"GET /interim?status={status} HTTP/1.1\r\nHost: sneaky.localhost\r\n\r\n"
                   "GET / HTTP/1.1\r\nHost: sneaky.localhost\r\nConnection: close\r\n\r\n")
        sock.sendall(request.encode())
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    text = data.decode("latin-1")
    assert not text.startswith("HTTP/1.1 1"), text[:200]
    assert text.count("HTTP/1.1 ") == 2, text
    first, second = text.split("HTTP/1.1 ")[1:]
    assert first.startswith("502") or first.startswith("500"), text
    assert second.startswith("200") and second.endswith("ok"), text
