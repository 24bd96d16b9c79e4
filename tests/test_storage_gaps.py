"""Storage points of issue 15 the other storage tests leave out: KV
expiration taking effect, the D1 result size limit, ``ackAll``/``retryAll``
and ``delaySeconds`` of queues, and the queue backlog quota.

One real ``corral serve`` for the module (tests.storage_helpers), with a
small ``storage.d1_result_bytes`` and a ``queue_messages`` cap for the
``plan:free`` tag.

KV expiry: Corral's KV takes "now" from the supervisor's ``time.time()`` and
its minimum TTL is the constant ``supervisor.bindings.kv.MIN_TTL_S`` (60 s,
as Cloudflare), with no setting to lower it and no clock to move. Rather
than wait a minute, the expiry test writes a key with ``expirationTtl=60``
and then moves that key's stored expiration 61 s into the past in the KV
file itself (what a minute of waiting would do); everything after that goes
through the tenant API.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from supervisor.bindings.base import Scope
from tests.storage_helpers import ALL, deploy, fails, ok, start
from tests.test_queues import _wait_for

CONFIG = """
[storage]
d1_result_bytes = 4096

[storage.quota.tag."plan:free"]
queue_messages = 3
"""

GAPS = {"type": "queue", "name": "Q", "queue_name": "gaps"}
BACKLOG = {"type": "queue", "name": "BACKLOG", "queue_name": "backlog"}  # no consumer
SEEN = {"type": "kv_namespace", "name": "SEEN", "namespace_id": "seen"}
DELAY_S = 2

# One message a batch. Every delivery is recorded as "<tag>:<attempt>" ->
# seconds since the message was sent; "mode" says what the handler decides.
CONSUMER = r'''
import json
import time
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        got = await self.env.SEEN.list()
        return Response.json({k.name: json.loads(await self.env.SEEN.get(k.name)) for k in got.keys})

    async def queue(self, batch, env, ctx):
        assert len(batch.messages) == 1, batch
        m = batch.messages[0]
        waited = time.time() - m.timestamp.timestamp()
        await env.SEEN.put(f"{m.body['tag']}:{m.attempts}", json.dumps(waited))
        mode = m.body.get("mode")
        if mode in ("ackAll", "ack_all"):
            getattr(batch, mode)()
            raise RuntimeError("raised after ackAll: the ack stands")
        if mode in ("retryAll", "retry_all") and m.attempts < 3:
            getattr(batch, mode)(delaySeconds=0)  # and return normally: retried all the same
'''
CONSUMERS = {"queue_consumers": [
    {"queue": "gaps", "max_batch_size": 1, "max_batch_timeout": 0, "max_retries": 5}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = start(tmp_path_factory.mktemp("storage-gaps"), CONFIG)
    deploy(server, "t", [*ALL, GAPS, BACKLOG])
    deploy(server, "free", [BACKLOG], tags=["plan:free"])
    server.deploy("consumer", CONSUMER, bindings=[SEEN], extra_metadata=CONSUMERS)
    yield server
    server.stop()


# -- KV expiration ------------------------------------------------------------------


def _age_kv_key(server, namespace_id: str, key: str, seconds: int) -> None:
    """Move ``key``'s stored expiration ``seconds`` earlier: the clock passing."""
    path = server.state_dir / "storage" / "kv" / Scope("default", namespace_id).key / "kv.sqlite3"
    conn = sqlite3.connect(path, timeout=30)
    try:
        with conn:
            changed = conn.execute("UPDATE kv SET expiration = expiration - ? WHERE key = ?",
                                   (seconds, key)).rowcount
    finally:
        conn.close()
    assert changed == 1


