"""What a tenant's calls in flight make the supervisor keep is bounded.

A call's head and arguments stay in the supervisor's memory while the call
waits (for a connection, a cold start, a busy callee).
These tests attack that as a compromised child would (raw frames on its
channel: the jail, not the runtime, is the boundary) against a real
``corral serve``, and check the bound (supervisor.limits.held_calls): the
calls past it refused in words that say why, the supervisor's memory not
grown by what the child sent, what was held given back when the calls end.
"""

from __future__ import annotations

import pytest

from tests.harness import Corral, status_field
from tests.test_red_team_sweep import healthy

HOLDER = r'''
import asyncio, json, sys
import workers
from workers import DurableObject, Response, WorkerEntrypoint

M = sys.modules["protocol.messages"]
encode_rpc = sys.modules["sandbox.bindings.durable_objects"].encode_rpc


class Busy(DurableObject):
    async def hang(self, seconds):
        await asyncio.sleep(seconds)
        return "done"

    async def take(self, data):
        return len(data)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        query = dict(part.split("=") for part in request.url.split("?")[1].split("&"))
        calls, hang = int(query["calls"]), float(query["hang"])
        stub = self.env.OBJ.getByName("busy")
        runtime = workers._runtime
        inv = workers.current_invocation.get()
        busy = None
        if hang:
            # The object kept busy, awaiting a timer (its input gate open meanwhile).
            pending = len(runtime.calls)
            busy = asyncio.ensure_future(stub.hang(hang))
            while len(runtime.calls) == pending:
                await asyncio.sleep(0)
        # 900 KB of arguments inline in each frame (the runtime itself
        # streams anything past 512 KB), the same bytes sent every time.
        packed, _ = await encode_rpc([b"x" * 900_000], "take()")  # (bytes, the functions it carries)
        first = runtime._next_call
        runtime._next_call = first - 10**6
        answers = []
        for i in range(1, calls + 1):
            future = runtime.loop.create_future()
            runtime.calls[first - i] = future
            answers.append(future)
            runtime.send(M.BindingCall(first - i, inv, "OBJ", "call",
                                       [stub.id._hex, "busy", "take", packed]))
            await runtime.channel.drain(4 << 20)  # this child's memory holds no more of them
        results = await asyncio.gather(*answers)
        if busy is not None:
            await busy
        refused = [r.error.message for r in results if type(r) is M.SubFailed]
        return Response(json.dumps({"answered": len(results) - len(refused),
                                    "refused": len(refused),
                                    "words": refused[0] if refused else "",
                                    "others": sorted(set(refused[1:]) - set(refused[:1]))[:3]}))
'''


def peak_rss_mb(pid: int) -> float:
    """The process's resident high-water mark (VmHWM), in MB."""
    return status_field(pid, "VmHWM") / 1024


def test_calls_waiting_at_a_busy_object_hold_no_more_than_the_callers_memory_limit(
        fresh_corral: Corral) -> None:
    corral = fresh_corral
    corral.deploy("held-calls", HOLDER, bindings=[
        {"type": "durable_object_namespace", "name": "OBJ", "class_name": "Busy"}])
    host = "held-calls.localhost"
    assert corral.request("/?calls=1&hang=0", host=host).json()["answered"] == 1
    before = peak_rss_mb(corral.proc.pid)

    # 300 calls of 900 KB to an object kept busy for 3 s: 270 MB the
    # supervisor would keep if they waited there. The object's input gate is
    # in its child (sandbox.durable_objects.InputGate) and open while it
    # awaits something other than its storage, as on Cloudflare: the calls go
    # on to the object and are answered meanwhile, and the supervisor keeps
    # none of them (what is refused past the caller's memory limit, say why).
    r = corral.request("/?calls=300&hang=3", host=host, timeout=120)
    assert r.status == 200, r
    out = r.json()
    assert out["answered"] + out["refused"] == 300 and out["answered"] >= 100, out
    assert not out["refused"] or ("too many calls in flight" in out["words"]
                                  and "memory limit" in out["words"] and not out["others"]), out
    grown = peak_rss_mb(corral.proc.pid) - before
    assert grown < 200, f"the supervisor's peak grew by {grown:.0f} MB"

    # Once they were answered, what they held is free again: none refused.
    r = corral.request("/?calls=40&hang=0", host=host, timeout=60)
    assert r.json() == {"answered": 40, "refused": 0, "words": "", "others": []}, r
    healthy(corral)


