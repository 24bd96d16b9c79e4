"""Queues through real jailed children: send/sendBatch and their errors,
batches to the consumer's queue(batch, env, ctx), ack/retry, retries into a
dead-letter queue, and messages durable across a kill -9 of the supervisor."""

from __future__ import annotations

import os
import signal
import time

from tests import storage_helpers as h

CONSUMER = r'''
import json
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        got = await self.env.SEEN.list()
        return Response.json([k.name for k in got.keys])

    async def queue(self, batch, env, ctx):
        for m in batch.messages:
            body = m.body
            key = f"{batch.queue}:{json.dumps(body, sort_keys=True, default=str)}:{m.attempts}"
            await env.SEEN.put(key, str(len(batch.messages)))
            if isinstance(body, dict) and "slow" in body and m.attempts == 1:
                import asyncio
                await asyncio.sleep(1.5)  # long enough for a deploy to land meanwhile
                m.retry()
            elif isinstance(body, dict) and body.get("fail") == "retry":
                m.retry()
            elif isinstance(body, dict) and body.get("fail") == "raise":
                raise RuntimeError("consumer failed")
            else:
                m.ack()
'''

Q = {"type": "queue", "name": "Q", "queue_name": "jobs"}
SEEN = {"type": "kv_namespace", "name": "SEEN", "namespace_id": "seen"}
CONSUMERS = {"queue_consumers": [
    {"queue": "jobs", "max_batch_size": 3, "max_batch_timeout": 0.2, "max_retries": 2,
     "dead_letter_queue": "jobs-dlq"},
    {"queue": "jobs-dlq", "max_batch_size": 10, "max_batch_timeout": 0.1}]}


def _start(tmp_path):
    server = h.start(tmp_path)
    h.deploy(server, "producer", [Q])
    server.deploy("consumer", CONSUMER, bindings=[SEEN], extra_metadata=CONSUMERS)
    return server


def _seen(server) -> list[str]:
    response = server.request("/", host="consumer.localhost")
    assert response.status == 200, response.body
    return response.json()


