"""The real wrangler's operator commands against a real ``corral serve``:
where Corral answered otherwise than Cloudflare's API, and wrangler showed it.

- ``wrangler d1 list`` prints each field of a listed database as text: a
  row with ``read_replication`` (an object, which Cloudflare gives with one
  database only) showed ``[object Object]``.
- ``wrangler d1 execute --remote --file`` (D1's import: init, upload, ingest,
  poll) prints the database's size from the import's ``meta.size_after``:
  without it, ``NaN``.
- ``wrangler d1 info`` shows a database's size and table count from
  Cloudflare's ``file_size`` and ``num_tables``, which Corral did not give.
- ``wrangler rollback`` (and ``versions deploy``) of a version from before
  the script's cron triggers and queue consumer were set dropped them, where
  Cloudflare keeps both per script, not per version; and setting them made a
  version each (so ``wrangler rollback`` right after a deploy went back to
  the same code).
- ``wrangler deployments list`` showed a deployment a secret change made as
  "Other (secret)": its ``source`` was Corral's word, not one of Cloudflare's
  with the ``workers/triggered_by`` annotation that names the change.
- Products Corral lacks that wrangler has commands for (Hyperdrive,
  Vectorize, Secrets Store, Pages, ...) answered the router's bare 404.

wrangler is installed by ``scripts/test`` (tests.wrangler_cli); the last
test checks the rollback through the API alone. The slower sweep of every
command is ``scripts/wrangler_check``.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Corral, with_tcp_admin
from tests.wrangler_cli import ensure_wrangler

PLATFORM_CONFIG = {
    "name": "jobs-worker",
    "main": "src/entry.py",
    "compatibility_date": "2025-06-01",
    "compatibility_flags": ["python_workers"],
    "workers_dev": False,
    "preview_urls": False,
    "triggers": {"crons": ["*/5 * * * *"]},
    "queues": {"consumers": [{"queue": "jobs", "max_batch_size": 1}]},
}
PLATFORM_ENTRY = """from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("jobs")

    async def queue(self, batch, env, ctx):
        for message in batch.messages:
            message.ack()
"""


class Wrangler:
    """wrangler pointed at one Corral's TCP admin listener, with an admin token."""

    def __init__(self, server: Corral, home: Path) -> None:
        self.binary = ensure_wrangler()
        token = server.admin("POST", "/accounts/local/corral/tokens", {"name": "wrangler", "scope": "admin"})
        self.env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "CI": "1", "NO_COLOR": "1",
                    "WRANGLER_SEND_METRICS": "false", "XDG_CONFIG_HOME": str(home / "config"),
                    "CLOUDFLARE_API_BASE_URL": f"http://127.0.0.1:{server.tcp_port}/client/v4",  # type: ignore[attr-defined]
                    "CLOUDFLARE_API_TOKEN": token.json()["result"]["value"], "CLOUDFLARE_ACCOUNT_ID": "local"}

    def run(self, cwd: Path, *args: str, stdin: str = "") -> tuple[int, str]:
        """Its exit status and output (stdout and stderr)."""
        done = subprocess.run([str(self.binary), *args], cwd=cwd, env=self.env, input=stdin, capture_output=True,
                              text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr

    def __call__(self, cwd: Path, *args: str, stdin: str = "") -> str:
        """Its output; a non-zero exit fails the test, showing it."""
        status, output = self.run(cwd, *args, stdin=stdin)
        assert status == 0, f"wrangler {' '.join(args)} exited {status}:\n{output}"
        return output


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corral]:
    corral = with_tcp_admin(tmp_path_factory.mktemp("wrangler-commands")).start()
    yield corral
    corral.stop()


