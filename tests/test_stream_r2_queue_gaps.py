"""Three gaps, each over a real ``corral serve``:

* A WSGI app's streamed body: its generator runs, and is closed, in the
  handler's invocation, where synchronous code can wait (``requests``,
  ``urllib3``, ``run_sync``) as its view could. Its ``close()`` after the
  client stopped reading (gone, or a HEAD request) ran only when the garbage
  collector finalized the adapter's async generator, in a task of its own
  after the invocation had ended: a ``finally`` that fetched raised
  "fetch() can only be used while handling a request" and nothing was sent.
* R2's storage class: ``put(..., storageClass="InfrequentAccess")`` (and a
  multipart upload's) is kept and read back by ``head``/``get``/``list`` and
  the REST API's listing; any other class is refused. An index written by a
  Corral that kept no class is migrated in place, its objects Standard.
  Corral said "Standard" of every object.
* A queue batch that fails because its ``waitUntil`` work raised has that
  exception once in its trace event, as workerd reports it (Corral had it
  twice: reported by the work, then again as the batch's failure).

And one found on the way: a streamed response the client gave up on (gone,
or a HEAD request) never had a trace event: the invocation waited for the
end of a body nobody read any more. A HEAD request's (once there) had the
runtime's ``StreamFailed: consumer gone`` as the worker's exception.
"""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests import storage_helpers as h
from tests.harness import Corral
from tests.test_django_cf import deploy as deploy_with_requirements
from tests.test_observability import Collector, wait_for
from tests.test_trace_shapes import CONFIG, TAILER
from tests.upstream import Upstream

TAIL = {"tail_consumers": [{"service": "tailer"}]}


@pytest.fixture(scope="module")
def corral(tmp_path_factory: pytest.TempPathFactory, collector: Collector):
    state = tmp_path_factory.mktemp("stream-r2-queue")
    config = state / "corral.toml"
    config.write_text(CONFIG)
    server = Corral(state / "state", extra_args=["--config", str(config)]).start()
    try:
        server.deploy("tailer", TAILER, namespace=None,
                      bindings=[{"type": "plain_text", "name": "COLLECTOR", "text": collector.url}])
        server.deploy_dispatcher()
        yield server
    finally:
        server.stop()


def tail_event(collector: Collector, predicate: Any, what: str) -> dict[str, Any]:
    """The first trace event the tail worker got that matches ``predicate``."""
    def find() -> dict[str, Any] | None:
        for body in collector.bodies("/tail/tailer"):
            for event in json.loads(body)["events"]:
                if predicate(event):
                    return event
        return None
    return wait_for(find, timeout=20, what=what)


def closed_after_leaving(up: Upstream, tag: str) -> bool:
    """Whether the app's generator, closed, told the upstream so (its ``finally``)."""
    return up.wait_for(lambda: bool(up.seen(f"/echo/{tag}/closed")), timeout=15)


# ---------------------------------------------------------------------------
# WSGI: a streamed body's generator, iterated and closed in its invocation
# ---------------------------------------------------------------------------

FLASK_FEED = '''
import requests
from flask import Flask, Response, request
from workers import WorkerEntrypoint, wsgi

app = Flask(__name__)


@app.route("/feed")
def feed():
    base, tag = request.args["base"], request.args["tag"]

    def lines():
        try:
            yield "start\\n"
            yield "second\\n"
            for i in range(2):  # pulled as the client reads: requests waits in the invocation
                yield requests.get(f"{base}/echo/{tag}/{i}").json()["path"] + "\\n"
            yield "end of echoes\\n"
            while True:  # until the client leaves
                yield "x" * 4096 + "\\n"
        finally:
            requests.get(f"{base}/echo/{tag}/closed")
    return Response(lines(), mimetype="text/plain")


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await wsgi.fetch(app, request, self.env)
'''


def test_a_flask_generator_waits_as_it_streams_and_closes_in_its_invocation(
        corral: Corral, upstream: Upstream) -> None:
    deploy_with_requirements(corral, "flaskfeed", {"worker.py": FLASK_FEED}, ["flask", "requests"])
    tag = uuid.uuid4().hex
    conn = http.client.HTTPConnection("127.0.0.1", corral.port, timeout=30)
    try:
        conn.request("GET", f"/feed?base={upstream.url('').rstrip('/')}&tag={tag}",
                     headers={"host": "flaskfeed.localhost"})
        resp = conn.getresponse()
        assert resp.status == 200, (resp.status, resp.read(2000), corral.log())
        seen = b""
        while b"end of echoes\n" not in seen:
            piece = resp.read1(65536)
            assert piece, seen
            seen += piece
        assert seen.startswith(f"start\nsecond\n/echo/{tag}/0\n/echo/{tag}/1\nend of echoes\n".encode()), seen
    finally:
        conn.close()  # the client leaves mid-stream: the generator is closed, its finally fetches
    assert closed_after_leaving(upstream, tag), (upstream.requests[-5:], corral.log())


