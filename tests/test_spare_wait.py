"""How long cold starts wait for a spare is on /metrics (``corral_spare_wait_seconds``).

A burst of first requests that outruns the pool's refill waits for spares
before any load begins; that wait is what a storm's slowest requests are made
of (scripts/bench prints it for its storms). Here a pool of one spare gets
more first requests at once than it has spares, so some of them must wait
for forks, and the histogram says so: every cold start is counted, those
served by a ready spare in its 0 bucket, the others above it.
"""

from __future__ import annotations

import threading
import time

from tests.harness import Corral
from tests.test_observability import metric

TENANT = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("cold")
'''

FAMILY = "corral_spare_wait_seconds"
BURST = 12


def waits(server: Corral) -> dict[str, float]:
    """The base zygote's spare waits: count, sum, and those counted in the 0 bucket."""
    return {"count": metric(server, f"{FAMILY}_count", zygote="base"),
            "sum": metric(server, f"{FAMILY}_sum", zygote="base"),
            "ready": metric(server, f"{FAMILY}_bucket", zygote="base", le="0.0")}


def spares(server: Corral) -> float:
    return metric(server, "corral_pool_children", state="spare")


def test_cold_starts_that_found_no_spare_ready_are_counted_with_their_wait(tmp_path) -> None:
    server = Corral(tmp_path / "state", config="[pool]\nspares = 1\n").start()
    try:
        names = [f"w{i}" for i in range(BURST)]
        for name in names:
            server.deploy(name, TENANT, namespace=None)  # each validated in a spare: counted too
            server.route(f"{name}.localhost/*", name)
        after_deploys = waits(server)
        assert after_deploys["count"] >= BURST, after_deploys
        # Wait until the uploads' surplus spares are trimmed back to the setting.
        end = time.monotonic() + 30
        while spares(server) > 2 and time.monotonic() < end:
            time.sleep(0.05)
        assert spares(server) <= 2, "the pool kept its surplus spares"
        before = waits(server)

        answers: list[int] = []
        go = threading.Barrier(BURST)

        def first_request(name: str) -> None:
            go.wait()
            answers.append(server.request("/", host=f"{name}.localhost").status)

        threads = [threading.Thread(target=first_request, args=(name,)) for name in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == [200] * BURST, (answers, server.log())
        after = waits(server)
    finally:
        server.stop()

    # Every cold start was counted, once.
    assert after["count"] - before["count"] == BURST, (before, after)
    # With at most two spares ready, at least ten of them waited for a fork.
    waited = (after["count"] - after["ready"]) - (before["count"] - before["ready"])
    assert waited >= BURST - 2, (before, after)
    assert after["sum"] > before["sum"], (before, after)


def test_a_dispatched_cold_start_that_found_a_spare_ready_is_counted_as_no_wait(tmp_path) -> None:
    """A user worker cold-started from the dispatcher's call takes a ready
    spare without waiting (the call path's own way to a spare): it lands in
    the 0 bucket."""
    server = Corral(tmp_path / "state", config="[pool]\nspares = 1\n").start()
    try:
        server.deploy("u1", TENANT, namespace="default")
        server.deploy_dispatcher()
        # The dispatcher warm first (a name nobody deployed: a 404 from it).
        assert server.request("/", host="nobody.localhost").status == 404
        end = time.monotonic() + 30
        while spares(server) < 1 and time.monotonic() < end:
            time.sleep(0.05)
        before = waits(server)
        resp = server.request("/", host="u1.localhost")
        assert resp.status == 200 and resp.body == b"cold", (resp, server.log())
        after = waits(server)
    finally:
        server.stop()
    assert after["count"] - before["count"] == 1, (before, after)
    assert after["ready"] - before["ready"] == 1, (before, after)
