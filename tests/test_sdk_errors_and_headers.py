"""Cloudflare Python Workers code that reads headers and handles network errors as the SDK allows.

Found by an audit with tenant code written against Cloudflare's SDK, each
point failed before its fix (a 500 where the tenant's own branch should run):

* ``request.headers`` is an ``http.client.HTTPMessage`` in the SDK: a missing
  header reads as None, and ``get_content_type()``/``get_param()`` work;
* a fetch that gets no response raises ``OSError`` (Pyodide's ``pyfetch``
  does), still a ``JsException``;
* ``requests``, ``httpx``, ``urllib3`` and ``urllib.request`` raise their own
  exception types for it, which is what their callers catch;
* ``clone()`` of a request or response whose body was read raises, as JS and
  the SDK do (it returned a second copy of the body).

One real ``corral serve`` (tests/harness.py); port 1 of 127.0.0.1 refuses
every connection (the harness allows private networks).
"""

from __future__ import annotations

import json

from supervisor.admin import multipart
from tests.test_cf_gaps import deploy

HEADERS = '''
import http.client
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        auth = request.headers["Authorization"]
        made = Response("x", headers={"content-type": "text/html; charset=latin-1"})
        return Response.json({
            "missing": auth,
            "is_message": isinstance(request.headers, http.client.HTTPMessage),
            "type": request.headers.get_content_type(),
            "charset": request.headers.get_param("charset"),
            "x_a": request.headers["X-A"],
            "response_missing": made.headers["x-none"],
            "response_charset": made.headers.get_content_charset(),
            "text": "x-a: 1" in request.headers.as_string(),
        })
'''


def test_headers_are_an_http_message_as_the_sdk_gives_them(corral):
    deploy(corral, "hdrs", HEADERS)
    resp = corral.request("/", host="hdrs.localhost", method="POST", body=b"{}",
                          headers={"content-type": "application/json; charset=utf-8", "x-a": "1"})
    assert resp.status == 200, (resp, corral.log())
    assert resp.json() == {"missing": None, "is_message": True, "type": "application/json",
                           "charset": "utf-8", "x_a": "1", "response_missing": None,
                           "response_charset": "latin-1", "text": True}


DOWN = '''
import urllib.error
import urllib.request

import httpx
import requests
import urllib3
from workers import JsException, Response, WorkerEntrypoint, fetch

URL = "http://127.0.0.1:1/"


def caught(call, *kinds):
    try:
        call()
    except kinds as e:
        return type(e).__name__
    except Exception as e:
        return f"uncaught {type(e).__module__}.{type(e).__name__}: {e}"
    return "no error"


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        try:
            await fetch(URL)
            fetched = "no error"
        except OSError as e:
            fetched = [type(e).__name__, isinstance(e, JsException), "refused" in str(e)]
        async with httpx.AsyncClient() as client:
            try:
                await client.get(URL)
                async_httpx = "no error"
            except httpx.ConnectError as e:
                async_httpx = type(e).__name__
        return Response.json({
            "fetch": fetched,
            "async_httpx": async_httpx,
            "requests": caught(lambda: requests.get(URL), requests.ConnectionError),
            "httpx": caught(lambda: httpx.get(URL), httpx.ConnectError),
            "urllib3": caught(lambda: urllib3.request("GET", URL), urllib3.exceptions.MaxRetryError),
            "urllib3_no_retries": caught(lambda: urllib3.request("GET", URL, retries=False),
                                         urllib3.exceptions.NewConnectionError),
            "urllib": caught(lambda: urllib.request.urlopen(URL), urllib.error.URLError),
        })
'''


def test_a_failed_connection_raises_what_each_client_documents(corral):
    deploy(corral, "down", DOWN, ("requests", "httpx", "urllib3"))
    resp = corral.request("/", host="down.localhost")
    assert resp.status == 200, (resp, corral.log())
    assert resp.json() == {
        "fetch": ["NetworkError", True, True],
        "async_httpx": "ConnectError",
        "requests": "ConnectionError",
        "httpx": "ConnectError",
        "urllib3": "MaxRetryError",
        "urllib3_no_retries": "NewConnectionError",
        "urllib": "URLError",
    }


