"""A hostile tenant abuses every binding from inside its sandbox.

One real ``corral serve`` for the module (tests.storage_helpers): a
``hostile`` script with KV, D1, R2, a Durable Object namespace and a queue,
and a ``victim`` of the same bindings in another dispatch namespace, whose
data is written first and read back at the end. The hostile code runs as the
eval tenant's body; beside the SDK's methods it calls the binding channel
directly (``sandbox.bindings.call``), as a tenant that skips the SDK can, so
the supervisor sees arguments no SDK call makes.

Each probe must end in an error the tenant can catch, naming the problem
(``pyodide.ffi.JsException`` for what the supervisor refuses, as Cloudflare's
SDK raises binding errors), never in the supervisor's "internal error": the
supervisor logs nothing at level ``error`` for any of it, stays up, and
serves the victim afterwards with its data intact.

Fixed here (each probe failed before): KV ``expiration`` /
``expirationTtl`` past SQLite's integer; R2 ``onlyIf`` that is no object or
whose ``uploadedBefore`` is no time, ``customMetadata`` with a non-string
key and ``list`` with a non-list ``include``; a Durable Object alarm past a
Date's range (stored, then every ``getAlarm()`` was an internal error); a
Cache API ``max-age`` of hundreds of digits; a queue message whose body
does not decode, or is nested a few hundred deep, which took every message
of its batch to the dead-letter queue with it; and a request method that is
no HTTP token, which reached the script a dispatch call invoked.
"""

from __future__ import annotations

import time

import pytest

from tests.harness import Corral
from tests.storage_helpers import BUCKET, DB, EVAL_TENANT, KV, fails, ok, start

CONFIG = """
[storage]
d1_query_ms = 300
d1_result_bytes = 1000000
"""

BOX = r'''

from workers import DurableObject


class Box(DurableObject):
    async def run(self, code):
        scope = {"JsException": JsException}
        source = "async def _run(storage):\n" + "\n".join("    " + l for l in code.splitlines())
        exec(compile(source, "<box>", "exec"), scope)
        return await scope["_run"](self.ctx.storage)

    async def fetch(self, request):
        return Response("box saw " + request.method)
'''

CONSUMER = EVAL_TENANT + r'''
    async def queue(self, batch, env, ctx):
        for m in batch.messages:
            await env.SEEN.put(m.id, repr(m.body))
'''

NS = {"type": "durable_object_namespace", "name": "NS", "class_name": "Box"}
QUEUE = {"type": "queue", "name": "QUEUE", "queue_name": "jobs"}
SEEN = {"type": "kv_namespace", "name": "SEEN", "namespace_id": "seen"}
BINDINGS = [KV, DB, BUCKET, NS, QUEUE]

#: Tenant code: ``probe(name, thunk)`` runs one call and records its outcome
#: as [error class, JS error name, message] or ["ok", repr]; ``raw`` is the
#: binding channel below the SDK.
PROBE = '''
from sandbox.bindings import call as raw
import inspect
out = {}
async def probe(name, thunk):
    try:
        result = thunk()
        if inspect.isawaitable(result):
            result = await result
        out[name] = ["ok", repr(result)[:200]]
    except Exception as e:
        out[name] = [type(e).__name__, getattr(e, "name", None), str(e)[:300]]
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = start(tmp_path_factory.mktemp("hostile-bindings"), CONFIG)
    server.deploy("hostile", EVAL_TENANT + BOX, bindings=BINDINGS)
    server.deploy("victim", EVAL_TENANT + BOX, namespace="other", bindings=BINDINGS)
    server.deploy("consumer", CONSUMER, bindings=[SEEN, {**QUEUE, "queue_name": "poison"}],
                  extra_metadata={"queue_consumers": [
                      {"queue": "poison", "max_batch_size": 10, "max_batch_timeout": 1,
                       "max_retries": 0}]})
    ok(server, "victim", VICTIM_WRITES, namespace="other")
    yield server
    server.stop()


VICTIM_WRITES = '''
await env.KV.put("secret", "victim-kv", metadata={"m": 1})
await env.DB.exec("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('victim-d1')")
await env.BUCKET.put("secret", "victim-r2", customMetadata={"m": "1"})
await env.NS.getByName("vault").run('await storage.put("secret", "victim-do")')
'''

VICTIM_READS = '''
meta = await env.KV.getWithMetadata("secret")
obj = await env.BUCKET.get("secret")
return {"kv": [meta.value, meta.metadata], "kv_keys": [k.name for k in (await env.KV.list()).keys],
        "d1": (await env.DB.prepare("SELECT body FROM notes").all()).results,
        "r2": [await obj.text(), obj.customMetadata],
        "do": await env.NS.getByName("vault").run('return await storage.get("secret")')}
