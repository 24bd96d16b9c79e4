"""Bindings' less common, documented behaviours, checked against Cloudflare's.

Each group (KV, D1, R2, the Cache API) has its own tenant script, deployed
once on a module-scoped ``corral serve``; each test runs a few lines of
tenant code in it (tests.storage_helpers' eval tenant) and asserts what
Cloudflare documents or workerd implements: field names, types, errors.
The sources are named beside each test: workerd's ``kv.c++``,
``r2-bucket.c++`` and ``d1-api.ts``, and @cloudflare/workers-types.
"""

from __future__ import annotations

import pytest

from tests.storage_helpers import deploy, ok, start

KV = {"type": "kv_namespace", "name": "KV", "namespace_id": "kv-1"}
DB = {"type": "d1", "name": "DB", "id": "db-1"}
B = {"type": "r2_bucket", "name": "B", "bucket_name": "b-1"}

#: Tenant code shared by the tests: ``attempt(awaitable)`` is its result or
#: ``[error name, message]`` of the JsException it raised; ``sync(fn)`` the same
#: for a call that raises before anything is awaited.
ATTEMPT = """
async def attempt(awaitable):
    try:
        return await awaitable
    except JsException as e:
        return [e.name, e.message]
def sync(fn):
    try:
        return fn()
    except JsException as e:
        return [e.name, e.message]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = start(tmp_path_factory.mktemp("semantics"))
    deploy(server, "kv", [KV])
    deploy(server, "d1", [DB])
    deploy(server, "r2", [B])
    deploy(server, "cache", [])
    yield server
    server.stop()


# -- KV ---------------------------------------------------------------------------------


def test_kv_key_names_are_refused_in_workerds_words(server) -> None:
    # kv.c++ validateKeyName: "Key name cannot be empty." and '"." is not
    # allowed as a key name.', TypeErrors, for get, put and delete alike.
    got = ok(server, "kv", ATTEMPT + """
return [await attempt(env.KV.put("", "v")), await attempt(env.KV.get("")),
        await attempt(env.KV.delete("")), await attempt(env.KV.get_with_metadata("")),
        await attempt(env.KV.put(".", "v")), await attempt(env.KV.delete(".."))]""")
    empty = ["TypeError", "Key name cannot be empty."]
    assert got == [empty, empty, empty, empty, ["TypeError", '"." is not allowed as a key name.'],
                   ["TypeError", '".." is not allowed as a key name.']]


def test_kv_list_with_a_limit_of_zero_or_less_lists_with_the_default(server) -> None:
    # kv.c++ list(): key_count_limit is sent only when the limit is positive;
    # otherwise KV's default (1000) applies.
    got = ok(server, "kv", """
for k in ("lim/a", "lim/b", "lim/c"):
    await env.KV.put(k, "1")
zero = await env.KV.list(prefix="lim/", limit=0)
negative = await env.KV.list({"prefix": "lim/", "limit": -5})
return [[k.name for k in zero["keys"]], zero.list_complete, len(negative["keys"])]""")
    assert got == [["lim/a", "lim/b", "lim/c"], True, 3]


def test_kv_bulk_reads_in_kvs_words(server) -> None:
    # KV docs ("Read key-value pairs"): a bulk read is a map "with keys not
    # found having null values", getWithMetadata's too. KV parses a bulk JSON
    # read itself: one value that is not JSON fails the call with its 400
    # (miniflare's KV tests), as do 0 or more than 100 keys, plain Errors.
    got = ok(server, "kv", ATTEMPT + """
