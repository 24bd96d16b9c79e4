"""Three of workerd's behaviours, over a real ``corral serve``:

* a console call's ``logs[].message`` is the list of its arguments, each as
  its JSON value (``console.log("a", 1, {"k": 2})``: ``["a", 1, {"k": 2}]``),
  in the live tail, a tail worker's events, the invocation log line and
  ``corral tail --format pretty``; ``print`` and ``logging`` stay one string;
* a trace event's ``scriptVersion`` carries the ``tag`` and ``message`` of the
  version that ran (its upload's ``workers/tag`` and ``workers/message``
  annotations), after a rollback and in a split deployment too, and leaves
  them out when the version has none;
* an RPC method (a Durable Object's, a named entrypoint's) whose result is
  awaited once, as workerd's ``wrapper_func`` awaits it: a plain ``def``
  returning an un-awaited coroutine gives its caller the value; an ``async
  def`` returning one is the SDK's "Awaitable ... cannot be sent over RPC."
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from supervisor.observability.cli_tail import format_pretty
from tests import storage_helpers as h
from tests.harness import Corral
from tests.test_observability import LiveTailReader, wait_for
from tests.test_trace_shapes import TAILER, tail_event

TALKER = r'''
import logging
from js import console
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        console.log("a", 1, {"k": 2})
        console.info("one string")
        console.warn(1.5, float("nan"), None, True, [1, "x"], (2,))
        console.debug({3: [{}]})
        print("printed", 1, {"k": 2})
        logging.getLogger("app").warning("logged %s", 2)
        console.error("failed:", ValueError("boom"))
        console.log("long", "x" * 20000)
        return Response("talked")
'''

#: What workerd's trace has for TALKER's calls, in order.
TALKED = [
    (["a", 1, {"k": 2}], "log"),
    (["one string"], "info"),
    ([1.5, None, None, True, [1, "x"], [2]], "warn"),
    ([{"3": [{}]}], "debug"),
    (["printed 1 {'k': 2}"], "log"),
    (["logged 2"], "warn"),
    (["failed:", "ValueError: boom"], "error"),
    # Longer than a log line may be (16 KiB) as JSON: one string, cut, as a long line is.
    (["long " + "x" * (16 * 1024 - 5) + "... [3621 characters cut]"], "log"),
]

VERSIONED = r'''
from workers import Response, WorkerEntrypoint

RELEASE = "{release}"


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        meta = self.env.META
        return Response.json({{"id": meta.id, "tag": meta.tag, "release": RELEASE}})
'''

KEEPER = r'''
import asyncio
import json
from workers import DurableObject, Response, WorkerEntrypoint


class Keeper(DurableObject):
    def put(self, value):
        return self.ctx.storage.put("k", value)

    def get(self):
        return self.ctx.storage.get("k")

    async def nested(self):
        return self.ctx.storage.get("k")

    async def task(self):
        return asyncio.ensure_future(self.ctx.storage.get("k"))


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        stub = self.env.KEEPER.getByName("one")
        await stub.put(41)
        return Response(json.dumps({
            "object": [await stub.get(), await refused(stub.nested()), await refused(stub.task())],
            "service": [await self.env.API.plain(7), await refused(self.env.API.nested(8))]}))


async def refused(call):
    try:
        return await call
    except Exception as exc:
        return f"{getattr(exc, 'name', type(exc).__name__)}: {exc}"
'''

API = r'''
from workers import Response, WorkerEntrypoint


async def later(value):
    return value


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("api")


class Api(WorkerEntrypoint):
    def plain(self, value):
        return later(value)

    async def nested(self, value):
        return later(value)
'''

CONFIG = """
log_invocations = true