'''


def _probes(server: Corral, code: str) -> dict[str, list]:
    """Run ``code`` (calls of ``probe``) in the hostile tenant: each probe's outcome."""
    return ok(server, "hostile", PROBE + code + "\nreturn out")


def _errors(server: Corral) -> list[dict]:
    return [e for e in server.log_events() if e.get("level") == "error"]


def _refused(outcomes: dict[str, list], expected: dict[str, str]) -> None:
    """Every probe raised JsException, with the expected words in its message."""
    for name, words in expected.items():
        kind, _js_name, message = outcomes[name]
        assert kind == "JsException" and words in message, (name, outcomes[name])


@pytest.fixture(autouse=True)
def _supervisor_stays_well(server: Corral):
    """After each test: nothing logged as the platform's error, and the
    victim (another namespace) still served."""
    before = len(_errors(server))
    yield
    assert _errors(server)[before:] == []
    assert server.alive()
    assert ok(server, "victim", "return 1", namespace="other") == 1


def test_kv_garbage_arguments(server: Corral) -> None:
    outcomes = _probes(server, '''
KV = env.KV
await probe("ttl past 64 bits", lambda: KV.put("k", "v", expirationTtl=2**63 - 1))
await probe("expiration past 64 bits", lambda: raw("KV", "put", ["k", {"expiration": 2**63}], b"v"))
await probe("expiration past a Date", lambda: KV.put("k", "v", expiration=8_640_000_000_001))
await probe("ttl negative", lambda: KV.put("k", "v", expirationTtl=-1))
await probe("ttl nan", lambda: KV.put("k", "v", expirationTtl=float("nan")))
await probe("key None", lambda: KV.get(None))
await probe("key empty", lambda: KV.put("", "v"))
await probe("key dot dot", lambda: KV.put("..", "v"))
await probe("key 513 bytes", lambda: KV.get("k" * 513))
await probe("metadata too big", lambda: KV.put("k", "v", metadata={"a": "x" * 2000}))
await probe("value over 25 MiB", lambda: KV.put("k", b"x" * (25 * 1024 * 1024 + 1)))
await probe("list limit 0", lambda: raw("KV", "list", [{"limit": 0}]))  # the SDK lists with the default
await probe("list limit huge", lambda: KV.list(limit=10**19))
await probe("list cursor garbage", lambda: KV.list(cursor="garbage!!"))
await probe("bulk of 101", lambda: KV.get([str(i) for i in range(101)]))
await probe("options not a dict", lambda: raw("KV", "put", ["k", [1]], b"v"))
await probe("no such method", lambda: raw("KV", "__init__", []))
await probe("no such binding", lambda: raw("NOPE", "get", ["k"]))
''')
    _refused(outcomes, {
        "ttl past 64 bits": "Invalid expiration_ttl of 9223372036854775807. Expiration times must be at most",
        "expiration past 64 bits": "Invalid expiration of 9223372036854775808",
        "expiration past a Date": "Invalid expiration of 8640000000001",
        "ttl negative": "Invalid expiration_ttl of -1",
        "ttl nan": "expirationTtl must be an integer",
        "key None": "key must be a string",
        "key empty": "Key name cannot be empty.",
        "key dot dot": '".." is not allowed as a key name',
        "key 513 bytes": "exceeds key length limit of 512",
        "metadata too big": "Metadata length of 2008 exceeds limit of 1024",
        "value over 25 MiB": "Value length exceeds limit",
        "list limit 0": "Invalid key limit of 0",
        "list limit huge": "Invalid key limit of 10000000000000000000",
        "list cursor garbage": "Invalid cursor",
        "bulk of 101": "maximum of 100 keys",
        "options not a dict": "options must be an object",
        "no such method": "KV namespaces have no method '__init__'",
        "no such binding": "no storage binding named 'NOPE'",
    })
    assert ok(server, "hostile", 'return [k.name for k in (await env.KV.list()).keys]') == []


def test_d1_hostile_sql(server: Corral) -> None:
    outcomes = _probes(server, '''
