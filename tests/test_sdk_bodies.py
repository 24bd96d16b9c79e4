"""Bodies, FormData and Response constructors as Cloudflare's Python SDK has them.

Found by comparing Corral's ``workers`` with the SDK (workers-py's
``request.py``, ``response.py``, ``formdata.py``, ``asgi.py``), each failing
before its fix:

* ``request.body`` is JavaScript's stream: the same one each time, and looking
  at it uses nothing (a dispatcher that checks it could no longer forward the
  request); reading from it does;
* its chunks are ``Uint8Array``s with ``to_bytes()`` (the SDK's ASGI loop);
* ``clone()`` of a streamed response streams both copies (it read the whole
  source before either copy saw a chunk);
* ``Response.json(data, status, status_text, headers)`` positionally, and
  ``Response(other.js_object)``;
* ``FormData`` is a ``MutableMapping`` of names.

One real ``corral serve`` with the bundled dispatcher (tests/conftest.py).
"""

from __future__ import annotations

import gzip
import json
import time

from tests.test_cf_gaps import deploy
from tests.upstream import GZIP_TEXT

BODIES = '''
import asyncio
from collections.abc import MutableMapping

from workers import FormData, Response, WorkerEntrypoint


def attempt(fn):
    try:
        return fn()
    except Exception as exc:
        return type(exc).__name__


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        first = request.body
        looked = {"same": request.body is first, "used_after_look": request.body_used}
        chunks = [chunk.to_bytes().decode() async for chunk in first]
        looked["used_after_read"] = request.body_used
        looked["chunks"] = "".join(chunks)

        made = Response("hello")
        made.body
        looked["made_text"] = await made.text()

        form = FormData({"a": "1"})
        form.append("a", "2")
        form["b"] = "3"
        popped = form.pop("b")
        form.update({"c": "4"})
        looked["form"] = {
            "mapping": isinstance(form, MutableMapping), "names": list(form), "popped": popped,
            "first_a": form["a"], "all_a": form.get_all("a"), "c": form["c"],
            "list_value": attempt(lambda: form.__setitem__("d", ["x", "y"])),
        }
        del form["a"]
        looked["form"]["after_del"] = list(form)
        # The SDK's form[name] is JavaScript's get(): None for a missing name,
        # and del of a missing name is delete(), no error.
        looked["form"]["missing"] = [form["missing"], attempt(lambda: form.__delitem__("missing"))]

        positional = Response.json({"k": 1}, 201, "Made", {"x-a": "b"})
        old_order = Response.json({"k": 1}, 202, {"x-a": "c"})
        looked["json"] = [positional.status, positional.status_text, positional.headers.get("x-a"),
                          old_order.status, old_order.headers.get("x-a"), await positional.json()]

        wrapped = Response(positional.js_object)
        looked["wrapped"] = [wrapped.status, wrapped.status_text,
                             attempt(lambda: Response(positional.js_object, status=200))]

        gate = asyncio.Event()

        async def drip():
            yield b"a"
            try:
                await asyncio.wait_for(gate.wait(), 3)
                yield b"b"
            except asyncio.TimeoutError:
                yield b"<the clone waited for the whole source>"

        streamed = Response(drip())
        copy = streamed.clone()
        reader = streamed.body.__aiter__()
        head = (await reader.__anext__()).to_bytes()
        gate.set()
        rest = b"".join([chunk.to_bytes() async for chunk in reader])
        looked["tee"] = [(head + rest).decode(), (await copy.bytes()).decode()]
        return Response.json(looked)
'''