@pytest.fixture(scope="module")
def wrangler(server: Corral, tmp_path_factory: pytest.TempPathFactory) -> Wrangler:
    return Wrangler(server, tmp_path_factory.mktemp("wrangler-home"))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A platform script that runs every five minutes and consumes the queue ``jobs``."""
    root = tmp_path_factory.mktemp("platform")
    (root / "wrangler.json").write_text(json.dumps(PLATFORM_CONFIG))
    (root / "src").mkdir()
    (root / "src" / "entry.py").write_text(PLATFORM_ENTRY)
    return root


@pytest.fixture(scope="module")
def deployed(wrangler: Wrangler, project: Path) -> str:
    """The platform script, deployed by wrangler (its queue made first): wrangler's output."""
    wrangler(project, "queues", "create", "jobs")
    return wrangler(project, "deploy")


def test_d1_list_prints_every_field_of_a_database_as_text(wrangler: Wrangler, project: Path) -> None:
    wrangler(project, "d1", "create", "listed")
    table = wrangler(project, "d1", "list")
    assert "listed" in table and "[object Object]" not in table, table
    rows = json.loads(wrangler(project, "d1", "list", "--json"))
    assert [r["name"] for r in rows] == ["listed"]
    assert all(not isinstance(value, (dict, list)) for row in rows for value in row.values()), rows


def test_d1_execute_file_imports_the_file_and_reports_the_size(wrangler: Wrangler, project: Path) -> None:
    wrangler(project, "d1", "create", "ledger")
    (project / "seed.sql").write_text("CREATE TABLE t (x INTEGER, s TEXT);\n"
                                      "INSERT INTO t VALUES (1, 'a');\nINSERT INTO t VALUES (2, 'b; c');\n")
    output = wrangler(project, "d1", "execute", "ledger", "--remote", "--file", "seed.sql", "-y")
    assert "Executed 3 queries" in output and "2 rows written" in output, output
    assert re.search(r'"Database size \(MB\)": "\d+\.\d\d"', output) and "NaN" not in output, output
    counted = wrangler(project, "d1", "execute", "ledger", "--remote", "--json", "--command",
                       "SELECT group_concat(s, '|') AS s FROM t")
    assert json.loads(counted)[0]["results"] == [{"s": "a|b; c"}]


def test_d1_info_shows_the_size_and_tables_of_a_database(wrangler: Wrangler, project: Path) -> None:
    wrangler(project, "d1", "create", "sized")
    empty = json.loads(wrangler(project, "d1", "info", "sized", "--json"))
    assert (empty["num_tables"], empty.get("database_size", 0)) == (0, 0), empty
    wrangler(project, "d1", "execute", "sized", "--remote", "--command", "CREATE TABLE a (x); CREATE TABLE b (y)")
    info = json.loads(wrangler(project, "d1", "info", "sized", "--json"))
    assert info["num_tables"] == 2 and info["database_size"] > 0, info  # wrangler's name for file_size
    assert "database_size" in wrangler(project, "d1", "info", "sized")


def test_a_rollback_keeps_the_cron_triggers_and_the_queue_consumer(server: Corral, wrangler: Wrangler,
                                                                   project: Path, deployed: str) -> None:
    """wrangler's first deploy uploads the script, then puts its schedules and
    adds it as the queue's consumer: neither is a version of its own (they are
    the script's), and rolling back to that first upload keeps both."""
    assert "schedule: */5 * * * *" in deployed and "Consumer for jobs" in deployed, deployed
    versions = json.loads(wrangler(project, "versions", "list", "--json"))
    assert len(versions) == 1, versions
    first = versions[0]["id"]
    wrangler(project, "deploy")  # a second version

    output = wrangler(project, "rollback", first, "-y", "--message", "back to the upload")
    assert f"Worker Version {first} has been deployed to 100% of traffic" in output, output
    schedules = server.admin("GET", "/accounts/local/workers/scripts/jobs-worker/schedules").json()["result"]
    assert [s["cron"] for s in schedules["schedules"]] == ["*/5 * * * *"]
    info = wrangler(project, "queues", "info", "jobs")
    assert "Number of Consumers: 1" in info and "worker:jobs-worker" in info, info


