"""The wrangler-like commands: versions, rollback, secret (from stdin),
deploy --dry-run and assets, tokens; tables by default, --json everywhere,
exit codes 0 / 1 (API error) / 2 (usage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Corral

ROOT = Path(__file__).resolve().parent.parent
CODE = "from workers import Response, WorkerEntrypoint\n\nclass Default(WorkerEntrypoint):\n" \
       "    async def fetch(self, request):\n        return Response('{text}')\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    corral = Corral(tmp_path_factory.mktemp("cli-v")).start()
    yield corral
    corral.stop()


def cli(server, *args, stdin=None, expect=0):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CORRAL_ADMIN_SOCKET": server.socket_path}
    result = subprocess.run([sys.executable, "-m", "supervisor", *map(str, args)], capture_output=True, text=True,
                            env=env, input=stdin, timeout=120)
    assert result.returncode == expect, (args, result.returncode, result.stdout, result.stderr)
    return result


def test_versions_rollback_and_dry_run(server, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(CODE.format(text="one"))
    cli(server, "deploy", "-n", "default", "app", worker)
    worker.write_text(CODE.format(text="two"))
    dry = cli(server, "deploy", "-n", "default", "app", worker, "--dry-run").stdout
    assert "dry run" in dry and "~ module worker.py" in dry
    assert len(json.loads(cli(server, "versions", "-n", "default", "app", "--json").stdout)) == 1
    cli(server, "deploy", "-n", "default", "app", worker)
    assert "no changes" in cli(server, "deploy", "-n", "default", "app", worker, "--dry-run").stdout
    table = cli(server, "versions", "-n", "default", "app").stdout.splitlines()
    assert table[0].split()[:4] == ["#", "VERSION", "ID", "TRAFFIC"] and table[1].split()[0] == "2"
    assert "100%" in table[1]
    versions = json.loads(cli(server, "versions", "-n", "default", "app", "--json").stdout)
    assert [v["number"] for v in versions] == [2, 1] and versions[0]["percentage"] == 100
    out = cli(server, "rollback", "-n", "default", "app", "-m", "bad deploy").stdout
    assert versions[1]["id"] in out
    assert server.request(host="x", path="/") is not None  # the server still serves
    content = server.admin("GET", "/accounts/local/workers/dispatch/namespaces/default/scripts/app/content")
    assert b"'one'" in content.body
    cli(server, "rollback", "-n", "default", "app", "2")
    content = server.admin("GET", "/accounts/local/workers/dispatch/namespaces/default/scripts/app/content")
    assert b"'two'" in content.body
    err = cli(server, "rollback", "-n", "default", "app", "9", expect=1).stderr
    assert "no version #9" in err and "corral versions --namespace default app`" in err
    err = cli(server, "rollback", "-n", "default", "nope", expect=1).stderr
    assert "not found" in err


def test_secret_put_from_stdin_never_shown(server, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(CODE.format(text="s"))
    cli(server, "deploy", "app2", worker)
    cli(server, "secret", "put", "app2", "API_KEY", stdin="sup3r-s3cret\n")
    # The version the secret made says so (its workers/triggered_by; the API's source is "api").
    table = cli(server, "versions", "app2").stdout.splitlines()
    assert table[0].split()[-3:] == ["SOURCE", "TAG", "MESSAGE"] and table[1].split()[-1] == "secret", table
    listed = cli(server, "secret", "list", "app2").stdout
    assert "API_KEY" in listed and "sup3r" not in listed
    assert json.loads(cli(server, "secret", "list", "app2", "--json").stdout) == [
        {"name": "API_KEY", "type": "secret_text"}]
    # a redeploy of the code keeps it
    cli(server, "deploy", "app2", worker)
    assert "API_KEY" in cli(server, "secret", "list", "app2").stdout
    for args in (("ls", "--json"), ("versions", "app2", "--json")):
        assert "sup3r" not in cli(server, *args).stdout
    assert "sup3r" not in server.log()
    cli(server, "secret", "delete", "app2", "API_KEY")
    assert cli(server, "secret", "list", "app2").stdout.strip() == "(none)"
    assert "no secret" in cli(server, "secret", "delete", "app2", "API_KEY", expect=1).stderr
    assert "stdin" in cli(server, "secret", "put", "app2", "EMPTY", stdin="", expect=2).stderr
    cli(server, "secret", "put", "app2", expect=2)


def test_deploy_with_assets_uploads_only_missing(server, tmp_path):
    project = tmp_path / "site"
    (project / "assets" / "css").mkdir(parents=True)
    (project / "worker.py").write_text(CODE.format(text="site"))
    (project / "corral.toml").write_text('main = "worker.py"\n[assets]\ndirectory = "assets"\n')
    (project / "assets" / "index.html").write_text("<h1>hi</h1>")
    (project / "assets" / "css" / "a.css").write_text("h1{}")
    first = cli(server, "deploy", "-n", "default", "site", project)
    assert "2 file(s), 2 uploaded" in first.stderr
    (project / "assets" / "new.txt").write_text("new")
    second = cli(server, "deploy", "-n", "default", "site", project)
    assert "3 file(s), 1 uploaded" in second.stderr
    got = server.admin("GET", "/accounts/local/workers/dispatch/namespaces/default/scripts/site").json()["result"]
    assert got["has_assets"] is True


def test_tokens(server):
    out = cli(server, "token", "create", "--scope", "deploy", "-n", "default", "ci").stdout
    assert out.startswith("crl_") and "shown once" in out
    listed = json.loads(cli(server, "token", "ls", "--json").stdout)
    assert [(t["name"], t["scope"], t["namespaces"]) for t in listed] == [("ci", "deploy", ["default"])]
    assert "crl_" not in cli(server, "token", "ls").stdout
    cli(server, "token", "rm", listed[0]["id"])
    assert "no token" in cli(server, "token", "rm", listed[0]["id"], expect=1).stderr
    cli(server, "token", "create", "--scope", "root", "x", expect=2)


def test_deploy_labels_the_new_version_with_a_tag_and_a_message(server, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(CODE.format(text="labelled"))
    cli(server, "deploy", "-n", "default", "labelled", worker, "--version-tag", "v7", "-m", "the seventh")
    versions = json.loads(cli(server, "versions", "-n", "default", "labelled", "--json").stdout)
    assert versions[0]["annotations"] == {"workers/tag": "v7", "workers/message": "the seventh"}
    row = cli(server, "versions", "-n", "default", "labelled").stdout.splitlines()[1]
    assert row.split()[-3:] == ["v7", "the", "seventh"]
    err = cli(server, "deploy", "-n", "default", "labelled", worker, "--version-tag", "t" * 101, expect=2).stderr
    assert "longer than 100 bytes" in err


def test_a_rollback_across_a_secret_change_asks_to_be_forced(server, tmp_path):
    """As Cloudflare answers wrangler rollback (10220, naming the secrets),
    which then asks before it forces: the secret put since was dropped
    without a word."""
    worker = tmp_path / "worker.py"
    worker.write_text(CODE.format(text="r"))
    cli(server, "deploy", "guarded", worker)
    cli(server, "secret", "put", "guarded", "TOKEN", stdin="s3cr3t\n")
    err = cli(server, "rollback", "guarded", expect=1).stderr
    assert "code 10220" in err and "The following secrets have changed: TOKEN" in err, err
    assert "TOKEN" in cli(server, "secret", "list", "guarded").stdout  # nothing was rolled back
    cli(server, "rollback", "guarded", "--force")
    assert cli(server, "secret", "list", "guarded").stdout.strip() == "(none)"
    # Forward again: a newer version brings its secrets as uploaded, no question asked.
    cli(server, "rollback", "guarded", "2")
    assert "TOKEN" in cli(server, "secret", "list", "guarded").stdout


def test_a_secret_edit_waits_for_the_latest_version_to_be_deployed(server, tmp_path):
    """Made from the deployed version, a secret put deployed over a newer
    upload (older code went live); Cloudflare refuses it with 10215 and wrangler
    points to `versions secret put`."""
    from tests.harness import multipart

    worker = tmp_path / "worker.py"
    worker.write_text(CODE.format(text="live"))
    cli(server, "deploy", "staged", worker)
    body, ctype = multipart({"main_module": "worker.py"}, {"worker.py": CODE.format(text="staged")})
    assert server.admin("POST", "/accounts/local/workers/scripts/staged/versions", body, ctype).status == 200
    err = cli(server, "secret", "put", "staged", "TOKEN", stdin="x\n", expect=1).stderr
    assert "code 10215" in err and "latest version of your Worker isn't currently deployed" in err, err
    # A settings edit (wrangler secret bulk PATCHes them) likewise: 10214, as Cloudflare answers it.
    patched = server.admin("PATCH", "/accounts/local/workers/scripts/staged/settings",
                           {"bindings": [{"type": "secret_text", "name": "B", "text": "x"}]})
    assert patched.status == 400 and patched.json()["errors"][0]["code"] == 10214, patched.text
    content = server.admin("GET", "/accounts/local/workers/scripts/staged/content")
    assert b"'live'" in content.body  # nothing was deployed
    # ?version=ID answers that version's code (wrangler's `versions secret put`
    # copies it from there; the deployed code was answered, and the new
    # version served old code); an unknown one is not found.
    staged = server.admin("GET", "/accounts/local/workers/scripts/staged/versions").json()["result"]["items"][0]
    content = server.admin("GET", f"/accounts/local/workers/scripts/staged/content/v2?version={staged['id']}")
    assert content.status == 200 and b"'staged'" in content.body, content
    missing = server.admin("GET", "/accounts/local/workers/scripts/staged/content/v2?version=nope")
    assert missing.status == 404, missing
    cli(server, "rollback", "staged", "2")  # the staged version, deployed
    cli(server, "secret", "put", "staged", "TOKEN", stdin="x\n")


def test_a_var_that_replaces_a_secret_is_said_and_hints_name_the_namespace(server, tmp_path):
    """A config var named like a secret replaced it without a word (wrangler
    asks first); and the rollback hints of a user worker left its namespace
    out, so the command they gave failed ("not found among platform scripts")."""
    worker = tmp_path / "worker.py"
    worker.write_text(CODE.format(text="s"))
    cli(server, "deploy", "-n", "default", "app3", worker)
    cli(server, "secret", "put", "-n", "default", "app3", "OTHER", stdin="s3cret\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "worker.py").write_text(CODE.format(text="s"))
    (project / "wrangler.jsonc").write_text('{"main": "worker.py", "vars": {"OTHER": "plain"}}')
    err = cli(server, "deploy", "-n", "default", "app3", project).stderr
    assert "binding 'OTHER' (plain_text) replaces the secret of that name" in err, err
    err = cli(server, "rollback", "-n", "default", "app3", "9", expect=1).stderr
    assert "`corral versions --namespace default app3`" in err, err
    err = cli(server, "rollback", "-n", "default", "app3", "0" * 8 + "-0000-0000-0000-" + "0" * 12, expect=1).stderr
    assert "`corral versions --namespace default app3`" in err, err
