"""Cloudflare Python Workers compatibility points that had no test of their own.

One real ``corral serve`` for the module (tests/harness.py), a local upstream
(tests/upstream.py), the dispatcher and the outbound worker of
tests/test_outbound.py: ``*.out.localhost`` dispatches with the platform
script ``egress`` as outbound worker and per-request limits from
``x-limits``. Tenants that need packages (Django, requests, httpx) carry them
as ``text/x-python-requirement`` parts, as wrangler uploads them.

* ``from workers import WorkflowEntrypoint`` (the SDK's shape: a class built
  with ``(ctx, env)``);
* a Django app served by ``workers.wsgi``;
* ``requests``, ``httpx.Client``, ``urllib3`` and ``urllib.request`` go
  through the outbound worker and count against the subrequest limit;
* ``js.fetch`` reaches a real upstream.
"""

from __future__ import annotations

import json
import textwrap

import msgspec
import pytest

from supervisor.admin import multipart
from tests.harness import Corral, Response
from tests.test_outbound import DISPATCHER, EGRESS

NS = "default"


def deploy(c: Corral, name: str, source: str, requirements: tuple[str, ...] = (),
           bindings: tuple[dict, ...] = ()) -> Response:
    """Upload one tenant, with one requirement part per requirement (wrangler's shape)."""
    metadata = {"main_module": "worker.py", "bindings": list(bindings)}
    parts = [multipart.Part(name="metadata", content_type="application/json",
                            data=json.dumps(metadata).encode()),
             multipart.Part(name="worker.py", filename="worker.py", content_type="text/x-python",
                            data=textwrap.dedent(source).encode())]
    parts += [multipart.Part(name=r, filename=r, content_type="text/x-python-requirement", data=b"")
              for r in requirements]
    ctype, body = multipart.encode(parts)
    resp = c.admin("PUT", f"/accounts/local/workers/dispatch/namespaces/{NS}/scripts/{name}", body, ctype)
    assert resp.status == 200, f"deploy {name} failed: {resp.status} {resp.text}\n{c.log()}"
    return resp


@pytest.fixture(scope="module")
def corral(tmp_path_factory, upstream):
    server = Corral(tmp_path_factory.mktemp("cf-gaps")).start()
    try:
        server.deploy("egress", EGRESS, namespace=None, bindings=[
            {"type": "plain_text", "name": "UPSTREAM", "text": upstream.url("")},
            {"type": "secret_text", "name": "API_TOKEN", "text": "unused"},
        ])
        server.deploy_dispatcher(DISPATCHER, namespace=NS)
        server.deploy_dispatcher(
            DISPATCHER, namespace=NS, name="dispatch_out", pattern="*.out.localhost/*",
            outbound={"worker": {"service": "egress"}, "params": [{"name": "customer_name"}]})
        yield server
    finally:
        server.stop()


# -- 1. WorkflowEntrypoint ------------------------------------------------------------------

WORKFLOW = '''
from workers import Response, WorkerEntrypoint, WorkflowEntrypoint, import_from_javascript


class Echo(WorkflowEntrypoint):
    async def run(self, event, step):
        return {"echo": event["payload"], "env_same": self.env is ENV[0]}


ENV = []


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        ENV.append(self.env)
        flow = Echo(self.ctx, self.env)
        js_side = import_from_javascript("cloudflare:workers").WorkflowEntrypoint
        return Response.json({
            "is_class": isinstance(WorkflowEntrypoint, type),
            "subclass": issubclass(Echo, WorkflowEntrypoint),
            "ctx_same": flow.ctx is self.ctx,
            "same_from_js": js_side is WorkflowEntrypoint,
            "run": await flow.run({"payload": {"n": 1}}, None),
        })
'''


def test_workflow_entrypoint_imports_from_workers(corral):
    deploy(corral, "workflow", WORKFLOW)
    resp = corral.request("/", host="workflow.localhost")
    assert resp.status == 200, (resp, corral.log())
    assert resp.json() == {"is_class": True, "subclass": True, "ctx_same": True, "same_from_js": True,
                           "run": {"echo": {"n": 1}, "env_same": True}}


