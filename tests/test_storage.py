"""Storage bindings (issue 15): KV, D1, R2 and the Cache API, through real
jailed children and a real ``corral serve``.

Each test runs a few lines of tenant code in the eval tenant
(tests.storage_helpers) and checks Cloudflare's names, shapes and errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3

import pytest

from tests.storage_helpers import ALL, deploy, fails, ok, run, start


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = start(tmp_path_factory.mktemp("storage"))
    deploy(server, "t", ALL)
    yield server
    server.stop()


# -- KV ---------------------------------------------------------------------------


def test_kv_get_put_types_and_missing(server) -> None:
    got = ok(server, "t", """
await env.KV.put("text", "h\\u00e9llo")
await env.KV.put("json", '{"a": [1, 2]}')
await env.KV.put("bytes", b"\\x00\\x01\\xff")
from pyodide.ffi import to_js
await env.KV.put("typed", to_js(b"\\x02\\x03").buffer)  # Pyodide code passes typed arrays
stream = await env.KV.get("text", type="stream")
chunks = [c async for c in stream]
async def not_json():  # JavaScript parses it on Cloudflare: its SyntaxError, a JsException
    try:
        await env.KV.get("text", "json")
    except JsException as e:
        return e.name
return {
    "text": await env.KV.get("text"),
    "json": await env.KV.get("json", "json"),
    "json_dict": await env.KV.get("json", {"type": "json"}),
    "bytes": list(await env.KV.get("bytes", type="arrayBuffer")),
    "bytes2": list(await env.KV.get("bytes", type="bytes")),
    "typed": list(await env.KV.get("typed", type="arrayBuffer")),
    "ab_type": type(await env.KV.get("bytes", "arrayBuffer")).__name__,
    # The current SDK hands a memoryview (to_py() of the ArrayBuffer): its names work too.
    "as_memoryview": [(ab := await env.KV.get("bytes", "arrayBuffer")).nbytes, ab.tobytes().hex(),
                      ab.cast("B").tolist(), ab.tolist()],
    "bytes_type": type(await env.KV.get("bytes", "bytes")).__name__,
    "class": type(env.KV).__name__,
    "stream": b"".join(chunks).decode(),
    "missing": await env.KV.get("nope"),
    "missing_meta": await env.KV.getWithMetadata("nope"),
    "not_json": await not_json(),
}""")
    assert got == {"text": "héllo", "json": {"a": [1, 2]}, "json_dict": {"a": [1, 2]},
                   "bytes": [0, 1, 255], "bytes2": [0, 1, 255], "typed": [2, 3], "stream": "héllo",
                   # An ArrayBuffer, as the binding's JavaScript answer reaches Python on
                   # Cloudflare (``.to_bytes()``, ``.to_py()``); workerd's class name is
                   # what errors about the binding say.
                   "ab_type": "ArrayBuffer", "bytes_type": "bytes", "class": "KvNamespace",
                   "as_memoryview": [3, "0001ff", [0, 1, 255], [0, 1, 255]],
                   "missing": None,
                   "missing_meta": {"value": None, "metadata": None, "cacheStatus": None},
                   "not_json": "SyntaxError"}


def test_kv_metadata_expiration_spellings_and_list(server) -> None:
    got = ok(server, "t", """
import time
await env.KV.put("l/a", "1", {"metadata": {"n": 1}, "expirationTtl": 600})
await env.KV.put("l/b", "2", expirationTtl=600, metadata={"n": 2})
await env.KV.put("l/c", "3", expiration_ttl=600)
await env.KV.put("m/x", "4")
meta = await env.KV.get_with_metadata("l/a", type="text")
page1 = await env.KV.list(prefix="l/", limit=2)
page2 = await env.KV.list({"prefix": "l/", "cursor": page1.cursor})
now = time.time()
return {"meta": [meta.value, meta.metadata.n],
        "page1": [k["name"] for k in page1["keys"]], "complete1": page1.list_complete,
        "page2": [k.name for k in page2.keys], "complete2": page2.list_complete,
        "has_cursor2": "cursor" in page2,
        "ttl_ok": all(590 < k["expiration"] - now < 610 for k in page1["keys"]),
        "meta_listed": page1["keys"][1]["metadata"],
        "bulk": await env.KV.get(["l/a", "m/x", "zz"])}""")
    assert got["meta"] == ["1", 1]
    assert got["page1"] == ["l/a", "l/b"] and got["complete1"] is False
    assert got["page2"] == ["l/c"] and got["complete2"] is True and not got["has_cursor2"]
    assert got["ttl_ok"] and got["meta_listed"] == {"n": 2}
    assert got["bulk"] == {"l/a": "1", "m/x": "4", "zz": None}


def test_kv_delete_and_large_values_stream(server) -> None:
    got = ok(server, "t", """
big = bytes(range(256)) * 12000  # ~3 MiB: streamed both ways
await env.KV.put("big", big)
back = await env.KV.get("big", "arrayBuffer")
await env.KV.delete("big")
return [back == big, await env.KV.get("big")]""")
    assert got == [True, None]


@pytest.mark.parametrize("code, words", [
    ('await env.KV.put("k" * 513, "v")', "414 UTF-8 encoded length of 513 exceeds key length limit of 512"),
    ('await env.KV.get("k" * 513)', "exceeds key length limit of 512"),
    ('await env.KV.put("", "v")', "Key name cannot be empty."),  # workerd's kv.c++
    ('await env.KV.put("k", "v", expirationTtl=10)',
     "KV PUT failed: 400 Invalid expiration_ttl of 10. Expiration TTL must be at least 60."),
    ('await env.KV.put("k", "v", expirationTtl=0)', "Invalid expiration_ttl of 0. Please specify "
                                                    "integer greater than 0."),
    ('await env.KV.put("k", "v", expiration=5)', "Invalid expiration of 5. Please specify integer "
                                                 "greater than the current number of seconds"),
    ('await env.KV.put("k", "v", metadata={"x": "y" * 1100})', "Metadata length of"),
    ('await env.KV.list(limit=1001)', "Invalid key limit"),
    ('await env.KV.put("k", bytes(25 * 1024 * 1024 + 1))', "Value length exceeds limit of 26214400"),
])
def test_kv_errors_are_js_exceptions(server, code: str, words: str) -> None:
    error = fails(server, "t", code)
    assert error["js"] and words in error["message"], error


def test_kv_cache_ttl_below_the_minimum_is_refused(server) -> None:
    # KV's minimum cacheTtl is 30 s (60 s until Cloudflare lowered it on
    # 2026-01-30), however the options are spelled.
    got = ok(server, "t", """
