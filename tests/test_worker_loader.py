"""Dynamic Workers (Worker Loader bindings) through real jailed children:
``env.LOADER.get(id, callback)`` and ``load(code)``, the code handed over only
when the supervisor has none, ``env`` values, per-script ids, the network cut
by ``globalOutbound: None``, and code Corral cannot run refused by name."""

from __future__ import annotations

import pytest

from supervisor.calls.dynamic_workers import MAX_WORKERS_PER_OWNER, CodeError, DynamicWorkers
from supervisor.model import ScriptRecord
from tests import storage_helpers as h
from tests.test_observability import metric

LOADER = {"type": "worker_loader", "name": "LOADER"}

DYNAMIC = '''
from workers import Response, WorkerEntrypoint

SEEN = {"n": 0}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        SEEN["n"] += 1
        return Response.json({"greeting": self.env.GREETING, "limits": self.env.LIMITS,
                              "seen": SEEN["n"], "url": request.url, "method": request.method,
                              "body": await request.text()})
'''

CODE = f'''
DYNAMIC = {DYNAMIC!r}
calls = []
def code(greeting="hi"):
    calls.append(1)
    return {{"compatibilityDate": "2026-04-01", "mainModule": "entry.py",
            "modules": {{"entry.py": DYNAMIC}},
            "env": {{"GREETING": greeting, "LIMITS": {{"max": 3}}}}}}
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = h.start(tmp_path_factory.mktemp("loader"))
    srv.deploy("parent", h.EVAL_TENANT, bindings=[LOADER])
    srv.deploy("other", h.EVAL_TENANT, bindings=[LOADER])
    yield srv
    srv.stop()


def run(server, script: str, code: str):
    return h.ok(server, script, CODE + code)


def test_get_loads_once_and_keeps_the_worker_warm(server):
    first = run(server, "parent", """
from pyodide.ffi import create_proxy
worker = env.LOADER.get("hello", create_proxy(code))
resp = await worker.getEntrypoint().fetch("https://dyn.example/a?b=1", method="POST", body="hey")
return [resp.status, await resp.json(), len(calls)]
""")
    assert first == [200, {"greeting": "hi", "limits": {"max": 3}, "seen": 1,
                           "url": "https://dyn.example/a?b=1", "method": "POST", "body": "hey"}, 1]
    again = run(server, "parent", """
resp = await env.LOADER.get("hello", code).getEntrypoint().fetch("https://dyn.example/")
return [(await resp.json())["seen"], len(calls)]
""")
    # The same warm worker, and no callback: the supervisor still had the code.
    assert again == [2, 0]


def test_rpc_on_an_entrypoint_is_refused_by_name(server):
    """Cloudflare's entrypoint is a Fetcher that RPC methods are called on;
    Corral has its fetch only, and said so with a bare AttributeError."""
    out = run(server, "parent", """
try:
    await env.LOADER.get("rpc", code).getEntrypoint().hello("rpc")
    return "called"
except JsException as e:
    return [e.name, e.message]
""")
    assert out[0] == "TypeError" and "RPC on a Dynamic Worker's entrypoint (hello())" in out[1], out


def test_ids_are_the_scripts_own(server):
    mine = run(server, "parent", """
resp = await env.LOADER.get("shared-id", lambda: code("parent's")).getEntrypoint().fetch("https://x/")
return (await resp.json())["greeting"]
""")
    theirs = run(server, "other", """
resp = await env.LOADER.get("shared-id", lambda: code("other's")).getEntrypoint().fetch("https://x/")
return (await resp.json())["greeting"]
""")
    assert (mine, theirs) == ("parent's", "other's")


def test_load_gives_a_fresh_worker_each_time(server):
    seen = run(server, "parent", """
out = []
for _ in range(2):
    worker = env.LOADER.load(code())
    out.append((await (await worker.getEntrypoint().fetch("https://x/")).json())["seen"])
return out
""")
    assert seen == [1, 1]


def test_an_async_callback_and_js_style_code(server):
    result = run(server, "parent", """
from js import Object
from pyodide.ffi import to_js
async def later():
    return to_js(code("async"), dict_converter=Object.fromEntries)
resp = await env.LOADER.get("async", later).getEntrypoint().fetch("https://x/")
return (await resp.json())["greeting"]
""")
    assert result == "async"


OFFLINE = '''
from workers import Response, WorkerEntrypoint, fetch
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        try:
            await fetch("https://example.com/")
        except Exception as e:
            return Response(type(e).__name__ + ": " + str(e))
        return Response("reached the network")
