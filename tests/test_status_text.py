"""A Response's ``status_text`` end to end, as workerd carries a statusText:
the reason phrase of the status line a client reads, the ``status_text`` of
what a dispatch stub, a service binding, a Durable Object stub or ``fetch``
(the upstream's own phrase) returns, and a TypeError for one that could not
be a reason phrase. Real server, real jailed children."""

from __future__ import annotations

import pytest

from supervisor.edge.http_server import InvalidResponse, serialize_head
from tests import storage_helpers as h
from tests.harness import Corral

COOL = r'''
from workers import Response, WorkerEntrypoint, fetch, wsgi

async def chunks():
    yield b"streamed "
    yield b"body"

def wsgi_app(environ, start_response):
    start_response("200 WSGI Cool", [("content-type", "text/plain")])
    return [b"wsgi"]

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = "/" + request.url.split("/", 3)[3]
        if path == "/plain":
            return Response("x", status=201)
        if path == "/odd":
            return Response("x", status=299)  # a status without a standard phrase
        if path == "/stream":
            return Response(chunks(), status=202, status_text="Streamed Cool")
        if path == "/utf8":
            return Response("x", status_text="Caf\u00e9 \u2603")
        if path == "/forged":
            response = Response("x")
            response.status_text = "Evil\r\nx-injected: 1"
            return response
        if path == "/relay":  # the upstream's response, untouched
            return await fetch(self.env.UPSTREAM + "/reason?code=200&text=Upstream+Cool")
        if path == "/wsgi":
            return await wsgi.fetch(wsgi_app, request, self.env)
        return Response("x", status=200, status_text="Cool")
'''