await env.KV.put("cached", "v")
async def attempt(read):
    try:
        return await read
    except JsException as e:
        return e.message
return [await attempt(env.KV.get("cached", cacheTtl=10)),
        await attempt(env.KV.get("cached", {"type": "text", "cacheTtl": 29})),
        await attempt(env.KV.get_with_metadata("cached", cache_ttl=5)),
        await attempt(env.KV.get(["cached"], cacheTtl=1)),
        await env.KV.get("cached", cacheTtl=30),
        await env.KV.get("cached", {"cacheTtl": 3600, "type": "text"})]""")
    assert got == ["KV GET failed: 400 Invalid cache_ttl of 10. Cache TTL must be at least 30.",
                   "KV GET failed: 400 Invalid cache_ttl of 29. Cache TTL must be at least 30.",
                   "KV GET failed: 400 Invalid cache_ttl of 5. Cache TTL must be at least 30.",
                   "KV GET_BULK failed: 400 Invalid cache_ttl of 1. Cache TTL must be at least 30.",
                   "v", "v"]


def test_kv_bad_type_is_a_type_error(server) -> None:
    # The JavaScript TypeError workerd's binding throws: a JsException named
    # TypeError (SPEC 3), that is Python's TypeError too.
    error = fails(server, "t", 'await env.KV.get("k", type="blob")')
    assert error["name"] == "TypeError" and error["js"] and "Unknown response type" in error["message"], error
    caught = ok(server, "t", """
out = []
for attempt in (lambda: env.KV.put("k", None), lambda: env.KV.list(5), lambda: env.BUCKET.put("k", 5)):
    try:
        await attempt()
        out.append("accepted")
    except TypeError as e:
        out.append([isinstance(e, JsException), e.name])
return out""")
    assert caught == [[True, "TypeError"]] * 3, caught


# -- D1 ---------------------------------------------------------------------------


def test_d1_prepare_bind_all_first_run_raw(server) -> None:
    got = ok(server, "t", """
await env.DB.exec("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, age INT, pic BLOB);\\n"
                  "CREATE INDEX users_name ON users (name)")
ins = env.DB.prepare("INSERT INTO users (name, age, pic) VALUES (?, ?, ?)")
r1 = await ins.bind("ann", 31, b"\\x01\\x02").run()
r2 = await ins.bind("bob", None, None).run()
every = await env.DB.prepare("SELECT * FROM users ORDER BY id").all()
return {
    "run_meta": [r1.meta.changes, r1.meta.last_row_id, r1.meta.changed_db, r2.meta.last_row_id,
                 r1.meta.rows_written, r1.success],
    "rows": every.results, "rows_read": every.meta.rows_read,
    "first": await env.DB.prepare("SELECT name, age FROM users WHERE id = ?").bind(1).first(),
    "first_col": await env.DB.prepare("SELECT name FROM users WHERE id = ?").bind(2).first("name"),
    "first_none": await env.DB.prepare("SELECT * FROM users WHERE id = 99").first(),
    "raw": await env.DB.prepare("SELECT id, name FROM users ORDER BY id").raw(columnNames=True),
    "raw_plain": await env.DB.prepare("SELECT id FROM users ORDER BY id").raw(),
    "meta_keys": sorted(every.meta),
    "timings": [every.meta.timings.sql_duration_ms >= 0, every.meta.served_by_primary],
}""")
    assert got["run_meta"] == [1, 1, True, 2, 1, True]
    assert got["rows"] == [{"id": 1, "name": "ann", "age": 31, "pic": [1, 2]},
                           {"id": 2, "name": "bob", "age": None, "pic": None}]
    assert got["rows_read"] == 2
    assert got["first"] == {"name": "ann", "age": 31} and got["first_col"] == "bob"
    assert got["first_none"] is None
    assert got["raw"] == [["id", "name"], [1, "ann"], [2, "bob"]] and got["raw_plain"] == [[1], [2]]
    for key in ("changes", "last_row_id", "rows_read", "rows_written", "duration", "changed_db",
                "served_by_region", "served_by_primary", "timings"):  # Cloudflare's D1 meta
        assert key in got["meta_keys"]
    assert got["timings"] == [True, True]


def test_results_with_fields_named_like_dict_methods_stay_dicts(server) -> None:
    # A column (or a KV metadata field) named items, get, keys or values hid
    # the dict method: json.dumps(row), row.items() and row.get() failed, and
    # with them Response.json of the result. The field and the method both work.
    got = ok(server, "t", """
import json
await env.DB.exec("CREATE TABLE shelf (id INTEGER PRIMARY KEY, items TEXT, get TEXT, keys INT)")
await env.DB.prepare("INSERT INTO shelf (items, get, keys) VALUES (?, ?, ?)").bind("a,b", "g", 7).run()
row = await env.DB.prepare("SELECT * FROM shelf").first()
await env.KV.put("shelf", "x", metadata={"values": [1], "get": "m"})
listing = await env.KV.list(prefix="shelf")
meta = listing.keys[0].metadata
return {"json": json.loads(json.dumps(row)), "items": row.items, "pairs": sorted(row.items()),
        "get": row.get("id"), "field_get": row["get"], "keys_field": row.keys, "all": json.loads(json.dumps(
            await env.DB.prepare("SELECT * FROM shelf").all()))["results"],
        "listed": [k.name for k in listing.keys], "key_names": sorted(listing.keys()),
        "meta": json.loads(json.dumps(meta)), "meta_values": meta.values, "meta_get": meta.get("get")}""")
    row = {"id": 1, "items": "a,b", "get": "g", "keys": 7}
    assert got == {"json": row, "items": "a,b", "pairs": sorted([list(p) for p in row.items()]), "get": 1,
                   "field_get": "g", "keys_field": 7, "all": [row], "listed": ["shelf"],
                   "key_names": ["cacheStatus", "keys", "list_complete"],
                   "meta": {"values": [1], "get": "m"}, "meta_values": [1], "meta_get": "m"}, got


def test_d1_batch_is_one_transaction(server) -> None:
    got = ok(server, "t", """
