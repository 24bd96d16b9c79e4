"""The supervisor's loop gets a core of its own while it is the busy hub.

The rule is a pure function of one second's reading (tested as a table);
what a held core means is tested on a real server with ``hub_core = "on"``
(the loop's thread on the hub core, a child that has served on the others,
spares and zygotes, including one started while it held, on every CPU) and
``"off"`` (nothing moves).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from supervisor.pool.hub_core import (
    HUB_IDLE_WASTED,
    RELEASE_BELOW,
    RESERVE_ABOVE,
    SATURATED,
    SHARE_FROM_ACTIVE,
    TENANTS_SATURATED_IDLE,
    UNSHARE_BELOW_ACTIVE,
    Load,
    decide,
    share_hub,
)
from tests.harness import Corral, read_each
from tests.test_observability import metric

HELLO = r'''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("hello")
'''

CPUS = frozenset(os.sched_getaffinity(0))
needs_two_cores = pytest.mark.skipif(len(CPUS) < 2, reason="the split needs two CPUs")


def test_the_hub_takes_its_core_only_while_busy_and_calm_and_gives_it_back_when_tenants_need_it() -> None:
    busy, idle_loop = RESERVE_ABOVE + 0.05, RELEASE_BELOW - 0.05
    half_busy = 1.0 - HUB_IDLE_WASTED - 0.05  # between the two thresholds
    saturated = TENANTS_SATURATED_IDLE / 2
    cases = [
        # held before, loop CPU, calm, tenants' idle -> held after
        (False, busy, True, 0.5, True),
        (False, busy, False, 0.5, False),  # a storm of cold starts: every core to them
        (False, half_busy, True, 0.5, False),  # not busy enough to take it
        (True, half_busy, True, 0.5, True),  # ... but enough to keep it (hysteresis)
        (True, idle_loop, True, 0.5, False),
        (True, busy, False, 0.5, False),
        (True, half_busy, True, saturated, False),  # CPU-heavy tenants: the core goes back (SATURATED)
        (True, 0.95, True, saturated, True),  # the loop fills its core: it keeps it
    ]
    for held, loop, calm, tenants_idle, expected in cases:
        after, why = decide(held, Load(hub_busy=loop, calm=calm, tenants_idle=tenants_idle))
        assert after is expected, (held, loop, calm, tenants_idle)
        assert bool(why) == (after != held), "a change says why, and only a change"
        assert (why == SATURATED) == (held and not after and tenants_idle == saturated and calm
                                      and loop >= RELEASE_BELOW), "only saturated tenants back it off"


def test_dispatchers_share_the_hub_core_only_while_many_tenants_take_turns() -> None:
    between = (SHARE_FROM_ACTIVE + UNSHARE_BELOW_ACTIVE) // 2
    cases = [
        # shared before, tenant children that served last period -> shared after
        (False, 2, False),  # one or two tenants: the loop's core is theirs to fill, not the dispatcher's
        (False, between, False),
        (False, SHARE_FROM_ACTIVE, True),
        (True, between, True),  # hysteresis: it does not flap at the edge
        (True, UNSHARE_BELOW_ACTIVE - 1, False),
    ]
    for shared, active, expected in cases:
        assert share_hub(shared, active) is expected, (shared, active)


def _wait_for(check, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _affinity(pid: int) -> frozenset[int]:
    return frozenset(os.sched_getaffinity(pid))


def _serve(server: Corral, name: str) -> None:
    server.deploy(name, HELLO, namespace=None)
    server.route(f"{name}.localhost/*", name)
    resp = server.request("/", host=f"{name}.localhost")
    assert resp.status == 200, (resp, server.log()[-2000:])


@needs_two_cores
def test_while_held_the_loop_is_alone_on_its_core_and_warm_children_on_the_others(tmp_path: Path) -> None:
    server = Corral(tmp_path / "state",
                    config='[pool]\nhub_core = "on"\nspares = 2\nzygote_max_children = 6\n').start()
    hub = min(CPUS)
    try:
        supervisor = server.proc.pid  # type: ignore[union-attr]
        # The log line follows the affinity change: wait for both.
        _wait_for(lambda: _affinity(supervisor) == {hub} and "hub_core.held" in server.log(),
                  "the loop's thread on the hub core")
        assert "hub_core.held" in server.log()
        _serve(server, "first")
        zygote = server.zygote()
        assert zygote and _affinity(zygote) == CPUS, "the zygote forks for every core"
        _wait_for(lambda: CPUS - {hub} in read_each(server.children(), _affinity).values(),
                  "the child that served off the hub core")
        spread = read_each(server.children(), _affinity)
        assert list(spread.values()).count(CPUS - {hub}) == 1, spread  # one served; spares anywhere
        assert all(cpus in (CPUS, CPUS - {hub}) for cpus in spread.values()), spread
        for i in range(6):  # past zygote_max_children: a zygote started while the core is held
            _serve(server, f"t{i}")
        _wait_for(lambda: "zygote.rotated" in server.log(), "a rotation")
        _wait_for(lambda: server.zygote() not in (None, zygote), "the next zygote")
        assert _affinity(server.zygote()) == CPUS, "a zygote started while held inherited the hub core"  # type: ignore[arg-type]
        assert _affinity(supervisor) == {hub}
        assert metric(server, "corral_hub_core_held") == 1
    finally:
        server.stop()


@needs_two_cores
def test_off_moves_nothing(tmp_path: Path) -> None:
    server = Corral(tmp_path / "state", config='[pool]\nhub_core = "off"\n').start()
    try:
        _serve(server, "first")
        time.sleep(1.5)  # past the first check the pool would make: nothing may have moved
        pids = [server.proc.pid, *server.zygotes(), *server.children()]  # type: ignore[union-attr]
        assert set(read_each(pids, _affinity).values()) == {CPUS}
        assert "hub_core" not in server.log()
        assert metric(server, "corral_hub_core_held") == 0
    finally:
        server.stop()


DISPATCHER = r'''
import os

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        name = request.headers.get("host", "").split(".")[0]
        answer = await self.env.dispatcher.get(name).fetch(request)
        return Response(await answer.text(), headers={"x-dispatcher-pid": str(os.getpid())})
'''


@needs_two_cores
def test_a_dispatcher_shares_the_held_hub_core_while_many_tenants_take_turns(tmp_path: Path) -> None:
    """With ``hub_core = "on"`` a dispatch worker that has served runs off the
    hub core, with the tenants; once more than SHARE_FROM_ACTIVE tenant
    children served within a check, it may run on every CPU (the tenants stay
    off the hub core), and back with the tenants once traffic stops."""
    import threading

    server = Corral(tmp_path / "state", config='[pool]\nhub_core = "on"\nspares = 4\n').start()
    hub = min(CPUS)
    names = [f"t{i}" for i in range(SHARE_FROM_ACTIVE + 8)]
    log = server.log_path
    try:
        for name in names:
            server.deploy(name, HELLO, namespace="default")
        server.deploy_dispatcher(DISPATCHER)
        first = server.request("/", host="t0.localhost")
        assert first.status == 200, (first, server.log())
        dispatcher = int(first.headers["x-dispatcher-pid"])
        _wait_for(lambda: _affinity(dispatcher) == CPUS - {hub}, "the dispatcher off the hub core")
        assert "hub_core.dispatchers_shared" not in log.read_text()

        stop = threading.Event()
        errors: list[str] = []

        def traffic(part: list[str]) -> None:
            while not stop.is_set():
                for name in part:
                    resp = server.request("/", host=f"{name}.localhost")
                    if resp.status != 200:
                        errors.append(f"{name}: {resp.status}")

        threads = [threading.Thread(target=traffic, args=(names[i::4],)) for i in range(4)]
        for thread in threads:
            thread.start()
        try:
            _wait_for(lambda: "hub_core.dispatchers_shared" in log.read_text(),
                      "the dispatchers sharing the hub core", timeout=30)
            _wait_for(lambda: _affinity(dispatcher) == CPUS, "the dispatcher on every CPU")
            tenants = [pid for pid in server.children() if pid != dispatcher]
            off_hub = [cpus for cpus in read_each(tenants, _affinity).values() if cpus == CPUS - {hub}]
            assert len(off_hub) >= SHARE_FROM_ACTIVE, "tenant children stay off the hub core"
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert not errors, errors[:5]
        _wait_for(lambda: "hub_core.dispatchers_unshared" in log.read_text(),
                  "the dispatchers back off the hub core once traffic stopped")
        _wait_for(lambda: _affinity(dispatcher) == CPUS - {hub}, "the dispatcher back with the tenants")
    finally:
        server.stop()
