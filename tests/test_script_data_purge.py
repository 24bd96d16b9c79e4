"""Deleting a script deletes the data private to it (audit F5).

The Cache API and Durable Object storage are keyed by the script's
namespace and name. Before, a script deleted through the admin API left
both on disk, and a new script later given the same name (another tenant,
perhaps) read the old one's cache entries and objects. Now deleting a script
(or its whole dispatch namespace) purges them, as Cloudflare deletes a
Worker's Durable Objects with it; account-level data bound by id (KV here)
stays. A delete that answers 404 purges nothing. Real ``corral serve``,
real jailed children.
"""

from __future__ import annotations

import pytest

from tests import storage_helpers as h
from tests.test_durable_objects import DO, DO_TENANT

KV = {"type": "kv_namespace", "name": "KV", "namespace_id": "shared-kv"}
NS = "/accounts/local/workers/dispatch/namespaces"

WRITE = """
c = await caches.open("private")
await c.put("https://shop.example/orders",
            Response("alice's order history", headers={"cache-control": "max-age=600"}))
await env.COUNTER.getByName("alice").increment(42)
await env.KV.put("k", "account-level")
"""
READ = """
hit = await (await caches.open("private")).match("https://shop.example/orders")
return [None if hit is None else await hit.text(), await env.COUNTER.getByName("alice").peek("n"),
        await env.KV.get("k")]
"""
OLD = ["alice's order history", 42, "account-level"]
FRESH = [None, None, "account-level"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = h.start(tmp_path_factory.mktemp("purge"))
    yield srv
    srv.stop()


def test_a_recycled_script_name_sees_none_of_the_deleted_scripts_data(server):
    server.deploy("shop", DO_TENANT, bindings=[DO, KV])
    h.ok(server, "shop", WRITE)
    assert h.ok(server, "shop", READ) == OLD
    # A delete that 404s (no "shop" in that namespace) purges nothing.
    assert server.admin("DELETE", f"{NS}/other/scripts/shop").status == 404
    assert h.ok(server, "shop", READ) == OLD

    assert server.admin("DELETE", f"{NS}/default/scripts/shop").status == 200
    server.deploy("shop", DO_TENANT, bindings=[DO, KV])  # another tenant, the same name
    assert h.ok(server, "shop", READ) == FRESH
    assert "script_data_purge_failed" not in server.log()


def test_deleting_a_namespace_purges_its_scripts_data(server):
    server.deploy("shop", DO_TENANT, namespace="other", bindings=[DO, KV])
    h.ok(server, "shop", WRITE, namespace="other")
    assert h.ok(server, "shop", READ, namespace="other") == OLD

    assert server.admin("DELETE", f"{NS}/other").status == 200
    server.namespace("other")
    server.deploy("shop", DO_TENANT, namespace="other", bindings=[DO, KV])
    assert h.ok(server, "shop", READ, namespace="other") == FRESH
