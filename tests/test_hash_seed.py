"""Hash seeds: shared by the children of one zygote, rotated by count and age.

A child cannot get a seed of its own (see supervisor.pool.zygote_client for the
experiment and why); the pool bounds how many children share one instead.
A real ``corral serve`` with ``zygote_max_children = 3``: tenants report
``hash()`` of one string and their parent (the zygote that forked them).
"""

from __future__ import annotations

import time
from collections import defaultdict

from tests.harness import Corral

TENANT = r'''
import os
from workers import Response, WorkerEntrypoint

# Read at load, when the zygote that forked this child is still up: spares of a
# replaced zygote are killed, never loaded. By the request it may have rotated.
ZYGOTE = os.getppid()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response.json({"pid": os.getpid(), "zygote": ZYGOTE,
                              "hash": hash("corral-seed-probe")})
'''


def test_children_of_different_zygotes_hash_differently(tmp_path) -> None:
    server = Corral(tmp_path / "state", config="[pool]\nspares = 1\nzygote_max_children = 3\n").start()
    try:
        # Twelve, not six: a zygote forks up to twice its count while its
        # successor starts, and a child that loads after its zygote rotated
        # away sees pid 1, so six first requests may show one generation only.
        names = [f"t{i}" for i in range(12)]
        for name in names:
            server.deploy(name, TENANT, namespace=None)
            server.route(f"{name}.localhost/*", name)
        seen = []
        for name in names:
            resp = server.request("/", host=f"{name}.localhost")
            assert resp.status == 200, (resp, server.log())
            seen.append(resp.json())
        text = server.log_path.read_text()
        log = server.log_events()
    finally:
        server.stop()
    # A zygote rotated away ends quietly: the supervisor closing its control
    # socket is its cue, not an error with a traceback in the server's log.
    assert "Traceback" not in text, text[text.find("Traceback") - 300:][:2000]

    by_zygote: dict[int, list[dict]] = defaultdict(list)
    for out in seen:
        # A child whose zygote was rotated away while it loaded is reparented
        # (to pid 1 here): its generation is no longer visible from inside.
        if out["zygote"] != 1:
            by_zygote[out["zygote"]].append(out)
    print("\n" + "\n".join(f"zygote {z}: hashes {sorted({o['hash'] for o in outs})}, "
                           f"children {[o['pid'] for o in outs]}" for z, outs in by_zygote.items()))
    assert len(by_zygote) >= 2, f"no two generations seen: {seen}"
    # One seed per zygote, a different one for each zygote.
    seeds = {z: {o["hash"] for o in outs} for z, outs in by_zygote.items()}
    assert all(len(s) == 1 for s in seeds.values()), seeds
    assert len({next(iter(s)) for s in seeds.values()}) == len(seeds), seeds
    # No seed served more tenants than a zygote may fork children.
    by_hash: dict[int, int] = defaultdict(int)
    for out in seen:
        by_hash[out["hash"]] += 1
    rotated = [e for e in log if e.get("event") == "zygote.rotated"]
    # Up to 6: a zygote forks on, up to twice its count, while its successor starts late.
    assert rotated and all(e["reason"] == "children" and 3 <= e["children"] <= 6 for e in rotated), rotated
    assert len(by_hash) >= 2 and max(by_hash.values()) <= max(e["children"] for e in rotated), by_hash
    # Spares of a replaced zygote were killed, never handed to a tenant.
    replaced = {e["pid"] for e in log if e.get("event") == "child.ended" and e.get("reason") == "zygote replaced"}
    assert not replaced & {o["pid"] for o in seen}
    # Forks come three at a time here: the successor is started, not always up, before.
    assert_rotations_swap_to_a_prepared_zygote(log, standing_by=False)


def assert_rotations_swap_to_a_prepared_zygote(log: list[dict], standing_by: bool) -> None:
    """Every rotation's successor was started before the rotation, and it is
    the zygote that becomes ready for the next generation: forking pauses for
    the swap, not for a start. ``standing_by``: it was also up before then."""
    events = [e for e in log if str(e.get("event", "")).startswith("zygote.")]
    rotations = [i for i, e in enumerate(events) if e["event"] == "zygote.rotated"]
    assert rotations, events
    for n, i in enumerate(rotations):
        generation = events[i]["generation"]
        earlier = {e["event"]: e for e in events[:i] if e.get("generation") == generation + 1}
        ready = [e for e in events[i:] if e["event"] == "zygote.ready" and e.get("generation") == generation + 1]
        assert "zygote.preparing" in earlier, (generation, events)
        if not ready and n == len(rotations) - 1:
            continue  # the server stopped during the last swap
        assert ready and ready[0]["pid"] == earlier["zygote.preparing"]["pid"], (generation, events)
        if standing_by:
            assert "zygote.standby" in earlier, (generation, events)
    assert not [e for e in events if e["event"] in ("zygote.restarting", "zygote.failed")], events


def test_a_zygote_rotated_for_age_hands_over_to_one_standing_by(tmp_path) -> None:
    server = Corral(tmp_path / "state", config="[pool]\nspares = 1\nzygote_max_age_s = 4.0\n").start()
    try:
        server.deploy("aged", TENANT, namespace=None)
        server.route("aged.localhost/*", "aged")

        log = server.log_events

        deadline = time.monotonic() + 30
        while not any(e.get("event") == "zygote.rotated" for e in log()):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)  # polling the log for the second rotation
        resp = server.request("/", host="aged.localhost")
        assert resp.status == 200, (resp, server.log())
        events = log()
    finally:
        server.stop()
    assert all(e["reason"] == "age" for e in events if e.get("event") == "zygote.rotated")
    assert_rotations_swap_to_a_prepared_zygote(events, standing_by=True)


RANDOM_TENANT = r'''
import os
import random
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response.json({"pid": os.getpid(), "zygote": os.getppid(),
                              "random": [random.random() for _ in range(4)],
                              "bits": random.getrandbits(64)})
'''


def test_children_of_one_zygote_have_random_states_of_their_own(tmp_path) -> None:
    """The zygote forks without Python's at-fork hooks (sandbox.fork): each child
    must still reseed ``random``, or every tenant would draw the same numbers."""
    server = Corral(tmp_path / "state").start()
    try:
        draws = []
        for i in range(4):
            server.deploy(f"r{i}", RANDOM_TENANT, namespace=None)
            server.route(f"r{i}.localhost/*", f"r{i}")
            resp = server.request("/", host=f"r{i}.localhost")
            assert resp.status == 200, (resp, server.log())
            draws.append(resp.json())
        assert len({d["zygote"] for d in draws}) == 1, draws  # one zygote forked them all
        assert len({d["pid"] for d in draws}) == 4, draws
        assert len({tuple(d["random"]) for d in draws}) == 4, draws
        assert len({d["bits"] for d in draws}) == 4, draws
    finally:
        server.stop()
