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
