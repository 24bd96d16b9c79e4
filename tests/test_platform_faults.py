"""A fault of the platform's own fails one request, never the supervisor.

Found by the durability audit: an asset file gone from the state dir made a
request for it through the dispatcher stop the whole supervisor (the call's
work raised something other than a call failure, and it escaped the pool's
nursery). Now that call fails, with a log line, and everything else serves on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Corral
from tests.test_jail import wait_for

ROOT = Path(__file__).resolve().parent.parent

CODE = '''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("from the worker")
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    corral = Corral(tmp_path_factory.mktemp("faults") / "state").start()
    try:
        corral.deploy_dispatcher()
        corral.deploy("hello", CODE)
        yield corral
    finally:
        corral.stop()


def test_an_asset_file_gone_from_the_state_dir_fails_its_request_only(server, tmp_path):
    project = tmp_path / "site"
    (project / "assets").mkdir(parents=True)
    (project / "worker.py").write_text(CODE)
    (project / "corral.toml").write_text('main = "worker.py"\n[assets]\ndirectory = "assets"\n')
    (project / "assets" / "index.html").write_text("<h1>hi</h1>")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CORRAL_ADMIN_SOCKET": server.socket_path}
    subprocess.run([sys.executable, "-m", "supervisor", "deploy", "-n", "default", "site", str(project)],
                   check=True, capture_output=True, env=env, timeout=120)
    first = server.request("/", host="site.localhost")
    assert first.text == "<h1>hi</h1>", (first, first.headers)
    blobs = [p for p in (server.state_dir / "assets").rglob("*") if p.is_file()]
    assert blobs
    for blob in blobs:
        blob.unlink()
    response = server.request("/", host="site.localhost")
    assert response.status >= 500, response
    # Everything else serves on (the supervisor used to stop, after the answer).
    for _ in range(3):
        assert server.request(host="hello.localhost").text == "from the worker"
    assert server.alive(), server.log()[-3000:]
    assert "call.failed" in server.log()


CONSUMER = '''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        await self.env.Q.send("job")
        return Response("sent")

    async def queue(self, batch, env, ctx):
        pass
'''


def test_a_corrupt_queue_or_alarm_index_stops_only_itself(tmp_path):
    """One tenant's corrupt ``queue.sqlite3`` (or the Durable Objects' alarm
    index) used to end the supervisor a second after start, with a traceback
    naming no file: every tenant offline. Now that queue (or the alarms) waits,
    logged with its file, and the rest serves."""
    corral = Corral(tmp_path / "state").start()
    try:
        corral.deploy("hello", CODE, namespace=None)
        corral.route("hello.localhost/*", "hello")
        corral.deploy("producer", CONSUMER, namespace=None,
                      bindings=[{"type": "queue", "name": "Q", "queue_name": "jobs"}],
                      extra_metadata={"queue_consumers": [{"queue": "jobs", "max_batch_timeout": 0.1}]})
        corral.route("producer.localhost/*", "producer")
        assert corral.request(host="producer.localhost").text == "sent"
    finally:
        corral.stop()
    queues = [p for p in (corral.state_dir / "storage").rglob("queue.sqlite3")]
    assert queues, "the queue's store was not where the test looks"
    alarms = corral.state_dir / "storage" / "do" / "alarms.sqlite3"
    alarms.parent.mkdir(parents=True, exist_ok=True)
    for path in [*queues, alarms]:
        path.write_bytes(b"not a database at all " * 200)
        for sidecar in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            sidecar.unlink(missing_ok=True)
    corral.start()
    try:
        assert wait_for(lambda: "queue.storage_failed" in corral.log()
                        and "dobject.alarms_unreadable" in corral.log(), timeout=30), corral.log()[-3000:]
        for _ in range(3):
            assert corral.request(host="hello.localhost").text == "from the worker"
        assert corral.alive()
        log = corral.log()
        assert str(queues[0]) in log and str(alarms) in log
    finally:
        corral.stop()


KV_WORKER = '''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        try:
            await self.env.KV.put("k", "v")
            return Response(await self.env.KV.get("k"))
        except Exception as e:
            return Response(str(e), status=500)
'''


def test_a_binding_whose_store_is_damaged_says_so(tmp_path):
    """A KV store that cannot be read: the tenant hears which kind of failure
    it is (not a bare "internal error"), the log line names its namespace."""
    corral = Corral(tmp_path / "state").start()
    try:
        corral.deploy("kv", KV_WORKER, namespace=None,
                      bindings=[{"type": "kv_namespace", "name": "KV", "namespace_id": "shop"}])
        corral.route("kv.localhost/*", "kv")
        assert corral.request(host="kv.localhost").text == "v"
    finally:
        corral.stop()
    stores = [p for p in (corral.state_dir / "storage").rglob("*.sqlite3") if "kv" in str(p)]
    assert stores
    for path in stores:
        path.write_bytes(b"not a database at all " * 200)
        for sidecar in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            sidecar.unlink(missing_ok=True)
    corral.start()
    try:
        response = corral.request(host="kv.localhost")
        assert response.status == 500
        assert "put() failed: the platform's storage for this binding cannot be read" in response.text, response
        assert '"binding.failed"' in corral.log() and "DatabaseError" in corral.log()
    finally:
        corral.stop()
