"""Six open connections per invocation, the rest in line (Cloudflare's rule).

A worker's seventh simultaneous ``fetch()`` waits until one of its first six
closes; six unread responses and a seventh fetch are a deadlock that
cancels the least recently used. Over a real ``corral serve`` and a local
upstream that counts the requests it holds at once.
"""

from __future__ import annotations

import json
import time

import pytest
import trio
import trio.testing

from supervisor.limits.open_connections import ConnectionCancelled, OpenConnections
from tests.harness import Corral
from tests.upstream import Upstream

DISPATCHER = r'''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        name = request.headers.get("host", "").split(":")[0].split(".")[0]
        try:
            return await self.env.dispatcher.get(name).fetch(request)
        except Exception as e:
            return Response.json({"error": type(e).__name__, "message": str(e)}, status=502)
'''

# The platform's outbound worker: passes every fetch on.
EGRESS = r'''
from workers import WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await fetch(request)
'''

TENANT = r'''
import asyncio
from urllib.parse import parse_qs, urlsplit
from workers import Response, WorkerEntrypoint, fetch


async def outcome(make):
    try:
        return {"ok": await make()}
    except Exception as e:
        return {"error": type(e).__name__, "message": str(e)}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        q = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
        target = q["target"]
        if q["do"] == "burst":
            # n fetches at once, each body read as it comes.
            delay = q.get("delay", "0.3")
            async def one(i):
                # Long enough for every fetch of the burst to have been started.
                r = await fetch(f"{target}/slow?delay={delay}&n={i}")
                return await r.text()
            return Response.json(await asyncio.gather(*(outcome(lambda i=i: one(i))
                                                        for i in range(int(q["n"])))))
        if q["do"] == "unread":
            # Six responses kept unread, then a seventh fetch: a deadlock
            # unless one of the six is cancelled.
            kept = [await fetch(f"{target}/echo/quick/{i}") for i in range(6)]
            async def seventh():
                return await (await fetch(f"{target}/echo/quick/6")).text()
            last = await asyncio.wait_for(outcome(seventh), 20)
            bodies = [await outcome(r.text) for r in kept]
            return Response.json({"seventh": last, "kept": bodies})
        return Response("unknown", status=400)
'''


@pytest.fixture()
def upstream():
    """One of its own per test: ``most_in_flight`` is this test's."""
    with Upstream() as up:
        yield up


@pytest.fixture(scope="module")
def corral(tmp_path_factory):
    server = Corral(tmp_path_factory.mktemp("corral-open-connections")).start()
    try:
        server.deploy("egress", EGRESS, namespace=None)
        server.deploy_dispatcher(DISPATCHER)
        server.deploy_dispatcher(DISPATCHER, name="dispatch_out", pattern="*.out.localhost/*",
                                 outbound={"worker": {"service": "egress"}})
        server.deploy("opener", TENANT)
        yield server
    finally:
        server.stop()


def _run(corral: Corral, upstream: Upstream, host: str, **query: object) -> object:
    target = upstream.url("")
    path = "/?" + "&".join(f"{k}={v}" for k, v in {"target": target, **query}.items())
    resp = corral.request(path, host=host, timeout=60)
    assert resp.status == 200, resp.text
    return json.loads(resp.text)


@pytest.mark.parametrize("host", ["opener.localhost", "opener.out.localhost"],
                         ids=["direct", "through the outbound worker"])
def test_a_burst_of_fetches_holds_six_connections_open_and_the_rest_wait_their_turn(
        corral, upstream, host):
    results = _run(corral, upstream, host, do="burst", n=15)
    assert [r.get("ok") for r in results] == ["slow done\n"] * 15, results
    assert sorted(r["path"] for r in upstream.seen("/slow")) == sorted(
        f"/slow?delay=0.3&n={i}" for i in range(15))
    most = upstream.most_in_flight
    assert most == 6, f"the upstream held {most} of one invocation's requests at once"


def test_a_scripts_invocations_together_hold_at_most_its_share(tmp_path, upstream):
    """Six per invocation, and a script's invocations together at most
    ``limits.script_open_connections``: one tenant's clients (each an
    invocation holding six upstream sockets) filled the supervisor's open-file
    table, and every tenant's accepts and cold starts failed (red team 5)."""
    import threading

    server = Corral(tmp_path / "state", config="[limits]\nscript_open_connections = 8\n").start()
    try:
        server.deploy_dispatcher(DISPATCHER)
        server.deploy("opener", TENANT)
        results: list = []
        clients = [threading.Thread(target=lambda: results.append(
            _run(server, upstream, "opener.localhost", do="burst", n=6, delay=1))) for _ in range(3)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=60)
    finally:
        server.stop()
    assert [r.get("ok") for burst in results for r in burst] == ["slow done\n"] * 18, results
    most = upstream.most_in_flight
    assert most == 8, f"the upstream held {most} of one script's requests at once"


