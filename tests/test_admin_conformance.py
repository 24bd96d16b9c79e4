"""The admin API where it used to be more lenient than Cloudflare's, against a
real `corral serve`: a delete that would break other scripts without
``?force=true``, a route to no Worker, custom domains left behind by a
deleted script, Worker names Cloudflare refuses, environment variables past
Cloudflare's limits, unknown compatibility flags, a live tail of no script,
and a Python module that is not text. Each is refused (or done) as
Cloudflare's API does it, with its error code where it has one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cloudflare
import pytest

from tests.harness import REPO, UnixHTTPConnection, multipart, refused, sdk_fixtures

A = "/accounts/local"
PS = f"{A}/workers/scripts"
NS = "conformance"
CODE = '''from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("{name}")
'''
DO_SCRIPT = '''from workers import DurableObject, Response, WorkerEntrypoint

class Counter(DurableObject):
    async def fetch(self, request):
        return Response("1")

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("counter")
'''

server, cf = sdk_fixtures("conformance")


@pytest.fixture(scope="module", autouse=True)
def namespace(server):
    assert server.namespace(NS).status == 200


def code(name: str) -> str:
    return CODE.replace("{name}", name)


def exists(server, path: str) -> bool:
    status = server.admin("GET", path).status
    assert status in (200, 404), status
    return status == 200


def error_code(resp) -> int:
    return resp.json()["errors"][0]["code"]


# -- 1. a delete that would break other scripts needs ?force=true ------------------


def test_a_platform_script_another_binds_is_deleted_only_with_force(server, cf):
    server.deploy("backend", code("backend"), namespace=None)
    server.deploy("front", code("front"), namespace=None,
                  bindings=[{"type": "service", "name": "BACKEND", "service": "backend"}])
    message = refused(server.admin("DELETE", f"{PS}/backend"), 409, "'front'", "service binding", "force=true")
    assert "BACKEND" in message
    assert error_code(server.admin("DELETE", f"{PS}/backend")) == 10142
    assert exists(server, f"{PS}/backend")  # nothing was deleted
    # The SDK's force=True is Cloudflare's ?force=true: the delete goes through.
    cf.workers.scripts.delete("backend", account_id="local", force=True)
    assert not exists(server, f"{PS}/backend")
    # front still names it, but there is nothing left to delete: a 404, not a conflict.
    assert error_code(server.admin("DELETE", f"{PS}/backend")) == 10007
    # Nothing else uses front: no force needed.
    assert server.admin("DELETE", f"{PS}/front").status == 200


def test_an_outbound_worker_and_a_tail_worker_in_use_are_refused_without_force(server, cf):
    server.deploy("egress", code("egress"), namespace=None)
    server.deploy("logger", code("logger"), namespace=None)
    server.deploy("disp", code("disp"), namespace=None, bindings=[
        {"type": "dispatch_namespace", "name": "dispatcher", "namespace": NS,
         "outbound": {"worker": {"service": "egress"}}}])
    server.deploy("producer", code("producer"), namespace=NS, extra_metadata={
        "tail_consumers": [{"service": "logger"}]})
    refused(server.admin("DELETE", f"{PS}/egress"), 409, "'disp'", "outbound worker", NS)
    refused(server.admin("DELETE", f"{PS}/logger"), 409, "'producer'", NS, "tail worker")
    with pytest.raises(cloudflare.ConflictError, match="in use by other Workers"):
        cf.workers.scripts.delete("logger", account_id="local")
    assert exists(server, f"{PS}/egress") and exists(server, f"{PS}/logger")
    assert server.admin("DELETE", f"{PS}/egress?force=true").status == 200
    assert server.admin("DELETE", f"{PS}/logger?force=1").status == 200
    refused(server.admin("DELETE", f"{PS}/disp?force=maybe"), 400, "force", "true or false")
    assert server.admin("DELETE", f"{PS}/disp").status == 200


def test_a_bulk_delete_by_tag_is_refused_without_force_when_others_use_its_scripts(server):
    """A tag filter went around the in-use check of a single delete: the
    Durable Object host went and its user stayed, bound to nothing."""
    ns = f"{A}/workers/dispatch/namespaces/{NS}/scripts"
    server.deploy("bulk-host", DO_SCRIPT, namespace=NS, extra_metadata={"tags": ["customer-1"]})
    server.deploy("bulk-user", code("bulk-user"), namespace=NS, bindings=[
        {"type": "durable_object_namespace", "name": "C", "class_name": "Counter", "script_name": "bulk-host"}])
    message = refused(server.admin("DELETE", f"{ns}?tags=customer-1:yes"), 409, "'bulk-host'", "'bulk-user'",
                      "force=true")
    assert "Durable Object class 'Counter'" in message
    assert exists(server, f"{ns}/bulk-host")
    # Its user deleted with it (both tagged): nothing is left broken, no force needed.
    assert server.admin("PUT", f"{ns}/bulk-user/tags", b'["customer-1"]', "application/json").status == 200
    r = server.admin("DELETE", f"{ns}?tags=customer-1:yes")
    assert r.status == 200 and r.json()["result"]["count"] == 2, r.text
    server.deploy("bulk-host", DO_SCRIPT, namespace=NS, extra_metadata={"tags": ["customer-2"]})
    server.deploy("bulk-user", code("bulk-user"), namespace=NS, bindings=[
        {"type": "durable_object_namespace", "name": "C", "class_name": "Counter", "script_name": "bulk-host"}])
    r = server.admin("DELETE", f"{ns}?tags=customer-2:yes&force=true")
    assert r.status == 200 and r.json()["result"]["count"] == 1, r.text
    assert not exists(server, f"{ns}/bulk-host") and exists(server, f"{ns}/bulk-user")


def test_corral_rm_says_who_uses_a_script_and_deletes_it_with_force(server):
    server.deploy("shared", code("shared"), namespace=None)
    server.deploy("user-of-shared", code("user"), namespace=None,
                  bindings=[{"type": "service", "name": "SHARED", "service": "shared"}])

    def rm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "supervisor", "rm", "--socket", server.socket_path, *args],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO)})

    refused_rm = rm("shared")
    assert refused_rm.returncode == 1 and "'user-of-shared'" in refused_rm.stderr, refused_rm
    assert exists(server, f"{PS}/shared")
    assert rm("--force", "shared").returncode == 0
    assert not exists(server, f"{PS}/shared")
    assert rm("user-of-shared").returncode == 0


def test_a_namespaced_script_whose_durable_objects_others_bind_needs_force(server, cf):
    base = f"{A}/workers/dispatch/namespaces/{NS}/scripts"
    server.deploy("counter", DO_SCRIPT, namespace=NS,
                  bindings=[{"type": "durable_object_namespace", "name": "COUNTER", "class_name": "Counter"}])
    server.deploy("user", code("user"), namespace=NS, bindings=[
        {"type": "durable_object_namespace", "name": "C", "class_name": "Counter", "script_name": "counter"}])
    refused(server.admin("DELETE", f"{base}/counter"), 409, "'user'", "Durable Object class 'Counter'",
            "force=true")
    assert exists(server, f"{base}/counter")
    cf.workers_for_platforms.dispatch.namespaces.scripts.delete("counter", account_id="local",
                                                                dispatch_namespace=NS, force=True)
    assert not exists(server, f"{base}/counter")
    assert server.admin("DELETE", f"{base}/user").status == 200


# -- 2. a route names a Worker that exists ---------------------------------------------


def test_a_route_to_a_script_that_does_not_exist_is_refused(server, cf):
    server.deploy("router-target", code("router-target"), namespace=None)
    bad = server.admin("POST", f"{A}/workers/routes", {"pattern": "ghost.example.com/*", "script": "ghost"})
    refused(bad, 400, "Worker which does not exist", "'ghost'")
    assert error_code(bad) == 10019
    zone = "/zones/0123456789abcdef0123456789abcdef/workers/routes"
    refused(server.admin("POST", zone, {"pattern": "ghost.example.com/*", "script": "ghost"}), 400,
            "does not exist")
    with pytest.raises(cloudflare.BadRequestError, match="does not exist"):
        cf.workers.routes.create(zone_id="0123456789abcdef0123456789abcdef", pattern="sdk.example.com/*",
                                 script="ghost")
    assert server.admin("GET", f"{A}/workers/routes").json()["result"] == []
    # Moving a serving route to no Worker is refused, and the route keeps serving.
    route = server.route("moved.example.com/*", "router-target").json()["result"]
    refused(server.admin("PUT", f"{zone}/{route['id']}", {"pattern": "moved.example.com/*", "script": "ghost"}),
            400, "does not exist")
    resp = server.request("/", host="moved.example.com")
    assert (resp.status, resp.body) == (200, b"router-target")
    # A route without a script is an exclusion, as before.
    excluded = server.admin("POST", zone, {"pattern": "moved.example.com/static/*"})
    assert excluded.status == 200, excluded
    for r in server.admin("GET", f"{A}/workers/routes").json()["result"]:
        assert server.admin("DELETE", f"{A}/workers/routes/{r['id']}").status == 200
    assert server.admin("DELETE", f"{PS}/router-target").status == 200


# -- 3. a deleted script's custom domains go with it ------------------------------------


def test_deleting_a_script_detaches_its_custom_domains(server, cf):
    server.deploy("site", code("site"), namespace=None)
    server.deploy("other-site", code("other-site"), namespace=None)
    cf.workers.domains.update(account_id="local", hostname="site.example.com", service="site",
                              zone_name="example.com")
    cf.workers.domains.update(account_id="local", hostname="other.example.com", service="other-site",
                              zone_name="example.com")
    assert server.request("/", host="site.example.com").body == b"site"
    assert server.admin("DELETE", f"{PS}/site").status == 200
    domains = server.admin("GET", f"{A}/workers/domains").json()["result"]
    assert [d["hostname"] for d in domains] == ["other.example.com"]  # only the deleted script's went
    assert server.request("/", host="site.example.com").status == 404
    # A new script of that name does not get the host name back.
    server.deploy("site", code("site"), namespace=None)
    assert server.request("/", host="site.example.com").status == 404
    assert server.request("/", host="other.example.com").body == b"other-site"
    for d in server.admin("GET", f"{A}/workers/domains").json()["result"]:
        assert server.admin("DELETE", f"{A}/workers/domains/{d['id']}").status == 200
    for name in ("site", "other-site"):
        assert server.admin("DELETE", f"{PS}/{name}").status == 200


# -- 4. Worker names as Cloudflare takes them ----------------------------------------


# 64 characters failed the path's own check first, with another code (10400).
@pytest.mark.parametrize("name", ["Upper", "mixedCase", "-leading-dash", "x" * 64])
@pytest.mark.parametrize("namespace", [None, NS])
def test_a_worker_name_cloudflare_refuses_is_refused_at_upload(server, name, namespace):
    resp = server.deploy(name, code(name), namespace=namespace, check=False)
    refused(resp, 400, "invalid Worker name", repr(name), "lowercase")
    assert error_code(resp) == 10016
    path = f"{PS}/{name}" if namespace is None else f"{A}/workers/dispatch/namespaces/{NS}/scripts/{name}"
    assert len(name) > 63 or not exists(server, path)  # a name no script may have: no lookup at all


def test_lowercase_digits_dashes_and_underscores_are_a_worker_name(server):
    name = "a" * 60 + "_-1"
    server.deploy(name, code(name), namespace=NS)
    assert server.admin("DELETE", f"{A}/workers/dispatch/namespaces/{NS}/scripts/{name}").status == 200


# -- 5. environment variables within Cloudflare's limits --------------------------------


def test_a_variable_or_secret_over_5_kb_is_refused(server, cf):
    fits = [{"type": "plain_text", "name": "FITS", "text": "x" * 5120}]
    server.deploy("vars", code("vars"), namespace=NS, bindings=fits)
    resp = server.deploy("vars", code("vars"), namespace=NS, check=False,
                         bindings=[{"type": "plain_text", "name": "BIG", "text": "é" * 2561}])
    refused(resp, 400, "'BIG'", "5122 bytes", "5 KB")
    resp = server.deploy("vars", code("vars"), namespace=NS, check=False,
                         bindings=[{"type": "json", "name": "DOC", "json": {"a": "x" * 5200}}])
    refused(resp, 400, "'DOC'", "5 KB")
    secrets = f"{A}/workers/dispatch/namespaces/{NS}/scripts/vars/secrets"
    refused(server.admin("PUT", secrets, {"name": "TOKEN", "text": "s" * 5121, "type": "secret_text"}), 400,
            "secret_text binding 'TOKEN'", "5121 bytes", "5 KB")
    assert server.admin("PUT", secrets, {"name": "TOKEN", "text": "s" * 5120, "type": "secret_text"}).status == 200
    with pytest.raises(cloudflare.BadRequestError, match="5 KB"):
        cf.workers_for_platforms.dispatch.namespaces.scripts.secrets.update(
            "vars", account_id="local", dispatch_namespace=NS, name="TOKEN2", text="s" * 6000,
            type="secret_text")
    assert [s["name"] for s in server.admin("GET", secrets).json()["result"]] == ["TOKEN"]


def test_more_than_128_variables_are_refused(server):
    many = [{"type": "plain_text", "name": f"V{i}", "text": "v"} for i in range(129)]
    refused(server.deploy("many", code("many"), namespace=NS, check=False, bindings=many), 400,
            "129 environment variables", "128")
    server.deploy("many", code("many"), namespace=NS, bindings=many[:128])
    secrets = f"{A}/workers/dispatch/namespaces/{NS}/scripts/many/secrets"
    refused(server.admin("PUT", secrets, {"name": "ONE_MORE", "text": "s", "type": "secret_text"}), 400,
            "129 environment variables", "128")
    # Bindings that are not variables do not count.
    server.deploy("many", code("many"), namespace=NS, bindings=[
        *many[:128], {"type": "kv_namespace", "name": "KV", "namespace_id": "kv-1"}])


# -- 6. compatibility flags Cloudflare knows ----------------------------------------


def test_an_unknown_compatibility_flag_is_refused(server):
    resp = server.deploy("flags", code("flags"), namespace=NS, check=False, extra_metadata={
        "compatibility_date": "2025-06-01", "compatibility_flags": ["python_workers", "no_such_flag_x"]})
    refused(resp, 400, "No such compatibility flag: no_such_flag_x")
    assert error_code(resp) == 10021
    known = ["python_workers", "python_workflows", "nodejs_compat", "no_nodejs_compat_v2",
             "python_no_global_handlers", "url_standard"]
    server.deploy("flags", code("flags"), namespace=NS, extra_metadata={
        "compatibility_date": "2025-06-01", "compatibility_flags": known})
    settings = f"{A}/workers/dispatch/namespaces/{NS}/scripts/flags/settings"
    refused(server.admin("PATCH", settings, {"compatibility_flags": ["python_workers", "typo_flag"]}), 400,
            "No such compatibility flag: typo_flag")
    got = server.admin("GET", f"{A}/workers/dispatch/namespaces/{NS}/scripts/flags").json()["result"]
    assert got["compatibility_flags"] == known


# -- 7. a live tail of no script --------------------------------------------------------


def _tail_head(server, query: str) -> tuple[int, bytes]:
    """GET /tail's status, and its body when it is not a stream (the connection closes after)."""
    conn = UnixHTTPConnection(server.socket_path)
    try:
        conn.request("GET", f"/tail?{query}")
        resp = conn.getresponse()
        return resp.status, resp.read() if resp.status != 200 else b""
    finally:
        conn.close()