def test_bodies_formdata_and_responses_as_the_sdk_has_them(corral):
    deploy(corral, "bodies", BODIES)
    resp = corral.request("/", host="bodies.localhost", method="POST", body=b"payload")
    assert resp.status == 200, (resp, corral.log())
    out = resp.json()
    assert out["same"] and out["used_after_look"] is False, out
    assert out["used_after_read"] is True and out["chunks"] == "payload", out
    assert out["made_text"] == "hello", out
    assert out["form"] == {"mapping": True, "names": ["a", "a", "c"], "popped": "3", "first_a": "1",
                           "all_a": ["1", "2"], "c": "4", "list_value": "TypeError",
                           "after_del": ["c"], "missing": [None, None]}, out
    assert out["json"] == [201, "Made", "b", 202, "c", {"k": 1}], out
    assert out["wrapped"] == [201, "Made", "ValueError"], out
    assert out["tee"] == ["ab", "ab"], out


FORWARDER = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        # A dispatcher's check before it forwards: it must leave the body whole.
        if request.body is None:
            return Response("no body", status=400)
        return await self.env.dispatcher.get("bodies-echo").fetch(request)
'''

ECHO = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("echo: " + await request.text())
'''


def test_a_request_whose_body_was_looked_at_is_forwarded_whole(corral):
    deploy(corral, "bodies-echo", ECHO)
    corral.deploy("bodies-forwarder", FORWARDER, namespace=None,
                  bindings=[{"type": "dispatch_namespace", "name": "dispatcher", "namespace": "default"}])
    corral.route("forward.example/*", "bodies-forwarder")
    resp = corral.request("/", host="forward.example", method="POST", body=b"whole")
    assert resp.status == 200 and resp.text == "echo: whole", (resp, resp.text, corral.log())


FRAMING = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response.json({"te": request.headers.get("transfer-encoding"),
                              "cl": request.headers.get("content-length"), "body": await request.text()})
'''


def test_a_chunked_request_forwarded_whole_is_framed_once(corral):
    """A chunked POST whose body came with its head reached the dispatched
    worker with both Transfer-Encoding and Content-Length (RFC 9112 6.1)."""
    deploy(corral, "bodies-framing", FRAMING)
    answer = corral.raw(b"POST / HTTP/1.1\r\nHost: bodies-framing.localhost\r\nTransfer-Encoding: chunked\r\n"
                        b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    assert json.loads(body) == {"te": None, "cl": "11", "body": "hello world"}, body


CODINGS = '''
import gzip

import httpx
import requests
import urllib3
from workers import Response, WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        up = self.env.UPSTREAM + "/gzip"
        path = request.url.split("?")[0].rsplit("/", 1)[1]
        if path == "read":
            r = await fetch(up)
            text = await r.text()
            s = await fetch(up)
            streamed = b"".join([chunk.to_bytes() async for chunk in s.body])
            return Response.json({"text": len(text), "header": r.headers.get("content-encoding"),
                                  "streamed": len(streamed), "same": streamed.decode() == text,
                                  "requests": requests.get(up).json()["compressed"][:3],
                                  "httpx": httpx.Client().get(up).json()["compressed"][:3],
                                  "urllib3": urllib3.request("GET", up).json()["compressed"][:3]})
        if path == "pass":
            return await fetch(up)  # unread: as the upstream sent it
        if path == "plain":
            r = await fetch(up)
            return Response(r.body, headers={"content-type": "application/json"})
        if path == "made":
            return Response("made here " * 50, headers={"content-encoding": "gzip"})
        if path == "manual":
            return Response(gzip.compress(b"compressed by the worker"), encodeBody="manual",
                            headers={"content-encoding": "gzip"})
