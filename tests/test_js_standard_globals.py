"""JavaScript's standard globals from ``js``, and binding values shaped as
Cloudflare's Python Workers read them, in real sandboxes.

On Cloudflare ``js`` is the whole global scope: workers (and Cloudflare's own
SDK) call ``Date.new()``, ``Math.floor``, ``btoa``, ``encodeURIComponent``,
``Map.new()``, ``setTimeout``. Before, ``from js import Math`` failed the
deploy and ``Date`` had only ``now()``.

KV and R2 answer with JavaScript values there (the SDK passes both bindings
through): an ``arrayBuffer`` is read with ``.to_bytes()`` and an object's
``uploaded`` is a Date (``.getTime()``, ``.toISOString()``). Corral gave a
memoryview, bytes and a datetime, on which all three raised AttributeError.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.harness import Corral

GLOBALS_WORKER = r'''
import asyncio
from js import (Array, Date, Map, Math, Number, Promise, Set, String, atob, btoa, clearTimeout,
                decodeURI, decodeURIComponent, encodeURI, encodeURIComponent, navigator, parseFloat,
                parseInt, setTimeout, structuredClone)
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        out = {}
        fixed = Date.new("2024-02-29T23:59:58.123Z")
        out["iso"] = fixed.toISOString()
        out["ms"] = fixed.getTime()
        out["utc"] = fixed.toUTCString()
        out["fields"] = [fixed.getUTCFullYear(), fixed.getUTCMonth(), fixed.getUTCDate(), fixed.getUTCDay()]
        out["from_ms"] = Date.new(0).toISOString()
        out["from_fields"] = Date.new(2024, 12, 1).toISOString()  # month 12 is next January
        out["parse"] = Date.parse("Thu, 01 Jan 1970 00:00:01 GMT")
        out["now_is_recent"] = abs(Date.new().getTime() - Date.now()) < 60_000
        out["math"] = [Math.floor(2.7), Math.round(-2.5), Math.round(2.5), Math.max(1, 5, 3), Math.min(),
                       Math.sign(-3), Math.trunc(-2.7), 0 <= Math.random() < 1]
        m = Map.new([["a", 1]]).set("b", 2)
        out["map"] = [m.get("b"), m.has("a"), m.size, m.delete("a"), m.delete("a"), m.size]
        s = Set.new([1, 2, 2])
        out["set"] = [s.size, s.has(2), s.delete(2), s.has(2)]
        out["array"] = [Array.new(3), Array.of(1, 2), Array.isArray([]), getattr(Array, "from")("ab")]
        out["number"] = [Number("42"), Number("4.5"), Number.isInteger(5.0), Number.isNaN(Number("x")),
                         Number.MAX_SAFE_INTEGER, parseInt("0x1f"), parseInt("12px"), parseFloat("3.5e2kg")]
        out["string"] = [String(None), String(True), String.fromCharCode(72, 105)]
        out["base64"] = [btoa("héllo"), atob(btoa("héllo"))]
        out["uri"] = [encodeURIComponent("a b&c/é"), encodeURI("https://x.example/a b?q=1&r=é#f"),
                      decodeURIComponent("a%20b%26c"), decodeURI("a%20b%26c")]
        original = {"a": [1, {"b": 2}]}
        clone = structuredClone(original)
        clone["a"][1]["b"] = 3
        out["clone"] = [original, clone]
        out["navigator"] = navigator.userAgent
        out["promise"] = await Promise.all([1, Promise.resolve(2), asyncio.sleep(0, 3)])
        settled = await Promise.allSettled([Promise.reject("no"), 4])
        out["settled"] = [settled[0]["status"], settled[1]]
        fired = asyncio.get_running_loop().create_future()
        cancelled = setTimeout(lambda: fired.set_result("cancelled one fired"), 5)
        clearTimeout(cancelled)
        setTimeout(lambda value: fired.done() or fired.set_result(value), 20, "the timer")
        out["timer"] = await fired
        out["promise_new"] = await Promise.new(lambda resolve, reject: setTimeout(resolve, 1, "resolved"))
        return Response.json(out)
'''

TIMER_AT_LOAD = '''
from js import setTimeout
from workers import Response, WorkerEntrypoint

setTimeout(lambda: None, 10)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("never")
'''

INTERVAL_WORKER = '''
import asyncio
from js import setInterval, setTimeout
from workers import Response, WorkerEntrypoint

TICKS = []


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/start"):
            setInterval(lambda: TICKS.append("interval"), 5)
            setTimeout(lambda: TICKS.append("timeout"), 20)
            return Response("set")
        # The timers of the invocation that ended would have fired many times by now.
        await asyncio.sleep(0.2)
        return Response.json(TICKS)
'''

FETCH_URLS = '''
from pyodide.ffi import JsException
from workers import Response, WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        out = []
        for url in ("/relative", "ftp://files.example/x", "localhost:8080/x"):
            try:
                await fetch(url)
                out.append("sent")
            except (TypeError, JsException) as e:
                out.append([isinstance(e, TypeError), isinstance(e, JsException), e.name, str(e)])
        return Response.json(out)
'''

SHAPES_WORKER = '''
import js
from workers import Headers, Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        await self.env.BUCKET.put("k", b"r2 data")
        obj = await self.env.BUCKET.get("k")
        buffer = await obj.arrayBuffer()
        head = await self.env.BUCKET.head("k")
        await self.env.KV.put("kk", "kv data")
        kv = await self.env.KV.get("kk", "arrayBuffer")
        return Response.json({
            "r2": [buffer.to_bytes().decode(), buffer.byteLength, bytes(buffer.to_py()).decode(),
                   buffer == b"r2 data"],
            "uploaded": [head.uploaded.toISOString()[:2], type(head.uploaded.getTime()).__name__,
                         abs(head.uploaded.getTime() / 1000 - head.uploaded.timestamp()) < 0.001],
            "kv": [kv.to_bytes().decode(), kv.tobytes().decode(), type(kv.to_py()).__name__],
            "headers": [list(p) for p in request.headers.items() if p[0] in ("x-dup", "x-one")],
            "dup": request.headers.get("x-dup"),
            "cookies": [Headers([("set-cookie", "a=1"), ("X-Other", "y"), ("Set-Cookie", "b=2")]).getSetCookie(),
                        js.Headers.new([["set-cookie", "c=3"]]).getSetCookie(), Headers().getSetCookie()],
        })
'''


@pytest.fixture(scope="module")
def corral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corral]:
    server = Corral(tmp_path_factory.mktemp("js-std")).start()
    try:
        server.deploy_dispatcher()
        server.deploy("stdglobals", GLOBALS_WORKER, check=False)  # each test says what failed
        server.deploy("interval", INTERVAL_WORKER, check=False)
        server.deploy("fetchurls", FETCH_URLS, check=False)
        server.deploy("shapes", SHAPES_WORKER, check=False, bindings=[
            {"type": "kv_namespace", "name": "KV", "namespace_id": "kv-shapes"},
            {"type": "r2_bucket", "name": "BUCKET", "bucket_name": "b-shapes"}])
        yield server
    finally:
        server.stop()


def test_javascripts_standard_globals_answer_as_javascript_does(corral: Corral) -> None:
    resp = corral.request("/", host="stdglobals.localhost")
    assert resp.status == 200, resp.text
    out = resp.json()
    assert out["iso"] == "2024-02-29T23:59:58.123Z" and out["ms"] == 1709251198123
    assert out["utc"] == "Thu, 29 Feb 2024 23:59:58 GMT"
    assert out["fields"] == [2024, 1, 29, 4]
    assert out["from_ms"] == "1970-01-01T00:00:00.000Z"
    assert out["from_fields"] == "2025-01-01T00:00:00.000Z"
    assert out["parse"] == 1000 and out["now_is_recent"] is True
    assert out["math"] == [2, -2, 3, 5, float("inf"), -1, -2, True]
    assert out["map"] == [2, True, 2, True, False, 1]
    assert out["set"] == [2, True, True, False]
    assert out["array"] == [[None, None, None], [1, 2], True, ["a", "b"]]
    assert out["number"] == [42, 4.5, True, True, 2**53 - 1, 31, 12, 350.0]
    assert out["string"] == ["null", "true", "Hi"]
    assert out["base64"] == ["aOlsbG8=", "héllo"]
    assert out["uri"] == ["a%20b%26c%2F%C3%A9", "https://x.example/a%20b?q=1&r=%C3%A9#f", "a b&c", "a b%26c"]
    assert out["clone"] == [{"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]}]
    assert out["navigator"] == "Cloudflare-Workers"
    assert out["promise"] == [1, 2, 3]
    assert out["settled"] == ["rejected", {"status": "fulfilled", "value": 4}]
    assert out["timer"] == "the timer"
    assert out["promise_new"] == "resolved"


def test_a_timer_set_while_the_script_loads_is_workerds_error(corral: Corral) -> None:
    resp = corral.deploy("loadtimer", TIMER_AT_LOAD, check=False)
    assert resp.status == 400, resp.text
    assert "Disallowed operation called within global scope" in resp.text


def test_a_timer_dies_with_the_invocation_that_set_it(corral: Corral) -> None:
    # As in workerd, where a timer lives in its request's I/O context: a
    # forgotten setInterval must not keep the child busy between requests.
    assert corral.request("/start", host="interval.localhost").text == "set"
    resp = corral.request("/ticks", host="interval.localhost")
    assert resp.status == 200 and resp.json() == [], resp.text


def test_a_url_fetch_cannot_load_is_workerds_type_error_before_anything_is_sent(corral: Corral) -> None:
    resp = corral.request("/", host="fetchurls.localhost")
    assert resp.status == 200, resp.text
    assert resp.json() == [[True, True, "TypeError", "Invalid URL: /relative"],
                           [True, True, "TypeError", "Fetch API cannot load: ftp://files.example/x"],
                           [True, True, "TypeError", "Fetch API cannot load: localhost:8080/x"]]


def test_binding_values_read_as_cloudflares_javascript_ones(corral: Corral) -> None:
    raw = corral.raw(b"GET / HTTP/1.1\r\nHost: shapes.localhost\r\nX-Dup: one\r\nX-One: 1\r\n"
                     b"X-Dup: two\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw[:500]
    out = json.loads(body)
    assert out["r2"] == ["r2 data", 7, "r2 data", True]
    assert out["uploaded"] == ["20", "int", True]
    assert out["kv"] == ["kv data", "kv data", "memoryview"]
    # One entry per name, as the SDK's headers come from JavaScript's Headers.
    assert out["headers"] == [["x-dup", "one, two"], ["x-one", "1"]] and out["dup"] == "one, two"
    assert out["cookies"] == [["a=1", "b=2"], ["c=3"], []]