DB = env.DB
await DB.exec("CREATE TABLE IF NOT EXISTS t (a)")
def q(sql, *binds):
    return lambda: DB.prepare(sql).bind(*binds).all()
await probe("attach", q("ATTACH DATABASE '/tmp/evil.db' AS evil"))
await probe("vacuum into", q("VACUUM INTO '/tmp/evil.db'"))
await probe("pragma", q("PRAGMA writable_schema=ON"))
await probe("load_extension", q("SELECT load_extension('/lib/x.so')"))
await probe("begin", q("BEGIN"))
count = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c{}) SELECT {} FROM c"
await probe("endless cte", q(count.format("", "count(*)")))
await probe("huge result", q(count.format(" LIMIT 200000", "x, 'aaaaaaaaaaaaaaaaaaaaaaaa'")))
await probe("zeroblob", q("SELECT zeroblob(2000000000)"))
await probe("bind object", q("SELECT ?", object()))
await probe("bind set", q("SELECT ?", {1, 2}))
await probe("bind 2**63", q("SELECT ?", 2**63))
await probe("raw bind dict", lambda: raw("DB", "query", [["SELECT ?", [{"a": 1}]]]))
await probe("raw batch nul", lambda: raw("DB", "batch", [[["SELECT 1", []], ["SELECT 2\\x00", []]]]))
await probe("raw statement shape", lambda: raw("DB", "query", [[["SELECT ?", [1]]], "all"]))
await probe("bad utf-8 text", q("SELECT CAST(x'ff' AS TEXT) AS v"))
await probe("first missing column", lambda: DB.prepare("SELECT 1 AS a").first("nope"))
await probe("batch empty", lambda: DB.batch([]))
await probe("two statements", q("SELECT 1; DROP TABLE t"))
''')
    _refused(outcomes, {
        "attach": "ATTACH and DETACH (and VACUUM INTO) are not allowed in D1",
        "vacuum into": "VACUUM",
        "pragma": "PRAGMA writable_schema is not allowed in D1",
        "load_extension": "load_extension() is not allowed in D1",
        "begin": "transaction statements are not allowed in D1",
        "endless cte": "ran past its time limit",
        "huge result": "the result is larger than 1000000 bytes",
        "zeroblob": "string or blob too big",
        "bind object": "D1_TYPE_ERROR: Type 'object' not supported for value '[object Object]'",
        "bind set": "D1_TYPE_ERROR: Type 'object' not supported for value '[object Set]'",
        "bind 2**63": "D1_TYPE_ERROR",
        "raw bind dict": "D1_TYPE_ERROR: Type 'dict' not supported",
        "raw batch nul": "the query contains a null character",
        "raw statement shape": "a statement must be [sql, params]",
        "first missing column": "D1_COLUMN_NOTFOUND",
        "batch empty": "batch() takes a list of 1 to",
        "two statements": "You can only execute one statement at a time",
    })
    # TEXT that is not UTF-8 reads as JavaScript would decode it, with U+FFFD.
    assert outcomes["bad utf-8 text"][0] == "ok" and "\ufffd" in outcomes["bad utf-8 text"][1], outcomes
    assert ok(server, "hostile", 'return (await env.DB.prepare("SELECT count(*) AS n FROM t").first("n"))') == 0


def test_r2_garbage_options(server: Corral) -> None:
    outcomes = _probes(server, '''
