"""Issue 16, the points test_observability.py leaves out.

Trace events of queue consumers and Durable Objects (with Cloudflare's event
shapes), ``corral tail`` colour on a terminal and JSON lines off one, usage
retention, and OpenTelemetry configured through the standard
``OTEL_EXPORTER_OTLP_*`` variables, with its collector hanging, and absent.
Every server is a real ``corral serve``; waits are polls with deadlines.
"""

from __future__ import annotations

import datetime
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from tests import storage_helpers as h
from tests.harness import REPO, Corral, default_sigint
from tests.test_durable_objects import DO, DO_TENANT
from tests.test_observability import Collector, LiveTailReader, attrs, spans, wait_for
from tests.test_queues import CONSUMER, CONSUMERS, SEEN, Q

HELLO = r'''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        print("hello was called")
        return Response("hello")
'''

MAIN_CONFIG = """
[observability]
usage_flush_s = 0.5

[observability.otlp]
schedule_delay_ms = 100
"""


def start(state_dir, config: str, env: dict[str, str] | None = None) -> Corral:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "gaps.toml"
    path.write_text(config)
    # Only what the test sets: no OTEL_* of the environment running the tests.
    clean = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
    server = Corral(state_dir / "state", extra_args=["--config", str(path)],
                    env={**dict.fromkeys(clean, ""), **(env or {})})
    return server.start()


@pytest.fixture(scope="module")
def corral(tmp_path_factory, collector):
    """OTLP configured by the environment alone (no endpoint in the config file)."""
    server = start(tmp_path_factory.mktemp("gaps-main"), MAIN_CONFIG,
                   env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_SERVICE_NAME": "corral-gaps"})
    try:
        server.namespace("default")
        server.deploy_dispatcher(h.DISPATCHER)
        server.deploy("counter", DO_TENANT, bindings=[DO, h.KV])
        h.deploy(server, "producer", [Q])
        server.deploy("consumer", CONSUMER, bindings=[SEEN], extra_metadata=CONSUMERS)
        server.deploy("hello", HELLO)
        yield server
    finally:
        server.stop()


def run(server: Corral, script: str, code: str) -> tuple[Any, str]:
    """The eval tenant's result and the request id."""
    resp = server.request("/", host=f"{script}.localhost", method="POST", body=code)
    assert resp.status == 200, (resp, server.log()[-3000:])
    result = resp.json()
    assert "ok" in result, result
    return result["ok"], resp.headers["x-corral-request-id"]


def next_matching(tail: LiveTailReader, predicate, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        event = tail.next()  # the socket's own timeout bounds each wait
        if predicate(event):
            return event
    raise AssertionError(f"no {what} on the live tail")


# ---------------------------------------------------------------------------
# 1. queue consumers and Durable Objects produce trace events
# ---------------------------------------------------------------------------


def test_queue_consumer_invocation_has_a_queue_trace_event(corral, collector):
    with LiveTailReader(corral, "script=consumer") as tail:
        run(corral, "producer", 'await env.Q.send({"traced": 1})\nreturn 1')
        event = next_matching(tail, lambda e: "request" not in (e.get("event") or {}), "queue event")
    assert event["scriptName"] == "consumer" and event["dispatchNamespace"] == "default"
    assert event["outcome"] == "ok"
    # Cloudflare's TraceItemQueueEventInfo: the queue's name and the batch's size.
    assert event["event"] == {"queue": "jobs", "batchSize": 1}
    # It is exported over OTLP too, as a span of its own kind.
    found = wait_for(lambda: [s for s in spans(collector) if s.name == "queue consumer"], what="a queue span")
    assert attrs(found[0])["corral.script"] == "consumer"


def test_durable_object_rpc_and_fetch_have_trace_events(corral):
    code = """
stub = env.COUNTER.getByName("traced")
await stub.increment(2)
resp = await stub.fetch("https://do.example/path", method="POST", body="x")
return resp.status
"""
    with LiveTailReader(corral, "script=counter") as tail:
        status, rid = run(corral, "counter", code)
        assert status == 201
        event = next_matching(tail, lambda e: e.get("requestId") == rid, "the caller's event")
    assert event["outcome"] == "ok"
    children = event["children"]
    assert len(children) == 2, children
    rpc, fetch = children
    for child in children:
        assert child["scriptName"] == "counter" and child["outcome"] == "ok"
        assert child["executionModel"] == "durableObject" and child["entrypoint"] == "Counter"
        assert child["requestId"] == rid
    # Cloudflare's TraceItemJsRpcEventInfo, and a fetch event for the object's fetch.
    assert rpc["event"] == {"rpcMethod": "increment"}
    assert fetch["event"]["request"]["method"] == "POST"
    assert fetch["event"]["request"]["url"] == "https://do.example/path"
    assert fetch["event"]["response"] == {"status": 201}


def test_a_durable_object_alarm_has_cloudflares_alarm_event(corral):
    with LiveTailReader(corral, "script=counter") as tail:
        before = time.time() * 1000
        run(corral, "counter", 'return await env.COUNTER.getByName("traced-alarm").arm(50)')
        event = next_matching(tail, lambda e: "scheduledTime" in (e.get("event") or {}), "an alarm event")
    # Cloudflare's TraceItemAlarmEventInfo: when the alarm was set to fire, a
    # Date, which JSON (wrangler tail's AlarmEvent) writes as an ISO string.
    assert event["executionModel"] == "durableObject" and event["outcome"] == "ok"
    when = datetime.datetime.fromisoformat(event["event"]["scheduledTime"].replace("Z", "+00:00"))
    assert before - 1 <= when.timestamp() * 1000 <= time.time() * 1000


# ---------------------------------------------------------------------------
# 2. corral tail: colour on a terminal, JSON lines elsewhere
# ---------------------------------------------------------------------------


def tail_env(server: Corral) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    return {**env, "PYTHONPATH": str(REPO), "CORRAL_ADMIN_SOCKET": server.socket_path}


def read_until(server: Corral, fd: int, done, what: str) -> bytes:
    """Call hello until the CLI (subscribed at some point) has printed ``done``."""
    out = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not done(out):
        server.request("/", host="hello.localhost")
        while select.select([fd], [], [], 0.3)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # a pty whose other side closed
                chunk = b""
            if not chunk:
                break
            out += chunk
            if done(out):
                break
    assert done(out), f"no {what}: {out!r}"
    return out


def stop_cli(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_corral_tail_is_coloured_on_a_terminal(corral):
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "tail", "hello"], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=subprocess.DEVNULL, env=tail_env(corral), cwd=str(REPO),
                            preexec_fn=default_sigint)
    os.close(slave)
    try:
        out = read_until(corral, master, lambda b: b"hello was called" in b, "pretty event")
    finally:
        stop_cli(proc)
        os.close(master)
    text = out.decode()
    assert "\x1b[32mOk\x1b[0m" in text  # the outcome in green
    assert "\x1b[1mGET http://hello.localhost/\x1b[0m" in text  # the head in bold
    assert "(log) hello was called" in text
    assert not text.lstrip().startswith("{")


def test_corral_tail_prints_plain_json_lines_off_a_terminal(corral):
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "tail", "hello"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=tail_env(corral),
                            cwd=str(REPO), preexec_fn=default_sigint)
    try:
        out = read_until(corral, proc.stdout.fileno(), lambda b: b"\n" in b, "JSON line")
    finally:
        stop_cli(proc)
    assert b"\x1b[" not in out
    first = out.split(b"\n")[0]
    event = json.loads(first)
    assert event["scriptName"] == "hello" and event["outcome"] == "ok"


