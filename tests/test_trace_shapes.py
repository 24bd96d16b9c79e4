"""Trace events in Cloudflare's TraceItem shape, for every kind of event.

The shape is workerd's (``src/workerd/api/trace.h`` and ``trace.c++``; the
``TraceItem`` of @cloudflare/workers-types) and ``wrangler tail``'s JSON
(``TailEventMessage`` in workers-sdk's ``packages/wrangler/src/tail/createTail.ts``):

* ``cpuTime``, ``wallTime``, ``eventTimestamp`` and every log's and exception's
  ``timestamp`` are whole milliseconds (workerd divides by ``kj::MILLISECONDS``);
* an optional property (``entrypoint``, ``dispatchNamespace``, ``scriptTags``,
  ``durableObjectId``, a fetch's ``response``, an exception's ``stack``) is
  absent when it does not apply, not ``null``; a tail worker reads it as None;
* each event info has its type's fields: ``request``/``response``,
  ``cron``/``scheduledTime`` (a number), ``queue``/``batchSize``, an alarm's
  ``scheduledTime`` (a Date: an ISO string in JSON), ``rpcMethod``,
  ``getWebSocketEvent``, ``consumedEvents``;
* request headers whose names hold auth, jwt, key, secret or token are REDACTED.

Corral's own additions stay: ``requestId``, ``subrequests`` and ``children``.
One real server; every event is read off a real tail worker's posts or the
live tail, waiting on the event itself.
"""

from __future__ import annotations

import datetime
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest

from tests import storage_helpers as h
from tests.harness import Corral
from tests.test_observability import Collector, LiveTailReader, wait_for
from tests.test_websockets import Client

#: TraceItem's properties (workerd's JSG_RESOURCE_TYPE(TraceItem)), and Corral's additions.
CLOUDFLARE_FIELDS = {"event", "eventTimestamp", "logs", "exceptions", "diagnosticsChannelEvents",
                     "scriptName", "entrypoint", "scriptVersion", "dispatchNamespace", "scriptTags",
                     "tailAttributes", "preview", "durableObjectId", "outcome", "executionModel",
                     "truncated", "cpuTime", "wallTime"}
CORRAL_FIELDS = {"requestId", "subrequests", "children"}
#: Always there (``event`` and ``eventTimestamp`` may be null).
REQUIRED = {"event", "eventTimestamp", "logs", "exceptions", "diagnosticsChannelEvents", "scriptName",
            "outcome", "executionModel", "truncated", "cpuTime", "wallTime"}
OUTCOMES = {"ok", "exception", "exceededCpu", "exceededMemory", "exceededWallTime", "exceededSubrequests",
            "canceled", "scriptNotFound"}

TAILER = r'''
import json
from workers import WorkerEntrypoint, fetch


def read(item, name):
    """``item.name`` as a tail worker reads it (what it raised, if it did)."""
    try:
        return getattr(item, name)
    except AttributeError:
        return "AttributeError"


class Default(WorkerEntrypoint):
    async def tail(self, events):
        # What a tail worker written for Cloudflare reads, by attribute: an
        # optional property that does not apply is None, not an AttributeError.
        seen = []
        for e in events:
            info = e.event
            seen.append({
                "scriptName": e.scriptName, "dispatchNamespace": read(e, "dispatchNamespace"),
                "entrypoint": read(e, "entrypoint"), "scriptTags": read(e, "scriptTags"),
                "durableObjectId": read(e, "durableObjectId"),
                "response": read(info, "response") if info is not None and "request" in info else "n/a",
                "stacks": [read(x, "stack") for x in e.exceptions],
                "cpuTime": type(e.cpuTime).__name__, "wallTime": type(e.wallTime).__name__,
            })
        await fetch(self.env.COLLECTOR + "/tail/tailer", method="POST",
                    body=json.dumps({"events": events, "seen": seen}))
'''

