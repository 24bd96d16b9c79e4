"""A sweep of the bindings against Cloudflare's documented behaviour and
workerd's sources, as tenant code from Cloudflare's docs exercises them.

Each test runs a few lines of tenant code in a real jailed child on a
module-scoped ``corral serve`` (tests.storage_helpers' eval tenant, plus a
Durable Object that runs code inside itself) and asserts what Cloudflare's
Python Workers would see. The sources are named beside each test: workerd's
``actor-state.c++``, ``sql.c++``, ``kv.c++``, ``r2-bucket.h``, ``cache.c++``,
``queue.c++`` and ``jsg/value.h`` (Web IDL's conversions: a number passed
where a string is taken becomes its string), D1's docs, and Pyodide's type
conversions (a JavaScript Number that ``Number.isSafeInteger`` is a Python
int, any other a float). Queue deliveries are awaited on the upstream the
consumer reports each batch to.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import pytest

from tests import storage_helpers as h
from tests.harness import Corral

#: The eval tenant, plus a Durable Object that runs the test's code as the
#: body of ``async def _run(self, ctx, storage)`` and answers what it returned
#: or the error it raised; ``echo`` answers what it was given, over RPC.
TENANT = h.EVAL_TENANT + r'''
from workers import DurableObject


class Thing(DurableObject):
    async def probe(self, code):
        scope = {"JsException": JsException}
        source = "async def _run(self, ctx, storage):\n" + "\n".join("    " + l for l in code.splitlines())
        exec(compile(source, "<probe>", "exec"), scope)
        try:
            return {"ok": await scope["_run"](self, self.ctx, self.ctx.storage)}
        except Exception as e:
            return {"error": type(e).__name__, "name": getattr(e, "name", None),
                    "message": getattr(e, "message", str(e)), "js": isinstance(e, JsException)}

    async def echo(self, value):
        return {"value": value, "types": [type(v).__name__ for v in value]}
'''

#: A consumer that reports each batch (every message's tag, attempt and the
#: Python types in its body) to the upstream, then settles it by its tags.
CONSUMER = r'''
import json
import urllib.parse
from workers import WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def queue(self, batch, env, ctx):
        seen = [{"tag": m.body["tag"], "attempts": m.attempts,
                 "types": [type(m.body[k]).__name__ for k in sorted(m.body)]} for m in batch.messages]
        await fetch(f"{env.SINK}/seen/{urllib.parse.quote(json.dumps(seen))}")
        first = {m.body["tag"]: m for m in batch.messages if m.attempts == 1}
        if "ack-after-retry-all" in first:
            batch.retryAll(delaySeconds=0)
            first["ack-after-retry-all"].ack()
        if "retried-first" in first:
            first["retried-first"].retry(delaySeconds=0)
            batch.ackAll()
            first["retry-after-ack-all"].retry(delaySeconds=0)
        for m in batch.messages:
            m.ack()  # the rest; ignored for those settled above
'''

KV = {"type": "kv_namespace", "name": "KV", "namespace_id": "sweep-kv"}
DB = {"type": "d1", "name": "DB", "id": "sweep-db"}
B = {"type": "r2_bucket", "name": "B", "bucket_name": "sweep-bucket"}
OBJ = {"type": "durable_object_namespace", "name": "OBJ", "class_name": "Thing"}
Q = {"type": "queue", "name": "Q", "queue_name": "sweep-jobs"}
ACKS = {"type": "queue", "name": "ACKS", "queue_name": "sweep-acks"}
CONSUMERS = {"queue_consumers": [
    {"queue": name, "max_batch_size": 10, "max_batch_timeout": 0.1, "max_retries": 3}
    for name in ("sweep-jobs", "sweep-acks")]}

#: ``attempt(awaitable)``: its result, or ``[error name, message]`` of the
#: JsException it raised (a Python exception's class is prefixed ``py:``).
ATTEMPT = """
async def attempt(awaitable):
    try:
        return await awaitable
    except JsException as e:
        return [e.name, e.message]
    except Exception as e:
        return ["py:" + type(e).__name__, str(e)]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: Any) -> Corral:
    srv = h.start(tmp_path_factory.mktemp("bindsweep"))
    try:
        srv.deploy("app", TENANT, bindings=[KV, DB, B, OBJ, Q, ACKS])
        sink = {"type": "plain_text", "name": "SINK", "text": upstream.url("").rstrip("/")}
        srv.deploy("consumer", CONSUMER, bindings=[sink], extra_metadata=CONSUMERS)
        yield srv
    finally:
        srv.stop()


