"""Queues and their consumers made through Cloudflare's API with its official
SDK (``client.queues``, ``client.queues.consumers``), as ``wrangler queues
create`` and ``wrangler deploy`` of a consumer make them, against a real
`corral serve`: a consumer added through the API consumes what a producer
sends, keeps across an upload that says nothing of it, and a queue in use is
not deleted; messages pushed through the API (``client.queues.messages``)
arrive as sent, an HTTP pull consumer pulls and acknowledges them by lease,
and a purge drops what waits."""

from __future__ import annotations

import io
import re
import time

import cloudflare
import pytest

from tests.harness import sdk_fixtures

A = "local"
PRODUCER = '''from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        await self.env.JOBS.send({"job": request.url.rsplit("/", 1)[1]})
        return Response("sent")
'''
CONSUMER = '''from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        got = await self.env.SEEN.list()
        return Response(",".join(sorted(k.name for k in got.keys)))

    async def queue(self, batch, env, ctx):
        for message in batch.messages:
            await env.SEEN.put(f"{batch.queue}:{message.body['job']}", "1")
            message.ack()
'''
SEEN = {"type": "kv_namespace", "name": "SEEN", "namespace_id": "seen"}

server, cf = sdk_fixtures("queues")


def seen(server) -> str:
    resp = server.request("/", host="consumer.test")
    assert resp.status == 200, resp
    return resp.text