B = env.BUCKET
await B.put("mine", "kept")
await probe("put onlyIf a string", lambda: B.put("k", "x", onlyIf="abc"))
await probe("put uploadedBefore garbage", lambda: B.put("k", "x", onlyIf={"uploadedBefore": "garbage"}))
await probe("get onlyIf a list", lambda: B.get("mine", onlyIf=[1]))
await probe("get uploadedAfter a list", lambda: B.get("mine", onlyIf={"uploadedAfter": [1]}))
await probe("custom bytes key", lambda: raw("BUCKET", "put", ["k", {"customMetadata": {b"a": "b"}}], b"x"))
await probe("custom int value", lambda: B.put("k", "x", customMetadata={"a": 1}))
await probe("custom too big", lambda: B.put("k", "x", customMetadata={"a": "x" * 9000}))
await probe("list include a number", lambda: raw("BUCKET", "list", [{"include": 5}]))
await probe("list limit 0", lambda: B.list(limit=0))
await probe("list cursor garbage", lambda: B.list(cursor="!!!"))
await probe("range negative", lambda: B.get("mine", range={"offset": -1}))
await probe("range past the end", lambda: B.get("mine", range={"offset": 2**63}))
await probe("range a list", lambda: B.get("mine", range=[1, 2]))
await probe("key with NUL", lambda: B.put("a\\x00b", "x"))
await probe("key of 1025 bytes", lambda: B.put("k" * 1025, "x"))
await probe("delete 10000 keys", lambda: B.delete([str(i) for i in range(10000)]))
parts = [{"partNumber": 1, "etag": "aa"}]
await probe("complete unknown upload", lambda: raw("BUCKET", "completeMultipartUpload", ["k", "nope", parts]))
await probe("dot dot key", lambda: B.put("../../etc/passwd", "x"))
mine = await B.get("mine")
out["mine"] = await mine.text()
out["keys"] = [o.key for o in (await B.list()).objects]
''')
    _refused(outcomes, {
        "put onlyIf a string": "onlyIf must be an object or Headers, got str",
        "put uploadedBefore garbage": "onlyIf.uploadedBefore must be a Date",
        "get onlyIf a list": "onlyIf must be an object or Headers, got list",
        "get uploadedAfter a list": "onlyIf.uploadedAfter must be a Date",
        "custom bytes key": "customMetadata must be an object of strings",
        "custom int value": "customMetadata must be an object of strings",
        "custom too big": "customMetadata is larger than 8192 bytes",
        "list include a number": "include must be a list",
        "list limit 0": "limit must be between 1 and 1000",
        "list cursor garbage": "The cursor is not valid",
        "range negative": "Invalid range. Starting offset (-1) must be greater than or equal to 0.",
        "range past the end": "The requested range is not satisfiable",
        "range a list": "range must be an object",
        "key with NUL": "The specified object name is not valid",
        "key of 1025 bytes": "The specified object name is not valid",
        "delete 10000 keys": "at most 1000 keys can be deleted at once",
        "complete unknown upload": "The specified multipart upload does not exist",
    })
    assert outcomes["dot dot key"][0] == "ok"  # a name inside the bucket, never a path
    assert outcomes["mine"] == "kept"
    assert outcomes["keys"] == ["../../etc/passwd", "mine"]  # nothing the refused puts wrote


def test_durable_object_garbage(server: Corral) -> None:
    outcomes = _probes(server, '''
