"""What a sweep of Cloudflare's Python SDK over Corral's admin API found
missing or misshapen, each call made as a platform makes it, with the real
SDK against a real `corral serve`: bulk secrets, an R2 bucket's object
listing and storage class, D1 imports (the SDK's and wrangler's, over the
TCP listener too), a queue's metrics, peek and purge by ref, queue updates,
the fields of versions and namespaces the SDK's models document, and a
clear, unretried refusal for the products Corral does not have."""

from __future__ import annotations

import hashlib
import io

import cloudflare
import httpx
import pytest
from cloudflare import Cloudflare
from cloudflare.types.workers.scripts.version_list_response import VersionListResponse

from tests.harness import refused, sdk_fixtures, with_tcp_admin

A = "local"
NS = "sweep"
CODE = b'''from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(f"a={getattr(self.env, 'A', '-')} b={getattr(self.env, 'B', '-')}")
'''

server, cf = sdk_fixtures("sdk-sweep")


def files():
    return [("worker.py", io.BytesIO(CODE), "text/x-python")]


@pytest.fixture(scope="module")
def platform_script(cf):
    cf.workers.scripts.update("swept", account_id=A, metadata={"main_module": "worker.py"}, files=files())
    return "swept"


# -- secrets-bulk ----------------------------------------------------------------


def test_secrets_bulk_update_sets_and_deletes_in_one_version(cf, platform_script):
    secrets = cf.workers.scripts.secrets
    secrets.update(platform_script, account_id=A, name="OLD", text="x", type="secret_text")
    before = len(cf.workers.scripts.versions.list(platform_script, account_id=A).result.items)
    result = secrets.bulk_update(platform_script, account_id=A, secrets={
        "A": {"name": "A", "text": "one", "type": "secret_text"},
        "B": {"name": "B", "text": "two", "type": "secret_text"},
        "OLD": None}, version_tags={"workers/message": "rotate"})
    assert sorted(result) == ["A", "B"] and result["A"].type == "secret_text"
    assert sorted(s.name for s in secrets.list(platform_script, account_id=A)) == ["A", "B"]
    versions = cf.workers.scripts.versions.list(platform_script, account_id=A).result.items
    assert len(versions) == before + 1, "one version for the whole patch"
    assert versions[0].annotations["workers/message"] == "rotate"
    assert "one" not in str(result)


def test_secrets_bulk_update_in_a_dispatch_namespace(cf):
    cf.workers_for_platforms.dispatch.namespaces.create(account_id=A, name=NS)
    scripts = cf.workers_for_platforms.dispatch.namespaces.scripts
    scripts.update("tenant", account_id=A, dispatch_namespace=NS, metadata={"main_module": "worker.py"},
                   files=files())
    result = scripts.secrets.bulk_update("tenant", account_id=A, dispatch_namespace=NS,
                                         secrets={"A": {"name": "A", "text": "s", "type": "secret_text"}})
    assert list(result) == ["A"]
    assert [s.name for s in scripts.secrets.list("tenant", account_id=A, dispatch_namespace=NS)] == ["A"]


def test_secrets_bulk_update_refuses_a_bad_patch_whole(cf, platform_script):
    secrets = cf.workers.scripts.secrets
    kept = sorted(s.name for s in secrets.list(platform_script, account_id=A))
    with pytest.raises(cloudflare.BadRequestError, match="type 'secret_key' is not supported"):
        secrets.bulk_update(platform_script, account_id=A, secrets={
            "C": {"name": "C", "text": "c", "type": "secret_text"},
            "K": {"name": "K", "type": "secret_key", "format": "raw", "algorithm": {}, "usages": []}})
    with pytest.raises(cloudflare.BadRequestError, match="an entry's name is its key"):
        secrets.bulk_update(platform_script, account_id=A, secrets={"C": {"name": "D", "text": "c",
                                                                          "type": "secret_text"}})
    assert sorted(s.name for s in secrets.list(platform_script, account_id=A)) == kept
    with pytest.raises(cloudflare.NotFoundError):
        secrets.bulk_update("no-such-script", account_id=A, secrets={})


# -- R2 ------------------------------------------------------------------------------