'''


def test_content_codings_as_workerd_applies_them(corral, upstream):
    """A fetched gzip body is decoded when the worker reads it, by every HTTP
    client too (requests, httpx and urllib3 got it still compressed), and
    handed on encoded when returned unread; a response the worker makes with
    a Content-Encoding is encoded (it was sent plain, labelled gzip), unless
    it says encodeBody "manual"."""
    deploy(corral, "bodies-codings", CODINGS, requirements=("requests", "httpx", "urllib3"),
           bindings=({"type": "plain_text", "name": "UPSTREAM", "text": upstream.url("")},))
    read = corral.request("/read", host="bodies-codings.localhost")
    assert read.status == 200, (read, corral.log())
    assert read.json() == {"text": len(GZIP_TEXT), "header": "gzip", "streamed": len(GZIP_TEXT), "same": True,
                           "requests": "zzz", "httpx": "zzz", "urllib3": "zzz"}
    passed = corral.request("/pass", host="bodies-codings.localhost")
    assert passed.headers.get("content-encoding") == "gzip" and gzip.decompress(passed.body) == GZIP_TEXT
    plain = corral.request("/plain", host="bodies-codings.localhost")
    assert "content-encoding" not in plain.headers and plain.body == GZIP_TEXT
    made = corral.request("/made", host="bodies-codings.localhost")
    assert made.headers.get("content-encoding") == "gzip"
    assert gzip.decompress(made.body) == b"made here " * 50
    manual = corral.request("/manual", host="bodies-codings.localhost")
    assert gzip.decompress(manual.body) == b"compressed by the worker"


CODED_HEADERS = '''
import urllib.request

import aiohttp
import httpx
import requests
import urllib3
from workers import Response, WorkerEntrypoint


def seen(headers, body):
    return [headers.get("content-encoding"), headers.get("content-length"), len(body)]


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        up = self.env.UPSTREAM + "/gzip"
        streamed = requests.get(up, stream=True)
        unloaded = urllib3.request("GET", up, preload_content=False)
        async with httpx.AsyncClient() as client:
            async_httpx = await client.get(up)
        async with aiohttp.ClientSession() as session, session.get(up) as r:
            aio = seen(r.headers, await r.read())
        with urllib.request.urlopen(up) as r:
            plain = seen(r.headers, r.read())
        return Response.json({
            "requests": seen(requests.get(up).headers, requests.get(up).content),
            "requests_stream": seen(streamed.headers, b"".join(streamed.iter_content(100))),
            "httpx": seen(httpx.get(up).headers, httpx.get(up).content),
            "httpx_async": seen(async_httpx.headers, async_httpx.content),
            "urllib3": seen(urllib3.request("GET", up).headers, urllib3.request("GET", up).data),
            "urllib3_stream": seen(unloaded.headers, b"".join(unloaded.stream(100))),
            "aiohttp": aio,
            "urllib": plain,
        })
'''


def test_a_decoded_body_keeps_the_headers_each_library_shows(corral, upstream):
    """A gzip response read through requests, httpx, urllib3 and aiohttp has
    its body decoded and the upstream's headers as it sent them, as those
    libraries show them (Content-Encoding gzip, the compressed length; they
    lost the Content-Encoding and kept the length); urllib.request, which
    decodes nothing itself, has neither (it kept the compressed length)."""
    deploy(corral, "bodies-coded-headers", CODED_HEADERS,
           requirements=("requests", "httpx", "urllib3", "aiohttp"),
           bindings=({"type": "plain_text", "name": "UPSTREAM", "text": upstream.url("")},))
    resp = corral.request("/", host="bodies-coded-headers.localhost")
    assert resp.status == 200, (resp, corral.log())
    as_sent = ["gzip", str(len(gzip.compress(GZIP_TEXT))), len(GZIP_TEXT)]
    assert resp.json() == {"requests": as_sent, "requests_stream": as_sent, "httpx": as_sent,
                           "httpx_async": as_sent, "urllib3": as_sent, "urllib3_stream": as_sent,
                           "aiohttp": as_sent, "urllib": [None, None, len(GZIP_TEXT)]}


CLIENTS = '''
import urllib.request

