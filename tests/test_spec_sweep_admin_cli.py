"""An outsider's acceptance sweep of SPEC sections 1 (the command line) and
2 (the admin REST API): what the other test files leave out, each checked
against a real ``corral serve`` over its real sockets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.harness import Corral, UnixHTTPConnection, free_port

ROOT = Path(__file__).resolve().parent.parent
NS = "/accounts/local/workers/dispatch/namespaces"
PS = "/accounts/local/workers/scripts"
HELLO = ("from workers import Response, WorkerEntrypoint\n\nclass Default(WorkerEntrypoint):\n"
         "    async def fetch(self, request):\n        return Response({text!r})\n")


def cli(corral: Corral, *args: Any, stdin: str | None = None, expect: int | None = 0,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``corral ARGS`` as a subprocess, reaching ``corral`` through CORRAL_ADMIN_SOCKET."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "CORRAL_ADMIN_SOCKET": corral.socket_path, **(env or {})}
    result = subprocess.run([sys.executable, "-m", "supervisor", *map(str, args)], capture_output=True,
                            text=True, env=environ, input=stdin if stdin is not None else "", timeout=120)
    if expect is not None:
        assert result.returncode == expect, (args, result.returncode, result.stdout, result.stderr)
    return result


def envelope(resp: Any) -> dict[str, Any]:
    """The body is SPEC's envelope: success, errors (code, message), messages, result."""
    body = resp.json()
    assert set(body) >= {"success", "errors", "messages", "result"}, body
    assert isinstance(body["errors"], list) and isinstance(body["messages"], list), body
    for error in body["errors"]:
        assert isinstance(error["code"], int) and isinstance(error["message"], str), body
    assert body["success"] is (200 <= resp.status < 300), (resp.status, body)
    return body


# -- section 2: the admin API ------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("GET", f"{NS}/nope", None, 404),
    ("DELETE", f"{NS}/nope", None, 404),
    ("GET", f"{NS}/default/scripts/nope", None, 404),
    ("GET", f"{NS}/default/scripts/nope/content", None, 404),
    ("GET", f"{NS}/default/scripts/nope/versions", None, 404),
    ("GET", f"{NS}/default/scripts/nope/secrets", None, 404),
    ("GET", f"{PS}/nope", None, 404),
    ("DELETE", f"{PS}/nope", None, 404),
    ("DELETE", "/accounts/local/workers/routes/nope", None, 404),
    ("POST", NS, {"name": "default"}, 409),
    ("POST", NS, {"name": ""}, 400),
    ("POST", "/accounts/local/workers/routes", {"pattern": "*/*"}, 400),
    ("GET", "/no/such/path", None, 404),
])
def test_every_answer_is_the_envelope_with_a_fitting_status(corral: Corral, method: str, path: str,
                                                           body: Any, status: int) -> None:
    resp = corral.admin(method, path, body)
    assert resp.status == status, resp
    assert resp.headers.get("Content-Type", resp.headers.get("content-type", "")).startswith(
        "application/json"), resp.headers
    assert envelope(resp)["errors"], resp


def test_an_upload_past_the_script_size_limit_is_a_413_and_stores_nothing(corral: Corral) -> None:
    big = HELLO.format(text="big") + "# " + "a" * (10 * 2**20) + "\n"
    resp = corral.deploy("toobig", big, check=False)
    assert resp.status == 413 and "10485760" in envelope(resp)["errors"][0]["message"], resp
    assert corral.admin("GET", f"{NS}/default/scripts/toobig").status == 404


def test_a_module_part_named_after_its_file_or_files(corral: Corral) -> None:
    """SPEC: one part per module, named ``files`` with the file name as the
    filename, or named after the file; both in one upload."""
    boundary = "sweep-boundary"
    meta = {"main_module": "worker.py"}
    parts = [("metadata", None, "application/json", json.dumps(meta)),
             ("files", "worker.py", "text/x-python",
              "from helper import WORD\nfrom workers import Response\n"
              "async def on_fetch(request, env):\n    return Response(WORD)\n"),
             ("helper.py", "helper.py", "text/x-python", "WORD = 'both-ways'\n")]
    out = ""
    for name, filename, ctype, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n\r\n{data}\r\n"
    out += f"--{boundary}--\r\n"
    resp = corral.admin("PUT", f"{NS}/default/scripts/partnames", out.encode(),
                        f"multipart/form-data; boundary={boundary}")
    assert resp.status == 200, resp
    assert corral.request("/", host="partnames.localhost").text == "both-ways"