FAILURES = '''
import socket
import urllib.error
import urllib.request

import aiohttp
import requests
import urllib3
from workers import Response, WorkerEntrypoint

REFUSED = "http://127.0.0.1:1/"
UNKNOWN = "http://no-such-host.invalid/"


def outcome(call):
    """The exception a call raised: its type, the OSError it carries, and
    whether the caller's ``except OSError:`` catches it."""
    try:
        call()
    except Exception as e:
        inner = getattr(e, "reason", None) or getattr(e, "os_error", None)
        return [type(e).__name__, type(inner).__name__ if inner is not None else None, isinstance(e, OSError)]
    return "no error"


async def aiohttp_outcome(url):
    try:
        async with aiohttp.ClientSession() as session:
            await session.get(url)
    except Exception as e:
        key = getattr(e, "host", None), getattr(e, "port", None)
        return [type(e).__name__, type(getattr(e, "os_error", None)).__name__, isinstance(e, OSError), *key]
    return "no error"


def urllib3_reason(url):
    try:
        urllib3.request("GET", url)
    except urllib3.exceptions.MaxRetryError as e:
        return type(e.reason).__name__
    return "no error"


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        slow = self.env.UPSTREAM + "/slow?delay=3"
        return Response.json({
            "aiohttp_refused": await aiohttp_outcome(REFUSED),
            "aiohttp_dns": await aiohttp_outcome(UNKNOWN),
            "urllib_refused": outcome(lambda: urllib.request.urlopen(REFUSED)),
            "urllib_dns": outcome(lambda: urllib.request.urlopen(UNKNOWN)),
            "urllib_dns_code": _eai(UNKNOWN),
            "urllib_read_timeout": outcome(lambda: urllib.request.urlopen(slow, timeout=0.5)),
            "urllib_read_timeout_is_socket_timeout": _is_socket_timeout(slow),
            "urllib3_dns": outcome(lambda: urllib3.request("GET", UNKNOWN, retries=False)),
            "urllib3_dns_retried": urllib3_reason(UNKNOWN),
            "urllib3_refused": outcome(lambda: urllib3.request("GET", REFUSED, retries=False)),
            "requests_dns": outcome(lambda: requests.get(UNKNOWN)),
        })


def _eai(url):
    try:
        urllib.request.urlopen(url)
    except urllib.error.URLError as e:
        return e.reason.errno == socket.EAI_NONAME


def _is_socket_timeout(url):
    try:
        urllib.request.urlopen(url, timeout=0.5)
    except socket.timeout:
        return True
    except Exception as e:
        return type(e).__name__
    return "no error"
'''


def test_a_failed_lookup_connect_or_read_raises_what_each_library_raises(corral, upstream):
    """Each library's own exception for what failed, as its socket code
    raises it: aiohttp's TCPConnector gives ClientConnectorError (an OSError
    naming host, port and the socket's error) for a refused connection and
    ClientConnectorDNSError for a failed lookup (both were a bare
    ClientConnectionError); urllib3 2.x NameResolutionError for a lookup (it
    was NewConnectionError); urllib's do_open a URLError whose reason is the
    socket's error (it was the brokered error) for a failure before the
    response, and a bare TimeoutError for a response that does not come (it
    was a URLError)."""
    deploy(corral, "failures", FAILURES, ("requests", "urllib3", "aiohttp"),
           bindings=({"type": "plain_text", "name": "UPSTREAM", "text": upstream.url("")},))
    resp = corral.request("/", host="failures.localhost")
    assert resp.status == 200, (resp, corral.log())
    assert resp.json() == {
        "aiohttp_refused": ["ClientConnectorError", "ConnectionRefusedError", True, "127.0.0.1", 1],
        "aiohttp_dns": ["ClientConnectorDNSError", "gaierror", True, "no-such-host.invalid", 80],
        "urllib_refused": ["URLError", "ConnectionRefusedError", True],
        "urllib_dns": ["URLError", "gaierror", True],
        "urllib_dns_code": True,
        "urllib_read_timeout": ["TimeoutError", None, True],
        "urllib_read_timeout_is_socket_timeout": True,
        "urllib3_dns": ["NameResolutionError", None, False],
        "urllib3_dns_retried": "NameResolutionError",
        "urllib3_refused": ["NewConnectionError", None, False],
        "requests_dns": ["ConnectionError", None, True],
    }


CLONE = '''
from workers import Response, WorkerEntrypoint


def refused(message):
    try:
        message.clone()
    except OSError as e:
        return type(e).__name__
    return "cloned"


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        fresh = Response("abc").clone()
        made = Response("abc")
        await made.text()
        await request.text()
        return Response.json({"fresh": await fresh.text(), "response": refused(made),
                              "request": refused(request)})
'''