def test_a_live_tail_of_a_script_that_does_not_exist_is_a_404(server):
    status, body = _tail_head(server, "script=ghost")
    assert status == 404
    error = json.loads(body)["errors"][0]
    assert error["code"] == 10007 and "'ghost'" in error["message"]
    server.deploy("tailed", code("tailed"), namespace=NS)
    status, body = _tail_head(server, f"namespace={NS}&script=ghost")
    assert status == 404 and NS in json.loads(body)["errors"][0]["message"]
    assert _tail_head(server, "namespace=elsewhere&script=tailed")[0] == 404
    # A script that exists streams, with or without its namespace; so does a tail of no script.
    assert _tail_head(server, f"namespace={NS}&script=tailed")[0] == 200
    assert _tail_head(server, "script=tailed")[0] == 200
    assert _tail_head(server, "")[0] == 200
    # A bad filter is still a 400 first, whatever the script.
    assert _tail_head(server, "script=ghost&colour=red")[0] == 400
    # wrangler tail's path (a tail session, then its WebSocket) refuses an unknown script too.
    refused(server.admin("POST", f"{PS}/ghost/tails", b""), 404, "ghost")


def test_a_live_tail_of_a_namespace_that_does_not_exist_is_a_404(server):
    # It would stream nothing, forever, as a tail of an unknown script would.
    status, body = _tail_head(server, "namespace=ghostns")
    assert status == 404
    assert "'ghostns' does not exist" in json.loads(body)["errors"][0]["message"]
    server.namespace("tailns")
    assert _tail_head(server, "namespace=tailns")[0] == 200


# -- 8. a Python module is text ------------------------------------------------------------


@pytest.mark.parametrize("module", ["worker.py", "lib/util.py"])
def test_a_python_module_that_is_not_utf8_is_refused(server, module):
    path = f"{A}/workers/dispatch/namespaces/{NS}/scripts/latin"
    modules: dict[str, str | bytes] = {"worker.py": code("text"), "lib/util.py": "NAME = 1\n"}
    modules[module] = modules[module].encode() + b"NAME = '\xe9t\xe9'\n"
    body, ctype = multipart({"main_module": "worker.py"}, modules)
    refused(server.admin("PUT", path, body, ctype), 400, module, "is not utf-8 text (byte")
    assert not exists(server, path)
    # A coding line makes it text of that encoding, as Python reads it (and the CLI).
    modules[module] = b"# -*- coding: latin-1 -*-\n" + modules[module]
    body, ctype = multipart({"main_module": "worker.py"}, modules)
    resp = server.admin("PUT", path, body, ctype)
    assert resp.status == 200, resp
    assert server.admin("DELETE", path).status == 200
