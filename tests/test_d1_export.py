"""D1 exports as ``wrangler d1 export --remote`` makes them, against a real
`corral serve` over its TCP admin listener: the export call, then the
download from its URL with no credentials; the SQL rebuilds the database.
And the official SDK's ``d1.database.raw`` and batched ``query``."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from tests.harness import with_tcp_admin

A = "/client/v4/accounts/local"
SCHEMA = [
    "CREATE TABLE owners (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
    "CREATE TABLE pets (id INTEGER PRIMARY KEY, owner INTEGER REFERENCES owners(id), "
    "name TEXT, photo BLOB, weight REAL)",
    "CREATE INDEX pets_by_owner ON pets(owner)",
    "CREATE VIEW named AS SELECT name FROM pets",
    # A row that refers to one inserted after it: the export defers the check.
    "INSERT INTO owners VALUES (2, 'O''Brien \"the\" owner')",
    "INSERT INTO pets VALUES (1, 2, 'Rex', x'00ff10', 12.5)",
    "INSERT INTO pets VALUES (2, NULL, 'line\nbreak', NULL, -1e300)",
    "INSERT INTO pets VALUES (9223372036854775807, 2, 'big', x'', 0.1)",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    corral = with_tcp_admin(tmp_path_factory.mktemp("d1export")).start()
    yield corral
    corral.stop()


@pytest.fixture(scope="module")
def wr(server):
    token = server.admin("POST", "/accounts/local/corral/tokens", {"name": "exporter", "scope": "admin"})
    with httpx.Client(base_url=f"http://127.0.0.1:{server.tcp_port}", timeout=60, headers={
            "authorization": f"Bearer {token.json()['result']['value']}"}) as client:
        yield client


@pytest.fixture(scope="module")
def database(wr):
    made = wr.post(f"{A}/d1/database", json={"name": "zoo"})
    assert made.status_code == 200, made.text
    uuid = made.json()["result"]["uuid"]
    query = wr.post(f"{A}/d1/database/{uuid}/query", json={"sql": ";\n".join(SCHEMA)})
    assert query.status_code == 200, query.text
    return uuid


def _export(wr, database, **options):
    resp = wr.post(f"{A}/d1/database/{database}/export",
                   json={"output_format": "polling", "dump_options": options})
    assert resp.status_code == 200, resp.text
    result = resp.json()["result"]
    assert result["status"] == "complete" and result["success"] and isinstance(result["messages"], list)
    url = result["result"]["signed_url"]
    got = httpx.get(url)  # as wrangler fetches it: no credentials
    assert got.status_code == 200, got.text
    return got.text


def _rows(conn):
    return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall() for t in ("owners", "pets")}


def test_an_export_rebuilds_the_database(wr, database):
    sql = _export(wr, database)
    assert sql.startswith("PRAGMA defer_foreign_keys=TRUE;\n")
    rebuilt = sqlite3.connect(":memory:")
    rebuilt.execute("PRAGMA foreign_keys=ON")
    rebuilt.executescript(sql)
    original = sqlite3.connect(":memory:")
    original.executescript(";\n".join(SCHEMA) + ";")
    assert _rows(rebuilt) == _rows(original)
    assert _rows(rebuilt)["pets"][0][3] == b"\x00\xff\x10"
    assert rebuilt.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall() == [
        ("pets_by_owner",)]
    assert rebuilt.execute("SELECT count(*) FROM named").fetchone() == (3,)


def test_an_export_takes_cloudflares_dump_options(wr, database):
    schema_only = _export(wr, database, no_data=True)
    assert "CREATE TABLE owners" in schema_only and "INSERT" not in schema_only
    data_only = _export(wr, database, no_schema=True)
    assert "CREATE" not in data_only and 'INSERT INTO "pets" VALUES(1,2,\'Rex\',X\'00FF10\',12.5);' in data_only
    one_table = _export(wr, database, tables=["owners"])
    assert "owners" in one_table and "pets" not in one_table
    resp = wr.post(f"{A}/d1/database/{database}/export", json={"dump_options": {"tables": ["nope"]}})
    assert resp.status_code == 400 and "no such table to export: nope" in resp.text


def test_the_download_url_is_the_only_credential_it_takes(server, wr, database):
    base = f"http://127.0.0.1:{server.tcp_port}{A}"
    assert httpx.get(f"{base}/d1/exports/not-a-token").status_code == 404
    # Without a token, nothing else: no path below or beside it.
    assert httpx.get(f"{base}/d1/exports/not-a-token/more").status_code == 401
    assert httpx.get(f"{base}/d1/database").status_code == 401
    assert httpx.post(f"{base}/d1/database/{database}/export", json={}).status_code == 401
    unknown = wr.post(f"{A}/d1/database/no-such-db/export", json={})
    assert unknown.status_code == 404 and "no D1 database 'no-such-db'" in unknown.text


def test_the_sdk_queries_raw_rows_and_batches(server, database):
    from cloudflare import Cloudflare

    token = server.admin("POST", "/accounts/local/corral/tokens", {"name": "sdk", "scope": "admin"})
    cf = Cloudflare(api_token=token.json()["result"]["value"], max_retries=0,
                    base_url=f"http://127.0.0.1:{server.tcp_port}/client/v4")
    raw = list(cf.d1.database.raw(database, account_id="local",
                                  sql="SELECT id, name, photo FROM pets WHERE owner = ? ORDER BY id", params=["2"]))
    assert raw[0].results.columns == ["id", "name", "photo"]
    # (The SDK reads numbers as floats: the 64-bit id is checked in the export above.)
    assert raw[0].results.rows[0] == [1, "Rex", [0, 255, 16]] and raw[0].results.rows[1][1:] == ["big", []]
    # A batch runs as one transaction: a failing statement keeps none of it.
    batch = list(cf.d1.database.query(database, account_id="local", batch=[
        {"sql": "INSERT INTO owners VALUES (?, 'new')", "params": ["7"]},
        {"sql": "SELECT count(*) AS n FROM owners"}]))
    assert [r.results for r in batch] == [[], [{"n": 2}]]
    with pytest.raises(Exception, match="UNIQUE constraint failed"):
        cf.d1.database.query(database, account_id="local", batch=[
            {"sql": "INSERT INTO owners VALUES (8, 'kept?')"}, {"sql": "INSERT INTO owners VALUES (7, 'again')"}])
    assert list(cf.d1.database.raw(database, account_id="local", sql="SELECT count(*) FROM owners")
                )[0].results.rows == [[2]]
    cf.d1.database.query(database, account_id="local", sql="DELETE FROM owners WHERE id = 7")
    with pytest.raises(Exception, match="batch holds no statement"):
        cf.d1.database.query(database, account_id="local", batch=[])
    cf.close()