# -- 2. Django through workers.wsgi ---------------------------------------------------------

DJANGO = '''
import django
from django.conf import settings

settings.configure(DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="x" * 50,
                   MIDDLEWARE=[], INSTALLED_APPS=[], USE_TZ=True)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.template import Context, Engine  # noqa: E402
from django.urls import path  # noqa: E402
from workers import WorkerEntrypoint, wsgi  # noqa: E402


def hello(request):
    page = Engine().from_string("<b>{{ name }}</b>").render(Context({"name": request.GET.get("name")}))
    return JsonResponse({"method": request.method, "path": request.path, "name": request.GET.get("name"),
                         "body": request.body.decode(), "page": page,
                         "who": request.environ["workers.env"].WHO})


def teapot(request):
    response = HttpResponse("short and stout", status=418, content_type="text/plain")
    response["x-django"] = django.get_version()
    return response


urlpatterns = [path("hello/", hello), path("teapot", teapot)]
application = get_wsgi_application()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await wsgi.fetch(application, request, self.env)
'''


def test_django_app_through_workers_wsgi(corral):
    deploy(corral, "django", DJANGO, ("django>=4",),
           ({"type": "plain_text", "name": "WHO", "text": "django-tenant"},))
    resp = corral.request("/hello/?name=%3Cada%3E", host="django.localhost", method="POST",
                          body="posted", headers={"content-type": "text/plain"})
    assert resp.status == 200, (resp, corral.log())
    out = resp.json()
    assert out["method"] == "POST" and out["path"] == "/hello/" and out["name"] == "<ada>", out
    assert out["body"] == "posted" and out["page"] == "<b>&lt;ada&gt;</b>", out
    teapot = corral.request("/teapot", host="django.localhost")
    assert (teapot.status, teapot.text) == (418, "short and stout"), teapot
    assert teapot.headers["x-django"].split(".")[0] >= "4"
    assert corral.request("/nope", host="django.localhost").status == 404
    assert out["who"] == "django-tenant", out


DJANGO_ASGI = '''
import asyncio

import django
from django.conf import settings

settings.configure(DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="x" * 50,
                   INSTALLED_APPS=["django.contrib.sessions"], USE_TZ=True,
                   SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
                   MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware",
                               "django.middleware.common.CommonMiddleware"])
django.setup()

from asgiref.sync import sync_to_async  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

import asgi  # noqa: E402
from workers import WorkerEntrypoint  # noqa: E402


def sync_view(request):
    # A sync view under the async handler: asgiref runs it "in a thread".
    request.session["visits"] = request.session.get("visits", 0) + 1
    return JsonResponse({"kind": "sync", "visits": request.session["visits"]})


def blocking(n):
    return n * 2


async def async_view(request):
    loop = asyncio.get_running_loop()
    return JsonResponse({"kind": "async",
                         "to_thread": await asyncio.to_thread(blocking, 1),
                         "executor": await loop.run_in_executor(None, blocking, 2),
                         "sync_to_async": await sync_to_async(blocking)(3)})


urlpatterns = [path("sync", sync_view), path("async", async_view)]
application = ASGIHandler()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await asgi.fetch(application, request, self.env)
'''


def test_async_django_through_workers_asgi(corral):
    """Django's ASGI handler runs sync views, middleware and sessions through
    asgiref's sync_to_async; with no threads in the jail (nor in Pyodide) the
    loop runs executor work inline, as Cloudflare's does."""
    deploy(corral, "django-asgi", DJANGO_ASGI, ("django>=4",), ())
    first = corral.request("/sync", host="django-asgi.localhost")
    assert (first.status, first.json()) == (200, {"kind": "sync", "visits": 1}), (first, corral.log())
    cookie = first.headers["set-cookie"].split(";")[0]
    again = corral.request("/sync", host="django-asgi.localhost", headers={"cookie": cookie})
    assert again.json() == {"kind": "sync", "visits": 2}
    done = corral.request("/async", host="django-asgi.localhost")
    assert done.json() == {"kind": "async", "to_thread": 2, "executor": 4, "sync_to_async": 6}, done