CALLER = r"""
from workers import DurableObject, Request, Response, WorkerEntrypoint, fetch

BIG = {"x-filler": "f" * 127_000}  # with the URL's 15,900: ~143 KB a head, near the caps
ARGS = b"a" * 450_000  # inline in the call's frame (the runtime streams past 512 KB)


class Quick(DurableObject):
    async def take(self, data):
        return len(data)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        query = request.url.split("?", 1)[1]
        mode, n, target = query.split("&", 2)
        target = target[len("target="):]
        refused, words = 0, ""
        for _ in range(int(n)):
            try:
                if mode == "binding":  # a binding call's task
                    await self.env.OBJ.getByName("quick").take(ARGS)
                    continue
                if mode == "service":  # answered from the callee's head: no task
                    r = await self.env.CALLEE.fetch(Request(target, headers=BIG))
                else:  # an outbound request: a task of the call's own
                    r = await fetch(target, headers=BIG)
                await r.text()
            except Exception as exc:
                refused += 1
                words = str(exc)
        return Response(f"refused {refused}" + (f": {words}" if refused else ""))
"""

CALLEE = """
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("ok")
"""


@pytest.mark.parametrize("mode, calls", [("service", 960), ("fetch", 960), ("binding", 320)])
def test_what_answered_calls_held_is_given_back(corral: Corral, upstream, mode: str, calls: int) -> None:
    """Calls of one request, each answered before the next, that would hold
    137-144 MB together, past the bound (128 MiB), if what a call held were
    not given back when it is answered: 960 with ~143 KB heads to another
    worker (the warm path, no task) and as outbound requests (a task each),
    320 with 450 KB of arguments to a Durable Object. (What an invocation's
    calls held is given back when it ends in any case.)"""
    corral.deploy("held-callee", CALLEE, namespace=None)
    corral.deploy("held-caller", CALLER, bindings=[
        {"type": "service", "name": "CALLEE", "service": "held-callee"},
        {"type": "durable_object_namespace", "name": "OBJ", "class_name": "Quick"}])
    target = (upstream.url("/echo/held") if mode == "fetch" else "https://callee/") + "?" + "p" * 15_900
    r = corral.request(f"/?{mode}&{calls}&target={target}", host="held-caller.localhost", timeout=120)
    assert (r.status, r.text) == (200, "refused 0"), r


STREAMED_PUTS = '''
import asyncio
from workers import Response, WorkerEntrypoint, JsException

CHUNK = b"z" * 65536


async def value(chunks):
    for _ in range(chunks):
        yield CHUNK


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        async def put(i):
            try:
                await self.env.KV.put(f"k{i}", value(24 * 16))  # 24 MiB each, 64 KiB in the child
                return "stored"
            except JsException as e:
                return e.message
        return Response.json(await asyncio.gather(*[put(i) for i in range(8)]))
'''


def test_streamed_binding_values_count_against_the_callers_bound(corral: Corral) -> None:
    """Each streamed KV value was buffered whole in the supervisor, counted
    nowhere: thirty 24 MiB puts at once from one 128 MB child held 1.5 GB of
    the supervisor's memory. A streamed value's bytes now count, as they
    arrive, against what a child's calls may make the supervisor keep (its
    memory limit): eight at once, 192 MiB, cannot all be held."""
    corral.deploy("streamer", STREAMED_PUTS, bindings=[{"type": "kv_namespace", "name": "KV", "namespace_id": "big"}])
    resp = corral.request("/", host="streamer.localhost", timeout=120)
    assert resp.status == 200, (resp, corral.log()[-2000:])
    outcomes = resp.json()
    refused = [o for o in outcomes if o != "stored"]
    assert refused and all("too many calls in flight" in o for o in refused), outcomes
    assert "stored" in outcomes, outcomes
