"""A dispatch worker's ``return await stub.fetch(request)`` is answered without
a round trip through its child (sandbox.tail_call).

The supervisor answers the dispatcher's invocation with the user worker's
response the moment that comes, when the dispatcher's child said the call was
in tail position; the dispatcher's coroutine still finishes afterwards. These
tests prove the client is answered while the dispatcher's child cannot run
(it is stopped with SIGSTOP), that code which could still change the
response (a ``with`` exit, a ``finally``, a helper coroutine) is never
skipped, and that the trace is the same as before.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

import pytest

from sandbox import tail_call
from tests.harness import Corral, read_response
from tests.test_observability import wait_for
from tests.upstream import pattern

#: The dispatcher: its own pid on /pid, else a tail call.
TAIL_DISPATCHER = """
import os
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/pid"):
            return Response(str(os.getpid()))
        name = request.headers.get("host", "").split(".")[0]
        try:
            return await self.env.dispatcher.get(name).fetch(request)
        except Exception as e:
            return Response(f"failed: {e}", status=502)
"""

#: Tells the upstream it started, then answers with its request's body.
ECHOER = """
from workers import Response, WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        await fetch("{started}")
        body = await request.text()
        return Response("got " + body, status=201, headers={{"x-echoer": "yes"}})
"""

HELLO = """
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("hello", headers={"x-from": "hello"})
"""

#: Dispatchers whose call is not the last thing their handler does.
NOT_TAILS = {
    "with-exit": """
from workers import Response, WorkerEntrypoint


class Checked:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        raise RuntimeError("the with block's exit ran")


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        with Checked():
            return await self.env.dispatcher.get("hello").fetch(request)
""",
    "finally": """
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        try:
            return await self.env.dispatcher.get("hello").fetch(request)
        finally:
            raise RuntimeError("the finally block ran")
""",
    "helper": """
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await self.relay(request)

    async def relay(self, request):
        response = await self.env.dispatcher.get("hello").fetch(request)
        return Response("relayed " + await response.text(), headers={"x-relayed": "yes"})