def test_a_read_body_cannot_be_cloned(corral):
    deploy(corral, "clones", CLONE)
    resp = corral.request("/", host="clones.localhost", method="POST", body=b"payload")
    assert resp.status == 200, (resp, corral.log())
    assert resp.json() == {"fresh": "abc", "response": "BodyUsedError", "request": "BodyUsedError"}




RPC_CALLER = """
from workers import JsException, Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        svc = self.env.SVC
        shape = await svc.shape()
        shape["bytes"] = [type(shape["bytes"]).__name__, bytes(shape["bytes"]).hex()]
        out = {"add": await svc.add(1, 2), "greet": await svc.greet("ada", punctuation="!"),
               "shape": shape, "sync": await svc.double(21),
               "rpc_only": await self.env.CALC.mul(6, 7), "bytes_arg": await svc.sniff(b"\\x02")}
        out["dup"] = await svc.dup().add(2, 3)  # reserved: a copy of the stub, not an RPC call
        for method in ("nope", "fetch_like", "_private", "scheduled", "connect", "mro"):
            try:
                await getattr(svc, method)()
                out[method] = "called"
            except (JsException, AttributeError) as e:
                out[method] = [type(e).__name__, getattr(e, "name", None), str(e)[:80]]
        try:
            await svc.boom()
        except JsException as e:
            out["boom"] = [str(e), e.name]
        return Response.json(out)
"""

SVC = """
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("svc fetch")

    async def add(self, a, b):
        return a + b

    async def greet(self, name, options):
        return f"hello {name}{options['punctuation']} ({self.env.WHO})"

    async def shape(self):
        return {"list": [1, "two", None], "bytes": b"\\x01", "nested": {"ok": True}}

    async def sniff(self, data):  # bytes arrive as Pyodide's to_py() makes them: a memoryview
        return [type(data).__name__, data.tobytes().hex()]

    def double(self, n):  # a plain def is a method too
        return n * 2

    async def boom(self):
        raise ValueError("boom inside the service")

    async def scheduled(self, controller, env, ctx):
        pass

    async def connect(self, socket=None):  # Cloudflare's reserved: a socket to the Worker, not RPC
        return "connect ran"


class Admin(WorkerEntrypoint):  # a named entrypoint of the same service
    async def fetch(self, request):
        return Response("admin fetch")

    async def whoami(self):
        return type(self).__name__


class InternalTool:  # no entrypoint: a plain class of the service's
    def __init__(self, *args):
        pass

    def secret(self):
        return "internal secret"


class _Hidden(WorkerEntrypoint):  # no entrypoint either: a private name
    async def secret(self):
        return "hidden secret"
"""

NOT_ENTRYPOINTS = """
from workers import JsException, Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        out = {}
        for name in ("TOOL", "HIDDEN", "IMPORTED"):
            try:
                out[name] = await getattr(self.env, name).secret()
            except JsException as e:
                out[name] = e.name
        return Response.json(out)
"""

ADMIN_CALLER = """
from workers import JsException, Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        admin = self.env.ADMIN
        try:
            await admin.add(1, 2)  # Default's, not Admin's
            only = "called"
        except JsException as e:
            only = e.name
        return Response.json({"fetch": await (await admin.fetch(request)).text(),
                              "whoami": await admin.whoami(), "default_only": only})
"""


CALC = """
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):  # a service for RPC (and its props' fetch)
    async def mul(self, a, b):
        return a * b

    async def keys_of(self, d):
        return sorted(d.keys())

    async def typed(self, d):
        return {k: [type(v).__name__, v] for k, v in d.items()}

    async def props(self):
        return dict(self.ctx.props)

    async def fetch(self, request):
        return Response.json(dict(self.ctx.props))
"""

PROPS_CALLER = """
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response.json({"rpc": await self.env.WITH.props(), "none": await self.env.WITHOUT.props(),
                              "fetch": await (await self.env.WITH.fetch("https://calc/")).json()})
"""


def test_a_service_bindings_props_are_the_callees_ctx_props(corral):
    """Cloudflare's service binding props reach the callee as ctx.props (who
    is calling); they were dropped without a word, and ctx.props was missing."""
    corral.deploy("calc", CALC, namespace=None)
    props = {"clientId": "tenant-7", "permissions": ["read"]}
    deploy(corral, "propscaller", PROPS_CALLER, bindings=(
        {"type": "service", "name": "WITH", "service": "calc", "props": props},
        {"type": "service", "name": "WITHOUT", "service": "calc"}))
    resp = corral.request("/", host="propscaller.localhost")
    assert resp.status == 200, (resp, corral.log())
    assert resp.json() == {"rpc": props, "none": {}, "fetch": props}, resp.json()