import aiohttp
import requests
import urllib3
from requests.adapters import HTTPAdapter
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        up = self.env.UPSTREAM
        out = {}
        session = requests.Session()
        session.get(up + "/cookies")
        out["requests_jar"] = sorted(session.cookies.keys())
        session.get(up + "/echo/requests-cookies")
        out["urllib3_retry"] = urllib3.PoolManager().request(
            "GET", up + "/flaky?key=u3&fail=2", retries=urllib3.Retry(total=3, status_forcelist=[503])).status
        retrying = requests.Session()
        retrying.mount("http://", HTTPAdapter(max_retries=urllib3.Retry(total=2, status_forcelist=[503])))
        try:
            retrying.get(up + "/flaky?key=rq&fail=9")
            out["requests_retry"] = "no error"
        except requests.exceptions.RetryError:
            out["requests_retry"] = "RetryError"
        out["urllib_reason"] = urllib.request.urlopen(up + "/echo/reason").reason
        # unsafe=True: aiohttp's jar keeps cookies of an IP address's only so.
        async with aiohttp.ClientSession(auth=aiohttp.BasicAuth("user", "pass"),
                                         cookie_jar=aiohttp.CookieJar(unsafe=True)) as aio:
            async with aio.get(up + "/cookies") as first:
                out["aiohttp_cookies"] = sorted(first.cookies.keys())
            await aio.get(up + "/echo/aiohttp-cookies", cookies={"c": "3"})
            form = aiohttp.FormData()
            form.add_field("name", "value")
            form.add_field("file", b"bytes", filename="f.bin")
            async with aio.post(up + "/echo/aiohttp-form", data=form) as posted:
                out["aiohttp_form"] = (await posted.json())["body_len"] > 0
        return Response.json(out)
'''


def test_http_clients_keep_cookies_auth_retries_and_forms(corral, upstream):
    """What the clients did without a word: requests.Session kept no cookie,
    urllib3's Retry never retried, aiohttp dropped auth=, cookies= and its
    jar and refused a FormData, urllib's response had no reason."""
    deploy(corral, "bodies-clients", CLIENTS, requirements=("requests", "urllib3", "aiohttp"),
           bindings=({"type": "plain_text", "name": "UPSTREAM", "text": upstream.url("")},))
    resp = corral.request("/", host="bodies-clients.localhost")
    assert resp.status == 200, (resp, corral.log())
    assert resp.json() == {"requests_jar": ["a", "b"], "urllib3_retry": 200, "requests_retry": "RetryError",
                           "urllib_reason": "OK", "aiohttp_cookies": ["a", "b"], "aiohttp_form": True}
    assert upstream.server.flaky == {"u3": 3, "rq": 3}
    sent = {r["path"]: r["headers"] for r in upstream.requests}
    assert sent["/echo/requests-cookies"]["cookie"] in ("a=1; b=2", "b=2; a=1")
    aio = sent["/echo/aiohttp-cookies"]
    assert aio["authorization"] == "Basic dXNlcjpwYXNz"
    assert sorted(aio["cookie"].split("; ")) == ["a=1", "b=2", "c=3"]
    assert sent["/echo/aiohttp-form"]["content-type"].startswith("multipart/form-data; boundary=")


LOST = '''
from workers import Response, WorkerEntrypoint

SEEN = {}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.method == "GET":
            return Response.json(SEEN)
        try:
            await request.text()
        except Exception as exc:
            SEEN.update(type=type(exc).__name__, name=getattr(exc, "name", None), message=str(exc))
        return Response("read")
'''


def test_an_upload_the_client_dropped_is_a_lost_connection(corral):
    """It raised protocol.flow.StreamFailed, Corral's own type, with Corral's
    source in its stack; workerd says "Network connection lost."."""
    import socket

    deploy(corral, "bodies-lost", LOST)
    with socket.create_connection(("127.0.0.1", corral.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: bodies-lost.localhost\r\nContent-Length: 100\r\n\r\nten bytes.")
    deadline = time.monotonic() + 10
    while not (seen := corral.request("/", host="bodies-lost.localhost").json()):
        assert time.monotonic() < deadline, corral.log()[-2000:]
        time.sleep(0.05)  # until the worker has read what the client left
    assert seen["type"] == "ConnectionLost" and seen["name"] == "Error", seen
    assert seen["message"].startswith("Network connection lost."), seen


SEARCH_PARAMS = '''
import js
from workers import Request, Response, WorkerEntrypoint, fetch

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        usp = js.URLSearchParams.new("a=1&b=2 3")
        req = Request("http://x/", method="POST", body=usp)
        js_resp = js.Response.new(usp)
        sent = await fetch(request.headers.get("x-echo"), method="POST", body=usp)
        echoed = await sent.json()
        return Response.json({
            "request": [req.headers.get("content-type"), await req.text()],
            "js": [js_resp.headers.get("content-type"), await js_resp.text()],
            "fetched": [echoed["headers"].get("content-type"), echoed["body"]],
        })