def test_r2_objects_are_listed_by_prefix_delimiter_and_page(cf):
    cf.r2.buckets.create(account_id=A, name="listed")
    objects = cf.r2.buckets.objects
    for key in ("a/1.txt", "a/2.txt", "b/3.txt", "top.txt"):
        objects.upload(key, key.encode(), account_id=A, bucket_name="listed")
    every = objects.list("listed", account_id=A, per_page=2)
    assert [o.key for o in every] == ["a/1.txt", "a/2.txt", "b/3.txt", "top.txt"], "pages followed by cursor"
    first = every.result[0]
    assert first.size == 7 and first.etag == hashlib.md5(b"a/1.txt").hexdigest()
    assert first.storage_class == "Standard" and first.last_modified is not None
    assert [o.key for o in objects.list("listed", account_id=A, prefix="a/")] == ["a/1.txt", "a/2.txt"]
    top = objects.list("listed", account_id=A, delimiter="/")
    assert [o.key for o in top] == ["top.txt"]
    assert top.result_info.model_extra["delimited"] == ["a/", "b/"]
    assert objects.delete("top.txt", account_id=A, bucket_name="listed").key == "top.txt"
    with pytest.raises(cloudflare.NotFoundError):
        objects.list("no-such-bucket", account_id=A)


def test_r2_bucket_storage_class_edit(cf):
    cf.r2.buckets.create(account_id=A, name="classed")
    assert cf.r2.buckets.edit("classed", account_id=A, storage_class="Standard").name == "classed"
    with pytest.raises(cloudflare.APIStatusError, match="storage class 'InfrequentAccess' is not supported") as exc:
        cf.r2.buckets.edit("classed", account_id=A, storage_class="InfrequentAccess")
    assert exc.value.status_code == 501


# -- D1 import ------------------------------------------------------------------------

SQL = b"CREATE TABLE t (a INTEGER, b TEXT);\nINSERT INTO t VALUES (1, 'x;y');\nINSERT INTO t VALUES (2, 'z');\n"


def _import(client, database, sql, upload):
    """The import as wrangler makes it: init, PUT the file, ingest, poll."""
    etag = hashlib.md5(sql).hexdigest()
    init = client.d1.database.import_(database, account_id=A, action="init", etag=etag)
    put = upload(init.upload_url, sql)
    assert put.status_code == 200 and put.headers["etag"].strip('"') == etag, put.text
    ingest = client.d1.database.import_(database, account_id=A, action="ingest", etag=etag,
                                        filename=init.filename)
    assert ingest.success and ingest.status == "complete"
    poll = client.d1.database.import_(database, account_id=A, action="poll", current_bookmark=ingest.at_bookmark)
    assert poll.status == "complete" and poll.result.num_queries == 3
    return poll


def test_a_sql_file_is_imported_into_a_d1_database(server, cf):
    database = cf.d1.database.create(account_id=A, name="imported").uuid
    with httpx.Client(transport=httpx.HTTPTransport(uds=server.socket_path)) as http:
        done = _import(cf, database, SQL, lambda url, body: http.put(url, content=body))
    assert done.result.meta.rows_written == 2
    rows = cf.d1.database.query(database, account_id=A, sql="SELECT a, b FROM t ORDER BY a")
    assert [r.results for r in rows] == [[{"a": 1, "b": "x;y"}, {"a": 2, "b": "z"}]]


def test_a_d1_import_refuses_what_does_not_fit(server, cf):
    database = cf.d1.database.create(account_id=A, name="import-refusals").uuid
    db = cf.d1.database
    with pytest.raises(cloudflare.BadRequestError, match="MD5"):
        db.import_(database, account_id=A, action="init", etag="nope")
    init = db.import_(database, account_id=A, action="init", etag=hashlib.md5(SQL).hexdigest())
    with pytest.raises(cloudflare.BadRequestError, match="not uploaded"):
        db.import_(database, account_id=A, action="ingest", etag=hashlib.md5(SQL).hexdigest(), filename=init.filename)
    with httpx.Client(transport=httpx.HTTPTransport(uds=server.socket_path)) as http:
        refused(http.put(init.upload_url, content=b"other"), 400, "MD5")
        refused(http.put(init.upload_url.rsplit("/", 1)[0] + "/not-a-token", content=SQL), 404, "no import")
    with pytest.raises(cloudflare.NotFoundError, match="no import"):
        db.import_(database, account_id=A, action="poll", current_bookmark="not-a-bookmark")
    with pytest.raises(cloudflare.BadRequestError, match="init, ingest and poll"):
        db.import_(database, account_id=A, action="explode", etag=hashlib.md5(SQL).hexdigest())
    # A file that fails half-way changes nothing.
    bad = b"CREATE TABLE u (a);\nINSERT INTO nowhere VALUES (1);\n"
    with httpx.Client(transport=httpx.HTTPTransport(uds=server.socket_path)) as http, \
            pytest.raises(cloudflare.BadRequestError, match="rolled back"):
        _import(cf, database, bad, lambda url, body: http.put(url, content=body))
    tables = db.query(database, account_id=A, sql="SELECT name FROM sqlite_master WHERE name = 'u'")
    assert [r.results for r in tables] == [[]]