await env.KV.put("bulk/json", '{"n": 1}')
await env.KV.put("bulk/text", "not json")
return [await env.KV.getWithMetadata(["bulk/json", "bulk/none"]),
        await env.KV.get(["bulk/json", "bulk/none"], "json"),
        await attempt(env.KV.get(["bulk/json", "bulk/text"], "json")),
        await attempt(env.KV.get_with_metadata(["bulk/text"], {"type": "json"})),
        await attempt(env.KV.get([])), await attempt(env.KV.get([f"k{i}" for i in range(101)]))]""")
    non_json = ["Error", "KV GET_BULK failed: 400 At least one of the requested keys corresponds "
                         "to a non-json value"]
    assert got == [{"bulk/json": {"value": '{"n": 1}', "metadata": None}, "bulk/none": None},
                   {"bulk/json": {"n": 1}, "bulk/none": None}, non_json, non_json,
                   ["Error", "KV GET_BULK failed: 400 You must request a minimum of 1 key"],
                   ["Error", "KV GET_BULK failed: 400 You can request a maximum of 100 keys"]]


def test_kv_shapes_that_already_matched(server) -> None:
    # getWithMetadata of several keys is a map of {value, metadata}; a listed
    # key has "expiration" and "metadata" only when set; list and
    # getWithMetadata carry cacheStatus (null); a missing key read as a
    # stream is null (KV docs: "Read key-value pairs", "List keys").
    got = ok(server, "kv", """
await env.KV.put("shape/a", '{"n": 1}', metadata={"m": True})
await env.KV.put("shape/b", "plain")
bulk = await env.KV.getWithMetadata(["shape/a", "shape/b", "shape/none"], "text")
bulk_json = await env.KV.get_with_metadata(["shape/a"], type="json")
listed = await env.KV.list(prefix="shape/")
one = await env.KV.getWithMetadata("shape/b")
return {"bulk": bulk, "bulk_json": bulk_json, "keys": listed["keys"],
        "list_fields": sorted(listed), "cache": [listed.cacheStatus, one.cacheStatus],
        "stream_missing": await env.KV.get("shape/none", "stream")}""")
    assert got["bulk"] == {"shape/a": {"value": '{"n": 1}', "metadata": {"m": True}},
                           "shape/b": {"value": "plain", "metadata": None}, "shape/none": None}
    assert got["bulk_json"] == {"shape/a": {"value": {"n": 1}, "metadata": {"m": True}}}
    assert got["keys"] == [{"name": "shape/a", "metadata": {"m": True}}, {"name": "shape/b"}]
    assert got["list_fields"] == ["cacheStatus", "keys", "list_complete"]
    assert got["cache"] == [None, None] and got["stream_missing"] is None


# -- D1 ---------------------------------------------------------------------------------


def test_d1_with_session_trims_its_constraint_and_an_empty_one_has_no_bookmark(server) -> None:
    # d1-api.ts withSession(): the constraint is trimmed; an empty one means
    # "first-unconstrained"; getBookmark() is null for either constraint.
    got = ok(server, "d1", """
return [env.DB.withSession("").getBookmark(), env.DB.withSession("  ").getBookmark(),
        env.DB.withSession(" first-primary ").getBookmark(),
        env.DB.withSession("first-unconstrained\\n").getBookmark(),
        env.DB.withSession(" 0000abcd ").getBookmark()]""")
    assert got == [None, None, None, None, "0000abcd"]


def test_whole_numbers_read_back_as_python_ints_as_pyodide_gives_them(server) -> None:
    # Values cross from JavaScript on Cloudflare, where 2.0 is the number 2;
    # Pyodide's conversion makes a safe-integer Number an int. So a D1 REAL
    # of 2.0, and 1.0 or 1e2 in JSON read from KV or R2, are ints in Python.
    deploy(server, "numbers", [KV, DB, B])
    got = ok(server, "numbers", """