# -- 3. synchronous HTTP clients through the outbound worker, under the subrequest limit --------

CLIENTS = '''
import urllib.request

import httpx
import requests
import urllib3
from workers import Response, WorkerEntrypoint


def call(client, url):
    if client == "requests":
        r = requests.get(url)
        return r.status_code, r.headers.get("x-egress"), r.json()["path"]
    if client == "httpx":
        with httpx.Client() as session:
            r = session.get(url)
        return r.status_code, r.headers.get("x-egress"), r.json()["path"]
    if client == "urllib3":
        r = urllib3.PoolManager().request("GET", url)
        return r.status, r.headers.get("x-egress"), r.json()["path"]
    with urllib.request.urlopen(url) as r:
        import json
        return r.status, r.headers.get("x-egress"), json.loads(r.read())["path"]


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        client = request.url.split("?")[0].rsplit("/", 1)[-1]
        target = request.headers.get("x-target")
        results = []
        for i in range(int(request.headers.get("x-count"))):
            try:
                results.append(list(call(client, f"{target}/echo/gap-{client}-{i}")))
            except Exception as e:
                results.append({"error": type(e).__name__, "message": str(e)})
        return Response.json(results)
'''


@pytest.fixture(scope="module")
def clients(corral):
    deploy(corral, "clients", CLIENTS, ("requests", "httpx", "urllib3"))
    return corral


@pytest.mark.parametrize("client", ["requests", "httpx", "urllib3", "urllib.request"])
def test_sync_http_clients_use_the_outbound_worker_and_the_subrequest_limit(clients, upstream, client):
    resp = clients.request(f"/{client}", host="clients.out.localhost", headers={
        "x-customer": "acme", "x-limits": json.dumps({"subRequests": 2}), "x-count": "3",
        "x-target": upstream.url("").rstrip("/")})
    assert resp.status == 200, (resp, clients.log())
    first, second, third = resp.json()
    assert first == [200, "forwarded", f"/echo/gap-{client}-0"], first
    assert second == [200, "forwarded", f"/echo/gap-{client}-1"], second
    assert isinstance(third, dict) and "subrequest" in third["message"].lower(), third
    assert len(upstream.seen(f"/echo/gap-{client}-")) == 2


# -- 4. js.fetch -------------------------------------------------------------------------------

JS_FETCH = '''
from js import JSON, Response, fetch
from pyodide.ffi import to_js


async def on_fetch(request, env):
    target = request.headers.get("x-target")
    init = to_js({"method": "POST", "body": "from js.fetch", "headers": {"x-js": "1"}})
    upstream = await fetch(target + "/echo/js-fetch?q=1", init)
    echo = JSON.parse(await upstream.text())
    return Response.new(JSON.stringify({"status": upstream.status, "method": echo.method,
                                        "path": echo.path, "body": echo.body,
                                        "x_js": echo.headers["x-js"]}),
                        headers=to_js({"content-type": "application/json"}))
'''


def test_js_fetch_reaches_a_real_upstream(corral, upstream):
    deploy(corral, "jsfetch", JS_FETCH)
    resp = corral.request("/", host="jsfetch.localhost", headers={"x-target": upstream.url("").rstrip("/")})
    assert resp.status == 200, (resp, corral.log())
    assert resp.json() == {"status": 200, "method": "POST", "path": "/echo/js-fetch?q=1",
                           "body": "from js.fetch", "x_js": "1"}
    assert upstream.seen("/echo/js-fetch"), "the upstream never saw js.fetch's request"


OPEN_URL = '''
import json

import msgspec

from pyodide.http import open_url
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    def fetch(self, request):
        # Synchronous, in a synchronous handler: the invocation waits, not the child.
        return Response.json(json.load(open_url(request.headers.get("x-target") + "/echo/open-url")))
'''