def test_a_d1_import_over_tcp_uploads_without_a_token(tmp_path):
    """wrangler PUTs the file to the upload URL as to a presigned R2 URL, with
    no credentials: that URL alone is open, nothing beside it."""
    corral = with_tcp_admin(tmp_path / "tcp").start()
    try:
        token = corral.admin("POST", "/accounts/local/corral/tokens", {"name": "importer", "scope": "admin"})
        base = f"http://127.0.0.1:{corral.tcp_port}/client/v4"
        client = Cloudflare(api_token=token.json()["result"]["value"], base_url=base, max_retries=0)
        database = client.d1.database.create(account_id=A, name="over-tcp").uuid
        _import(client, database, SQL, lambda url, body: httpx.put(url, content=body))
        assert httpx.put(f"{base}/accounts/local/d1/imports/x/more", content=SQL).status_code == 401
        assert httpx.put(f"{base}/accounts/local/d1/database/{database}", content=SQL).status_code == 401
        assert httpx.post(f"{base}/accounts/local/d1/database/{database}/import",
                          json={"action": "init"}).status_code == 401
        client.close()
    finally:
        corral.stop()


# -- queues ---------------------------------------------------------------------------


def test_queue_metrics_peek_and_purge_by_ref(cf):
    queue = cf.queues.create(account_id=A, queue_name="peeked").queue_id
    empty = cf.queues.get_metrics(queue, account_id=A)
    assert (empty.backlog_count, empty.backlog_bytes, empty.oldest_message_timestamp_ms) == (0, 0, 0)
    cf.queues.messages.bulk_push(queue, account_id=A, messages=[
        {"body": "first", "content_type": "text"}, {"body": "second", "content_type": "text"}])
    metrics = cf.queues.get_metrics(queue, account_id=A)
    assert (metrics.backlog_count, metrics.backlog_bytes) == (2, len("firstsecond"))
    assert metrics.oldest_message_timestamp_ms > 0
    peeked = cf.queues.messages.peek(queue, account_id=A, batch_size=5).messages
    assert [(m.body, m.attempts) for m in peeked] == [("first", 0), ("second", 0)]
    assert len(cf.queues.messages.peek(queue, account_id=A).messages) == 2, "a peek leases nothing"
    purged = cf.queues.messages.purge(queue, account_id=A, refs=[{"ref": peeked[0].ref}, {"ref": "gone"}])
    assert list(purged.warnings) == ["gone"]
    assert [m.body for m in cf.queues.messages.peek(queue, account_id=A).messages] == ["second"]
    assert cf.queues.get_metrics(queue, account_id=A).backlog_count == 1


def test_a_queue_purge_answers_the_queue(cf):
    """The SDK's ``purge.start`` returns a Queue: it had none of its fields."""
    queue = cf.queues.create(account_id=A, queue_name="purged").queue_id
    cf.queues.messages.push(queue, account_id=A, body="x", content_type="text")
    purged = cf.queues.purge.start(queue, account_id=A, delete_messages_permanently=True)
    assert (purged.queue_id, purged.queue_name, purged.consumers_total_count) == (queue, "purged", 0)
    assert purged.created_on is not None
    assert cf.queues.get_metrics(queue, account_id=A).backlog_count == 0


def test_queue_update_answers_the_queue_and_names_what_corral_lacks(cf):
    queue = cf.queues.create(account_id=A, queue_name="updated").queue_id
    same = cf.queues.update(queue, account_id=A, queue_name="updated")
    assert same.queue_id == queue and same.queue_name == "updated"
    with pytest.raises(cloudflare.APIStatusError, match="renaming queue 'updated' is not supported") as exc:
        cf.queues.edit(queue, account_id=A, queue_name="renamed")
    assert exc.value.status_code == 501
    with pytest.raises(cloudflare.APIStatusError, match=r"queue settings \(delivery_delay\) are not supported"):
        cf.queues.update(queue, account_id=A, queue_name="updated", settings={"delivery_delay": 5})


# -- shapes ----------------------------------------------------------------------------


def test_a_versions_source_is_one_of_cloudflares(cf, platform_script):
    """A version Corral made for a secret said ``source: "secret"``, which the
    SDK's model does not allow; it came through the API, and what made it
    is its ``workers/triggered_by`` annotation."""
    cf.workers.scripts.secrets.update(platform_script, account_id=A, name="S", text="s", type="secret_text")
    raw = cf.workers.scripts.versions.with_raw_response.list(platform_script, account_id=A)
    for item in raw.http_response.json()["result"]["items"]:
        VersionListResponse.model_validate(item)  # the SDK's own model, strictly
    latest = raw.parse().result.items[0]
    assert latest.metadata.source == "api" and latest.annotations == {"workers/triggered_by": "secret"}
    assert latest.metadata.has_preview is False  # its JSON name is hasPreview