row = await env.DB.prepare("SELECT 2.0 AS whole, 2.5 AS half, 1e300 AS huge, -0.0 AS zero").first()
raw = await env.DB.prepare("SELECT 3.0").raw()
doc = '{"a": 1.0, "b": 1e2, "c": 0.5, "d": [4.0], "e": 9007199254740993.0}'
await env.KV.put("num", doc)
await env.B.put("num", doc)
kv = await env.KV.get("num", "json")
bulk = (await env.KV.get(["num"], "json"))["num"]
r2 = await (await env.B.get("num")).json()
types = lambda d: {k: type(v).__name__ for k, v in d.items() if k != "d"}
return [types(row), type(raw[0][0]).__name__, types(kv), kv["d"], types(bulk), types(r2)]""")
    json_types = {"a": "int", "b": "int", "c": "float", "e": "float"}
    assert got == [{"whole": "int", "half": "float", "huge": "float", "zero": "int"}, "int",
                   json_types, [4], json_types, json_types]


def test_d1_exec_error_quotes_the_failed_statement(server) -> None:
    # d1-api.ts exec(): "D1_EXEC_ERROR: Error in line N: <that line>: <error>";
    # a long statement is quoted up to 500 characters.
    got = ok(server, "d1", ATTEMPT + """
long = "SELECT * FROM nowhere WHERE x = '" + "y" * 600 + "'"
return [await attempt(env.DB.exec("SELECT 1;\\nSELECT * FROM missing_table")),
        await attempt(env.DB.exec(long))]""")
    assert got[0] == ["Error", "D1_EXEC_ERROR: Error in line 2: SELECT * FROM missing_table: no such "
                               "table: missing_table: SQLITE_ERROR"]
    assert got[1][1].startswith("D1_EXEC_ERROR: Error in line 1: SELECT * FROM nowhere WHERE x = 'yyy")
    assert "y" * 466 + "...: no such table: nowhere: SQLITE_ERROR" in got[1][1], got[1][1][-120:]


def test_d1_first_raw_and_meta_already_matched(server) -> None:
    # d1-api.ts first(col): null without rows, D1_COLUMN_NOTFOUND for a column
    # the row lacks; raw({columnNames: true}) of no rows is just the names;
    # meta has D1's fields, size_after among them; bind(True) is 1.
    got = ok(server, "d1", ATTEMPT + """
await env.DB.exec("CREATE TABLE IF NOT EXISTS sem (a INTEGER, b TEXT)")
await env.DB.prepare("DELETE FROM sem").run()
none = await env.DB.prepare("SELECT a FROM sem").first("nope")
await env.DB.prepare("INSERT INTO sem VALUES (?, ?)").bind(True, "x").run()
missing = await attempt(env.DB.prepare("SELECT a FROM sem").first("nope"))
empty_raw = await env.DB.prepare("SELECT a, b FROM sem WHERE a = 99").raw({"columnNames": True})
run = await env.DB.prepare("UPDATE sem SET b = 'y'").run()
return {"none": none, "missing": missing, "empty_raw": empty_raw,
        "a": await env.DB.prepare("SELECT a FROM sem").first("a"),
        "meta": sorted(run.meta), "size": isinstance(run.meta.size_after, int) and run.meta.size_after > 0,
        "changes": [run.meta.changes, run.meta.changed_db, run.success]}""")
    assert got["none"] is None and got["a"] == 1
    assert got["missing"] == ["Error", "D1_COLUMN_NOTFOUND: Column not found (nope)"]
    assert got["empty_raw"] == [["a", "b"]]
    for field in ("changed_db", "changes", "duration", "last_row_id", "rows_read", "rows_written",
                  "served_by", "size_after"):
        assert field in got["meta"], got["meta"]
    assert got["size"] and got["changes"] == [1, True, True]


def test_d1_stores_what_javascript_would_have_sent_and_counts_what_sqlite_changed(server) -> None:
    # D1's type conversion: a whole Number is an INTEGER (Python's 1.0 is
    # JavaScript's 1); meta.changes counts a WITH ... INSERT/UPDATE's rows
    # (Python's rowcount is -1 for them); TEXT that is not UTF-8 reads as a
    # JavaScript string would decode it (U+FFFD), not an error for ever; a
    # wrong number of values is D1's "Wrong number of parameter bindings".
    got = ok(server, "d1", ATTEMPT + """