APPS = h.EVAL_TENANT + r'''
from workers import DurableObject

class Cool(DurableObject):
    async def fetch(self, request):
        return Response("object", status_text="Object Cool")
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream):
    srv = h.start(tmp_path_factory.mktemp("status-text"))
    try:
        to_upstream = {"type": "plain_text", "name": "UPSTREAM", "text": upstream.url("")}
        srv.deploy("cool", COOL, bindings=[to_upstream])  # behind the dispatcher, *.localhost
        srv.deploy("platcool", COOL, namespace=None, bindings=[to_upstream])
        srv.route("platcool.test/*", "platcool")  # a platform script serving its route itself
        srv.deploy("apps", APPS, bindings=[
            to_upstream,
            {"type": "dispatch_namespace", "name": "NS", "namespace": "default"},
            {"type": "service", "name": "SVC", "service": "platcool"},
            {"type": "durable_object_namespace", "name": "COOL", "class_name": "Cool"},
        ])
        yield srv
    finally:
        srv.stop()


def status_line(server: Corral, path: str, host: str) -> bytes:
    """The status line exactly as sent (http.client reads the phrase as Latin-1)."""
    answer = server.raw(f"GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode())
    return answer.partition(b"\r\n")[0]


def test_a_routed_script_status_text_is_the_reason_phrase(server):
    resp = server.request("/", host="platcool.test")
    assert (resp.status, resp.reason, resp.body) == (200, "Cool", b"x")
    assert status_line(server, "/", "platcool.test") == b"HTTP/1.1 200 Cool"


def test_a_dispatcher_handing_on_a_response_keeps_its_status_text(server):
    # The bundled-style dispatcher returns the user worker's response untouched.
    assert server.request("/", host="cool.localhost").reason == "Cool"
    streamed = server.request("/stream", host="cool.localhost")
    assert (streamed.status, streamed.reason, streamed.body) == (202, "Streamed Cool", b"streamed body")
    # Non-ASCII goes out as UTF-8 (obs-text), as workerd sends it.
    assert status_line(server, "/utf8", "cool.localhost") == "HTTP/1.1 200 Café ☃".encode()
    # An upstream's response handed on by two workers keeps the upstream's phrase.
    relayed = server.request("/relay", host="cool.localhost")
    assert (relayed.status, relayed.reason, relayed.body) == (200, "Upstream Cool", b"reason\n")


def test_without_status_text_the_standard_phrase_is_sent(server):
    assert server.request("/plain", host="platcool.test").reason == "Created"
    assert server.request("/plain", host="cool.localhost").reason == "Created"
    assert status_line(server, "/odd", "platcool.test") == b"HTTP/1.1 299 "


def test_stubs_and_bindings_read_the_callee_status_text(server):
    result = h.ok(server, "apps", """
dispatched = await env.NS.get("cool").fetch("http://cool/")
streamed = await env.NS.get("cool").fetch("http://cool/stream")
service = await env.SVC.fetch("http://platcool/")
obj = await env.COOL.getByName("x").fetch("http://object/")
plain = await env.NS.get("cool").fetch("http://cool/plain")
return [dispatched.status_text, dispatched.statusText, await dispatched.text(), streamed.status_text,
        service.status_text, obj.status_text, await obj.text(), plain.status_text]
""")
    assert result == ["Cool", "Cool", "x", "Streamed Cool", "Cool", "Object Cool", "object", "Created"]


def test_fetch_reads_the_upstream_reason_phrase(server):
    result = h.ok(server, "apps", """
from workers import fetch
own = await fetch(env.UPSTREAM + "/reason?code=200&text=Very+Cool")
standard = await fetch(env.UPSTREAM + "/reason?code=404")
utf8 = await fetch(env.UPSTREAM + "/reason?code=200&text=Caf%C3%A9")
return [own.status, own.status_text, standard.status, standard.status_text, utf8.status_text]
""")
    assert result == [200, "Very Cool", 404, "Not Found", "Café"]


def test_a_status_text_that_is_no_reason_phrase_is_a_type_error(server):
    result = h.ok(server, "apps", r"""
refused = []
for bad in ["a\rb", "a\nb", "a\x00b", "a\tb", "a\x7fb", "Cool\r\nx-injected: 1"]:
    for make in (lambda: Response("x", status_text=bad), lambda: Response("x", statusText=bad),
                 lambda: Response.json({}, status_text=bad)):
        try:
            make()
            refused.append(None)
        except TypeError as e:
            refused.append([isinstance(e, JsException), getattr(e, "name", None), str(e)])
fine = [Response("x", status_text=t).status_text for t in [" spaced  out ", "caf\u00e9 ~!", ""]]
return [refused, fine]
""")
    refused, fine = result
    assert len(refused) == 18 and None not in refused, refused
    assert all(js and name == "TypeError" and message.startswith("Invalid statusText")
               for js, name, message in refused), refused
    assert "'Cool\\r\\nx-injected: 1'" in refused[-1][2]  # the message shows the text, escaped
    assert fine == [" spaced  out ", "café ~!", "OK"]


def test_a_status_text_set_after_construction_is_still_checked(server):
    # Direct: the invocation fails (500), no header is injected.
    direct = server.request("/forged", host="platcool.test")
    assert direct.status == 500 and "x-injected" not in direct.headers
    # Through a dispatcher: its stub's fetch raises the TypeError.
    dispatched = server.request("/forged", host="cool.localhost")
    assert dispatched.status == 502 and "x-injected" not in dispatched.headers
    assert "Invalid statusText" in dispatched.json()["dispatch_error"]


def test_the_server_refuses_a_reason_phrase_a_child_forged():
    """The child is not trusted: a frame with a CR/LF in its status_text,
    which skipped the sandbox's checks, still writes no header of its own."""
    for bad in ("Evil\r\nx-injected: 1", "a\nb", "a\x00b", "a\x7fb"):
        with pytest.raises(InvalidResponse):
            serialize_head(200, [], b"", bad)
    assert bytes(serialize_head(200, [], b"", "Cool")) == b"HTTP/1.1 200 Cool\r\n\r\n"
    assert bytes(serialize_head(404, [], b"")) == b"HTTP/1.1 404 Not Found\r\n\r\n"


def test_a_wsgi_status_reason_is_the_status_text(server):
    # workers-py's wsgi adapter passes start_response's reason on as statusText.
    resp = server.request("/wsgi", host="cool.localhost")
    assert (resp.status, resp.reason, resp.body) == (200, "WSGI Cool", b"wsgi")