UNCLONABLE = """
import dataclasses, datetime, decimal, enum, uuid
from workers import JsException, Response, WorkerEntrypoint


@dataclasses.dataclass
class Point:
    x: int


class Colour(enum.Enum):
    RED = "red"


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        out = {"keys": await self.env.CALC.keys_of({1: "a", 2.5: "b", 3.0: "c", "d": "e"})}
        for value in (Point(1), uuid.UUID(int=5), decimal.Decimal("1.5"), Colour.RED,
                      datetime.date(2024, 1, 2), datetime.timedelta(seconds=3)):
            try:
                await self.env.CALC.keys_of({"v": value})
                out[type(value).__name__] = "sent"
            except JsException as e:
                out[type(value).__name__] = e.name
        # int and str subclasses cross as their number and string, as Pyodide converts them.
        import http
        class Level(enum.IntEnum):
            HIGH = 3
        out["crossed"] = await self.env.CALC.typed({
            "status": http.HTTPStatus.OK, "level": Level.HIGH, "method": request.method,
            "big": 2**70, "small": -(2**63)})
        return Response.json(out)
"""


def test_what_structured_clone_refuses_is_refused_over_rpc(corral):
    """A dataclass, a UUID, a Decimal, an Enum, a date and a timedelta crossed
    RPC as dicts and strings (msgpack carries them): workers-py converts none
    of them and Pyodide cannot, a DataCloneError on Cloudflare. A dict's
    number keys arrive as strings, as a JavaScript object's."""
    corral.deploy("calc", CALC, namespace=None)
    deploy(corral, "unclonable", UNCLONABLE, bindings=({"type": "service", "name": "CALC", "service": "calc"},))
    resp = corral.request("/", host="unclonable.localhost")
    assert resp.status == 200, (resp, corral.log())
    out = resp.json()
    crossed = out.pop("crossed")
    assert out == {"keys": ["1", "2.5", "3", "d"], "Point": "DataCloneError", "UUID": "DataCloneError",
                   "Decimal": "DataCloneError", "Colour": "DataCloneError", "date": "DataCloneError",
                   "timedelta": "DataCloneError"}, out
    # An IntEnum spun the encoder (range()'s membership walks it for a subclass)
    # until the CPU limit; request.method (an http.HTTPMethod) was a DataCloneError.
    assert crossed == {"status": ["int", 200], "level": ["int", 3], "method": ["str", "GET"],
                       "big": ["int", 2**70], "small": ["int", -(2**63)]}, crossed