await env.DB.exec("CREATE TABLE IF NOT EXISTS conv (n, t TEXT)")
await env.DB.prepare("DELETE FROM conv").run()
await env.DB.prepare("INSERT INTO conv VALUES (?, ?)").bind(1.0, 2.0).run()
await env.DB.prepare("INSERT INTO conv VALUES (?, ?)").bind(1.5, 2.5).run()
kinds = await env.DB.prepare("SELECT typeof(n) AS k, t FROM conv ORDER BY n").raw()
cte = await env.DB.prepare("WITH v(x) AS (VALUES (7), (8)) INSERT INTO conv (n) SELECT x FROM v").run()
upd = await env.DB.prepare("WITH v(x) AS (VALUES (7)) UPDATE conv SET t = 'u' WHERE n >= (SELECT x FROM v)").run()
await env.DB.prepare("INSERT INTO conv VALUES (9, CAST(X'41FF42' AS TEXT))").run()
bad = await env.DB.prepare("SELECT t FROM conv WHERE n = 9").first("t")
wrong = await attempt(env.DB.prepare("SELECT * FROM conv WHERE t = '?' AND n = ?").bind(1, 2).all())
return [kinds, cte.meta.changes, upd.meta.changes, bad, wrong]""")
    assert got[0] == [["integer", "2"], ["real", "2.5"]], got
    assert got[1:4] == [2, 2, "A\ufffdB"], got
    assert got[4] == ["Error", "D1_ERROR: Wrong number of parameter bindings for SQL query."], got


# -- R2 ---------------------------------------------------------------------------------


def test_r2_conditional_etags_in_an_object_must_not_be_quoted(server) -> None:
    # r2-bucket.c++ UnwrappedConditional(const Conditional&): a quoted etag is
    # a TypeError; the bare etag (obj.etag) is the one to pass.
    got = ok(server, "r2", ATTEMPT + """
obj = await env.B.put("cond/q", "v")
return [await attempt(env.B.get("cond/q", onlyIf={"etagMatches": obj.httpEtag})),
        await attempt(env.B.put("cond/q", "w", onlyIf={"etagDoesNotMatch": obj.httpEtag})),
        await (await env.B.get("cond/q", onlyIf={"etagMatches": obj.etag})).text()]""")
    assert got[0][0] == "TypeError" and got[1][0] == "TypeError", got
    assert got[0][1].startswith("Conditional ETag should not be wrapped in quotes (\"")
    assert got[2] == "v"


def test_r2_conditional_headers_compare_dates_in_whole_seconds(server) -> None:
    # r2-bucket.c++ UnwrappedConditional(Headers&) sets secondsGranularity: an
    # object is not "modified since" the HTTP date of its own upload (its
    # Last-Modified), though it was uploaded some milliseconds into that second.
    got = ok(server, "r2", """
import datetime
import email.utils
from workers import Headers
obj = await env.B.put("cond/date", "v")
second = obj.uploaded.replace(microsecond=0, tzinfo=datetime.UTC)  # naive, as the SDK's
last_modified = email.utils.format_datetime(second, usegmt=True)
earlier = email.utils.format_datetime(second - datetime.timedelta(seconds=1), usegmt=True)
same = await env.B.get("cond/date", onlyIf=Headers({"if-modified-since": last_modified}))
before = await env.B.get("cond/date", onlyIf=Headers({"if-modified-since": earlier}))
unmodified = await env.B.get("cond/date", onlyIf=Headers({"if-unmodified-since": last_modified}))
return [hasattr(same, "text"), hasattr(before, "text"), hasattr(unmodified, "text")]""")
    # Modified since its own Last-Modified: no (no body). Since a second
    # earlier: yes. Unmodified since (uploaded before) its own second: no.
    assert got == [False, True, False]


def test_r2_uploaded_is_a_naive_utc_datetime_as_the_sdk_converts_a_date(server) -> None:
    # The SDK's binding wrapper turns a Date into datetime.fromtimestamp(...)
    # (naive, the runtime's zone being UTC): it subtracts from datetime.now().
    got = ok(server, "r2", """