def test_a_secrets_deployment_shows_as_a_secret_change(wrangler: Wrangler, project: Path, deployed: str) -> None:
    """Its ``source`` is one of Cloudflare's, what made it a ``workers/triggered_by`` annotation."""
    # The latest version deployed first (a rollback before may have left an older one
    # serving): a secret edit is refused while it is not (10215), as on Cloudflare.
    wrangler(project, "deploy")
    assert "Uploaded secret API_KEY" in wrangler(project, "secret", "put", "API_KEY", stdin="k\n")
    newest = json.loads(wrangler(project, "deployments", "list", "--json"))[-1]
    assert (newest["source"], newest["annotations"]) == ("api", {"workers/triggered_by": "secret"}), newest
    listed = wrangler(project, "deployments", "list")
    assert "Source:      Secret Change" in listed and "Other (secret)" not in listed, listed


@pytest.mark.parametrize(("command", "product"), [
    ("hyperdrive list", "Hyperdrive"),
    ("vectorize list", "Vectorize"),
    ("secrets-store store list --remote", "Secrets Store"),
    ("pages project list", "Cloudflare Pages"),
])
def test_a_product_corral_lacks_is_refused_by_name(wrangler: Wrangler, project: Path, command: str,
                                                   product: str) -> None:
    """Not the router's "no admin API endpoint" (a typo, it reads like), but
    Cloudflare's envelope, 501, naming the product."""
    status, output = wrangler.run(project, *command.split())
    assert status != 0 and f"{product} is not supported by Corral" in output and "[code: 10501]" in output, output


def test_a_deployment_of_an_older_version_keeps_the_scripts_crons(server: Corral) -> None:
    """The same through the API, without wrangler: schedules put after an
    upload (no version of their own), a second upload, then the first one
    deployed again (``POST .../deployments``)."""
    base = "/accounts/local/workers/scripts/timed"
    server.deploy("timed", PLATFORM_ENTRY, namespace=None, main_module="entry.py")
    assert server.admin("PUT", f"{base}/schedules", [{"cron": "0 * * * *"}]).status == 200
    server.deploy("timed", PLATFORM_ENTRY.replace('"jobs"', '"jobs, again"'), namespace=None,
                  main_module="entry.py")
    first, second = (v["id"] for v in server.admin("GET", f"{base}/versions").json()["result"]["items"])
    assert first != second
    rolled = server.admin("POST", f"{base}/deployments",
                          {"strategy": "percentage", "versions": [{"version_id": first, "percentage": 100}]})
    assert rolled.status == 200, rolled.text
    schedules = server.admin("GET", f"{base}/schedules").json()["result"]["schedules"]
    assert [s["cron"] for s in schedules] == ["0 * * * *"]


def test_a_secret_put_before_the_first_deploy_makes_a_draft_that_the_deploy_keeps(
        wrangler: Wrangler, server: Corral, tmp_path: Path) -> None:
    """wrangler secret put on a Worker that does not exist yet uploads a draft
    (one JavaScript module, ``export default { fetch() {} }``) to hold the
    secret, as CI pipelines do before a first deploy: Corral refused it (a
    main module must be .py), so the secret could not be set."""
    root = tmp_path / "fresh"
    (root / "src").mkdir(parents=True)
    (root / "wrangler.json").write_text(json.dumps({"name": "fresh", "main": "src/entry.py",
                                                    "compatibility_date": "2025-06-01",
                                                    "compatibility_flags": ["python_workers"],
                                                    "workers_dev": False, "preview_urls": False}))
    (root / "src" / "entry.py").write_text(
        "from workers import Response, WorkerEntrypoint\n\n\nclass Default(WorkerEntrypoint):\n"
        "    async def fetch(self, request):\n        return Response(self.env.EARLY)\n")
    assert "Success" in wrangler(root, "secret", "put", "EARLY", stdin="set-before-deploy\n")
    wrangler(root, "deploy")
    server.route("fresh.example/*", "fresh")
    assert server.request("/", host="fresh.example").text == "set-before-deploy"