SHAPES = r'''
import time
from js import WebSocketPair, console
from workers import DurableObject, Response, WorkerEntrypoint


class Room(DurableObject):
    async def fetch(self, request):
        client, server = WebSocketPair.new().object_values()
        self.ctx.acceptWebSocket(server)
        return Response(None, status=101, web_socket=client)

    async def webSocketMessage(self, ws, message):
        ws.send("echo:" + message)

    async def webSocketClose(self, ws, code, reason, wasClean):
        print("closed", code)

    async def bump(self):
        return 1

    async def arm(self, ms_from_now):
        await self.ctx.storage.setAlarm(time.time() * 1000 + ms_from_now)
        return True

    async def alarm(self, info=None):
        print("alarm rang")


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = "/" + request.url.split("/", 3)[-1].split("?")[0]
        if path == "/log":
            print("printed")
            console.warn("warned")
            return Response("logged", status=202)
        if path == "/throw":
            raise ValueError("shape boom")
        if path == "/room":
            return await self.env.ROOMS.getByName("room").fetch(request)
        if path == "/rpc":
            return Response(str(await self.env.ROOMS.getByName("room").bump()))
        if path == "/alarm":
            await self.env.ROOMS.getByName("alarmed").arm(30)
            return Response("armed")
        if path == "/named":
            text = await (await self.env.NAMED.fetch("https://named.example/x?api_key=AbCdEf0123456789XyZabcd")).text()
            return Response(text + " " + await self.env.NAMED.hello())
        if path == "/send":
            await self.env.Q.send({"n": 1})
            return Response("sent")
        return Response("?", status=404)

    async def scheduled(self, controller, env, ctx):
        print("tick", controller.cron)

    async def queue(self, batch, env, ctx):
        for message in batch.messages:
            message.ack()
'''

NAMED = r'''
from workers import Response, WorkerEntrypoint


class Named(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("named")

    async def hello(self):
        return "hi"


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("default")
'''

CONFIG = """
[observability]
tail_batch_wait_ms = 10
"""

TAIL = {"tail_consumers": [{"service": "tailer"}]}


@pytest.fixture(scope="module")
def corral(tmp_path_factory, collector):
    state = tmp_path_factory.mktemp("trace-shapes")
    config = state / "corral.toml"
    config.write_text(CONFIG)
    server = Corral(state / "state", extra_args=["--config", str(config)]).start()
    try:
        server.namespace("default")
        server.deploy("tailer", TAILER, namespace=None,
                      bindings=[{"type": "plain_text", "name": "COLLECTOR", "text": collector.url}])
        server.deploy("dispatch", h.DISPATCHER, namespace=None, extra_metadata=TAIL,
                      bindings=[{"type": "dispatch_namespace", "name": "dispatcher", "namespace": "default"}])
        server.route("*/*", "dispatch")
        server.deploy("named", NAMED, namespace=None, extra_metadata=TAIL)
        server.deploy("shapes", SHAPES, tags=["plan:pro"], bindings=[
            {"type": "durable_object_namespace", "name": "ROOMS", "class_name": "Room"},
            {"type": "service", "name": "NAMED", "service": "named", "entrypoint": "Named"},
            {"type": "queue", "name": "Q", "queue_name": "shapes-q"}],
            extra_metadata={**TAIL, "queue_consumers": [
                {"queue": "shapes-q", "max_batch_size": 1, "max_batch_timeout": 0.1}]})
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# reading events
# ---------------------------------------------------------------------------


def posts(collector: Collector) -> list[dict[str, Any]]:
    return [json.loads(body) for body in collector.bodies("/tail/tailer")]