def probe(server: Corral, name: str, code: str) -> Any:
    """Run ``code`` (with ``attempt``) inside the object ``name``; what it returned."""
    result = h.ok(server, "app", f"return await env.OBJ.getByName({name!r}).probe({(ATTEMPT + code)!r})")
    assert "ok" in result, result
    return result["ok"]


# -- Numbers, as they cross JavaScript on Cloudflare --------------------------------------


def test_durable_object_storage_gives_whole_floats_back_as_ints(server: Corral) -> None:
    """A value stored with ``ctx.storage.put`` is a JavaScript value: 1.0 is
    the Number 1, which Pyodide gives back as the int 1 (an int past 2**53
    went as a BigInt and comes back an int). Corral gave back the float 1.0."""
    got = probe(server, "numbers", """
await storage.put("f", 1.0)
await storage.put({"g": {"a": 2.0, "b": [3.0, 2**60, 0.5]}})
listed = await storage.list(prefix="f")
many = await storage.get(["f", "g"])
return [type(await storage.get("f")).__name__, [type(v).__name__ for v in (await storage.get("g"))["b"]],
        type((await storage.get("g"))["a"]).__name__, type(listed["f"]).__name__,
        type(many["f"]).__name__, type(storage.kv.get("f")).__name__]""")
    assert got == ["int", ["int", "int", "float"], "int", "int", "int", "int"]


def test_rpc_arguments_and_results_give_whole_floats_back_as_ints(server: Corral) -> None:
    """Workers RPC carries JavaScript values; workers-py's ``python_from_rpc``
    converts with ``to_py``, so a float 2.0 sent either way arrives as the int
    2, and 2.5 stays a float. Corral kept 2.0 a float both ways."""
    got = h.ok(server, "app", """
out = await env.OBJ.getByName("rpc").echo([2.0, 2.5, 2**60])
return [out["types"], [type(v).__name__ for v in out["value"]], type(out["value"][0]).__name__]""")
    assert got == [["int", "float", "int"], ["int", "float", "int"], "int"]


def test_sql_cursor_numbers_are_the_doubles_workerd_makes_them(server: Corral) -> None:
    """workerd's sql.c++ hands every SQLite number to JavaScript as a double
    ("int64 will become BigInt ... We will coerce to a double here"): a REAL
    2.0 reaches Python as the int 2, an INTEGER past 2**53 as the float it
    rounds to. Corral gave the float 2.0 and the exact integer."""
    got = probe(server, "sql", """
row = storage.sql.exec("SELECT 2.0 AS whole, 2.5 AS half, 9007199254740993 AS big, 7 AS small").one()
raw = list(storage.sql.exec("SELECT 3.0, 9007199254740993").raw())
return [{k: [type(v).__name__, v] for k, v in row.items()}, [[type(v).__name__, v] for v in raw[0]]]""")
    assert got[0] == {"whole": ["int", 2], "half": ["float", 2.5], "big": ["float", 9007199254740992.0],
                      "small": ["int", 7]}
    assert got[1] == [["int", 3], ["float", 9007199254740992.0]]