def test_kv_expired_key_is_gone_from_get_and_list(server) -> None:
    got = ok(server, "t", """
import time
await env.KV.put("exp/ttl", "short", expirationTtl=60)
await env.KV.put("exp/at", "absolute", expiration=int(time.time()) + 120)
await env.KV.put("exp/keep", "forever")
listed = await env.KV.list(prefix="exp/")
return {"get": [await env.KV.get("exp/ttl"), await env.KV.get("exp/at")],
        "listed": {k.name: k.get("expiration") for k in listed.keys}, "now": time.time()}""")
    assert got["get"] == ["short", "absolute"]
    listed, now = got["listed"], got["now"]
    assert sorted(listed) == ["exp/at", "exp/keep", "exp/ttl"] and listed["exp/keep"] is None
    assert 50 < listed["exp/ttl"] - now <= 61 and 110 < listed["exp/at"] - now <= 121

    _age_kv_key(server, "kv-1", "exp/ttl", 61)
    after = ok(server, "t", """
listed = await env.KV.list(prefix="exp/")
meta = await env.KV.getWithMetadata("exp/ttl")
return {"get": await env.KV.get("exp/ttl"), "meta": meta.value,
        "bulk": await env.KV.get(["exp/ttl", "exp/at", "exp/keep"]),
        "listed": [k.name for k in listed.keys]}""")
    assert after == {"get": None, "meta": None,
                     "bulk": {"exp/ttl": None, "exp/at": "absolute", "exp/keep": "forever"},
                     "listed": ["exp/at", "exp/keep"]}

    _age_kv_key(server, "kv-1", "exp/at", 121)
    assert ok(server, "t", """
listed = await env.KV.list(prefix="exp/")
return [await env.KV.get("exp/at"), [k.name for k in listed.keys]]""") == [None, ["exp/keep"]]
    # An expired key can be written again, and lives again.
    assert ok(server, "t", 'await env.KV.put("exp/ttl", "again")\nreturn await env.KV.get("exp/ttl")') \
        == "again"


# -- D1 result size -----------------------------------------------------------------


def test_d1_result_larger_than_the_limit_is_refused(server) -> None:
    ok(server, "t", """
await env.DB.exec("CREATE TABLE rows (s TEXT)")
for i in range(20):
    await env.DB.prepare("INSERT INTO rows VALUES (?)").bind("x" * 500).run()""")
    # 10 KB of values against a 4096-byte storage.d1_result_bytes.
    for call in ('await env.DB.prepare("SELECT s FROM rows").all()',
                 'await env.DB.prepare("SELECT s FROM rows").raw()',
                 'await env.DB.batch([env.DB.prepare("SELECT 1"), env.DB.prepare("SELECT s FROM rows")])'):
        error = fails(server, "t", call)
        assert error["js"] is True, error
        assert "D1_ERROR: the result is larger than 4096 bytes (storage.d1_result_bytes)" \
            in error["message"] and "SQLITE_TOOBIG" in error["message"], error
    # Rows of nothing cost the supervisor their lists all the same: they were
    # free under the limit (10 million '' rows, ~900 MB of its memory).
    error = fails(server, "t", """
return await env.DB.prepare("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100000) "
                            "SELECT '' FROM c").all()""")
    assert "the result is larger than 4096 bytes" in error["message"], error
    # Under the limit the same table reads fine, and the database is unharmed.
    got = ok(server, "t", """
small = await env.DB.prepare("SELECT s FROM rows LIMIT 5").all()
return [len(small.results), await env.DB.prepare("SELECT count(*) AS n FROM rows").first("n")]""")
    assert got == [5, 20]


# -- Queues -------------------------------------------------------------------------


def _send(server, *bodies: dict, delay: int | None = None) -> None:
    opts = "" if delay is None else f", delaySeconds={delay}"
    code = "\n".join(f"await env.Q.send({json.dumps(b)}{opts})" for b in bodies)
    ok(server, "t", code)


@pytest.mark.parametrize("spelling", ["ackAll", "ack_all"])
def test_queue_ack_all_acks_even_when_the_handler_raises(server, spelling) -> None:
    tag = f"ack-{spelling}"
    _send(server, {"tag": tag, "mode": spelling})
    _wait_for(server, lambda s: f"{tag}:1" in s)
    # A raise retries immediately (retry_delay 0) and the retried message keeps
    # its place ahead of later ones: once a later message is delivered, a retry
    # of this one would have been delivered first.
    _send(server, {"tag": f"{tag}-after"})
    seen = _wait_for(server, lambda s: f"{tag}-after:1" in s)
    assert sorted(k for k in seen if k.startswith(f"{tag}:")) == [f"{tag}:1"], seen