await env.DB.exec("CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INT NOT NULL)")
results = await env.DB.batch([
    env.DB.prepare("INSERT INTO acct VALUES (?, ?)").bind(1, 100),
    env.DB.prepare("INSERT INTO acct VALUES (?, ?)").bind(2, 50),
    env.DB.prepare("SELECT sum(bal) AS total FROM acct"),
])
try:
    await env.DB.batch([
        env.DB.prepare("UPDATE acct SET bal = bal - 70 WHERE id = 1"),
        env.DB.prepare("INSERT INTO acct VALUES (1, 0)"),  # fails: the update must not stay
    ])
    failed = None
except JsException as e:
    failed = str(e)
after = await env.DB.prepare("SELECT bal FROM acct WHERE id = 1").first("bal")
return [len(results), results[2].results[0]["total"], failed, after]""")
    assert got[:2] == [3, 150]
    assert "D1_ERROR: UNIQUE constraint failed: acct.id: SQLITE_CONSTRAINT" in got[2]
    assert got[3] == 100


@pytest.mark.parametrize("sql, words", [
    ("SELECT * FROM nowhere", "D1_ERROR: no such table: nowhere: SQLITE_ERROR"),
    ("SELEC 1", "syntax error"),
    ("ATTACH DATABASE '/tmp/corral-attack.db' AS x", "ATTACH and DETACH"),
    ("VACUUM INTO '/tmp/corral-attack.db'", "VACUUM"),
    ("SELECT load_extension('/tmp/evil.so')", "load_extension() is not allowed"),
    ("PRAGMA journal_mode = DELETE", "PRAGMA journal_mode is not allowed"),
    ("PRAGMA writable_schema = 1", "PRAGMA writable_schema is not allowed"),
    ("BEGIN TRANSACTION", "use batch()"),
])
def test_d1_errors_and_refused_sql(server, sql: str, words: str) -> None:
    error = fails(server, "t", f"await env.DB.prepare({sql!r}).all()")
    assert error["js"] and error["name"] == "Error" and words in error["message"], error
    assert not os.path.exists("/tmp/corral-attack.db")


def test_d1_allowed_pragmas_and_bad_binds(server) -> None:
    got = ok(server, "t", """
await env.DB.exec("CREATE TABLE IF NOT EXISTS p (x)")
info = await env.DB.prepare("PRAGMA table_info(p)").all()
try:
    env.DB.prepare("SELECT ?").bind({"a": 1})
    bad = None
except JsException as e:
    bad = e.message
return [info.results[0]["name"], bad]""")
    assert got[0] == "x" and got[1].startswith("D1_TYPE_ERROR")


def test_d1_bind_of_an_int_past_2_53_is_d1s_type_error(server) -> None:
    # On Cloudflare the int reaches D1 through Pyodide, which makes one past
    # +-2**53 a BigInt; D1's bind() refuses a BigInt with D1_TYPE_ERROR.
    got = ok(server, "t", """
def attempt(value):
    try:
        env.DB.prepare("SELECT ? AS v").bind(value)
        return None
    except JsException as e:
        return [e.name, e.message]
edge = await env.DB.prepare("SELECT ? AS v, ? AS w").bind(2**53, -(2**53)).first()
return [attempt(2**64), attempt(2**53 + 1), attempt(-(2**53) - 1), attempt(2**63 - 1),
        attempt(10**2000), [edge["v"], edge["w"]]]""")
    assert got[0] == ["Error", "D1_TYPE_ERROR: Type 'bigint' not supported for value "
                               "'18446744073709551616'"]
    assert got[1] == ["Error", "D1_TYPE_ERROR: Type 'bigint' not supported for value "
                               "'9007199254740993'"]
    assert got[2][1].endswith("'-9007199254740993'") and got[3][1].endswith("'9223372036854775807'")
    assert got[4][1].startswith("D1_TYPE_ERROR: Type 'bigint'"), got[4]
    assert got[5] == [2**53, -(2**53)]


def test_d1_exec_reports_count_and_line(server) -> None:
    got = ok(server, "t", """
r = await env.DB.exec("CREATE TABLE e1 (a);\\nINSERT INTO e1 VALUES (1);\\nINSERT INTO e1 VALUES (2)")
try:
    await env.DB.exec("INSERT INTO e1 VALUES (3);\\nINSERT INTO nope VALUES (1)")
    err = None
except JsException as e:
    err = e.message
n = await env.DB.prepare("SELECT count(*) AS n FROM e1").first("n")
return [r.count, "duration" in r, err, n]""")
    assert got[0] == 3 and got[1]
    # d1-api.ts quotes the failed line: "Error in line 2: <its SQL>: <error>".
    assert got[2].startswith("D1_EXEC_ERROR: Error in line 2: INSERT INTO nope VALUES (1): no such table: nope")
    assert got[3] == 2  # exec is atomic: the first insert of the failed exec is gone


def test_d1_sessions_keep_a_bookmark(server) -> None:
    got = ok(server, "t", """
session = env.DB.withSession()
before = session.getBookmark()
await session.prepare("CREATE TABLE IF NOT EXISTS s1 (a)").run()
first = session.getBookmark()
await session.prepare("INSERT INTO s1 VALUES (?)").bind(1).run()
second = session.get_bookmark()
n = await session.prepare("SELECT count(*) AS n FROM s1").first("n")
await session.batch([session.prepare("SELECT 1")])
third = session.getBookmark()
resumed = env.DB.withSession(second)
primary = env.DB.with_session("first-primary").getBookmark()
try:
    env.DB.withSession(42)
    bad = None
except TypeError as e:
    bad = str(e)
return [before, isinstance(first, str) and len(first) > 0, first != second != third, n,
        resumed.getBookmark() == second, primary, bad]""")
    assert got[:6] == [None, True, True, 1, True, None]
    assert "withSession() takes a bookmark" in got[6]


# -- R2 ---------------------------------------------------------------------------


def test_r2_put_get_head_metadata_checksums(server) -> None:
    md5 = hashlib.md5(b"hello r2").hexdigest()
    got = ok(server, "t", f"""
def _missing(obj, name):
    try:
        obj[name]
    except KeyError:
        return True
    return False
obj = await env.BUCKET.put("docs/a.txt", "hello r2",
                           httpMetadata={{"contentType": "text/plain"}},
                           customMetadata={{"owner": "ann"}}, md5="{md5}")