def test_pyodide_open_url_reads_a_real_upstream(corral, upstream):
    deploy(corral, "openurl", OPEN_URL)
    resp = corral.request("/", host="openurl.localhost", headers={"x-target": upstream.url("").rstrip("/")})
    assert resp.status == 200, (resp, corral.log())
    assert resp.json()["path"] == "/echo/open-url"


URLLIB = '''
import json

import msgspec
import urllib.request

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        target = request.headers.get("x-target")
        with urllib.request.urlopen(target + "/redirect/2") as r:
            followed = {"url": r.url, "path": json.loads(r.read())["path"]}
        put = urllib.request.Request(target + "/echo/urllib-put", data=b"abc", method="PUT",
                                     headers={"x-urllib": "1"})
        with urllib.request.urlopen(put) as r:
            echo = json.loads(r.read())
        return Response.json({"followed": followed, "method": echo["method"], "body": echo["body"],
                              "x_urllib": echo["headers"].get("x-urllib")})
'''


def test_urllib_request_follows_redirects_and_sends_bodies(clients, upstream):
    deploy(clients, "urllib", URLLIB)
    resp = clients.request("/", host="urllib.localhost", headers={"x-target": upstream.url("").rstrip("/")})
    assert resp.status == 200, (resp, clients.log())
    assert resp.json() == {"followed": {"url": upstream.url("/echo/final"), "path": "/echo/final"},
                           "method": "PUT", "body": "abc", "x_urllib": "1"}


TIMEOUTS = '''
import asyncio
import urllib.request

import aiohttp
import httpx
import requests
import urllib3
from workers import Response, WorkerEntrypoint


def call(client, url):
    if client == "requests":
        return requests.get(url, timeout=0.3).status_code
    if client == "httpx":
        with httpx.Client(timeout=0.3) as session:
            return session.get(url).status_code
    if client == "urllib3":
        return urllib3.PoolManager().request("GET", url, timeout=0.3, retries=False).status
    with urllib.request.urlopen(url, timeout=0.3) as r:
        return r.status


async def call_aiohttp(url):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
        async with session.get(url) as r:
            return r.status


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        client = request.url.split("?")[0].rsplit("/", 1)[-1]
        url = request.headers.get("x-target") + f"/slow?delay=5&client={client}"
        try:
            status = await call_aiohttp(url) if client == "aiohttp" else call(client, url)
        except Exception as e:
            return Response.json({"error": f"{type(e).__module__}.{type(e).__name__}"})
        return Response.json({"status": status})
'''


@pytest.mark.parametrize("client, error", [
    ("requests", "requests.exceptions.ReadTimeout"), ("httpx", "httpx.ReadTimeout"),
    ("urllib3", "urllib3.exceptions.ReadTimeoutError"), ("urllib.request", "builtins.TimeoutError"),
    ("aiohttp", "aiohttp.client_exceptions.ServerTimeoutError")])
def test_a_sync_clients_own_timeout_ends_its_request(clients, upstream, client, error):
    # On Cloudflare urllib3's Pyodide backend aborts the fetch at the request's
    # timeout; here the subrequest is aborted and the library's timeout error
    # raised (before, the timeout was ignored: the answer came after 5 s).
    deploy(clients, "timeouts", TIMEOUTS, ("requests", "httpx", "urllib3", "aiohttp"))
    resp = clients.request(f"/{client}", host="timeouts.localhost",
                           headers={"x-target": upstream.url("").rstrip("/")})
    assert resp.status == 200, (resp, clients.log())
    assert resp.json() == {"error": error}