def wait_for_seen(server, wanted: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while wanted not in seen(server) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the consumer's own record of deliveries
    assert wanted in seen(server), server.log()[-3000:]


def upload_consumer(cf) -> None:
    """The consumer's code through the SDK, which says nothing of queue consumers."""
    cf.workers.scripts.update("consumer", account_id=A, metadata={"main_module": "worker.py", "bindings": [SEEN]},
                              files=[("worker.py", io.BytesIO(CONSUMER.encode()), "text/x-python")])


def test_a_consumer_added_through_the_api_consumes_and_survives_uploads(server, cf):
    made = cf.queues.create(account_id=A, queue_name="jobs")
    assert re.fullmatch(r"[0-9a-f]{32}", made.queue_id) and made.queue_name == "jobs"
    assert [q.queue_name for q in cf.queues.list(account_id=A)] == ["jobs"]
    with pytest.raises(cloudflare.ConflictError, match="already exists"):
        cf.queues.create(account_id=A, queue_name="jobs")

    server.deploy("producer", PRODUCER, namespace=None,
                  bindings=[{"type": "queue", "name": "JOBS", "queue_name": "jobs"}])
    server.route("producer.test/*", "producer")
    upload_consumer(cf)
    server.route("consumer.test/*", "consumer")
    # wrangler deploy: the queue by name, then the script as its consumer.
    found = server.admin("GET", "/accounts/local/queues?name=jobs").json()["result"]
    assert [q["queue_id"] for q in found] == [made.queue_id]
    assert found[0]["producers"] == [{"type": "worker", "script": "producer"}] and found[0]["consumers"] == []
    consumer = cf.queues.consumers.create(made.queue_id, account_id=A, type="worker", script_name="consumer",
                                          settings={"batch_size": 1, "max_wait_time_ms": 100})
    assert consumer.script == "consumer" and consumer.settings.batch_size == 1

    assert server.request("/a1", host="producer.test").text == "sent"
    wait_for_seen(server, "jobs:a1")

    # New code through the API says nothing of consumers: the consumer stays.
    upload_consumer(cf)
    assert [c.script for c in cf.queues.consumers.list(made.queue_id, account_id=A)] == ["consumer"]
    assert server.request("/a2", host="producer.test").text == "sent"
    wait_for_seen(server, "jobs:a2")

    changed = cf.queues.consumers.update(consumer.consumer_id, account_id=A, queue_id=made.queue_id,
                                         type="worker", settings={"batch_size": 5, "max_retries": 1})
    assert (changed.settings.batch_size, changed.settings.max_retries) == (5, 1)
    with pytest.raises(cloudflare.ConflictError, match="used by"):
        cf.queues.delete(made.queue_id, account_id=A)
    cf.queues.consumers.delete(consumer.consumer_id, account_id=A, queue_id=made.queue_id)
    assert list(cf.queues.consumers.list(made.queue_id, account_id=A)) == []
    assert server.admin("DELETE", "/accounts/local/workers/scripts/producer").status == 200
    cf.queues.delete(made.queue_id, account_id=A)
    with pytest.raises(cloudflare.NotFoundError):
        cf.queues.get(made.queue_id, account_id=A)


@pytest.mark.parametrize("path, body, status, words", [
    ("/accounts/local/queues", {"queue_name": "no spaces"}, 400, "letters, digits"),
    ("/accounts/local/queues", {"name": "x"}, 400, "to make a queue"),
    ("/accounts/local/queues/spare/consumers", {"type": "worker", "script_name": "ghost"}, 404,
     "script 'ghost' not found"),
    ("/accounts/local/queues/spare/consumers", {"type": "email"}, 400, "script"),
    ("/accounts/local/queues/spare/consumers",
     {"type": "worker", "script_name": "consumer", "settings": {"batch_size": 1000}}, 400, "consumer settings"),
])
def test_bad_queue_calls_are_refused_with_a_reason(server, cf, path, body, status, words):
    if not server.admin("GET", "/accounts/local/queues?name=spare").json()["result"]:
        cf.queues.create(account_id=A, queue_name="spare")
        upload_consumer(cf)
    resp = server.admin("POST", path, body)
    assert resp.status == status and words in resp.json()["errors"][0]["message"], resp.text
    assert server.admin("GET", "/accounts/local/queues/spare/consumers").json()["result"] == []


RECORDER = '''import json
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        got = await self.env.SEEN.list()
        return Response("|".join(sorted(k.name for k in got.keys)))

    async def queue(self, batch, env, ctx):
        for message in batch.messages:
            body = message.body
            shown = body.hex() if isinstance(body, (bytes, bytearray)) else json.dumps(body)
            await env.SEEN.put(f"{type(body).__name__}={shown}", "1")
            message.ack()
'''


def test_messages_pushed_through_the_api_reach_the_consumer_as_sent(server, cf):
    # A platform's back end feeds a queue (client.queues.messages.push / bulk_push).
    feed = cf.queues.create(account_id=A, queue_name="feed")
    server.deploy("recorder", RECORDER, namespace=None, bindings=[{**SEEN, "namespace_id": "recorded"}])
    server.route("recorder.test/*", "recorder")
    cf.queues.consumers.create(feed.queue_id, account_id=A, type="worker", script_name="recorder",
                               settings={"batch_size": 10, "max_wait_time_ms": 50})
    cf.queues.messages.push(feed.queue_id, account_id=A, body={"job": 1}, content_type="json")
    cf.queues.messages.bulk_push(feed.queue_id, account_id=A, messages=[
        {"body": "plain words", "content_type": "text"},
        {"body": "AAEC/w==", "content_type": "bytes"}])

    def recorded() -> str:
        return server.request("/", host="recorder.test").text

    deadline = time.monotonic() + 30
    while recorded().count("=") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the consumer's own record of deliveries
    # (A JSON object arrives as the SDK's JsDict, as from a producer's send.)
    assert recorded() == '|'.join(sorted(['JsDict={"job": 1}', 'str="plain words"', "bytes=000102ff"]))

    # Delayed, then purged before it is due: it never arrives.
    cf.queues.messages.push(feed.queue_id, account_id=A, body="later", content_type="text", delay_seconds=600)
    purged = server.admin("POST", f"/accounts/local/queues/{feed.queue_id}/purge",
                          {"delete_messages_permanently": True}).json()["result"]
    assert purged["messages_purged"] == 1
    assert cf.queues.purge.status(feed.queue_id, account_id=A).completed == "true"
    for body, words in (({"body": "x", "content_type": "v8"}, "structured clone"),
                        ({"body": 5, "content_type": "text"}, "needs a string body"),
                        ({"body": "not base64!", "content_type": "bytes"}, "base64"),
                        ({"content_type": "json"}, "needs a body")):
        resp = server.admin("POST", f"/accounts/local/queues/{feed.queue_id}/messages", body)
        assert resp.status == 400 and words in resp.text, resp
    refused = server.admin("POST", f"/accounts/local/queues/{feed.queue_id}/purge", {})
    assert refused.status == 400 and "delete_messages_permanently" in refused.text


def test_an_http_pull_consumer_pulls_acks_and_retries_by_lease(server, cf):
    drain = cf.queues.create(account_id=A, queue_name="drain")
    puller = cf.queues.consumers.create(drain.queue_id, account_id=A, type="http_pull",
                                        settings={"visibility_timeout_ms": 60_000})
    assert [(c.type, c.consumer_id) for c in cf.queues.consumers.list(drain.queue_id, account_id=A)] == [
        ("http_pull", puller.consumer_id)]
    with pytest.raises(cloudflare.ConflictError, match="already has a consumer"):  # one consumer a queue
        cf.queues.consumers.create(drain.queue_id, account_id=A, type="worker", script_name="consumer")
    cf.queues.messages.bulk_push(drain.queue_id, account_id=A, messages=[
        {"body": f"m{i}", "content_type": "text"} for i in range(3)])
    first = cf.queues.messages.pull(drain.queue_id, account_id=A, batch_size=2, visibility_timeout_ms=60_000)
    assert [m.body for m in first.messages] == ["m0", "m1"] and first.message_backlog_count == 1
    assert [m.attempts for m in first.messages] == [1, 1]
    m0, m1 = first.messages
    settled = cf.queues.messages.ack(drain.queue_id, account_id=A, acks=[{"lease_id": m0.lease_id}],
                                     retries=[{"lease_id": m1.lease_id, "delay_seconds": 0}])
    assert (settled.ack_count, settled.retry_count, settled.warnings) == (1, 1, [])
    # m1 is back at once (its retry's delay is 0); m2 was never pulled.
    second = cf.queues.messages.pull(drain.queue_id, account_id=A, batch_size=10, visibility_timeout_ms=60_000)
    assert sorted((m.body, m.attempts) for m in second.messages) == [("m1", 2), ("m2", 1)]
    # The first pull's lease of m1 is an old one now: a late ack is still taken,
    # as Cloudflare documents; a retry by it is stale and changes nothing.
    late_retry = cf.queues.messages.ack(drain.queue_id, account_id=A,
                                        retries=[{"lease_id": m1.lease_id, "delay_seconds": 0}])
    assert late_retry.retry_count == 0 and "expired" in late_retry.warnings[0]
    late = cf.queues.messages.ack(drain.queue_id, account_id=A, acks=[{"lease_id": m1.lease_id}])
    assert (late.ack_count, late.warnings) == (1, []), late
    done = cf.queues.messages.ack(drain.queue_id, account_id=A,
                                  acks=[{"lease_id": m.lease_id} for m in second.messages])
    assert done.ack_count == 1 and "expired" in done.warnings[0]  # m1's newer lease: gone already
    assert cf.queues.messages.pull(drain.queue_id, account_id=A, batch_size=10).messages == []
    cf.queues.consumers.delete(puller.consumer_id, account_id=A, queue_id=drain.queue_id)
    assert list(cf.queues.consumers.list(drain.queue_id, account_id=A)) == []
    # A queue a worker consumes is not pulled from as well.
    guarded = cf.queues.create(account_id=A, queue_name="guarded")
    server.deploy("guard", RECORDER, namespace=None, bindings=[{**SEEN, "namespace_id": "guarded"}])
    cf.queues.consumers.create(guarded.queue_id, account_id=A, type="worker", script_name="guard")
    with pytest.raises(cloudflare.ConflictError, match="consumed by worker 'guard'"):
        cf.queues.messages.pull(guarded.queue_id, account_id=A, batch_size=1)
    bad = server.admin("POST", f"/accounts/local/queues/{drain.queue_id}/messages/ack", {"acks": [{"lease_id": "x"}]})
    assert bad.status == 400 and "is not one a pull gave" in bad.text


def test_a_configs_http_pull_consumer_is_the_queues_not_the_scripts(server, cf, tmp_path):
    """wrangler's ``type = "http_pull"`` consumer: the queue's messages are
    pulled over HTTP. It became a push consumer of the deployed script,
    whose queue() handler got (and dropped) them."""
    import os
    import subprocess
    import sys

    from tests.harness import REPO

    pulled = cf.queues.create(account_id=A, queue_name="pulled")
    project = tmp_path / "pullproject"
    project.mkdir()
    (project / "worker.py").write_text(PRODUCER)
    (project / "wrangler.toml").write_text(
        'main = "worker.py"\n[[queues.producers]]\nbinding = "Q"\nqueue = "pulled"\n'
        '[[queues.consumers]]\nqueue = "pulled"\ntype = "http_pull"\nvisibility_timeout_ms = 5000\nmax_retries = 2\n')
    for _ in range(2):  # a second deploy updates the consumer it made
        done = subprocess.run([sys.executable, "-m", "supervisor", "deploy", "--socket", server.socket_path,
                               "pullproducer", str(project)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr
    consumers = list(cf.queues.consumers.list(pulled.queue_id, account_id=A))
    assert [(c.type, c.settings.visibility_timeout_ms, c.settings.max_retries) for c in consumers] == [
        ("http_pull", 5000, 2)]
    script = server.admin("GET", "/accounts/local/workers/scripts/pullproducer/settings")
    assert script.status == 200
    assert cf.queues.messages.pull(pulled.queue_id, account_id=A, batch_size=1).messages == []