body = await env.BUCKET.get("docs/a.txt")
head = await env.BUCKET.head("docs/a.txt")
from workers import Headers
h = Headers()
head.writeHttpMetadata(h)
await env.BUCKET.put("docs/b.json", b'{{"k": 1}}', http_metadata={{"content_type": "application/json"}})
j = await (await env.BUCKET.get("docs/b.json")).json()
by = await (await env.BUCKET.get("docs/a.txt")).bytes()
return {{"put": [obj.key, obj.size, obj.etag, obj.httpEtag, obj.checksums.toJSON()["md5"],
                obj.checksums.md5.to_bytes().hex(),
                # A digest it does not have is undefined, as workerd's property is: None.
                obj.checksums.sha256, obj.checksums.sha512],
        "text": await body.text(), "head": [head.size, head.httpMetadata.contentType,
        head.customMetadata["owner"], head.uploaded.year > 2000, head.http_etag],
        "header": h.get("content-type"), "json": j, "bytes": by.decode(),
        "missing": [await env.BUCKET.get("nope"), await env.BUCKET.head("nope")],
        # The SDK reaches an object's fields by subscript as well.
        "items": [head["key"], head["httpMetadata"]["contentType"], head["customMetadata"]["owner"],
                  _missing(head, "_raw"), _missing(head, "nope")]}}""")
    # Checksums as workerd has them: bytes (an ArrayBuffer), hex through toJSON().
    assert got["put"] == ["docs/a.txt", 8, md5, f'"{md5}"', md5, md5, None, None]
    assert got["items"] == ["docs/a.txt", "text/plain", "ann", True, True]
    assert got["text"] == "hello r2"
    assert got["head"] == [8, "text/plain", "ann", True, f'"{md5}"']
    assert got["header"] == "text/plain" and got["json"] == {"k": 1} and got["bytes"] == "hello r2"
    assert got["missing"] == [None, None]


def test_r2_serves_objects_as_its_docs_do(server) -> None:
    # The R2 docs' serving pattern, in Python: hasattr(obj, "body") then
    # Response(obj.body) (looking at body used it, so the second look raised),
    # httpMetadata=request.headers with an Expires (kept as a string that
    # writeHttpMetadata could not write back), a Range header with two ranges
    # (a Python ValueError), blob(), and a Blob put.
    got = ok(server, "t", """
from workers import Blob, Headers
await env.BUCKET.put("served", "hello", httpMetadata=Headers(
    {"content-type": "text/plain", "expires": "Wed, 21 Oct 2015 07:28:00 GMT"}))
obj = await env.BUCKET.get("served")
looked = [hasattr(obj, "body"), obj.body is obj.body, obj.bodyUsed]
headers = Headers()
obj.writeHttpMetadata(headers)
text = await obj.text()
blob = await (await env.BUCKET.get("served")).blob()
await env.BUCKET.put("blob", Blob(["x", b"y"]))
refused = []
for header in ("bytes=0-1,3-4", "items=1-2", "bytes=4-2"):
    try:
        await env.BUCKET.get("served", range=Headers({"range": header}))
        refused.append("read")
    except JsException as e:
        refused.append(e.name)
one = await env.BUCKET.get("served", range=Headers({"range": "bytes=1-3"}))
return {"looked": looked, "expires": headers.get("expires"), "text": text,
        "blob": [blob.type, await blob.text()], "put_blob": await (await env.BUCKET.get("blob")).text(),
        "refused": refused, "one": await one.text()}""")
    assert got == {"looked": [True, True, False], "expires": "Wed, 21 Oct 2015 07:28:00 GMT", "text": "hello",
                   "blob": ["text/plain", "hello"], "put_blob": "xy",
                   "refused": ["TypeError", "TypeError", "RangeError"], "one": "ell"}, got


def test_r2_checksum_mismatch_fails_and_stores_nothing(server) -> None:
    error = fails(server, "t", 'await env.BUCKET.put("bad", "data", md5="0" * 32)')
    assert error["js"] and "MD5 checksum you specified did not match" in error["message"]
    assert ok(server, "t", 'return await env.BUCKET.head("bad")') is None


def test_r2_ranges_and_conditionals(server) -> None:
    got = ok(server, "t", """
obj = await env.BUCKET.put("r/digits", "0123456789")
a = await env.BUCKET.get("r/digits", range={"offset": 2, "length": 3})
b = await env.BUCKET.get("r/digits", {"range": {"suffix": 4}})
from workers import Headers
c = await env.BUCKET.get("r/digits", range=Headers({"range": "bytes=5-"}))
miss = await env.BUCKET.get("r/digits", onlyIf={"etagMatches": "nope"})
hit = await env.BUCKET.get("r/digits", only_if={"etag_matches": obj.etag})
none_match = await env.BUCKET.get("r/digits", onlyIf=Headers({"if-none-match": obj.httpEtag}))
cond_put = await env.BUCKET.put("r/digits", "x", onlyIf={"etagMatches": "other"})
return [await a.text(), a.range, await b.text(), await c.text(),
        type(miss).__name__, hasattr(miss, "text"), await hit.text(),
        type(none_match).__name__, cond_put, await (await env.BUCKET.get("r/digits")).text()]""")
    assert got == ["234", {"offset": 2, "length": 3}, "6789", "56789", "R2Object", False,
                   "0123456789", "R2Object", None, "0123456789"]


def test_r2_large_object_streams_both_ways(server) -> None:
    got = ok(server, "t", """
import hashlib
import json
async def parts():
    for i in range(48):
        yield bytes([i]) * 65536
obj = await env.BUCKET.put("large", parts())
body = await env.BUCKET.get("large")
digest = hashlib.md5()
n = 0
async for chunk in body.body:
    digest.update(chunk)
    n += len(chunk)
return [obj.size, n, digest.hexdigest() == obj.etag]""")
    assert got == [48 * 65536, 48 * 65536, True]


def test_r2_list_prefix_delimiter_cursor_include_and_delete(server) -> None:
    got = ok(server, "t", """
for key in ["ls/a", "ls/b", "ls/d1/x", "ls/d1/y", "ls/d2/z", "ls/e"]:
    await env.BUCKET.put(key, key, customMetadata={"k": key})
