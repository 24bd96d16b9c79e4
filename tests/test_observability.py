"""Issue 16: trace events, tail workers, live tail, usage, metrics, OTLP, request ids.

One real ``corral serve`` with tail consumers on the dispatcher and on some
user workers, an OTLP/HTTP endpoint pointing at a collector in this test,
and tight per-tag limits so each outcome can be provoked. The tail worker
posts what it receives to the same collector, so every assertion is about
what really crossed the sandbox boundary.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import REPO, Corral, default_sigint, multipart

# ---------------------------------------------------------------------------
# a collector: tail workers post here, and it is the OTLP/HTTP endpoint
# ---------------------------------------------------------------------------


class Collector:
    def __init__(self) -> None:
        self.posts: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                if "chunked" in (self.headers.get("transfer-encoding") or ""):
                    parts = []
                    while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    body = b"".join(parts)
                else:
                    body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                with collector.lock:
                    collector.posts.append((self.path, body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, prefix: str) -> list[bytes]:
        with self.lock:
            return [body for path, body in self.posts if path.startswith(prefix)]

    def tail_events(self, consumer: str = "tailer") -> list[dict[str, Any]]:
        events = []
        for body in self.bodies(f"/tail/{consumer}"):
            events.extend(json.loads(body)["events"])
        return events

    def stop(self) -> None:
        self.server.shutdown()


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


# ---------------------------------------------------------------------------
# scripts
# ---------------------------------------------------------------------------

TAILER = r'''
import json
from workers import WorkerEntrypoint, fetch

class Default(WorkerEntrypoint):
    async def tail(self, events):
        # TraceItems answer attribute access too, as on Cloudflare.
        names = [e.scriptName for e in events]
        assert names == [e["scriptName"] for e in events]
        await fetch(self.env.COLLECTOR + "/tail/" + self.env.NAME, method="POST",
                    body=json.dumps({"names": names, "events": events}))
'''

RAISING_TAIL = r'''
from workers import WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def tail(self, events, env, ctx):
        raise RuntimeError("this tail worker is broken")
'''

HANGING_TAIL = r'''
import asyncio

async def on_tail(events):
    await asyncio.sleep(3600)
'''

WORKERS = {
    "hello": r'''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("hello")
''',
    "logger": r'''
import logging
from js import console
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        print("one")
        logging.info("two")
        console.warn("three")
        logging.warning("four %s", 4)
        console.error("five")
        try:
            {}["missing"]
        except KeyError:
            logging.exception("six")
        logging.debug("seven (below the default level)")
        print("eight")
        self.ctx.waitUntil(self.later())
        return Response("logged", status=201)

    async def later(self):
        print("nine, after the response")
        raise ValueError("ten: waitUntil failed")
''',
    "thrower": r'''
from workers import WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        raise ValueError("boom from thrower")
''',
    "spinner": r'''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        while True:
            pass
''',
    "sleeper": r'''
import asyncio
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        await asyncio.sleep(30)
        return Response("late")
''',
    "streamer": r'''
import asyncio
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        async def body():
            for _ in range(400):
                yield b"x" * 65536
                await asyncio.sleep(0.01)
        return Response(body())
''',
    "deeplog": r'''
import sys
import time
import workers
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        # A hostile child's raw frame: console arguments nested 600 deep,
        # past what the SDK sends (64), as JSON text.
        messages = sys.modules["protocol.messages"]
        runtime = workers._runtime
        runtime.send(messages.Log(workers.current_invocation.get(), "log", "[" * 600 + "]" * 600,
                                  time.time() * 1000, False, True))
        print("after the deep one")
        return Response("sent")
''',
    "waiter": r'''
import asyncio
from workers import Response, WorkerEntrypoint, fetch

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        await fetch(self.env.COLLECTOR + "/started", method="POST",
                    body=request.headers.get("x-corral-request-id"))
        await asyncio.sleep(30)
        return Response("late")
''',
    "fetcher": r'''
from workers import Response, WorkerEntrypoint, fetch

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        first = await fetch(self.env.COLLECTOR + "/sub/1", method="POST", body="a")
        await fetch(self.env.COLLECTOR + "/sub/2", method="POST", body="b")
        return Response("two fetches")
''',
    "hog": r'''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        chunks = [bytearray(b"\x01") * (1 << 20) for _ in range(600)]
        return Response(str(len(chunks)))
''',
    "victim": r'''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        print("victim served")
        return Response("fine")
''',
    "chatty": r'''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        for i in range(200):
            print(f"{i:04d} " + "x" * 1000)
        return Response("chatty")
''',
    "ticker": r'''
from workers import WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def scheduled(self, controller, env, ctx):
        print("tick", controller.cron)
''',
    "flood": r'''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/long"):
            print("y" * 20000)  # over the 16 KiB a line keeps
        elif request.url.endswith("/many"):
            for i in range(1100):  # over the 1000 lines an invocation keeps
                print(f"line {i}")
        else:
            print("within the limits")
        return Response("flooded")
''',
}

TAGS = {"spinner": ["plan:tiny"], "sleeper": ["plan:slow"], "fetcher": ["plan:onefetch"],
        "hello": ["plan:usage", "user:1"]}

CONFIG = """
[limits.tag."plan:tiny"]
cpu_ms = 30
[limits.tag."plan:slow"]
wall_ms = 400
[limits.tag."plan:onefetch"]
sub_requests = 1

[observability]
usage_flush_s = 0.5
tail_batch_wait_ms = 10
tail_queue_events = 5
tail_timeout_s = 2
live_tail_buffer = 20
trusted_proxies = ["127.0.0.1"]

[observability.otlp]
endpoint = "{otlp}"
schedule_delay_ms = 100
"""


def deploy(server: Corral, name: str, source: str, *, namespace: str | None, tags: list[str] | None = None,
           tail_consumers: list[str] | None = None, bindings: list[dict] | None = None) -> None:
    metadata: dict[str, Any] = {"main_module": "worker.py", "bindings": bindings or []}
    if tags:
        metadata["tags"] = tags
    if tail_consumers:
        metadata["tail_consumers"] = [{"service": c} for c in tail_consumers]
    body, ctype = multipart(metadata, {"worker.py": source})
    path = (f"/accounts/local/workers/scripts/{name}" if namespace is None
            else f"/accounts/local/workers/dispatch/namespaces/{namespace}/scripts/{name}")
    resp = server.admin("PUT", path, body, ctype)
    assert resp.status == 200, resp.text


@pytest.fixture(scope="module")
def corral(tmp_path_factory, collector):
    state = tmp_path_factory.mktemp("corral-observability")
    config = state / "corral.toml"
    config.write_text(CONFIG.replace("{otlp}", collector.url))
    server = Corral(state / "state", extra_args=["--config", str(config)]).start()
    try:
        env = [{"type": "plain_text", "name": "COLLECTOR", "text": collector.url}]
        for name, source in (("tailer", TAILER), ("usertail", TAILER)):
            deploy(server, name, source, namespace=None,
                   bindings=env + [{"type": "plain_text", "name": "NAME", "text": name}])
        deploy(server, "badtail", RAISING_TAIL, namespace=None)
        deploy(server, "slowtail", HANGING_TAIL, namespace=None)
        dispatcher = (REPO / "examples" / "dispatcher" / "worker.py").read_text()
        deploy(server, "dispatch", dispatcher, namespace=None, tail_consumers=["tailer"],
               bindings=[{"type": "dispatch_namespace", "name": "dispatcher", "namespace": "default"}])
        server.route("*/*", "dispatch")
        for name, source in WORKERS.items():
            consumers = {"logger": ["usertail"], "victim": ["badtail", "slowtail", "usertail"]}.get(name)
            deploy(server, name, source, namespace="default", tags=TAGS.get(name),
                   tail_consumers=consumers, bindings=env)
        yield server
    finally:
        server.stop()


def call(server: Corral, name: str, path: str = "/", **kwargs: Any):
    return server.request(path, host=f"{name}.localhost", **kwargs)


def child_event(collector: Collector, name: str, request_id: str | None = None) -> dict[str, Any]:
    """The user worker's event nested in the dispatcher's, as the dispatcher's tail worker got it."""
    def find():
        for event in collector.tail_events("tailer"):
            if event["scriptName"] != "dispatch":
                continue
            if request_id is not None and event["requestId"] != request_id:
                continue
            for child in event["children"]:
                if child["scriptName"] == name:
                    return event, child
        return None
    return wait_for(find, what=f"a tail event for {name}")


