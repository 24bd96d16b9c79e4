"""The ASGI adapter and response bodies as Cloudflare's SDK code reads them,
through real jailed children: ``response.body.getReader()`` with
``js.TextDecoder``, a streamed response whose app fails midway (a truncated
body, not an error), the ``asgi`` logger's records for a failed request and a
failed ``run_in_background`` task."""

from __future__ import annotations

import pytest

from tests import storage_helpers as h

APPS = r'''
import asyncio, logging
import asgi
from workers import Request
from js import TextDecoder

class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []
    def emit(self, record):
        self.records.append(record)

records = Records()
logging.getLogger("asgi").addHandler(records)

async def streaming(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
    for part in (b"caf", "\u00e9 ".encode()[:1], "\u00e9 ".encode()[1:], b"au lait"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})

async def fails_midway(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"chunk-1", "more_body": True})
    raise RuntimeError("failed mid-stream on purpose")

async def fails_first(scope, receive, send):
    if scope["type"] != "http":
        return
    raise RuntimeError("failed before responding on purpose")
'''


#: A WSGI app reads exactly CONTENT_LENGTH bytes of its input.
WSGI_ECHO = """
from workers import WorkerEntrypoint, wsgi

def echo(environ, start_response):
    if environ["PATH_INFO"] == "/none":  # a body with a 204: the adapter drops it
        start_response("204 No Content", [("x-a", "1")])
        return [b"dropped"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    start_response("200 OK", [("content-type", "text/plain")])
    return [environ["wsgi.input"].read(length)]

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await wsgi.fetch(echo, request, self.env)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = h.start(tmp_path_factory.mktemp("asgi"))
    srv.deploy("wsgi-echo", WSGI_ECHO, namespace=None)
    srv.deploy("apps", h.EVAL_TENANT, bindings=[{"type": "service", "name": "ECHO",
                                                 "service": "wsgi-echo"}])
    yield srv
    srv.stop()


def test_a_body_sent_to_another_worker_says_its_length(server):
    result = h.ok(server, "apps", """
resp = await env.ECHO.fetch("http://echo/", method="POST", body="hello body")
return [resp.status, await resp.text()]
""")
    assert result == [200, "hello body"]


def test_a_body_read_with_a_reader_and_a_text_decoder(server):
    result = h.ok(server, "apps", APPS + """
resp = await asgi.fetch(streaming, Request("http://x/"), {})
stream = resp.body
reader = stream.getReader()
decoder = TextDecoder.new()
text, kinds = "", set()
while True:
    part = await reader.read()
    if part.done:
        break
    kinds.add(type(part.value).__name__)
    text += decoder.decode(part.value, {"stream": True})
text += decoder.decode()
again = await asgi.fetch(streaming, Request("http://x/"), {})
chunks = [bytes(c) async for c in again.body]  # and Python's way still works
return [text, sorted(kinds), stream.locked, b"".join(chunks).decode()]
""")
    # The split "\u00e9" came out whole: the decoder kept its first byte.
    assert result == ["café au lait", ["Uint8Array"], True, "café au lait"]


def test_an_app_failing_midway_truncates_its_body(server):
    result = h.ok(server, "apps", APPS + """
resp = await asgi.fetch(fails_midway, Request("http://x/"), {})
body = await asyncio.wait_for(resp.text(), 5)
await asyncio.sleep(0)
logged = [r.getMessage() for r in records.records if r.levelno >= logging.ERROR]
return [resp.status, body, logged]
""")
    assert result[:2] == [200, "chunk-1"]
    assert any("after the response started" in m for m in result[2])


def test_a_failed_request_and_a_failed_background_task_are_logged(server):
    result = h.ok(server, "apps", APPS + """
try:
    await asgi.fetch(fails_first, Request("http://x/"), {})
    raised = None
except RuntimeError as e:
    raised = str(e)
async def boom():
    raise ValueError("background failure on purpose")