flat = await env.BUCKET.list(prefix="ls/", limit=4)
rest = await env.BUCKET.list(prefix="ls/", cursor=flat.cursor)
tree = await env.BUCKET.list({"prefix": "ls/", "delimiter": "/"})
paged = []
cursor = None
while True:
    page = await env.BUCKET.list(prefix="ls/", delimiter="/", limit=2, cursor=cursor)
    paged += [o.key for o in page.objects] + list(page.delimitedPrefixes)
    if not page.truncated:
        break
    cursor = page.cursor
meta = await env.BUCKET.list(prefix="ls/a", include=["customMetadata"])
plain = await env.BUCKET.list(prefix="ls/a")
await env.BUCKET.delete("ls/a")
await env.BUCKET.delete(["ls/b", "ls/e", "ls/none"])
left = await env.BUCKET.list(prefix="ls/")
return {"flat": [o.key for o in flat.objects], "truncated": flat.truncated,
        "rest": [o.key for o in rest.objects], "rest_truncated": rest.truncated,
        "tree": [[o.key for o in tree.objects], tree.delimitedPrefixes],
        "paged": sorted(paged), "meta": meta.objects[0].customMetadata,
        "plain": plain.objects[0].customMetadata, "left": [o.key for o in left.objects]}""")
    assert got["flat"] == ["ls/a", "ls/b", "ls/d1/x", "ls/d1/y"] and got["truncated"]
    assert got["rest"] == ["ls/d2/z", "ls/e"] and not got["rest_truncated"]
    assert got["tree"] == [["ls/a", "ls/b", "ls/e"], ["ls/d1/", "ls/d2/"]]
    assert got["paged"] == ["ls/a", "ls/b", "ls/d1/", "ls/d2/", "ls/e"]
    # Without include, a listed object's metadata is undefined (workerd's R2 list).
    assert got["meta"] == {"k": "ls/a"} and got["plain"] is None
    assert got["left"] == ["ls/d1/x", "ls/d1/y", "ls/d2/z"]


def test_r2_multipart_upload(server) -> None:
    got = ok(server, "t", """
import hashlib
import json
up = await env.BUCKET.createMultipartUpload("mp/file", httpMetadata={"contentType": "x/y"})
p1 = await up.uploadPart(1, b"a" * 5242880)  # R2's smallest part but the last: 5 MiB
p2 = await up.upload_part(2, "tail")
same = env.BUCKET.resumeMultipartUpload("mp/file", up.uploadId)
obj = await same.complete([p1, {"part_number": 2, "etag": p2.etag}])
body = await (await env.BUCKET.get("mp/file")).bytes()
want = hashlib.md5(bytes.fromhex(p1.etag) + bytes.fromhex(p2.etag)).hexdigest() + "-2"
gone = await env.BUCKET.createMultipartUpload("mp/gone")
await gone.uploadPart(1, "x")
await gone.abort()
try:
    await gone.uploadPart(2, "y")
    err = None
except JsException as e:
    err = e.message
return [obj.size, body == b"a" * 5242880 + b"tail", obj.etag == want,
        obj.httpMetadata.contentType, err, await env.BUCKET.head("mp/gone"),
        [up["key"], up["uploadId"] == up.uploadId]]""")
    assert got[:4] == [5242884, True, True, "x/y"] and got[6] == ["mp/file", True]
    assert "multipart upload does not exist" in got[4] and got[5] is None


#: Tenant code: an upload's completion, its size or R2's error message.
COMPLETE = """
async def complete(upload, parts):
    try:
        return (await upload.complete(parts)).size
    except JsException as e:
        return e.message
"""


def test_r2_multipart_parts_keep_r2s_sizes(server) -> None:
    # Every part but the last is at least 5 MiB and all of one size; the last
    # is no larger. A refused completion leaves the upload to complete again.
    got = ok(server, "t", COMPLETE + """small = await env.BUCKET.createMultipartUpload("mp/small")
s1 = await small.uploadPart(1, b"a" * 100000)
s2 = await small.uploadPart(2, "tail")
mib5 = 5 * 1024 * 1024
up = await env.BUCKET.createMultipartUpload("mp/sizes")
p1 = await up.uploadPart(1, b"a" * mib5)
p2 = await up.uploadPart(2, b"b" * (mib5 + 1))
p3 = await up.uploadPart(3, "c")
return [await complete(small, [s1, s2]), await complete(up, [p1, p2, p3]),
        await complete(up, [p1, p2]), await complete(up, [p1, p3]),
        await env.BUCKET.head("mp/small")]""")
    assert got[0].startswith("completeMultipartUpload: ") and got[0].endswith("(10011)"), got[0]
    assert "part 1 is 100000 bytes" in got[0] and "at least 5242880 bytes" in got[0]
    assert got[1].endswith("(10048)") and "part 2 is 5242881 bytes" in got[1], got[1]
    assert got[2].endswith("(10048)") and "last part" in got[2], got[2]
    assert got[3] == 5242881 and got[4] is None


def test_r2_multipart_uploads_expire_after_seven_days(server) -> None:
    """R2's default lifecycle policy: an upload expires 7 days after it was
    created. Its parts are gone, with the bytes they held against the bucket,
    once the bucket's next upload is created; the upload no longer exists."""
    got = ok(server, "t", """
old = await env.BUCKET.createMultipartUpload("exp/old")
await old.uploadPart(1, b"p" * 1000)
return old.uploadId""")
    [index] = list(server.state_dir.glob("storage/r2/*/index.sqlite3"))
    conn = sqlite3.connect(index)
    try:
        def held() -> tuple[int, int]:
            parts = conn.execute("SELECT count(*) FROM parts WHERE upload_id = ?", (got,)).fetchone()[0]
            return parts, conn.execute("SELECT bytes FROM stats").fetchone()[0]

        parts, bytes_before = held()
        assert parts == 1
        blobs = {p.name for p in index.parent.glob("blobs/*")}
        with conn:  # created eight days ago
            conn.execute("UPDATE uploads SET created = created - 8 * 86400 WHERE upload_id = ?", (got,))
        after = ok(server, "t", f"""
old = env.BUCKET.resumeMultipartUpload("exp/old", {got!r})
try:
    await old.uploadPart(2, "late")
    late = None
except JsException as e:
    late = e.message
fresh = await env.BUCKET.createMultipartUpload("exp/fresh")
await fresh.abort()
return late""")
        assert after is not None and "multipart upload does not exist" in after and "10024" in after, after
        parts, bytes_after = held()
        assert parts == 0 and bytes_after == bytes_before - 1000, (parts, bytes_before, bytes_after)
        assert len(blobs - {p.name for p in index.parent.glob("blobs/*")}) == 1  # its part's file
    finally:
        conn.close()