def test_one_tenants_share_is_not_anothers_through_the_outbound_worker(tmp_path, upstream):
    """The platform's outbound worker fetches for every tenant: the share was
    its child's, and one tenant's slow fetches through it held all of it,
    every other tenant's fetches waiting (red team 6)."""
    import threading

    server = Corral(tmp_path / "state", config="[limits]\nscript_open_connections = 4\n").start()
    try:
        server.deploy("egress", EGRESS, namespace=None)
        server.deploy_dispatcher(DISPATCHER, outbound={"worker": {"service": "egress"}})
        server.deploy("hog", TENANT)
        server.deploy("victim", TENANT)
        hog: list = []
        slow = threading.Thread(target=lambda: hog.append(
            _run(server, upstream, "hog.localhost", do="burst", n=4, delay=4)))
        slow.start()
        deadline = time.monotonic() + 30
        while len(upstream.seen("/slow")) < 4:  # the hog holds its four
            assert time.monotonic() < deadline, "the hog's fetches never arrived"
            time.sleep(0.01)  # polling the upstream's record: it has no event to wait on
        quick = _run(server, upstream, "victim.localhost", do="burst", n=1, delay=0)
        assert [r.get("ok") for r in quick] == ["slow done\n"], quick
        assert slow.is_alive(), "the victim was answered only once the hog was done"
        slow.join(timeout=60)
    finally:
        server.stop()
    assert [r.get("ok") for r in hog[0]] == ["slow done\n"] * 4, hog


def test_six_unread_responses_and_a_seventh_fetch_cancel_the_oldest(corral, upstream):
    out = _run(corral, upstream, "opener.localhost", do="unread")
    assert _path(out["seventh"]) == "/echo/quick/6", out
    oldest, *rest = out["kept"]
    assert "error" in oldest, out
    assert "connections open" in oldest["message"] and "at most 6" in oldest["message"], oldest
    assert [_path(r) for r in rest] == [f"/echo/quick/{i}" for i in range(1, 6)], out


def _path(outcome: dict) -> str | None:
    """The path the upstream's echo saw, from a read that succeeded."""
    return json.loads(outcome["ok"])["path"] if "ok" in outcome else None


# ---------------------------------------------------------------------------
# The line's rules, on trio's mock clock (no processes: the state machine alone)
# ---------------------------------------------------------------------------

class _Source:
    """A response body that gives one chunk when told to, then its end."""

    def __init__(self) -> None:
        self.go = trio.Event()
        self.closed = False

    async def receive(self) -> bytes:
        await self.go.wait()
        return b""

    def close(self) -> None:
        self.closed = True


def _on_mock_clock(test) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_line_is_first_come_first_served_and_a_cancelled_waiter_leaves_it():
    async def main() -> None:
        line = OpenConnections(2)
        first, second = await line.open(), await line.open()
        got: list[str] = []
        leaving = trio.CancelScope()

        async def wait(name: str, scope: trio.CancelScope | None = None) -> None:
            with scope or trio.CancelScope():
                await line.open()
                got.append(name)

        async with trio.open_nursery() as nursery:
            for name, scope in (("a", None), ("b", leaving), ("c", None)):
                nursery.start_soon(wait, name, scope)
                await trio.sleep(1)  # in this order
            assert got == []
            leaving.cancel()  # "b" leaves the line before its turn
            first.close()
            await trio.sleep(1)
            assert got == ["a"]
            second.close()
            await trio.sleep(1)
            assert got == ["a", "c"]

    _on_mock_clock(main)


def test_a_connection_being_read_is_no_deadlock_and_an_idle_line_cancels_the_oldest():
    async def main() -> None:
        line = OpenConnections(2)
        sources = [_Source(), _Source()]
        bodies = []
        for source in sources:
            bodies.append((await line.open()).carry(source))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bodies[1].receive)  # the second is being read from upstream
            await trio.sleep(0)
            got = []

            async def third() -> None:
                got.append(await line.open())

            nursery.start_soon(third)
            await trio.sleep(5)  # far past IDLE_S: no deadlock while one is read
            assert got == [] and not sources[0].closed
            sources[1].go.set()  # that body ends: its place goes to the third
            await trio.sleep(1)
            assert len(got) == 1
            # Both open bodies idle now (the first never read, the third's
            # head just in), and a fourth fetch waits: the oldest is cancelled.
            got[0].carry(_Source())
            nursery.start_soon(third)
            await trio.sleep(1)
            assert len(got) == 2 and sources[0].closed
            with pytest.raises(ConnectionCancelled, match="at most 2 may be open at once"):
                await bodies[0].receive()
            nursery.cancel_scope.cancel()

    _on_mock_clock(main)
