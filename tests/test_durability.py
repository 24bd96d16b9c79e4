"""kill -9 of the supervisor in the middle of uploads, deploys and bulk
deletes, in a loop: after each restart every acknowledged change is there,
and nothing half-written is served (each script is exactly one of the
versions it was given, whole)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading

from tests.harness import Corral

NS = "durable"
BASE = f"/accounts/local/workers/dispatch/namespaces/{NS}/scripts"
CODE = "from workers import Response, WorkerEntrypoint\n\nclass Default(WorkerEntrypoint):\n" \
       "    async def fetch(self, request):\n        return Response(self.env.MARK)\n"
ROUNDS = 10


class Model:
    """What the test believes: per script, the acknowledged value and the
    values an unacknowledged (in-flight) operation may have left."""

    def __init__(self) -> None:
        self.acked: dict[str, str | None] = {}     # None: deleted
        self.maybe: dict[str, set[str | None]] = {}
        self.versions: dict[str, list[tuple[str, str]]] = {}  # name -> [(version_id, mark)]
        self.count = 0
        self.changed = threading.Condition()

    def ack(self) -> None:
        with self.changed:
            self.count += 1
            self.changed.notify_all()


def _mark(server: Corral, name: str) -> str | None:
    resp = server.admin("GET", f"{BASE}/{name}/settings")
    if resp.status == 404:
        return None
    assert resp.status == 200, resp
    return next(b["text"] for b in resp.json()["result"]["bindings"] if b["name"] == "MARK")


def _worker(server: Corral, model: Model, rng: random.Random, stop: threading.Event, round_no: int) -> None:
    step = 0
    while not stop.is_set():
        step += 1
        name = f"s{rng.randrange(6)}"
        op = rng.random()
        try:
            if op < 0.55 or model.acked.get(name) is None:
                mark = f"r{round_no}-{step}"
                model.maybe.setdefault(name, set()).add(mark)
                resp = server.deploy(name, CODE, namespace=NS, tags=["bulk"] if rng.random() < 0.3 else ["keep"],
                                     bindings=[{"type": "plain_text", "name": "MARK", "text": mark}], check=False)
                if resp.status != 200:
                    return
                model.acked[name] = mark
                model.maybe[name] = set()
                model.versions.setdefault(name, []).append((resp.json()["result"]["version_id"], mark))
            elif op < 0.85 and len(model.versions.get(name, [])) > 1:
                version_id, mark = rng.choice(model.versions[name][:-1])
                model.maybe.setdefault(name, set()).add(mark)
                resp = server.admin("POST", f"{BASE}/{name}/deployments",
                                    {"versions": [{"version_id": version_id, "percentage": 100}]})
                if resp.status != 200:
                    return
                model.acked[name] = mark
                model.maybe[name] = set()
            else:
                names = [n for n, m in model.acked.items() if m is not None]
                for n in names:
                    model.maybe.setdefault(n, set()).add(None)
                resp = server.admin("DELETE", f"{BASE}?tags=bulk:yes")
                if resp.status != 200:
                    return
                still = {n for n in names if _tagged_keep(server, n)}
                for n in names:
                    if n not in still:
                        model.acked[n] = None
                        model.versions.pop(n, None)
                    model.maybe[n] = set()
        except (ConnectionError, OSError):
            return  # the supervisor died under us: that operation is unacknowledged
        model.ack()


def _tagged_keep(server: Corral, name: str) -> bool:
    return server.admin("GET", f"{BASE}/{name}/tags").status == 200


def test_kill_9_at_any_point_keeps_every_acknowledged_change(tmp_path):
    rng = random.Random(1234)
    state = tmp_path / "state"
    server = Corral(state).start()
    server.namespace(NS)
    model = Model()
    try:
        for round_no in range(ROUNDS):
            stop = threading.Event()
            target = model.count + rng.randrange(1, 6)
            worker = threading.Thread(target=_worker, args=(server, model, rng, stop, round_no), daemon=True)
            worker.start()
            with model.changed:
                model.changed.wait_for(lambda target=target, worker=worker: (model.count >= target
                                                                        or not worker.is_alive()),
                                     timeout=120)
            # Kill mid-operation: the worker is sending or waiting on the next one.
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
            stop.set()
            worker.join(60)
            assert not worker.is_alive()

            db = sqlite3.connect(state / "corral.db")
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            db.close()
            server = Corral(state).start()
            for name, mark in model.acked.items():
                got = _mark(server, name)
                assert got == mark or got in model.maybe.get(name, set()), (round_no, name, got, mark)
                if got is not None:  # served whole: the code and the mark of one version
                    content = server.admin("GET", f"{BASE}/{name}/content")
                    assert content.status == 200 and b"self.env.MARK" in content.body
                    model.acked[name] = got
                    model.maybe[name] = set()
                    if not any(m == got for _, m in model.versions.get(name, [])):
                        # an in-flight upload landed: learn its version id from the API
                        items = server.admin("GET", f"{BASE}/{name}/versions").json()["result"]["items"]
                        model.versions.setdefault(name, []).append((items[0]["id"], got))
                else:
                    model.acked[name] = None
                    model.versions.pop(name, None)
                    model.maybe[name] = set()
        assert model.count >= ROUNDS
    finally:
        server.stop()