'''


def test_no_network_with_global_outbound_none(server):
    result = run(server, "parent", f"src = {OFFLINE!r}\n" + """
w = env.LOADER.get("offline", lambda: {"mainModule": "w.py", "modules": {"w.py": src},
                                        "globalOutbound": None})
return await (await w.getEntrypoint().fetch("https://x/")).text()
""")
    assert "reached the network" not in result and "subrequest" in result.lower()


@pytest.mark.parametrize("code, fragment", [
    ('{"mainModule": "w.js", "modules": {"w.js": "export default {}"}}', "Corral runs Python workers"),
    ('{"mainModule": "w.py", "modules": {"w.py": {"js": "x"}}}', "Corral runs Python workers"),
    ('{"mainModule": "nope.py", "modules": {"w.py": ""}}', "mainModule must name one of the modules"),
    ('{"mainModule": "w.py", "modules": {"../w.py": ""}}', "invalid module name"),
    ('{"mainModule": "w.py", "modules": {"w.py": ""}, "env": {"X": float(\"nan\")}}', "plain data"),
    ('"not a dict"', "must return the worker's code"),
])
def test_code_corral_cannot_run_is_refused_by_name(server, code, fragment):
    result = h.fails(server, "parent", f"""
worker = env.LOADER.get("bad", lambda: {code})
await worker.getEntrypoint().fetch("https://x/")
""")
    assert result["error"] in ("TypeError", "JsException") and fragment in result["message"], result


def test_an_object_in_the_code_fails_in_the_script_itself(server):
    result = h.fails(server, "parent", """
worker = env.LOADER.get("obj", lambda: {"mainModule": "w.py", "modules": {"w.py": object()}})
await worker.getEntrypoint().fetch("https://x/")
""")
    assert result["name"] == "TypeError" and result["js"] and "plain data" in result["message"], result


def test_a_script_without_the_binding_cannot_call_it(server):
    server.deploy("plain", h.EVAL_TENANT)
    result = h.fails(server, "plain", "return env.LOADER")
    assert result["error"] == "AttributeError"


# -- the registry, without processes ---------------------------------------------------------


def _owner(name: str) -> ScriptRecord:
    return ScriptRecord(namespace="ns", name=name, version="v", main_module="m.py", modules={})


def test_registry_forgets_the_least_recently_used_first():
    registry = DynamicWorkers(max_workers=2)
    owner = _owner("a")
    code = {"mainModule": "w.py", "modules": {"w.py": "X = 1"}}
    registry.put(owner, "L", "one", code)
    registry.put(owner, "L", "two", code)
    assert registry.get(owner, "L", "one") is not None  # now the most recent
    registry.put(owner, "L", "three", code)
    assert registry.get(owner, "L", "two") is None
    assert registry.get(owner, "L", "one") is not None and len(registry) == 2
    assert registry.get(_owner("b"), "L", "one") is None  # another script's ids are its own


def test_registry_bounds_the_code_it_holds():
    registry = DynamicWorkers(max_bytes=100)
    owner = _owner("a")
    registry.put(owner, "L", "small", {"mainModule": "w.py", "modules": {"w.py": "x" * 60}})
    registry.put(owner, "L", "also", {"mainModule": "w.py", "modules": {"w.py": "y" * 60}})
    assert registry.get(owner, "L", "small") is None and registry.get(owner, "L", "also") is not None
    with pytest.raises(CodeError, match="id"):
        registry.put(owner, "L", "", {"mainModule": "w.py", "modules": {"w.py": ""}})


def test_registry_caps_each_owner_and_evicts_only_its_own():
    registry = DynamicWorkers(max_per_owner=2)
    dropped = []
    registry.on_drop = lambda record: dropped.append(record.name)
    mine, theirs = _owner("a"), _owner("b")
    code = {"mainModule": "w.py", "modules": {"w.py": "X = 1"}}
    registry.put(theirs, "L", "kept", code)
    registry.put(mine, "L", "one", code)
    registry.put(mine, "L", "two", code)
    assert registry.get(mine, "L", "one") is not None  # now the most recent of mine
    registry.put(mine, "L", "three", code)
    assert registry.get(mine, "L", "two") is None and dropped == ["a:L:two"]
    assert registry.owned("ns", "a") == 2 and registry.get(theirs, "L", "kept") is not None
    registry.drop_owner("ns", "a")
    assert registry.owned("ns", "a") == 0 and len(registry) == 1


def test_one_script_keeps_at_most_its_cap_of_dynamic_workers(server):
    """Each dynamic worker is a child with its own memory limit: one script
    loading many of them held that many children (audit F2: 20 x 100 MB from
    one request). Past MAX_WORKERS_PER_OWNER, a load evicts the script's own
    least recently used worker and retires its child; another script's
    workers stay."""
    theirs = """
resp = await env.LOADER.get("keep", code).getEntrypoint().fetch("https://x/")
return len(calls)
"""
    assert run(server, "other", theirs) == 1
    before = metric(server, "corral_pool_children", state="warm")
    loaded = run(server, "parent", f"""
out = []
for i in range({MAX_WORKERS_PER_OWNER + 3}):
    resp = await env.LOADER.get(f"many-{{i}}", code).getEntrypoint().fetch("https://x/")
    out.append(resp.status)
return out
""")
    assert loaded == [200] * (MAX_WORKERS_PER_OWNER + 3)
    grown = metric(server, "corral_pool_children", state="warm") - before
    assert grown <= MAX_WORKERS_PER_OWNER, f"{grown} warm children for one script's dynamic workers"
    # The other script's worker kept its code: no callback asked for it again.
    assert run(server, "other", theirs) == 0


EGRESS = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("egress saw " + request.url)
'''

