"""Durable Objects' and queues' less common documented edges, as Cloudflare
(workerd's actor-state.c++ and queue.c++) answers them: the errors and their
words for a list limit that is not positive, put() without a value, an alarm
at or before the epoch, deleteAll() inside a transaction, hibernatable
WebSocket tags and event timeout, a queue message's content type and an empty
sendBatch(); and the return shapes that already matched.

Each test runs a few lines of tenant code in a real jailed child (inside a
Durable Object where it needs ``ctx``) and asserts what it saw.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests import storage_helpers as h
from tests.harness import Corral

#: The eval tenant, plus a Durable Object that runs the test's code as the
#: body of ``async def _run(self, ctx, storage)`` and answers what it returned
#: or the error it raised (class, JavaScript name, message).
TENANT = h.EVAL_TENANT + r'''
import datetime
from workers import DurableObject


class Thing(DurableObject):
    async def probe(self, code):
        scope = {"JsException": JsException, "datetime": datetime}
        source = "async def _run(self, ctx, storage):\n" + "\n".join("    " + l for l in code.splitlines())
        exec(compile(source, "<probe>", "exec"), scope)
        try:
            return {"ok": await scope["_run"](self, self.ctx, self.ctx.storage)}
        except Exception as e:
            return {"error": type(e).__name__, "name": getattr(e, "name", None),
                    "message": getattr(e, "message", str(e)), "js": isinstance(e, JsException)}
'''

CONSUMER = r'''
import datetime
import json
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        got = await self.env.SEEN.list()
        return Response.json({k.name: json.loads(await self.env.SEEN.get(k.name)) for k in got.keys})

    async def queue(self, batch, env, ctx):
        try:
            batch.retryAll(delaySeconds=50000)
            refused = None
        except Exception as e:
            refused = str(e)
        for m in batch.messages:
            seen = {"queue": batch.queue, "body": m.body, "attempts": m.attempts,
                    "id": type(m.id).__name__, "timestamp": type(m.timestamp).__name__,
                    # naive, as the SDK's Date: it subtracts from datetime.now()
                    "age_ok": 0 <= (datetime.datetime.now() - m.timestamp).total_seconds() < 600,
                    "refused": refused}
            await env.SEEN.put(f"{m.body}:{m.attempts}", json.dumps(seen))
            if m.attempts == 1:
                m.retry(delaySeconds=0)  # the Python keyword spelling of {delaySeconds: 0}
            else:
                m.ack()
'''

OBJ = {"type": "durable_object_namespace", "name": "OBJ", "class_name": "Thing"}
Q = {"type": "queue", "name": "Q", "queue_name": "semantics-jobs"}
SEEN = {"type": "kv_namespace", "name": "SEEN", "namespace_id": "semantics-seen"}
CONSUMERS = {"queue_consumers": [
    {"queue": "semantics-jobs", "max_batch_size": 10, "max_batch_timeout": 0.1, "max_retries": 3}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Corral:
    srv = h.start(tmp_path_factory.mktemp("objsemantics"))
    srv.deploy("app", TENANT, bindings=[OBJ, Q])
    srv.deploy("consumer", CONSUMER, bindings=[SEEN], extra_metadata=CONSUMERS)
    yield srv
    srv.stop()


def probe(server: Corral, name: str, code: str) -> dict[str, Any]:
    """Run ``code`` inside the object ``name`` and answer ``{"ok": ...}`` or its error."""
    return h.ok(server, "app", f"return await env.OBJ.getByName({name!r}).probe({code!r})")


def refusal(result: dict[str, Any]) -> tuple[str, str, bool]:
    assert "error" in result, result
    return result["name"], result["message"], result["js"]


# -- Durable Object storage -------------------------------------------------------------

def test_list_limit_must_be_positive(server: Corral) -> None:
    """workerd: ``JSG_REQUIRE(l > 0, TypeError, "List limit must be positive.")``.
    Corral answered limit=0 with the supervisor's range error in other words."""
    for form in ("await storage.list(limit=0)", 'await storage.list({"limit": -1})'):
        assert refusal(probe(server, "limit", form)) == (
            "TypeError", "List limit must be positive.", True), form


def test_put_without_a_value_is_refused(server: Corral) -> None:
    """workerd: put(key) with an undefined value is ``TypeError: put() called
    with undefined value.``; Corral stored null under the key."""
    assert refusal(probe(server, "put", 'await storage.put("k")')) == (
        "TypeError", "put() called with undefined value.", True)
    assert probe(server, "put", 'return await storage.get("k")') == {"ok": None}
    # The entries form takes no value, and still works.
    assert probe(server, "put", 'await storage.put({"a": 1, "b": 2})\n'
                                'return await storage.get(["a", "b"])') == {"ok": {"a": 1, "b": 2}}


