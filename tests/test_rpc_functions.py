"""Functions crossing Workers RPC, as Cloudflare's Python SDK passes them.

A function passed as an argument reaches the callee as a stub that runs it
in the caller's process; a function returned reaches the caller as a stub
usable until the caller's request ends; a stub received can be passed on
(workers-py's python-rpc test: ``caller``, ``new_counter``, ``use_counter``).
Over service bindings and Durable Object stubs alike. A stub is only
callable by the invocation it was handed to: one kept past its request, or
a handle another invocation never received, is workerd's "RPC stub used
after being disposed." error.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator

import pytest

from tests.harness import Corral

SERVICE = '''
from workers import DurableObject, WorkerEntrypoint, Response

KEPT = []
LATE = []


class Methods:
    async def caller(self, func, *args):
        return await func(*args)

    async def new_counter(self):
        value = 0

        def increment(amount=0):
            nonlocal value
            value += amount
            return value

        return increment

    async def use_counter(self, counter):
        return await counter(10)

    async def keep(self, func):
        KEPT.append(func)
        return "kept"

    async def call_kept(self):
        return await KEPT[-1]()

    async def later(self, func):
        """Calls ``func`` back once this call has returned (in waitUntil)."""
        import asyncio

        async def run():
            await asyncio.sleep(0.1)
            try:
                LATE.append(await func())
            except Exception as exc:
                LATE.append(str(exc))

        self.ctx.waitUntil(run())
        return "scheduled"

    async def late_results(self):
        return list(LATE)


class Default(Methods, WorkerEntrypoint):
    async def fetch(self, request):
        return Response("svc")


class Obj(Methods, DurableObject):
    pass
'''

CLIENT = SERVICE.replace("class Default(Methods", "class Service(Methods") + '''
from urllib.parse import urlparse


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlparse(request.url).path
        target = self.env.SVC
        if path.startswith("/do"):
            target = self.env.OBJ.get(self.env.OBJ.idFromName("one"))
            path = path[3:]
        if path == "/args":
            def test_func():
                return "test"

            n = 0

            def inc():
                nonlocal n
                n += 1
                return n

            async def add(a, b):
                return {"sum": a + b}

            out = [await target.caller(test_func), await target.caller(inc),
                   await target.caller(inc), (await target.caller(add, 2, 3))["sum"]]
            return Response.json(out)
        if path == "/counter":
            counter = await target.new_counter()
            a = await counter(2)
            b = await counter(1)
            second = await target.new_counter()
            forwarded = await target.use_counter(second)
            return Response.json([a, b, await counter(-5), forwarded, await second(0), bool(counter)])
        if path == "/later":
            return Response(await target.later(lambda: "ran after the call"))
        if path == "/late":
            return Response.json(await target.late_results())
        if path == "/fetching":  # the tenant's own function, called back: its fetch is the tenant's
            from workers import fetch

            async def fetch_it():
                return await (await fetch("https://example.invalid/")).text()

            return Response(await target.caller(fetch_it))
        if path == "/keep":
            return Response(await target.keep(lambda: "late"))
        if path == "/kept":
            try:
                await target.call_kept()
            except Exception as exc:
                return Response(f"{type(exc).__name__}: {exc}")
            return Response("called")
        return Response("?", status=404)
'''

#: Tenant code that names stub handles it was never given, on its own
#: invocation's behalf: what a compromised child can send.
HOSTILE = '''
import workers
from workers import WorkerEntrypoint, Response


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        runtime = workers._runtime
        out = []
        for handle in ("1", "2", "3", "-1", "x"):
            try:
                await runtime.sub_request("stub", workers.Request("https://rpc.invalid/", method="POST",
                                                                   body=b"\\x90"), target=handle, rpc="call")
                out.append("called")
            except Exception as exc:
                out.append(str(exc))
        try:  # a fetch() made an RPC call: the outbound worker's methods are no tenant's to call
            await runtime.sub_request("fetch", workers.Request("https://example.invalid/", redirect="manual"),
                                      rpc="secret")
            out.append("called")
        except Exception as exc:
            out.append(str(exc))
        try:  # forwarding a stub it does not hold
            await runtime.sub_request("service", workers.Request("https://rpc.invalid/caller", method="POST",
                                                                  body=b"\\x91\\xd4\\x08\\x00"),
                                      binding="SVC", rpc="caller", functions=[-1])
            out.append("forwarded")
        except Exception as exc:
            out.append(str(exc))
        return Response.json(out)
'''

DISPOSED = "RPC stub used after being disposed."

#: The platform's outbound worker: every fetch of the tenants' answers this.
EGRESS = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("seen by egress")

    async def secret(self):
        return "the platform's secret"
'''


@pytest.fixture(scope="module")
def corral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corral]:
    server = Corral(tmp_path_factory.mktemp("rpc-functions")).start()
    try:
        server.deploy("egress", EGRESS, namespace=None)
        server.deploy_dispatcher(outbound={"worker": {"service": "egress"}})
        server.deploy("fnsvc", textwrap.dedent(SERVICE), namespace=None)
        bindings = [{"type": "service", "name": "SVC", "service": "fnsvc"},
                    {"type": "durable_object_namespace", "name": "OBJ", "class_name": "Obj"}]
        server.deploy("fnclient", textwrap.dedent(CLIENT), bindings=bindings)
        server.deploy("fnhostile", textwrap.dedent(HOSTILE), bindings=bindings[:1])
        yield server
    finally:
        server.stop()


def _get(corral: Corral, path: str, host: str = "fnclient.localhost"):  # noqa: ANN202
    resp = corral.request(path, host=host)
    assert resp.status == 200, (resp.status, resp.text, corral.log()[-3000:])
    return resp


@pytest.mark.parametrize("prefix", ["", "/do"])
def test_functions_passed_as_arguments_are_called_back(corral: Corral, prefix: str) -> None:
    """A sync function, a closure that counts, an async function with
    arguments: each runs in the caller while the call is under way."""
    assert _get(corral, f"{prefix}/args").json() == ["test", 1, 2, 5]


@pytest.mark.parametrize("prefix", ["", "/do"])
def test_returned_function_and_forwarded_stub(corral: Corral, prefix: str) -> None:
    """``new_counter()`` returns a closure the caller calls again and again,
    its state kept in the callee's process; a stub passed on to another call
    (``use_counter``) reaches the same function."""
    assert _get(corral, f"{prefix}/counter").json() == [2, 3, -2, 10, 10, True]


@pytest.mark.parametrize("prefix", ["", "/do"])
def test_stub_kept_past_its_request_is_disposed(corral: Corral, prefix: str) -> None:
    assert _get(corral, f"{prefix}/keep").text == "kept"
    # Kept past the call that handed it over, the stub is disposed.
    assert _get(corral, f"{prefix}/kept").text.endswith(f": {DISPOSED}")


def test_stub_ids_not_granted_are_refused(corral: Corral) -> None:
    """Handles another invocation holds, or none does, name nothing for
    this one; nor can it pass on a stub it does not hold. The platform
    stays up and serves the others."""
    assert _get(corral, "/counter").json()[0] == 2  # some invocation held handles 1 and 2
    out = _get(corral, "/", host="fnhostile.localhost").json()
    assert out == [DISPOSED] * 5 + ["a fetch subrequest makes no RPC call", DISPOSED], out
    assert _get(corral, "/counter").json() == [2, 3, -2, 10, 10, True]


@pytest.mark.parametrize("prefix", ["", "/do"])
def test_a_stub_received_as_an_argument_is_disposed_when_the_call_returns(corral: Corral, prefix: str) -> None:
    """Cloudflare disposes stubs received as parameters when the call
    returns: a callee calling one back from waitUntil ran the caller's code
    after the caller's request was over."""
    assert _get(corral, f"{prefix}/later").text == "scheduled"
    deadline = time.monotonic() + 10
    while not (late := _get(corral, f"{prefix}/late").json()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert late[-1] == DISPOSED, late


def test_a_tenants_function_called_back_fetches_through_its_outbound_worker(corral: Corral) -> None:
    """The function runs as the invocation that made it: its fetch went
    straight to the network, past the platform's outbound worker."""
    assert _get(corral, "/fetching").text == "seen by egress"