def test_every_binding_type_of_the_spec_is_accepted_and_listed(corral: Corral) -> None:
    corral.deploy("svc-target", HELLO.format(text="svc"), namespace=None)
    corral.deploy("egress", HELLO.format(text="egress"), namespace=None)
    corral.deploy("logger", "from workers import WorkerEntrypoint\nclass Default(WorkerEntrypoint):\n"
                  "    async def tail(self, events):\n        pass\n", namespace=None)
    bindings = [
        {"type": "plain_text", "name": "GREETING", "text": "hi"},
        {"type": "secret_text", "name": "TOKEN", "text": "s3cr3t-value"},
        {"type": "kv_namespace", "name": "KV", "namespace_id": "kv-1"},
        {"type": "d1", "name": "DB", "id": "db-1"},
        {"type": "r2_bucket", "name": "BUCKET", "bucket_name": "b-1"},
        {"type": "dispatch_namespace", "name": "dispatcher", "namespace": "default",
         "outbound": {"worker": {"service": "egress"}, "params": [{"name": "customer_name"}]}},
        {"type": "queue", "name": "Q", "queue_name": "q-1"},
        {"type": "service", "name": "SVC", "service": "svc-target"},
    ]
    source = ("from workers import Response\nasync def on_fetch(request, env):\n"
              "    return Response(env.GREETING + ':' + str(len(env.TOKEN)))\n")
    resp = corral.deploy("allbindings", source, namespace=None, bindings=bindings,
                         extra_metadata={"tail_consumers": [{"service": "logger"}],
                                         "compatibility_date": "2025-06-01"})
    assert "s3cr3t-value" not in resp.text
    got = corral.admin("GET", f"{PS}/allbindings/bindings")
    listed = envelope(got)["result"]
    assert {b["type"] for b in listed} >= {b["type"] for b in bindings}, listed
    assert "s3cr3t-value" not in got.text
    for path in (f"{PS}/allbindings", f"{PS}/allbindings/secrets", f"{PS}/allbindings/secrets/TOKEN",
                 f"{PS}/allbindings/versions", f"{PS}/allbindings/settings", PS):
        resp = corral.admin("GET", path)
        assert resp.status == 200 and "s3cr3t-value" not in resp.text, (path, resp)


def test_a_user_worker_binds_its_durable_object_class(corral: Corral) -> None:
    source = ("from workers import DurableObject, Response, WorkerEntrypoint\n"
              "class Counter(DurableObject):\n    async def fetch(self, request):\n"
              "        return Response('do')\n"
              "class Default(WorkerEntrypoint):\n    async def fetch(self, request):\n"
              "        return Response('ok')\n")
    resp = corral.deploy("dobind", source, bindings=[
        {"type": "durable_object_namespace", "name": "COUNTER", "class_name": "Counter"}],
        extra_metadata={"migrations": {"new_tag": "v1", "new_classes": ["Counter"]}})
    assert envelope(resp)["success"]
    types = {b["type"] for b in corral.admin("GET", f"{NS}/default/scripts/dobind/bindings").json()["result"]}
    assert "durable_object_namespace" in types


def test_secrets_put_list_get_delete_never_return_values(corral: Corral) -> None:
    corral.deploy("sec", HELLO.format(text="sec"))
    base = f"{NS}/default/scripts/sec/secrets"
    put = corral.admin("PUT", base, {"name": "API", "text": "v4lue-hidden", "type": "secret_text"})
    assert put.status == 200 and "v4lue-hidden" not in put.text, put
    assert envelope(put)["result"]["name"] == "API"
    listed = corral.admin("GET", base)
    assert envelope(listed)["result"] == [{"name": "API", "type": "secret_text"}]
    one = corral.admin("GET", f"{base}/API")
    assert one.status == 200 and "v4lue-hidden" not in one.text
    content = corral.admin("GET", f"{NS}/default/scripts/sec/content")
    assert b"v4lue-hidden" not in content.body
    assert corral.admin("DELETE", f"{base}/API").status == 200
    assert corral.admin("GET", f"{base}/API").status == 404
    assert corral.admin("DELETE", f"{base}/API").status == 404


def test_content_is_the_bundle(corral: Corral) -> None:
    corral.deploy("bundle", modules={"worker.py": HELLO.format(text="b"), "lib/util.py": "X = 1\n"})
    resp = corral.admin("GET", f"{NS}/default/scripts/bundle/content")
    assert resp.status == 200
    assert b"Response('b')" in resp.body and b"X = 1" in resp.body


def test_deployments_split_traffic_by_percentage(corral: Corral) -> None:
    corral.deploy("split", HELLO.format(text="one"))
    corral.deploy("split", HELLO.format(text="two"))
    base = f"{NS}/default/scripts/split"
    ids = [v["id"] for v in envelope(corral.admin("GET", f"{base}/versions"))["result"]["items"]]
    assert len(ids) == 2
    bad = corral.admin("POST", f"{base}/deployments", {"strategy": "percentage", "versions": [
        {"version_id": ids[0], "percentage": 60}, {"version_id": ids[1], "percentage": 30}]})
    assert bad.status == 400 and envelope(bad)["errors"]
    unknown = corral.admin("POST", f"{base}/deployments", {"strategy": "percentage", "versions": [
        {"version_id": "0" * 32, "percentage": 100}]})
    assert unknown.status in (400, 404), unknown
    resp = corral.admin("POST", f"{base}/deployments", {"strategy": "percentage", "versions": [
        {"version_id": ids[0], "percentage": 50}, {"version_id": ids[1], "percentage": 50}]})
    assert resp.status == 200, resp
    seen = {corral.request("/", host="split.localhost").text for _ in range(60)}
    assert seen == {"one", "two"}
    latest = envelope(corral.admin("GET", f"{base}/deployments"))["result"]["deployments"][0]
    assert sorted((v["version_id"], v["percentage"]) for v in latest["versions"]) == sorted(
        [(ids[0], 50), (ids[1], 50)]), latest