# ---------------------------------------------------------------------------
# 4(a) and 4(d): OTLP from OTEL_EXPORTER_OTLP_* alone; spans of binding calls
# ---------------------------------------------------------------------------


def resources(collector: Collector) -> list[dict[str, Any]]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    out = []
    for body in collector.bodies("/v1/traces"):
        for resource in ExportTraceServiceRequest.FromString(body).resource_spans:
            out.append(attrs(resource.resource))
    return out


def test_otlp_configured_by_the_standard_environment_variables(corral, collector):
    resp = corral.request("/", host="hello.localhost")
    assert resp.status == 200
    trace_id = bytes.fromhex(resp.headers["x-corral-request-id"])
    found = wait_for(lambda: [s for s in spans(collector) if s.trace_id == trace_id and s.name == "fetch hello"],
                     what="the request's span at the receiver")
    assert attrs(found[0])["corral.namespace"] == "default"
    assert any(r.get("service.name") == "corral-gaps" for r in resources(collector))  # OTEL_SERVICE_NAME
    assert "otel.exporting" in corral.log() and "OTEL_EXPORTER_OTLP_* environment" in corral.log()


def test_binding_calls_produce_spans(corral, collector):
    _, rid = run(corral, "counter", 'await env.KV.put("k", "v")\nreturn await env.KV.get("k")')
    trace_id = bytes.fromhex(rid)
    worker = wait_for(lambda: [s for s in spans(collector) if s.trace_id == trace_id and s.name == "fetch counter"],
                      what="the worker's span")[0]

    def binding_spans():
        return [s for s in spans(collector) if s.trace_id == trace_id and s.parent_span_id == worker.span_id
                and "kv" in (s.name + json.dumps(attrs(s), default=str)).lower()]
    found = wait_for(lambda: len(binding_spans()) >= 2 and binding_spans(), timeout=5,
                     what="spans of the KV calls")
    assert sorted(s.name for s in found) == ["kv_namespace get", "kv_namespace put"], [s.name for s in found]
    assert all(attrs(s)["cloudflare.binding.name"] == "KV" for s in found), [attrs(s) for s in found]


