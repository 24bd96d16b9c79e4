"""A KV namespace's keys and values through Cloudflare's REST API, with its
official SDK (``client.kv.namespaces.values``, ``keys``, ``metadata``,
``bulk_*``), as a platform seeds or reads a tenant's data, against a real
`corral serve`: what the API writes, the tenant's binding reads, in the
dispatch namespace ``?namespace=`` names."""

from __future__ import annotations

import base64

import cloudflare
import pytest

from tests.harness import sdk_fixtures

A = "local"
READER = '''from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        key = request.url.rsplit("/", 1)[1]
        found = await self.env.KV.getWithMetadata(key)
        if request.method == "POST":
            await self.env.KV.put(key, "from the worker")
        return Response.json({"value": found.value, "metadata": found.metadata})
'''
KV = {"type": "kv_namespace", "name": "KV", "namespace_id": "seeded"}

server, cf = sdk_fixtures("kvrest")


@pytest.fixture(scope="module")
def reader(server):
    server.deploy("reader", READER, namespace=None, bindings=[KV])
    server.route("reader.test/*", "reader")
    server.deploy_dispatcher()
    server.deploy("tenant", READER, namespace="default", bindings=[KV])


def read(server, key, host="reader.test", method="GET"):
    resp = server.request(f"/{key}", host=host, method=method)
    assert resp.status == 200, resp
    return resp.json()


def test_values_written_through_the_api_are_what_the_binding_reads(server, cf, reader):
    values = cf.kv.namespaces.values
    values.update("greeting", account_id=A, namespace_id="seeded", value=b"hello", metadata={"v": 1})
    assert read(server, "greeting") == {"value": "hello", "metadata": {"v": 1}}
    assert values.get("greeting", account_id=A, namespace_id="seeded").text() == "hello"
    assert cf.kv.namespaces.metadata.get("greeting", account_id=A, namespace_id="seeded") == {"v": 1}
    # ... and what the worker writes, the API reads.
    read(server, "fromworker", method="POST")
    assert values.get("fromworker", account_id=A, namespace_id="seeded").text() == "from the worker"

    # A dispatch namespace's data is its own: ?namespace= reaches it.
    values.update("greeting", account_id=A, namespace_id="seeded", value=b"hi tenant",
                  extra_query={"namespace": "default"})
    assert read(server, "greeting", host="tenant.localhost")["value"] == "hi tenant"
    assert read(server, "greeting")["value"] == "hello"

    values.delete("greeting", account_id=A, namespace_id="seeded")
    assert read(server, "greeting")["value"] is None
    with pytest.raises(cloudflare.NotFoundError, match="key not found"):
        values.get("greeting", account_id=A, namespace_id="seeded")


def test_keys_are_listed_and_written_and_deleted_in_bulk(server, cf, reader):
    ns = cf.kv.namespaces
    written = ns.bulk_update("bulk", account_id=A, body=[
        {"key": f"user:{i:02d}", "value": f"v{i}", "metadata": {"i": i}} for i in range(25)] + [
        {"key": "blob", "value": base64.b64encode(b"\x00\xff").decode(), "base64": True}])
    assert written.successful_key_count == 26
    listed = [k.name for k in ns.keys.list("bulk", account_id=A, prefix="user:", limit=10)]
    assert listed == [f"user:{i:02d}" for i in range(25)], "every page, following the cursor"
    assert ns.values.get("blob", account_id=A, namespace_id="bulk").read() == b"\x00\xff"
    got = ns.bulk_get("bulk", account_id=A, keys=["user:01", "nope"])
    assert got.values == {"user:01": "v1", "nope": None}
    ns.values.update("ttl", account_id=A, namespace_id="bulk", value=b"t", metadata={"m": 1}, expiration=4102444800)
    got = ns.bulk_get("bulk", account_id=A, keys=["user:01", "ttl", "nope"], with_metadata=True)
    assert {k: (v.value, v.metadata, v.expiration) for k, v in got.values.items()} == {
        "user:01": ("v1", {"i": 1}, None), "ttl": ("t", {"m": 1}, 4102444800), "nope": (None, None, None)}
    removed = ns.bulk_delete("bulk", account_id=A, body=[f"user:{i:02d}" for i in range(20)])
    assert removed.successful_key_count == 20
    assert [k.name for k in ns.keys.list("bulk", account_id=A, prefix="user:")] == \
        [f"user:{i:02d}" for i in range(20, 25)]


@pytest.mark.parametrize("method, path, body, status, words", [
    ("PUT", "values/" + "k" * 600, b"v", 400, "exceeds key length limit"),
    ("PUT", "values/k?expiration_ttl=5", b"v", 400, "at least 60"),
    ("PUT", "values/k?expiration_ttl=soon", b"v", 400, "expiration_ttl must be an integer"),
    ("PUT", "bulk", b'[{"key": "k", "value": "%%%", "base64": true}]', 400, "not base64"),
    ("PUT", "bulk", b'{"key": "k"}', 400, "to write keys in bulk"),
    ("GET", "keys?limit=5000", None, 400, "limit"),
    ("GET", "values/k?namespace=..", None, 400, "namespace"),
])
def test_bad_kv_calls_are_refused_with_a_reason(server, method, path, body, status, words):
    resp = server.admin(method, f"/accounts/local/storage/kv/namespaces/bad/{path}", body,
                        content_type="application/octet-stream" if body else None)
    assert resp.status == status and words in resp.json()["errors"][0]["message"], resp.text
    assert server.admin("GET", "/accounts/local/storage/kv/namespaces/bad/keys").json()["result"] == []