def test_assets_upload_session_flow(corral: Corral) -> None:
    import base64
    import hashlib

    data = b"<h1>static</h1>"
    digest = hashlib.sha256(data).hexdigest()[:32]
    session = corral.admin("POST", f"{NS}/default/scripts/site/assets-upload-session",
                           {"manifest": {"/index.html": {"hash": digest, "size": len(data)}}})
    result = envelope(session)["result"]
    assert result["buckets"] == [[digest]] and result["jwt"], result
    boundary = "assets-b"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{digest}\"; filename=\"{digest}\"\r\n"
            f"Content-Type: text/html\r\n\r\n{base64.b64encode(data).decode()}\r\n--{boundary}--\r\n").encode()
    conn = UnixHTTPConnection(corral.socket_path)
    conn.request("POST", "/accounts/local/workers/assets/upload?base64=true", body=body,
                 headers={"authorization": f"Bearer {result['jwt']}",
                          "content-type": f"multipart/form-data; boundary={boundary}"})
    raw = conn.getresponse()
    done = json.loads(raw.read())
    conn.close()
    assert raw.status in (200, 201) and done["success"], done
    token = done["result"]["jwt"]
    corral.deploy("site", HELLO.format(text="worker"), extra_metadata={"assets": {"jwt": token}},
                  bindings=[{"type": "assets", "name": "ASSETS"}])
    # Cloudflare's default html_handling: /index.html is served at /.
    got = corral.request("/", host="site.localhost")
    assert got.status == 200 and got.body == data, got
    # Everything is uploaded now: a new session asks for nothing, its token completes at once.
    again = envelope(corral.admin("POST", f"{NS}/default/scripts/site/assets-upload-session",
                                  {"manifest": {"/index.html": {"hash": digest, "size": len(data)}}}))["result"]
    assert again["buckets"] == [] and again["jwt"], again
    corral.deploy("site", HELLO.format(text="worker 2"), extra_metadata={"assets": {"jwt": again["jwt"]}})
    assert corral.request("/", host="site.localhost").body == data


def test_usage_per_minute_with_filters(corral: Corral) -> None:
    corral.deploy("metered", HELLO.format(text="m"), tags=["plan:metered"])
    for _ in range(3):
        assert corral.request("/", host="metered.localhost").status == 200
    # An invocation is counted as it ends, just after its response: the last
    # one's end may come a moment after the client has the answer.
    deadline = time.monotonic() + 10
    while True:
        rows = envelope(corral.admin("GET", "/accounts/local/workers/usage?namespace=default&script=metered"))[
            "result"]
        if sum(r["requests"] for r in rows) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert rows and sum(r["requests"] for r in rows) >= 3, rows
    assert set(rows[0]) >= {"minute", "requests", "outcomes", "cpuTimeMs", "wallTimeMs"}, rows[0]
    assert rows[0]["outcomes"].get("ok", 0) >= 1, rows[0]
    by_tag = envelope(corral.admin("GET", "/accounts/local/workers/usage?tag=plan:metered"))["result"]
    assert sum(r["requests"] for r in by_tag) >= 3, by_tag
    other = envelope(corral.admin("GET", "/accounts/local/workers/usage?script=nobody-at-all"))["result"]
    assert other == []


def test_per_page_past_the_end_and_cursor_round_trip(corral: Corral) -> None:
    corral.namespace("paged")
    for i in range(5):
        corral.deploy(f"p{i}", HELLO.format(text=str(i)), namespace="paged", tags=[f"n:{i % 2}"])
    first = envelope(corral.admin("GET", f"{NS}/paged/scripts?per_page=2"))
    assert len(first["result"]) == 2 and first["result_info"]["cursor"]
    second = envelope(corral.admin("GET", f"{NS}/paged/scripts?per_page=2&cursor={first['result_info']['cursor']}"))
    assert {s["name"] for s in first["result"]}.isdisjoint(s["name"] for s in second["result"])
    deleted = envelope(corral.admin("DELETE", f"{NS}/paged/scripts?tags=n:0:yes"))["result"]
    assert deleted == {"count": 3}
    left = envelope(corral.admin("GET", f"{NS}/paged/scripts"))["result"]
    assert sorted(s["name"] for s in left) == ["p1", "p3"]
    gone = envelope(corral.admin("DELETE", f"{NS}/paged"))["result"]
    assert gone["scripts_deleted"] == 2, gone
    assert corral.admin("GET", f"{NS}/paged/scripts/p1").status == 404