def test_workers_rpc_over_a_service_binding(corral):
    """env.SVC.method(...) runs the method on the service's Default entrypoint,
    with plain data both ways (bytes as memoryview); keywords arrive as one
    trailing object (as the SDK passes them); handlers and private names are
    no RPC methods."""
    corral.deploy("svc", SVC, namespace=None, bindings=[{"type": "plain_text", "name": "WHO", "text": "svc"}])
    corral.deploy("calc", CALC, namespace=None)
    binding = {"type": "service", "name": "SVC", "service": "svc"}
    deploy(corral, "rpccaller", RPC_CALLER,
           bindings=(binding, {"type": "service", "name": "CALC", "service": "calc"}))
    resp = corral.request("/", host="rpccaller.localhost")
    assert resp.status == 200, (resp, corral.log())
    out = resp.json()
    assert out["add"] == 3 and out["greet"] == "hello ada! (svc)" and out["sync"] == 42
    assert out["rpc_only"] == 42
    # Bytes cross as memoryview both ways, as on Cloudflare (workers-py's python_from_rpc).
    assert out["shape"] == {"list": [1, "two", None], "bytes": ["memoryview", "01"], "nested": {"ok": True}}
    assert out["bytes_arg"] == ["memoryview", "02"]
    not_there = 'The RPC receiver does not implement the method'
    # connect and dup are Cloudflare's reserved methods; mro is only the class's metaclass's.
    for method in ("nope", "fetch_like", "scheduled", "connect", "mro"):
        assert out[method][1] == "TypeError" and out[method][2].startswith(not_there), out[method]
    assert out["dup"] == 5
    assert out["_private"][0] == "AttributeError"
    assert out["boom"] == ["boom inside the service", "ValueError"]  # the callee's own, as thrown
    # A named entrypoint: fetch and RPC go to that class, not to Default.
    deploy(corral, "admincaller", ADMIN_CALLER, bindings=({**binding, "name": "ADMIN", "entrypoint": "Admin"},))
    named = corral.request("/", host="admincaller.localhost")
    assert named.status == 200, (named, corral.log())
    assert named.json() == {"fetch": "admin fetch", "whoami": "Admin", "default_only": "TypeError"}
    # Only a WorkerEntrypoint of the module, with a public name, is one (as
    # workerd lists them): a binding ran any class's methods.
    deploy(corral, "notentry", NOT_ENTRYPOINTS, bindings=(
        {**binding, "name": "TOOL", "entrypoint": "InternalTool"},
        {**binding, "name": "HIDDEN", "entrypoint": "_Hidden"},
        {**binding, "name": "IMPORTED", "entrypoint": "Response"}))
    refusals = corral.request("/", host="notentry.localhost")
    assert refusals.json() == {"TOOL": "TypeError", "HIDDEN": "TypeError", "IMPORTED": "TypeError"}, (
        refusals, corral.log())
    metadata = {"main_module": "worker.py", "bindings": [{**binding, "entrypoint": "not a class"}]}
    ctype, body = multipart.encode([
        multipart.Part(name="metadata", content_type="application/json", data=json.dumps(metadata).encode()),
        multipart.Part(name="worker.py", filename="worker.py", content_type="text/x-python",
                       data=RPC_CALLER.encode())])
    refused = corral.admin("PUT", "/accounts/local/workers/dispatch/namespaces/default/scripts/named",
                           body, ctype)
    assert refused.status == 400 and "is not a class name" in refused.text, refused

ONLY_NAMED = """
from workers import Response, WorkerEntrypoint


class Admin(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("admin fetch")

    async def whoami(self):
        return "Admin"

    async def add(self, a, b):
        return a + b
"""


def test_a_script_with_only_a_named_entrypoint_deploys_and_is_called(corral):
    """Cloudflare deploys entrypoint-only Workers (workers-sdk #15309: "entrypoint-only
    workers can be deployed"); the upload was refused, "no fetch handler"."""
    corral.deploy("onlynamed", ONLY_NAMED, namespace=None)
    binding = {"type": "service", "name": "ADMIN", "service": "onlynamed", "entrypoint": "Admin"}
    deploy(corral, "onlynamedcaller", ADMIN_CALLER, bindings=(binding,))
    named = corral.request("/", host="onlynamedcaller.localhost")
    assert named.status == 200, (named, corral.log())
    # Admin has its own add here (there is no Default at all).
    assert named.json() == {"fetch": "admin fetch", "whoami": "Admin", "default_only": "called"}, named.text


def test_cron_times_are_whole_milliseconds():
    """JavaScript's number for them is whole, and so is what Python code gets."""
    from sandbox.events import ScheduledController

    controller = ScheduledController("* * * * *", 1796314360071.0)
    assert controller.scheduledTime == 1796314360071 and type(controller.scheduledTime) is int


WEIRD = """
from workers import Response, WorkerEntrypoint


class Weird(Exception):
    def __str__(self):
        raise RuntimeError("no words")


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        raise Weird()
"""


def test_an_exception_whose_str_fails_is_answered_at_once(corral):
    """Its message was formatted in the runtime's own handler: str() raised
    there, nothing was sent, and the client waited out the wall-time limit
    (60 s, then a 503); at import, the deploy waited 10 s and hid the error."""
    deploy(corral, "weird", WEIRD)
    r = corral.request("/", host="weird.localhost", timeout=20)
    assert (r.status, r.text) == (500, "Worker threw exception\n"), r
    metadata = {"main_module": "worker.py"}
    source = b"class W(Exception):\n    def __str__(self):\n        raise RuntimeError('x')\nraise W()\n"
    ctype, body = multipart.encode([
        multipart.Part(name="metadata", content_type="application/json", data=json.dumps(metadata).encode()),
        multipart.Part(name="worker.py", filename="worker.py", content_type="text/x-python", data=source)])
    refused = corral.admin("PUT", "/accounts/local/workers/dispatch/namespaces/default/scripts/weirdimport",
                           body, ctype)
    assert refused.status == 400 and "W: <exception str() failed>" in refused.text, refused.text
