"""``client.workers.scripts.search`` (``GET .../workers/scripts-search``) and
``client.durable_objects.namespaces.list`` (and its objects) and
``client.workers.account_settings``, as Cloudflare's official SDK calls
them, against a real `corral serve`."""

from __future__ import annotations

import cloudflare
import pytest

from tests.harness import sdk_fixtures

CODE = '''from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("ok")
'''


server, cf = sdk_fixtures("search")


@pytest.fixture(scope="module")
def scripts(server):
    """Three platform scripts (``beta`` modified last) and a user worker."""
    for name in ("beta", "alpha-web", "alpha-api"):
        server.deploy(name, CODE, namespace=None)
    server.deploy("alpha-tenant", CODE, namespace="default")  # a user worker: not a platform script
    server.deploy("beta", CODE, namespace=None)


def test_the_sdk_searches_the_platforms_scripts(cf, scripts):
    found = cf.workers.scripts.search(account_id="local", name="alpha")
    assert [s.script_name for s in found] == ["alpha-api", "alpha-web"]
    assert found[0].id == "alpha-api" and found[0].created_on <= found[0].modified_on
    assert [s.script_name for s in cf.workers.scripts.search(account_id="local", id="beta")] == ["beta"]
    # (name="a": the three of them, whatever else the module's other test deployed)
    by_change = cf.workers.scripts.search(account_id="local", name="a", order_by="modified_on")
    assert [s.script_name for s in by_change] == ["alpha-web", "alpha-api", "beta"]
    second = cf.workers.scripts.search(account_id="local", name="a", page=2, per_page=2)
    assert [s.script_name for s in second] == ["beta"]
    assert cf.workers.scripts.search(account_id="local", name="gamma") == []
    with pytest.raises(cloudflare.BadRequestError, match="order_by"):
        cf.workers.scripts.search(account_id="local", order_by="size")  # type: ignore[arg-type]


DO_SCRIPT = '''from workers import DurableObject, Response, WorkerEntrypoint

class Counter(DurableObject):
    async def fetch(self, request):
        return Response("1")

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await self.env.COUNTER.get(self.env.COUNTER.idFromName("a")).fetch(request)
'''


def test_the_sdk_lists_the_durable_object_namespaces_scripts_bind(server, cf):
    assert [n.id for n in cf.durable_objects.namespaces.list(account_id="local")] == []
    server.deploy("counter", DO_SCRIPT, namespace=None,
                  bindings=[{"type": "durable_object_namespace", "name": "COUNTER", "class_name": "Counter"}])
    server.deploy("user", CODE, namespace=None, bindings=[
        {"type": "durable_object_namespace", "name": "C", "class_name": "Counter", "script_name": "counter"}])
    listed = list(cf.durable_objects.namespaces.list(account_id="local"))
    assert [(n.id, n.name, n.script, n.class_, n.use_sqlite) for n in listed] == \
        [("counter:Counter", "counter_Counter", "counter", "Counter", True)]
    # The id is the one a script's references name.
    refs = server.admin("GET", "/accounts/local/workers/scripts/counter/references").json()["result"]
    assert refs["durable_objects"][0]["durable_object_namespace_id"] == listed[0].id
    bad = server.admin("GET", "/accounts/local/workers/durable_objects/namespaces?namespace=nowhere")
    assert bad.status == 404 and "nowhere" in bad.text


STORING = '''from urllib.parse import urlparse, parse_qs
from workers import DurableObject, Response, WorkerEntrypoint

class Store(DurableObject):
    async def fetch(self, request):
        if "write" in request.url:
            await self.ctx.storage.put("k", 1)
        return Response(str(self.ctx.id))

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        query = parse_qs(urlparse(request.url).query)
        stub = self.env.STORE.get(self.env.STORE.idFromName(query["name"][0]))
        return await stub.fetch(request)
'''


def test_the_sdk_lists_a_namespaces_objects_page_by_page(server, cf):
    server.deploy("storing", STORING, namespace=None,
                  bindings=[{"type": "durable_object_namespace", "name": "STORE", "class_name": "Store"}])
    server.route("objects.localhost/*", "storing")
    written = set()
    for i in range(12):
        resp = server.request(f"/?write=1&name=n{i}", host="objects.localhost")
        assert resp.status == 200, resp
        written.add(resp.body.decode())
    # An object that never touched its storage has nothing to list.
    untouched = server.request("/?name=idle", host="objects.localhost").body.decode()
    pages = cf.durable_objects.namespaces.objects.list("storing:Store", account_id="local", limit=5)
    first = pages.result
    assert len(first) == 5 and pages.result_info.cursors.after
    listed = [o for o in pages]  # the SDK follows cursors.after to the end
    assert sorted(o.id for o in listed) == [o.id for o in listed] == sorted(written)
    assert untouched not in {o.id for o in listed}
    assert all(o.has_stored_data for o in listed)
    missing = server.admin("GET", "/accounts/local/workers/durable_objects/namespaces/storing:Nope/objects")
    assert missing.status == 404 and "storing:Nope" in missing.text
    forged = server.admin("GET", "/accounts/local/workers/durable_objects/namespaces/storing:Store/objects"
                                 "?cursor=bm90LWFuLWlk")
    assert forged.status == 400 and "cursor" in forged.text


def test_the_sdk_reads_the_accounts_settings_and_may_write_them_back(cf):
    settings = cf.workers.account_settings.get(account_id="local")
    assert (settings.default_usage_model, settings.green_compute) == ("standard", False)
    again = cf.workers.account_settings.update(account_id="local", default_usage_model="standard")
    assert again.default_usage_model == "standard"
    with pytest.raises(cloudflare.BadRequestError, match="one usage model"):
        cf.workers.account_settings.update(account_id="local", default_usage_model="unbound")