import datetime
obj = await env.B.put("dated", "v")
age = (datetime.datetime.now() - obj.uploaded).total_seconds()
return [obj.uploaded.tzinfo is None, 0 <= age < 600, abs(obj.uploaded.getTime() / 1000 - datetime.datetime.now(
    datetime.UTC).timestamp()) < 600]""")
    assert got == [True, True, True], got


def test_r2_conditionals_follow_rfc_7232s_precedence(server) -> None:
    # R2's gateway (as miniflare's _testR2Conditional, "adapted from internal
    # R2 gateway implementation", and its gateway tests): a date condition
    # yields to the etag condition beside it when that one holds; for a
    # missing object, only etagMatches and uploadedAfter fail.
    got = ok(server, "r2", """
import datetime
from workers import Headers
past = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
future = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)
obj = await env.B.put("cond/rfc", "v")
other = "0" * 32
def body(x):
    return x is not None and hasattr(x, "text")
out = [body(await env.B.get("cond/rfc", onlyIf={"etagMatches": obj.etag, "uploadedBefore": past})),
       body(await env.B.get("cond/rfc", onlyIf={"etagDoesNotMatch": other, "uploadedAfter": future})),
       body(await env.B.get("cond/rfc", onlyIf=Headers({
           "if-none-match": '"%s"' % other, "if-modified-since": "Mon, 01 Jan 2100 00:00:00 GMT"}))),
       body(await env.B.get("cond/rfc", onlyIf={"uploadedAfter": future})),
       body(await env.B.get("cond/rfc", onlyIf={"etagDoesNotMatch": obj.etag, "uploadedAfter": past}))]
for cond in ({"uploadedAfter": past}, {"etagDoesNotMatch": other, "uploadedAfter": past},
             {"etagMatches": "*"}, {"uploadedBefore": future}, {"etagDoesNotMatch": other}):
    key = "cond/missing/" + str(len(out))
    out.append(await env.B.put(key, "x", onlyIf=cond) is not None)
    out.append(await env.B.head(key) is not None)
return out""")
    assert got[:5] == [True, True, True, False, False], got
    # uploadedAfter and etagMatches fail on a missing key; the others hold.
    assert got[5:] == [False, False, False, False, False, False, True, True, True, True], got


def test_r2_conditional_etag_headers_are_parsed_as_workerd_parses_them(server) -> None:
    # r2-bucket.c++ parseConditionalEtagHeader: W/"x" is a weak etag, which
    # R2 compares strongly for If-Match (no match) and weakly for
    # If-None-Match; a header with no quoted etag is an Error, as is an
    # unclosed quote. In an object, "W/<etag>" is one strong etag as written.
    got = ok(server, "r2", ATTEMPT + """
from workers import Headers
obj = await env.B.put("cond/weak", "v")
def body(x):
    return x is not None and hasattr(x, "text")
out = [body(await env.B.get("cond/weak", onlyIf=Headers({"if-match": 'W/"%s"' % obj.etag}))),
       body(await env.B.get("cond/weak", onlyIf=Headers({"if-none-match": 'W/"%s"' % obj.etag}))),
       body(await env.B.get("cond/weak", onlyIf={"etagMatches": "W/" + obj.etag})),
       body(await env.B.get("cond/weak", onlyIf=Headers({"if-match": '"nope", "%s"' % obj.etag}))),
       body(await env.B.get("cond/weak", onlyIf=Headers({"if-match": "*"})))]
for bad in (obj.etag, '"unclosed', '"a" "b"'):
    out.append(await attempt(env.B.get("cond/weak", onlyIf=Headers({"if-match": bad}))))
return out""")
    assert got[:5] == [False, False, False, True, True], got
    assert got[5] == ["Error", "Invalid ETag in if-match header"], got
    assert got[6] == ["Error", "Unclosed double quote for Etag"], got
    assert got[7][0] == "Error" and "Comma was expected" in got[7][1], got


def test_r2_range_options_are_checked_as_workerd_checks_them(server) -> None:
    # r2-bucket.c++ initGetOptions: negative or fractional numbers are
    # RangeErrors; a suffix with an offset or a length is a TypeError.
    got = ok(server, "r2", ATTEMPT + """