def tail_event(collector: Collector, predicate, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first event (top-level, as the tail worker got it) that matches,
    with what the tail worker read of it by attribute."""
    def find():
        for post in posts(collector):
            for event, seen in zip(post["events"], post["seen"], strict=True):
                if predicate(event):
                    return event, seen
        return None
    return wait_for(find, timeout=20, what=what)


def call(corral: Corral, path: str, **kwargs: Any):
    return corral.request(path, host="shapes.localhost", **kwargs)


def own_event(collector: Collector, rid: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The shapes worker's own event of request ``rid`` (its tail consumer's copy)."""
    return tail_event(collector, lambda e: e["scriptName"] == "shapes" and e.get("requestId") == rid,
                      f"the shapes event of {rid}")


def assert_shape(event: dict[str, Any]) -> None:
    """Cloudflare's TraceItem field names and types, recursively over children."""
    keys = set(event)
    assert REQUIRED <= keys, REQUIRED - keys
    assert keys <= CLOUDFLARE_FIELDS | CORRAL_FIELDS, keys - CLOUDFLARE_FIELDS - CORRAL_FIELDS
    assert isinstance(event["scriptName"], str)
    assert event["outcome"] in OUTCOMES
    assert event["executionModel"] in ("stateless", "durableObject")
    assert type(event["truncated"]) is bool
    for field in ("cpuTime", "wallTime"):  # workerd's uint milliseconds
        assert type(event[field]) is int and event[field] >= 0, (field, event[field])
    assert type(event["eventTimestamp"]) is int
    assert event["event"] is None or isinstance(event["event"], dict)
    # Optional ones are absent, not null, when they do not apply.
    for field in ("entrypoint", "dispatchNamespace", "durableObjectId"):
        if field in event:
            assert isinstance(event[field], str) and event[field], (field, event[field])
    if "scriptTags" in event:
        assert event["scriptTags"] and all(isinstance(t, str) for t in event["scriptTags"])
    if "scriptVersion" in event:
        assert isinstance(event["scriptVersion"]["id"], str)
        assert set(event["scriptVersion"]) <= {"id", "tag", "message"}
    for line in event["logs"]:
        assert set(line) == {"message", "level", "timestamp"}, line
        assert isinstance(line["message"], list) and line["level"] in ("debug", "info", "log", "warn", "error")
        assert type(line["timestamp"]) is int, line
    for exc in event["exceptions"]:
        assert {"name", "message", "timestamp"} <= set(exc) <= {"name", "message", "timestamp", "stack"}, exc
        assert type(exc["timestamp"]) is int and isinstance(exc["name"], str) and isinstance(exc["message"], str)
        if "stack" in exc:
            assert isinstance(exc["stack"], str) and exc["stack"]
    assert event["diagnosticsChannelEvents"] == []
    for child in event.get("children") or ():
        assert_shape(child)


# ---------------------------------------------------------------------------
# fetch
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logged(corral, collector) -> tuple[dict[str, Any], dict[str, Any], int]:
    """One fetch that logs, with headers to redact: its event, what the tail
    worker read of it, and the time just before it."""
    before = int(time.time() * 1000)
    resp = call(corral, "/log?page=2", headers={"x-custom-token": "t0k", "x-goog-api-key": "k3y",
                                                "authorization": "Bearer b", "x-plain": "kept"})
    assert resp.status == 202, resp
    event, seen = own_event(collector, resp.headers["x-corral-request-id"])
    return event, seen, before


def test_cpu_wall_and_every_timestamp_are_whole_milliseconds(logged):
    """workerd's cpuTime and wallTime are ``uint`` ms, and a log's timestamp a
    Date's ms (Corral wrote 0.178 and 1796398153574.0115)."""
    event, seen, before = logged
    assert type(event["cpuTime"]) is int and type(event["wallTime"]) is int
    assert seen["cpuTime"] == seen["wallTime"] == "int"
    assert [(line["level"], line["message"]) for line in event["logs"]] == [
        ("log", ["printed"]), ("warn", ["warned"])]
    for line in event["logs"]:
        assert type(line["timestamp"]) is int and before <= line["timestamp"] <= time.time() * 1000
    assert type(event["eventTimestamp"]) is int and before <= event["eventTimestamp"] <= time.time() * 1000
    assert_shape(event)  # and every other field's


def test_headers_are_redacted_as_workerd_redacts_them(logged):
    """workerd redacts cookie, set-cookie and every header whose name holds
    auth, jwt, key, secret or token (Corral only a fixed list of names)."""
    event, _, _ = logged
    headers = event["event"]["request"]["headers"]
    assert headers["x-custom-token"] == headers["x-goog-api-key"] == headers["authorization"] == "REDACTED"
    assert headers["x-plain"] == "kept"


def test_a_fetch_event_has_workerd_fields_and_optional_ones_read_as_none(logged):
    event, seen, _ = logged
    assert event["outcome"] == "ok" and event["executionModel"] == "stateless"
    assert event["dispatchNamespace"] == "default" and event["scriptTags"] == ["plan:pro"]
    info = event["event"]
    assert set(info) == {"request", "response"} and info["response"] == {"status": 202}
    request = info["request"]
    assert set(request) == {"url", "method", "headers"}
    assert request["method"] == "GET" and request["url"] == "http://shapes.localhost/log?page=2"
    # The default entrypoint of a stateless worker: no entrypoint, no object id;
    # read by attribute in a tail worker, None (Pyodide's undefined), not an AttributeError.
    assert "entrypoint" not in event and "durableObjectId" not in event
    assert seen["entrypoint"] is None and seen["durableObjectId"] is None
    assert seen["dispatchNamespace"] == "default" and seen["response"] == {"status": 202}
    assert_shape(event)  # and every other field's


def test_the_dispatchers_event_leaves_out_what_a_platform_script_has_not(corral, collector):
    """A platform script has no dispatch namespace and (here) no tags:
    Cloudflare's TraceItem leaves both undefined; Corral sent null and []."""
    resp = call(corral, "/log")
    rid = resp.headers["x-corral-request-id"]
    top, seen = tail_event(collector, lambda e: e["scriptName"] == "dispatch" and e.get("requestId") == rid,
                           "the dispatcher's event")
    assert "dispatchNamespace" not in top and "scriptTags" not in top and "entrypoint" not in top
    assert seen["dispatchNamespace"] is None and seen["scriptTags"] is None
    [child] = top["children"]
    assert child["scriptName"] == "shapes" and child["dispatchNamespace"] == "default"
    assert_shape(top)  # and every other field's



def test_a_handler_that_threw_has_no_response_and_a_cloudflare_exception(corral, collector):
    resp = call(corral, "/throw")
    assert resp.status == 502 and "shape boom" in resp.text  # the dispatcher's answer
    event, seen = own_event(collector, resp.headers["x-corral-request-id"])
    assert event["outcome"] == "exception"
    # TraceItemFetchEventInfo.response is undefined when no response was made.
    assert "response" not in event["event"] and seen["response"] is None
    [exc] = event["exceptions"]
    assert exc["name"] == "ValueError" and exc["message"] == "shape boom"
    assert "shape boom" in exc["stack"] and seen["stacks"] == [exc["stack"]]
    assert_shape(event)  # and every other field's



def test_a_fetch_through_a_named_entrypoint_and_its_rpc_call(corral, collector):
    """A service binding's named entrypoint: the callee's trace names the class
    (TraceItem.entrypoint) and has the request (it had ``{"request": {}}``)."""
    resp = call(corral, "/named")
    assert resp.status == 200 and resp.text == "named hi", resp
    event, _ = own_event(collector, resp.headers["x-corral-request-id"])
    fetched, called = event["children"]
    for child in (fetched, called):
        assert child["scriptName"] == "named" and child["entrypoint"] == "Named"
        assert child["executionModel"] == "stateless" and "dispatchNamespace" not in child
    assert fetched["event"]["request"]["url"] == "https://named.example/x?api_key=REDACTED"
    assert fetched["event"]["request"]["method"] == "GET"
    assert fetched["event"]["response"] == {"status": 200}
    assert called["event"] == {"rpcMethod": "hello"}


# ---------------------------------------------------------------------------
# scheduled, queue, alarm, RPC, hibernatable WebSockets, tail
# ---------------------------------------------------------------------------
    assert_shape(event)  # and every other field's



def test_a_cron_event_has_a_numeric_scheduled_time(corral, collector):
    before = int(time.time() * 1000)
    resp = corral.admin("POST", "/accounts/local/workers/dispatch/namespaces/default/scripts/shapes"
                        "/schedules/trigger", {"cron": "*/7 * * * *"})
    assert resp.status == 200, resp.text
    event, seen = tail_event(collector, lambda e: (e["event"] or {}).get("cron") == "*/7 * * * *",
                             "the scheduled event")
    # TraceItemScheduledEventInfo: the cron and a number of ms (an integer, as JS writes it).
    assert set(event["event"]) == {"cron", "scheduledTime"}
    assert type(event["event"]["scheduledTime"]) is int
    assert before - 1000 <= event["event"]["scheduledTime"] <= int(time.time() * 1000)
    assert [line["message"] for line in event["logs"]] == [["tick */7 * * * *"]]
    assert seen["response"] == "n/a"
    assert_shape(event)  # and every other field's



def test_a_queue_batch_has_the_queue_and_batch_size(corral, collector):
    assert call(corral, "/send").status == 200
    event, _ = tail_event(collector, lambda e: "queue" in (e["event"] or {}), "the queue event")
    assert event["event"] == {"queue": "shapes-q", "batchSize": 1}
    assert event["executionModel"] == "stateless" and event["outcome"] == "ok"
    assert_shape(event)  # and every other field's



def test_a_durable_object_alarm_has_a_date_and_the_objects_id(corral, collector):
    before = int(time.time() * 1000)
    assert call(corral, "/alarm").status == 200
    event, seen = tail_event(collector, lambda e: e["executionModel"] == "durableObject"
                             and "scheduledTime" in (e["event"] or {}), "the alarm event")
    assert event["entrypoint"] == "Room" and event["outcome"] == "ok"
    # TraceItemAlarmEventInfo.scheduledTime is a Date: JSON (wrangler tail's
    # AlarmEvent, JSON.stringify) writes it as an ISO 8601 string.
    when = event["event"]["scheduledTime"]
    assert isinstance(when, str) and when.endswith("Z"), when
    at = datetime.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp() * 1000
    assert before <= at <= time.time() * 1000 + 1000
    assert [line["message"] for line in event["logs"]] == [["alarm rang"]]
    assert isinstance(event["durableObjectId"], str) and len(event["durableObjectId"]) == 64
    assert seen["durableObjectId"] == event["durableObjectId"]
    assert_shape(event)  # and every other field's



def test_a_durable_object_rpc_call_has_its_method_and_object(corral, collector):
    resp = call(corral, "/rpc")
    assert resp.status == 200 and resp.text == "1"
    event, _ = own_event(collector, resp.headers["x-corral-request-id"])
    [rpc] = event["children"]
    assert rpc["event"] == {"rpcMethod": "bump"}
    assert rpc["executionModel"] == "durableObject" and rpc["entrypoint"] == "Room"
    assert len(rpc["durableObjectId"]) == 64
    assert_shape(event)  # and every other field's



def test_hibernatable_websocket_events(corral):
    with LiveTailReader(corral, "script=shapes") as tail:
        client = Client(corral.port, "shapes.localhost", "/room")
        client.send("hi")
        assert client.next() == "echo:hi"
        client.close(4001, "done")
        client.next()
        client.drop()
        found: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 20
        while len(found) < 2 and time.monotonic() < deadline:
            for event in [tail.next()]:
                for node in [event, *event.get("children", [])]:
                    info = (node.get("event") or {}).get("getWebSocketEvent")
                    if info:
                        found[info["webSocketEventType"]] = node
    assert set(found) == {"message", "close"}, found
    for node in found.values():
        assert_shape(node)
        assert node["executionModel"] == "durableObject" and node["entrypoint"] == "Room"
    assert found["message"]["event"] == {"getWebSocketEvent": {"webSocketEventType": "message"}}
    close = found["close"]["event"]["getWebSocketEvent"]
    assert close == {"webSocketEventType": "close", "code": 4001, "wasClean": True}


def test_a_tail_workers_own_invocation_lists_the_events_it_consumed(corral, collector):
    with LiveTailReader(corral, "script=tailer") as tail:
        deadline = time.monotonic() + 20
        event = None
        while time.monotonic() < deadline:
            call(corral, "/log")
            got = tail.next()
            if (got.get("event") or {}).get("consumedEvents"):
                event = got
                break
    assert event is not None
    assert "dispatchNamespace" not in event and event["executionModel"] == "stateless"
    consumed = event["event"]["consumedEvents"]
    assert set(event["event"]) == {"consumedEvents"}
    assert consumed and all(set(c) == {"scriptName"} for c in consumed)
    assert {c["scriptName"] for c in consumed} <= {"shapes", "dispatch", "named"}


# ---------------------------------------------------------------------------
# events with no invocation behind them
# ---------------------------------------------------------------------------
    assert_shape(event)  # and every other field's



def test_background_and_platform_exceptions_have_the_shape_too():
    """The event of a task killed after its response: every TraceItem field,
    ``event`` null; and an exception with no stack has none (not "")."""
    from supervisor.observability.traces import background, exceptions_of

    record = SimpleNamespace(name="bg", namespace="default", tags=[], version_id="v1", version="h",
                             version_tag="", version_message="")
    event = background(record, "exceededCpu", "too much")  # type: ignore[arg-type]
    assert_shape(event)
    assert event["event"] is None and event["dispatchNamespace"] == "default"
    assert event["exceptions"][0]["name"] == "exceededCpu" and "stack" not in event["exceptions"][0]
    assert exceptions_of([{"name": "E", "message": "m", "timestamp": 1.9, "stack": ""}]) == [
        {"name": "E", "message": "m", "timestamp": 1}]


def test_custom_events_have_no_fields():
    """TraceItemCustomEventInfo has no properties (Corral wrote ``{kind: {}}``)."""
    from supervisor.observability.traces import event_info

    class Unknown:
        pass

    assert event_info(SimpleNamespace(event=Unknown())) == {}


def test_spans_keep_the_exact_figures_the_event_cuts():
    """The OTLP exporter reads cpu and wall time from the fetch tree, unrounded:
    whole milliseconds are Cloudflare's shape for the event, not a span's."""
    from supervisor.observability.traces import fetch_tree

    inv = SimpleNamespace(fetches=None, cpu_ns=1_500_000, wall_ms=2.75, event_ts=1_700_000_000_123.456, children=[])
    assert fetch_tree(inv) == {"fetches": [], "cpuMs": 1.5, "wallMs": 2.75, "startMs": 1_700_000_000_123.456,
                               "children": []}