PLAIN_WSGI = '''
import asyncio
from urllib.parse import parse_qs

import urllib3
from pyodide.ffi import run_sync
from workers import WorkerEntrypoint, wsgi

POOL = urllib3.PoolManager()


def app(environ, start_response):
    query = parse_qs(environ["QUERY_STRING"])
    base, tag = query["base"][0], query["tag"][0]
    start_response("200 OK", [("content-type", "text/plain")])

    def body():
        try:
            yield b"a"
            yield b"b"
            yield str(run_sync(asyncio.sleep(0, 7))).encode()
            yield POOL.request("GET", f"{base}/echo/{tag}/iterated").json()["path"].encode()
            while "endless" in query:  # until the reader stops
                yield b"x" * 4096
        finally:
            POOL.request("GET", f"{base}/echo/{tag}/closed")
    return body()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await wsgi.fetch(app, request, self.env)
'''


def test_a_wsgi_body_a_head_request_stops_is_closed_in_its_invocation(
        corral: Corral, upstream: Upstream) -> None:
    """Read whole, the body's generator waits (run_sync, urllib3) as it
    streams. HEAD: the body is not read, the stream is aborted under the
    endless generator, and its ``close()`` (its ``finally``, which waits on
    urllib3) runs while the invocation can still make requests."""
    deploy_with_requirements(corral, "plainwsgi", {"worker.py": PLAIN_WSGI}, ["urllib3"])
    base, tag = upstream.url("").rstrip("/"), uuid.uuid4().hex
    whole = corral.request(f"/?base={base}&tag={tag}", host="plainwsgi.localhost")
    assert (whole.status, whole.body) == (200, f"ab7/echo/{tag}/iterated".encode()), whole
    assert closed_after_leaving(upstream, tag)  # at its end, as PEP 3333 has it
    tag = uuid.uuid4().hex
    resp = corral.request(f"/?base={base}&tag={tag}&endless=1", host="plainwsgi.localhost", method="HEAD")
    assert resp.status == 200 and resp.body == b"", resp
    assert closed_after_leaving(upstream, tag), (upstream.requests[-5:], corral.log())


# ---------------------------------------------------------------------------
# R2: storage classes
# ---------------------------------------------------------------------------

BUCKET = {"type": "r2_bucket", "name": "BUCKET", "bucket_name": "classes"}

STORAGE_CLASSES = '''
put = await env.BUCKET.put("ia", "cold", storageClass="InfrequentAccess")
std = await env.BUCKET.put("std", "warm", storage_class="Standard")
plain = await env.BUCKET.put("plain", "warm")
head = await env.BUCKET.head("ia")
got = await env.BUCKET.get("ia")
upload = await env.BUCKET.createMultipartUpload("multi", {"storageClass": "InfrequentAccess"})
part = await upload.uploadPart(1, "parts")
done = await upload.complete([part])
listed = await env.BUCKET.list()
return {"put": put.storageClass, "std": std.storageClass, "plain": plain.storage_class,
        "head": head.storageClass, "get": got.storageClass, "text": await got.text(),
        "list": {o.key: o.storageClass for o in listed.objects}, "multi": done.storageClass,
        "multi_head": (await env.BUCKET.head("multi")).storageClass}
'''


def test_r2_keeps_an_objects_storage_class(corral: Corral) -> None:
    h.deploy(corral, "classes", [BUCKET])
    assert h.ok(corral, "classes", STORAGE_CLASSES) == {
        "put": "InfrequentAccess", "std": "Standard", "plain": "Standard", "head": "InfrequentAccess",
        "get": "InfrequentAccess", "text": "cold",
        "list": {"ia": "InfrequentAccess", "multi": "InfrequentAccess", "plain": "Standard", "std": "Standard"},
        "multi": "InfrequentAccess", "multi_head": "InfrequentAccess"}
    listed = corral.admin("GET", "/accounts/local/r2/buckets/classes/objects?namespace=default")
    assert listed.status == 200, listed
    assert {o["key"]: o["storage_class"] for o in listed.json()["result"]} == {
        "ia": "InfrequentAccess", "multi": "InfrequentAccess", "plain": "Standard", "std": "Standard"}