def metric(server: Corral, name: str, **labels: str) -> float:
    text = server.admin("GET", "/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# ---------------------------------------------------------------------------
# 1 and 2: every outcome reaches the tail worker, with the right fields
# ---------------------------------------------------------------------------


def test_ok_event_has_cloudflares_fields_and_redacts_secrets(corral, collector):
    resp = call(corral, "hello", "/path?token=AbCdEf0123456789XyZabcd&page=2&session=1",
                headers={"authorization": "Bearer abc", "cookie": "session=1", "x-custom": "kept"})
    assert resp.status == 200 and resp.text == "hello"
    rid = resp.headers["x-corral-request-id"]
    top, event = child_event(collector, "hello", rid)
    # A platform script has no namespace: Cloudflare's TraceItem leaves it undefined.
    assert top["outcome"] == "ok" and "dispatchNamespace" not in top
    assert top["event"]["response"] == {"status": 200}
    assert event["outcome"] == "ok"
    assert event["dispatchNamespace"] == "default"
    assert set(event["scriptTags"]) == {"plan:usage", "user:1"}
    request = event["event"]["request"]
    assert request["method"] == "GET"
    # An id-looking value, by workerd's rules; not a value by its parameter's name.
    assert request["url"] == "http://hello.localhost/path?token=REDACTED&page=2&session=1"
    assert request["headers"]["authorization"] == "REDACTED"
    assert request["headers"]["cookie"] == "REDACTED"
    assert request["headers"]["x-custom"] == "kept"
    assert event["event"]["response"] == {"status": 200}
    for field in ("cpuTime", "wallTime"):  # whole ms, workerd's uint: a fast one may be 0
        assert type(event[field]) is int and event[field] >= 0
    assert top["wallTime"] >= event["wallTime"] >= 0
    assert isinstance(event["eventTimestamp"], int)
    # The id the versions API knows the running version by (not the content hash).
    script = corral.admin("GET", "/accounts/local/workers/dispatch/namespaces/default/scripts/hello").json()
    assert event["scriptVersion"]["id"] == script["result"]["version_id"]
    assert event["requestId"] == rid == top["requestId"]


def test_uncaught_exception(corral, collector):
    resp = call(corral, "thrower")
    assert resp.status == 500
    top, event = child_event(collector, "thrower", resp.headers["x-corral-request-id"])
    assert event["outcome"] == "exception"
    exc = event["exceptions"][0]
    assert exc["name"] == "ValueError" and exc["message"] == "boom from thrower"
    assert 'File "worker.py", line 6, in fetch' in exc["stack"] and exc["timestamp"] > 0
    assert "sandbox/" not in exc["stack"]  # the runtime's own frames are left out
    # The dispatcher re-raised it: its stack ends as its name says, with no
    # class of the runtime's by its module path (sandbox.workers.PlatformError).
    again = top["exceptions"][0]
    assert again["name"] == "ValueError", again
    assert again["stack"].rstrip().endswith("ValueError: boom from thrower"), again["stack"]
    assert "sandbox" not in again["stack"], again["stack"]


@pytest.mark.parametrize("name,outcome", [("spinner", "exceededCpu"), ("sleeper", "exceededWallTime"),
                                          ("fetcher", "exceededSubrequests"), ("hog", "exceededMemory")])
def test_exceeded_limits(corral, collector, name, outcome):
    resp = call(corral, name)
    assert resp.status in (500, 503), resp
    _, event = child_event(collector, name, resp.headers["x-corral-request-id"])
    assert event["outcome"] == outcome, event


def test_canceled_when_the_client_goes_away(corral, collector):
    with socket.create_connection(("127.0.0.1", corral.port)) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nhost: waiter.localhost\r\nx-corral-request-id: gone-1\r\n\r\n")
        # The request is in the worker before we leave.
        wait_for(lambda: b"gone-1" in collector.bodies("/started"), what="the worker started")
    top, event = child_event(collector, "waiter", "gone-1")
    assert top["outcome"] == "canceled"
    assert event["outcome"] == "canceled"


def test_a_client_gone_mid_stream_is_not_an_ok_outcome(corral, collector):
    """The client leaves while the response body streams: the user worker
    making the body is canceled (as when it leaves before the head), and so
    is the dispatcher, whose response is the user worker's handed on. Both
    said "ok". (workerd names the dispatcher's outcome
    responseStreamDisconnected, a disconnect while its response is proxied;
    SPEC section 4's outcomes have no such name: canceled is its word.)"""
    with socket.create_connection(("127.0.0.1", corral.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: streamer.localhost\r\nx-corral-request-id: gone-2\r\n\r\n")
        got = 0
        while got < 300_000:
            chunk = sock.recv(65536)
            assert chunk, "the stream ended early"
            got += len(chunk)
    top, event = child_event(collector, "streamer", "gone-2")
    assert (top["outcome"], event["outcome"]) == ("canceled", "canceled"), (
        top["outcome"], event["outcome"])
    assert event["event"]["response"] == {"status": 200}, event


def test_log_arguments_nested_past_the_sdks_depth_reach_tail_workers_as_text(corral, collector):
    """A raw log frame whose arguments nest 600 deep (the SDK cuts at 64):
    the tail worker, walking the trace by recursion, failed the whole batch
    (every other tenant's events in it too); the arguments are now one string."""
    resp = call(corral, "deeplog")
    assert resp.status == 200, resp
    _, event = child_event(collector, "deeplog", resp.headers["x-corral-request-id"])
    assert [log["message"] for log in event["logs"]] == [["[" * 600 + "]" * 600], ["after the deep one"]]


def test_script_not_found(corral, collector):
    deploy(corral, "ghost", WORKERS["hello"], namespace=None)
    corral.route("ghost.example/*", "ghost")
    assert corral.request("/", host="ghost.example").text == "hello"
    assert corral.admin("DELETE", "/accounts/local/workers/scripts/ghost").status == 200
    with live_tail(corral, "outcome=scriptNotFound") as tail:
        resp = corral.request("/x", host="ghost.example")
        assert resp.status == 404
        event = tail.next()
    assert event["scriptName"] == "ghost" and event["outcome"] == "scriptNotFound"
    assert event["requestId"] == resp.headers["x-corral-request-id"]


def test_logs_in_order_with_levels_and_wait_until(corral, collector):
    resp = call(corral, "logger")
    assert resp.status == 201
    _, event = child_event(collector, "logger", resp.headers["x-corral-request-id"])
    got = [(line["level"], line["message"][0].splitlines()[0]) for line in event["logs"]]
    assert got == [("log", "one"), ("info", "two"), ("warn", "three"), ("warn", "four 4"),
                   ("error", "five"), ("error", "six"), ("log", "eight"), ("log", "nine, after the response")]
    stamps = [line["timestamp"] for line in event["logs"]]
    assert stamps == sorted(stamps)
    # The uncaught ones only, as Cloudflare lists them: logging.exception's
    # KeyError is a log line (its traceback naming the script's file by its
    # path in the project, not the host's folder of bundles).
    names = [(e["name"], e["message"]) for e in event["exceptions"]]
    assert names == [("ValueError", "ten: waitUntil failed")]
    six = next(line["message"][0] for line in event["logs"] if line["message"][0].startswith("six"))
    assert "KeyError: 'missing'" in six and 'File "worker.py"' in six and "/bundles/" not in six, six
    assert event["outcome"] == "ok"  # waitUntil failures are reported, not the outcome
    # The user worker's own tail consumer gets its event on its own.
    own = wait_for(lambda: [e for e in collector.tail_events("usertail") if e["scriptName"] == "logger"
                            and e["requestId"] == resp.headers["x-corral-request-id"]])
    assert own[0]["logs"] == event["logs"] and own[0]["children"] == []


UNREDACTING_TAIL = r'''
import json
from workers import WorkerEntrypoint, fetch

class Default(WorkerEntrypoint):
    async def tail(self, events):
        seen = []
        for e in events:
            request = e.event.request
            raw = request.getUnredacted()
            seen.append({"url": request.url, "raw_url": raw.url, "raw_auth": raw.headers["authorization"],
                         "raw_method": raw.method, "dumped": json.dumps(e),
                         "header": request.headers.get("unredacted")})
        await fetch(self.env.COLLECTOR + "/unredacted", method="POST", body=json.dumps(seen))
'''


def test_a_tail_worker_reads_the_request_unredacted(corral, collector):
    """TraceItemFetchEventInfoRequest.getUnredacted(): the URL and headers as
    they came; the event itself, logged or forwarded as JSON, stays redacted."""
    env = [{"type": "plain_text", "name": "COLLECTOR", "text": collector.url}]
    deploy(corral, "rawtail", UNREDACTING_TAIL, namespace=None, bindings=env)
    deploy(corral, "secretive", WORKERS["hello"], namespace="default", tail_consumers=["rawtail"])
    secret = "0123456789abcdef0123456789abcdef"
    resp = call(corral, "secretive", f"/u/{secret}?q=1", headers={"authorization": "Bearer s3cr3t",
                                                                  "unredacted": "a header like any"})
    assert resp.status == 200
    seen = wait_for(lambda: [json.loads(b) for b in collector.bodies("/unredacted")], what="the tail")[0][0]
    # Only the event's request carries the unredacted copy: a header (or a
    # log argument) of that name vanished from what tail workers were given.
    assert seen["header"] == "a header like any", seen
    assert seen["url"] == "http://secretive.localhost/u/REDACTED?q=1"
    assert seen["raw_url"] == f"http://secretive.localhost/u/{secret}?q=1"
    assert seen["raw_auth"] == "Bearer s3cr3t" and seen["raw_method"] == "GET"
    assert secret not in seen["dumped"] and "s3cr3t" not in seen["dumped"]


def test_a_tail_worker_that_raises_or_hangs_never_slows_or_fails_requests(corral, collector):
    before_failed = metric(corral, "corral_tail_batches_total", outcome="exception")
    for _ in range(25):
        resp = call(corral, "victim", timeout=10)
        assert resp.status == 200 and resp.text == "fine"
    # The raising one failed (its invocations are counted); the hanging one's
    # queue filled and its events were dropped, counted; the good one still got its.
    wait_for(lambda: metric(corral, "corral_tail_batches_total", outcome="exception") > before_failed,
             what="a failed tail batch")
    wait_for(lambda: metric(corral, "corral_tail_events_total", result="dropped_queue_full") > 0,
             what="tail drops")
    wait_for(lambda: [e for e in collector.tail_events("usertail") if e["scriptName"] == "victim"])
    assert corral.alive()


CHATTY = r'''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        for i in range(3):
            print(f"{i}:" + "x" * 10_000)
        return Response("said a lot")
'''


def test_a_tail_batch_is_bounded_in_bytes_too(tmp_path, collector):
    # A batch is one frame to the tail worker's child: past the channel's
    # bound it broke the channel and every later batch failed for a minute.
    config = tmp_path / "corral.toml"
    config.write_text("[observability]\ntail_batch_bytes = 65536\ntail_batch_wait_ms = 300\n")
    server = Corral(tmp_path / "state", extra_args=["--config", str(config)]).start()
    try:
        env = [{"type": "plain_text", "name": "COLLECTOR", "text": collector.url}]
        deploy(server, "bytestail", TAILER, namespace=None,
               bindings=env + [{"type": "plain_text", "name": "NAME", "text": "bytestail"}])
        deploy(server, "chatty", CHATTY, namespace=None, tail_consumers=["bytestail"])
        server.route("chatty.example/*", "chatty")
        for _ in range(6):
            assert server.request("/", host="chatty.example").text == "said a lot"
        wait_for(lambda: len(collector.tail_events("bytestail")) == 6, what="six events")
        batches = [json.loads(body)["names"] for body in collector.bodies("/tail/bytestail")]
        # ~30 KB each: two fit in 64 KB, a third does not.
        assert all(1 <= len(names) <= 2 for names in batches), batches
        assert sum(len(names) for names in batches) == 6
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# 3. live tail
# ---------------------------------------------------------------------------


class LiveTailReader:
    def __init__(self, server: Corral, query: str, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(15)
        self.sock.connect(server.socket_path)
        self.sock.sendall(f"GET /tail?{query} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        self.file = self.sock.makefile("rb")
        status = self.file.readline()
        assert b" 200 " in status, status + self.file.read(2000)
        while self.file.readline() not in (b"\r\n", b""):
            pass
        # Subscribed once the head is out; events from here on reach us.

    def next(self) -> dict[str, Any]:
        while True:
            size = int(self.file.readline().strip(), 16)
            data = self.file.read(size)
            self.file.readline()
            for line in data.splitlines():
                if line.strip():
                    return json.loads(line)

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> LiveTailReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def live_tail(server: Corral, query: str, rcvbuf: int | None = None) -> LiveTailReader:
    return LiveTailReader(server, query, rcvbuf)


def test_live_tails_filter_events(corral):
    with live_tail(corral, "script=thrower") as by_script, \
            live_tail(corral, "namespace=default&outcome=exception") as by_outcome, \
            live_tail(corral, "outcome=exception") as any_exception, \
            live_tail(corral, "status=201&method=get") as by_status, \
            live_tail(corral, "search=after+the+response") as by_search, \
            live_tail(corral, "tag=plan:usage") as by_tag, \
            live_tail(corral, "script=hello&sampling_rate=0") as sampled_out:
        call(corral, "hello")
        call(corral, "logger")
        call(corral, "thrower")
        event = by_script.next()
        assert event["scriptName"] == "thrower" and event["outcome"] == "exception"
        assert by_outcome.next()["scriptName"] == "thrower"
        # Unscoped: the dispatcher's event, with its user worker's under children
        # (after any tail worker's own failures of earlier tests, which are exceptions too).
        dispatched = any_exception.next()
        while dispatched["scriptName"] != "dispatch":
            assert dispatched["outcome"] == "exception", dispatched
            dispatched = any_exception.next()
        assert dispatched["children"][0]["scriptName"] == "thrower"
        assert dispatched["children"][0]["outcome"] == "exception"
        # A dispatcher's event with the user worker's nested: status is the top-level's.
        top = by_status.next()
        assert top["scriptName"] == "dispatch" and top["children"][0]["scriptName"] == "logger"
        found = by_search.next()  # the dispatcher's event, found by its user worker's log
        assert found["scriptName"] == "dispatch" and found["children"][0]["scriptName"] == "logger"
        assert by_tag.next()["scriptName"] == "hello"
        sampled_out.sock.settimeout(0.5)
        with pytest.raises((socket.timeout, TimeoutError)):
            sampled_out.next()


def test_live_tails_filter_by_header_and_client_ip(corral):
    """wrangler's ``--header NAME[:VALUE]`` and ``--ip ADDR``, each repeatable
    (any of them), over a real server: the client IP is the one the edge
    recorded in ``cf-connecting-ip`` (here named by the trusted proxy, 127.0.0.1)."""
    with live_tail(corral, "script=hello&header=X-Tenant:blue&header=x-tenant:green") as by_value, \
            live_tail(corral, "script=hello&header=x-flag") as by_name, \
            live_tail(corral, "script=hello&ip=203.0.113.7&ip=198.51.100.1") as by_ip, \
            live_tail(corral, "script=hello&header=x-tenant:blue&ip=198.51.100.1") as both:
        for headers in ({"x-tenant": "red", "x-forwarded-for": "192.0.2.1"},
                        {"x-tenant": "green:and:more", "x-flag": "", "x-forwarded-for": "192.0.2.1"},
                        {"x-tenant": "blue", "x-forwarded-for": "203.0.113.7"},
                        {"x-tenant": "green", "x-flag": "1", "x-forwarded-for": "198.51.100.1"}):
            assert call(corral, "hello", headers=headers).status == 200
        tenants = lambda reader, n: [reader.next()["event"]["request"]["headers"]["x-tenant"]  # noqa: E731
                                     for _ in range(n)]
        assert tenants(by_value, 2) == ["blue", "green"]
        assert tenants(by_name, 2) == ["green:and:more", "green"]
        assert tenants(by_ip, 2) == ["blue", "green"]
        # Different kinds must all pass: nothing is both blue and from 198.51.100.1.
        both.sock.settimeout(0.5)
        with pytest.raises((socket.timeout, TimeoutError)):
            both.next()


def test_corral_tail_cli_takes_wranglers_filter_flags(corral):
    """``corral tail --status ok --method GET --header NAME:VALUE --ip ADDR``
    shows the matching events only; a status wrangler does not know is bad usage."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CORRAL_ADMIN_SOCKET": corral.socket_path}
    bad = subprocess.run([sys.executable, "-m", "supervisor", "tail", "--status", "okay"],
                         capture_output=True, env=env, cwd=str(REPO), timeout=30)
    assert bad.returncode == 2 and b"okay" in bad.stderr
    selfish = subprocess.run([sys.executable, "-m", "supervisor", "tail", "--ip", "self"],
                             capture_output=True, env=env, cwd=str(REPO), timeout=30)
    assert selfish.returncode == 1 and b"unix socket" in selfish.stderr
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "tail", "hello", "--format", "json",
                             "--status", "ok", "--method", "POST", "--method", "GET",
                             "--header", "x-tenant:a,b", "--header", "x-other", "--ip", "203.0.113.9",
                             "--sampling-rate", "1", "--search", "hello"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(REPO),
                            preexec_fn=default_sigint)
    try:
        line = b""
        deadline = time.monotonic() + 15
        while not line and time.monotonic() < deadline:
            # Until the CLI is subscribed: the misses first, then the one match.
            call(corral, "hello", headers={"x-tenant": "a", "x-forwarded-for": "203.0.113.9"})
            call(corral, "hello", headers={"x-tenant": "a,b", "x-forwarded-for": "203.0.113.8"})
            call(corral, "hello", "/hello", headers={"x-tenant": "a,b", "x-forwarded-for": "203.0.113.9"})
            ready = __import__("select").select([proc.stdout], [], [], 0.3)[0]
            if ready:
                line = proc.stdout.readline()
        event = json.loads(line)
        request = event["event"]["request"]
        assert request["headers"]["x-tenant"] == "a,b" and request["url"].endswith("/hello")
        assert request["headers"]["cf-connecting-ip"] == "203.0.113.9"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_an_outcome_filter_looks_into_children():
    """A dispatcher that caught its user worker's exception and answered is
    "ok" itself; "all exceptions" must still show that tenant's failure."""
    from supervisor.observability.tail import TailFilter

    tree = {"scriptName": "dispatch", "outcome": "ok",
            "children": [{"scriptName": "boom", "dispatchNamespace": "t1", "outcome": "exception"}]}
    assert TailFilter.parse({"outcome": "exception"}).select(tree) == [tree]
    assert TailFilter.parse({"outcome": "exceededCpu"}).select(tree) == []
    # wrangler's --status error is an outcome filter (every failing outcome): the same holds.
    assert TailFilter.parse({"status": "error"}).select(tree) == [tree]
    assert TailFilter.parse({"status": ["canceled"]}).select(tree) == []
    scoped = TailFilter.parse({"outcome": "exception", "script": "boom"}).select(tree)
    assert scoped == [tree["children"][0]]


def test_a_status_filter_finds_a_handler_that_threw():
    """A handler that threw has no response in its event; its client got a
    500, so ``status=5xx`` (and ``500``) find it, as ``error`` does."""
    from supervisor.observability.tail import TailFilter

    threw = {"scriptName": "boom", "outcome": "exception",
             "event": {"request": {"url": "http://x/", "method": "GET", "headers": {}}}}
    answered = {"scriptName": "ok", "outcome": "ok",
                "event": {"request": {"url": "http://x/", "method": "GET", "headers": {}},
                          "response": {"status": 200}}}
    for status in ("5xx", "500", "error"):
        assert TailFilter.parse({"status": status}).select(threw) == [threw], status
        assert TailFilter.parse({"status": status}).select(answered) == [], status
    assert TailFilter.parse({"status": "2xx"}).select(answered) == [answered]


def test_bad_live_tail_filters_are_400(corral):
    resp = corral.admin("GET", "/tail?sampling_rate=2")
    assert resp.status == 400 and "sampling_rate" in resp.text
    # A filter the server does not know is refused, not ignored (which
    # streamed every event to a client that asked for a few).
    resp = corral.admin("GET", "/tail?colour=red")
    assert resp.status == 400 and "'colour' is not a live tail filter" in resp.json()["errors"][0]["message"]
    # wrangler's "self" is the tail client's address; over the admin unix socket there is none.
    resp = corral.admin("GET", "/tail?ip=self")
    assert resp.status == 400 and "unix socket" in resp.json()["errors"][0]["message"]
    resp = corral.admin("GET", "/tail?ip=not-an-ip")
    assert resp.status == 400 and "is not an IP address" in resp.json()["errors"][0]["message"]
    resp = corral.admin("GET", "/tail?status=okay")
    assert resp.status == 400 and "status 'okay' is not ok, error or canceled" in resp.text
    resp = corral.admin("GET", "/tail?header=authorization:Bearer+x")
    assert resp.status == 400 and "REDACTED" in resp.text
    resp = corral.admin("GET", "/tail?outcome=ok,exceededCPU")
    assert resp.status == 400 and "outcome 'exceededCPU' is not one of" in resp.json()["errors"][0]["message"]


def test_truncated_says_when_logs_were_cut_at_the_limits(corral):
    """Cloudflare's ``truncated``: false when every log line is there; true
    when a line was cut or lines were dropped at Corral's limits."""
    with live_tail(corral, "script=flood") as tail:
        for path in ("/", "/long", "/many"):
            assert call(corral, "flood", path).text == "flooded"
        fine, long, many = tail.next(), tail.next(), tail.next()
    assert fine["truncated"] is False and [line["message"] for line in fine["logs"]] == [["within the limits"]]
    assert long["truncated"] is True and "characters cut]" in long["logs"][0]["message"][0]
    assert many["truncated"] is True and len(many["logs"]) == 1000
    assert many["logs"][-1]["message"] == ["line 999"]


def test_a_live_tail_that_stops_reading_is_dropped(corral):
    before = metric(corral, "corral_live_tails_dropped_total")
    with live_tail(corral, "script=chatty", rcvbuf=4096) as stalled, live_tail(corral, "script=hello") as fine:
        for _ in range(60):
            assert call(corral, "chatty").status == 200
            if metric(corral, "corral_live_tails_dropped_total") > before:
                break
        assert metric(corral, "corral_live_tails_dropped_total") > before
        # The stalled tail's stream ends (after what was already in flight)...
        stalled.sock.settimeout(10)
        with pytest.raises((ValueError, OSError, json.JSONDecodeError)):
            while True:
                stalled.next()
        # ...and the others go on.
        call(corral, "hello")
        assert fine.next()["scriptName"] == "hello"


def test_corral_tail_cli_prints_json_lines_until_interrupted(corral):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CORRAL_ADMIN_SOCKET": corral.socket_path}
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "tail", "hello", "--format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(REPO),
                            preexec_fn=default_sigint)
    try:
        line = b""
        deadline = time.monotonic() + 15
        while not line and time.monotonic() < deadline:
            call(corral, "hello")  # until the CLI is subscribed and shows one
            ready = __import__("select").select([proc.stdout], [], [], 0.3)[0]
            if ready:
                line = proc.stdout.readline()
        event = json.loads(line)
        assert event["scriptName"] == "hello" and event["outcome"] == "ok"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_pretty_format_is_wranglers():
    from supervisor.observability.cli_tail import format_pretty

    text = format_pretty({"outcome": "exception", "eventTimestamp": 0, "scriptName": "dispatch",
                          "event": {"request": {"method": "GET", "url": "http://a/"}},
                          "logs": [{"level": "log", "message": ["hi"]}],
                          "exceptions": [{"name": "Error", "message": "bad"}],
                          "children": [{"outcome": "ok", "eventTimestamp": 0, "scriptName": "u",
                                        "dispatchNamespace": "default", "event": {"request": {
                                            "method": "GET", "url": "http://a/"}}, "logs": []}]})
    lines = text.splitlines()
    assert lines[0].startswith("GET http://a/ - Exception Thrown @ ")
    assert lines[1] == "  (log) hi" and lines[2] == "  ✘ Error: bad"
    assert lines[3].startswith("  GET http://a/ - Ok @ ") and "[default/u]" in lines[3]
    # Other handlers' events by what ran, as wrangler names them (they showed "Cron", "Scheduledtime").
    for info, head in (({"cron": "*/5 * * * *", "scheduledTime": 0}, '"*/5 * * * *"'),
                       ({"scheduledTime": "2026-01-01T00:00:00.000Z"}, "Alarm"),
                       ({"queue": "jobs", "batchSize": 3}, "Queue jobs (3 messages)"),
                       ({"rpcMethod": "hello"}, "RPC hello"), ({"getWebSocketEvent": {}}, "WebSocket"),
                       ({"novel": 1}, "Unknown Event")):
        shown = format_pretty({"outcome": "ok", "eventTimestamp": 0, "scriptName": "s", "event": info})
        assert shown.startswith(f"{head} - Ok @ "), shown


HOSTILE = ("hello\x1b]0;OWNED-TITLE\x07\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2K\r\nGET https://victim.example/admin"
           " - Ok @ 1/1/2026, 1:00:00 PM [other/victim-shop]\x9b31m\u202e")


def test_pretty_format_escapes_tenant_control_characters():
    """F11: tenant text (logs, exceptions, URL) never writes an escape
    sequence or a CR to the operator's terminal; its line breaks stay, marked."""
    from supervisor.observability.cli_tail import _stream, format_pretty

    event = {"outcome": "ok", "eventTimestamp": 0, "scriptName": "ansi", "dispatchNamespace": "default",
             "event": {"request": {"method": "GET", "url": "http://a/\x1b[2J"}},
             "logs": [{"level": "log", "message": [HOSTILE]}],
             "exceptions": [{"name": "Error\x1b[1m", "message": "bad\nline2\x07"}]}
    text = format_pretty(event)
    assert not [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) < 0xa0 or c == "\u202e"]
    lines = text.splitlines()
    assert lines[0].startswith("GET http://a/\\x1b[2J - Ok @ ")
    assert lines[1] == "  (log) hello\\x1b]0;OWNED-TITLE\\x07\\x1b]52;c;cm0gLXJmIH4K\\x07\\x1b[2K\\r"
    assert lines[2].startswith("      | GET https://victim.example/admin") and lines[2].endswith("\\x9b31m\\u202e")
    assert lines[3] == "  ✘ Error\\x1b[1m: bad" and lines[4] == "  | line2\\x07"

    # --format json stays the exact bytes the supervisor sent.
    raw = json.dumps(event).encode() + b"\n"
    out = io.StringIO()
    _stream(io.BytesIO(raw), "json", False, out)
    assert out.getvalue().encode() == raw


def test_cli_tables_escape_control_characters(capsys):
    from supervisor.cli_output import table

    table([["t\x1b]0;x\x07", "[link=http://evil/]y[/link]"]], ["TAG", "OTHER"])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "t\\x1b]0;x\\x07" in out and "[link=http://evil/]y[/link]" in out


# ---------------------------------------------------------------------------
# 4 and 5: usage and metrics
# ---------------------------------------------------------------------------


def usage(server: Corral, query: str) -> list[dict[str, Any]]:
    resp = server.admin("GET", f"/accounts/local/workers/usage?{query}")
    assert resp.status == 200, resp.text
    return resp.json()["result"]


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": 0, "errors": 0, "cpu": 0.0, "wall": 0.0, "subrequests": 0,
                           "outcomes": {}}
    for row in rows:
        out["requests"] += row["requests"]
        out["errors"] += row["errors"]
        out["cpu"] += row["cpuTimeMs"]["sum"]
        out["wall"] += row["wallTimeMs"]["sum"]
        out["subrequests"] += row["subrequests"]
        for k, v in row["outcomes"].items():
            out["outcomes"][k] = out["outcomes"].get(k, 0) + v
    return out


def test_a_usage_quantile_is_by_nearest_rank():
    """p99 took the floor of q * (n - 1): of one fast and one slow request
    in a minute, p99 was the fast one, and a slow request never showed below
    100 a minute. Nearest rank (ceil(q * n)) gives the slowest there."""
    from supervisor.observability.usage import Rollup

    rollup = Rollup()
    for wall in (2.8, 1507.0):
        rollup.add("ok", 1.0, wall, 0)
    row = rollup.to_json("script", 0, "default", "x")
    assert row["wallTimeMs"]["p99"] == pytest.approx(1507.0, rel=0.02), row
    assert row["wallTimeMs"]["p50"] == pytest.approx(2.8, rel=0.02), row
    for _ in range(97):
        rollup.add("ok", 1.0, 3.0, 0)
    ninety_nine = rollup.to_json("script", 0, "default", "x")  # 1 in 99: still its p99
    assert ninety_nine["wallTimeMs"]["p99"] == pytest.approx(1507.0, rel=0.02)


def test_usage_after_a_known_load(corral):
    before = totals(usage(corral, "namespace=default&script=thrower"))
    before_tag = totals(usage(corral, "tag=user:1"))
    before_dispatch = totals(usage(corral, "script=dispatch"))
    for _ in range(7):
        assert call(corral, "hello").status == 200
    for _ in range(3):
        assert call(corral, "thrower").status == 500
    after = totals(usage(corral, "namespace=default&script=thrower"))
    assert after["requests"] - before["requests"] == 3
    assert after["outcomes"]["exception"] - before["outcomes"].get("exception", 0) == 3
    assert after["errors"] - before["errors"] == 3
    tag = wait_for(lambda: (t := totals(usage(corral, "tag=user:1")))["requests"] - before_tag["requests"] == 7
                   and t, what="tag usage")
    assert tag["errors"] == before_tag["errors"] and tag["cpu"] > before_tag["cpu"]
    dispatch = totals(usage(corral, "script=dispatch"))
    assert dispatch["requests"] - before_dispatch["requests"] == 10
    assert dispatch["subrequests"] - before_dispatch["subrequests"] == 10
    row = usage(corral, "namespace=default&script=hello")[-1]
    assert 0 < row["cpuTimeMs"]["p50"] <= row["cpuTimeMs"]["p99"]
    assert row["minute"].endswith(":00Z")
    # Flushed to SQLite (usage_flush_s = 0.5), the figures are the same.
    assert wait_for(lambda: os.path.exists(corral.state_dir / "usage.db"))
    # The CLI's --json is the API's rows.
    env = {**os.environ, "PYTHONPATH": str(REPO), "CORRAL_ADMIN_SOCKET": corral.socket_path}
    out = subprocess.run([sys.executable, "-m", "supervisor", "usage", "thrower", "-n", "default", "--json"],
                         capture_output=True, text=True, env=env, cwd=str(REPO), timeout=30)
    assert out.returncode == 0, out.stderr
    assert totals(json.loads(out.stdout))["requests"] == after["requests"]
    table = subprocess.run([sys.executable, "-m", "supervisor", "usage", "-n", "default"],
                           capture_output=True, text=True, env=env, cwd=str(REPO), timeout=30)
    assert table.returncode == 0 and "REQUESTS" in table.stdout and "thrower" in table.stdout
    assert "None" not in table.stdout  # the table is all it prints


CRON_ONLY = r'''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("hi")

    async def scheduled(self, controller, env, ctx):
        pass
'''


def test_a_cron_run_is_an_invocation_not_a_client_request(corral):
    """corral_requests_total ("client requests answered by a worker") counted
    cron runs, queue batches and alarms too: a failing cron job raised the
    client error ratio."""
    deploy(corral, "cronly", CRON_ONLY, namespace=None)
    requests = metric(corral, "corral_requests_total")
    durations = metric(corral, "corral_request_duration_seconds_count")
    labels = {"namespace": "", "outcome": "ok", "handler": "scheduled"}
    invocations = metric(corral, "corral_invocations_total", **labels)
    for _ in range(3):
        ran = corral.admin("POST", "/accounts/local/workers/scripts/cronly/schedules/trigger", {"cron": "* * * * *"})
        assert ran.status == 200 and ran.json()["result"]["outcome"] == "ok", ran.text
    wait_for(lambda: metric(corral, "corral_invocations_total", **labels) >= invocations + 3, what="three runs")
    assert metric(corral, "corral_requests_total") == requests
    assert metric(corral, "corral_request_duration_seconds_count") == durations


def test_usage_rejects_bad_times(corral):
    resp = corral.admin("GET", "/accounts/local/workers/usage?since=yesterday-ish")
    assert resp.status == 400 and "since" in resp.text


def test_metrics_move_as_requests_happen(corral):
    labels = {"namespace": "default", "outcome": "ok", "handler": "fetch"}
    before = metric(corral, "corral_invocations_total", **labels)
    before_requests = metric(corral, "corral_requests_total", outcome="ok")
    before_admin = metric(corral, "corral_admin_requests_total", method="GET", status="2xx")
    for _ in range(4):
        call(corral, "hello")
    wait_for(lambda: metric(corral, "corral_invocations_total", **labels) >= before + 4, what="invocations")
    assert metric(corral, "corral_requests_total", outcome="ok") >= before_requests + 4
    assert metric(corral, "corral_admin_requests_total", method="GET", status="2xx") > before_admin
    assert metric(corral, "corral_request_duration_seconds_count") > 0
    assert metric(corral, "corral_invocation_cpu_seconds_count", namespace="default") > 0
    assert metric(corral, "corral_cold_start_seconds_count", result="ok") > 0
    assert metric(corral, "corral_pool_children", state="warm") > 0
    text = corral.admin("GET", "/metrics").text
    for name in ("corral_pool_children{state=\"spare\"}", "corral_package_zygotes", "corral_subrequests_total",
                 "corral_tail_events_total", "corral_children_ended_total"):
        assert name in text, name
    assert "script=" not in text  # no per-script label by default


def test_a_deploys_validation_is_no_cold_start(tmp_path):
    """A deploy loads the upload once to validate it; that load serves no
    invocation, so the cold start figures stay at 0 until a request comes."""
    server = Corral(tmp_path / "state").start()
    try:
        deploy(server, "solo", WORKERS["hello"], namespace=None)
        server.route("*/*", "solo")
        assert metric(server, "corral_cold_start_seconds_count") == 0
        assert metric(server, "corral_cold_starts_total") == 0
        assert server.request("/", host="solo.localhost").status == 200
        assert metric(server, "corral_cold_start_seconds_count", result="ok") == 1
        assert metric(server, "corral_cold_starts_total") == 1
    finally:
        server.stop()


def test_every_child_reports_what_its_own_set_up_cost_step_by_step(corral):
    """Each child's Hello carries the CPU and the page faults of each step of
    its set-up (from its fork to its channel); /metrics sums them per step,
    so a spare's cost is seen where it is paid (the bench prints the mean per
    step)."""
    from protocol.messages import SETUP_STEPS

    children = metric(corral, "corral_children_set_up_total")
    assert children >= 1
    total = 0.0
    faults = 0.0
    for step in SETUP_STEPS:
        seconds = metric(corral, "corral_child_setup_cpu_seconds_total", step=step)
        assert seconds >= 0, step
        total += seconds
        count = metric(corral, "corral_child_setup_page_faults_total", step=step)
        assert count >= 0, step
        faults += count
    # Every child spends CPU on its jail, and a whole set-up takes milliseconds, not seconds.
    assert metric(corral, "corral_child_setup_cpu_seconds_total", step="jail") > 0
    assert 0 < total / children < 0.5, (total, children)
    # A forked child writes to pages it shares with the zygote from its first
    # step on (its stack, at least): each step's copies are counted, and a
    # set-up copies some pages, far from all of a 512 MB address space.
    assert metric(corral, "corral_child_setup_page_faults_total", step="fork") > 0
    assert metric(corral, "corral_child_setup_page_faults_total", step="jail") > 0
    assert 0 < faults / children < 512 * 256, (faults, children)
    # An upload is validated in a spare; its replacement says Hello and is counted too.
    deploy(corral, "setup-probe", WORKERS["hello"], namespace="default")
    wait_for(lambda: metric(corral, "corral_children_set_up_total") > children, what="a new child")


def test_how_fast_spares_get_ready_is_exported(corral):
    """Every child that says Hello is timed from its fork's announcement to
    that Hello, and the supervisor's own part of it (its memory cgroup and
    CPU meter) is timed apart: the refill rate a storm of first requests
    waits on, and the part of it the kernel's cgroup locks decide."""
    ready = metric(corral, "corral_spare_ready_seconds_count")
    assert ready >= 1
    assert metric(corral, "corral_child_limits_seconds_count") == ready
    # The supervisor's part happens before the Hello is read: it is within it.
    assert 0 < metric(corral, "corral_child_limits_seconds_sum") <= metric(corral, "corral_spare_ready_seconds_sum")
    deploy(corral, "ready-probe", WORKERS["hello"], namespace="default")
    wait_for(lambda: metric(corral, "corral_spare_ready_seconds_count") > ready, what="a new child timed")


def test_the_supervisor_exports_its_process_figures_and_rarely_collects(corral):
    """/metrics carries the supervisor's own process and collector figures,
    and its request path does not keep the cycle collector busy (a young
    collection every 700 net allocations, CPython's default, ran every ~40
    requests and found nothing: see supervisor.server.freeze_startup_heap)."""
    assert metric(corral, "process_cpu_seconds_total") > 0
    assert metric(corral, "process_resident_memory_bytes") > 10 * 1024 * 1024
    assert metric(corral, "python_info") == 1
    young = metric(corral, "python_gc_collections_total", generation="0")
    for _ in range(300):
        assert call(corral, "hello").status == 200
    assert metric(corral, "python_gc_collections_total", generation="0") - young <= 3


# ---------------------------------------------------------------------------
# 6. OpenTelemetry
# ---------------------------------------------------------------------------


def spans(collector: Collector) -> list[Any]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    out = []
    for body in collector.bodies("/v1/traces"):
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                out.extend(scope.spans)
    return out


def log_records(collector: Collector) -> list[Any]:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    out = []
    for body in collector.bodies("/v1/logs"):
        request = ExportLogsServiceRequest.FromString(body)
        for resource in request.resource_logs:
            for scope in resource.scope_logs:
                out.extend(scope.log_records)
    return out


def attrs(item: Any) -> dict[str, Any]:
    out = {}
    for kv in item.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
    return out


def test_spans_and_logs_reach_an_otlp_receiver(corral, collector):
    resp = call(corral, "logger")
    rid = resp.headers["x-corral-request-id"]
    assert len(rid) == 32
    trace_id = bytes.fromhex(rid)

    def mine():
        found = [s for s in spans(collector) if s.trace_id == trace_id]
        return found if len(found) >= 2 else None
    found = wait_for(mine, what="spans of the request")
    by_name = {s.name: s for s in found}
    root, user = by_name["fetch dispatch"], by_name["fetch logger"]
    assert user.parent_span_id == root.span_id and not root.parent_span_id
    assert attrs(user)["corral.script"] == "logger" and attrs(user)["corral.namespace"] == "default"
    assert attrs(root)["corral.request_id"] == rid
    assert any(e.name == "exception" for e in user.events)

    def logs():
        records = [r for r in log_records(collector) if r.trace_id == trace_id]
        return records if len(records) >= 8 else None
    records = wait_for(logs, what="log records")
    bodies = [r.body.string_value for r in records]
    assert "one" in bodies and "nine, after the response" in bodies
    assert all(r.span_id == user.span_id for r in records if r.body.string_value == "one")

    # An outbound fetch is a client span under its worker's.
    resp = call(corral, "fetcher")
    fetch_trace = bytes.fromhex(resp.headers["x-corral-request-id"])
    found = wait_for(lambda: [s for s in spans(collector) if s.trace_id == fetch_trace
                              and s.name.startswith("fetch POST")], what="a fetch span")
    worker = [s for s in spans(collector) if s.trace_id == fetch_trace and s.name == "fetch fetcher"][0]
    assert found[0].parent_span_id == worker.span_id
    assert attrs(found[0])["url.full"].endswith("/sub/1")


STATUSES = r'''
from workers import Response, WorkerEntrypoint, fetch

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        upstream = await fetch(self.env.COLLECTOR + "/no-get-here")  # the collector answers GET 501
        return Response(f"upstream said {upstream.status}", status=503)
'''


def test_http_errors_mark_their_spans_and_spans_say_what_ran(corral, collector):
    """OTel's HTTP conventions: a server's 5xx and a client's 4xx or 5xx are
    errors (the spans' status was unset: only the outcome set it). A cron
    run's span is named for its handler (it was "cron <script>", a field of
    its event, and an alarm's "scheduledTime <script>")."""
    deploy(corral, "statuses", STATUSES, namespace="default",
           bindings=[{"type": "plain_text", "name": "COLLECTOR", "text": collector.url}])
    resp = call(corral, "statuses")
    assert (resp.status, resp.text) == (503, "upstream said 501")
    trace_id = bytes.fromhex(resp.headers["x-corral-request-id"])
    found = wait_for(lambda: (lambda s: s if len(s) >= 3 else None)(
        [s for s in spans(collector) if s.trace_id == trace_id]), what="the request's three spans")
    by_name = {s.name: s for s in found}
    user, client = by_name["fetch statuses"], by_name["fetch GET"]
    assert attrs(user)["http.response.status_code"] == 503 and user.status.code == user.status.STATUS_CODE_ERROR
    assert attrs(client)["http.response.status_code"] == 501 and client.status.code == client.status.STATUS_CODE_ERROR
    deploy(corral, "cronspan", CRON_ONLY, namespace=None)
    ran = corral.admin("POST", "/accounts/local/workers/scripts/cronspan/schedules/trigger", {"cron": "* * * * *"})
    assert ran.status == 200, ran.text
    cron = wait_for(lambda: [s for s in spans(collector) if s.name == "scheduled cronspan"], what="the cron span")
    assert attrs(cron[0])["corral.handler"] == "scheduled" and attrs(cron[0])["faas.trigger"] == "timer"


def test_otlp_spans_continue_the_callers_w3c_trace(corral, collector):
    """A valid ``traceparent`` makes the request's server span the caller's
    child (its trace id, its span as parent), as W3C propagation does; an
    invalid one is ignored (the request id is the trace id, as without one).
    Every invocation span says what triggered it (``faas.trigger``)."""
    trace_hex, parent_hex = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    resp = call(corral, "logger", headers={"traceparent": f"00-{trace_hex}-{parent_hex}-01"})
    rid = resp.headers["x-corral-request-id"]
    found = wait_for(lambda: (lambda s: s if len(s) >= 2 else None)(
        [s for s in spans(collector) if s.trace_id == bytes.fromhex(trace_hex)]), what="spans of the caller's trace")
    by_name = {s.name: s for s in found}
    root, user = by_name["fetch dispatch"], by_name["fetch logger"]
    assert root.parent_span_id == bytes.fromhex(parent_hex) and user.parent_span_id == root.span_id
    assert root.kind == root.SPAN_KIND_SERVER and attrs(root)["corral.request_id"] == rid
    assert attrs(root)["faas.trigger"] == "http" and attrs(user)["faas.trigger"] == "http"

    for bad in (f"00-{'0' * 32}-{parent_hex}-01", f"00-{trace_hex}-{'0' * 16}-01",
                f"ff-{trace_hex}-{parent_hex}-01", "00-not-hex-01"):
        resp = call(corral, "hello", headers={"traceparent": bad})
        own = bytes.fromhex(resp.headers["x-corral-request-id"])
        mine = wait_for(lambda: [s for s in spans(collector) if s.trace_id == own  # noqa: B023
                                 and s.name == "fetch dispatch"], what="the span of a request")
        assert not mine[0].parent_span_id, bad

    resp = corral.admin("POST", "/accounts/local/workers/dispatch/namespaces/default/scripts/ticker"
                        "/schedules/trigger", {"cron": "*/5 * * * *"})
    assert resp.status == 200, resp.text
    tick = wait_for(lambda: [s for s in spans(collector) if attrs(s).get("corral.script") == "ticker"],
                    what="the scheduled invocation's span")
    assert attrs(tick[0])["faas.trigger"] == "timer" and not tick[0].parent_span_id


def test_faas_trigger_per_event_shape():
    """OTel's values for the other handlers' events (supervisor.observability.traces.event_info)."""
    from supervisor.observability.otel import faas_trigger

    assert faas_trigger({"queue": "jobs", "batchSize": 3}) == "pubsub"
    assert faas_trigger({"cron": "* * * * *", "scheduledTime": 0}) == "timer"
    assert faas_trigger({"request": {"url": "http://x/"}, "response": None}) == "http"
    assert faas_trigger({"scheduledTime": 0}) == "timer"  # a Durable Object's alarm
    for other in ({"consumedEvents": []}, {"rpcMethod": "m"}, None):
        assert faas_trigger(other) == "other", other


# ---------------------------------------------------------------------------
# 7. request ids
# ---------------------------------------------------------------------------


def test_request_id_in_header_trace_and_supervisor_logs(corral, collector):
    resp = call(corral, "thrower", headers={"x-corral-request-id": "proxy-abc-123"})
    assert resp.headers["x-corral-request-id"] == "proxy-abc-123"  # 127.0.0.1 is trusted here
    top, _ = child_event(collector, "thrower", "proxy-abc-123")
    assert top["requestId"] == "proxy-abc-123"
    wait_for(lambda: any('"request_id":"proxy-abc-123"' in line and "invocation.failed" in line
                         for line in corral.log_path.read_text().splitlines()), what="a logged request id")
    fresh = call(corral, "hello")
    assert len(fresh.headers["x-corral-request-id"]) == 32
    assert corral.request("/", host="nothing.routed.invalid").headers.get("x-corral-request-id")


def test_untrusted_peers_get_a_fresh_request_id():
    from supervisor.observability.request_id import RequestIds

    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()):
        sock, _ = server.accept()
        with sock:
            conn = sock.getpeername()[0]  # the peer's address, as the connection reads it
            headers = [(b"x-corral-request-id", b"spoofed")]
            assert RequestIds(["10.0.0.0/8"]).assign(headers, conn) != "spoofed"
            assert RequestIds([]).assign(headers, conn) != "spoofed"
            assert RequestIds(["127.0.0.0/8"]).assign(headers, conn) == "spoofed"
            assert RequestIds(["127.0.0.1"]).assign([(b"x-corral-request-id", b"bad id\n")], conn) != "bad id\n"


def test_redaction_changes_only_secrets():
    from supervisor.observability.traces import redact_headers, redact_url

    # workerd's rules (redactUrl): each run of id characters on its own, wherever
    # it is; a parameter's name plays no part.
    for untouched in ("http://a/proxy?url=http%3A%2F%2F127.0.0.1%2Fx%3Fn%3D4&b=+c",
                      "http://a/p?api_key=k&session=1&flag",
                      "http://a/x/0123456789012345678zAZ",  # one lower case letter: no base64 id
                      "http://a/x/4111111111111112",  # fails Luhn's check
                      "http://a/x/0123456789abcdef0123456789abcdeg"):  # a non-hex letter
        assert redact_url(untouched) == untouched, untouched
    assert redact_url("http://a/u/0123456789abcdef0123456789abcdef/x") == "http://a/u/REDACTED/x"
    assert redact_url("http://a/u/550e8400-e29b-41d4-a716-446655440000") == "http://a/u/REDACTED"
    assert redact_url("http://a/?id=AbCdEf0123456789XyZabcd") == "http://a/?id=REDACTED"
    assert redact_url("http://a/pay?n=4111111111111111&m=4111-1111-1111-1111&x") \
        == "http://a/pay?n=REDACTED&m=REDACTED&x"
    assert redact_headers([(b"cookie", b"a=1"), (b"Set-Cookie", b"b"), (b"accept", b"x"), (b"accept", b"y")]) \
        == {"cookie": "REDACTED", "set-cookie": "REDACTED", "accept": "x, y"}
