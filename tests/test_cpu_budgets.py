"""A CPU budget is each invocation's own while several share a child.

The kernel counts the whole child's CPU and was armed with the sum of the
budgets in flight: a request burning 150 ms under ``cpuMs: 50`` was
answered 200 while three others of the script slept beside it (it spent
their budgets), and one burning for a second got the whole child killed,
the sleeping three with it. Cloudflare: the limit is "per invocation. If a
user Worker hits either of these limits, the user Worker will immediately
throw an exception." (sandbox.cpu_budgets keeps it in the child.)
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.harness import Corral

DISPATCHER = '''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        name = request.headers.get("host", "").split(".")[0]
        return await self.env.dispatcher.get(name, options={"limits": {"cpuMs": 50}}).fetch(request)
'''

#: Three /sleep requests wait for /release; /burn waits until the three are
#: in flight, then burns CPU without a pause.
TENANT = '''
import asyncio, time
from workers import Response, WorkerEntrypoint

waiting = 0
release = asyncio.Event()

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        global waiting
        path = request.url.split("/", 3)[3]
        if path == "sleep":
            waiting += 1
            await release.wait()
            return Response("slept")
        if path == "release":
            release.set()
            return Response("released")
        while waiting < 3:
            await asyncio.sleep(0.005)
        start = time.process_time()
        while time.process_time() - start < int(path.removeprefix("burn/")) / 1000:
            pass
        return Response("burned")
'''


@pytest.fixture()
def server(tmp_path: Path):
    corral = Corral(tmp_path / "state").start()
    corral.deploy_dispatcher(DISPATCHER)
    yield corral
    corral.stop()


@pytest.mark.parametrize("burn_ms", [150, 1000])
def test_one_invocation_spends_its_own_budget_not_its_neighbours(server: Corral, burn_ms: int) -> None:
    server.deploy("t", TENANT)
    slept: list = []
    sleepers = [threading.Thread(target=lambda: slept.append(server.request("/sleep", host="t.localhost")))
                for _ in range(3)]
    for thread in sleepers:
        thread.start()
    burned = server.request(f"/burn/{burn_ms}", host="t.localhost")
    assert (burned.status, burned.text) == (503, "Worker exceeded CPU time limit.\n"), burned
    released = server.request("/release", host="t.localhost")
    for thread in sleepers:
        thread.join(timeout=30)
    assert released.text == "released", released
    # The three that slept beside it were neither charged its CPU nor killed with it.
    assert [(r.status, r.text) for r in slept] == [(200, "slept")] * 3, slept