def test_metrics_content_type_is_prometheus_text(corral: Corral) -> None:
    resp = corral.admin("GET", "/metrics")
    ctype = resp.headers.get("content-type") or resp.headers.get("Content-Type")
    assert resp.status == 200 and ctype.startswith("text/plain"), resp.headers
    assert "# TYPE" in resp.text


# -- section 1: the command line ---------------------------------------------------------


def test_json_of_every_client_command_is_json(corral: Corral, tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text("from workers import Response, WorkerEntrypoint\nclass Default(WorkerEntrypoint):\n"
                      "    async def fetch(self, request):\n        return Response('j')\n"
                      "    async def scheduled(self, controller, env, ctx):\n        print('tick')\n")
    calls = [
        ("ns", "create", "jsonns"), ("ns", "ls"),
        ("deploy", "-n", "jsonns", "--tag", "a", "--var", "K=V", "jw", worker),
        ("ls", "-n", "jsonns"), ("tags", "-n", "jsonns", "jw"), ("tags", "-n", "jsonns", "jw", "add", "b"),
        ("versions", "-n", "jsonns", "jw"),
        ("deploy", "jw-platform", worker),
        ("routes", "add", "jsonroute.example/*", "jw-platform"), ("routes", "ls"),
        ("trigger", "-n", "jsonns", "--cron", "* * * * *", "jw"),
        ("usage", "-n", "jsonns"),
        ("secret", "list", "-n", "jsonns", "jw"),
        ("rollback", "-n", "jsonns", "jw", "1"),
        ("rm", "-n", "jsonns", "--tag", "a:yes"),
        ("ns", "rm", "jsonns"),
    ]
    for args in calls:
        out = cli(corral, *args, "--json").stdout
        try:
            json.loads(out)
        except ValueError:
            pytest.fail(f"corral {' '.join(map(str, args))} --json printed no JSON: {out!r}")
    cli(corral, "secret", "put", "jw-platform", "S", "--json", stdin="x\n")
    json.loads(cli(corral, "secret", "delete", "jw-platform", "S", "--json").stdout)


def test_socket_flag_wins_over_the_environment(corral: Corral, tmp_path: Path) -> None:
    result = cli(corral, "ns", "ls", "--json", "--socket", corral.socket_path,
                 env={"CORRAL_ADMIN_SOCKET": str(tmp_path / "nowhere.sock")})
    assert isinstance(json.loads(result.stdout), list)
    result = cli(corral, "ns", "ls", "--socket", str(tmp_path / "nowhere.sock"), expect=1)
    assert result.stderr.strip() and not result.stdout


def test_deploy_a_wrangler_toml_project_with_src_root_vars_and_tags(corral: Corral, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "src" / "pkg").mkdir(parents=True)
    (project / "src" / "entry.py").write_text(
        "from workers import Response, WorkerEntrypoint\nfrom pkg.words import WORD\n"
        "class Default(WorkerEntrypoint):\n    async def fetch(self, request):\n"
        "        return Response(WORD + ':' + self.env.COLOR + ':' + self.env.EXTRA)\n")
    (project / "src" / "pkg" / "__init__.py").write_text("")
    (project / "src" / "pkg" / "words.py").write_text("WORD = 'from-src'\n")
    (project / "wrangler.toml").write_text('name = "ignored"\nmain = "src/entry.py"\n'
                                          'compatibility_date = "2025-06-01"\n[vars]\nCOLOR = "blue"\n')
    cli(corral, "deploy", "--namespace", "default", "--tag", "t1", "--tag", "t2", "--var", "EXTRA=x",
        "wproj", project)
    assert corral.request("/", host="wproj.localhost").text == "from-src:blue:x"
    got = corral.admin("GET", f"{NS}/default/scripts/wproj").json()["result"]
    assert got["tags"] == ["t1", "t2"]
    # --var overrides a var of the config
    cli(corral, "deploy", "-n", "default", "--var", "COLOR=red", "--var", "EXTRA=y", "wproj", project)
    assert corral.request("/", host="wproj.localhost").text == "from-src:red:y"


def test_d1_execute_and_migrations_apply(corral: Corral, tmp_path: Path) -> None:
    project = tmp_path / "d1proj"
    (project / "migrations").mkdir(parents=True)
    (project / "worker.py").write_text(
        "from workers import Response, WorkerEntrypoint\nclass Default(WorkerEntrypoint):\n"
        "    async def fetch(self, request):\n"
        "        row = await self.env.DB.prepare('SELECT count(*) AS n FROM t').first()\n"
        "        return Response(str(row['n']))\n")
    (project / "wrangler.toml").write_text(
        'main = "worker.py"\n[[d1_databases]]\nbinding = "DB"\ndatabase_name = "sweepdb"\n'
        'database_id = "sweep-db-1"\n')
    (project / "migrations" / "0001_init.sql").write_text("CREATE TABLE t (x INTEGER);\n")
    (project / "migrations" / "0002_rows.sql").write_text("INSERT INTO t VALUES (1);\n")
    cli(corral, "deploy", "d1w", project)
    applied = cli(corral, "d1", "migrations", "apply", "DB", "--config", project, "--json").stdout
    json.loads(applied)
    again = cli(corral, "d1", "migrations", "apply", "DB", "--config", project).stdout
    assert "0001" not in again or "no" in again.lower(), again
    (tmp_path / "more.sql").write_text("INSERT INTO t VALUES (2); INSERT INTO t VALUES (3);\n")
    cli(corral, "d1", "execute", "sweepdb", "--config", project, "--file", tmp_path / "more.sql")
    out = json.loads(cli(corral, "d1", "execute", "DB", "--config", project, "--command",
                         "SELECT count(*) AS n FROM t", "--json").stdout)
    assert "4" in json.dumps(out), out
    assert corral.request("/", host="d1w.localhost").status == 404  # a platform script: no route
    cli(corral, "d1", "execute", "DB", "--config", project, "--command", "SELEKT nonsense", expect=1)
    cli(corral, "d1", "execute", "DB", "--config", project, expect=2)


def project_of(folder: Path, fetch_body: str, config: str, extra: str = "") -> Path:
    """A project folder: worker.py whose fetch runs ``fetch_body`` (indented
    lines), ``extra`` methods after it, and wrangler.toml ``config`` (main given)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "worker.py").write_text("import time\nfrom workers import Response, WorkerEntrypoint\n"
                                      "class Default(WorkerEntrypoint):\n"
                                      "    async def fetch(self, request):\n" + fetch_body + extra)
    (folder / "wrangler.toml").write_text('main = "worker.py"\n' + config)
    return folder


def test_d1_migrations_keep_their_history_in_the_configs_migrations_table(corral: Corral, tmp_path: Path) -> None:
    """wrangler's ``migrations_table``: a database whose history is in
    ``my_migs`` had every migration applied again into ``d1_migrations``."""
    project = project_of(tmp_path / "d1t", "        return Response('ok')\n",
                         '[[d1_databases]]\nbinding = "DB"\ndatabase_name = "tabledb"\n'
                         'database_id = "table-db-1"\nmigrations_dir = "db"\nmigrations_table = "my_migs"\n')
    (project / "db").mkdir()
    (project / "db" / "0001_init.sql").write_text("CREATE TABLE t (x INTEGER);\n")
    cli(corral, "deploy", "d1t", project)
    cli(corral, "d1", "migrations", "apply", "DB", "--config", project)
    out = json.loads(cli(corral, "d1", "execute", "DB", "--config", project, "--json", "--command",
                         "SELECT name FROM sqlite_master WHERE name IN ('my_migs', 'd1_migrations')").stdout)
    assert "my_migs" in json.dumps(out) and "d1_migrations" not in json.dumps(out), out
    again = cli(corral, "d1", "migrations", "apply", "DB", "--config", project).stdout
    assert "no migrations to apply" in again, again


@pytest.mark.parametrize("args", [("usage", "--since", "bogus"), ("usage", "--until", "nextweek"),
                                  ("tail", "--sampling-rate", "2"), ("tail", "--sampling-rate", "half")])
def test_a_bad_option_value_is_bad_usage_before_any_request(corral: Corral, args: tuple[str, ...]) -> None:
    """SPEC 1: exit status 2 on bad usage. These values were sent to the
    server, which refused them: an API error (1)."""
    result = cli(corral, *args, expect=2)
    assert args[1] in result.stderr and "must be" in result.stderr, result.stderr


def test_usage_takes_a_relative_since_as_its_own_word_and_until_now(corral: Corral) -> None:
    """``--since -1h`` as written in the help and the API's own errors;
    argparse alone takes ``-1h`` for an option (exit 2)."""
    for args in (("--since", "-1h"), ("--since", "-30m", "--until", "now"), ("--until", "now")):
        out = cli(corral, "usage", *args, "--json").stdout
        assert isinstance(json.loads(out), list), out


def test_a_failed_trigger_says_why_on_stderr(corral: Corral, tmp_path: Path) -> None:
    """SPEC 1: exit status 1 on an error, its message on stderr."""
    worker = tmp_path / "worker.py"
    worker.write_text("from workers import Response, WorkerEntrypoint\nclass Default(WorkerEntrypoint):\n"
                      "    async def fetch(self, request):\n        return Response('hi')\n")
    cli(corral, "deploy", "-n", "default", "nocron", worker)
    result = cli(corral, "trigger", "-n", "default", "nocron", "--cron", "*/5 * * * *", expect=1)
    assert "scheduled" in result.stderr and "exception" in result.stderr, result
    assert result.stdout == ""
    missing = cli(corral, "trigger", "-n", "default", "ghost", "--cron", "*/5 * * * *", expect=1)
    assert "'ghost' not found in dispatch namespace 'default'" in missing.stderr, missing.stderr


def test_secret_put_trims_trailing_whitespace_as_wrangler_does(corral: Corral, tmp_path: Path) -> None:
    """wrangler secret put trims the value's trailing whitespace (its
    trimTrailingWhitespace): a CRLF line from a Windows file, or ``echo``'s
    newline, is not part of the secret."""
    worker = tmp_path / "worker.py"
    worker.write_text("from workers import Response, WorkerEntrypoint\nclass Default(WorkerEntrypoint):\n"
                      "    async def fetch(self, request):\n        return Response(repr(self.env.KEY))\n")
    cli(corral, "deploy", "-n", "default", "trimmed", worker)
    cli(corral, "secret", "put", "-n", "default", "trimmed", "KEY", stdin="s3cret\r\n")
    assert corral.request("/", host="trimmed.localhost").text == "'s3cret'"
    cli(corral, "secret", "put", "-n", "default", "trimmed", "KEY", stdin="two words \t\n")
    assert corral.request("/", host="trimmed.localhost").text == "'two words'"


def test_a_corral_toml_folders_assets_directory_travels_with_it(corral: Corral, tmp_path: Path) -> None:
    """SPEC section 1: a folder's ``assets`` directory travels with it; no
    ``[assets]`` table is needed to say so."""
    project = tmp_path / "site"
    (project / "assets" / "css").mkdir(parents=True)
    (project / "worker.py").write_text(HELLO.format(text="from the worker"))
    (project / "corral.toml").write_text('main = "worker.py"\n')
    (project / "assets" / "hello.txt").write_text("static text")
    (project / "assets" / "css" / "site.css").write_text("h1{}")
    deployed = json.loads(cli(corral, "deploy", "-n", "default", "autosite", project, "--json").stdout)
    assert deployed["has_assets"] is True, deployed
    assert [m["name"] for m in deployed["modules"]] == ["worker.py"], deployed["modules"]
    assert corral.request("/hello.txt", host="autosite.localhost").text == "static text"
    assert corral.request("/css/site.css", host="autosite.localhost").text == "h1{}"
    assert corral.request("/", host="autosite.localhost").text == "from the worker"
    # A folder named assets holding Python modules is a package the worker imports.
    package = tmp_path / "pkg"
    (package / "assets").mkdir(parents=True)
    (package / "assets" / "__init__.py").write_text("WORD = 'imported'\n")
    (package / "worker.py").write_text("from workers import Response\nfrom assets import WORD\n"
                                       "async def on_fetch(request, env):\n    return Response(WORD)\n")
    (package / "corral.toml").write_text('main = "worker.py"\n')
    cli(corral, "deploy", "-n", "default", "assetspkg", package)
    assert corral.request("/", host="assetspkg.localhost").text == "imported"
    # An assets symlink out of the folder is refused by name, as a configured one is.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("the operator's")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "worker.py").write_text(HELLO.format(text="linked"))
    (linked / "corral.toml").write_text('main = "worker.py"\n')
    (linked / "assets").symlink_to(outside)
    refused = cli(corral, "deploy", "-n", "default", "linked", linked, expect=2)
    assert "outside the project" in refused.stderr, refused.stderr


# -- corral serve ------------------------------------------------------------------------


class Notify:
    """A NOTIFY_SOCKET of our own: what ``corral serve`` tells systemd."""

    def __init__(self, path: Path) -> None:
        import socket

        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(60)

    def next(self) -> bytes:
        return self.sock.recv(4096)

    def close(self) -> None:
        self.sock.close()


def serve(args: list[Any], cwd: Path, notify: Notify) -> subprocess.Popen[bytes]:
    """``corral serve ARGS`` in ``cwd``, its stdout and stderr kept in files there."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": notify.path}
    env.pop("CORRAL_ADMIN_SOCKET", None)
    with open(cwd / "stdout.log", "wb") as out, open(cwd / "stderr.log", "wb") as err:
        return subprocess.Popen([sys.executable, "-m", "supervisor", "serve", *map(str, args)], cwd=cwd, env=env,
                                stdout=out, stderr=err, start_new_session=True)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Whatever is left of a server started by :func:`serve` (its children are in its session)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