""",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream):
    corral = Corral(tmp_path_factory.mktemp("tail-call"), config="log_invocations = true\n").start()
    try:
        corral.deploy_dispatcher(TAIL_DISPATCHER, pattern="*.tail.test/*")
        for name, source in NOT_TAILS.items():
            corral.deploy_dispatcher(source, name=f"d-{name}", pattern=f"{name}.localhost/*")
        corral.deploy("echoer", ECHOER.format(started=upstream.url("/echo/started")), namespace="default")
        corral.deploy("hello", HELLO, namespace="default")
        yield corral
    finally:
        corral.stop()


def _trace_of(server: Corral, script: str, request_id: str) -> dict[str, Any] | None:
    for line in server.log_events():
        trace = line.get("trace") or {}
        if trace.get("scriptName") == script and trace.get("requestId") == request_id:
            return trace
    return None


def test_the_client_is_answered_while_the_dispatchers_child_is_stopped(server, upstream):
    pid = int(server.request("/pid", host="echoer.tail.test").text)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: echoer.tail.test\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        # The user worker runs (so the dispatcher's call went out) and waits for the body.
        assert upstream.wait_for(lambda: upstream.seen("/echo/started"), timeout=20)
        os.kill(pid, signal.SIGSTOP)
        try:
            sock.sendall(b"5\r\nhello\r\n0\r\n\r\n")
            head, body = read_response(sock)
        finally:
            os.kill(pid, signal.SIGCONT)
    assert head.startswith(b"HTTP/1.1 201 "), head
    assert b"x-echoer: yes" in head.lower()
    assert body == b"got hello"
    request_id = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                      if line.lower().startswith(b"x-corral-request-id:"))
    # The dispatcher's coroutine finished after all: its trace is whole.
    trace = wait_for(lambda: _trace_of(server, "dispatch", request_id), timeout=20,
                     what="the dispatcher's trace")
    assert trace["outcome"] == "ok"
    assert trace["event"]["response"]["status"] == 201
    assert [(c["scriptName"], c["outcome"]) for c in trace["children"]] == [("echoer", "ok")]
    # And the child serves on.
    assert server.request("/", host="hello.tail.test").text == "hello"


def _voluntary_switches(pid: int) -> int:
    """How often the process has slept (each a wake-up to come)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def test_the_news_that_its_call_was_answered_costs_a_busy_dispatcher_no_wake_up(server, upstream):
    """While the dispatcher's child has other invocations in flight, it
    learns that a tail call was answered with the next frame it is sent (here
    the next request's Invoke) instead of in a wake-up of its own: one
    wake-up per request, where the news alone had cost a second one. Its
    trace still ends, and its wall time is its own."""
    pid = int(server.request("/pid", host="hello.tail.test").text)
    for _ in range(20):
        assert server.request("/", host="hello.tail.test").text == "hello"
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as held:
        # An invocation of the dispatcher's that stays in flight: the user
        # worker waits for a request body that has not been sent yet.
        started = len(upstream.seen("/echo/started"))
        held.sendall(b"POST /x HTTP/1.1\r\nHost: echoer.tail.test\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        assert upstream.wait_for(lambda: len(upstream.seen("/echo/started")) > started, timeout=20)
        before = _voluntary_switches(pid)
        requests = 300
        for _ in range(requests):
            assert server.request("/", host="hello.tail.test").text == "hello"
        woken = _voluntary_switches(pid) - before
        held.sendall(b"5\r\nhello\r\n0\r\n\r\n")
        head, body = read_response(held)
    assert head.startswith(b"HTTP/1.1 201 ") and body == b"got hello", head
    assert woken < 1.5 * requests, f"the dispatcher woke {woken} times for {requests} requests"
    # The last one's news went when the loop went idle: its trace is whole.
    resp = server.request("/", host="hello.tail.test")
    trace = wait_for(lambda: _trace_of(server, "dispatch", resp.headers["x-corral-request-id"]),
                     timeout=20, what="the dispatcher's trace")
    assert trace["outcome"] == "ok" and trace["wallTime"] < 1000, trace


def test_a_call_answered_early_still_streams_a_large_body_whole(server):
    server.deploy("big", """
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(b"x" * 3_000_000)
""", namespace="default")
    resp = server.request("/", host="big.tail.test")
    assert resp.status == 200
    assert resp.headers["content-length"] == "3000000"
    assert resp.body == b"x" * 3_000_000


def test_a_failed_call_still_reaches_the_dispatchers_own_code(server):
    resp = server.request("/", host="nobody.tail.test")
    assert resp.status == 502
    assert resp.text.startswith("failed: Worker not found")


@pytest.mark.parametrize("form", ["with-exit", "finally"])
def test_code_after_the_call_still_decides_the_response(server, form):
    resp = server.request("/", host=f"{form}.localhost")
    assert resp.status == 500, resp.text
    assert resp.headers.get("x-from") is None


def test_a_call_a_helper_returns_is_not_the_handlers_own(server):
    resp = server.request("/", host="helper.localhost")
    assert resp.status == 200
    assert resp.text == "relayed hello"
    assert resp.headers["x-relayed"] == "yes"


async def _plain(stub, request):
    return await stub.fetch(request)


async def _kept(stub, request):
    response = await stub.fetch(request)
    return response


async def _guarded(stub, request):
    try:
        return await stub.fetch(request)
    except Exception:
        return None


async def _finally(stub, request):
    try:
        return await stub.fetch(request)
    finally:
        print("done")


async def _with(stub, request, lock):
    with lock:
        return await stub.fetch(request)


def _send_offsets(function) -> list[int]:
    import dis

    return [i.offset for i in dis.get_instructions(function) if i.opname == "SEND"]


@pytest.mark.parametrize(("function", "tail"), [
    (_plain, True), (_guarded, True), (_kept, False), (_finally, False), (_with, False)])
def test_the_bytecode_says_which_awaits_are_returned_at_once(function, tail):
    (offset,) = _send_offsets(function)
    assert tail_call._returns_at(function.__code__, offset) is tail


def test_a_fetch_returned_as_it_is_keeps_the_upstreams_answer(server, upstream):
    """``return await fetch(url)`` (a proxy, as Cloudflare's examples write
    it) is a tail call too: the upstream's status, reason, headers and a
    streamed body of known length reach the client as the worker returned them."""
    server.deploy("proxy", f"""
from workers import WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = request.url.split("/", 3)[3]
        return await fetch("{upstream.url("/")}" + path)
""", namespace="default")
    resp = server.request("/big?n=300000", host="proxy.tail.test")
    assert resp.status == 200
    assert resp.headers["content-length"] == "300000"
    assert resp.body == b"".join(pattern(300000))
    resp = server.request("/reason?code=299&text=Fine%20Thanks", host="proxy.tail.test")
    assert (resp.status, resp.reason) == (299, "Fine Thanks")
    resp = server.request("/echo/x", host="proxy.tail.test")
    assert resp.headers["content-type"].startswith("application/json")


def test_a_status_without_a_body_goes_through_the_child_as_before(server):
    server.deploy("empty", """
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(None, status=204, headers={"x-empty": "yes"})
""", namespace="default")
    resp = server.request("/", host="empty.tail.test")
    assert (resp.status, resp.body, resp.headers["x-empty"]) == (204, b"", "yes")
