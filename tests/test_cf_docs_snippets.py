"""Python code from Cloudflare's documentation, as tenant code on Corral.

Each tenant here makes the calls a snippet of developers.cloudflare.com makes
(the Python Workers pages, the Python tabs of the Workers examples gallery,
of the runtime API and storage pages) and each test asserts what the docs say
the snippet does. Snippets written for a site behind the Worker
(``fetch(request)``) run as they are, the dispatch namespace's outbound worker
playing their origin; elsewhere ``UP`` in a source is the local upstream's
origin (tests/upstream.py), in place of the docs' public hosts.

Also here: workers-py's runtime-sdk ``bindings-test`` suites for D1, Durable
Objects and queues (its KV and R2 suites are in test_workerd_python_corpus.py),
each check a function whose failure names itself.

Left out, as Corral refuses them by name or they need Cloudflare's edge:
Workers AI, Vectorize, Workflows, Hyperdrive, containers, raw sockets
(``connect()``), ``request.cf`` geolocation and TLS fields (None on a
self-hosted Corral), ``caches.default`` (refused in a namespaced script),
images and analytics-engine bindings; also the cache-POST example (``caches.default``),
block-on-TLS, country-code redirect and geolocation examples (``request.cf`` fields).
Not valid as documented (they fail on Cloudflare too), so not run: signed
requests (``Buffer.from`` is a Python syntax error, ``Date`` unimported),
security headers (``del headers["name"]``, TLS check), modify-response
(``replace_body``'s result discarded after the body was handed on), the R2
binding page's ``url.path.slice(1)``, and the basics page's
``(await request.json()).name`` (the SDK's ``json()`` gives a dict).
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator

import pytest

from tests.harness import Corral, Response
from tests.test_cf_gaps import deploy
from tests.test_workerd_python_corpus import PRELUDE, all_ok
from tests.upstream import Upstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture(scope="module")
def corral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corral]:
    server = Corral(tmp_path_factory.mktemp("cf-docs")).start()
    try:
        server.deploy_dispatcher()
        yield server
    finally:
        server.stop()


def put(corral: Corral, name: str, source: str, upstream: Upstream | None = None,
        bindings: list[dict] | None = None, **kwargs: object) -> None:
    """Deploy one snippet as the tenant ``name`` (``UP`` in it: the upstream's origin)."""
    source = textwrap.dedent(source)
    if upstream is not None:
        source = source.replace("UP/", upstream.url("/"))
    corral.deploy(name, source, bindings=bindings, **kwargs)  # type: ignore[arg-type]


def get(corral: Corral, name: str, path: str = "/", **kwargs: object) -> Response:
    resp = corral.request(path, host=f"{name}.localhost", **kwargs)  # type: ignore[arg-type]
    return resp


def text(name: str, value: str) -> dict:
    return {"type": "plain_text", "name": name, "text": value}


# == Python Workers pages: basics, examples, FFI ===============================================

PARSE_URL = '''
from workers import WorkerEntrypoint, Response
from urllib.parse import urlparse, parse_qs


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlparse(request.url)
        params = parse_qs(url.query)
        if "name" in params:
            greeting = "Hello there, {name}".format(name=params["name"][0])
            return Response(greeting)
        if url.path == "/favicon.ico":
            return Response("")
        return Response("Hello world!")
'''


def test_parse_an_incoming_request_url(corral: Corral) -> None:
    put(corral, "parseurl", PARSE_URL)
    assert get(corral, "parseurl", "/?name=Ada").text == "Hello there, Ada"
    assert get(corral, "parseurl", "/favicon.ico").text == ""
    assert get(corral, "parseurl", "/").text == "Hello world!"


JSON_BODY = '''
from workers import WorkerEntrypoint, Response


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        name = (await request.json())["name"]
        return Response("Hello, {name}".format(name=name))
'''


def test_parse_json_from_the_incoming_request(corral: Corral) -> None:
    put(corral, "jsonbody", JSON_BODY)
    resp = get(corral, "jsonbody", method="POST", body=json.dumps({"name": "Ada"}),
               headers={"content-type": "application/json"})
    assert (resp.status, resp.text) == (200, "Hello, Ada")


MODULES = {
    "hello.py": "def hello(name):\n    return 'Hello, ' + name + '!'\n",
}
MODULE_MAIN = '''
from workers import WorkerEntrypoint, Response
from hello import hello


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(hello("World"))
'''


def test_a_module_of_the_worker_imports(corral: Corral) -> None:
    put(corral, "modules", MODULE_MAIN, modules=MODULES)
    assert get(corral, "modules").text == "Hello, World!"


ENV_VARS = '''
from workers import WorkerEntrypoint, Response, env as top_level_env


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response.json({"host": self.env.API_HOST, "top": top_level_env.API_HOST,
                              "secret": self.env.SECRET_TOKEN[:2]})
'''


def test_environment_variables_and_secrets(corral: Corral) -> None:
    put(corral, "envvars", ENV_VARS, bindings=[
        text("API_HOST", "example.com"),
        {"type": "secret_text", "name": "SECRET_TOKEN", "text": "s3cret"}])
    assert get(corral, "envvars").json() == {"host": "example.com", "top": "example.com", "secret": "s3"}


FFI = '''
from workers import WorkerEntrypoint
from js import Object, Response, Headers, JSON
from pyodide.ffi import to_js as _to_js


def to_js(obj):
    return _to_js(obj, dict_converter=Object.fromEntries)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        options = to_js({"headers": {"content-type": "application/json"}, "status": 201})
        body = JSON.stringify(to_js({"hello": "world", "n": [1, 2]}))
        first = Response.new(body, options)
        headers = Headers.new({"x-a": "1", "content-type": "text/plain"}.items())
        second = Response.new("two", headers=headers, status=202)
        return Response.json(to_js({
            "first": [first.status, first.headers.get("content-type"), await first.text()],
            "second": [second.status, second.headers.get("x-a"), await second.text()],
        }))
'''


def test_the_ffi_builds_javascript_objects_from_python_dicts(corral: Corral) -> None:
    put(corral, "ffi", FFI)
    resp = get(corral, "ffi")
    assert resp.status == 200, (resp, corral.log())
    assert resp.json() == {"first": [201, "application/json", '{"hello":"world","n":[1,2]}'],
                           "second": [202, "1", "two"]}


# -- the Python Workers "Examples" and "JavaScript interop" pages -------------------------------

RETURN_JSON_SDK = '''
from workers import WorkerEntrypoint, Response

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        data = {"greeting": "Hello, World!", "status": "ok"}
        return Response.json(data)
'''

BUNDLED_FILE = '''
from pathlib import Path
from workers import WorkerEntrypoint, Response

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        html_file = Path(__file__).parent / "file.html"
        return Response(html_file.read_text(), headers={"Content-Type": "text/html"})
'''

EMIT_LOGS = '''
# To use the JavaScript console APIs
from js import console
from workers import WorkerEntrypoint, Response
# To use the native Python logging
import logging

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        console.log("console.log from Python!")
        logger = logging.getLogger(__name__)
        logging.basicConfig(level=logging.INFO)
        logger.error("error from Python!")
        logger.info("info log from Python!")
        print("print() from Python!")
        return Response("We're testing logging!")
'''

PUBLISH_QUEUE = '''
from workers import WorkerEntrypoint, Response

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        # The default contentType is "json"
        # We can also pass plain text strings
        await self.env.QUEUE.send("hello", contentType="text")
        # Send a JSON payload
        await self.env.QUEUE.send({"hello": "world"})

        return Response.json({"write": "success"})
'''

QUERY_D1 = '''
from workers import WorkerEntrypoint, Response

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        results = await self.env.DB.prepare("PRAGMA table_list").run()
        # Return a JSON response
        return Response.json(results)
'''

DO_LIST = '''
from workers import WorkerEntrypoint, Response, DurableObject

class List(DurableObject):
    async def get_messages(self):
        messages = await self.ctx.storage.get("messages")
        return messages if messages else []

    async def add_message(self, message):
        messages = await self.get_messages()
        messages.append(message)
        await self.ctx.storage.put("messages", messages)
        return

    async def say_hello(self):
        result = self.ctx.storage.sql.exec(
            "SELECT 'Hello, World!' as greeting"
        ).one()

        return result.greeting


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        stub = self.env.LIST.getByName("list")
        await stub.add_message("a")
        await stub.add_message({"b": 1})
        return Response.json({"messages": await stub.get_messages(), "hello": await stub.say_hello()})
'''

INTEROP = '''
from workers import WorkerEntrypoint, import_from_javascript
from js import Response

# Import the cloudflare:workers module
workers_module = import_from_javascript("cloudflare:workers")

# Access the env object and its values
env = workers_module.env
value = env.MY_VARIABLE


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        await self.env.FOO.put("bar", "baz")
        bar = await self.env.FOO.get("bar")
        return Response.new(f"{bar} {value}")
'''

FFI_LEGACY = '''
from js import Response

async def on_fetch(request, env):
    await env.FOO.put("bar", "baz")
    bar = await env.FOO.get("bar")
    return Response.new(bar) # returns "baz"
'''

FFI_SYNC = '''
from js import Response

def on_fetch(request):
    return Response.new("Hello World!")
'''

HOW_PYTHON_WORKERS_WORK = '''
from js import Response

async def on_fetch(request, env):
    return Response.new("Hello world!")
'''


def test_python_examples_page(corral: Corral) -> None:
    kv = {"type": "kv_namespace", "name": "FOO", "namespace_id": "pyexamples"}
    put(corral, "pyjson", RETURN_JSON_SDK)
    assert get(corral, "pyjson").json() == {"greeting": "Hello, World!", "status": "ok"}
    put(corral, "pyfile", BUNDLED_FILE, modules={"file.html": "<p>bundled</p>"})
    resp = get(corral, "pyfile")
    assert (resp.status, resp.text) == (200, "<p>bundled</p>"), (resp, corral.log())
    put(corral, "pylogs", EMIT_LOGS)
    assert get(corral, "pylogs").text == "We're testing logging!"
    put(corral, "pyqueue", PUBLISH_QUEUE, bindings=[{"type": "queue", "name": "QUEUE", "queue_name": "pyq"}])
    assert get(corral, "pyqueue").json() == {"write": "success"}, corral.log()
    put(corral, "pyd1", QUERY_D1, bindings=[{"type": "d1", "name": "DB", "id": "pyd1"}])
    resp = get(corral, "pyd1")
    assert resp.status == 200 and resp.json()["success"] is True, (resp, corral.log())
    assert any(row["name"] == "sqlite_schema" for row in resp.json()["results"]), resp.json()
    put(corral, "pylist", DO_LIST, bindings=[
        {"type": "durable_object_namespace", "name": "LIST", "class_name": "List"}])
    resp = get(corral, "pylist")
    assert resp.status == 200, (resp, corral.log())
    assert resp.json()["hello"] == "Hello, World!" and resp.json()["messages"][-2:] == ["a", {"b": 1}]
    put(corral, "pyinterop", INTEROP, bindings=[kv, text("MY_VARIABLE", "var")])
    assert get(corral, "pyinterop").text == "baz var", corral.log()
    put(corral, "pyffi", FFI_LEGACY, bindings=[kv])
    assert get(corral, "pyffi").text == "baz", corral.log()
    put(corral, "pyffisync", FFI_SYNC)
    assert get(corral, "pyffisync").text == "Hello World!", corral.log()
    put(corral, "pyhowitworks", HOW_PYTHON_WORKERS_WORK)
    assert get(corral, "pyhowitworks").text == "Hello world!", corral.log()


# == Workers examples gallery, Python tabs =====================================================

RETURN_JSON = '''
from workers import WorkerEntrypoint, Response
import json


class Default(WorkerEntrypoint):
    def fetch(self, request):
        data = json.dumps({"hello": "world"})
        headers = {"content-type": "application/json"}
        return Response(data, headers=headers)
'''

RETURN_HTML = '''
from workers import WorkerEntrypoint, Response


class Default(WorkerEntrypoint):
    def fetch(self, request):
        html = """<!DOCTYPE html><body><h1>Hello World</h1></body>"""
        headers = {"content-type": "text/html;charset=UTF-8"}
        return Response(html, headers=headers)
'''


def test_return_json_and_html_from_a_synchronous_fetch(corral: Corral) -> None:
    put(corral, "retjson", RETURN_JSON)
    put(corral, "rethtml", RETURN_HTML)
    resp = get(corral, "retjson")
    assert resp.json() == {"hello": "world"} and resp.headers["content-type"] == "application/json"
    resp = get(corral, "rethtml")
    assert "<h1>Hello World</h1>" in resp.text
    assert resp.headers["content-type"] == "text/html;charset=UTF-8"


REDIRECT = '''
from workers import WorkerEntrypoint, Response


class Default(WorkerEntrypoint):
    def fetch(self, request):
        destination_url = "https://example.com"
        status_code = 301
        return Response.redirect(destination_url, status_code)
'''

BULK_REDIRECTS = '''
from workers import WorkerEntrypoint, Response, fetch
from urllib.parse import urlparse


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        external_hostname = "examples.cloudflareworkers.com"
        redirect_map = {
            "/bulk1": "https://" + external_hostname + "/redirect2",
            "/bulk2": "https://" + external_hostname + "/redirect3",
        }
        url = urlparse(request.url)
        location = redirect_map.get(url.path, None)
        if location:
            return Response.redirect(location, 301)
        # If request not in map, return the original request
        return fetch("UP/echo" + url.path)
'''


def test_redirects(corral: Corral, upstream: Upstream) -> None:
    put(corral, "redirect", REDIRECT)
    resp = get(corral, "redirect")
    assert (resp.status, resp.headers["location"]) == (301, "https://example.com/")
    put(corral, "bulkredirect", BULK_REDIRECTS, upstream)
    resp = get(corral, "bulkredirect", "/bulk2")
    assert (resp.status, resp.headers["location"]) == (301, "https://examples.cloudflareworkers.com/redirect3")
    resp = get(corral, "bulkredirect", "/other")
    assert resp.status == 200, (resp, corral.log())
    assert resp.json()["path"] == "/echo/other"


FETCH_JSON = '''
from workers import WorkerEntrypoint, Response, fetch
import json


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = "UP/echo/todos/1"

        async def gather_response(response):
            headers = response.headers
            content_type = headers["content-type"] or ""
            if "application/json" in content_type:
                return (content_type, json.dumps(await response.json()))
            return (content_type, await response.text())

        response = await fetch(url)
        content_type, result = await gather_response(response)
        headers = {"content-type": content_type}
        return Response(result, headers=headers)
'''


def test_fetch_json(corral: Corral, upstream: Upstream) -> None:
    put(corral, "fetchjson", FETCH_JSON, upstream)
    resp = get(corral, "fetchjson")
    assert resp.status == 200, (resp, corral.log())
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["path"] == "/echo/todos/1"


COOKIES = '''
from http.cookies import SimpleCookie
from workers import WorkerEntrypoint, Response

COOKIE_NAME = "__uid"


class Default(WorkerEntrypoint):
    def fetch(self, request):
        cookie = SimpleCookie(request.headers["Cookie"] or "")
        if COOKIE_NAME in cookie:
            # Respond with cookie value
            return Response(cookie[COOKIE_NAME].value)
        return Response("No cookie with name: " + COOKIE_NAME)
'''

SET_COOKIE = '''
from workers import WorkerEntrypoint, Response


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        headers = [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/")]
        return Response("cookies", headers=headers)
'''


def test_cookies(corral: Corral) -> None:
    put(corral, "cookies", COOKIES)
    assert get(corral, "cookies", headers={"cookie": "x=1; __uid=abc"}).text == "abc"
    assert get(corral, "cookies").text == "No cookie with name: __uid"
    put(corral, "setcookie", SET_COOKIE)
    raw = corral.raw(b"GET / HTTP/1.1\r\nHost: setcookie.localhost\r\nConnection: close\r\n\r\n")
    assert b"a=1; Path=/" in raw and b"b=2; Path=/" in raw, raw


# -- the gallery's Python tabs as they are (their older ``on_fetch`` form, its request a
# -- JavaScript Request through the FFI); only their public hosts point at the upstream

POST_JSON = '''
import json
from pyodide.ffi import to_js as _to_js
from js import Object, fetch, Response, Headers

def to_js(obj):
    return _to_js(obj, dict_converter=Object.fromEntries)

# gather_response returns both content-type & response body as a string
async def gather_response(response):
    headers = response.headers
    content_type = headers["content-type"] or ""

    if "application/json" in content_type:
        return (content_type, json.dumps(dict(await response.json())))
    return (content_type, await response.text())

async def on_fetch(_request):
    url = "UP/echo/todos/1"

    body = {
      "results": ["default data to send"],
      "errors": None,
      "msg": "I sent this to the fetch",
    }

    options = {
      "body": json.dumps(body),
      "method": "POST",
      "headers": {
        "content-type": "application/json;charset=UTF-8",
      },
    }

    response = await fetch(url, to_js(options))
    content_type, result = await gather_response(response)

    headers = Headers.new({"content-type": content_type}.items())
    return Response.new(result, headers=headers)
'''


def test_post_json(corral: Corral, upstream: Upstream) -> None:
    put(corral, "postjson", POST_JSON, upstream)
    resp = get(corral, "postjson")
    assert resp.status == 200, (resp, corral.log())
    seen = resp.json()
    assert seen["method"] == "POST" and seen["headers"]["content-type"] == "application/json;charset=UTF-8"
    assert json.loads(seen["body"])["msg"] == "I sent this to the fetch"


READ_POST = '''

from js import Object, Response, Headers, JSON

async def read_request_body(request):
    headers = request.headers
    content_type = headers["content-type"] or ""

    if "application/json" in content_type:
        return JSON.stringify(await request.json())
    if "form" in content_type:
        form = await request.formData()
        data = Object.fromEntries(form.entries())
        return JSON.stringify(data)
    return await request.text()

async def on_fetch(request):
    def raw_html_response(html):
        headers = Headers.new({"content-type": "text/html;charset=UTF-8"}.items())
        return Response.new(html, headers=headers)

    if "form" in request.url:
        return raw_html_response("")

    if "POST" in request.method:
        req_body = await read_request_body(request)
        ret_body = f"The request body sent in was {req_body}"
        return Response.new(ret_body)

    return Response.new("The request was not POST")
'''


def test_read_post(corral: Corral) -> None:
    put(corral, "readpost", READ_POST)
    resp = get(corral, "readpost", method="POST", body='{"a": [1, "x"]}',
               headers={"content-type": "application/json"})
    assert resp.text == 'The request body sent in was {"a":[1,"x"]}', (resp, corral.log())
    resp = get(corral, "readpost", method="POST", body="a=1&b=two",
               headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.text == 'The request body sent in was {"a":"1","b":"two"}', (resp, corral.log())
    resp = get(corral, "readpost", method="POST", body="plain")
    assert resp.text == "The request body sent in was plain"
    assert get(corral, "readpost").text == "The request was not POST"
    resp = get(corral, "readpost", "/form")
    assert resp.headers["content-type"] == "text/html;charset=UTF-8"


ALTER_HEADERS = '''
from workers import Response, fetch

async def on_fetch(request):
    response = await fetch("UP/echo/alter")

    # Grab the response headers so they can be modified
    new_headers = response.headers

    # Add a custom header with a value
    new_headers["x-workers-hello"] = "Hello from Cloudflare Workers"

    # Delete headers
    if "x-header-to-delete" in new_headers:
        del new_headers["x-header-to-delete"]
    if "x-upstream" in new_headers:
        del new_headers["x-upstream"]

    # Adjust the value for an existing header
    new_headers["x-header-to-change"] = "NewValue"

    return Response(response.body, headers=new_headers)
'''


def test_alter_headers(corral: Corral, upstream: Upstream) -> None:
    put(corral, "alterheaders", ALTER_HEADERS, upstream)
    resp = get(corral, "alterheaders")
    assert resp.status == 200, (resp, corral.log())
    assert resp.headers["x-workers-hello"] == "Hello from Cloudflare Workers"
    assert resp.headers["x-header-to-change"] == "NewValue" and "x-upstream" not in resp.headers
    assert resp.json()["path"] == "/echo/alter"


AB_TEST = '''
import random
from urllib.parse import urlparse, urlunparse
from workers import Response, fetch

NAME = "myExampleWorkersABTest"

async def on_fetch(request):
    url = urlparse(request.url)
    # Uncomment below when testing locally
    url = url._replace(netloc="UP_HOST", scheme="http") if "localhost" in url.netloc else url

    # Enable Passthrough to allow direct access to control and test routes.
    if url.path.startswith("/control") or url.path.startswith("/test"):
        return fetch(urlunparse(url))

    # Determine which group this requester is in.
    cookie = request.headers.get("cookie")

    if cookie and f'{NAME}=control' in cookie:
        url = url._replace(path="/control" + url.path)
    elif cookie and f'{NAME}=test' in cookie:
        url = url._replace(path="/test" + url.path)
    else:
        # If there is no cookie, this is a new client. Choose a group and set the cookie.
        group = "test" if random.random() < 0.5 else "control"
        if group == "control":
            url = url._replace(path="/control" + url.path)
        else:
            url = url._replace(path="/test" + url.path)

        # Reconstruct response to avoid immutability
        res = await fetch(urlunparse(url))
        headers = dict(res.headers)
        headers["Set-Cookie"] = f'{NAME}={group}; path=/'
        return Response(res.body, headers=headers)

    return fetch(urlunparse(url))
'''


def test_ab_testing_with_same_url(corral: Corral, upstream: Upstream) -> None:
    put(corral, "abtest", AB_TEST.replace("UP_HOST", f"127.0.0.1:{upstream.port}"))
    resp = get(corral, "abtest", "/page", headers={"cookie": "myExampleWorkersABTest=control"})
    assert resp.status == 200, (resp, corral.log())
    assert resp.json()["path"] == "/control/page"
    resp = get(corral, "abtest", "/test/x")
    assert resp.json()["path"] == "/test/x", (resp, corral.log())
    resp = get(corral, "abtest", "/page")
    assert resp.status == 200, (resp, corral.log())
    group = resp.headers["set-cookie"].split("=")[1].split(";")[0]
    assert group in ("test", "control") and resp.json()["path"] == f"/{group}/page"


CORS = """
from pyodide.ffi import to_js as _to_js
from js import Response, URL, fetch, Object, Request

def to_js(x):
    return _to_js(x, dict_converter=Object.fromEntries)

async def on_fetch(request):
    cors_headers = {
      "Access-Control-Allow-Origin": "*",
      "Access-Control-Allow-Methods": "GET,HEAD,POST,OPTIONS",
      "Access-Control-Max-Age": "86400",
    }

    api_url = "UP/echo/demos/demoapi"

    proxy_endpoint = "/corsproxy/"

    def raw_html_response(html):
        return Response.new(html, headers=to_js({"content-type": "text/html;charset=UTF-8"}))

    demo_page = f'''
    <!DOCTYPE html>
    <html><body><script>let reqs = {{}};</script>{proxy_endpoint}?apiurl={api_url}</body></html>
    '''

    async def handle_request(request):
        url = URL.new(request.url)
        api_url2 = url.searchParams["apiurl"]

        if not api_url2:
            api_url2 = api_url

        request = Request.new(api_url2, request)
        request.headers["Origin"] = (URL.new(api_url2)).origin
        print(request.headers)
        response = await fetch(request)
        response = Response.new(response.body, response)
        response.headers["Access-Control-Allow-Origin"] = url.origin
        response.headers["Vary"] = "Origin"
        return response

    async def handle_options(request):
        if "Origin" in request.headers and "Access-Control-Request-Method" in request.headers and "Access-Control-Request-Headers" in request.headers:
            return Response.new(None, headers=to_js({
            **cors_headers,
            "Access-Control-Allow-Headers": request.headers["Access-Control-Request-Headers"]
          }))
        return Response.new(None, headers=to_js({"Allow": "GET, HEAD, POST, OPTIONS"}))

    url = URL.new(request.url)

    if url.pathname.startswith(proxy_endpoint):
        if request.method == "OPTIONS":
            return handle_options(request)
        if request.method in ("GET", "HEAD", "POST"):
            return handle_request(request)
        return Response.new(None, status=405, statusText="Method Not Allowed")
    return raw_html_response(demo_page)
"""  # noqa: E501 - as the docs have it


def test_cors_header_proxy(corral: Corral, upstream: Upstream) -> None:
    put(corral, "corsproxy", CORS, upstream)
    resp = get(corral, "corsproxy", "/corsproxy/", headers={"x-probe": "1"})
    assert resp.status == 200, (resp, corral.log())
    assert resp.headers["access-control-allow-origin"] == "http://corsproxy.localhost"
    assert resp.headers["vary"] == "Origin"
    assert resp.headers["x-upstream"] == "yes" and resp.headers["content-type"] == "application/json"
    seen = resp.json()
    assert seen["path"] == "/echo/demos/demoapi" and seen["headers"]["origin"] == upstream.url("")
    assert seen["headers"]["x-probe"] == "1"
    other = upstream.url("/echo/other")
    resp = get(corral, "corsproxy", f"/corsproxy/?apiurl={other}", method="POST", body="{}")
    assert resp.json()["path"] == "/echo/other" and resp.json()["method"] == "POST", (resp, corral.log())
    resp = get(corral, "corsproxy", "/corsproxy/", method="OPTIONS", headers={
        "Origin": "https://a.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert resp.headers["access-control-allow-headers"] == "content-type", (resp, corral.log())
    assert resp.headers["access-control-max-age"] == "86400"
    assert get(corral, "corsproxy", "/corsproxy/", method="OPTIONS").headers["allow"] == "GET, HEAD, POST, OPTIONS"
    resp = get(corral, "corsproxy", "/corsproxy/", method="PUT")
    assert (resp.status, resp.reason) == (405, "Method Not Allowed")
    assert "text/html" in get(corral, "corsproxy", "/").headers["content-type"]


LOGGING_HEADERS = '''
from workers import Response

async def on_fetch(request):
    print(dict(request.headers))
    return Response('Hello world')
'''


def test_logging_headers(corral: Corral) -> None:
    put(corral, "logheaders", LOGGING_HEADERS)
    resp = get(corral, "logheaders", headers={"x-probe": "yes"})
    assert (resp.status, resp.text) == (200, "Hello world"), (resp, corral.log())


CACHE_API = '''
from pyodide.ffi import create_proxy
from js import Response, Request, URL, caches, fetch

async def on_fetch(request, _env, ctx):
    cache_url = request.url

    # Construct the cache key from the cache URL
    cache_key = Request.new(cache_url, request)
    cache = await caches.open("docs")

    # Check whether the value is already available in the cache
    # if not, you will need to fetch it from origin, and store it in the cache
    response = await cache.match(cache_key)

    if response is None:
        print(f"Response for request url: {request.url} not present in cache. Fetching and caching request.")
        # If not in cache, get it from origin
        response = await fetch("UP/echo" + URL.new(request.url).pathname)
        # Must use Response constructor to inherit all of response's fields
        response = Response.new(response.body, response)

        # Cache API respects Cache-Control headers. Setting s-max-age to 10
        # will limit the response to be in cache for 10 seconds s-maxage
        # Any changes made to the response here will be reflected in the cached value
        response.headers.append("Cache-Control", "s-maxage=10")
        ctx.waitUntil(create_proxy(cache.put(cache_key, response.clone())))
    else:
        print(f"Cache hit for: {request.url}.")
    return response
'''


def test_cache_api(corral: Corral, upstream: Upstream) -> None:
    put(corral, "cacheapi", CACHE_API, upstream)
    first = get(corral, "cacheapi", "/cached/1")
    assert first.status == 200, (first, corral.log())
    assert first.headers["cache-control"] == "s-maxage=10" and first.headers["x-upstream"] == "yes"
    deadline, hit = time.monotonic() + 10, False
    while not hit and time.monotonic() < deadline:  # waitUntil's put lands after the first response
        before = len(upstream.seen("/echo/cached/1"))
        again = get(corral, "cacheapi", "/cached/1")
        assert again.status == 200 and again.json() == first.json(), (again, corral.log())
        hit = len(upstream.seen("/echo/cached/1")) == before
    assert hit, corral.log()


MODIFY_REQUEST = '''
import json
from workers import WorkerEntrypoint
from pyodide.ffi import to_js as _to_js
from js import Object, URL, Request, fetch, Response

def to_js(obj):
    return _to_js(obj, dict_converter=Object.fromEntries)

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        some_host = "127.0.0.1"
        some_url = "UP/echo/api.js"

        # The best practice is to only assign new_request_init properties
        # on the request object using either a method or the constructor
        new_request_init = {
          "method": "POST", # Change method
          "body": json.dumps({ "bar": "foo" }), # Change body
          "redirect": "follow", # Change the redirect mode
          # Change headers, note this method will erase existing headers
          "headers": {
            "Content-Type": "application/json",
          },
          #  Change a Cloudflare feature on the outbound response
          "cf": { "apps": False },
        }

        # Change just the host
        url = URL.new(some_url)
        url.hostname = some_host

        org_request = Request.new(request, new_request_init)
        new_request = Request.new(url.toString(),org_request)

        new_request.headers["X-Example"] =  "bar"
        new_request.headers["Content-Type"] = "application/json"

        try:
            return await fetch(new_request)
        except Exception as e:
            return Response.new({"error": str(e)}, status=500)
'''


def test_modify_request_property(corral: Corral, upstream: Upstream) -> None:
    put(corral, "modrequest", MODIFY_REQUEST, upstream)
    resp = get(corral, "modrequest", headers={"x-dropped": "1"})
    assert resp.status == 200, (resp, corral.log())
    seen = resp.json()
    assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/echo/api.js", '{"bar": "foo"}')
    assert seen["headers"]["x-example"] == "bar" and seen["headers"]["content-type"] == "application/json"
    assert "x-dropped" not in seen["headers"]


CONDITIONAL_RESPONSE = r"""
import re
from workers import Response
from urllib.parse import urlparse

async def on_fetch(request):
    blocked_hostnames = ["nope.mywebsite.com", "bye.website.com"]
    url = urlparse(request.url)

    # Block on hostname
    if url.hostname in blocked_hostnames:
        return Response("Blocked Host", status=403)

    # On paths ending in .doc or .xml
    if re.search(r'\.(doc|xml)$', url.path):
        return Response("Blocked Extension", status=403)

    # On HTTP method
    if "POST" in request.method:
        return Response("Response for POST")

    # On User Agent
    user_agent = request.headers["User-Agent"] or ""
    if "bot" in user_agent:
        return Response("Block User Agent containing bot", status=403)

    # On Client's IP address
    client_ip = request.headers["CF-Connecting-IP"]
    if client_ip == "1.2.3.4":
        return Response("Block the IP 1.2.3.4", status=403)

    # On ASN
    if request.cf and request.cf.asn == 64512:
        return Response("Block the ASN 64512 response")

    # On Device Type
    # Requires Enterprise "CF-Device-Type Header" zone setting or
    # Page Rule with "Cache By Device Type" setting applied.
    device = request.headers["CF-Device-Type"]
    if device == "mobile":
        return Response.redirect("https://mobile.example.com")

    return Response("passed")
"""


def test_conditional_response(corral: Corral) -> None:
    put(corral, "conditional", CONDITIONAL_RESPONSE)
    assert get(corral, "conditional", "/a.doc").text == "Blocked Extension"
    assert get(corral, "conditional", method="POST", body="x").text == "Response for POST"
    assert get(corral, "conditional", headers={"user-agent": "a bot"}).status == 403
    resp = get(corral, "conditional", headers={"CF-Device-Type": "mobile"})
    assert (resp.status, resp.headers.get("location")) == (302, "https://mobile.example.com/"), resp
    assert get(corral, "conditional").text == "passed", corral.log()


DEBUGGING_LOGS_AS_IS = '''
import json
import traceback
from pyodide.ffi import create_once_callable
from js import Response, fetch, Headers

async def on_fetch(request, _env, ctx):
    # Service configured to receive logs
    log_url = "https://log-service.example.com/"

    async def post_log(data):
        return await fetch(log_url, method="POST", body=data)

    response = await fetch(request)

    try:
        if not response.ok and not response.redirected:
            body = await response.text()
        # Simulating an error. Ensure the string is small enough to be a header
        raise Exception(f'Bad response at origin. Status:{response.status} Body:{body.strip()[:10]}')
    except Exception as e:
        # Without ctx.waitUntil(), your fetch() to Cloudflare's
        # logging service may or may not complete
        ctx.waitUntil(create_once_callable(post_log(e)))
        stack = json.dumps(traceback.format_exc()) or e
        # Copy the response and add to header
        response = Response.new(stack, response)
        response.headers["X-Debug-stack"] = stack
        response.headers["X-Debug-err"] = e

    return response
'''
#: The same, its log service and origin the local upstream.
DEBUGGING_LOGS = DEBUGGING_LOGS_AS_IS.replace('"https://log-service.example.com/"', '"UP/echo/log-service"') \
    .replace("await fetch(request)", 'await fetch("UP/echo/origin")')


def test_debugging_logs(corral: Corral, upstream: Upstream) -> None:
    put(corral, "debuglogs", DEBUGGING_LOGS, upstream)
    resp = get(corral, "debuglogs")
    assert resp.status == 200, (resp, corral.log())
    assert resp.headers["x-debug-err"] == "cannot access local variable 'body' where it is not associated " \
        "with a value", resp.headers
    assert resp.headers["x-upstream"] == "yes" and "Traceback" in json.loads(resp.text)
    assert upstream.wait_for(lambda: upstream.seen("/echo/log-service")), corral.log()
    assert upstream.seen("/echo/log-service")[0]["method"] == "POST"


CRON_HANDLER = '''
from workers import handler

@handler
async def on_scheduled(controller, env, ctx):
  print("cron processed")
'''


def test_cron_trigger_with_the_handler_decorator(corral: Corral) -> None:
    put(corral, "crondecorated", CRON_HANDLER)
    ran = corral.admin("POST", "/accounts/local/workers/dispatch/namespaces/default/scripts/crondecorated"
                       "/schedules/trigger", {"cron": "0 * * * *"})
    assert ran.status == 200, ran.text
    trace = ran.json()["result"]
    assert trace["outcome"] == "ok" and ["cron processed"] in [e["message"] for e in trace["logs"]], trace


D1_TUTORIAL = '''
from workers import Response

async def on_fetch(request, env):
    # Do anything else you'd like on request here!

    # Query D1 - we'll list all tables in our database in this example
    results = await env.DB.prepare("PRAGMA table_list").run()
    # Return a JSON response
    return Response.json(results)
'''


def test_query_d1_from_python_workers(corral: Corral) -> None:
    put(corral, "d1tutorial", D1_TUTORIAL, bindings=[{"type": "d1", "name": "DB", "id": "d1tutorial"}])
    resp = get(corral, "d1tutorial")
    assert resp.status == 200 and resp.json()["success"] is True, (resp, corral.log())


AGGREGATE = '''
import asyncio
from workers import WorkerEntrypoint, Response, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        some_host = "UP/echo"
        url1 = some_host + "/todos/1"
        url2 = some_host + "/todos/2"
        responses = await asyncio.gather(fetch(url1), fetch(url2))
        results = await asyncio.gather(*(r.json() for r in responses))
        return Response.json(results)
'''


def test_aggregate_requests(corral: Corral, upstream: Upstream) -> None:
    put(corral, "aggregate", AGGREGATE, upstream)
    resp = get(corral, "aggregate")
    assert resp.status == 200, (resp, corral.log())
    assert [r["path"] for r in resp.json()] == ["/echo/todos/1", "/echo/todos/2"]


# == HTTP clients (Python Workers "HTTP" page) =================================================

HTTPX_ASYNC = '''
import httpx
from workers import WorkerEntrypoint, Response


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        async with httpx.AsyncClient() as client:
            r = await client.get("UP/echo/httpx")
            posted = await client.post("UP/echo/httpx-post", json={"a": 1})
        return Response.json([r.status_code, r.json()["path"], posted.json()["body"]])
'''


def test_httpx_async_client(corral: Corral, upstream: Upstream) -> None:
    deploy(corral, "httpxasync", HTTPX_ASYNC.replace("UP/", upstream.url("/")), ("httpx",))
    resp = get(corral, "httpxasync")
    assert resp.status == 200, (resp, corral.log())
    assert resp.json() == [200, "/echo/httpx", '{"a":1}']


# == handlers: scheduled, waitUntil ===========================================================

SCHEDULED = '''
from workers import WorkerEntrypoint, Response


class Default(WorkerEntrypoint):
    async def scheduled(self, controller, env, ctx):
        print(f"cron processed {controller.cron} {controller.scheduledTime > 0}")
        ctx.waitUntil(self.env.KV.put("last", controller.cron))

    async def fetch(self, request):
        return Response(await self.env.KV.get("last") or "never")
'''


def test_cron_trigger_scheduled_handler(corral: Corral) -> None:
    put(corral, "crondoc", SCHEDULED, bindings=[
        {"type": "kv_namespace", "name": "KV", "namespace_id": "crondoc"}])
    ran = corral.admin("POST", "/accounts/local/workers/dispatch/namespaces/default/scripts/crondoc"
                       "/schedules/trigger", {"cron": "*/5 * * * *"})
    assert ran.status == 200, ran.text
    trace = ran.json()["result"]
    assert trace["outcome"] == "ok", trace
    assert ["cron processed */5 * * * * True"] in [e["message"] for e in trace["logs"]], trace
    assert get(corral, "crondoc").text == "*/5 * * * *"


SCHEDULED_WORK_FAILS = '''
from workers import WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def scheduled(self, controller, env, ctx):
        async def report():
            raise RuntimeError("the report could not be sent")

        ctx.waitUntil(report())
'''


def test_a_cron_run_whose_wait_until_fails_is_an_exception(corral: Corral) -> None:
    """workerd: "The first ctx.waitUntil to fail will be observed and recorded
    as the status" of a scheduled event (its outcome is waitUntilStatus())."""
    put(corral, "cronwork", SCHEDULED_WORK_FAILS)
    ran = corral.admin("POST", "/accounts/local/workers/dispatch/namespaces/default/scripts/cronwork"
                       "/schedules/trigger", {"cron": "*/5 * * * *"})
    trace = ran.json()["result"]
    assert trace["outcome"] == "exception", trace
    assert [e["message"] for e in trace["exceptions"]] == ["the report could not be sent"], trace


WAIT_UNTIL = '''
from workers import WorkerEntrypoint, Response


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/read"):
            return Response(await self.env.KV.get("hit") or "none")

        async def log_later():
            await self.env.KV.put("hit", request.url)

        self.ctx.waitUntil(log_later())
        return Response("ok")
'''


def test_wait_until_runs_after_the_response(corral: Corral) -> None:
    put(corral, "waituntil", WAIT_UNTIL, bindings=[
        {"type": "kv_namespace", "name": "KV", "namespace_id": "waituntil"}])
    assert get(corral, "waituntil", "/w").text == "ok"
    deadline = time.monotonic() + 10
    while (seen := get(corral, "waituntil", "/read").text) == "none" and time.monotonic() < deadline:
        time.sleep(0.05)  # the background write lands after the response
    assert seen == "http://waituntil.localhost/w"


# == KV, R2 and D1: the Python tabs of their Workers API pages ================================

KV_DOCS = '''
import json
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        try:
            await self.env.USERS_NOTIFICATION_CONFIG.put("user_2", "disabled")
            value = await self.env.USERS_NOTIFICATION_CONFIG.get("user_2")
            all_keys = await self.env.USERS_NOTIFICATION_CONFIG.list()
            await self.env.USERS_NOTIFICATION_CONFIG.put("user_3", json.dumps({"on": True}),
                                                         expiration_ttl=3600, metadata={"v": 1})
            as_json = await self.env.USERS_NOTIFICATION_CONFIG.get("user_3", type="json")
            await self.env.USERS_NOTIFICATION_CONFIG.delete("user_3")
            return Response(json.dumps({"value": value, "allKeys": all_keys, "json": as_json,
                                        "names": [k.name for k in all_keys.keys]}))
        except Exception as e:
            return Response(f"{e}", status=500)
'''


def test_kv_get_started(corral: Corral) -> None:
    put(corral, "kvdocs", KV_DOCS, bindings=[
        {"type": "kv_namespace", "name": "USERS_NOTIFICATION_CONFIG", "namespace_id": "kvdocs"}])
    resp = get(corral, "kvdocs")
    assert resp.status == 200, (resp, corral.log())
    out = resp.json()
    assert out["value"] == "disabled" and out["json"] == {"on": True} and out["names"] == ["user_2"]
    assert out["allKeys"]["keys"][0]["name"] == "user_2" and out["allKeys"]["list_complete"] is True


R2_DOCS = '''
from urllib.parse import urlparse
from workers import WorkerEntrypoint, Response


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlparse(request.url)
        key = url.path[1:]
        if request.method == "PUT":
            await self.env.MY_BUCKET.put(key, request.body)
            return Response(f"Put {key} successfully!")
        elif request.method == "GET":
            obj = await self.env.MY_BUCKET.get(key)
            if obj is None:
                return Response("Object Not Found", status=404)
            return Response(obj.body, headers={"etag": obj.httpEtag})
        elif request.method == "DELETE":
            await self.env.MY_BUCKET.delete(key)
            return Response("Deleted!")
        return Response("Method Not Allowed", status=405, headers={"Allow": "PUT, GET, DELETE"})
'''


def test_r2_workers_api(corral: Corral) -> None:
    put(corral, "r2docs", R2_DOCS, bindings=[{"type": "r2_bucket", "name": "MY_BUCKET", "bucket_name": "r2docs"}])
    resp = get(corral, "r2docs", "/a/b.txt", method="PUT", body=b"hello r2")
    assert resp.text == "Put a/b.txt successfully!", (resp, corral.log())
    resp = get(corral, "r2docs", "/a/b.txt")
    assert resp.body == b"hello r2" and resp.headers["etag"].startswith('"')
    assert get(corral, "r2docs", "/a/b.txt", method="DELETE").text == "Deleted!"
    assert get(corral, "r2docs", "/a/b.txt").status == 404
    assert get(corral, "r2docs", "/x", method="POST").headers["allow"] == "PUT, GET, DELETE"


D1_DOCS = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        await self.env.DB.exec("CREATE TABLE IF NOT EXISTS qtable (quote TEXT, author TEXT)")
        await self.env.DB.exec("DELETE FROM qtable")
        await self.env.DB.prepare("INSERT INTO qtable VALUES (?, ?)").bind("Stay hungry", "Jobs").run()
        query = """SELECT quote, author FROM qtable ORDER BY RANDOM() LIMIT 1;"""
        results = await self.env.DB.prepare(query).all()
        data = results.results[0]
        stmt = self.env.DB.prepare("SELECT * FROM qtable WHERE author = ?").bind("Jobs")
        return_value = await stmt.run()
        raw = await stmt.raw()
        return Response.json({"data": data, "run": return_value, "raw": raw,
                              "first": await stmt.first("quote")})
'''


def test_d1_worker_api(corral: Corral) -> None:
    put(corral, "d1docs", D1_DOCS, bindings=[{"type": "d1", "name": "DB", "id": "d1docs"}])
    resp = get(corral, "d1docs")
    assert resp.status == 200, (resp, corral.log())
    out = resp.json()
    assert out["data"] == {"quote": "Stay hungry", "author": "Jobs"}
    assert out["run"]["success"] is True and out["run"]["results"] == [out["data"]]
    assert out["raw"] == [["Stay hungry", "Jobs"]] and out["first"] == "Stay hungry"


# == Durable Objects ===========================================================================

DO_GET_STARTED = '''
from workers import DurableObject, Response, WorkerEntrypoint


class MyDurableObject(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)

    async def say_hello(self, name):
        result = self.ctx.storage.sql.exec("SELECT 'Hello, ' || ? || '!' as greeting", name).one()
        return result.greeting


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        stub = self.env.MY_DURABLE_OBJECT.getByName("foo")
        rpc_response = await stub.say_hello("world")
        return Response(rpc_response)
'''


def test_durable_object_get_started(corral: Corral) -> None:
    put(corral, "dostart", DO_GET_STARTED, bindings=[
        {"type": "durable_object_namespace", "name": "MY_DURABLE_OBJECT", "class_name": "MyDurableObject"}])
    resp = get(corral, "dostart")
    assert (resp.status, resp.text) == (200, "Hello, world!"), (resp, corral.log())


DO_COUNTER = '''
from workers import DurableObject, Response, WorkerEntrypoint
from urllib.parse import urlparse


class Counter(DurableObject):
    async def get_counter_value(self):
        value = await self.ctx.storage.get("value")
        return value or 0

    async def increment(self, amount=1):
        value = await self.ctx.storage.get("value") or 0
        value += amount
        await self.ctx.storage.put("value", value)
        return value

    def decrement_sync(self, amount=1):
        value = (self.ctx.storage.kv.get("value") or 0) - amount
        self.ctx.storage.kv.put("value", value)
        return value


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlparse(request.url)
        name = url.query or None
        if not name:
            return Response("Select a Durable Object to contact by using the `name` URL query string parameter")
        stub = self.env.COUNTERS.get(self.env.COUNTERS.idFromName(name))
        if url.path == "/increment":
            count = await stub.increment()
        elif url.path == "/decrement":
            count = await stub.decrement_sync()
        elif url.path in ("", "/"):
            count = await stub.get_counter_value()
        else:
            return Response("Not found", status=404)
        return Response(f"Durable Object '{name}' count: {count}")
'''


def test_durable_object_counter_with_kv_storage(corral: Corral) -> None:
    put(corral, "docounter", DO_COUNTER, bindings=[
        {"type": "durable_object_namespace", "name": "COUNTERS", "class_name": "Counter"}])
    assert get(corral, "docounter", "/increment?a").text == "Durable Object 'a' count: 1"
    assert get(corral, "docounter", "/increment?a").text == "Durable Object 'a' count: 2"
    assert get(corral, "docounter", "/decrement?a").text == "Durable Object 'a' count: 1"
    assert get(corral, "docounter", "/?b").text == "Durable Object 'b' count: 0"


DO_ALARM = '''
import time
from workers import DurableObject, Response, WorkerEntrypoint

SECONDS = 1000


class AlarmExample(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.storage = ctx.storage

    async def fetch(self, request):
        if request.url.endswith("/fired"):
            return Response(str(await self.storage.get("fired")))
        current_alarm = await self.storage.getAlarm()
        if current_alarm is None:
            await self.storage.setAlarm(int(time.time() * 1000) + SECONDS // 10)
        return Response("alarm set")

    async def alarm(self):
        await self.storage.put("fired", (await self.storage.get("fired") or 0) + 1)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await self.env.ALARM_EXAMPLE.getByName("a").fetch(request)
'''


def test_durable_object_alarm(corral: Corral) -> None:
    put(corral, "doalarm", DO_ALARM, bindings=[
        {"type": "durable_object_namespace", "name": "ALARM_EXAMPLE", "class_name": "AlarmExample"}])
    assert get(corral, "doalarm", "/set").text == "alarm set", corral.log()
    deadline = time.monotonic() + 15
    while (fired := get(corral, "doalarm", "/fired").text) == "None" and time.monotonic() < deadline:
        time.sleep(0.05)  # the alarm fires on its own clock
    assert fired == "1", corral.log()


DO_WS_HIBERNATION = """
from workers import DurableObject, Response, WorkerEntrypoint
from js import WebSocketPair, WebSocketRequestResponsePair
import uuid

class Session:
  def __init__(self, *, ws):
    self.ws = ws

# Worker
class Default(WorkerEntrypoint):
	async def fetch(self, request):
		if request.url.endswith('/websocket'):
			# Expect to receive a WebSocket Upgrade request.
			# If there is one, accept the request and return a WebSocket Response.
			upgrade_header = request.headers.get('Upgrade')
			if not upgrade_header or upgrade_header != 'websocket':
				return Response('Worker expected Upgrade: websocket', status=426)

			if request.method != 'GET':
				return Response('Worker expected GET method', status=400)

			stub = self.env.WEBSOCKET_HIBERNATION_SERVER.getByName("foo")

			return await stub.fetch(request)

		return Response(
			\"\"\"Supported endpoints:
/websocket: Expects a WebSocket upgrade request\"\"\",
			status=200,
			headers={'Content-Type': 'text/plain'}
		)

# Durable Object
class WebSocketHibernationServer(DurableObject):
	def __init__(self, ctx, env):
		super().__init__(ctx, env)
		self.sessions = {}
		for ws in self.ctx.getWebSockets():
			attachment = ws.deserializeAttachment()
			if attachment:
				self.sessions[attachment] = Session(ws=ws)

		# Sets an application level auto response that does not wake hibernated WebSockets.
		self.ctx.setWebSocketAutoResponse(WebSocketRequestResponsePair.new('ping', 'pong'))

	async def fetch(self, request):
		# Creates two ends of a WebSocket connection.
		client, server = WebSocketPair.new().object_values()
		self.ctx.acceptWebSocket(server)

		# Generate a random UUID for the session.
		id = str(uuid.uuid4())
		server.serializeAttachment(id)
		self.sessions[id] = Session(ws=server)

		return Response(None, status=101, web_socket=client)

	async def webSocketMessage(self, ws, message):
		# Get the session ID associated with the WebSocket connection.
		session_id = ws.deserializeAttachment()

		ws.send(f"[Durable Object] message: {message}, from: {session_id}, to: the initiating client. Total connections: {len(self.sessions)}")

		for session in self.sessions.values():
			session.ws.send(f"[Durable Object] message: {message}, from: {session_id}, to: all clients. Total connections: {len(self.sessions)}")

		for session in self.sessions.values():
			if session.ws != ws:
				session.ws.send(f"[Durable Object] message: {message}, from: {session_id}, to: all clients except the initiating client. Total connections: {len(self.sessions)}")

	async def webSocketClose(self, ws, code, reason, wasClean):
		ws.close(code, reason)
		# Get the session ID from the WebSocket attachment to remove it from sessions
		session_id = ws.deserializeAttachment()
		if session_id:
			self.sessions.pop(session_id, None)
"""  # noqa: E501 - as the docs have it


def test_durable_object_websocket_hibernation_server(corral: Corral) -> None:
    from tests.test_websockets import Client

    put(corral, "dows", DO_WS_HIBERNATION, bindings=[{
        "type": "durable_object_namespace", "name": "WEBSOCKET_HIBERNATION_SERVER",
        "class_name": "WebSocketHibernationServer"}])
    assert get(corral, "dows").text.startswith("Supported endpoints:"), corral.log()
    assert get(corral, "dows", "/websocket").status == 426
    a = Client(corral.port, "dows.localhost", "/websocket")
    b = Client(corral.port, "dows.localhost", "/websocket")
    try:
        a.send("ping")
        assert a.next() == "pong"
        a.send("hi")
        to_a = [a.next(), a.next()]
        assert "to: the initiating client. Total connections: 2" in to_a[0], (to_a, corral.log())
        assert "to: all clients. Total connections: 2" in to_a[1], to_a
        to_b = [b.next(), b.next()]
        assert "to: all clients. Total connections: 2" in to_b[0], to_b
        assert "to: all clients except the initiating client. Total connections: 2" in to_b[1], to_b
        assert to_a[0].split("from: ")[1].split(",")[0] == to_b[1].split("from: ")[1].split(",")[0]
    finally:
        a.close()
        b.close()


# == Queues ====================================================================================

QUEUE_DOCS = '''
import json
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/seen"):
            listing = await self.env.SEEN.list()
            return Response.json({k.name: await self.env.SEEN.get(k.name) for k in listing.keys})
        await self.env.MY_QUEUE.send({"url": request.url, "method": request.method,
                                      "headers": dict(request.headers)})
        await self.env.MY_QUEUE.sendBatch([{"body": "batch-1"}, {"body": "batch-2", "contentType": "text"}])
        await self.env.MY_QUEUE.send("later", delaySeconds=0)
        await self.env.RETRY_QUEUE.send("again")
        return Response("Sent!")

    async def queue(self, batch, env, ctx):
        if batch.queue == "docs-retry":
            for message in batch.messages:
                await env.SEEN.put(f"retry:{message.attempts}", json.dumps(message.body))
            if batch.messages[0].attempts == 1:
                batch.retryAll()
            else:
                batch.ackAll()
            return
        for message in batch.messages:
            print(f"Received {message.body}")
            body = message.body
            key = body["method"] if isinstance(body, dict) else body
            await env.SEEN.put(key, json.dumps([body, message.attempts, isinstance(message.id, str),
                                                message.timestamp is not None]))
            message.ack()
'''


def test_queue_producer_and_consumer(corral: Corral) -> None:
    put(corral, "queuedocs", QUEUE_DOCS, bindings=[
        {"type": "queue", "name": "MY_QUEUE", "queue_name": "docs-q"},
        {"type": "queue", "name": "RETRY_QUEUE", "queue_name": "docs-retry"},
        {"type": "kv_namespace", "name": "SEEN", "namespace_id": "queuedocs"}],
        extra_metadata={"queue_consumers": [
            {"queue": "docs-q", "max_batch_size": 10, "max_batch_timeout": 0.1},
            {"queue": "docs-retry", "max_batch_size": 10, "max_batch_timeout": 0.1, "retry_delay": 0}]})
    assert get(corral, "queuedocs", "/send", headers={"x-a": "b"}).text == "Sent!", corral.log()
    want = {"GET", "batch-1", "batch-2", "later", "retry:1", "retry:2"}
    deadline = time.monotonic() + 20
    while not want <= set(seen := get(corral, "queuedocs", "/seen").json()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the consumer runs on the queue's own schedule
    assert want <= set(seen), (seen, corral.log())
    body, attempts, id_is_str, has_time = json.loads(seen["GET"])
    assert body["url"] == "http://queuedocs.localhost/send" and body["headers"]["x-a"] == "b"
    assert attempts == 1 and id_is_str and has_time
    assert json.loads(seen["batch-2"])[0] == "batch-2" and json.loads(seen["retry:2"]) == "again"


# == Service bindings: RPC and fetch ===========================================================

RPC_B = '''
from workers import WorkerEntrypoint, Response


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(f"B saw {request.method} {request.url}")

    async def add(self, a, b):
        return a + b

    async def describe(self, data):
        return {"keys": sorted(data), "n": len(data["items"])}
'''

RPC_A = '''
from workers import WorkerEntrypoint, Response


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/forward"):
            return await self.env.WORKER_B.fetch(request)
        result = await self.env.WORKER_B.add(1, 2)
        described = await self.env.WORKER_B.describe({"items": [1, 2, 3], "name": "x"})
        return Response(f"Result: {result} {described['keys']} {described['n']}")
'''


def test_service_binding_rpc_and_fetch(corral: Corral) -> None:
    corral.deploy("worker_b", textwrap.dedent(RPC_B), namespace=None)
    put(corral, "rpca", RPC_A, bindings=[{"type": "service", "name": "WORKER_B", "service": "worker_b"}])
    assert get(corral, "rpca").text == "Result: 3 ['items', 'name'] 3", corral.log()
    resp = get(corral, "rpca", "/forward", method="POST", body="x")
    assert resp.text == "B saw POST http://rpca.localhost/forward", (resp, corral.log())


# == WebSockets and HTMLRewriter ===============================================================

WEBSOCKET = '''
from workers import WorkerEntrypoint, Response
from js import WebSocketPair
from pyodide.ffi import create_proxy


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        upgrade_header = request.headers.get("Upgrade")
        if not upgrade_header or upgrade_header != "websocket":
            return Response("Expected Upgrade: websocket", status=426)
        client, server = WebSocketPair.new().object_values()
        server.accept()

        def on_message(event):
            server.send(f"echo: {event.data}")

        server.addEventListener("message", create_proxy(on_message))
        return Response(None, status=101, web_socket=client)
'''


def test_websocket_server(corral: Corral) -> None:
    from tests.test_websockets import Client

    put(corral, "wsdocs", WEBSOCKET)
    assert get(corral, "wsdocs").status == 426
    ws = Client(corral.port, "wsdocs.localhost")
    try:
        ws.send("hi")
        assert ws.next() == "echo: hi"
    finally:
        ws.close()


HTML_REWRITER = '''
from workers import WorkerEntrypoint, Response
from js import HTMLRewriter
from pyodide.ffi import create_proxy


class ElementHandler:
    def __init__(self, name):
        self.name = name

    def element(self, element):
        element.setAttribute("data-seen", self.name)
        element.append(" (rewritten)", {"html": False})


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        res = Response("<html><body><a href='/x'>link</a></body></html>",
                       headers={"content-type": "text/html"})
        rewriter = HTMLRewriter.new().on("a", create_proxy(ElementHandler("py")))
        return rewriter.transform(res.js_object)
'''


def test_html_rewriter(corral: Corral) -> None:
    put(corral, "rewriter", HTML_REWRITER)
    resp = get(corral, "rewriter")
    assert resp.status == 200, (resp, corral.log())
    assert 'data-seen="py"' in resp.text and "link (rewritten)</a>" in resp.text, resp.text


# == workers-py runtime-sdk bindings-test: D1 ==================================================

WP_D1 = PRELUDE + '''
from pyodide.ffi import JsException
from workers import WorkerEntrypoint

T, TYPES, BATCH, EXEC, EXEC_MULTI = "_test_d1", "_test_d1_types", "_test_d1_batch", "_test_d1_exec_tmp", \\
    "_test_d1_exec_multi"


async def cleanup(db):
    for table in (T, TYPES, BATCH, EXEC, EXEC_MULTI):
        await db.exec(f"DROP TABLE IF EXISTS {table}")


async def ensure_tables(db):
    await cleanup(db)
    await db.exec(f"CREATE TABLE IF NOT EXISTS {T} (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, value TEXT)")
    await db.exec(f"CREATE TABLE IF NOT EXISTS {TYPES} (id INTEGER PRIMARY KEY, txt TEXT, num REAL, intval INTEGER)")
    await db.exec(f"CREATE TABLE IF NOT EXISTS {BATCH} (id INTEGER PRIMARY KEY, val TEXT)")


async def insert(db, name, value):
    return await db.prepare(f"INSERT INTO {T} (name, value) VALUES (?, ?)").bind(name, value).run()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        db = self.env.DB

        def chained_statements_are_not_callable():
            statement = db.prepare(f"SELECT 1 FROM {T} WHERE name = ?")
            assert not callable(statement) and not callable(statement.bind("x"))

        async def insert_and_select_via_run():
            await ensure_tables(db)
            result = await insert(db, "run_test", "hello")
            assert result["success"] is True
            assert result["meta"]["changes"] >= 1 and result["meta"]["last_row_id"] > 0
            rows = (await db.prepare(f"SELECT id, name, value FROM {T} WHERE id = ?")
                    .bind(result["meta"]["last_row_id"]).run())["results"]
            assert len(rows) == 1 and rows[0]["name"] == "run_test" and rows[0]["value"] == "hello"

        async def all_first_and_column():
            await ensure_tables(db)
            await insert(db, "all_test", "v1")
            result = await db.prepare(f"SELECT name, value FROM {T} WHERE name = ?").bind("all_test").all()
            assert result["success"] is True and result["results"][0]["name"] == "all_test"
            row = await db.prepare(f"SELECT name, value FROM {T} WHERE name = ? LIMIT 1").bind("all_test").first()
            assert isinstance(row, dict) and row["value"] == "v1"
            value = await db.prepare(f"SELECT name, value FROM {T} WHERE name = ? LIMIT 1").bind("all_test") \\
                .first("value")
            assert value == "v1"
            assert await db.prepare(f"SELECT * FROM {T} WHERE name = ?").bind("__none__").first() is None

        async def raw_with_and_without_column_names():
            await ensure_tables(db)
            await insert(db, "raw_test", "rv")
            stmt = db.prepare(f"SELECT name, value FROM {T} WHERE name = ? LIMIT 1").bind("raw_test")
            rows = await stmt.raw()
            assert isinstance(rows, list) and rows == [["raw_test", "rv"]], rows
            assert await stmt.raw(columnNames=True) == [["name", "value"], ["raw_test", "rv"]]
            assert await stmt.raw({"columnNames": True}) == [["name", "value"], ["raw_test", "rv"]]
            assert await stmt.raw(None) == [["raw_test", "rv"]]

        async def bind_types_and_null():
            await ensure_tables(db)
            ins = f"INSERT INTO {TYPES} (id, txt, num, intval) VALUES (?, ?, ?, ?)"
            await db.prepare(ins).bind(2, "hello, D1!", 3.14, 42).run()
            await db.prepare(f"INSERT INTO {TYPES} (id, intval) VALUES (?, ?)").bind(3, True).run()
            await db.prepare(f"INSERT INTO {TYPES} (id, intval) VALUES (?, ?)").bind(4, False).run()
            await db.prepare(ins).bind(1, None, None, None).run()
            sel = db.prepare(f"SELECT txt, num, intval FROM {TYPES} WHERE id = ?")
            row2 = await sel.bind(2).first()
            assert row2["txt"] == "hello, D1!" and abs(row2["num"] - 3.14) < 0.001 and row2["intval"] == 42
            assert (await sel.bind(3).first())["intval"] == 1 and (await sel.bind(4).first())["intval"] == 0
            row1 = await sel.bind(1).first()
            assert row1["txt"] is None and row1["num"] is None and row1["intval"] is None

        async def exec_counts_statements():
            await cleanup(db)
            result = await db.exec(f"CREATE TABLE IF NOT EXISTS {EXEC} (id INTEGER PRIMARY KEY, val TEXT)")
            assert result["count"] >= 1 and result["duration"] >= 0
            result = await db.exec(
                f"CREATE TABLE IF NOT EXISTS {EXEC_MULTI} (id INTEGER PRIMARY KEY, val TEXT);\\n"
                f"INSERT INTO {EXEC_MULTI} (val) VALUES ('a');\\n"
                f"INSERT INTO {EXEC_MULTI} (val) VALUES ('b');")
            assert result["count"] >= 3
            assert await db.prepare(f"SELECT val FROM {EXEC_MULTI} ORDER BY val").raw() == [["a"], ["b"]]

        async def batch_inserts():
            await ensure_tables(db)
            stmt = db.prepare(f"INSERT INTO {BATCH} (id, val) VALUES (?, ?)")
            results = await db.batch([stmt.bind(1, "batch_a"), stmt.bind(2, "batch_b"), stmt.bind(3, "batch_c")])
            assert results is not None
            rows = (await db.prepare(f"SELECT id, val FROM {BATCH} ORDER BY id").all())["results"]
            assert [row["val"] for row in rows] == ["batch_a", "batch_b", "batch_c"]

        async def run_metadata_update_and_delete():
            await ensure_tables(db)
            result = await insert(db, "meta_test", "mv")
            for key in ("duration", "changes", "last_row_id", "changed_db", "rows_read", "rows_written",
                        "size_after"):
                assert key in result["meta"], key
            assert result["meta"]["changed_db"] is True
            row_id = result["meta"]["last_row_id"]
            updated = await db.prepare(f"UPDATE {T} SET value = ? WHERE id = ?").bind("new", row_id).run()
            assert updated["meta"]["changes"] == 1
            assert (await db.prepare(f"SELECT value FROM {T} WHERE id = ?").bind(row_id).first())["value"] == "new"
            deleted = await db.prepare(f"DELETE FROM {T} WHERE id = ?").bind(row_id).run()
            assert deleted["meta"]["changes"] == 1
            assert await db.prepare(f"SELECT * FROM {T} WHERE id = ?").bind(row_id).first() is None

        async def sessions_query_batch_and_bookmark():
            await ensure_tables(db)
            await insert(db, "session_test", "sv")
            session = db.withSession()
            assert session.getBookmark() is None
            result = await session.prepare(f"SELECT COUNT(*) as cnt FROM {T}").all()
            assert result["success"] is True and result["results"][0]["cnt"] >= 1
            bookmark = session.getBookmark()
            assert isinstance(bookmark, str) and bookmark
            stmt = session.prepare(f"INSERT INTO {BATCH} (id, val) VALUES (?, ?)")
            assert await session.batch([stmt.bind(1, "sa"), stmt.bind(2, "sb")]) is not None
            rows = await session.prepare(f"SELECT id, val FROM {BATCH} ORDER BY id").all()
            assert [r["val"] for r in rows["results"]] == ["sa", "sb"]

        async def invalid_sql_raises_a_js_exception():
            try:
                await db.prepare("INVALID SQL GIBBERISH").run()
            except JsException as e:
                assert "syntax error" in str(e), str(e)
            else:
                raise AssertionError("no error")

        return await run(chained_statements_are_not_callable, insert_and_select_via_run, all_first_and_column,
                         raw_with_and_without_column_names, bind_types_and_null, exec_counts_statements,
                         batch_inserts, run_metadata_update_and_delete, sessions_query_batch_and_bookmark,
                         invalid_sql_raises_a_js_exception)
'''


def test_workers_py_d1(corral: Corral) -> None:
    put(corral, "wpd1", WP_D1, bindings=[{"type": "d1", "name": "DB", "id": "wp-d1"}])
    all_ok(get(corral, "wpd1"), corral)


# == workers-py runtime-sdk bindings-test: Durable Objects =====================================

WP_DO = PRELUDE + '''
from datetime import datetime, timedelta
from workers import DurableObject, Response, WorkerEntrypoint, env as top_level_env


class TestDurableObject(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)

    async def fetch(self, request):
        if request.url.endswith("/ping"):
            return Response("pong from DO")
        return Response("not found", status=404)

    async def storage_kv(self):
        s = self.ctx.storage
        await s.deleteAll()
        await s.put("key1", "value1")
        assert await s.get("key1") == "value1"
        assert await s.get("missing") is None
        await s.put({"a": 1, "b": 2, "c": 3})
        assert (await s.get("a"), await s.get("b"), await s.get("c")) == (1, 2, 3)
        got = await s.get(["a", "b", "missing"])
        assert got.get("a") == 1 and got.get("b") == 2
        await s.put("to_delete", "gone")
        assert await s.delete("to_delete") is True
        assert await s.get("to_delete") is None
        await s.put({"d1": 1, "d2": 2, "d3": 3})
        assert await s.delete(["d1", "d2"]) == 2
        await s.deleteAll()
        await s.put({"list:a": 1, "list:b": 2, "list:c": 3, "other": 99})
        listed = await s.list({"prefix": "list:"})
        assert len(listed) == 3 and listed["list:a"] == 1 and listed["list:b"] == 2
        await s.deleteAll()
        for i in range(5):
            await s.put(f"item:{i:03d}", i)
        assert len(await s.list({"prefix": "item:", "limit": 2})) == 2
        await s.deleteAll()
        assert await s.get("item:000") is None
        for key, value in (("str", "hello"), ("int", 42), ("bool", True)):
            await s.put(key, value)
            got = await s.get(key)
            assert got == value and type(got) is type(value), (key, got)
        await s.put("float", 3.14)
        assert abs(await s.get("float") - 3.14) < 0.001

    async def sql(self):
        sql = self.ctx.storage.sql
        sql.exec("DROP TABLE IF EXISTS test_sql")
        sql.exec("CREATE TABLE test_sql (id INTEGER PRIMARY KEY, val TEXT)")
        sql.exec("INSERT INTO test_sql (id, val) VALUES (?, ?)", 1, "hello")
        sql.exec("INSERT INTO test_sql (id, val) VALUES (?, ?)", 2, "world")
        rows = sql.exec("SELECT id, val FROM test_sql ORDER BY id").toArray()
        assert len(rows) == 2 and rows[0]["id"] == 1 and rows[1]["val"] == "world"
        assert sql.exec("SELECT val FROM test_sql WHERE id = 1").one()["val"] == "hello"
        cursor = sql.exec("SELECT id, val FROM test_sql")
        assert list(cursor.columnNames) == ["id", "val"]
        cursor.toArray()
        rows = [{"id": row["id"], "val": row["val"]} for row in sql.exec("SELECT id, val FROM test_sql ORDER BY id")]
        assert rows == [{"id": 1, "val": "hello"}, {"id": 2, "val": "world"}]
        write = sql.exec("INSERT INTO test_sql VALUES (3, 'x')")
        write.toArray()
        assert write.rowsWritten >= 1
        read = sql.exec("SELECT * FROM test_sql")
        read.toArray()
        assert read.rowsRead >= 1
        arr = sql.exec("SELECT id, val FROM test_sql ORDER BY id").toArray()
        assert arr[0]["id"] == 1 and len(arr) == 3
        assert isinstance(sql.databaseSize, int | float) and sql.databaseSize >= 0
        sql.exec("DROP TABLE test_sql")

    async def alarm_set_get_delete(self):
        s = self.ctx.storage
        await s.deleteAlarm()
        assert await s.getAlarm() is None
        await s.setAlarm(datetime.now() + timedelta(minutes=1))
        assert await s.getAlarm() is not None
        await s.deleteAlarm()
        assert await s.getAlarm() is None

    async def transaction_and_sync(self):
        await self.ctx.storage.deleteAll()

        async def txn_body(txn):
            await txn.put("txn_key", "txn_value")
            return await txn.get("txn_key")

        assert await self.ctx.storage.transaction(txn_body) == "txn_value"
        assert await self.ctx.storage.get("txn_key") == "txn_value"
        await self.ctx.storage.put("sync_key", "sync_value")
        await self.ctx.storage.sync()
        assert await self.ctx.storage.get("sync_key") == "sync_value"

    async def ctx_id_and_block_concurrency_while(self):
        id_str = self.ctx.id.toString()
        assert isinstance(id_str, str) and len(id_str) == 64, id_str
        assert self.ctx.id.name is not None

        async def init():
            await self.ctx.storage.put("bcw_key", "bcw_value")
            return 42

        assert await self.ctx.blockConcurrencyWhile(init) == 42
        assert await self.ctx.storage.get("bcw_key") == "bcw_value"

    async def echo(self, value):
        return value

    async def rpc_dict(self, data):
        return {"received": data, "added": True}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        ns = self.env.TEST_DO
        stub = ns.get(ns.idFromName("test"))

        async def storage_kv():
            await stub.storage_kv()

        async def sql():
            await stub.sql()

        async def alarm_set_get_delete():
            await stub.alarm_set_get_delete()

        async def transaction_and_sync():
            await stub.transaction_and_sync()

        async def ctx_id_and_block_concurrency_while():
            await stub.ctx_id_and_block_concurrency_while()

        def namespace_ids():
            id1, id2 = ns.idFromName("deterministic"), ns.idFromName("deterministic")
            assert id1.toString() == id2.toString() and id1.name == "deterministic"
            u1, u2 = ns.newUniqueId(), ns.newUniqueId()
            assert u1.toString() != u2.toString() and len(u1.toString()) == 64
            assert ns.idFromString(id1.toString()).toString() == id1.toString()
            assert id1.equals(id2) and not id1.equals(ns.idFromName("different"))

        async def rpc_values_and_dicts():
            assert await stub.echo("hello") == "hello"
            assert await stub.echo(42) == 42 and await stub.echo(True) is True
            result = await stub.rpc_dict({"key": "value"})
            assert result["received"]["key"] == "value" and result["added"] is True
            top = top_level_env.TEST_DO
            result = await top.get(top.idFromName("test")).rpc_dict({"key": "value"})
            assert isinstance(result, dict) and result["received"]["key"] == "value"

        def stub_id_and_name():
            sid = ns.idFromName("stub_test")
            s = ns.get(sid)
            assert s.id.toString() == sid.toString() and s.name == "stub_test"

        async def stub_fetch():
            resp = await ns.get(ns.idFromName("fetch_test")).fetch("http://fake-host/ping")
            assert await resp.text() == "pong from DO"

        return await run(storage_kv, sql, alarm_set_get_delete, transaction_and_sync,
                         ctx_id_and_block_concurrency_while, namespace_ids, rpc_values_and_dicts,
                         stub_id_and_name, stub_fetch)
'''


def test_workers_py_durable_objects(corral: Corral) -> None:
    put(corral, "wpdo", WP_DO, bindings=[
        {"type": "durable_object_namespace", "name": "TEST_DO", "class_name": "TestDurableObject"}])
    all_ok(get(corral, "wpdo"), corral)


# == workers-py runtime-sdk bindings-test: queues ==============================================

WP_QUEUE = '''
import asyncio
import json
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/received"):
            listing = await self.env.RECEIVED.list()
            return Response.json([json.loads(await self.env.RECEIVED.get(k.name)) for k in listing.keys])
        q = self.env.TEST_QUEUE
        await asyncio.gather(
            q.send("hello queue"),
            q.send({"key": "value", "number": 42}),
            q.send(123),
            q.send("text message", contentType="text"),
            q.send(None),
            q.send(True),
            q.send([1, 2, 3]),
            q.send(""),
            q.send({"outer": {"inner": "deep"}, "list": [1, 2]}),
            q.sendBatch([{"body": "batch 1"}, {"body": "batch 2"}, {"body": "batch 3"}]),
            q.sendBatch([{"body": "text msg", "contentType": "text"}], delaySeconds=0),
        )
        return Response("sent")

    async def queue(self, batch, env, ctx):
        for message in batch.messages:
            await env.RECEIVED.put(message.id, json.dumps(
                {"id": message.id, "body": message.body, "attempts": message.attempts}))
            message.ack()
'''


def test_workers_py_queue(corral: Corral) -> None:
    put(corral, "wpqueue", WP_QUEUE, bindings=[
        {"type": "queue", "name": "TEST_QUEUE", "queue_name": "wp-test-queue"},
        {"type": "kv_namespace", "name": "RECEIVED", "namespace_id": "wp-received"}],
        extra_metadata={"queue_consumers": [{"queue": "wp-test-queue", "max_batch_size": 10,
                                             "max_batch_timeout": 0.1}]})
    assert get(corral, "wpqueue", "/send").text == "sent", corral.log()
    deadline = time.monotonic() + 20
    while len(got := get(corral, "wpqueue", "/received").json()) < 13 and time.monotonic() < deadline:
        time.sleep(0.05)  # the consumer runs on the queue's own schedule
    bodies = [m["body"] for m in got]
    for body in ("hello queue", {"key": "value", "number": 42}, 123, "text message", None, True, [1, 2, 3],
                 "", {"outer": {"inner": "deep"}, "list": [1, 2]}, "batch 1", "batch 2", "batch 3", "text msg"):
        assert body in bodies, (body, bodies)
    assert all(isinstance(m["id"], str) and m["attempts"] >= 1 for m in got)
    assert sum(1 for b in bodies if b is True) == 1 and sum(1 for b in bodies if b == 123) == 1


QUEUE_WAIT_UNTIL = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/seen"):
            return Response.json(sorted(k.name for k in (await self.env.SEEN.list()).keys))
        await self.env.Q.send("job")
        return Response("sent")

    async def queue(self, batch, env, ctx):
        attempts = batch.messages[0].attempts

        async def record():
            await env.SEEN.put(f"attempt:{attempts}", "1")
            if attempts == 1:
                raise RuntimeError("the background work failed")

        ctx.waitUntil(record())
'''


def test_a_queue_batch_whose_wait_until_fails_is_retried(corral: Corral) -> None:
    """Queues' consumer API: a batch is acknowledged once queue() returned and
    every promise given to waitUntil() resolved; one rejected fails the batch."""
    put(corral, "queuewait", QUEUE_WAIT_UNTIL, bindings=[
        {"type": "queue", "name": "Q", "queue_name": "docs-wait"},
        {"type": "kv_namespace", "name": "SEEN", "namespace_id": "queuewait"}],
        extra_metadata={"queue_consumers": [
            {"queue": "docs-wait", "max_batch_size": 1, "max_batch_timeout": 0.1, "retry_delay": 0}]})
    assert get(corral, "queuewait", "/send").text == "sent"
    deadline = time.monotonic() + 15
    while "attempt:2" not in (seen := get(corral, "queuewait", "/seen").json()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the consumer runs on the queue's own schedule
    assert seen == ["attempt:1", "attempt:2"], (seen, corral.log())


# == gallery snippets that pass the request on to the origin (``fetch(request)``) ===============
# A Worker in front of a site fetches its origin; here the dispatch namespace's
# outbound worker plays the origin for every public host: a page for ``*.html``,
# an image for ``*.png``, a text of its query for ``*.txt``, else the upstream's echo of ``/echo/<host><path>``.

ORIGIN = '''
from urllib.parse import unquote, urlsplit
from workers import Request, Response, WorkerEntrypoint, fetch

PAGE = (\'<a href="https://developer.mozilla.org/en-US/">docs</a>\'
        \'<img src="https://developer.mozilla.org/logo.png">\')


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlsplit(request.url)
        if url.path.endswith(".html"):
            return Response(PAGE, headers={"content-type": "text/html;charset=UTF-8"})
        if url.path.endswith(".png"):
            return Response(b"PNG", headers={"content-type": "image/png"})
        if url.path.endswith(".txt"):  # a text page that says what its query says
            return Response(unquote(url.query), headers={"content-type": "text/plain"})
        target = self.env.UPSTREAM + "/echo/" + url.netloc + url.path + ("?" + url.query if url.query else "")
        return await fetch(Request(target, method=request.method, headers=request.headers, body=request.body))
'''


@pytest.fixture(scope="module")
def origin(corral: Corral, upstream: Upstream) -> str:
    """The host suffix whose tenants' subrequests reach the origin above."""
    corral.deploy("origin", textwrap.dedent(ORIGIN), namespace=None,
                  bindings=[text("UPSTREAM", upstream.url(""))])
    corral.deploy_dispatcher(name="dispatch_origin", pattern="*.origin.localhost/*",
                             outbound={"worker": {"service": "origin"}})
    return "origin.localhost"


AUTH_WITH_HEADERS = '''
from workers import Response, fetch

async def on_fetch(request):
    PRESHARED_AUTH_HEADER_KEY = "X-Custom-PSK"
    PRESHARED_AUTH_HEADER_VALUE = "mypresharedkey"

    psk = request.headers[PRESHARED_AUTH_HEADER_KEY]

    if psk == PRESHARED_AUTH_HEADER_VALUE:
      # Correct preshared header key supplied. Fetch request from origin.
      return fetch(request)

    # Incorrect key supplied. Reject the request.
    return Response("Sorry, you have supplied an invalid key.", status=403)
'''


def test_auth_with_headers(corral: Corral, origin: str) -> None:
    put(corral, "authpsk", AUTH_WITH_HEADERS)
    host = f"authpsk.{origin}"
    resp = corral.request("/private?a=1", host=host, headers={"X-Custom-PSK": "mypresharedkey"})
    assert resp.status == 200, (resp, corral.log())
    assert resp.json()["path"] == f"/echo/{host}/private?a=1"
    assert corral.request("/private", host=host).status == 403


HOT_LINK = '''
from workers import Response, fetch
from urllib.parse import urlparse

async def on_fetch(request):
    homepage_url = "https://tutorial.cloudflareworkers.com/"
    protected_type = "image/"

    # Fetch the original request
    response = await fetch(request)

    # If it's an image, engage hotlink protection based on the referer header
    referer = request.headers["Referer"]
    content_type = response.headers["Content-Type"] or ""

    if referer and content_type.startswith(protected_type):
        # If the hostnames don't match, it's a hotlink
        if urlparse(referer).hostname != urlparse(request.url).hostname:
            # Redirect the user to your website
            return Response.redirect(homepage_url, 302)

    # Everything is fine, return the response normally
    return response
'''


def test_hot_link_protection(corral: Corral, origin: str) -> None:
    put(corral, "hotlink", HOT_LINK)
    host = f"hotlink.{origin}"
    resp = corral.request("/cat.png", host=host, headers={"Referer": "https://elsewhere.example/"})
    assert (resp.status, resp.headers.get("location")) == (302, "https://tutorial.cloudflareworkers.com/"), resp
    resp = corral.request("/cat.png", host=host, headers={"Referer": f"http://{host}/page"})
    assert (resp.status, resp.body) == (200, b"PNG"), (resp, corral.log())


ANOTHER_SITE = '''
from workers import Response, fetch

def on_fetch(request):
    def method_not_allowed(request):
        msg = f'Method {request.method} not allowed.'
        headers = {"Allow": "GET"}
        return Response(msg, headers=headers, status=405)

    # Only GET requests work with this proxy.
    if request.method != "GET":
        return method_not_allowed(request)

    return fetch("https://example.com")
'''


def test_respond_with_another_site(corral: Corral, origin: str) -> None:
    put(corral, "anothersite", ANOTHER_SITE)
    resp = corral.request("/", host=f"anothersite.{origin}")
    assert resp.status == 200 and resp.json()["path"] == "/echo/example.com/", (resp, corral.log())
    resp = corral.request("/", host=f"anothersite.{origin}", method="PUT", body="x")
    assert (resp.status, resp.text, resp.headers["allow"]) == (405, "Method PUT not allowed.", "GET")


BULK_ORIGIN = '''
from workers import WorkerEntrypoint
from js import fetch, URL

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        # A dict with different URLs to fetch
        ORIGINS = {
          "starwarsapi.yourdomain.com": "swapi.dev",
          "google.yourdomain.com": "www.google.com",
        }

        url = URL.new(request.url)

        # Check if incoming hostname is a key in the ORIGINS object
        if url.hostname in ORIGINS:
            url.hostname = ORIGINS[url.hostname]
            # If it is, proxy request to that third party origin
            return fetch(url.toString(), request)

        # Otherwise, process request as normal
        return fetch(request)
'''

CACHE_USING_FETCH = '''
from pyodide.ffi import to_js as _to_js
from js import Response, URL, Object, fetch

def to_js(x):
    return _to_js(x, dict_converter=Object.fromEntries)

async def on_fetch(request):
    url = URL.new(request.url)

    # Only use the path for the cache key, removing query strings
    # and always store using HTTPS, for example, https://www.example.com/file-uri-here
    some_custom_key = f"https://{url.hostname}{url.pathname}"

    response = await fetch(
        request,
        cf=to_js({
            # Always cache this fetch regardless of content type
            # for a max of 5 seconds before revalidating the resource
            "cacheTtl": 5,
            "cacheEverything": True,
            # Enterprise only feature, see Cache API for other plans
            "cacheKey": some_custom_key,
        }),
    )

    # Reconstruct the Response object to make its headers mutable
    response = Response.new(response.body, response)

    # Set cache control headers to cache on browser for 25 minutes
    response.headers["Cache-Control"] = "max-age=1500"

    return response
'''


def test_bulk_origin_proxy_and_cache_using_fetch(corral: Corral, origin: str) -> None:
    put(corral, "bulkorigin", BULK_ORIGIN)
    resp = corral.request("/x", host=f"bulkorigin.{origin}", method="POST", body="sent on")
    assert resp.status == 200, (resp, corral.log())
    assert (resp.json()["path"], resp.json()["method"]) == (f"/echo/bulkorigin.{origin}/x", "POST")
    assert resp.json()["body"] == "sent on"
    put(corral, "cachefetch", CACHE_USING_FETCH)
    resp = corral.request("/file?q=1", host=f"cachefetch.{origin}")
    assert resp.status == 200, (resp, corral.log())
    assert resp.headers["cache-control"] == "max-age=1500" and resp.headers["x-upstream"] == "yes"
    assert resp.json()["path"] == f"/echo/cachefetch.{origin}/file?q=1"


REWRITE_LINKS = '''
from pyodide.ffi import create_proxy
from js import HTMLRewriter, fetch

async def on_fetch(request):
    old_url = "developer.mozilla.org"
    new_url = "mynewdomain.com"

    class AttributeRewriter:
        def __init__(self, attr_name):
            self.attr_name = attr_name
        def element(self, element):
            attr = element.getAttribute(self.attr_name)
            if attr:
                element.setAttribute(self.attr_name, attr.replace(old_url, new_url))

    href = create_proxy(AttributeRewriter("href"))
    src = create_proxy(AttributeRewriter("src"))
    rewriter = HTMLRewriter.new().on("a", href).on("img", src)
    res = await fetch(request)
    content_type = res.headers["Content-Type"]

    # If the response is HTML, it can be transformed with
    # HTMLRewriter -- otherwise, it should pass through
    if content_type.startswith("text/html"):
        return rewriter.transform(res)
    return res
'''


def test_rewrite_links(corral: Corral, origin: str) -> None:
    put(corral, "rewritelinks", REWRITE_LINKS)
    resp = corral.request("/page.html", host=f"rewritelinks.{origin}")
    assert resp.status == 200, (resp, corral.log())
    assert resp.text == ('<a href="https://mynewdomain.com/en-US/">docs</a>'
                         '<img src="https://mynewdomain.com/logo.png">'), resp.text
    assert corral.request("/data", host=f"rewritelinks.{origin}").json()["path"].startswith("/echo/")




def test_debugging_logs_against_an_origin(corral: Corral, origin: str, upstream: Upstream) -> None:
    put(corral, "debugorigin", DEBUGGING_LOGS_AS_IS)
    resp = corral.request("/", host=f"debugorigin.{origin}")
    assert resp.status == 200 and resp.headers["x-upstream"] == "yes", (resp, corral.log())
    assert "body" in resp.headers["x-debug-err"] and "Traceback" in json.loads(resp.text)
    assert upstream.wait_for(lambda: upstream.seen("/echo/log-service.example.com/")), corral.log()


TIMING_ATTACKS = '''
from workers import Response
from js import TextEncoder, crypto

async def on_fetch(request, env):
    auth_token = request.headers["Authorization"] or ""
    secret = env.MY_SECRET_VALUE

    if secret is None:
        return Response("Missing secret binding", status=500)

    if len(auth_token) != len(secret):
        return Response("Unauthorized", status=401)

    encoder = TextEncoder.new()
    a = encoder.encode(auth_token)
    b = encoder.encode(secret)

    if a.byteLength != b.byteLength:
        return Response("Unauthorized", status=401)

    if not crypto.subtle.timingSafeEqual(a, b):
        return Response("Unauthorized", status=401)

    return Response("Welcome!")
'''


def test_protect_against_timing_attacks(corral: Corral) -> None:
    put(corral, "timingsafe", TIMING_ATTACKS, bindings=[
        {"type": "secret_text", "name": "MY_SECRET_VALUE", "text": "s3cret"}])
    assert get(corral, "timingsafe", headers={"Authorization": "s3cret"}).text == "Welcome!", corral.log()
    assert get(corral, "timingsafe", headers={"Authorization": "s3cre7"}).status == 401
    assert get(corral, "timingsafe").status == 401


WEB_CRYPTO = '''
import hashlib
import hmac
from workers import WorkerEntrypoint, Response
from js import TextEncoder, Uint8Array, crypto, Object
from pyodide.ffi import to_js as _to_js


def to_js(obj):
    return _to_js(obj, dict_converter=Object.fromEntries)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        encoder = TextEncoder.new()
        key = await crypto.subtle.importKey("raw", encoder.encode("k"), to_js({"name": "HMAC", "hash": "SHA-256"}),
                                            False, ["sign", "verify"])
        mac = await crypto.subtle.sign("HMAC", key, encoder.encode("data"))
        digest = await crypto.subtle.digest("SHA-256", encoder.encode("data"))
        try:
            crypto.subtle.timingSafeEqual(encoder.encode("a"), encoder.encode("ab"))
            unequal = "no error"
        except Exception as e:
            unequal = f"{e.name}: {e.message}"
        return Response.json({
            "mac": bytes(mac) == hmac.new(b"k", b"data", "sha256").digest(),
            "verified": await crypto.subtle.verify("HMAC", key, mac, encoder.encode("data")),
            "forged": await crypto.subtle.verify("HMAC", key, mac, encoder.encode("date")),
            "digest": bytes(digest).hex() == hashlib.sha256(b"data").hexdigest(),
            "uuid": len(crypto.randomUUID()),
            "random": len(crypto.getRandomValues(Uint8Array.new(16))),
            "unequal": unequal,
        })
'''


def test_web_crypto_basics(corral: Corral) -> None:
    """The Web Crypto calls the examples make (Workers' runtime API docs)."""
    put(corral, "webcrypto", WEB_CRYPTO)
    resp = get(corral, "webcrypto")
    assert resp.status == 200, (resp, corral.log())
    assert resp.json() == {"mac": True, "verified": True, "forged": False, "digest": True, "uuid": 36,
                           "random": 16, "unequal": "TypeError: Input buffers must have the same byte length"}


DATA_LOSS_PREVENTION = r"""
import re
from datetime import datetime
from js import Response, fetch, JSON, Headers

# Alert a data breach by posting to a webhook server
async def post_data_breach(request):
    some_hook_server = "https://webhook.flow-wolf.io/hook"
    headers = Headers.new({"content-type": "application/json"}.items())
    body = JSON.stringify({
      "ip": request.headers["cf-connecting-ip"],
      "time": datetime.now(),
      "request": request,
    })
    return await fetch(some_hook_server, method="POST", headers=headers, body=body)

async def on_fetch(request):
    debug = True

    # Define personal data with regular expressions.
    # Respond with block if credit card data, and strip
    # emails and phone numbers from the response.
    # Execution will be limited to MIME type "text/*".
    response = await fetch(request)

    # Return origin response, if response wasn’t text
    content_type = response.headers["content-type"] or ""
    if "text" not in content_type:
        return response

    text = await response.text()
    # When debugging replace the response from the origin with an email
    text = text.replace("You may use this", "me@example.com may use this") if debug else text

    sensitive_regex = [
      ("credit_card",
      r'\b(?:4[0-9]{12}(?:[0-9]{3})?|(?:5[1-5][0-9]{2}|222[1-9]|22[3-9][0-9]|2[3-6][0-9]{2}|27[01][0-9]|2720)[0-9]{12}|3[47][0-9]{13}|3(?:0[0-5]|[68][0-9])[0-9]{11}|6(?:011|5[0-9]{2})[0-9]{12}|(?:2131|1800|35\d{3})\d{11})\b'),
      ("email", r'\b[A-Z0-9._%+-]+@[A-Z0-9.-]+\.[A-Z]{2,}\b'),
      ("phone", r'\b07\d{9}\b'),
    ]
    for (kind, regex) in sensitive_regex:
        match = re.search(regex, text, flags=re.IGNORECASE)
        if match:
            # Alert a data breach
            await post_data_breach(request)
            # Respond with a block if credit card, otherwise replace sensitive text with `*`s
            card_resp = Response.new(kind + " found\nForbidden\n", status=403,statusText="Forbidden")
            sensitive_resp = Response.new(re.sub(regex, "*"*10, text, flags=re.IGNORECASE), response)
            return card_resp if kind == "credit_card" else  sensitive_resp

    return Response.new(text, response)
"""  # noqa: E501 - as the docs have it


def test_data_loss_prevention(corral: Corral, origin: str, upstream: Upstream) -> None:
    put(corral, "dlp", DATA_LOSS_PREVENTION)
    host = f"dlp.{origin}"
    resp = corral.request("/page.txt?You%20may%20use%20this", host=host)
    assert (resp.status, resp.text) == (200, "********** may use this"), (resp, corral.log())
    resp = corral.request("/page.txt?card%204111111111111111", host=host)
    assert (resp.status, resp.reason, resp.text) == (403, "Forbidden", "credit_card found\nForbidden\n")
    hooks = upstream.seen("/echo/webhook.flow-wolf.io/hook")
    assert len(hooks) == 2 and hooks[0]["method"] == "POST", (hooks, corral.log())
    assert corral.request("/data.json", host=host).json()["path"] == f"/echo/{host}/data.json"


CACHE_TAGS = '''
from pyodide.ffi import to_js as _to_js
from js import Response, URL, Object, fetch

def to_js(x):
    return _to_js(x, dict_converter=Object.fromEntries)

async def on_fetch(request):
    request_url = URL.new(request.url)
    params = request_url.searchParams
    tags = params["tags"].split(",") if "tags" in params else []
    url = params["uri"] or None

    if url is None:
        error = {"error": "URL cannot be empty"}
        return Response.json(to_js(error), status=400)

    options = {"cf": {"cacheTags": tags}}
    result = await fetch(url, to_js(options))

    cache_status = result.headers["cf-cache-status"]
    last_modified = result.headers["last-modified"]
    response = {"cache": cache_status, "lastModified": last_modified}

    return Response.json(to_js(response), status=result.status)
'''


def test_cache_tags(corral: Corral, origin: str) -> None:
    put(corral, "cachetags", CACHE_TAGS)
    host = f"cachetags.{origin}"
    resp = corral.request("/?uri=https://example.com/a&tags=a,b", host=host)
    assert (resp.status, resp.json()) == (200, {"cache": None, "lastModified": None}), (resp, corral.log())
    resp = corral.request("/", host=host)
    assert (resp.status, resp.json()) == (400, {"error": "URL cannot be empty"})


BULK_REDIRECTS_AS_IS = '''
from workers import Response, fetch
from urllib.parse import urlparse

async def on_fetch(request):
    external_hostname = "examples.cloudflareworkers.com"

    redirect_map = {
      "/bulk1": "https://" + external_hostname + "/redirect2",
      "/bulk2": "https://" + external_hostname + "/redirect3",
      "/bulk3": "https://" + external_hostname + "/redirect4",
      "/bulk4": "https://google.com",
      }

    url = urlparse(request.url)
    location = redirect_map.get(url.path, None)

    if location:
        return Response.redirect(location, 301)

    # If request not in map, return the original request
    return fetch(request)
'''

CF_OBJECT = '''
import json
from workers import Response
from js import JSON

def on_fetch(request):
    error = json.dumps({ "error": "The `cf` object is not available inside the preview." })
    data = request.cf if request.cf is not None else error
    headers = {"content-type":"application/json"}
    return Response(JSON.stringify(data, None, 2), headers=headers)
'''

EARLY_HINTS = """
import re
from workers import Response

CSS = "body { color: red; }"
HTML = \"\"\"
<!doctype html>
<html lang="en">
<head>
    <meta charset="utf-8">
    <title>Early Hints test</title>
    <link rel="stylesheet" href="/test.css">
</head>
<body>
    <h1>Early Hints test page</h1>
</body>
</html>
\"\"\"
def on_fetch(request):
    if re.search("test.css", request.url):
        headers = {"content-type": "text/css"}
        return Response(CSS, headers=headers)
    else:
        headers = {"content-type": "text/html","link": "</test.css>; rel=preload; as=style"}
        return Response(HTML, headers=headers)
"""


def test_bulk_redirects_cf_object_and_early_hints(corral: Corral, origin: str) -> None:
    put(corral, "bulkasis", BULK_REDIRECTS_AS_IS)
    resp = corral.request("/bulk4", host=f"bulkasis.{origin}")
    assert (resp.status, resp.headers["location"]) == (301, "https://google.com/")
    resp = corral.request("/other", host=f"bulkasis.{origin}")
    assert resp.json()["path"] == f"/echo/bulkasis.{origin}/other", (resp, corral.log())
    put(corral, "cfobject", CF_OBJECT)
    resp = get(corral, "cfobject")
    # A dispatch namespace's user worker runs in untrusted mode: "The
    # request.cf object is not available in Workers" (Workers for Platforms'
    # worker isolation page); the snippet says so. A platform script has it.
    assert resp.status == 200 and "is not available" in resp.json(), (resp, corral.log())
    put(corral, "cfobject", CF_OBJECT, namespace=None)
    corral.route("cfobject.example/*", "cfobject")
    resp = corral.request("/", host="cfobject.example")
    assert resp.status == 200 and resp.json()["httpProtocol"] == "HTTP/1.1", (resp, corral.log())
    put(corral, "earlyhints", EARLY_HINTS)
    assert get(corral, "earlyhints", "/test.css").text == "body { color: red; }"
    resp = get(corral, "earlyhints")
    assert resp.headers["link"] == "</test.css>; rel=preload; as=style" and "<h1>" in resp.text


FORM_TO_DURABLE_OBJECT = '''
import json
from workers import DurableObject, Response, WorkerEntrypoint


class Journal(DurableObject):
    async def save(self, data, name):
        await self.ctx.storage.put("last", data)
        return {"size": len(data), "kind": type(data).__name__, "name": name,
                "stored": len(await self.ctx.storage.get("last"))}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        self.ctx.passThroughOnException()
        stub = self.env.MY_DURABLE_OBJECT.getByName("foo")
        request_data = await request.form_data()
        audio_file = request_data.get("file")
        if not audio_file:
            return Response("Missing 'file'", status=400)
        audio_bytes = await audio_file.bytes()
        saved = await stub.save(audio_bytes, audio_file.name)
        return Response(json.dumps(saved), headers={"content-type": "application/json"})
'''


def test_an_uploaded_file_goes_to_a_durable_object_as_bytes(corral: Corral) -> None:
    """A form's file read with ``form_data()`` and sent over Durable Object RPC
    (the shape of Cloudflare's Python voice-journal demo)."""
    put(corral, "formdo", FORM_TO_DURABLE_OBJECT, bindings=[
        {"type": "durable_object_namespace", "name": "MY_DURABLE_OBJECT", "class_name": "Journal"}])
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + bytes(range(256)) + f"\r\n--{boundary}--\r\n".encode()
    resp = get(corral, "formdo", method="POST", body=body,
               headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert resp.status == 200, (resp, corral.log())
    # Bytes cross RPC as a Uint8Array, which the SDK's python_from_rpc makes a memoryview.
    assert resp.json() == {"size": 256, "kind": "memoryview", "name": "a.wav", "stored": 256}
    assert get(corral, "formdo", method="POST", body="x=1",
               headers={"content-type": "application/x-www-form-urlencoded"}).status == 400


R2_FILES = '''
from urllib.parse import urlparse
from js import Headers
from workers import WorkerEntrypoint, Response


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlparse(request.url).path[1:]
        if request.method == "GET" and path == "list":
            listed = await self.env.MY_BUCKET.list()
            keys = [obj.key for obj in listed.objects]
            return Response.json({"files": keys})
        if request.method == "GET" and path.startswith("file/"):
            key = path[len("file/"):]
            obj = await self.env.MY_BUCKET.get(key)
            if obj is None:
                return Response("Not found", status=404)
            headers = Headers.new()
            obj.writeHttpMetadata(headers)
            headers.set("etag", obj.httpEtag)
            headers.set("x-type", obj.httpMetadata.contentType or "application/octet-stream")
            return Response(await obj.arrayBuffer(), headers=headers)
        if request.method == "PUT" and path.startswith("file/"):
            key = path[len("file/"):]
            content_type = request.headers.get("Content-Type") or "application/octet-stream"
            await self.env.MY_BUCKET.put(key, await request.bytes(), httpMetadata={"contentType": content_type})
            return Response.json({"key": key, "status": "uploaded"})
        return Response("Not found", status=404)
'''


def test_r2_object_metadata_into_response_headers(corral: Corral) -> None:
    """R2's Workers API: ``writeHttpMetadata(headers)`` copies an object's
    HTTP metadata onto a Headers; ``httpMetadata.contentType`` reads it."""
    put(corral, "r2files", R2_FILES, bindings=[{"type": "r2_bucket", "name": "MY_BUCKET", "bucket_name": "r2files"}])
    resp = get(corral, "r2files", "/file/a.png", method="PUT", body=b"\x89PNG", headers={"content-type": "image/png"})
    assert resp.json() == {"key": "a.png", "status": "uploaded"}, (resp, corral.log())
    resp = get(corral, "r2files", "/file/a.png")
    assert resp.status == 200 and resp.body == b"\x89PNG", (resp, corral.log())
    assert resp.headers["content-type"] == "image/png" and resp.headers["x-type"] == "image/png"
    assert get(corral, "r2files", "/list").json() == {"files": ["a.png"]}


DO_RETURNS_A_FETCH = '''
import asyncio
import inspect
from pyodide.ffi import create_proxy
from workers import DurableObject, Response, WorkerEntrypoint, fetch


class Proxy(DurableObject):
    async def fetch(self, request):
        return fetch("UP/echo/from-object")


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/proxies"):
            pending = asyncio.sleep(0)
            kinds = [inspect.isawaitable(create_proxy(print)), inspect.isawaitable(create_proxy(pending))]
            await create_proxy(pending)
            return Response.json(kinds)
        return await self.env.P.getByName("a").fetch(request)
'''


def test_a_durable_objects_fetch_may_return_an_unawaited_fetch(corral: Corral, upstream: Upstream) -> None:
    """As a Worker's fetch handler may (the gallery's ``return fetch(request)``);
    and only a proxy of an awaitable is one."""
    put(corral, "doreturns", DO_RETURNS_A_FETCH, upstream, bindings=[
        {"type": "durable_object_namespace", "name": "P", "class_name": "Proxy"}])
    resp = get(corral, "doreturns")
    assert resp.status == 200 and resp.json()["path"] == "/echo/from-object", (resp, corral.log())
    assert get(corral, "doreturns", "/proxies").json() == [False, True], corral.log()


AIOHTTP = '''
import aiohttp
from workers import WorkerEntrypoint, Response


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        async with aiohttp.ClientSession() as session:
            async with session.get("UP/echo/aiohttp?x=1", headers={"x-probe": "1"}) as response:
                first = [response.status, response.headers["content-type"], (await response.json())["path"]]
            async with session.post("UP/echo/aiohttp-post", json={"a": 1}) as response:
                posted = await response.json()
            redirected = await session.get("UP/redirect/2")
            try:
                await session.get("UP/reason?code=404&text=Gone", raise_for_status=True)
                failed = "no error"
            except aiohttp.ClientResponseError as e:
                failed = [type(e).__name__, e.status]
        return Response.json({"first": first, "posted": [posted["method"], posted["body"],
                                                          posted["headers"]["content-type"]],
                              "redirected": [(await redirected.json())["path"], len(redirected.history)],
                              "failed": failed})
'''


def test_aiohttp_client_session(corral: Corral, upstream: Upstream) -> None:
    """The Python Workers packages page: ``aiohttp`` and ``httpx`` are the HTTP
    clients Python Workers support; their requests go through ``fetch``."""
    deploy(corral, "aiohttpclient", AIOHTTP.replace("UP/", upstream.url("/")), ("aiohttp",))
    resp = get(corral, "aiohttpclient")
    assert resp.status == 200, (resp, corral.log())
    assert resp.json() == {"first": [200, "application/json", "/echo/aiohttp?x=1"],
                           "posted": ["POST", '{"a": 1}', "application/json"],
                           "redirected": ["/echo/final", 2], "failed": ["ClientResponseError", 404]}
    assert upstream.seen("/echo/aiohttp?x=1")[0]["headers"]["x-probe"] == "1"