def stop(proc: subprocess.Popen[bytes], notify: Notify) -> None:
    """SIGTERM: STOPPING=1, then a clean exit."""
    import signal

    proc.send_signal(signal.SIGTERM)
    assert notify.next() == b"STOPPING=1"
    assert proc.wait(30) == 0


def test_serve_defaults_flags_over_the_config_and_json_logs(tmp_path: Path) -> None:
    """--admin-socket and --state-dir win over the config's; its http is
    used; stdout stays empty, every stderr line is a JSON log. Then with no
    flags but --http: ./.corral and its admin.sock, which the client finds
    by default."""
    port = free_port()
    work = tmp_path / "work"
    work.mkdir()
    (work / "corral.toml").write_text(f'http = "127.0.0.1:{port}"\nadmin_socket = "{tmp_path}/config.sock"\n'
                                      'state_dir = "config-state"\n')
    notify = Notify(tmp_path / "notify.sock")
    proc = serve(["--config", "corral.toml", "--admin-socket", tmp_path / "flag.sock", "--state-dir", "flag-state"],
                 work, notify)
    try:
        assert notify.next() == b"READY=1"
        assert (tmp_path / "flag.sock").is_socket() and not (tmp_path / "config.sock").exists()
        assert (work / "flag-state" / "corral.db").exists() and not (work / "config-state").exists()
        assert not (work / ".corral").exists()
        client = Corral.__new__(Corral)
        client.socket_path, client.port = str(tmp_path / "flag.sock"), port
        assert client.admin("GET", NS).status == 200
        assert client.request("/", host="nothing.example").status == 404  # the config's port serves
        stop(proc, notify)
    finally:
        kill_group(proc)
    assert (work / "stdout.log").read_bytes() == b""
    lines = (work / "stderr.log").read_text().splitlines()
    assert lines
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict) and "event" in record, line

    # Without --admin-socket or a config: ./.corral/admin.sock, the client's default.
    other = tmp_path / "other"
    other.mkdir()
    proc = serve(["--http", f"127.0.0.1:{free_port()}"], other, notify)
    try:
        assert notify.next() == b"READY=1"
        assert (other / ".corral" / "admin.sock").is_socket()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("CORRAL_ADMIN_SOCKET", None)
        listed = subprocess.run([sys.executable, "-m", "supervisor", "ns", "ls", "--json"], cwd=other, env=env,
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and [n["name"] for n in json.loads(listed.stdout)] == ["default"]
        stop(proc, notify)
    finally:
        kill_group(proc)
        notify.close()



GATED = ("from workers import Response, WorkerEntrypoint, fetch\nclass Default(WorkerEntrypoint):\n"
         "    async def fetch(self, request):\n"
         "        gate = await fetch(request.headers.get('x-gate'))\n"
         "        return Response('drained after ' + await gate.text())\n")


def test_sigterm_says_stopping_then_finishes_the_request_in_flight(tmp_path: Path) -> None:
    """SPEC: STOPPING=1 on SIGTERM, then in-flight requests drain: a request
    whose worker is still waiting on its subrequest when the signal comes is
    answered in full, and the server then exits 0."""
    import signal
    import socket
    import threading

    notify = Notify(tmp_path / "notify.sock")
    gate = socket.create_server(("127.0.0.1", 0))
    gate.settimeout(60)
    server = Corral(tmp_path / "state", env={"NOTIFY_SOCKET": notify.path}).start()
    try:
        assert notify.next() == b"READY=1"
        server.deploy_dispatcher()
        server.deploy("gated", GATED)
        answer: dict[str, Any] = {}
        client = threading.Thread(target=lambda: answer.update(r=server.request(
            "/", host="gated.localhost", headers={"x-gate": f"http://127.0.0.1:{gate.getsockname()[1]}/"})))
        client.start()
        held, _ = gate.accept()  # the worker's subrequest: the request is in flight
        with held:
            head = b""
            while b"\r\n\r\n" not in head:
                head += held.recv(65536)
            server.proc.send_signal(signal.SIGTERM)
            assert notify.next() == b"STOPPING=1"
            held.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nopen")
        client.join(60)
        assert answer["r"].status == 200 and answer["r"].text == "drained after open", answer
        assert server.proc.wait(30) == 0
    finally:
        server.stop()
        gate.close()
        notify.close()


def test_a_live_tail_does_not_hold_sigterm(tmp_path: Path) -> None:
    """Draining waits for requests, not for a /tail stream (which never ends):
    SIGTERM with one open exits 0, and the stream is closed."""
    import socket

    notify = Notify(tmp_path / "notify.sock")
    proc = serve(["--http", f"127.0.0.1:{free_port()}", "--state-dir", "state"], tmp_path, notify)
    try:
        assert notify.next() == b"READY=1"
        with socket.socket(socket.AF_UNIX) as tail:
            tail.settimeout(60)
            tail.connect(str(tmp_path / "state" / "admin.sock"))
            tail.sendall(b"GET /tail HTTP/1.1\r\nHost: x\r\n\r\n")
            assert tail.recv(4096).startswith(b"HTTP/1.1 200 ")
            stop(proc, notify)
            while tail.recv(4096):
                pass  # (the end of the chunked stream, then EOF)
    finally:
        kill_group(proc)
        notify.close()


def test_a_config_without_triggers_leaves_the_schedules_as_wrangler_does(corral: Corral, tmp_path: Path) -> None:
    """wrangler leaves a script's schedules alone when its config does not
    define ``triggers``, and removes them for ``crons = []``: a redeploy of
    such a config (or of a lone .py file) wiped them."""
    def deploy(triggers: str) -> list[str]:
        project = project_of(tmp_path / "crony", "        return Response('ok')\n", triggers,
                             "    async def scheduled(self, controller, env, ctx):\n        pass\n")
        cli(corral, "deploy", "-n", "default", "crony", project)
        resp = corral.admin("GET", "/accounts/local/workers/dispatch/namespaces/default/scripts/crony/schedules")
        return [s["cron"] for s in resp.json()["result"]["schedules"]]

    assert deploy('[triggers]\ncrons = ["*/5 * * * *"]\n') == ["*/5 * * * *"]
    assert deploy("") == ["*/5 * * * *"]
    cli(corral, "deploy", "-n", "default", "crony", tmp_path / "crony" / "worker.py")
    assert deploy("") == ["*/5 * * * *"]
    assert deploy("[triggers]\ncrons = []\n") == []


def test_an_assets_binding_over_an_empty_folder_answers_404(corral: Corral, tmp_path: Path) -> None:
    """Its ASSETS.fetch raised "the script has no static assets" (a 500) when
    the folder had no file; a binding with no folder at all is refused."""
    project = project_of(tmp_path / "bare", "        r = await self.env.ASSETS.fetch(request)\n"
                                            "        return Response(f'assets said {r.status}')\n",
                         '[assets]\ndirectory = "public"\nbinding = "ASSETS"\n')
    (project / "public").mkdir()
    cli(corral, "deploy", "-n", "default", "bare", project)
    r = corral.request("/x.css", host="bare.localhost")
    assert (r.status, r.text) == (200, "assets said 404"), r
    (project / "wrangler.toml").write_text('main = "worker.py"\n[assets]\nbinding = "ASSETS"\n')
    refused = cli(corral, "deploy", "-n", "default", "bare", project, expect=2)
    assert "needs assets.directory" in refused.stderr, refused.stderr


def test_a_configs_own_cpu_limit_stops_its_worker(corral: Corral, tmp_path: Path) -> None:
    """wrangler's ``[limits] cpu_ms`` sets the Worker's CPU limit (upload
    metadata ``limits``); it was ignored, and 2 s of CPU ran to the end."""
    project = project_of(tmp_path / "capped", "        start = time.process_time()\n"
                                              "        while time.process_time() - start < 2:\n            pass\n"
                                              "        return Response('burned 2 s of CPU')\n",
                         "[limits]\ncpu_ms = 50\n")
    cli(corral, "deploy", "-n", "default", "capped", project)
    r = corral.request("/", host="capped.localhost")
    assert (r.status, r.text) == (503, "Worker exceeded CPU time limit.\n"), r
    settings = corral.admin("GET", "/accounts/local/workers/dispatch/namespaces/default/scripts/capped/settings")
    assert settings.json()["result"]["limits"] == {"cpu_ms": 50}


def test_a_settings_patch_sets_and_clears_a_scripts_limits(corral: Corral, tmp_path: Path) -> None:
    """Cloudflare's PATCH .../settings takes ``limits`` (the SDK's
    SettingsLimits); it answered 200 and dropped them, and the worker kept
    burning CPU. Logpush cannot be turned on: 501, nothing changed."""
    project = project_of(tmp_path / "patched", "        start = time.process_time()\n"
                                               "        while time.process_time() - start < 2:\n            pass\n"
                                               "        return Response('burned 2 s of CPU')\n", "")
    cli(corral, "deploy", "-n", "default", "patched", project)
    path = "/accounts/local/workers/dispatch/namespaces/default/scripts/patched/settings"
    r = corral.admin("PATCH", path, json.dumps({"limits": {"cpu_ms": 50}}).encode(), "application/json")
    assert r.status == 200 and r.json()["result"]["limits"] == {"cpu_ms": 50}, r.text
    r = corral.request("/", host="patched.localhost")
    assert (r.status, r.text) == (503, "Worker exceeded CPU time limit.\n"), r
    refused = corral.admin("PATCH", path, json.dumps({"logpush": True, "limits": None}).encode(),
                           "application/json")
    assert refused.status == 501 and "Logpush" in refused.text, refused.text
    assert corral.admin("GET", path).json()["result"]["limits"] == {"cpu_ms": 50}
    r = corral.admin("PATCH", path, json.dumps({"limits": None, "observability": {"enabled": True}}).encode(),
                     "application/json")
    assert r.status == 200 and "limits" not in r.json()["result"], r.text


def test_a_scripts_own_limits_only_lower_the_platforms() -> None:
    from protocol.messages import Limits
    from supervisor.config import LimitsConfig
    from supervisor.limits.policy import LimitPolicy
    from supervisor.model import ScriptLimits, ScriptRecord

    policy = LimitPolicy(LimitsConfig(cpu_ms=100, sub_requests=10))
    record = ScriptRecord(namespace="ns", name="s", version="v", main_module="w.py", modules={})
    assert policy.defaults_for(record).cpu_ms == 100
    own = msgspec.structs.replace(record, limits=ScriptLimits(cpu_ms=50, subrequests=3))
    assert (policy.defaults_for(own).cpu_ms, policy.defaults_for(own).sub_requests) == (50, 3)
    assert policy.for_call(own, Limits(cpu_ms=80, sub_requests=None, wall_ms=None, memory_mb=None)).cpu_ms == 50
    more = msgspec.structs.replace(record, limits=ScriptLimits(cpu_ms=500))
    assert policy.defaults_for(more).cpu_ms == 100  # never past the platform's
    assert policy.defaults_for(record).cpu_ms == 100  # the cached tiers are not the script's