await env.B.put("rng", "0123456789")
out = []
for r in ({"offset": -1}, {"offset": 1.5}, {"length": -2}, {"offset": 1, "length": 2.5},
          {"suffix": 2, "offset": 1}, {"suffix": 2, "length": 1}, {"suffix": -1}):
    out.append(await attempt(env.B.get("rng", range=r)))
whole = await env.B.get("rng", range={"offset": 2.0, "length": 3})
return [out, await whole.text(), whole.range]""")
    assert got[0] == [
        ["RangeError", "Invalid range. Starting offset (-1) must be greater than or equal to 0."],
        ["RangeError", "Invalid range. Starting offset (1.5) must be an integer, not floating point."],
        ["RangeError", "Invalid range. Length (-2) must be greater than or equal to 0."],
        ["RangeError", "Invalid range. Length (2.5) must be an integer, not floating point."],
        ["TypeError", "Suffix is incompatible with offset."],
        ["TypeError", "Suffix is incompatible with length."],
        ["RangeError", "Invalid suffix. Suffix (-1) must be greater than or equal to 0."]]
    assert got[1:] == ["234", {"offset": 2, "length": 3}]


def test_r2_put_checksums_are_checked_before_sending(server) -> None:
    # r2-bucket.c++ put(): one hashing algorithm at most; a hex digest of the
    # algorithm's length and alphabet, or its bytes; all TypeErrors.
    got = ok(server, "r2", ATTEMPT + """
import hashlib
data = b"sum me"
md5 = hashlib.md5(data).hexdigest()
sha256 = hashlib.sha256(data).hexdigest()
out = [await attempt(env.B.put("sum", data, md5=md5, sha256=sha256)),
       await attempt(env.B.put("sum", data, md5=md5[:30])),
       await attempt(env.B.put("sum", data, sha1="z" * 40)),
       await attempt(env.B.put("sum", data, sha256=hashlib.sha256(data).digest()[:20])),
       await env.B.head("sum")]
by_bytes = await env.B.put("sum", data, sha256=hashlib.sha256(data).digest())
upper = await env.B.put("sum", data, md5=md5.upper())
return [out, by_bytes.checksums.toJSON().sha256 == sha256, upper.size]""")
    assert got[0] == [["TypeError", "You cannot specify multiple hashing algorithms."],
                      ["TypeError", "MD5 is 32 hex characters, not 30"],
                      ["TypeError", "Provided SHA-1 wasn't a valid hex string"],
                      ["TypeError", "SHA-256 is 32 bytes, not 20"], None]
    assert got[1:] == [True, 6]


def test_r2_list_returns_only_the_metadata_include_asks_for(server) -> None:
    # workerd's R2 list (r2_list_honor_include, on since 2022-08-04) and
    # workers-types' R2Object (httpMetadata?, customMetadata?): fields not
    # included are undefined; writeHttpMetadata of such an object is a
    # TypeError; an unknown include value is a RangeError.
    got = ok(server, "r2", ATTEMPT + """