NS = env.NS
await probe("idFromString garbage", lambda: NS.idFromString("zz"))
await probe("raw id not hex", lambda: raw("NS", "call", ["Z" * 64, None, "run", b""]))
await probe("raw rpc args not encoded", lambda: raw("NS", "call", ["a" * 64, None, "run", "text"]))
await probe("raw rpc reserved method", lambda: raw("NS", "call", ["a" * 64, None, "alarm", b""]))
await probe("raw rpc no such method", lambda: raw("NS", "nope", ["a" * 64]))
out.update(await NS.getByName("box").run(PROBE_IN_BOX))
'''.replace("PROBE_IN_BOX", repr(PROBE_IN_BOX)))
    _refused(outcomes, {
        "idFromString garbage": "Durable Object IDs must be 64 hex digits",
        "raw id not hex": "Durable Object IDs must be 64 hex digits",
        "raw rpc args not encoded": "RPC arguments must arrive encoded",
        "raw rpc reserved method": "'alarm' cannot be called over RPC",
        "raw rpc no such method": "DurableObjectNamespace has no method 'nope'",
        "put an object": 'Could not serialize object of type "object"',
        "key too large": "Keys cannot be larger than 2048 bytes",
        "value too large": "Values cannot be larger than 2097152 bytes",
        "too many pairs": "Maximum number of pairs exceeded",
        "list limit 0": "limit must be between 1",
        "raw put not encoded": "a storage value must arrive encoded",
        "raw commit without begin": "no transaction is open in this call",
        "sql attach": "not authorized",
        "sql on _cf_ tables": "not authorized",
        "sql endless": "",
        "alarm past a Date": "setAlarm() needs a time a Date can hold",
        "alarm nan": "setAlarm() needs a finite time",
    })
    assert outcomes["getAlarm after"] == ["ok", "None"]
    assert outcomes["kept"] == {"v": 1}


#: Run inside the object (``storage`` is its ctx.storage), sent as the text of
#: an RPC argument; ``probe``, ``raw`` and ``out`` are defined again there.
PROBE_IN_BOX = PROBE + '''
await storage.put("kept", {"v": 1})
await probe("put an object", lambda: storage.put("k", object()))
await probe("key too large", lambda: storage.put("k" * 3000, 1))
await probe("value too large", lambda: storage.put("big", "x" * (3 * 1024 * 1024)))
await probe("too many pairs", lambda: storage.put({str(i): i for i in range(200)}))
await probe("list limit 0", lambda: raw("#storage", "list", [{"limit": 0}]))  # the SDK refuses it first
await probe("raw put not encoded", lambda: raw("#storage", "put", [[["k", "text"]]]))
await probe("raw commit without begin", lambda: raw("#storage", "txCommit", []))
await probe("sql attach", lambda: storage.sql.exec("ATTACH '/tmp/evil' AS evil"))
await probe("sql on _cf_ tables", lambda: storage.sql.exec("DELETE FROM _cf_KV"))
endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c"
await probe("sql endless", lambda: storage.sql.exec(endless).one())
await probe("alarm past a Date", lambda: storage.setAlarm(1e300))
await probe("alarm nan", lambda: storage.setAlarm(float("nan")))
await probe("getAlarm after", lambda: storage.getAlarm())
out["kept"] = await storage.get("kept")
return out
'''


def test_a_queue_message_that_does_not_decode_is_refused_and_spoils_no_batch(server: Corral) -> None:
    outcomes = ok(server, "consumer", PROBE + '''
poisoned = [[b"\\xa4good", "v8", None], [b"\\xc1", "v8", None]]
await probe("v8 not msgpack", lambda: raw("QUEUE", "sendBatch", [poisoned, None]))
await probe("json not json", lambda: raw("QUEUE", "send", [b"{nope", "json", None]))
await probe("unknown content type", lambda: raw("QUEUE", "send", [b"x", ["json"], None]))
# Nested 980 deep: the supervisor's own decode managed it, the consumer's could not.
await probe("v8 nested 980 deep", lambda: raw("QUEUE", "send", [b"\\x91" * 980 + b"\\xa1x", "v8", None]))
await probe("json nested 600 deep", lambda: raw("QUEUE", "send", [b"[" * 600 + b"]" * 600, "json", None]))
await probe("delay nan", lambda: env.QUEUE.send("x", delaySeconds=float("nan")))
await probe("101 messages", lambda: env.QUEUE.sendBatch([{"body": i} for i in range(101)]))
await probe("message too large", lambda: env.QUEUE.send("x" * 200000))
await env.QUEUE.sendBatch([{"body": "first"}, {"body": {"second": 2}, "contentType": "json"}])
deep = "leaf"
for _ in range(450):
    deep = [deep]