def test_a_dispatch_namespace_has_the_fields_the_sdk_documents(cf):
    cf.workers_for_platforms.dispatch.namespaces.create(account_id=A, name="shaped")
    got = cf.workers_for_platforms.dispatch.namespaces.get("shaped", account_id=A)
    assert got.modified_on == got.created_on and got.trusted_workers is False


# -- what Corral does not have -------------------------------------------------------------


@pytest.mark.parametrize(("call", "product"), [
    (lambda c: c.d1.database.time_travel.get_bookmark("db", account_id=A), "D1 Time Travel"),
    (lambda c: c.r2.buckets.cors.get("b", account_id=A), "R2 bucket CORS rules"),
    (lambda c: c.r2.buckets.lifecycle.get("b", account_id=A), "R2 object lifecycle rules"),
    (lambda c: c.r2.buckets.event_notifications.list("b", account_id=A), "R2 event notifications"),
    (lambda c: c.queues.subscriptions.list(account_id=A), "Queues event subscriptions"),
    (lambda c: c.workflows.list(account_id=A), "Workflows"),
    (lambda c: c.ai.models.list(account_id=A), "Workers AI"),
    (lambda c: c.workers.observability.telemetry.keys(account_id=A), "Workers Observability"),
    # wrangler's r2 bucket info and d1 info ask it for usage; a 404 printed zeros as if true.
    (lambda c: c.post("/graphql", body={"query": "{ viewer { accounts { r2StorageAdaptiveGroups { max "
                                                   "{ objectCount } } } } }"}, cast_to=object),
     "The GraphQL Analytics API"),
])
def test_a_product_corral_lacks_is_named_once_not_retried(server, call, product):
    """A 501 naming the product, in Cloudflare's envelope, with ``x-should-retry:
    false``: the SDK retries a 5xx (twice by default) unless told not to."""
    sent = []
    http = httpx.Client(transport=httpx.HTTPTransport(uds=server.socket_path),
                        event_hooks={"request": [sent.append]})
    client = Cloudflare(api_token="unused-on-the-socket", base_url="http://corral/client/v4", http_client=http)
    with pytest.raises(cloudflare.APIStatusError) as exc:
        call(client)
    client.close()
    assert exc.value.status_code == 501 and len(sent) == 1
    body = exc.value.response.json()
    assert body["success"] is False and body["result"] is None and body["errors"][0]["code"] == 10501
    assert f"{product}" in body["errors"][0]["message"] and "not supported by Corral" in body["errors"][0]["message"]


def test_a_refusal_corral_already_made_is_not_retried_either(server, cf, platform_script):
    """Corral's other 501s (no workers.dev) were asked three times by an SDK
    left at its default retries, with backoff, for the same answer."""
    sent = []
    http = httpx.Client(transport=httpx.HTTPTransport(uds=server.socket_path),
                        event_hooks={"request": [sent.append]})
    client = Cloudflare(api_token="unused-on-the-socket", base_url="http://corral/client/v4", http_client=http)
    with pytest.raises(cloudflare.APIStatusError, match="Corral has no workers.dev") as exc:
        client.workers.scripts.subdomain.create(platform_script, account_id=A, enabled=True)
    client.close()
    assert exc.value.status_code == 501 and exc.value.response.headers["x-should-retry"] == "false"
    assert len(sent) == 1


def test_a_past_deployment_is_deleted_and_the_latest_is_not(cf, platform_script):
    """Cloudflare deletes a past deployment from the history and refuses the
    latest; Corral refused every delete ("deployments are Corral's history")."""
    cf.workers.scripts.secrets.update(platform_script, account_id=A, name="D", text="d", type="secret_text")
    deployments = cf.workers.scripts.deployments

    def ids() -> list[str]:
        return [d.id for page in deployments.list(platform_script, account_id=A) for d in page.deployments]

    latest, past = ids()[:2]
    deployments.delete(past, account_id=A, script_name=platform_script)
    assert past not in ids() and ids()[0] == latest
    with pytest.raises(cloudflare.BadRequestError, match="is the latest of script 'swept'"):
        deployments.delete(latest, account_id=A, script_name=platform_script)
    with pytest.raises(cloudflare.NotFoundError, match="has no deployment"):
        deployments.delete(past, account_id=A, script_name=platform_script)
    assert ids()[0] == latest