[observability]
tail_batch_wait_ms = 10
"""

TAIL = {"tail_consumers": [{"service": "tailer"}]}
SCRIPTS = "/accounts/local/workers/dispatch/namespaces/default/scripts"


@pytest.fixture(scope="module")
def corral(tmp_path_factory, collector):
    state = tmp_path_factory.mktemp("log-args")
    config = state / "corral.toml"
    config.write_text(CONFIG)
    server = Corral(state / "state", extra_args=["--config", str(config)]).start()
    try:
        server.namespace("default")
        server.deploy("tailer", TAILER, namespace=None,
                      bindings=[{"type": "plain_text", "name": "COLLECTOR", "text": collector.url}])
        server.deploy_dispatcher(h.DISPATCHER)
        server.deploy("api", API, namespace=None)
        yield server
    finally:
        server.stop()


def messages(event: dict[str, Any]) -> list[tuple[Any, str]]:
    return [(line["message"], line["level"]) for line in event["logs"]]


# ---------------------------------------------------------------------------
# console arguments
# ---------------------------------------------------------------------------


def test_a_console_calls_message_is_its_arguments_as_json_values(corral, collector):
    corral.deploy("talker", TALKER, extra_metadata=TAIL)
    with LiveTailReader(corral, "script=talker") as live:
        resp = corral.request("/", host="talker.localhost")
        assert resp.status == 200, resp.text
        rid = resp.headers["x-corral-request-id"]
        streamed = live.next()
    assert streamed["requestId"] == rid
    assert messages(streamed) == TALKED
    assert streamed["truncated"] is True  # for the long one
    # An exception logged is a log line, not one of the trace's (uncaught) exceptions.
    assert streamed["exceptions"] == []

    consumed, _seen = tail_event(collector, lambda e: e["scriptName"] == "talker" and e.get("requestId") == rid,
                                 "the talker's event at its tail worker")
    assert messages(consumed) == TALKED

    def logged() -> dict[str, Any] | None:
        for line in corral.log_events():
            trace = line.get("trace") or {}
            for event in (trace, *trace.get("children", ())):
                if event.get("scriptName") == "talker" and event.get("requestId") == rid:
                    return event
        return None

    assert messages(wait_for(logged, what="the talker's invocation log line")) == TALKED

    # corral tail --format pretty: the values joined by spaces, as wrangler's pretty tail prints them.
    pretty = format_pretty(streamed, False).splitlines()
    assert '  (log) a 1 {"k": 2}' in pretty
    assert "  (warn) 1.5 null null true [1, \"x\"] [2]" in pretty
    assert "  (log) printed 1 {'k': 2}" in pretty
    assert "  (error) failed: ValueError: boom" in pretty


# ---------------------------------------------------------------------------
# scriptVersion
# ---------------------------------------------------------------------------


def upload(corral: Corral, release: str, annotations: dict[str, str] | None = None) -> str:
    """A new version of "versioned", deployed; its id."""
    extra = {"annotations": annotations} if annotations is not None else {}
    resp = corral.deploy("versioned", VERSIONED.format(release=release), extra_metadata=extra,
                         bindings=[{"type": "version_metadata", "name": "META"}])
    return resp.json()["result"]["version_id"]


def deploy_split(corral: Corral, shares: list[tuple[str, float]]) -> None:
    resp = corral.admin("POST", f"{SCRIPTS}/versioned/deployments", {
        "strategy": "percentage", "versions": [{"version_id": v, "percentage": p} for v, p in shares]})
    assert resp.status == 200, resp.text


def served(corral: Corral, live: LiveTailReader) -> tuple[dict[str, Any], dict[str, Any]]:
    """One request to "versioned": what it answered, and its trace event."""
    resp = corral.request("/", host="versioned.localhost")
    assert resp.status == 200, resp.text
    event = live.next()
    assert event["requestId"] == resp.headers["x-corral-request-id"]
    return resp.json(), event


def test_script_version_carries_the_tag_and_message_of_the_version_that_ran(corral):
    first = upload(corral, "1", {"workers/tag": "v1", "workers/message": "the first one",
                                 "workers/triggered_by": "upload"})
    with LiveTailReader(corral, "script=versioned") as live:
        answer, event = served(corral, live)
        assert event["scriptVersion"] == {"id": first, "tag": "v1", "message": "the first one"}
        assert answer == {"id": first, "tag": "v1", "release": "1"}  # version_metadata's tag too
        listed = corral.admin("GET", f"{SCRIPTS}/versioned/versions").json()["result"]["items"]
        assert listed[0]["annotations"] == {"workers/tag": "v1", "workers/message": "the first one"}

        bare = upload(corral, "2")  # no annotations: no tag, no message (absent, not "")
        answer, event = served(corral, live)
        assert answer["release"] == "2" and event["scriptVersion"] == {"id": bare}

        tagged = upload(corral, "3", {"workers/tag": "v3"})
        assert served(corral, live)[1]["scriptVersion"] == {"id": tagged, "tag": "v3"}

        deploy_split(corral, [(first, 100)])  # a rollback
        answer, event = served(corral, live)
        assert answer["release"] == "1"
        assert event["scriptVersion"] == {"id": first, "tag": "v1", "message": "the first one"}

        deploy_split(corral, [(first, 50), (tagged, 50)])
        expected = {first: {"id": first, "tag": "v1", "message": "the first one"},
                    tagged: {"id": tagged, "tag": "v3"}}
        seen: set[str] = set()
        for _ in range(200):  # each version's requests carry its own (50/50: both within a few)
            answer, event = served(corral, live)
            assert event["scriptVersion"] == expected[answer["id"]]
            seen.add(answer["id"])
            if len(seen) == 2:
                break
        assert seen == {first, tagged}


def test_a_version_tag_longer_than_cloudflares_limit_is_refused(corral):
    resp = corral.deploy("versioned", VERSIONED.format(release="x"), check=False,
                         extra_metadata={"annotations": {"workers/tag": "t" * 101}})
    assert resp.status == 400 and "workers/tag" in resp.text, resp.text


# ---------------------------------------------------------------------------
# RPC results that are awaitables
# ---------------------------------------------------------------------------


def test_an_rpc_methods_result_is_awaited_once_as_workerd_awaits_it(corral):
    corral.deploy("keeper", KEEPER, bindings=[
        {"type": "durable_object_namespace", "name": "KEEPER", "class_name": "Keeper"},
        {"type": "service", "name": "API", "service": "api", "entrypoint": "Api"}])
    resp = corral.request("/", host="keeper.localhost")
    assert resp.status == 200, resp.text
    got = json.loads(resp.text)
    assert got["object"][0] == 41 and got["service"][0] == 7, got
    refusals = got["object"][1:] + got["service"][1:]
    assert [r.startswith("TypeError") for r in refusals] == [True] * 3, refusals
    for refusal, kind in zip(refusals, ("_asyncio.Task", "_asyncio.Task", "coroutine"), strict=True):
        assert refusal.endswith(f"Awaitable <class '{kind}'> cannot be sent over RPC."), refusals