def test_set_alarm_at_or_before_the_epoch_is_refused(server: Corral) -> None:
    """workerd: ``setAlarm() cannot be called with an alarm time <= 0`` (TypeError);
    Corral armed an alarm at 0 or in 1969, which fired at once."""
    for when in ("0", "-5", "datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)"):
        assert refusal(probe(server, "epoch", f"await storage.setAlarm({when})")) == (
            "TypeError", "setAlarm() cannot be called with an alarm time <= 0", True), when
    assert probe(server, "epoch", "return await storage.getAlarm()") == {"ok": None}


def test_delete_all_inside_a_transaction_is_refused(server: Corral) -> None:
    """workerd's DurableObjectTransaction::deleteAll: ``Error: Cannot call
    deleteAll() within a transaction``; Corral deleted everything, past the
    transaction's rollback."""
    result = probe(server, "txn", '''
await storage.put("kept", 1)
async def body(txn):
    await txn.put("inner", 2)
    await txn.deleteAll()
try:
    await storage.transaction(body)
    refused = None
except JsException as e:
    refused = [e.name, e.message]
return [refused, await storage.get("kept"), await storage.get("inner")]
''')
    assert result == {"ok": [["Error", "Cannot call deleteAll() within a transaction"], 1, None]}


def test_storage_shapes_that_match(server: Corral) -> None:
    """Already as documented: delete() of one key is a bool, of many a count;
    get() of many leaves absent keys out; list()'s startAfter/end/reverse/limit;
    a cursor's one() errors and raw() rows; ids from newUniqueId/idFromString have no name."""
    result = probe(server, "shapes", '''
await storage.put({"a": 1, "b": 2, "c": 3, "d": 4})
got = await storage.get(["a", "zz"])
listed = list((await storage.list(startAfter="a", end="d")).keys())
backwards = list((await storage.list(reverse=True, limit=2)).keys())
one = await storage.delete("a")
none = await storage.delete("a")
many = await storage.delete(["b", "c", "zz"])
storage.sql.exec("CREATE TABLE t (x INTEGER, y TEXT)")
storage.sql.exec("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
errors = []
for q in ("SELECT * FROM t", "SELECT * FROM t WHERE x > 5"):
    try:
        storage.sql.exec(q).one()
    except JsException as e:
        errors.append(e.message)
cursor = storage.sql.exec("SELECT x, y FROM t ORDER BY x")
raw = [list(r) for r in cursor.raw()]
ns = self.env.OBJ
u = ns.newUniqueId()
return [dict(got), listed, backwards, one, none, many, errors, raw, list(cursor.columnNames),
        u.name, ns.idFromString(str(u)).name, ns.idFromString(str(u)).equals(u)]
''')
    assert result == {"ok": [
        {"a": 1}, ["b", "c"], ["d", "c"], True, False, 2,
        ["Expected exactly one result from SQL query, but got multiple results.",
         "Expected exactly one result from SQL query, but got no results."],
        [[1, "one"], [2, "two"]], ["x", "y"], None, None, True]}


# -- The WebSocket hibernation API ------------------------------------------------------

def test_accept_websocket_tags(server: Corral) -> None:
    """workerd's acceptWebSocket: duplicate tags are ignored; more than 10
    distinct is ``Error: a Hibernatable WebSocket cannot have more than 10
    tags``; a longer tag ``Error: "…" is longer than the max tag length (256
    characters).``; getTags() of a socket not accepted is ``Error: you must call
    'acceptWebSocket()' before…``. Corral kept duplicates (so 10 tags with one
    twice failed) and raised TypeErrors in its own words."""
    result = probe(server, "tags", '''
from js import WebSocketPair
out = []
for tags in ([f"t{i}" for i in range(11)], ["x" * 257]):
    client, server = WebSocketPair.new().object_values()
    try:
        ctx.acceptWebSocket(server, tags)
        out.append(None)
    except JsException as e:
        out.append([e.name, e.message])
client, server = WebSocketPair.new().object_values()
ctx.acceptWebSocket(server, ["a", "b", "a"] + [f"t{i}" for i in range(8)] + ["b"])
out.append(sorted(ctx.getTags(server)))
out.append(len(ctx.getWebSockets("a")))
client, server = WebSocketPair.new().object_values()
try:
    ctx.getTags(server)
except JsException as e:
    out.append([e.name, e.message])
return out
''')
    assert result == {"ok": [
        ["Error", "a Hibernatable WebSocket cannot have more than 10 tags"],
        ["Error", '"' + "x" * 257 + '" is longer than the max tag length (256 characters).'],
        sorted(["a", "b"] + [f"t{i}" for i in range(8)]), 1,
        ["Error", "you must call 'acceptWebSocket()' before attempting to access the tags of a WebSocket."]]}