def test_r2_keys_never_escape_the_bucket(server) -> None:
    keys = ["../../escape", "/etc/passwd", "a/../../../b", "..", "."]
    got = ok(server, "t", f"""
out = []
for key in {keys!r}:
    await env.BUCKET.put(key, "inside:" + key)
    out.append(await (await env.BUCKET.get(key)).text())
return out""")
    assert got == [f"inside:{k}" for k in keys]
    state = server.state_dir
    assert not (state / "escape").exists() and not (state.parent / "escape").exists()
    r2 = state / "storage" / "r2"
    for path in r2.rglob("*"):  # only hashed names, never a key
        assert path.name in ("index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm", "blobs",
                             "tmp") or len(path.name) in (32, 40), path
    error = fails(server, "t", 'await env.BUCKET.put("nul\\x00key", "x")')
    assert error["js"] and "object name is not valid" in error["message"]


# -- Cache API ----------------------------------------------------------------------


def test_cache_open_put_match_delete(server) -> None:
    got = ok(server, "t", """
from workers import Request
cache = await caches.open("pages")
await cache.put("https://example.com/a", Response("A", headers={"cache-control": "max-age=600",
                                                                 "x-t": "1"}))
await cache.put(Request("https://example.com/nostore"),
                Response("N", headers={"cache-control": "no-store"}))
await cache.put("https://example.com/stale", Response("S", headers={"cache-control": "max-age=0"}))
hit = await cache.match("https://example.com/a")
other = await (await caches.open("other")).match("https://example.com/a")
post = await cache.match(Request("https://example.com/a", method="POST", body="x"))
try:
    await cache.put(Request("https://example.com/p", method="POST", body="x"), Response("P"))
    err = None
except JsException as e:
    err = [e.name, e.message]
await cache.put("https://example.com/tagged", Response("T", headers={
    "cache-control": "max-age=600", "etag": '"v1"', "last-modified": "Wed, 02 Dec 2026 10:00:00 GMT"}))
conditional = [(await cache.match(Request("https://example.com/tagged", headers=h))).status for h in (
    {"if-none-match": 'W/"v1"'}, {"if-none-match": '"v0", "v2"'},
    {"if-modified-since": "Thu, 03 Dec 2026 10:00:00 GMT"}, {"if-modified-since": "Tue, 01 Dec 2026 10:00:00 GMT"})]
deleted = await cache.delete("https://example.com/a")
return [hit.status, await hit.text(), hit.headers.get("x-t"), hit.headers.get("cf-cache-status"),
        await cache.match("https://example.com/nostore"), await cache.match("https://example.com/stale"),
        other, post, err, deleted, await cache.match("https://example.com/a"),
        await cache.delete("https://example.com/a"), conditional]""")
    assert got == [200, "A", "1", "HIT", None, None, None, None,
                   ["TypeError", "Cannot cache response to non-GET request."], True, None, False,
                   # If-None-Match against the stored ETag, If-Modified-Since against Last-Modified.
                   [304, 200, 304, 200]]


def test_cache_keeps_a_response_without_a_lifetime_by_its_status(server) -> None:
    # Cloudflare's default edge TTLs: 200, 206, 301 two hours; 302, 303
    # twenty minutes; 404, 410 three; any other status is not cached unless
    # its own Cache-Control says so (a cached upstream 503 was served for 2 h).
    got = ok(server, "t", """
cache = await caches.open("statuses")
out = {}
for status in (200, 301, 302, 404, 410, 418, 500, 503):
    url = f"https://example.com/s{status}"
    await cache.put(url, Response("x", status=status))
    out[status] = (await cache.match(url)) is not None
await cache.put("https://example.com/told", Response("x", status=503, headers={"cache-control": "max-age=60"}))
out["told"] = (await (await cache.match("https://example.com/told")).text())
return out""")
    assert got == {"200": True, "301": True, "302": True, "404": True, "410": True, "418": False,
                   "500": False, "503": False, "told": "x"}


def test_cache_stores_a_cookie_setting_response_only_without_its_private_fields(server) -> None:
    # Cloudflare never caches a Set-Cookie, unless Cache-Control names it
    # private (private=Set-Cookie): then the response is stored without it.
    got = ok(server, "t", """
cache = await caches.open("cookies")
async def put_and_match(url, control):
    await cache.put(url, Response("body", headers=[("cache-control", control), ("set-cookie", "sid=1"),
                                                   ("x-id", "7"), ("x-kept", "yes")]))
    hit = await cache.match(url)
    return None if hit is None else [await hit.text(), hit.headers.get("set-cookie"),
                                     hit.headers.get("x-id"), hit.headers.get("x-kept")]
return [await put_and_match("https://example.com/plain", "max-age=600"),
        await put_and_match("https://example.com/one", "private=Set-Cookie, max-age=600"),
        await put_and_match("https://example.com/two", 'max-age=600, private="Set-Cookie, X-Id"'),
        await put_and_match("https://example.com/other", "private=X-Id, max-age=600"),
        await put_and_match("https://example.com/all", "private, max-age=600")]""")
    assert got == [None, ["body", None, "7", "yes"], ["body", None, None, "yes"], None, None]


def test_cache_stores_no_response_it_could_never_reuse(server) -> None:
    """no-cache (to be revalidated before every reuse, which a Cache API
    entry cannot be) and max-age=0: stored and hit, where Cloudflare's cache
    stores neither."""
    got = ok(server, "t", """
cache = await caches.open("fresh")
out = []
for control in ("no-cache", "no-cache, max-age=100", "max-age=0", "max-age=100"):
    url = "https://example.com/" + control.replace(" ", "")
    await cache.put(url, Response("body", headers={"cache-control": control}))
    out.append((await cache.match(url)) is not None)
return out""")
    assert got == [False, False, False, True]