'''


def test_a_url_search_params_body_is_a_form(corral, upstream) -> None:
    """The Fetch standard's BodyInit takes a URLSearchParams (the SDK lists it):
    its text, as application/x-www-form-urlencoded. It failed with a
    TypeError (iterated as chunks of bytes), and js.Response sent it as
    text/plain."""
    deploy(corral, "usp", SEARCH_PARAMS)
    r = corral.request("/", host="usp.localhost", headers={"x-echo": upstream.url("/echo/usp")})
    assert r.status == 200, r.text
    form = "application/x-www-form-urlencoded;charset=UTF-8"
    assert r.json() == {"request": [form, "a=1&b=2+3"], "js": [form, "a=1&b=2+3"],
                        "fetched": [form, "a=1&b=2+3"]}, r.text


PATCH_ENV = '''
import asyncio
import workers
from workers import Response, WorkerEntrypoint, patch_env

inside = asyncio.Event()
done = asyncio.Event()

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/patcher"):
            with patch_env(GREETING="patched"):
                seen = [workers.env.GREETING, self.env.GREETING]
                inside.set()
                await done.wait()
            return Response.json(seen + [workers.env.GREETING])
        await inside.wait()
        seen = [workers.env.GREETING, self.env.GREETING]
        done.set()
        return Response.json(seen)
'''


def test_patch_env_is_the_patching_requests_own(corral) -> None:
    """The SDK's patch_env patches the importable env in the caller's async
    context (workerd's PythonPatchedEnv); it changed the child's one env, so
    a request in flight beside it saw the patch, through self.env too."""
    import threading

    deploy(corral, "patcher", PATCH_ENV, bindings=[{"type": "plain_text", "name": "GREETING", "text": "hi"}])
    got: dict = {}
    thread = threading.Thread(target=lambda: got.setdefault(
        "patcher", corral.request("/patcher", host="patcher.localhost")))
    thread.start()
    other = corral.request("/other", host="patcher.localhost")
    thread.join(timeout=30)
    assert got["patcher"].json() == ["patched", "hi", "hi"], got["patcher"].text
    assert other.json() == ["hi", "hi"], other.text


HEADER_ORDER = '''
import js
from workers import Headers, Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        made = Headers([("zeta", "1"), ("Alpha", "2"), ("set-cookie", "a=1"), ("mid", "3"), ("set-cookie", "b=2")])
        jsh = js.Headers.new({"b": "1", "a": "2"})
        return Response.json({"request": [k for k, _ in request.headers.items() if k in ("x-a", "x-b", "x-c")],
                              "keys": list(made.keys()), "items": made.items(),
                              "js": [list(e) for e in jsh.entries()]})
'''


def test_headers_iterate_in_the_order_of_their_names(corral) -> None:
    """The Fetch standard's "sort and combine" (workerd sorts by name), which
    the SDK's request.headers is built from: they came in arrival order."""
    deploy(corral, "headerorder", HEADER_ORDER)
    r = corral.request("/", host="headerorder.localhost", headers={"x-b": "1", "x-a": "2", "x-c": "3"})
    assert r.status == 200, r.text
    assert r.json() == {"request": ["x-a", "x-b", "x-c"], "keys": ["alpha", "mid", "set-cookie", "zeta"],
                        "items": [["alpha", "2"], ["mid", "3"], ["set-cookie", "a=1"], ["set-cookie", "b=2"],
                                  ["zeta", "1"]],
                        "js": [["a", "2"], ["b", "1"]]}, r.text