def _wait_for(server, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    seen = _seen(server)
    while not predicate(seen) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the consumer's own record of deliveries
        seen = _seen(server)
    assert predicate(seen), (seen, server.log()[-3000:])
    return seen


def test_send_batch_ack_retry_and_dead_letter(tmp_path):
    server = _start(tmp_path)
    try:
        assert h.ok(server, "producer", """
await env.Q.send({"n": 1})
await env.Q.send("plain", contentType="text")
await env.Q.sendBatch([{"body": {"n": 2}}, {"body": [3], "contentType": "json"}])
await env.Q.send({"fail": "retry"})
await env.Q.send({"big": 2**70})  # structured clone carries a BigInt
return True
""") is True
        seen = _wait_for(server, lambda s: any(k.startswith("jobs-dlq:") for k in s))
        assert 'jobs:{"n": 1}:1' in seen and 'jobs:"plain":1' in seen
        assert 'jobs:{"n": 2}:1' in seen and "jobs:[3]:1" in seen
        assert f'jobs:{{"big": {2**70}}}:1' in seen
        retried = sorted(k for k in seen if k.startswith('jobs:{"fail": "retry"}'))
        assert [k.rsplit(":", 1)[1] for k in retried] == ["1", "2", "3"]  # max_retries 2
        assert 'jobs-dlq:{"fail": "retry"}:1' in seen
    finally:
        server.stop()


def test_a_raising_consumer_retries_the_batch(tmp_path):
    server = _start(tmp_path)
    try:
        h.ok(server, "producer", 'await env.Q.send({"fail": "raise"})\nreturn 1')
        seen = _wait_for(server, lambda s: any(k.startswith('jobs-dlq:{"fail": "raise"}') for k in s))
        attempts = sorted(k.rsplit(":", 1)[1] for k in seen if k.startswith('jobs:{"fail": "raise"}'))
        assert attempts == ["1", "2", "3"]
    finally:
        server.stop()


def test_send_errors(tmp_path):
    server = h.start(tmp_path)
    try:
        h.deploy(server, "producer", [Q])
        result = h.ok(server, "producer", """
out = []
for call in (lambda: env.Q.send("x" * 200000, contentType="text"),
             lambda: env.Q.send("x", contentType="nope"),
             lambda: env.Q.send({"a": 1}, delaySeconds=-1),
             lambda: env.Q.sendBatch([])):
    try:
        await call()
        out.append(None)
    except (JsException, TypeError) as e:
        out.append(str(e))
# What structured clone cannot copy is JavaScript's DataCloneError, as on Cloudflare.
for body in (object(), [1, lambda: 2]):
    for call in (lambda: env.Q.send(body), lambda: env.Q.sendBatch([{"body": body}])):
        try:
            await call()
            out.append(None)
        except JsException as e:
            out.append(f"{e.name}: {e}")
return out
""")
        assert "too large" in result[0]
        assert result[1] == "Unsupported queue message content type: nope"  # workerd's words
        assert "delaySeconds" in result[2]
        assert result[3] == "sendBatch() requires at least one message"
        refused = 'DataCloneError: Could not serialize object of type "{}". This type does not support serialization.'
        assert result[4:] == [refused.format("object")] * 2 + [refused.format("function")] * 2, result
    finally:
        server.stop()


def test_messages_survive_kill_9(tmp_path):
    server = h.start(tmp_path)
    try:
        h.deploy(server, "producer", [Q])
        h.ok(server, "producer", 'await env.Q.send({"n": "durable"})\nreturn 1')
        # No consumer yet: the message waits on disk. Kill -9 the supervisor.
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        server.start()
        server.deploy("consumer", CONSUMER, bindings=[SEEN], extra_metadata=CONSUMERS)
        _wait_for(server, lambda s: 'jobs:{"n": "durable"}:1' in s)
    finally:
        server.stop()


def test_a_second_consumer_of_a_queue_is_refused_at_upload(tmp_path):
    """A queue has one consumer, as on Cloudflare (consumer_exists, 11004): an
    upload naming another script's queue took it over without a word."""
    server = h.start(tmp_path)
    try:
        server.deploy("consumer", CONSUMER, bindings=[SEEN], extra_metadata=CONSUMERS)
        thief = server.deploy("athief", CONSUMER, bindings=[SEEN], check=False,
                              extra_metadata={"queue_consumers": [{"queue": "jobs"}]})
        assert thief.status == 409, thief.text
        error = thief.json()["errors"][0]
        assert error["code"] == 11004 and "'jobs' already has a consumer, script 'consumer'" in error["message"]
        # The owner uploads again as often as it likes, and still consumes.
        server.deploy("consumer", CONSUMER, bindings=[SEEN], extra_metadata=CONSUMERS)
        h.deploy(server, "producer", [Q])
        assert h.ok(server, "producer", 'await env.Q.send({"n": 7})\nreturn True') is True
        _wait_for(server, lambda s: 'jobs:{"n": 7}:1' in s)
    finally:
        server.stop()


def test_a_deploy_during_a_delivery_leaves_no_batch_leased(tmp_path):
    """Any deploy (here another script's, then the consumer's own with new
    settings) cancelled the delivery under way: its batch stayed leased, and
    was delivered again only after a restart. An unrelated deploy now leaves
    the delivery alone; one that changes the consumer settles the batch as
    failed, to be retried."""
    server = _start(tmp_path)
    try:
        for n, redeploy in ((1, lambda: h.deploy(server, "bystander", [Q])),
                            (2, lambda: server.deploy("consumer", CONSUMER, bindings=[SEEN], extra_metadata={
                                "queue_consumers": [{**CONSUMERS["queue_consumers"][0], "max_batch_size": 4},
                                                    CONSUMERS["queue_consumers"][1]]}))):
            h.ok(server, "producer", f'await env.Q.send({{"slow": {n}}})\nreturn 1')
            _wait_for(server, lambda s, n=n: f'jobs:{{"slow": {n}}}:1' in s)
            redeploy()  # while the consumer sleeps over the batch
            _wait_for(server, lambda s, n=n: f'jobs:{{"slow": {n}}}:2' in s)
    finally:
        server.stop()


def test_cloudflares_limits_in_its_units_and_a_consumer_that_dead_letters_to_itself(tmp_path):
    """Cloudflare's queue limits count 1 KB as 1000 bytes (128 KB a message):
    Corral took 131,072. A JSON body JSON cannot hold was a Python TypeError
    (SPEC 3: binding errors are JsExceptions). A consumer whose dead-letter
    queue is its own queue was stored, and each dead message came back for
    ever (~230 invocations a second from one upload)."""
    server = h.start(tmp_path)
    try:
        h.deploy(server, "producer", [Q])
        result = h.ok(server, "producer", """
async def refusal(send):
    try:
        await send
    except JsException as e:
        return f"{e.name}: {e}"
return [await refusal(env.Q.send("x" * 128000, contentType="text")),
        await refusal(env.Q.send("x" * 128001, contentType="text")),
        await refusal(env.Q.send(b"xx", contentType="json"))]
""")
        assert result[0] is None and "too large" in result[1], result
        assert result[2].startswith("TypeError: the message body is not JSON"), result
        refused = server.deploy("looper", CONSUMER, bindings=[SEEN], check=False, extra_metadata={
            "queue_consumers": [{"queue": "jobs", "max_retries": 0, "dead_letter_queue": "jobs"}]})
        assert refused.status == 400 and "is the queue itself" in refused.text, refused.text
    finally:
        server.stop()