def test_cache_match_answers_a_range_with_206(server) -> None:
    # One range of a stored 200 is a 206 with Content-Range; a range past the
    # end a 416 with "bytes */size"; several ranges, or another unit, the 200.
    got = ok(server, "t", """
from workers import Request
cache = await caches.open("ranges")
await cache.put("https://example.com/r", Response("0123456789", headers={"cache-control": "max-age=600"}))
async def ask(value):
    r = await cache.match(Request("https://example.com/r", headers={"range": value}))
    return [r.status, await r.text(), r.headers.get("content-range")]
return [await ask(v) for v in ("bytes=2-4", "bytes=7-", "bytes=-3", "bytes=8-100", "bytes=-20",
                               "bytes=10-", "bytes=0-1,4-5", "items=0-1", "bytes=4-2")]""")
    assert got == [[206, "234", "bytes 2-4/10"], [206, "789", "bytes 7-9/10"],
                   [206, "789", "bytes 7-9/10"], [206, "89", "bytes 8-9/10"],
                   [206, "0123456789", "bytes 0-9/10"], [416, "", "bytes */10"],
                   [200, "0123456789", None], [200, "0123456789", None], [200, "0123456789", None]]


def test_cache_default_refused_in_namespaced_scripts(server) -> None:
    error = fails(server, "t", "return caches.default")
    assert error["error"] == "TypeError" and "caches.default is not available" in error["message"]


def test_cache_is_private_to_the_script(server) -> None:
    deploy(server, "cache2", [])
    ok(server, "t", """
c = await caches.open("shared-name")
await c.put("https://x/y", Response("mine", headers={"cache-control": "max-age=600"}))""")
    assert ok(server, "cache2", 'return await (await caches.open("shared-name")).match("https://x/y")') is None


# -- isolation ------------------------------------------------------------------------


def test_same_id_is_shared_within_a_namespace_not_across(server) -> None:
    shared = {"type": "kv_namespace", "name": "KV", "namespace_id": "shared-id"}
    db = {"type": "d1", "name": "DB", "id": "shared-db"}
    deploy(server, "alice", [shared, db])
    deploy(server, "alice2", [shared, db])
    deploy(server, "mallory", [shared, db], namespace="other")
    ok(server, "alice", """
await env.KV.put("secret", "alice's")
await env.DB.exec("CREATE TABLE s (v); INSERT INTO s VALUES ('alice')")""")
    assert ok(server, "alice2", 'return await env.KV.get("secret")') == "alice's"
    assert ok(server, "mallory", 'return await env.KV.get("secret")', namespace="other") is None
    assert ok(server, "mallory", 'return (await env.KV.list())["keys"]', namespace="other") == []
    error = fails(server, "mallory", 'await env.DB.prepare("SELECT * FROM s").all()', namespace="other")
    assert "no such table: s" in error["message"]


def test_a_script_cannot_use_a_binding_it_does_not_have(server) -> None:
    deploy(server, "nobind", [])
    # Straight to the SDK's call, naming another script's binding: the
    # supervisor resolves names from this script's own record.
    error = fails(server, "nobind", """
import sys
call = sys.modules["sandbox.bindings"].call
await call("KV", "get", ["text", {"type": "text"}])""")
    assert error["js"] and "has no storage binding named 'KV'" in error["message"]
    assert fails(server, "nobind", "return env.KV")["error"] == "AttributeError"


def test_binding_calls_count_as_subrequests(server) -> None:
    got = run(server, "t", """
n = 0
try:
    for i in range(10):
        await env.KV.get("x")
        n += 1
except JsException as e:
    return [n, e.message]""", limits={"subRequests": 4})
    assert got["ok"] == [4, "Too many API requests by single Worker invocation."]


def test_binding_use_outside_a_request_is_refused(server) -> None:
    got = ok(server, "t", """
import asyncio
try:
    from workers import env as global_env
    global_env.KV  # fine: the object exists
    return "ok"
except Exception as e:
    return str(e)""")
    assert got == "ok"


def test_d1_arguments_larger_than_a_frame_travel_as_a_body(server) -> None:
    # Three 400 kB values: their arguments (1.2 MB) exceed a child's 1 MiB frame.
    got = ok(server, "t", """
await env.DB.exec("CREATE TABLE IF NOT EXISTS wide (a TEXT, b TEXT, c TEXT)")
v = "x" * 400_000
await env.DB.prepare("INSERT INTO wide VALUES (?, ?, ?)").bind(v, v, v).run()
row = await env.DB.prepare("SELECT length(a) + length(b) + length(c) AS n FROM wide").first()
return row["n"]""")
    assert got == 1_200_000


def test_r2_open_uploads_of_an_older_bucket_get_their_seven_days_from_the_upgrade(tmp_path) -> None:
    """A bucket index written before uploads had a creation time is given
    one, now: its open uploads neither vanish at once nor live for ever."""
    from supervisor.bindings import r2

    conn = sqlite3.connect(tmp_path / "index.sqlite3")
    conn.executescript("""
        CREATE TABLE uploads (upload_id TEXT PRIMARY KEY, key TEXT NOT NULL, http TEXT, custom TEXT);
        INSERT INTO uploads VALUES ('u1', 'k', '{}', '{}');""")
    r2._setup(conn)
    r2._setup(conn)  # and once more, as every open does
    assert r2._upload_of(conn, str(tmp_path), "u1", "k", "uploadPart") == ("{}", "{}")
    conn.execute("UPDATE uploads SET created = created - ?", (r2.UPLOAD_EXPIRY_S + 1,))
    with pytest.raises(Exception, match="10024"):
        r2._upload_of(conn, str(tmp_path), "u1", "k", "uploadPart")
    conn.close()


def test_r2_multipart_parts_are_listed_once_in_ascending_order(server) -> None:
    """A part named twice was joined twice: one 5 MiB part listed N times made an
    N x 5 MiB object, written to disk before any bytes cap was checked (a
    tenant's way to fill the host's disk). Refused, as R2 refuses an invalid
    part; the upload stays, to complete with its parts."""
    got = ok(server, "t", COMPLETE + """mib5 = 5 * 1024 * 1024
up = await env.BUCKET.createMultipartUpload("mp/dup")
p1 = await up.uploadPart(1, b"a" * mib5)
p2 = await up.uploadPart(2, "tail")
many = [{"partNumber": i, "etag": p1.etag} for i in range(1, 10_002)]
return [await complete(up, [p1, p1, p1, p2]), await complete(up, [p2, p1]),
        await complete(up, many), await env.BUCKET.head("mp/dup"), await complete(up, [p1, p2])]""")
    assert got[0].endswith("(10025)") and "ascending order" in got[0] and "part 1 comes after part 1" in got[0], got
    assert got[1].endswith("(10025)") and "part 1 comes after part 2" in got[1], got[1]
    assert got[2].endswith("(10025)") and "at most 10000 parts" in got[2], got[2]
    assert got[3] is None and got[4] == 5 * 1024 * 1024 + 4, got