def test_sql_exec_binds_a_boolean_as_the_string_web_idl_makes_it(server: Corral) -> None:
    """sql.h: a binding is ``kj::OneOf<kj::Array<const byte>, kj::String,
    double>``, and jsg/value.h converts to a OneOf by Web IDL's union rules: a
    boolean matches no boolean type, so it is coerced to a string. True binds
    the TEXT 'true' (django-cf's Durable Object backend turns True into 1 for
    that reason). Corral bound the integer 1."""
    got = probe(server, "sql-bool", """
return storage.sql.exec("SELECT ? AS t, typeof(?) AS ty, ? AS f", True, True, False).one()""")
    assert got == {"t": "true", "ty": "text", "f": "false"}


def test_d1_integers_past_2_53_read_back_as_the_float_a_number_holds(server: Corral) -> None:
    """D1's docs (Query D1 > Type conversion): INTEGER becomes a JavaScript
    Number and BigInt is not supported, so 2**53 + 1 reads back as
    9007199254740992.0 (a Number that is not a safe integer: Pyodide's float),
    in all(), first() and raw() alike. Corral returned the exact int."""
    got = h.ok(server, "app", """
sql = "SELECT 9007199254740993 AS big, -9007199254740993 AS neg, 9007199254740991 AS safe"
first = await env.DB.prepare(sql).first()
raw = await env.DB.prepare(sql).raw()
rows = (await env.DB.prepare(sql).all()).results
return [[type(v).__name__ for v in first.values()], [type(v).__name__ for v in raw[0]],
        [type(v).__name__ for v in rows[0].values()], first["big"]]""")
    assert got == [["float", "float", "int"]] * 3 + [9007199254740992.0]


def test_kv_json_reads_numbers_and_refuses_nan_as_json_parse_does(server: Corral) -> None:
    """``KV.get(key, "json")`` is ``JSON.parse``: an integer past 2**53 is a
    Number (Pyodide's float), and ``NaN`` is no JSON at all (a SyntaxError).
    Corral kept the exact int and read NaN as a float."""
    got = h.ok(server, "app", ATTEMPT + """
await env.KV.put("sweep/json", '{"big": 9007199254740993, "small": 3}')
await env.KV.put("sweep/nan", "NaN")
doc = await env.KV.get("sweep/json", "json")
return [type(doc["big"]).__name__, doc["big"], type(doc["small"]).__name__,
        (await attempt(env.KV.get("sweep/nan", "json")))[0]]""")
    assert got == ["float", 9007199254740992.0, "int", "SyntaxError"]


def test_queue_bodies_give_whole_floats_back_as_ints(server: Corral, upstream: Any) -> None:
    """A message body crosses JavaScript (structured clone for "v8", the
    consumer's JSON.parse for "json"): 1.0 reaches the consumer as the int 1,
    and in a "json" body NaN and Infinity are null (JSON.stringify writes them
    so). Corral delivered the float 1.0 for both content types, and NaN and
    Infinity as floats."""
    sent = h.ok(server, "app", """
await env.Q.send({"tag": "v8", "a": 1.0, "b": 0.5})
await env.Q.send({"tag": "json", "a": 1.0, "b": 0.5}, contentType="json")
await env.Q.send({"tag": "json-nan", "a": float("nan"), "b": float("inf")}, contentType="json")
return True""")
    assert sent is True

    tags = ("v8", "json", "json-nan")
    assert upstream.wait_for(lambda: set(tags) <= set(_types(upstream)), timeout=30), server.log()[-3000:]
    # sorted keys: a, b, tag
    assert {k: v for k, v in _types(upstream).items() if k in tags} == {
        "v8": ["int", "float", "str"], "json": ["int", "float", "str"],
        "json-nan": ["NoneType", "NoneType", "str"]}


def _batches(upstream: Any) -> list[list[dict[str, Any]]]:
    """Every batch the consumer reported: its messages' tag, attempts and body types."""
    return [json.loads(unquote(r["path"].removeprefix("/seen/"))) for r in upstream.seen("/seen/")]


def _types(upstream: Any) -> dict[str, list[str]]:
    return {m["tag"]: m["types"] for batch in _batches(upstream) for m in batch}