from workers import Headers
await env.B.put("inc/a", "a", httpMetadata={"contentType": "text/plain"}, customMetadata={"k": "v"})
await env.B.put("inc/bare", "b")
plain = (await env.B.list(prefix="inc/a")).objects[0]
http_only = (await env.B.list(prefix="inc/", include=["httpMetadata"])).objects
both = (await env.B.list(prefix="inc/a", include=["httpMetadata", "custom_metadata"])).objects[0]
h = Headers()
http_only[0].writeHttpMetadata(h)
head = await env.B.head("inc/bare")
return {"plain": [plain.httpMetadata, plain.customMetadata],
        "write": sync(lambda: plain.writeHttpMetadata(Headers())),
        "http_only": [[o.httpMetadata, o.customMetadata] for o in http_only],
        "both": [both.httpMetadata, both.customMetadata], "header": h.get("content-type"),
        "head": [head.httpMetadata, head.customMetadata],
        "bad": await attempt(env.B.list(include=["httpMetadata", "size"]))}""")
    assert got["plain"] == [None, None]
    assert got["write"] == ["TypeError", "HTTP metadata unknown for key `inc/a`. Did you forget to "
                                         "add 'httpMetadata' to `include` when listing?"]
    assert got["http_only"] == [[{"contentType": "text/plain"}, None], [{}, None]]
    assert got["both"] == [{"contentType": "text/plain"}, {"k": "v"}]
    assert got["header"] == "text/plain" and got["head"] == [{}, {}]
    assert got["bad"] == ["RangeError", "Unsupported include value size"]


# -- Cache API ------------------------------------------------------------------------------


def test_cache_put_and_method_rules(server) -> None:
    # cache.c++ Cache::put refuses a 206 and "Vary: *" (TypeErrors; the 206's
    # words were Corral's own before); match/delete of a non-GET request miss
    # unless ignoreMethod is set (Cache API docs), which already matched.
    # match/delete of a non-GET request miss unless ignoreMethod is set.
    got = ok(server, "cache", ATTEMPT + """
from workers import Request
cache = await caches.open("sem")
await cache.put("https://example.com/m", Response("M", headers={"cache-control": "max-age=600"}))
post = Request("https://example.com/m", method="POST", body="x")
return [await attempt(cache.put("https://example.com/p", Response("P", status=206))),
        await attempt(cache.put("https://example.com/v", Response("V", headers={"vary": "Accept, *"}))),
        await cache.match(post), await (await cache.match(post, ignoreMethod=True)).text(),
        await cache.delete(post), await cache.delete(post, {"ignoreMethod": True})]""")
    assert got == [["TypeError", "Cannot cache response to a range request (206 Partial Content)."],
                   ["TypeError", "Cannot cache response with 'Vary: *' header."],
                   None, "M", False, True]


def test_cache_keys_must_be_fully_qualified_urls_as_workerd_requires(server) -> None:
    # cache.c++ validateUrl: a key that is no fully-qualified URL is a
    # TypeError for put, match and delete (Corral stored it as given).
    got = ok(server, "cache", ATTEMPT + """