SDK_BODIES = '''
import decimal
import json

import msgspec

from pyodide.http import BodyUsedError, HttpStatusError, pyfetch
from workers import Blob, File, FormData, Request, Response, WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        target = request.headers.get("x-target")
        out = {}
        f = File([b"ab"], "a.txt", "text/plain", "transparent", 1234)  # the SDK's argument order
        out["file"] = [f.name, f.content_type, f.last_modified, File(f, "b.txt").last_modified,
                       type(File([b""], "c").last_modified).__name__]
        form = FormData({"k": "v"})
        out["blob"] = [Blob(blob_parts=["x", b"y"]).size, form.js_object is form]
        price = (await request.json(parse_float=decimal.Decimal))["price"]
        out["json_kwargs"] = f"{type(price).__name__}:{price}"
        try:
            await request.text()
        except OSError as e:  # Pyodide's (and the SDK's) class; JavaScript's is a TypeError
            out["reread"] = [type(e).__name__, isinstance(e, TypeError), isinstance(e, BodyUsedError)]
        out["request_fields"] = [request.cache, request.integrity, request.keepalive]
        try:
            Request("https://x.example/", cache="default")
        except TypeError as e:
            out["bad_cache"] = str(e)
        out["no_store"] = Request("https://x.example/", cache="no-store").clone().cache
        r = await fetch(target + "/echo/sdk", method="POST", body="abc", cache="no-store")
        buf = await r.clone().buffer()
        out["buffer"] = [buf.byteLength == len(buf.to_bytes()), json.loads(buf.to_bytes())["body"]]
        out["string"] = json.loads(await r.clone().string())["path"]
        out["memoryview"] = bytes(await r.clone().memoryview())[:1].decode()
        out["type"], out["js_object"] = r.type, r.js_object is r
        r.raise_for_status()
        try:
            Response("gone", status=404).raise_for_status()
        except HttpStatusError as e:
            out["status_error"] = [e.status, e.status_text, str(e), isinstance(e, OSError)]
        p = await pyfetch(target + "/echo/pyfetch")
        p.raise_for_status()
        out["pyfetch"] = [(await p.clone().json())["path"], (await p.buffer()).to_bytes()[:1].decode(),
                          p.type, p.body_used]
        try:
            await p.text()
        except BodyUsedError:
            out["pyfetch_reread"] = True
        return Response.json(out)
'''


def test_sdk_body_and_response_helpers(corral, upstream):
    """What the SDK's Request/Response (over Pyodide's FetchResponse) offer
    beyond the fetch API: ``json(**kwargs)``, ``buffer()``, ``string()``,
    ``memoryview()``, ``raise_for_status()`` with ``HttpStatusError``, a body
    read twice as an ``OSError`` that is also JavaScript's ``TypeError``,
    ``cache``/``integrity``/``keepalive`` and ``cache: "no-store"``; ``File``
    and ``Blob`` take the SDK's argument order and names."""
    deploy(corral, "sdkbodies", SDK_BODIES)
    resp = corral.request("/", host="sdkbodies.localhost", method="POST", body=b'{"price": 1.10}',
                          headers={"x-target": upstream.url("").rstrip("/"),
                                   "content-type": "application/json"})
    assert resp.status == 200, (resp, corral.log())
    assert resp.json() == {
        "file": ["a.txt", "text/plain", 1234, 1234, "int"],
        "blob": [2, True],
        "json_kwargs": "Decimal:1.10",
        "reread": ["BodyUsedError", True, True],
        "request_fields": [None, "", False],
        "bad_cache": "Unsupported cache mode: default",
        "no_store": "no-store",
        "buffer": [True, "abc"],
        "string": "/echo/sdk",
        "memoryview": "{",
        "type": "default",
        "js_object": True,
        "status_error": [404, "Not Found", "404 Client Error: Not Found for url: ", True],
        "pyfetch": ["/echo/pyfetch", "{", "default", True],
        "pyfetch_reread": True,
    }