def _delivered(upstream: Any, tag: str, attempts: int) -> list[list[dict[str, Any]]]:
    """The reported batches in which ``tag`` arrived for the ``attempts``-th time."""
    return [b for b in _batches(upstream) if {"tag": tag, "attempts": attempts} in
            [{"tag": m["tag"], "attempts": m["attempts"]} for m in b]]


def test_queue_ack_after_retry_all_is_ignored(server: Corral, upstream: Any) -> None:
    """workerd's queue.c++ ``QueueMessage::ack``: after ``retryAll()``, "Calling
    ack() on a message after calling retryAll() has no effect": the message is
    retried. Corral let the later ack() win and never delivered it again."""
    assert h.ok(server, "app", 'return await env.ACKS.send({"tag": "ack-after-retry-all"})') is None
    assert upstream.wait_for(lambda: _delivered(upstream, "ack-after-retry-all", 2), timeout=30), \
        (_batches(upstream), server.log()[-3000:])


def test_queue_retry_after_ack_all_is_ignored(server: Corral, upstream: Any) -> None:
    """workerd's queue.c++ ``QueueMessage::retry``: after ``ackAll()``, "Calling
    retry() on a message after calling ackAll() has no effect", while a
    retry() made before ackAll() holds (Queues docs, "Explicit
    acknowledgement": the call on a single message takes precedence over the
    batch-level one that follows it). The two are retried with the same delay,
    so they would come back in one batch: the one retried first arrives again,
    the other must not. Corral retried both."""
    sent = h.ok(server, "app", """
return await env.ACKS.sendBatch([{"body": {"tag": "retried-first"}},
                                 {"body": {"tag": "retry-after-ack-all"}}])""")
    assert sent is None
    assert upstream.wait_for(lambda: _delivered(upstream, "retried-first", 2), timeout=30), \
        (_batches(upstream), server.log()[-3000:])
    (again,) = _delivered(upstream, "retried-first", 2)
    assert [m["tag"] for m in again] == ["retried-first"], _batches(upstream)
    assert not _delivered(upstream, "retry-after-ack-all", 2), _batches(upstream)


# -- KV put's value ----------------------------------------------------------------------


def test_kv_put_stores_a_number_as_its_string_and_refuses_an_object(server: Corral) -> None:
    """kv.c++ ``put``: the value is ``OneOf<kj::String, jsg::JsObject>``, so a
    JavaScript primitive is coerced to its string (5 is "5", 1.0 the Number 1
    is "1", True is "true"); an object that is not bytes or a stream is
    ``TypeError: KV put() accepts only strings, ArrayBuffers,
    ArrayBufferViews, and ReadableStreams as values.`` Corral refused every
    one with a Python TypeError in its own words."""
    got = h.ok(server, "app", ATTEMPT + """
out = []
for value in (5, 1.0, 1.5, True, 1e21, 1e-5):
    await env.KV.put("sweep/put", value)
    out.append(await env.KV.get("sweep/put"))
out.append(await attempt(env.KV.put("sweep/put", {"a": 1})))
out.append(await attempt(env.KV.put("sweep/put", ["a"])))
return out""")
    refused = ["TypeError", "KV put() accepts only strings, ArrayBuffers, ArrayBufferViews, and "
                            "ReadableStreams as values."]
    assert got == ["5", "1", "1.5", "true", "1e+21", "0.00001", refused, refused]


def test_kv_and_r2_keys_that_are_numbers_are_their_strings(server: Corral) -> None:
    """kv.h and r2-bucket.h take a key as a ``kj::String`` (or a list of them),
    and Web IDL converts a number to its string: ``KV.get(5)`` reads the key
    "5" on Cloudflare, as put, delete and R2's get, head, put and delete do.
    Corral refused each with "key must be a string, got int"."""
    got = h.ok(server, "app", """
await env.KV.put(41, "kv")
await env.B.put(42, "r2")
kv = [await env.KV.get(41), await env.KV.get("41"), dict(await env.KV.get([41, 43])),
      (await env.KV.getWithMetadata(41)).value]
r2 = [await (await env.B.get(42)).text(), (await env.B.head(42)).key]
await env.KV.delete(41)
await env.B.delete([42])
return kv + r2 + [await env.KV.get("41"), await env.B.head("42")]""")
    assert got == ["kv", "kv", {"41": "kv", "43": None}, "kv", "r2", "42", None, None]