task = asgi.run_in_background(boom())
await asyncio.wait([task])
await asyncio.sleep(0)
errors = [r for r in records.records if r.levelno >= logging.ERROR]
return [raised, [r.getMessage() for r in errors],
        [str(r.exc_info[1]) for r in errors if r.exc_info]]
""")
    assert result[0] == "failed before responding on purpose"
    assert any("ASGI request failed" in m for m in result[1])
    assert "background failure on purpose" in result[2]


def test_a_null_body_status_takes_no_body(server):
    """JavaScript's Response refuses a body with status 101, 204, 205 or 304:
    a TypeError, which the SDK's Response(...) surfaces as a JsException and
    its Response.json as Python's TypeError; an empty body is no body (workerd
    still allows it). The adapters drop an app's body for such a status, as
    Cloudflare's do: the answer is a 204, not a 500. A 204 from elsewhere has
    no body, so handing it on passes the check."""
    result = h.ok(server, "apps", APPS + """
from workers import wsgi
out = []
for status in (204, 205, 304):
    try:
        Response("body", status=status)
        out.append(None)
    except JsException as e:
        out.append([e.name, str(e), isinstance(e, TypeError)])
try:
    Response.json({"a": 1}, status=204)
    out.append(None)
except TypeError as e:
    out.append("json refused")
out.append([Response(empty, status=204).body for empty in ("", b"", None)])
async def no_content(scope, receive, send):  # as FastAPI has answered a 204: "null" for a body
    await send({"type": "http.response.start", "status": 204, "headers": [(b"x-a", b"1")]})
    await send({"type": "http.response.body", "body": b"null"})
def wsgi_no_content(environ, start_response):
    start_response("204 No Content", [])
    return [b"dropped"]
for resp in (await asgi.fetch(no_content, Request("http://x/"), {}),
             await wsgi.fetch(wsgi_no_content, Request("http://x/"), {}),
             await env.ECHO.fetch("http://echo/none")):
    again = Response(resp.body, status=resp.status, headers=resp.headers)
    out.append([resp.status, await resp.text(), again.status, again.body])