SDK_SUBMODULES = '''
from workers import Response, WorkerEntrypoint, WorkflowEntrypoint
from workers.blob import Blob
from workers.entrypoints import WorkerEntrypoint as Entrypoint
from workers.fetch import fetch
from workers.types import Body, FetchKwargs, Headers, JSBody
from workers.entrypoints import DurableObjectAbort, DurableObjectContext, handler
from workers.rpc import JsDict
from workers.utils import RESPONSE_ACCEPTED_TYPES
from workers.workflows import NonRetryableError


class Checkout(WorkflowEntrypoint):  # a workflow beside the fetch handler, as projects have them
    async def run(self, event, step):
        raise NonRetryableError("card declined")


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response.json({"same": Entrypoint is WorkerEntrypoint, "fetch": fetch.__name__,
                              "blob": Blob(["ab"]).size, "kwargs": FetchKwargs.__name__,
                              "error": issubclass(NonRetryableError, Exception),
                              "abort": issubclass(DurableObjectAbort, BaseException),
                              "accepted": "URLSearchParams" in RESPONSE_ACCEPTED_TYPES,
                              "named": all((Body, Headers, JSBody, DurableObjectContext, handler, JsDict))})
'''


def test_the_sdks_submodules_import(corral):
    """``from workers.workflows import NonRetryableError`` and the SDK's other
    submodules (``types``, ``blob``, ``fetch``, ``entrypoints``, ...) import,
    with every name each defines (``workers.types.Headers``, ``Body`` and
    ``JSBody``, ``workers.entrypoints.handler`` were missing)."""
    deploy(corral, "submodules", SDK_SUBMODULES)
    resp = corral.request("/", host="submodules.localhost")
    assert resp.status == 200, (resp, corral.log())
    assert resp.json() == {"same": True, "fetch": "fetch", "blob": 2, "kwargs": "FetchKwargs",
                           "error": True, "abort": True, "accepted": True, "named": True}


VERSIONED = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        meta = self.env.CF_VERSION_METADATA
        return Response.json({"id": meta.id, "tag": meta.tag, "timestamp": meta.timestamp,
                              "limits": self.env.CONFIG.limits.daily, "raw": self.env.CONFIG["name"]})
'''


def test_version_metadata_names_the_running_version(corral, tmp_path):
    """``version_metadata`` (and Wrangler's ``version_metadata.binding``): the
    running version's id and upload time, which change with each upload and
    follow a rollback; JSON variables read by attribute as JavaScript objects do."""
    from supervisor.admin.project import load_project

    bindings = ({"type": "version_metadata", "name": "CF_VERSION_METADATA"},
                {"type": "json", "name": "CONFIG", "json": {"name": "n", "limits": {"daily": 5}}})
    first = deploy(corral, "versioned", VERSIONED, bindings=bindings).json()["result"]
    one = corral.request("/", host="versioned.localhost").json()
    second = deploy(corral, "versioned", VERSIONED + "\n# v2\n", bindings=bindings).json()["result"]
    two = corral.request("/", host="versioned.localhost").json()
    assert one["id"] == first["version_id"] and two["id"] == second["version_id"] != one["id"]
    assert one["tag"] == "" and one["timestamp"] < two["timestamp"], (one, two)
    assert one["timestamp"].endswith("Z") and one["timestamp"][:4].isdigit()
    assert (one["limits"], one["raw"]) == (5, "n")
    # A rollback runs the first version again, and says so.
    resp = corral.admin("POST", f"/accounts/local/workers/dispatch/namespaces/{NS}/scripts/versioned/deployments",
                        {"strategy": "percentage",
                         "versions": [{"version_id": first["version_id"], "percentage": 100}]})
    assert resp.status == 200, resp.text
    again = corral.request("/", host="versioned.localhost").json()
    assert (again["id"], again["timestamp"]) == (one["id"], one["timestamp"])

    (tmp_path / "wrangler.toml").write_text('main = "w.py"\n[version_metadata]\nbinding = "CF_VERSION_METADATA"\n')
    (tmp_path / "w.py").write_text("")
    assert msgspec.to_builtins(load_project(tmp_path).metadata)["bindings"] == [
        {"type": "version_metadata", "name": "CF_VERSION_METADATA"}]