def test_kv_integer_options_truncate_a_fractional_number(server: Corral) -> None:
    """kv.h: ``expiration``, ``expirationTtl``, ``cacheTtl`` and ``limit`` are
    ``int``s, and jsg/value.h converts a number to one by truncating it: 59.9
    is 59 (refused in KV's words, below its minimum of 60), 3600.5 is 3600,
    a cacheTtl of 30.5 is 30, a limit of 1.9 is 1. Corral refused every
    fractional value: "expirationTtl must be an integer, got 59.9"."""
    got = h.ok(server, "app", ATTEMPT + """
await env.KV.put("sweep/ttl/a", "x", expirationTtl=3600.5)
await env.KV.put("sweep/ttl/b", "x", {"expirationTtl": 7200.9})
listed = await env.KV.list(prefix="sweep/ttl/", limit=1.9)
return [await attempt(env.KV.put("sweep/ttl/c", "x", expirationTtl=59.9)),
        await attempt(env.KV.get("sweep/ttl/a", cacheTtl=29.9)),
        await env.KV.get("sweep/ttl/a", cacheTtl=30.5),
        [k.name for k in listed["keys"]], listed.list_complete]""")
    assert got == [["Error", "KV PUT failed: 400 Invalid expiration_ttl of 59. Expiration TTL must be at least 60."],
                   ["Error", "KV GET failed: 400 Invalid cache_ttl of 29. Cache TTL must be at least 30."],
                   "x", ["sweep/ttl/a"], False]


# -- The Cache API -----------------------------------------------------------------------


def test_cache_put_of_a_304_is_silently_discarded(server: Corral) -> None:
    """cache.c++ ``Cache::put``: "Silently discard 304 status responses to
    conditional requests": put() resolves and stores nothing, so an entry
    already there stays. Corral stored the 304 and answered later matches
    with it."""
    got = h.ok(server, "app", """
cache = await caches.open("sweep")
url = "https://example.com/sweep/304"
fresh = "https://example.com/sweep/304-only"
await cache.put(url, Response("kept", headers={"cache-control": "max-age=600"}))
out = [await cache.put(url, Response(None, status=304, headers={"cache-control": "max-age=600"})),
       await cache.put(fresh, Response(None, status=304, headers={"cache-control": "max-age=600"}))]
kept = await cache.match(url)
return out + [kept.status, await kept.text(), (await cache.match(fresh)) is None]""")
    assert got == [None, None, 200, "kept", True]


# -- Durable Object storage list ---------------------------------------------------------


def test_storage_keys_that_are_numbers_are_their_strings(server: Corral) -> None:
    """actor-state.h: a key is a ``kj::String``, and Web IDL converts a number
    to its string: ``storage.get(5)`` on Cloudflare (Pyodide passes 5 as the
    Number 5) reads the key "5", as put, delete and ``storage.kv`` do.
    Corral refused every one: "Durable Object storage keys must be strings"."""
    got = probe(server, "int-keys", """
await storage.put(5, "five")
await storage.put({"6": "six"})
storage.kv.put(7.0, "seven")
return [await storage.get("5"), await storage.get(5), dict(await storage.get([5, 6, 7])),
        storage.kv.get(7), await storage.delete(5), await storage.delete([6, 8]), storage.kv.delete(7),
        await storage.list()]""")
    assert got == ["five", "five", {"5": "five", "6": "six", "7": "seven"}, "seven", True, 1, True, {}]