cache = await caches.open("keys")
fine = Response("K", headers={"cache-control": "max-age=600"})
return [await attempt(cache.put("/relative", Response("R"))), await attempt(cache.match("foo")),
        await attempt(cache.delete("https://")), await attempt(cache.put("http:no-host", Response("H"))),
        await cache.put("https://example.com/k", fine), await (await cache.match("https://example.com/k")).text()]""")
    invalid = ["TypeError", "Invalid URL. Cache API keys must be fully-qualified, valid URLs."]
    assert got == [invalid, invalid, invalid, invalid, None, "K"]


def test_cache_keys_are_urls_as_workerds_parser_leaves_them(server) -> None:
    """A string key is parsed as a URL in workerd (Request's constructor):
    the same URL written two ways was two keys here, and a space in a path
    a refused key. If-Range naming another version ignores the Range (RFC
    9110 13.1.5); a body past the entry limit is not stored and put() does
    not throw (workerd: "we never guaranteed the script we'd actually cache
    anything"); a '*' anywhere in Vary is refused, as workerd refuses it."""
    got = ok(server, "cache", ATTEMPT + """
from workers import Request
cache = await caches.open("urls")
hdrs = {"cache-control": "max-age=600", "etag": '"v1"'}
out = []
for put_key, match_key in (("https://example.com", "https://example.com/"),
                           ("https://EXAMPLE.com/a", "https://example.com/a"),
                           ("https://example.com:443/p", "https://example.com/p"),
                           ("https://example.com/x/../y", "https://example.com/y"),
                           ("https://example.com/a b", "https://example.com/a%20b")):
    await cache.put(put_key, Response("hit", headers=hdrs))
    found = await cache.match(match_key)
    out.append(None if found is None else await found.text())
async def ranged(if_range):
    r = await cache.match(Request("https://example.com/y", headers={"range": "bytes=0-1", "if-range": if_range}))
    return [r.status, await r.text()]
out.append([await ranged('"v1"'), await ranged('"v2"')])
out.append(await attempt(cache.put("https://example.com/big", Response(b"x" * (33 * 1024 * 1024),
                                                                        headers={"cache-control": "max-age=600"}))))
out.append(await cache.match("https://example.com/big"))
out.append(await attempt(cache.put("https://example.com/v", Response("V", headers={"vary": "Accept-*"}))))
return out""")
    assert got[:5] == ["hit"] * 5, got
    assert got[5] == [[206, "hi"], [200, "hit"]], got
    assert got[6:8] == [None, None], got
    assert got[8] == ["TypeError", "Cannot cache response with 'Vary: *' header."], got


PLATFORM_CACHE = """
from js import caches
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        await caches.default.put("https://example.com/d", Response("D", headers={"cache-control": "max-age=600"}))
        unnamed = await caches.open("")
        return Response.json([await unnamed.match("https://example.com/d") is None,
                              await (await caches.default.match("https://example.com/d")).text()])
"""


def test_the_default_cache_is_not_the_cache_named_nothing(server) -> None:
    """caches.open("") answered from caches.default: in workerd the default
    cache and a named one are apart, and "" is a name like any other."""
    server.deploy("platcache", PLATFORM_CACHE, namespace=None)
    server.route("platcache.example/*", "platcache")
    resp = server.request("/", host="platcache.example")
    assert resp.status == 200 and resp.json() == [True, "D"], (resp, server.log()[-2000:])


def test_cache_names_are_bounded_as_workerd_bounds_them(server) -> None:
    # cache.c++ CacheStorage::open: a name of 1024 bytes or more is a TypeError.
    got = ok(server, "cache", ATTEMPT + """
c = await caches.open("n" * 1023)
await c.put("https://example.com/n", Response("N", headers={"cache-control": "max-age=600"}))
return [await attempt(caches.open("n" * 1024)), await attempt(caches.open("\u00e9" * 512)),
        await (await c.match("https://example.com/n")).text()]""")
    too_long = ["TypeError", "Cache name is too long."]
    assert got == [too_long, too_long, "N"]


# -- the SDK's RPC conversion helper ----------------------------------------------------------


def test_python_to_rpc_refuses_what_the_sdk_refuses_and_passes_what_rpc_carries(server) -> None:
    # workers-py rpc.py: python_to_rpc runs _raise_on_disabled_type first, so a
    # tuple, a bytearray or an awaitable anywhere is a TypeError (Corral turned
    # a tuple into a list); dates and sets cross RPC as themselves.
    got = ok(server, "cache", """
import asyncio, datetime
from workers import python_to_rpc

def refused(value):
    try:
        python_to_rpc(value)
    except TypeError as e:
        return str(e)
    return "accepted"

later = asyncio.sleep(0)
out = [refused((1, 2)), refused({"k": [bytearray(b"x")]}), refused([later]),
       python_to_rpc({"n": [1, "a", None], 2: {3}}) == {"n": [1, "a", None], "2": {3}},
       isinstance(python_to_rpc(datetime.datetime(2020, 1, 1)), datetime.datetime)]
double = lambda x: x * 2  # a function crosses as a stub to call back, as the SDK's create_proxy
out += [python_to_rpc(double)(3), python_to_rpc({"cb": double})["cb"](4), refused(int)]
await later
return out""")
    assert got == ["<class 'tuple'> cannot be sent over RPC.", "<class 'bytearray'> cannot be sent over RPC.",
                   "Awaitable <class 'coroutine'> cannot be sent over RPC.", True, True, 6, 8,
                   "type cannot be sent over RPC: use plain data (str, numbers, bool, None, bytes, lists, "
                   "dicts, sets, datetimes, functions)"]