await env.QUEUE.sendBatch([{"body": "third"}, {"body": deep}, {"body": "fourth"}])
return out''')
    _refused(outcomes, {
        "v8 not msgpack": 'the message body is not valid "v8" data',
        "json not json": 'the message body is not valid "json" data',
        "unknown content type": "Unknown content type ['json']",
        "v8 nested 980 deep": "the message body is nested more than 512 levels deep",
        "json nested 600 deep": "the message body is nested more than 512 levels deep",
        "delay nan": "delaySeconds must be a number between 0 and 43200, got nan",
        "101 messages": "sendBatch() takes at most 100 messages",
        "message too large": "message too large",
    })
    # Every message sent is delivered. Before the fix a poisoned one took the
    # others of its batch to the dead-letter queue (here: dropped) with it, and
    # so did one the SDK sends nested 450 deep (its consumer's decoding
    # overflowed Python's stack).
    seen = _wait_for_bodies(server, 5)
    assert sorted(seen) == ["'first'", "'fourth'", "'third'", "[" * 450 + "'leaf'" + "]" * 450,
                            "{'second': 2}"]
    assert not [e for e in server.log_events() if e.get("event") == "queue.dead_lettered"]


def _wait_for_bodies(server: Corral, count: int, timeout: float = 30.0) -> list[str]:
    """The bodies the consumer recorded, once there are ``count`` (polling its record)."""
    code = "return [await env.SEEN.get(k.name) for k in (await env.SEEN.list()).keys]"
    deadline = time.monotonic() + timeout
    seen = ok(server, "consumer", code)
    while len(seen) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = ok(server, "consumer", code)
    return seen


def test_cache_put_with_garbage(server: Corral) -> None:
    outcomes = _probes(server, '''
from workers import Response as R
cache = await caches.open("mine")
def aged(body, directive):
    return R(body, headers={"cache-control": directive})
await probe("max-age of 400 digits", lambda: cache.put("https://x/a", aged("a", "max-age=" + "9" * 400)))
await probe("s-maxage of 5000 digits", lambda: cache.put("https://x/b", aged("b", "s-maxage=" + "9" * 5000)))
await probe("raw status past 64 bits", lambda: raw("#caches", "put", ["mine", "https://x/c", "GET", 2**63, []]))
await probe("raw headers not pairs", lambda: raw("#caches", "put", ["mine", "https://x/c", "GET", 200, [["a"]]]))
await probe("raw non-GET", lambda: raw("#caches", "put", ["mine", "https://x/c", "POST", 200, []]))
await probe("raw no such method", lambda: raw("#caches", "keys", ["mine", "https://x/c"]))
a = await cache.match("https://x/a")
b = await cache.match("https://x/b")
out["cached"] = [await a.text() if a else None, await b.text() if b else None]
''')
    _refused(outcomes, {
        "raw status past 64 bits": "status must be between 200 and 599",
        "raw headers not pairs": "headers must be a list of [name, value] strings",
        "raw non-GET": "Cannot cache response to non-GET request",
        "raw no such method": "Cache has no method 'keys'",
    })
    assert outcomes["max-age of 400 digits"][0] == "ok"
    # RFC 9111: a delta-seconds too large to hold is 2^31 seconds: both are cached.
    assert outcomes["cached"] == ["a", "b"]


def test_a_request_method_that_is_no_token_is_refused_where_it_is_set(server: Corral) -> None:
    outcomes = _probes(server, '''
from workers import Request, fetch
await probe("Request", lambda: Request("https://x/", method="GET\\r\\nX: y"))
await probe("fetch", lambda: fetch("https://x/", method="GET /evil HTTP/1.1"))
await probe("object's fetch", lambda: env.NS.getByName("box").fetch("https://x/", method="POST\\r\\nX: y"))
await probe("empty", lambda: Request("https://x/", method=""))
good = await env.NS.getByName("box").fetch("https://x/", method="patch")
out["good"] = await good.text()
''')
    for name in ("Request", "fetch", "object's fetch", "empty"):
        assert outcomes[name][0] == "TypeError" and "Invalid HTTP method string" in outcomes[name][2], \
            outcomes[name]
    assert outcomes["good"] == "box saw PATCH"


def test_supervisor_refusals_leave_the_victims_data_intact_and_unseen(server: Corral) -> None:
    got = ok(server, "victim", VICTIM_READS, namespace="other")
    assert got == {"kv": ["victim-kv", {"m": 1}], "kv_keys": ["secret"],
                   "d1": [{"body": "victim-d1"}], "r2": ["victim-r2", {"m": "1"}], "do": "victim-do"}
    seen = ok(server, "hostile", '''
obj = await env.BUCKET.get("secret")
return [await env.KV.get("secret"), obj, await env.NS.getByName("vault").run('return await storage.get("secret")')]''')
    assert seen == [None, None, None]
    assert fails(server, "hostile", 'return (await env.DB.prepare("SELECT * FROM notes").all()).results')[
        "message"].startswith("D1_ERROR: no such table: notes")
