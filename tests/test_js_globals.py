"""The ``js`` module's ``URL``, ``URLSearchParams`` and ``fetch`` as
Cloudflare's Python Workers use them, in real sandboxes behind the bundled
dispatcher.

Cloudflare's examples gallery rewrites where a request goes through a URL's
setters (``url.hostname = ...``, ``url.searchParams.set(...)``) and then
fetches ``url.toString()``. Before, ``js.URL`` was a snapshot of its parts:
a setter changed one attribute and nothing else, so such a worker fetched
the old URL, and ``searchParams`` was a dict without ``set``/``append`` (an
AttributeError) whose ``get`` gave the last of repeated values, not the first.

``js.fetch`` is JavaScript's fetch there: ``await response.json()`` is a JS
object, read as ``data.method`` or converted with ``data.to_py()`` (the
older examples do both). It was the SDK's plain dict, so both raised.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.harness import Corral
from tests.upstream import Upstream

URL_WORKER = '''
import json
from workers import WorkerEntrypoint, Response
from js import URL, URLSearchParams

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = URL.new(request.url)
        out = {"first_x": url.searchParams.get("x"), "all_x": url.searchParams.getAll("x"),
               "missing": url.searchParams.get("nope"), "has_y": url.searchParams.has("y")}
        url.searchParams.set("x", "9")
        url.searchParams.append("sig", "a b~*")
        url.searchParams.delete("y")
        out["after_params"] = url.toString()
        url.hostname = "Origin.Example"
        url.port = "8443"
        url.protocol = "https:"
        url.pathname = "/v2/café/../items"
        url.hash = "top"
        out["after_setters"] = url.href
        out["origin"] = url.origin
        url.search = "?q=1&q=2"
        out["q"] = url.searchParams.getAll("q")
        out["relative"] = URL.new("../up?z", "https://h.example/a/b/c").href
        out["params"] = URLSearchParams.new({"a": "1", "b": "x y"}).toString()
        out["pairs"] = [list(p) for p in URLSearchParams.new("?k=1&k=2&e")]
        out["can_parse"] = [URL.canParse("https://ok.example"), URL.canParse("not a url")]
        try:
            URL.new("/no/base")
            out["invalid"] = None
        except TypeError as exc:
            out["invalid"] = type(exc).__name__
        return Response.json(out)
'''

PROXY_WORKER = '''
from workers import WorkerEntrypoint, fetch
from js import URL

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = URL.new(request.url)
        url.protocol = "http:"
        url.hostname = "127.0.0.1"
        url.port = self.env.UPSTREAM_PORT
        url.pathname = "/echo" + url.pathname
        url.searchParams.set("via", "worker")
        return await fetch(url.toString(), method=request.method, headers=request.headers)
'''


JS_FETCH_WORKER = '''
from js import fetch, Response

async def on_fetch(request, env):
    if request.url.endswith("/passed-on"):
        return await fetch("http://127.0.0.1:" + env.UPSTREAM_PORT + "/echo/passed-on")
    response = await fetch("http://127.0.0.1:" + env.UPSTREAM_PORT + "/echo/js")
    data = await response.json()
    plain = data.to_py()
    return Response.new(data.method + " " + plain["path"] + " " + str(data.headers["user-agent"] is not None))
'''


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture(scope="module")
def corral(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Corral]:
    server = Corral(tmp_path_factory.mktemp("js-url")).start()
    try:
        server.deploy_dispatcher()
        server.deploy("urls", URL_WORKER)
        port = [{"type": "plain_text", "name": "UPSTREAM_PORT", "text": str(upstream.port)}]
        server.deploy("proxy", PROXY_WORKER, bindings=port)
        server.deploy("jsfetch", JS_FETCH_WORKER, bindings=port)
        yield server
    finally:
        server.stop()


def test_a_urls_setters_and_search_params_change_its_href(corral: Corral) -> None:
    resp = corral.request("/a/b?x=1&y=2&x=3", host="urls.localhost")
    assert resp.status == 200, resp.text
    out = resp.json()
    assert out["first_x"] == "1" and out["all_x"] == ["1", "3"]
    assert out["missing"] is None and out["has_y"] is True
    assert out["after_params"] == "http://urls.localhost/a/b?x=9&sig=a+b%7E*"
    assert out["after_setters"] == "https://origin.example:8443/v2/items?x=9&sig=a+b%7E*#top"
    assert out["origin"] == "https://origin.example:8443"
    assert out["q"] == ["1", "2"]
    assert out["relative"] == "https://h.example/a/up?z"
    assert out["params"] == "a=1&b=x+y"
    assert out["pairs"] == [["k", "1"], ["k", "2"], ["e", ""]]
    assert out["can_parse"] == [True, False]
    assert out["invalid"] == "TypeError"


def test_a_worker_that_rewrites_its_url_fetches_the_new_one(corral: Corral, upstream: Upstream) -> None:
    resp = corral.request("/items/7?page=2", host="proxy.localhost", headers={"x-probe": "1"})
    assert resp.status == 200, resp.text
    seen = json.loads(resp.body)
    assert seen["path"] == "/echo/items/7?page=2&via=worker"
    assert seen["headers"].get("x-probe") == "1"


def test_js_fetch_answers_json_as_a_javascript_object(corral: Corral) -> None:
    resp = corral.request("/", host="jsfetch.localhost")
    assert resp.status == 200, resp.text
    assert resp.text == "GET /echo/js True"


def test_a_js_fetch_response_can_be_returned_as_it_is(corral: Corral) -> None:
    resp = corral.request("/passed-on", host="jsfetch.localhost")
    assert resp.status == 200, resp.text
    assert resp.json()["path"] == "/echo/passed-on"


PYODIDE_IDIOMS = '''
from js import Array, File, JSON, Object, Response, performance
from pyodide.ffi import ConversionError, JsException, can_run_sync, destroy_proxies, to_js
from pyodide.http import AbortError


async def on_fetch(request, env):
    proxies = Array.new()  # workers-py collects the proxies it destroys so
    pushed = proxies.push("a", "b")
    destroy_proxies(proxies)
    listed = to_js([1, 2])
    listed.push(3)
    try:
        JSON.parse("{not json")
        parse_error = None
    except JsException as e:
        parse_error = e.name
    data = JSON.parse('{"a": 1, "b": {"c": 2}}')
    file = File.new(["x" * 5], "f.txt", to_js({"type": "text/plain"}, dict_converter=Object.fromEntries))
    out = {
        "pushed": pushed, "length": proxies.length, "listed": [listed.length, listed.to_py()],
        "parse_error": parse_error, "keys": data.object_keys(), "values_b": data.object_values()[1].c,
        "entries": data.object_entries()[0], "typeof": data.typeof, "map": data.as_object_map()["a"],
        "depth": data.to_py(depth=1)["a"], "file": [file.name, file.size, file.type],
        "now": performance.now() > 1.7e12, "origin": performance.timeOrigin,
        "errors": [issubclass(ConversionError, Exception), issubclass(AbortError, OSError)],
        "can_run_sync": can_run_sync(),
    }
    return Response.json(out)
'''


def test_pyodide_idioms_of_cloudflares_older_examples(corral: Corral) -> None:
    """js.Array.new() and to_js(list) were plain lists (no push, no length:
    workers-py's own proxy bookkeeping failed); JSON.parse of bad text raised
    Python's JSONDecodeError past ``except JsException``; a JS object had no
    object_keys/values/entries, as_object_map, typeof nor to_py(depth=...);
    js.File, js.performance, ConversionError, can_run_sync and AbortError
    were missing; js.Response.json wrote Python's spaced JSON, not
    JSON.stringify's."""
    corral.deploy("idioms", PYODIDE_IDIOMS)
    resp = corral.request("/", host="idioms.localhost")
    assert resp.status == 200, (resp, corral.log()[-3000:])
    assert resp.body.startswith(b'{"pushed":2,"length":2,'), resp.body[:60]
    out = resp.json()
    assert out["listed"] == [3, [1, 2, 3]] and out["parse_error"] == "SyntaxError"
    assert out["keys"] == ["a", "b"] and out["values_b"] == 2 and out["entries"] == ["a", 1]
    assert (out["typeof"], out["map"], out["depth"]) == ("object", 1, 1)
    assert out["file"] == ["f.txt", 5, "text/plain"]
    assert out["now"] is True and out["origin"] == 0
    assert out["errors"] == [True, True] and out["can_run_sync"] is True
