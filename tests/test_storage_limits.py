"""Storage under pressure (issue 15): quotas, the D1 time limit, concurrent
writers, a ``kill -9`` of the supervisor, and ``corral d1``.

A real ``corral serve`` with caps for the ``plan:free`` tag and a short D1
query time limit; each test states the limit it checks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from tests.harness import REPO, Corral
from tests.storage_helpers import ALL, deploy, fails, ok, start

CONFIG = """
[storage]
d1_query_ms = 300

[storage.quota.tag."plan:free"]
kv_keys = 3
d1_bytes = 65536
r2_bytes = 1000
cache_bytes = 2000
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = start(tmp_path_factory.mktemp("storage-limits"), CONFIG)
    deploy(server, "free", ALL, tags=["plan:free"])
    deploy(server, "paid", ALL)
    yield server
    server.stop()


def test_kv_key_quota(server) -> None:
    got = ok(server, "free", """
for i in range(3):
    await env.KV.put(f"k{i}", "v")
await env.KV.put("k0", "overwrite is fine")
try:
    await env.KV.put("k3", "v")
    return None
except JsException as e:
    return e.message""")
    assert "storage quota exceeded (3 of 3 allowed" in got and "kv_keys" in got
    # The same KV namespace, written by an untagged script of the namespace: its own caps.
    ok(server, "paid", 'await env.KV.put("k3", "v")')
    assert ok(server, "free", 'return await env.KV.get("k0")') == "overwrite is fine"


def test_d1_size_quota(server) -> None:
    got = ok(server, "free", """
await env.DB.exec("CREATE TABLE big (b BLOB)")
try:
    for i in range(100):
        await env.DB.prepare("INSERT INTO big VALUES (?)").bind(bytes(4000)).run()
    return None
except JsException as e:
    n = await env.DB.prepare("SELECT count(*) AS n FROM big").first("n")
    return [e.message, n]""")
    assert "database full: storage quota exceeded" in got[0] and "d1_bytes" in got[0]
    assert "SQLITE_FULL" in got[0] and 5 < got[1] < 20
    # Reads go on; the database is not broken.
    assert ok(server, "free", 'return (await env.DB.prepare("SELECT 1 AS x").first())["x"]') == 1


def test_r2_bytes_quota(server) -> None:
    got = ok(server, "free", """
await env.BUCKET.put("a", b"x" * 600)
await env.BUCKET.put("a", b"x" * 900)  # replacing counts the difference
try:
    await env.BUCKET.put("b", b"x" * 200)
    return None
except JsException as e:
    return [e.message, await env.BUCKET.head("b")]""")
    assert "bucket full: storage quota exceeded" in got[0] and "r2_bytes" in got[0]
    assert got[1] is None


def test_cache_bytes_quota(server) -> None:
    got = ok(server, "free", """
c = await caches.open("q")
await c.put("https://x/1", Response("x" * 1500, headers={"cache-control": "max-age=60"}))
try:
    await c.put("https://x/2", Response("x" * 1500, headers={"cache-control": "max-age=60"}))
    return None
except JsException as e:
    return e.message""")
    assert "cache full" in got and "cache_bytes" in got


def test_d1_query_time_limit(server) -> None:
    error = fails(server, "paid", """
await env.DB.prepare("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                     "SELECT count(*) FROM c").all()""")
    assert "ran past its time limit" in error["message"] and "SQLITE_INTERRUPT" in error["message"]
    assert ok(server, "paid", 'return (await env.DB.prepare("SELECT 2 AS x").first())["x"]') == 2