def test_hibernatable_websocket_event_timeout(server: Corral) -> None:
    """ctx.setHibernatableWebSocketEventTimeout / getHibernatableWebSocketEventTimeout
    (state docs; workerd: 0 or none unsets it, at most 604800000 ms): Corral had neither."""
    result = probe(server, "timeout", '''
out = [ctx.getHibernatableWebSocketEventTimeout()]
ctx.setHibernatableWebSocketEventTimeout(5000)
out.append(ctx.getHibernatableWebSocketEventTimeout())
try:
    ctx.setHibernatableWebSocketEventTimeout(604800 * 1000 + 1)
except JsException as e:
    out.append([e.name, e.message])
out.append(ctx.getHibernatableWebSocketEventTimeout())
ctx.setHibernatableWebSocketEventTimeout(0)
out.append(ctx.getHibernatableWebSocketEventTimeout())
ctx.setHibernatableWebSocketEventTimeout(10)
ctx.setHibernatableWebSocketEventTimeout()
out.append(ctx.getHibernatableWebSocketEventTimeout())
return out
''')
    assert result == {"ok": [None, 5000, ["Error", "Event timeout should not exceed 604800000 ms."],
                             5000, None, None]}


def test_attachment_and_auto_response_limits(server: Corral) -> None:
    """workerd: a WebSocket attachment may take 16 KiB serialised (MAX_ATTACHMENT_SIZE),
    past it ``Error: A WebSocket 'attachment' cannot be larger than 16384 bytes.…``;
    setWebSocketAutoResponse refuses a side past 2048 bytes with a RangeError
    (the pair itself is built). Corral refused attachments past 2048 bytes and
    the pair at construction, with TypeErrors in its own words."""
    result = probe(server, "limits", '''
from js import WebSocketPair, WebSocketRequestResponsePair
client, server = WebSocketPair.new().object_values()
server.serializeAttachment({"big": "x" * 10000})
out = [len(server.deserializeAttachment()["big"])]
try:
    server.serializeAttachment("x" * 17000)
except JsException as e:
    out.append([e.name, e.message])
pair = WebSocketRequestResponsePair.new("ping", "y" * 3000)
try:
    ctx.setWebSocketAutoResponse(pair)
except JsException as e:
    out.append([e.name, e.message])
out.append(ctx.getWebSocketAutoResponse())
ctx.setWebSocketAutoResponse(WebSocketRequestResponsePair.new("ping", "pong"))
out.append(ctx.getWebSocketAutoResponse().response)
return out
''')
    assert result == {"ok": [
        10000,
        ["Error", "A WebSocket 'attachment' cannot be larger than 16384 bytes.'attachment' was 17003 bytes."],
        ["RangeError", "Response cannot be larger than 2048 bytes. A response of size 3000 was provided."],
        None, "pong"]}


# -- Queues -----------------------------------------------------------------------------

def test_queue_send_refusals(server: Corral) -> None:
    """workerd's queue.c++: an unknown contentType is ``TypeError: Unsupported
    queue message content type: …``; "text" and "bytes" name the JavaScript
    type they got; sendBatch([]) is ``TypeError: sendBatch() requires at least
    one message``. Corral raised Python TypeErrors in its own words."""
    result = h.ok(server, "app", '''
out = []
for call in (lambda: env.Q.send("x", contentType="yaml"),
             lambda: env.Q.send(5, contentType="text"),
             lambda: env.Q.send({"a": 1}, contentType="text"),
             lambda: env.Q.send("s", contentType="bytes"),
             lambda: env.Q.sendBatch([{"body": 1.5, "contentType": "text"}]),
             lambda: env.Q.sendBatch([])):
    try:
        await call()
        out.append(None)
    except JsException as e:
        out.append([e.name, e.message])
return out
''')
    assert result == [
        ["TypeError", "Unsupported queue message content type: yaml"],
        ["TypeError", 'Content Type "text" requires a value of type string, but received: number'],
        ["TypeError", 'Content Type "text" requires a value of type string, but received: object'],
        ["TypeError", 'Content Type "bytes" requires a value of type ArrayBufferView, but received: string'],
        ["TypeError", 'Content Type "text" requires a value of type string, but received: number'],
        ["TypeError", "sendBatch() requires at least one message"]]


def _seen(server: Corral) -> dict[str, Any]:
    response = server.request("/", host="consumer.localhost")
    assert response.status == 200, response.body
    return response.json()


def test_queue_consumer_shapes(server: Corral) -> None:
    """Already as documented: send() and sendBatch() answer None; a message's
    id is a str, its timestamp a datetime, attempts counts from 1;
    retry(delaySeconds=0) redelivers it; retryAll's delaySeconds past 12 hours
    is refused."""
    sent = h.ok(server, "app", '''
return [await env.Q.send("one", contentType="text"),
        await env.Q.sendBatch([{"body": "two"}, {"body": "three", "contentType": "json"}],
                              delaySeconds=0)]
''')
    assert sent == [None, None]
    want = {f"{b}:{n}" for b in ("one", "two", "three") for n in (1, 2)}
    deadline = time.monotonic() + 30
    seen = _seen(server)
    while not want <= set(seen) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling the consumer's record: deliveries have no event to wait on here
        seen = _seen(server)
    assert want <= set(seen), json.dumps(seen)
    for key in want:
        record = seen[key]
        assert record["queue"] == "semantics-jobs"
        assert (record["id"], record["timestamp"], record["age_ok"]) == ("str", "datetime", True), record
        assert record["attempts"] == int(key.rsplit(":", 1)[1])
        assert "delaySeconds" in record["refused"]
