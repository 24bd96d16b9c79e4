"""``dispatcher.get(name, options=...)`` is validated where the value enters.

A bad option is the dispatcher's own TypeError naming the field, raised in
the calling worker before anything is sent; a hostile dispatcher that skips
the SDK and sends an out-of-range value in a well-formed frame gets a clean
error back. Neither kills the dispatcher's process, so requests in flight on
it are unharmed.
"""

from __future__ import annotations

import json
import threading

import pytest

from tests.harness import Corral
from tests.test_limits import DISPATCHER, TENANT, call

RAW_DISPATCHER = r'''
import json, sys
from workers import Request, Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        # Skip the SDK's checks: a frame with whatever limits the header says.
        messages = sys.modules["protocol.messages"]
        raw = json.loads(request.headers.get("x-raw-limits"))
        limits = messages.Limits(**raw)
        runtime = self.env.dispatcher._runtime
        try:
            r = await runtime.sub_request("dispatch", Request("http://x/"), binding="dispatcher",
                                          target="victim", limits=limits)
            return Response.json({"status": r.status, "body": await r.text()})
        except Exception as e:
            return Response.json({"error": getattr(e, "name", type(e).__name__), "message": str(e)})
'''


@pytest.fixture(scope="module")
def corral(tmp_path_factory):
    server = Corral(tmp_path_factory.mktemp("corral-options")).start()
    try:
        server.deploy_dispatcher(DISPATCHER)
        server.deploy("victim", TENANT)
        server.deploy("rawdispatch", RAW_DISPATCHER, namespace=None,
                      bindings=[{"type": "dispatch_namespace", "name": "dispatcher",
                                 "namespace": "default"}])
        server.route("raw.localhost/*", "rawdispatch")
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("limits, field, words", [
    ({"cpuMs": "50"}, "cpuMs", "must be a number"),
    ({"cpu_ms": -1}, "cpu_ms", "positive"),
    ({"subRequests": 2.5}, "subRequests", "whole number"),
    ({"wallMs": True}, "wallMs", "must be a number"),
    ({"memoryMb": float("inf")}, "memoryMb", "positive finite"),
    ({"cpuMz": 5}, "cpuMz", "unknown"),
])
def test_bad_limits_raise_type_error_in_the_dispatcher(corral, limits, field, words):
    # A slow request in flight on the same dispatcher child must survive.
    slow: dict = {}
    thread = threading.Thread(target=lambda: slow.update(
        resp=call(corral, "victim", "/sleep?ms=400")))
    thread.start()
    header = json.dumps(limits) if limits.get("memoryMb") != float("inf") else '{"memoryMb": 1e999}'
    resp = corral.request("/", host="victim.localhost", headers={"x-limits": header})
    thread.join(30)
    out = resp.json()
    assert resp.status == 502 and out["type"] == "TypeError", out
    assert field in out["message"] and words in out["message"], out
    assert slow["resp"].status == 200, slow
    assert "protocol violation" not in corral.log_path.read_text()


@pytest.mark.parametrize("raw", [{"cpu_ms": -5.0}, {"cpu_ms": float("nan")}, {"wall_ms": 0.0},
                                 {"sub_requests": -1}, {"memory_mb": 0}])
def test_out_of_range_values_in_a_forged_frame_are_a_clean_error(corral, raw):
    header = json.dumps(raw)  # NaN travels as JSON's NaN, which json.loads takes
    resp = corral.request("/", host="raw.localhost", headers={"x-raw-limits": header})
    assert resp.status == 200, (resp, corral.log())
    out = resp.json()
    assert out.get("error") == "TypeError", out
    assert "must be a positive finite number" in out["message"], out
    assert "protocol violation" not in corral.log_path.read_text()