THROUGH_EGRESS = '''
from workers import Response, WorkerEntrypoint

FETCHER = """
from workers import Response, WorkerEntrypoint, fetch
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(await (await fetch("http://example.com/from-dynamic")).text())
"""


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        worker = self.env.LOADER.get("fetcher", lambda: {"compatibilityDate": "2026-04-01",
                                                         "mainModule": "w.py", "modules": {"w.py": FETCHER}})
        return await worker.getEntrypoint().fetch("https://dyn.example/")
'''


def test_a_dynamic_workers_fetches_go_through_its_loaders_outbound_worker(tmp_path):
    """Workers for Platforms' outbound worker sees every subrequest of a user
    worker; one of its dynamic workers went straight to the network."""
    from tests.harness import Corral

    server = Corral(tmp_path / "state").start()
    try:
        server.deploy("egress", EGRESS, namespace=None)
        server.deploy_dispatcher(outbound={"worker": {"service": "egress"}})
        server.deploy("loads", THROUGH_EGRESS, bindings=[LOADER])
        r = server.request("/", host="loads.localhost")
        assert (r.status, r.text) == (200, "egress saw http://example.com/from-dynamic"), r
    finally:
        server.stop()


CACHING = '''
from workers import Response, WorkerEntrypoint

NOTES = """
import js
from workers import Response, WorkerEntrypoint
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        cache = await js.caches.open("notes")
        if request.method == "PUT":
            await cache.put("https://notes.example/token", Response("tenant A's token"))
            return Response("stored")
        hit = await cache.match("https://notes.example/token")
        return Response("none" if hit is None else await hit.text())
"""


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        worker = self.env.LOADER.get("notes", lambda: {"compatibilityDate": "2026-04-01",
                                                       "mainModule": "n.py", "modules": {"n.py": NOTES}})
        return await worker.getEntrypoint().fetch("https://dyn.example/", method=request.method)
'''


def test_a_deleted_scripts_dynamic_workers_cache_goes_with_it(server):
    """A dynamic worker's Cache API entries outlived its owner's delete: the
    next script of that name (another tenant) read them."""
    server.deploy("cachy", CACHING, bindings=[LOADER])
    assert server.request("/", host="cachy.localhost", method="PUT").text == "stored"
    assert server.request("/", host="cachy.localhost").text == "tenant A's token"
    assert server.admin("DELETE", "/accounts/local/workers/dispatch/namespaces/default/scripts/cachy").status == 200
    server.deploy("cachy", CACHING, bindings=[LOADER])
    assert server.request("/", host="cachy.localhost").text == "none"
