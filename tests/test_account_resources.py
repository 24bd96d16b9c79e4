"""KV namespaces and D1 databases made, renamed and deleted through Cloudflare's
API with its official SDK (``client.kv.namespaces``, ``client.d1.database``),
as a platform provisions them per tenant, against a real `corral serve`: the
ids it makes work in bindings, deleting one deletes its data and is refused
while a deployed script binds it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cloudflare
import pytest

from tests.harness import sdk_fixtures

A = "local"
KV_USER = '''from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.method == "POST":
            await self.env.KV.put("greeting", "hello")
        return Response(await self.env.KV.get("greeting") or "none")
'''
D1_USER = '''from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.method == "POST":
            await self.env.DB.exec("CREATE TABLE IF NOT EXISTS notes (body TEXT)")
            await self.env.DB.prepare("INSERT INTO notes VALUES (?)").bind("kept").run()
        tables = await self.env.DB.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all()
        if not tables.results:
            return Response("none")
        row = await self.env.DB.prepare("SELECT count(*) AS n FROM notes").first()
        return Response(f"notes={row['n']}")
'''


server, cf = sdk_fixtures("resources")


def serve(server, name, code, binding, route=True):
    server.deploy(name, code, namespace=None, bindings=[binding])
    if route:  # (a route outlives its script)
        server.route(f"{name}.test/*", name)


def read(server, name, method="GET"):
    resp = server.request("/", host=f"{name}.test", method=method)
    assert resp.status == 200, resp
    return resp.text


def test_a_kv_namespace_made_through_the_sdk(server, cf):
    made = cf.kv.namespaces.create(account_id=A, title="tenant-42")
    assert re.fullmatch(r"[0-9a-f]{32}", made.id) and made.title == "tenant-42"
    assert cf.kv.namespaces.get(made.id, account_id=A).title == "tenant-42"
    assert [(n.id, n.title) for n in cf.kv.namespaces.list(account_id=A)] == [(made.id, "tenant-42")]
    with pytest.raises(cloudflare.ConflictError, match="title already exists"):
        cf.kv.namespaces.create(account_id=A, title="tenant-42")
    assert cf.kv.namespaces.update(made.id, account_id=A, title="tenant-42-kv").title == "tenant-42-kv"

    serve(server, "kvuser", KV_USER, {"type": "kv_namespace", "name": "KV", "namespace_id": made.id})
    assert read(server, "kvuser", "POST") == "hello"
    with pytest.raises(cloudflare.ConflictError, match="bound by kvuser"):
        cf.kv.namespaces.delete(made.id, account_id=A)
    assert read(server, "kvuser") == "hello", "a refused delete deletes nothing"

    assert server.admin("DELETE", "/accounts/local/workers/scripts/kvuser").status == 200
    cf.kv.namespaces.delete(made.id, account_id=A)
    with pytest.raises(cloudflare.NotFoundError):
        cf.kv.namespaces.get(made.id, account_id=A)
    # Its data went with it: a script binding the id again starts empty.
    serve(server, "kvuser", KV_USER, {"type": "kv_namespace", "name": "KV", "namespace_id": made.id}, route=False)
    assert read(server, "kvuser") == "none"


def test_a_d1_database_made_through_the_sdk(server, cf):
    made = cf.d1.database.create(account_id=A, name="tenant-db")
    assert re.fullmatch(r"[0-9a-f-]{36}", made.uuid) and made.name == "tenant-db"
    assert [d.uuid for d in cf.d1.database.list(account_id=A, name="tenant-db")] == [made.uuid]
    assert cf.d1.database.get(made.uuid, account_id=A).name == "tenant-db"
    with pytest.raises(cloudflare.ConflictError, match="already exists"):
        cf.d1.database.create(account_id=A, name="tenant-db")

    serve(server, "dbuser", D1_USER, {"type": "d1", "name": "DB", "id": made.uuid})
    assert read(server, "dbuser", "POST") == "notes=1"
    with pytest.raises(cloudflare.ConflictError, match="bound by dbuser"):
        cf.d1.database.delete(made.uuid, account_id=A)
    assert read(server, "dbuser") == "notes=1"

    assert server.admin("DELETE", "/accounts/local/workers/scripts/dbuser").status == 200
    cf.d1.database.delete(made.uuid, account_id=A)
    assert list(cf.d1.database.list(account_id=A, name="tenant-db")) == []
    serve(server, "dbuser", D1_USER, {"type": "d1", "name": "DB", "id": made.uuid}, route=False)
    assert read(server, "dbuser") == "none"


def test_a_query_of_a_database_no_endpoint_knows_is_not_found(server):
    """It made a database (a typo's) that list, GET and DELETE said did not
    exist, and that nothing could delete."""
    for tail in ("query", "raw"):
        r = server.admin("POST", f"/accounts/local/d1/database/typo-id/{tail}",
                         b'{"sql": "CREATE TABLE t (x)"}', "application/json")
        assert r.status == 404 and "no D1 database 'typo-id'" in r.text, r.text
    assert server.admin("GET", "/accounts/local/d1/database/typo-id").status == 404


def test_a_database_only_a_namespaces_script_binds_is_not_found_with_where_to_ask(server):
    """The README's `corral d1 execute DB --file ...` for a user worker's
    database, without --namespace: not found, saying which namespace binds it
    (the message said no deployed script's binding names it)."""
    server.namespace("default")
    server.deploy("binder", D1_USER, namespace="default",
                  bindings=[{"type": "d1", "name": "DB", "id": "tenant-db-1"}])
    r = server.admin("POST", "/accounts/local/d1/database/tenant-db-1/query",
                     b'{"sql": "SELECT 1"}', "application/json")
    assert r.status == 404, r.text
    assert "scripts of dispatch namespace 'default' bind it" in r.text and "--namespace default" in r.text, r.text
    there = server.admin("POST", "/accounts/local/d1/database/tenant-db-1/query?namespace=default",
                         b'{"sql": "SELECT 1 AS one"}', "application/json")
    assert there.status == 200, there.text


def test_a_failed_query_answers_d1s_code_and_words(server):
    """Cloudflare's API answers a failed D1 query with code 7500 and SQLite's
    words alone; "D1_ERROR: " is what the binding's JavaScript puts before them."""
    made = server.admin("POST", "/accounts/local/d1/database", b'{"name": "failing-db"}', "application/json")
    db = made.json()["result"]["uuid"]
    r = server.admin("POST", f"/accounts/local/d1/database/{db}/query", b'{"sql": "SELEC 1"}', "application/json")
    error = r.json()["errors"][0]
    assert (r.status, error["code"]) == (400, 7500), r.text
    assert error["message"].startswith('near "SELEC": syntax error'), error


@pytest.mark.parametrize("path, body, words", [
    ("/accounts/local/storage/kv/namespaces", {"title": ""}, "1 to 512 printable"),
    ("/accounts/local/storage/kv/namespaces", {"name": "x"}, "send {\"title\""),
    ("/accounts/local/d1/database", {"name": "no spaces"}, "letters, digits"),
    ("/accounts/local/d1/database", ["x"], "send {\"name\""),
])
def test_bad_resource_calls_are_refused_with_a_reason(server, path, body, words):
    before = server.admin("GET", path).json()["result"]
    resp = server.admin("POST", path, body)
    assert resp.status == 400 and words in resp.json()["errors"][0]["message"], resp.text
    assert server.admin("GET", path).json()["result"] == before


def test_corral_d1_execute_finds_a_made_database_by_its_name_or_id(server, cf, tmp_path):
    made = cf.d1.database.create(account_id=A, name="cli-db")

    def execute(database: str, sql: str) -> list:
        done = subprocess.run([sys.executable, "-m", "supervisor", "d1", "execute", "--socket", server.socket_path,
                               "--json", "--config", str(tmp_path), database, "--command", sql],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    execute("cli-db", "CREATE TABLE made_here (x)")
    out = execute(made.uuid, "SELECT name FROM sqlite_master WHERE type = 'table'")
    assert "made_here" in json.dumps(out), out


R2_USER = '''from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.method == "POST":
            await self.env.BUCKET.put("photo.jpg", b"pixels")
        if request.method == "DELETE":
            await self.env.BUCKET.delete("photo.jpg")
        found = await self.env.BUCKET.get("photo.jpg")
        return Response(await found.text() if found else "none")
'''


def test_an_r2_bucket_made_through_the_sdk_is_deleted_only_empty(server, cf):
    made = cf.r2.buckets.create(account_id=A, name="tenant-photos")
    assert made.name == "tenant-photos" and made.creation_date
    cf.r2.buckets.create(account_id=A, name="tenant-logs")
    listed = cf.r2.buckets.list(account_id=A)
    assert [b.name for b in listed.buckets] == ["tenant-logs", "tenant-photos"]
    assert [b.name for b in cf.r2.buckets.list(account_id=A, direction="desc", per_page=1).buckets] == \
        ["tenant-photos"]
    assert [b.name for b in cf.r2.buckets.list(account_id=A, name_contains="log").buckets] == ["tenant-logs"]
    assert cf.r2.buckets.get("tenant-photos", account_id=A).name == "tenant-photos"
    with pytest.raises(cloudflare.ConflictError, match="already exists"):
        cf.r2.buckets.create(account_id=A, name="tenant-photos")

    binding = {"type": "r2_bucket", "name": "BUCKET", "bucket_name": "tenant-photos"}
    serve(server, "r2user", R2_USER, binding)
    assert read(server, "r2user", "POST") == "pixels"
    with pytest.raises(cloudflare.ConflictError, match="bound by r2user"):
        cf.r2.buckets.delete("tenant-photos", account_id=A)
    assert server.admin("DELETE", "/accounts/local/workers/scripts/r2user").status == 200
    # Unbound but not empty: Cloudflare deletes only an empty bucket, and so does Corral.
    with pytest.raises(cloudflare.ConflictError, match="not empty"):
        cf.r2.buckets.delete("tenant-photos", account_id=A)
    serve(server, "r2user", R2_USER, binding, route=False)
    assert read(server, "r2user") == "pixels", "a refused delete deletes nothing"
    assert read(server, "r2user", "DELETE") == "none"
    assert server.admin("DELETE", "/accounts/local/workers/scripts/r2user").status == 200
    cf.r2.buckets.delete("tenant-photos", account_id=A)
    assert [b.name for b in cf.r2.buckets.list(account_id=A).buckets] == ["tenant-logs"]
    with pytest.raises(cloudflare.NotFoundError):
        cf.r2.buckets.get("tenant-photos", account_id=A)
    bad = server.admin("POST", "/accounts/local/r2/buckets", {"name": "No_Caps"})
    assert bad.status == 400 and "lowercase letters" in bad.json()["errors"][0]["message"]


def test_a_d1_databases_one_setting_is_read_replication_disabled(cf):
    made = cf.d1.database.create(account_id="local", name="single-copy")
    kept = cf.d1.database.update(made.uuid, account_id="local", read_replication={"mode": "disabled"})
    assert kept.uuid == made.uuid and kept.read_replication.mode == "disabled"
    assert cf.d1.database.edit(made.uuid, account_id="local", read_replication={"mode": "disabled"}).name == \
        "single-copy"
    with pytest.raises(cloudflare.BadRequestError, match="keeps one copy"):
        cf.d1.database.update(made.uuid, account_id="local", read_replication={"mode": "auto"})