def test_r2_refuses_a_storage_class_it_does_not_have(corral: Corral) -> None:
    h.deploy(corral, "badclass", [BUCKET])
    for call in ('await env.BUCKET.put("cold", "x", storageClass="Glacier")',
                 'await env.BUCKET.createMultipartUpload("cold", storageClass="STANDARD_IA")'):
        refused = h.fails(corral, "badclass", call)
        assert refused["js"] and "The storage class specified is not valid" in refused["message"], refused
    assert h.ok(corral, "badclass", 'return await env.BUCKET.head("cold")') is None


def test_r2_objects_of_an_older_index_read_as_standard(tmp_path: Path) -> None:
    """An index made before storage classes (no column) is migrated in place
    on first use: what it held is Standard, and new puts keep their class."""
    server = h.start(tmp_path / "state")
    try:
        h.deploy(server, "old", [BUCKET])
        h.ok(server, "old", 'await env.BUCKET.put("before", "kept")')
    finally:
        server.stop()
    [index] = [p for p in (tmp_path / "state").rglob("index.sqlite3") if "r2" in p.parts]
    with sqlite3.connect(index) as db:  # as an older Corral left it
        for table in ("objects", "uploads"):
            db.execute(f"ALTER TABLE {table} DROP COLUMN storage_class")
    server = Corral(tmp_path / "state", extra_args=["--config", str(tmp_path / "state" / "storage-test.toml")]
                    ).start()
    try:
        got = h.ok(server, "old", textwrap.dedent('''
            await env.BUCKET.put("after", "new", storageClass="InfrequentAccess")
            before = await env.BUCKET.get("before")
            return [before.storageClass, await before.text(),
                    [(o.key, o.storageClass) for o in (await env.BUCKET.list()).objects]]'''))
        assert got == ["Standard", "kept", [["after", "InfrequentAccess"], ["before", "Standard"]]]
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# Queues: a batch failed by its waitUntil work
# ---------------------------------------------------------------------------

QUEUE_WAIT_UNTIL = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        await self.env.Q.send("job")
        return Response("sent")

    async def queue(self, batch, env, ctx):
        async def later():
            raise RuntimeError("the background work failed")

        ctx.waitUntil(later())
'''


def queue_event(collector: Collector, script: str) -> dict[str, Any]:
    """The first queue batch's trace event of ``script``, as its tail worker got it."""
    return tail_event(collector, lambda e: e["scriptName"] == script and "queue" in (e["event"] or {}),
                      f"{script}'s queue event")


def test_a_batch_failed_by_its_wait_until_work_reports_the_error_once(
        corral: Corral, collector: Collector) -> None:
    corral.deploy("qwait", QUEUE_WAIT_UNTIL, namespace=None,
                  bindings=[{"type": "queue", "name": "Q", "queue_name": "gaps-wait"}],
                  extra_metadata={**TAIL, "queue_consumers": [
                      {"queue": "gaps-wait", "max_batch_size": 1, "max_batch_timeout": 0.1, "max_retries": 0}]})
    corral.route("qwait.test/*", "qwait")
    assert corral.request("/", host="qwait.test").text == "sent"
    event = queue_event(collector, "qwait")
    assert event["outcome"] == "exception", event
    assert [(e["name"], e["message"]) for e in event["exceptions"]] == [
        ("RuntimeError", "the background work failed")], event["exceptions"]


# ---------------------------------------------------------------------------
# A streamed response given up: its trace still goes out
# ---------------------------------------------------------------------------

ENDLESS = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        async def endless():
            while True:
                yield b"x" * 4096
        return Response(endless())
'''


def endless_event(collector: Collector, method: str) -> dict[str, Any]:
    return tail_event(collector, lambda e: e["scriptName"] == "endless"
                      and e["event"]["request"]["method"] == method, f"the {method} request's event")


def test_a_stream_nobody_reads_to_its_end_still_has_its_trace_event(
        corral: Corral, collector: Collector) -> None:
    corral.deploy("endless", ENDLESS, namespace=None, extra_metadata=TAIL)
    corral.route("endless.test/*", "endless")
    with socket.create_connection(("127.0.0.1", corral.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: endless.test\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    left = endless_event(collector, "GET")  # the client left mid-stream
    assert left["outcome"] == "canceled" and left["event"]["response"] == {"status": 200}, left
    head = corral.request("/", host="endless.test", method="HEAD")
    assert head.status == 200 and head.body == b"", head
    stopped = endless_event(collector, "HEAD")  # the body is not read: not the worker's error
    assert (stopped["outcome"], stopped["exceptions"]) == ("ok", []), stopped
