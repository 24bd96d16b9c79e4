"""The pool's live, starting and in-use counts, kept as children change (supervisor.pool.census).

The pool plans from these counts (at ``max_children`` it evicts or answers
503), so a count that drifted would refuse requests or overshoot the cap.
The first tests walk the census through every order of events a child can
live; the last one churns a real ``corral serve`` capped at a few children,
killing its children from outside many times over the cap, and checks that
it still serves and that its ``starting`` gauge returns to zero.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.pool.census import ChildCensus
from tests.harness import Corral

HELLO = r'''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("hello")
'''


def test_a_child_counts_as_starting_until_hello_and_as_live_until_condemned() -> None:
    census = ChildCensus()
    census.adopted("a")
    census.adopted("b")
    assert (census.live, census.starting) == (2, 2)
    census.ready("a")
    assert (census.live, census.starting) == (2, 1)
    census.condemned("a")
    assert (census.live, census.starting) == (1, 1)
    census.gone("a")
    assert (census.live, census.starting) == (1, 1)


@pytest.mark.parametrize("events", [
    ["condemned", "gone"],                     # killed before its Hello
    ["gone"],                                  # died before its Hello, condemned only as it went
    ["ready", "condemned", "condemned", "gone"],  # a second kill keeps the first reason
    ["condemned", "ready", "gone"],            # its Hello was already on the way
    ["ready", "gone", "gone"],
])
def test_every_order_of_a_childs_events_ends_at_zero(events: list[str]) -> None:
    census = ChildCensus()
    census.adopted("child")
    for event in events:
        getattr(census, event)("child")
        assert 0 <= census.starting <= census.live + 1
    assert (census.live, census.starting) == (0, 0)


def test_a_package_set_is_in_use_while_a_live_child_of_its_zygote_has_a_script() -> None:
    census = ChildCensus()
    for child in ("a", "b", "c", "base"):
        census.adopted(child)
        census.ready(child)
    census.assigned("a", "fastapi")
    census.assigned("a", "fastapi")  # told twice: counted once
    census.assigned("b", "fastapi")
    census.assigned("c", "django")
    census.assigned("base", None)  # a base zygote's child is no set's
    assert (census.in_use("fastapi"), census.in_use("django"), census.in_use("numpy")) == (2, 1, 0)
    census.condemned("a")
    assert census.in_use("fastapi") == 1
    census.gone("a")
    census.gone("b")  # died without being condemned first
    census.condemned("c")
    census.assigned("c", "django")  # condemned already: never counts again
    assert (census.in_use("fastapi"), census.in_use("django")) == (0, 0)
    assert census.live == 1


def test_a_child_the_pool_never_registered_is_not_counted() -> None:
    census = ChildCensus()
    census.condemned("stranger")
    census.ready("stranger")
    census.assigned("stranger", "fastapi")
    assert (census.live, census.starting, census.in_use("fastapi")) == (0, 0, 0)
    census.gone("stranger")
    assert (census.live, census.starting) == (0, 0)


def _metric(server: Corral, name: str, **labels: str) -> float:
    text = server.admin("GET", "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"{name} {labels} not in /metrics")


def _wait_for(check, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_pool_capped_at_six_children_still_serves_after_many_times_that_many_deaths(tmp_path) -> None:
    server = Corral(tmp_path / "state", config="[pool]\nspares = 2\nmax_spares = 2\nmax_children = 6\n").start()
    names = ["one", "two", "three"]
    try:
        for name in names:
            server.deploy(name, HELLO, namespace=None)
            server.route(f"{name}.localhost/*", name)
        killed = 0
        for _ in range(6):
            for name in names:
                response = server.request("/", host=f"{name}.localhost")
                assert response.status == 200, (name, response.status, server.log()[-2000:])
            # Every child goes, warm, spare or still starting: the channel
            # closes under the pool, as when a tenant crashes its sandbox.
            victims = server.children()
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
            # Reaped, and every death seen by the pool (else the next request
            # may still reach a warm child that just died: a 502, by design).
            _wait_for(lambda gone=victims: not any(os.path.exists(f"/proc/{pid}") for pid in gone), "the reaping")
            _wait_for(lambda: _metric(server, "corral_children") == len(server.children()),
                      "the pool's children to be the zygote's")
        assert killed > 3 * 6, killed  # well past the cap: a leaked count would have filled it
        for name in names:
            assert server.request("/", host=f"{name}.localhost").status == 200
        _wait_for(lambda: _metric(server, "corral_pool_children", state="starting") == 0,
                  "no child left counted as starting")
        _wait_for(lambda: _metric(server, "corral_children") == len(server.children()),
                  "the pool's children to be the zygote's")
        assert server.alive()
    finally:
        server.stop()
