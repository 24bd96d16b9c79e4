"""A script's cron triggers set through Cloudflare's API (``.../schedules``, the
SDK's ``client.workers.scripts.schedules``, what ``wrangler deploy`` puts for
``triggers.crons``), against a real `corral serve`: what the API answers,
that the scheduler takes them up (its ``cron.planned`` log line), that an
upload without crons keeps them and ``corral deploy`` of a project without
triggers clears them."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cloudflare import BadRequestError, NotFoundError

from tests.harness import sdk_fixtures

ROOT = Path(__file__).resolve().parent.parent
CODE = b'''from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("ok")

    async def scheduled(self, controller, env, ctx):
        print("tick", controller.cron)
'''
EVERY = [{"cron": "*/5 * * * *"}, {"cron": "0 3 * * mon"}]


server, cf = sdk_fixtures("schedules")


def upload(cf, name):
    return cf.workers.scripts.update(name, account_id="local", metadata={"main_module": "worker.py"},
                                     files=[("worker.py", io.BytesIO(CODE), "text/x-python")])


def crons(cf, name):
    return [s.cron for s in cf.workers.scripts.schedules.get(name, account_id="local").schedules]


def versions(cf, name):
    return list(cf.workers.scripts.versions.list(name, account_id="local"))


def planned(server, since: int, triggers: int, timeout: float = 20.0) -> dict:
    """The scheduler's first ``cron.planned`` after log event ``since`` counting ``triggers``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in server.log_events()[since:]:
            if event.get("event") == "cron.planned" and event.get("triggers") == triggers:
                return event
        time.sleep(0.05)
    raise AssertionError(f"no cron.planned with {triggers} triggers after event {since}")


def test_schedules_set_by_the_sdk_are_scheduled_and_kept_across_uploads(server, cf):
    upload(cf, "ticker")
    assert crons(cf, "ticker") == []
    before = len(versions(cf, "ticker"))
    mark = len(server.log_events())
    answer = cf.workers.scripts.schedules.update("ticker", account_id="local", body=EVERY)
    assert [s.cron for s in answer.schedules] == ["*/5 * * * *", "0 3 * * mon"]
    assert answer.schedules[0].created_on
    assert crons(cf, "ticker") == ["*/5 * * * *", "0 3 * * mon"]
    event = planned(server, mark, 2)
    assert event["next"].startswith("(platform)/ticker")
    # Schedules are the script's, not a version's (as on Cloudflare): no new version.
    assert len(versions(cf, "ticker")) == before
    cf.workers.scripts.schedules.update("ticker", account_id="local", body=EVERY)
    assert len(versions(cf, "ticker")) == before

    # New code through the API, which says nothing of crons: the schedules stay.
    upload(cf, "ticker")
    assert crons(cf, "ticker") == ["*/5 * * * *", "0 3 * * mon"]
    # ... and scheduled() still runs as before.
    ran = server.admin("POST", "/accounts/local/workers/scripts/ticker/schedules/trigger", {"cron": "*/5 * * * *"})
    assert ran.status == 200 and ran.json()["result"]["outcome"] == "ok"

    # `corral deploy` of a project without triggers leaves them, as wrangler
    # does; one whose triggers name no crons removes them.
    project = server.state_dir / "ticker-project"
    project.mkdir()
    (project / "worker.py").write_bytes(CODE)

    def deploy(config: str) -> None:
        (project / "wrangler.toml").write_text('name = "ticker"\nmain = "worker.py"\n' + config)
        done = subprocess.run([sys.executable, "-m", "supervisor", "deploy", "--socket", server.socket_path,
                               "ticker", str(project)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr

    deploy("")
    assert crons(cf, "ticker") == ["*/5 * * * *", "0 3 * * mon"]
    mark = len(server.log_events())
    deploy("[triggers]\ncrons = []\n")
    assert crons(cf, "ticker") == []
    planned(server, mark, 0)


def test_the_schedules_of_a_user_worker(server, cf):
    cf.workers_for_platforms.dispatch.namespaces.create(account_id="local", name="cron-tenants")
    cf.workers_for_platforms.dispatch.namespaces.scripts.update(
        "tenant", account_id="local", dispatch_namespace="cron-tenants", metadata={"main_module": "worker.py"},
        files=[("worker.py", io.BytesIO(CODE), "text/x-python")])
    path = "/accounts/local/workers/dispatch/namespaces/cron-tenants/scripts/tenant/schedules"
    put = server.admin("PUT", path, [{"cron": "15 * * * *"}])
    assert put.status == 200 and put.json()["result"]["schedules"][0]["cron"] == "15 * * * *"
    assert [s["cron"] for s in server.admin("GET", path).json()["result"]["schedules"]] == ["15 * * * *"]


@pytest.mark.parametrize("body, words", [
    ([{"cron": "61 * * * *"}], "outside 0-59"),
    ([{"cron": f"{m} * * * *"} for m in range(6)], "more than the 5"),
    ({"cron": "* * * * *"}, "to set the script's cron triggers"),
    ([{"schedule": "* * * * *"}], "to set the script's cron triggers"),
])
def test_bad_schedules_are_refused_and_change_nothing(server, cf, body, words):
    upload(cf, "strict")
    cf.workers.scripts.schedules.update("strict", account_id="local", body=[{"cron": "*/10 * * * *"}])
    with pytest.raises(BadRequestError) as refused:
        cf.workers.scripts.schedules.update("strict", account_id="local", body=body)
    assert words in refused.value.body["errors"][0]["message"]
    assert crons(cf, "strict") == ["*/10 * * * *"]
    assert server.alive()


def test_schedules_of_a_missing_script_are_a_404(cf):
    with pytest.raises(NotFoundError, match="script 'ghost' not found"):
        cf.workers.scripts.schedules.update("ghost", account_id="local", body=EVERY)
    with pytest.raises(NotFoundError, match="script 'ghost' not found"):
        cf.workers.scripts.schedules.get("ghost", account_id="local")