@pytest.mark.parametrize("spelling", ["retryAll", "retry_all"])
def test_queue_retry_all_retries_even_when_the_handler_returns(server, spelling) -> None:
    tag = f"retry-{spelling}"
    _send(server, {"tag": tag, "mode": spelling})
    seen = _wait_for(server, lambda s: f"{tag}:3" in s)
    _send(server, {"tag": f"{tag}-after"})
    seen = _wait_for(server, lambda s: f"{tag}-after:1" in s)
    # Retried twice by retryAll, then acked by returning: no fourth delivery.
    assert sorted(k for k in seen if k.startswith(f"{tag}:")) == [f"{tag}:1", f"{tag}:2", f"{tag}:3"]


def test_queue_delay_seconds_holds_a_message_until_due(server) -> None:
    _send(server, {"tag": "late"}, delay=DELAY_S)
    _send(server, {"tag": "late-batch-sent"})  # an undelayed message goes straight through
    ok(server, "t", f'await env.Q.sendBatch([{{"body": {{"tag": "late-batch"}}}}], delaySeconds={DELAY_S})')
    seen = _wait_for(server, lambda s: "late:1" in s and "late-batch:1" in s and "late-batch-sent:1" in s)
    # Seconds from the send to the delivery: never before it was due.
    assert seen["late:1"] >= DELAY_S - 0.01, seen
    assert seen["late-batch:1"] >= DELAY_S - 0.01, seen


# -- Queue backlog quota ------------------------------------------------------------


def test_queue_backlog_quota(server) -> None:
    got = ok(server, "free", """
out = []
await env.BACKLOG.send("1", contentType="text")
await env.BACKLOG.send("2", contentType="text")
for call in (lambda: env.BACKLOG.sendBatch([{"body": "3"}, {"body": "4"}]),
             lambda: env.BACKLOG.send("3", contentType="text"),
             lambda: env.BACKLOG.send("4", contentType="text")):
    try:
        await call()
        out.append(None)
    except JsException as e:
        out.append(e.message)
return out""")
    assert got[1] is None  # the third message fits
    for refused, used in ((got[0], 2), (got[2], 3)):
        assert refused is not None and "Queue send failed: storage quota exceeded" in refused, got
        assert f"({used} of 3 allowed" in refused and "queue_messages" in refused, got
    # The cap is the sender's: an uncapped script of the namespace may still send.
    ok(server, "t", 'await env.BACKLOG.send("5", contentType="text")')
    assert fails(server, "free", 'await env.BACKLOG.send("6", contentType="text")')["message"] \
        .startswith("Queue send failed: storage quota exceeded (4 of 3 allowed")


def test_a_durable_objects_failed_commit_leaves_no_transaction_open(tmp_path) -> None:
    """A commit SQLite fails (a full disk; here refused once by an
    authorizer, which fails the same statement) left the transaction open:
    every later write nested in it, read back as stored, and was lost at the
    next close. Now it is rolled back whole and the next write commits."""
    import sqlite3

    from supervisor.objects import storage as st

    path = str(tmp_path / "object.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    st.setup(conn)
    refuse = {"release": True}

    def authorize(action, *_):
        if action == sqlite3.SQLITE_SAVEPOINT and refuse["release"] and _[0] == "RELEASE":
            refuse["release"] = False
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    conn.set_authorizer(authorize)
    with pytest.raises(sqlite3.DatabaseError):
        st.put(conn, [("k", b"lost")])
    assert not conn.in_transaction
    st.put(conn, [("k", b"kept")])
    other = sqlite3.connect(path)
    assert other.execute("SELECT value FROM _cf_KV WHERE key = 'k'").fetchone() == (b"kept",)
    # A transaction()'s own commit, likewise.
    st.txn_begin(conn, 1)
    st.put(conn, [("t", b"in txn")])
    refuse["release"] = True
    with pytest.raises(Exception, match="nothing of it was written"):
        st.txn_end(conn, 1, True)
    assert not conn.in_transaction
