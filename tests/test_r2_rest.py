"""An R2 bucket's objects through Cloudflare's REST API, as ``wrangler r2
object put|get|delete --remote`` calls it, against a real `corral serve`:
what the API puts, the tenant's binding reads, in the dispatch namespace
``?namespace=`` names, and the other way round."""

from __future__ import annotations

import pytest

from tests.harness import Corral

OBJECTS = "/client/v4/accounts/local/r2/buckets/{bucket}/objects/{key}"
WORKER = '''from urllib.parse import unquote

from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        key = unquote(request.url.split("/", 3)[3])
        if request.method == "POST":
            await self.env.BUCKET.put(key, "from the worker", httpMetadata={"contentType": "text/x-worker"})
            return Response("put")
        found = await self.env.BUCKET.get(key)
        if found is None:
            return Response("none", status=404)
        return Response.json({"text": await found.text(), "type": found.httpMetadata.get("contentType"),
                              "language": found.httpMetadata.get("contentLanguage")})
'''
BUCKET = {"type": "r2_bucket", "name": "BUCKET", "bucket_name": "media"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    corral = Corral(tmp_path_factory.mktemp("r2rest")).start()
    corral.deploy("reader", WORKER, namespace=None, bindings=[BUCKET])
    corral.route("reader.test/*", "reader")
    corral.deploy_dispatcher()
    corral.deploy("tenant", WORKER, namespace="default", bindings=[BUCKET])
    yield corral
    corral.stop()


def _put(server, key, data, bucket="media", query="", content_type=None):
    return server.admin("PUT", OBJECTS.format(bucket=bucket, key=key) + query, data, content_type=content_type)


def test_objects_put_through_the_api_are_what_the_binding_reads(server):
    resp = _put(server, "docs/a%20b/readme.txt", b"hello r2", content_type="text/plain")
    assert resp.status == 200, resp
    assert resp.json()["result"]["size"] == 8
    seen = server.request("/docs/a%20b/readme.txt", host="reader.test").json()
    assert seen == {"text": "hello r2", "type": "text/plain", "language": None}
    got = server.admin("GET", OBJECTS.format(bucket="media", key="docs/a%20b/readme.txt"))
    assert (got.status, got.body, got.headers["content-type"]) == (200, b"hello r2", "text/plain")
    assert got.headers["etag"].startswith('"')
    # What the worker puts, the API reads.
    assert server.request("/fromworker", host="reader.test", method="POST").status == 200
    got = server.admin("GET", OBJECTS.format(bucket="media", key="fromworker"))
    assert (got.body, got.headers["content-type"]) == (b"from the worker", "text/x-worker")

    # A dispatch namespace's objects are its own: ?namespace= reaches them.
    assert _put(server, "docs/a%20b/readme.txt", b"hi tenant", query="?namespace=default").status == 200
    assert server.request("/docs/a%20b/readme.txt", host="tenant.localhost").json()["text"] == "hi tenant"
    assert server.request("/docs/a%20b/readme.txt", host="reader.test").json()["text"] == "hello r2"

    assert server.admin("DELETE", OBJECTS.format(bucket="media", key="docs/a%20b/readme.txt")).status == 200
    assert server.request("/docs/a%20b/readme.txt", host="reader.test").status == 404
    missing = server.admin("GET", OBJECTS.format(bucket="media", key="docs/a%20b/readme.txt"))
    assert missing.status == 404 and "The specified key does not exist" in missing.text


def test_a_key_is_kept_as_written_trailing_slash_and_all(server):
    # A "folder" marker (photos/) and a key with an empty segment are keys of their own.
    for key, data in (("photos/", b"marker"), ("photos", b"plain"), ("a//b", b"double")):
        assert _put(server, key, data).status == 200
    for key, data in (("photos/", b"marker"), ("photos", b"plain"), ("a//b", b"double")):
        got = server.admin("GET", OBJECTS.format(bucket="media", key=key))
        assert (got.status, got.body) == (200, data), key
    assert server.request("/photos/", host="reader.test").json()["text"] == "marker"


def test_a_bucket_the_account_does_not_have_is_a_404_and_bad_keys_a_400(server):
    resp = _put(server, "a.txt", b"x", bucket="nobody")
    # wrangler reads a 404 here as "The specified bucket does not exist."
    assert resp.status == 404 and "no R2 bucket 'nobody'" in resp.text
    made = server.admin("POST", "/client/v4/accounts/local/r2/buckets", {"name": "made-here"})
    assert made.status == 200, made
    assert _put(server, "a.txt", b"x", bucket="made-here").status == 200
    bad = _put(server, "nul%00key", b"x")
    assert bad.status == 400 and "object name is not valid" in bad.text
    assert server.admin("GET", OBJECTS.format(bucket="media", key="x") + "?namespace=nowhere").status == 404