def test_concurrent_writers_are_serialised_and_others_still_served(server) -> None:
    ok(server, "paid", 'await env.DB.exec("CREATE TABLE IF NOT EXISTS w (who TEXT, i INT)")')
    deploy(server, "neighbour", ALL, namespace="other")
    ok(server, "neighbour", 'await env.KV.put("n", "still here")', namespace="other")
    errors: list = []
    neighbour: list = []
    stop = threading.Event()

    def writer(who: int) -> None:
        try:
            ok(server, "paid", f"""
for i in range(25):
    await env.DB.prepare("INSERT INTO w VALUES (?, ?)").bind("w{who}", i).run()""")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader() -> None:
        while not stop.is_set():
            neighbour.append(ok(server, "neighbour", 'return await env.KV.get("n")',
                                namespace="other"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    side = threading.Thread(target=reader)
    side.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    side.join()
    assert not errors, errors
    assert ok(server, "paid", 'return await env.DB.prepare("SELECT count(*) AS n FROM w").first("n")') == 200
    assert neighbour and set(neighbour) == {"still here"}


def test_data_survives_kill_9_of_the_supervisor(tmp_path) -> None:
    state = tmp_path / "state"
    server = start(state)
    try:
        deploy(server, "t", ALL)
        ok(server, "t", """
await env.KV.put("durable", "yes")
await env.DB.exec("CREATE TABLE d (v); INSERT INTO d VALUES ('yes')")
await env.BUCKET.put("durable", "yes")""")
    finally:
        os.killpg(server.proc.pid, signal.SIGKILL)  # no drain, no close: a crash
        server.proc.wait()
    again = Corral(state, extra_args=["--config", str(state / "storage-test.toml")]).start()
    try:
        got = ok(again, "t", """
return [await env.KV.get("durable"),
        await env.DB.prepare("SELECT v FROM d").first("v"),
        await (await env.BUCKET.get("durable")).text()]""")
        assert got == ["yes", "yes", "yes"]
    finally:
        again.stop()


def _corral(server: Corral, *args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supervisor", "--socket", server.socket_path, *args],
                          cwd=cwd or str(REPO), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_cli_d1_execute_and_migrations(server, tmp_path) -> None:
    project = tmp_path / "proj"
    (project / "migrations").mkdir(parents=True)
    (project / "wrangler.toml").write_text(
        'main = "worker.py"\n[[d1_databases]]\nbinding = "DB"\ndatabase_name = "main-db"\n'
        'database_id = "db-1"\n')
    (project / "worker.py").write_text("")
    (project / "migrations" / "0001_init.sql").write_text(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\n")
    (project / "migrations" / "0002_seed.sql").write_text(
        "INSERT INTO notes (body) VALUES ('it''s seeded');\n")
    first = _corral(server, "d1", "migrations", "apply", "DB", "-n", "default", "--config", str(project))
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["applied", "0001_init.sql", "applied", "0002_seed.sql"]
    again = _corral(server, "d1", "migrations", "apply", "main-db", "-n", "default", cwd=str(project))
    assert again.returncode == 0 and "no migrations to apply" in again.stdout, again.stderr
    # The tenant bound to db-1 in namespace default sees the migrated schema.
    assert ok(server, "paid", 'return await env.DB.prepare("SELECT body FROM notes").first("body")') \
        == "it's seeded"
    out = _corral(server, "--json", "d1", "execute", "DB", "-n", "default", "--config",
                  str(project), "--command", "SELECT count(*) AS n FROM notes")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["results"] == [{"n": 1}]
    script = tmp_path / "q.sql"
    script.write_text("INSERT INTO notes (body) VALUES ('two');\nSELECT body FROM notes ORDER BY id;")
    out = _corral(server, "d1", "execute", "db-1", "-n", "default", "--file", str(script))
    assert out.returncode == 0 and out.stdout.splitlines() == [
        "ok: 1 change(s)", '{"body": "it\'s seeded"}', '{"body": "two"}'], out.stdout
    bad = _corral(server, "d1", "execute", "db-1", "-n", "default", "--command", "ATTACH 'x' AS y")
    assert bad.returncode == 1 and "ATTACH" in bad.stderr
    # The platform's database of the same id would be another database; no
    # platform script binds one.
    other = _corral(server, "d1", "execute", "db-1", "--command", "SELECT * FROM notes")
    assert other.returncode == 1 and "no deployed script of the platform binds" in other.stderr, other.stderr


def test_cli_d1_execute_outside_a_project(server, tmp_path) -> None:
    """A binding name resolves only through a config: outside a project,
    ``DB`` is no database (it once opened an empty one whose id was "DB")."""
    out = _corral(server, "d1", "execute", "DB", "-n", "default", "--command",
                  "CREATE TABLE stray (x)", cwd=str(tmp_path))
    assert out.returncode == 1, out.stdout
    assert "no database 'DB'" in out.stderr and "no wrangler config" in out.stderr, out.stderr
    assert str(tmp_path) in out.stderr and "db-1" in out.stderr  # where it looked, and the ids there are
    # A project whose config does not name it says what the config has.
    (tmp_path / "wrangler.toml").write_text('main = "w.py"\n[[d1_databases]]\nbinding = "MAIN"\n'
                                            'database_name = "main-db"\ndatabase_id = "db-1"\n')
    out = _corral(server, "d1", "execute", "DB", "-n", "default", "--command", "SELECT 1", cwd=str(tmp_path))
    assert out.returncode == 1 and "MAIN (main-db, id db-1)" in out.stderr, out.stderr
    # The database id itself, as wrangler takes a database: anywhere.
    (tmp_path / "wrangler.toml").unlink()
    out = _corral(server, "--json", "d1", "execute", "db-1", "-n", "default", "--command",
                  "SELECT name FROM sqlite_master WHERE name = 'stray'", cwd=str(tmp_path))
    assert out.returncode == 0 and json.loads(out.stdout)[0]["results"] == [], out.stderr


def test_wrangler_config_bindings_deploy(server, tmp_path) -> None:
    project = tmp_path / "wp"
    project.mkdir()
    (project / "wrangler.jsonc").write_text(json.dumps({
        "main": "worker.py",
        "kv_namespaces": [{"binding": "KV", "id": "kv-w", "preview_id": "p"}],
        "d1_databases": [{"binding": "DB", "database_name": "n", "database_id": "db-w",
                          "migrations_dir": "m"}],
        "r2_buckets": [{"binding": "BUCKET", "bucket_name": "b-w"}],
    }))
    (project / "worker.py").write_text(
        "from workers import Response, WorkerEntrypoint\n"
        "class Default(WorkerEntrypoint):\n"
        "    async def fetch(self, request):\n"
        "        await self.env.KV.put('k', 'kv')\n"
        "        await self.env.BUCKET.put('k', 'r2')\n"
        "        row = await self.env.DB.prepare('SELECT 1 AS one').first()\n"
        "        return Response.json([await self.env.KV.get('k'), row['one'],\n"
        "                              await (await self.env.BUCKET.get('k')).text()])\n")
    out = _corral(server, "deploy", "-n", "default", "wproj", str(project))
    assert out.returncode == 0, out.stderr
    response = server.request("/", host="wproj.localhost")
    assert response.json() == ["kv", 1, "r2"], response.body


def test_cli_d1_a_migration_is_recorded_whatever_its_text_ends_with(server, tmp_path) -> None:
    """A migration's row was appended after its text: a migration ending in an
    unterminated ``/*`` comment (which SQLite accepts) swallowed it, so the
    migration ran, was not recorded, and ran again at the next apply (here an
    INSERT, twice). And a --file that is not UTF-8 ended in a traceback."""
    project = tmp_path / "comments"
    (project / "migrations").mkdir(parents=True)
    (project / "wrangler.toml").write_text('main = "worker.py"\n[[d1_databases]]\nbinding = "DB"\n'
                                           'database_id = "db-1"\n')
    (project / "migrations" / "0001_counted.sql").write_text(
        "CREATE TABLE IF NOT EXISTS counted (x);\nINSERT INTO counted VALUES (1) /* trailing note")
    for _ in range(2):
        out = _corral(server, "d1", "migrations", "apply", "DB", "-n", "default", "--config", str(project))
        assert out.returncode == 0, out.stderr
    assert "no migrations to apply" in out.stdout, out.stdout
    out = _corral(server, "--json", "d1", "execute", "db-1", "-n", "default", "--command",
                  "SELECT count(*) AS n FROM counted")
    assert json.loads(out.stdout)[0]["results"] == [{"n": 1}], out.stdout
    latin = tmp_path / "latin1.sql"
    latin.write_bytes(b"SELECT 'caf\xe9';")
    out = _corral(server, "d1", "execute", "db-1", "-n", "default", "--file", str(latin))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "is not UTF-8" in out.stderr and "latin1.sql" in out.stderr, out.stderr
    assert server.alive()