def test_r2_http_metadata_is_capped_like_custom_metadata(server) -> None:
    """``httpMetadata`` had no cap and does not count against the bucket's bytes:
    an empty object could hold half a MiB of it in the index (an upload more), over
    and over. Over 8192 bytes it is refused (10012), as customMetadata is."""
    got = ok(server, "t", """
async def attempt(call):
    try:
        await call
        return "stored"
    except JsException as e:
        return e.message
big = {"contentType": "x" * 400_000}
return [await attempt(env.BUCKET.put("meta/big", "", httpMetadata=big)),
        await attempt(env.BUCKET.createMultipartUpload("meta/big", httpMetadata=big)),
        await attempt(env.BUCKET.createMultipartUpload("meta/big", customMetadata={"k": "v" * 9000})),
        await env.BUCKET.head("meta/big"),
        await attempt(env.BUCKET.put("meta/ok", "", httpMetadata={"contentType": "text/plain"}))]""")
    assert got[0].startswith("put: ") and got[0].endswith("(10012)") and "httpMetadata" in got[0], got[0]
    assert got[1].startswith("createMultipartUpload: ") and got[1].endswith("(10012)"), got[1]
    assert got[2].startswith("createMultipartUpload: ") and "customMetadata" in got[2], got[2]
    assert got[3] is None and got[4] == "stored", got


def test_r2_list_with_a_delimiter_reads_each_row_once_and_takes_any_delimiter() -> None:
    """A delimited listing queried again past each common prefix and fetched
    that query's whole page (limit + 1 rows, metadata and all) to use its first
    row: (limit + 1) x limit rows read in a storage thread every tenant shares,
    for one call. Rows are stepped one by one now: the work is counted in
    SQLite's VM steps, not time. A delimiter ending in U+10FFFF had no string
    after it and failed the call as the platform's error."""
    from supervisor.bindings import r2

    conn = sqlite3.connect(":memory:", isolation_level=None)
    r2._setup(conn)
    insert = "INSERT INTO objects (key, blob, size, etag, version, uploaded, http, custom, checksums) "
    metadata = json.dumps({"m": "x" * 4000})
    for i in range(300):
        conn.execute(insert + "VALUES (?, 'b', 0, 'e', 'v', 0, '{}', ?, '{}')", (f"p{i:03d}/k", metadata))
    conn.execute(insert + "VALUES (?, 'b', 0, 'e', 'v', 0, '{}', '{}', '{}')", ("z\U0010ffff/k",))
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(tick, 100)
    out = r2._list(conn, "", "", "", False, 1000, "/", ())
    assert len(out["delimitedPrefixes"]) == 301 and not out["truncated"], out["delimitedPrefixes"][-3:]
    assert steps[0] < 1000, f"{steps[0] * 100} SQLite VM steps for 301 rows"
    out = r2._list(conn, "", "", "", False, 1000, "\U0010ffff", ())
    assert out["delimitedPrefixes"] == ["z\U0010ffff"] and len(out["objects"]) == 300, out["delimitedPrefixes"]


def test_kv_bulk_get_is_capped_at_one_values_size(server) -> None:
    """A bulk get of 100 keys of 25 MiB each was 2.5 GiB in the supervisor's
    memory for one call. Past 25 MiB of values in all it fails (413), and the
    same keys read one by one still work."""
    got = ok(server, "t", """
big = "x" * (13 * 1024 * 1024)
await env.KV.put("bulk-a", big)
await env.KV.put("bulk-b", big)
try:
    await env.KV.get(["bulk-a", "bulk-b"])
    bulk = "read"
except JsException as e:
    bulk = e.message
except Exception as e:
    bulk = str(e)
one = len(await env.KV.get("bulk-a")) + len(await env.KV.get("bulk-b"))
await env.KV.delete("bulk-a")
await env.KV.delete("bulk-b")
return [bulk, one]""")
    assert "GET_BULK failed: 413" in got[0] and "get fewer keys at once" in got[0], got
    assert got[1] == 26 * 1024 * 1024, got


def test_d1_sql_with_a_nul_or_a_huge_integer_is_the_querys_error_not_the_platforms(server) -> None:
    """``env.DB.exec`` of SQL holding a NUL failed as "internal error" with an
    error logged (SQLite's splitter raises ValueError), and the admin D1 query
    endpoint answered 500 to it and to an integer past 64 bits."""
    got = ok(server, "t", """
try:
    await env.DB.exec("SELECT 1\\x00; SELECT 2")
    return "ran"
except JsException as e:
    return e.message""")
    assert "null character" in got and "internal error" not in got, got
    path = "/accounts/local/d1/database/db-1/query?namespace=default"
    for body, problem in (({"sql": "SELECT 1\x00"}, "null character"),
                          ({"sql": "SELECT ?", "params": [2**70]}, "does not fit in 64 bits"),
                          ({"sql": "SELECT ?", "params": [{"a": 1}]}, "not supported")):
        r = server.admin("POST", path, body)
        assert r.status == 400 and problem in r.text, (body, r.status, r.text)
    assert "binding.failed" not in server.log(), server.log()[-2000:]
    assert server.alive()


def test_r2_expiring_uploads_uses_an_index_not_a_scan() -> None:
    """Each createMultipartUpload looks for uploads past their 7 days; without
    an index on ``created`` that scanned every open upload (as many as a tenant
    cares to leave open) in a storage thread all tenants share. Checked by
    SQLite's query plan, for a new bucket and for one an older Corral made."""
    from supervisor.bindings import r2

    new = sqlite3.connect(":memory:", isolation_level=None)
    r2._setup(new)
    old = sqlite3.connect(":memory:", isolation_level=None)
    old.execute("CREATE TABLE uploads (upload_id TEXT PRIMARY KEY, key TEXT NOT NULL, http TEXT, custom TEXT)")
    r2._setup(old)
    for conn in (new, old):
        plan = " ".join(row[-1] for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT upload_id FROM uploads WHERE created < ?", (0,)))
        assert plan.startswith("SEARCH uploads") and "uploads_created" in plan, plan