return out
""")
    refused = ["TypeError", "Response with null body status (101, 204, 205, or 304) cannot have a body.", True]
    assert result[:3] == [refused] * 3, result
    assert result[3:5] == ["json refused", [None, None, None]], result
    assert result[5:] == [[204, "", 204, None]] * 3, result


def test_a_null_body_status_streamed_in_many_chunks_does_not_block_the_app(server):
    """An app answering 204, 205 or 304 that streams more chunks than the
    adapter buffers gets its answer at once and runs to its end: the chunks
    are dropped, not queued to a body nobody reads (Cloudflare's SDK drops a
    null-body status's body too)."""
    result = h.ok(server, "apps", APPS + """
out = []
for status in (204, 205, 304):
    done = asyncio.Event()
    async def chatty(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": status, "headers": [(b"x-a", b"1")]})
        for i in range(64):
            await send({"type": "http.response.body", "body": b"chunk %d" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        done.set()
    resp = await asyncio.wait_for(asgi.fetch(chatty, Request("http://x/"), {}), 5)
    await asyncio.wait_for(done.wait(), 5)
    out.append([resp.status, resp.headers.get("x-a"), resp.body, await resp.text()])
return out
""")
    assert result == [[s, "1", None, ""] for s in (204, 205, 304)], result


def test_a_null_body_status_stops_pulling_a_wsgi_body(server):
    """A WSGI app answering 204 with a generator body is not drained: as
    Cloudflare's adapter does, the answer is made once the first chunk is
    known, and the generator is closed there (its ``finally`` runs)."""
    result = h.ok(server, "apps", """
from workers import wsgi, Request
closed = []
def endless(environ, start_response):
    start_response("204 No Content", [("x-a", "1")])
    try:
        yield b"first"
        raise RuntimeError("pulled past the first chunk")
    finally:
        closed.append(True)
resp = await wsgi.fetch(endless, Request("http://x/"), {})
return [resp.status, resp.headers.get("x-a"), resp.body, closed]
""")
    assert result == [204, "1", None, [True]], result


def test_a_status_out_of_range_is_a_range_error(server):
    """JavaScript's Response takes statuses 200 to 599 (101 only with a
    WebSocket): any other is a RangeError, which the SDK's ``Response(...)``
    surfaces as a JsException so named, and its ``Response.json`` as Python's
    ValueError. Corral's is both, before any check of the body. A status of 0
    is no status to the SDK (it passes one on only when truthy): a 200."""
    result = h.ok(server, "apps", """
from js import WebSocketPair
out = []
for status in (101, 103, 199, 600, 999):
    try:
        Response("body", status=status)
        out.append(status)
    except JsException as e:
        out.append([e.name, str(e), isinstance(e, ValueError)])
try:
    Response.json({"a": 1}, status=600)
except ValueError as e:
    out.append(str(e))
try:
    Response(None, status=200, web_socket=WebSocketPair.new()[0])
except JsException as e:
    out.append([e.name, str(e), isinstance(e, ValueError)])
out.append([Response(None, status=s).status for s in (0, 200, 599)])
return out
""")
    message = "Responses may only be constructed with status codes in the range 200 to 599, inclusive."
    assert result[:6] == [["RangeError", message, True]] * 5 + [message], result
    assert result[6:] == [["RangeError", "Responses with a WebSocket must have status code 101.", True],
                          [200, 200, 599]], result


WSGI_ENTRYPOINT = """
from workers import wsgi

def app(environ, start_response):
    start_response("200 OK", [("content-type", "application/json")])
    return [b'{"message": "Hello from WSGI", "path": "' + environ["PATH_INFO"].encode() + b'"}']

Default = wsgi.entrypoint(app)
"""

ASGI_ENTRYPOINT = """
from workers import asgi

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return
    env = scope["env"]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": f"ASGI {scope['path']} {env.WHO}".encode()})

Default = asgi.entrypoint(app)
"""


def test_the_entrypoint_shorthands_serve_an_app(server):
    """``Default = wsgi.entrypoint(app)`` / ``asgi.entrypoint(app)``, as
    Cloudflare's Flask page and its changelog write a worker: the app
    serves its requests (the deploy failed: the modules had no entrypoint)."""
    server.deploy("wsgi-entry", WSGI_ENTRYPOINT)
    resp = server.request("/hi", host="wsgi-entry.localhost")
    assert resp.status == 200 and resp.json() == {"message": "Hello from WSGI", "path": "/hi"}, resp
    server.deploy("asgi-entry", ASGI_ENTRYPOINT, bindings=[{"type": "plain_text", "name": "WHO", "text": "me"}])
    resp = server.request("/there", host="asgi-entry.localhost")
    assert resp.status == 200 and resp.text == "ASGI /there me", resp


CANCELLED_RECEIVE = """
import asyncio
from workers import asgi

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return
    messages = []
    for _ in range(20):  # receives given up on, as Starlette's is_disconnected() gives one up
        try:
            messages.append(await asyncio.wait_for(receive(), 0.000001))
        except asyncio.TimeoutError:
            pass
    while not messages or messages[-1].get("more_body"):
        messages.append(await receive())
    size = sum(len(m.get("body", b"")) for m in messages)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})

Default = asgi.entrypoint(app)
"""


def test_a_receive_given_up_on_loses_no_body(server):
    """A cancelled receive() (Starlette's is_disconnected(), wait_for)
    threw its cancellation into the body's generator, which closed it: the
    app then read an empty body. The read goes on for the next receive()."""
    server.deploy("cancelled-receive", CANCELLED_RECEIVE)
    body = b"x" * 3_000_000
    resp = server.request("/", host="cancelled-receive.localhost", method="POST", body=body, timeout=60)
    assert resp.status == 200 and resp.text == str(len(body)), (resp, resp.text)