# ---------------------------------------------------------------------------
# 3 and 4(c): usage retention; no endpoint, no exporter
# ---------------------------------------------------------------------------


def test_usage_retention_drops_old_buckets_and_no_endpoint_builds_no_exporter(tmp_path):
    from supervisor.observability.usage import Rollup, UsageStore

    state = tmp_path / "state"
    state.mkdir()
    now_minute = int(time.time()) // 60 * 60
    old, recent = now_minute - 2 * 86400, now_minute - 3600
    seeded = UsageStore(str(state / "usage.db"))
    rows = {}
    for minute in (old, recent):
        rollup = Rollup()
        rollup.add("ok", 1.0, 2.0, 0)
        rows[("script", minute, "", "seeded")] = rollup
    seeded.write(rows, prune_before=0)
    seeded.close()

    # Retention of half a day: the 2-day-old bucket is past it, the 1-hour-old one is not.
    config = "[observability]\nusage_retention_days = 0.5\nusage_flush_s = 0.2\n"
    server = start(tmp_path, config)
    try:
        server.deploy("hello", HELLO, namespace=None)
        server.route("*/*", "hello")
        assert server.request("/").status == 200
        listed = server.admin("GET", f"/accounts/local/workers/usage?script=seeded&since={old - 60}")
        assert [r["timestamp"] // 1000 for r in listed.json()["result"]] == [old, recent]
        # 4(c): nothing configured, so no exporter was built (and none is said to be).
        assert "otel.exporting" not in server.log()
    finally:
        assert server.stop() == 0  # a clean exit flushes what is in memory, pruning as it goes
    assert "otel.exporting" not in server.log()
    store = UsageStore(str(state / "usage.db"))
    try:
        kept = store.read("script", None, None, 0, now_minute + 3600)
    finally:
        store.close()
    minutes = {(key[3], key[1]) for key in kept}
    assert ("seeded", recent) in minutes, minutes
    assert any(name == "hello" for name, _ in minutes), minutes  # the flush did happen
    assert ("seeded", old) not in minutes


# ---------------------------------------------------------------------------
# 4(b): a collector that is down costs telemetry, never requests
# ---------------------------------------------------------------------------


def test_requests_succeed_while_the_collector_hangs(tmp_path):
    # A "collector" that accepts connections into its backlog and never answers.
    blackhole = socket.create_server(("127.0.0.1", 0), backlog=1)
    port = blackhole.getsockname()[1]
    config = (f'[observability.otlp]\nendpoint = "http://127.0.0.1:{port}"\n'
              "schedule_delay_ms = 50\nexport_timeout_s = 1\n")
    server = start(tmp_path, config)
    try:
        server.deploy("hello", HELLO, namespace=None)
        server.route("*/*", "hello")
        assert "otel.exporting" in server.log()
        for _ in range(30):
            resp = server.request("/", timeout=10)
            assert resp.status == 200 and resp.text == "hello"
        assert server.alive()
    finally:
        server.stop()
        blackhole.close()


@pytest.mark.parametrize("event, info", [
    ({"kind": "dobject", "method": "#webSocket", "socket_event": "message"},
     {"getWebSocketEvent": {"webSocketEventType": "message"}}),
    ({"kind": "dobject", "method": "#webSocket", "socket_event": "close", "socket_code": 1001,
      "socket_clean": True},
     {"getWebSocketEvent": {"webSocketEventType": "close", "code": 1001, "wasClean": True}}),
    ({"kind": "ws", "ws_kind": "close", "code": 1006},
     {"getWebSocketEvent": {"webSocketEventType": "close", "code": 1006, "wasClean": False}}),
    ({"kind": "rpc", "method": "add"}, {"rpcMethod": "add"}),
])
def test_socket_and_rpc_events_have_cloudflares_trace_shapes(event, info):
    """Cloudflare's TraceItemHibernatableWebSocketEventInfo and JsRpcEventInfo
    (a hibernated socket's event showed as the internal rpcMethod "#webSocket")."""
    from types import SimpleNamespace

    from protocol.messages import DurableObjectEvent, RpcEvent, WebSocketEvent
    from supervisor.observability.traces import event_info

    fields = {k: v for k, v in event.items() if k != "kind"}
    if event["kind"] == "dobject":
        message = DurableObjectEvent("Room", "ab" * 32, **fields)
    elif event["kind"] == "ws":
        message = WebSocketEvent(1, event["ws_kind"], code=event["code"])
    else:
        message = RpcEvent(event["method"])
    assert event_info(SimpleNamespace(event=message)) == info