def test_storage_and_r2_list_limits_truncate_a_fractional_number(server: Corral) -> None:
    """actor-state.h and r2-bucket.h: a list's ``limit`` is an ``int``, which
    jsg/value.h makes of 2.7 by truncating it to 2 (and of 0.5 the 0 that
    "List limit must be positive." refuses). Corral refused 2.7: "limit must
    be an integer"."""
    got = probe(server, "limits", """
await storage.put({"a": 1, "b": 2, "c": 3})
return [await storage.list(limit=2.7), await attempt(storage.list(limit=0.5))]""")
    assert got == [{"a": 1, "b": 2}, ["TypeError", "List limit must be positive."]]
    listed = h.ok(server, "app", """
for key in ("sweep/list/a", "sweep/list/b", "sweep/list/c"):
    await env.B.put(key, "x")
page = await env.B.list(prefix="sweep/list/", limit=2.7)
return [[o.key for o in page.objects], page.truncated]""")
    assert listed == [["sweep/list/a", "sweep/list/b"], True]


def test_storage_list_refuses_start_together_with_start_after(server: Corral) -> None:
    """actor-state.c++ ``list()``: ``TypeError: list() cannot be called with
    both start and startAfter values.``, for ``ctx.storage.list`` and the
    synchronous ``ctx.storage.kv.list`` alike (sync-kv.c++ compiles its
    options the same way). Corral listed from startAfter."""
    got = probe(server, "list", """
await storage.put({"a": 1, "b": 2, "c": 3})
def sync_list():
    try:
        return list(storage.kv.list(start="a", startAfter="b"))
    except JsException as e:
        return [e.name, e.message]
return [await attempt(storage.list(start="a", startAfter="b")), sync_list(),
        await storage.list(startAfter="a", limit=1)]""")
    refused = ["TypeError", "list() cannot be called with both start and startAfter values."]
    assert got == [refused, refused, {"b": 2}]


# -- Already as Cloudflare has them (not covered elsewhere) -------------------------------


def test_shapes_that_already_matched(server: Corral) -> None:
    """KV list pages with ``cursor`` until ``list_complete`` (KV docs, "List
    keys": the last page has no cursor); R2 ``uploadPart`` of an upload that
    was completed is NoSuchUpload (R2 error 10024); a
    Cache ``delete`` of a non-GET request is false unless ``ignoreMethod``
    (cache.c++); ``getAlarm()`` is the alarm in whole milliseconds (a kj::Date);
    ``sql.exec`` cursors count rows read and written."""
    got = h.ok(server, "app", ATTEMPT + """
from workers import Request
for i in range(5):
    await env.KV.put(f"sweep/page/{i}", "x")
pages, cursor = [], None
while True:
    page = await env.KV.list(prefix="sweep/page/", limit=2, cursor=cursor)
    pages.append([[k.name[-1] for k in page["keys"]], page.list_complete, "cursor" in page])
    if page.list_complete:
        break
    cursor = page.cursor
upload = await env.B.createMultipartUpload("sweep/mp")
await upload.complete([await upload.uploadPart(1, b"only")])
cache = await caches.open("sweep-delete")
url = "https://example.com/sweep/delete"
await cache.put(url, Response("x", headers={"cache-control": "max-age=600"}))
deletes = [await cache.delete(Request(url, method="POST")),
           await cache.delete(Request(url, method="POST"), ignoreMethod=True), await cache.delete(url)]
return [pages, (await attempt(upload.uploadPart(2, b"late")))[1], deletes]""")
    assert got[0] == [[["0", "1"], False, True], [["2", "3"], False, True], [["4"], True, False]]
    assert got[1] == "uploadPart: The specified multipart upload does not exist (10024)"
    assert got[2] == [False, True, False]
    alarm = probe(server, "matched", """
await storage.setAlarm(4102444800000.7)
when = await storage.getAlarm()
await storage.deleteAlarm()
storage.sql.exec("CREATE TABLE IF NOT EXISTS t (v)")
written = storage.sql.exec("INSERT INTO t VALUES (1), (2)")
read = storage.sql.exec("SELECT v FROM t")
rows = read.toArray()
return [when, type(when).__name__, written.rowsWritten, read.rowsRead, len(rows)]""")
    assert alarm == [4102444800000, "int", 2, 2, 2]
