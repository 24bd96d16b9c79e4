"""The requests Cloudflare's CLI, wrangler 4, sends for what a platform does
with it (whoami, deploy of a platform script and of a user worker into a
dispatch namespace, secrets, versions, deployments, rollback,
dispatch-namespace), replayed against a real `corral serve` over its TCP
admin listener with an API token, as wrangler sends them: the paths under
``/client/v4``, its queries, User-Agent and multipart upload. Each test
asserts what wrangler reads from the answer (scripts/wrangler_check runs
wrangler itself, where npm is at hand)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.harness import with_tcp_admin

A = "/client/v4/accounts/local"
UA = "wrangler/4.86.0"
ENTRY = b'''from workers import Response, WorkerEntrypoint
from helper import suffix

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(f"{self.env.GREETING} {suffix()}")
'''
HELPER = b'def suffix():\n    return "from wrangler"\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    corral = with_tcp_admin(tmp_path_factory.mktemp("wrangler")).start()
    corral.namespace("customers")
    yield corral
    corral.stop()


def _token(server, scope="admin", namespaces=()):
    resp = server.admin("POST", "/accounts/local/corral/tokens",
                        {"name": f"wrangler-{scope}", "scope": scope, "namespaces": list(namespaces)})
    assert resp.status == 200, resp
    return resp.json()["result"]


@pytest.fixture(scope="module")
def token(server):
    return _token(server)


def _client(server, secret):
    return httpx.Client(base_url=f"http://127.0.0.1:{server.tcp_port}", timeout=60,
                        headers={"authorization": f"Bearer {secret}", "user-agent": UA, "accept": "*/*"})


@pytest.fixture(scope="module")
def wr(server, token):
    with _client(server, token["value"]) as client:
        yield client


def _form(metadata: dict, modules: dict[str, bytes]) -> tuple[bytes, str]:
    """wrangler's upload (undici's FormData): a ``metadata`` part, then one
    part per module named after its file, with that filename and
    ``text/x-python`` for Python modules."""
    boundary = "----formdata-undici-043641869466"
    out = [f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'.encode()
           + json.dumps(metadata, separators=(",", ":")).encode() + b"\r\n"]
    for name, data in modules.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
                   f"Content-Type: text/x-python\r\n\r\n".encode() + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def _metadata(greeting="hi"):
    return {"main_module": "entry.py",
            "bindings": [{"name": "GREETING", "type": "plain_text", "text": greeting},
                         {"name": "KV", "type": "kv_namespace", "namespace_id": "kv-1"}],
            "compatibility_date": "2025-06-01", "compatibility_flags": ["python_workers"]}


def _upload(wr, method, path, params, greeting="hi"):
    body, ctype = _form(_metadata(greeting), {"entry.py": ENTRY, "helper.py": HELPER})
    return wr.request(method, path, params=params, content=body, headers={"content-type": ctype})


def _error(resp, status, code):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["success"] is False and body["result"] is None
    assert body["errors"][0]["code"] == code, body
    return body["errors"][0]["message"]


def test_whoami(wr, token):
    # wrangler whoami: an account token fails the user token check with code 1000 ...
    assert "account" in _error(wr.get("/client/v4/user/tokens/verify"), 401, 1000)
    # ... has no user (9109 makes wrangler print no email) ...
    _error(wr.get("/client/v4/user"), 403, 9109)
    _error(wr.get("/client/v4/memberships"), 403, 9109)
    # ... and lists the accounts it reaches.
    accounts = wr.get("/client/v4/accounts", params={"page": "1"}).json()
    assert [a["id"] for a in accounts["result"]] == ["local"] and accounts["result"][0]["name"]
    verified = wr.get(f"{A}/tokens/verify").json()["result"]
    assert verified == {"id": token["id"], "status": "active"}


def test_a_token_verifies_only_under_corrals_account(server, wr):
    # A client configured with another account id learns it at the token check.
    message = _error(wr.get("/client/v4/accounts/0123456789abcdef0123456789abcdef/tokens/verify"), 403, 9109)
    assert "'local'" in message and "0123456789abcdef" in message
    assert "admin.error" in server.log()


def test_a_namespace_token_verifies_itself(server):
    bound = _token(server, "deploy", ["customers"])
    with _client(server, bound["value"]) as client:
        assert client.get(f"{A}/tokens/verify").json()["result"]["id"] == bound["id"]
        assert client.get("/client/v4/accounts").status_code == 200
        _error(client.get(f"{A}/workers/services/anything"), 403, 10403)


def test_deploy_platform_script(wr):
    # First deploy: the service and its deployments do not exist (10007 means "new worker").
    _error(wr.get(f"{A}/workers/services/dispatcher"), 404, 10007)
    _error(wr.get(f"{A}/workers/scripts/dispatcher/deployments"), 404, 10007)
    resp = _upload(wr, "PUT", f"{A}/workers/scripts/dispatcher",
                   {"excludeScript": "true", "bindings_inherit": "strict"})
    assert resp.status_code == 200, resp.text
    first = resp.json()["result"]
    assert first["deployment_id"] == first["version_id"] and first["etag"]
    # Triggers: no workers.dev subdomain (10007), the script's workers.dev route off and kept off.
    assert "workers.dev" in _error(wr.get(f"{A}/workers/subdomain"), 404, 10007)
    off = {"enabled": False, "previews_enabled": False}
    assert wr.get(f"{A}/workers/scripts/dispatcher/subdomain").json()["result"] == off
    resp = wr.post(f"{A}/workers/scripts/dispatcher/subdomain", json={"enabled": False, "previews_enabled": False},
                   headers={"cloudflare-workers-script-api-date": "2025-08-01"})
    assert resp.json()["result"] == off
    assert "workers_dev" in _error(wr.post(f"{A}/workers/scripts/dispatcher/subdomain", json={"enabled": True}),
                                   501, 10501)
    _error(wr.get(f"{A}/workers/scripts/nope/subdomain"), 404, 10007)

    # Second deploy: the service exists, deployed by wrangler; a version, then a deployment.
    service = wr.get(f"{A}/workers/services/dispatcher").json()["result"]
    script = service["default_environment"]["script"]
    assert script["last_deployed_from"] == "wrangler" and script["tag"] and script["tags"] == []
    assert service["default_environment"]["environment"] == "production"
    resp = _upload(wr, "POST", f"{A}/workers/scripts/dispatcher/versions", {"bindings_inherit": "strict"},
                   greeting="hello")
    version = resp.json()["result"]
    assert resp.status_code == 200 and version["resources"]["script"]["etag"] and version["id"]
    resp = wr.post(f"{A}/workers/scripts/dispatcher/deployments",
                   json={"strategy": "percentage", "versions": [{"version_id": version["id"], "percentage": 100}],
                         "annotations": {}})
    assert resp.status_code == 200 and resp.json()["result"]["source"] == "wrangler"
    resp = wr.patch(f"{A}/workers/scripts/dispatcher/script-settings",
                    json={"observability": {"enabled": False}, "tags": ["platform"]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"]["tags"] == ["platform"]
    assert wr.get(f"{A}/workers/scripts/dispatcher/script-settings").json()["result"]["tags"] == ["platform"]
    _error(wr.patch(f"{A}/workers/scripts/dispatcher/script-settings", json={"logpush": True}), 501, 10501)
    _error(wr.patch(f"{A}/workers/scripts/dispatcher/script-settings", json={"tags": "x"}), 400, 10400)


def test_deploy_user_worker(wr):
    resp = _upload(wr, "PUT", f"{A}/workers/dispatch/namespaces/customers/scripts/hello-py",
                   {"excludeScript": "true", "bindings_inherit": "strict"})
    assert resp.status_code == 200, resp.text
    result = resp.json()["result"]
    assert result["deployment_id"] == result["version_id"] and result["dispatch_namespace"] == "customers"
    # A user worker is no service of the account.
    _error(wr.get(f"{A}/workers/services/hello-py"), 404, 10007)


def test_secrets_versions_deployments_rollback(wr):
    _upload(wr, "PUT", f"{A}/workers/scripts/sec", {"excludeScript": "true", "bindings_inherit": "strict"})
    resp = wr.put(f"{A}/workers/scripts/sec/secrets", json={"name": "TOKEN", "text": "s3cr3t", "type": "secret_text"})
    assert resp.json()["result"] == {"name": "TOKEN", "type": "secret_text"}
    assert wr.get(f"{A}/workers/scripts/sec/secrets").json()["result"] == [{"name": "TOKEN", "type": "secret_text"}]
    assert wr.delete(f"{A}/workers/scripts/sec/secrets/TOKEN", params={"url_encoded": "true"}).status_code == 200
    _error(wr.delete(f"{A}/workers/scripts/sec/secrets/TOKEN", params={"url_encoded": "true"}), 404, 10056)

    versions = wr.get(f"{A}/workers/scripts/sec/versions", params={"deployable": "true"}).json()["result"]["items"]
    assert len(versions) == 3 and versions[-1]["metadata"]["source"] == "wrangler"
    # Each with its bindings (wrangler's `versions secret list --latest-version` reads them): the
    # secret is in the version the put made, gone from the one the delete made.
    assert [[b["name"] for b in v["resources"]["bindings"] if b["type"] == "secret_text"] for v in versions] == [
        [], ["TOKEN"], []]
    deployments = wr.get(f"{A}/workers/scripts/sec/deployments").json()["result"]["deployments"]
    assert deployments[0]["versions"][0]["version_id"] == versions[0]["id"]
    one = wr.get(f"{A}/workers/scripts/sec/versions/{versions[1]['id']}").json()["result"]
    assert one["resources"]["script"]["handlers"] == ["fetch"]
    # wrangler rollback: a deployment of the one before, with its message. That
    # version has the secret the deployed one deleted: 10220 naming it, which
    # wrangler shows and confirms before it forces the rollback.
    body = {"strategy": "percentage", "versions": [{"version_id": versions[1]["id"], "percentage": 100}],
            "annotations": {"workers/message": "back"}}
    refused = wr.post(f"{A}/workers/scripts/sec/deployments", json=body)
    _error(refused, 409, 10220)
    assert refused.json()["errors"][0]["message"].endswith("The following secrets have changed: TOKEN")
    resp = wr.post(f"{A}/workers/scripts/sec/deployments", json=body, params={"force": "true"})
    assert resp.json()["result"]["annotations"] == {"workers/message": "back"}
    latest = wr.get(f"{A}/workers/scripts/sec/deployments").json()["result"]["deployments"][0]
    assert latest["versions"][0]["version_id"] == versions[1]["id"]


def test_dispatch_namespace_commands(wr):
    assert wr.post(f"{A}/workers/dispatch/namespaces", json={"name": "staging"}).status_code == 200
    got = wr.get(f"{A}/workers/dispatch/namespaces/staging").json()["result"]
    assert got["namespace_name"] == "staging" and got["namespace_id"]
    assert "staging" in [n["namespace_name"] for n in wr.get(f"{A}/workers/dispatch/namespaces").json()["result"]]
    # wrangler dispatch-namespace rename: Cloudflare's API documents no rename; a clear 405.
    _error(wr.put(f"{A}/workers/dispatch/namespaces/staging", json={"name": "staging2"}), 405, 10405)
    assert wr.delete(f"{A}/workers/dispatch/namespaces/staging").status_code == 200


def test_delete_service(wr):
    _upload(wr, "PUT", f"{A}/workers/scripts/doomed", {"excludeScript": "true"})
    assert wr.delete(f"{A}/workers/services/doomed", params={"force": "false"}).status_code == 200
    _error(wr.get(f"{A}/workers/services/doomed"), 404, 10007)


def test_delete_lists_kv_namespaces(wr):
    # wrangler delete, after deleting the script, lists the account's KV
    # namespaces (100 a page, by title) looking for its Workers Sites ones.
    _upload(wr, "PUT", f"{A}/workers/scripts/kv-user", {"excludeScript": "true"})
    assert wr.delete(f"{A}/workers/services/kv-user", params={"force": "false"}).status_code == 200
    resp = wr.get(f"{A}/storage/kv/namespaces",
                  params={"per_page": "100", "order": "title", "direction": "asc", "page": "1"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    # The platform scripts left (dispatcher, sec) bind kv-1: Corral's KV namespaces are the ids bound.
    assert body["result"] == [{"id": "kv-1", "title": "kv-1", "supports_url_encoding": True}]
    assert body["result_info"] == {"page": 1, "per_page": 100, "count": 1, "total_count": 1, "total_pages": 1}
    assert wr.get(f"{A}/storage/kv/namespaces", params={"page": "2"}).json()["result"] == []
    assert wr.get(f"{A}/storage/kv/namespaces/kv-1").json()["result"]["id"] == "kv-1"
    # A dispatch namespace's KV namespaces are its own (?namespace=, as for D1 queries).
    listed = wr.get(f"{A}/storage/kv/namespaces", params={"namespace": "customers"}).json()["result"]
    assert [n["id"] for n in listed] == ["kv-1"]
    _error(wr.get(f"{A}/storage/kv/namespaces", params={"namespace": "staging-none"}), 404, 10404)
    assert "per_page" in _error(wr.get(f"{A}/storage/kv/namespaces", params={"per_page": "0"}), 400, 10400)
    assert "direction" in _error(wr.get(f"{A}/storage/kv/namespaces", params={"direction": "up"}), 400, 10400)
    assert "kv_namespace" in _error(wr.get(f"{A}/storage/kv/namespaces/nope"), 404, 10404)
    # A namespace wrangler makes (`wrangler kv namespace create`) gets a new id, its title kept.
    made = wr.post(f"{A}/storage/kv/namespaces", json={"title": "t"}).json()["result"]
    assert made["title"] == "t" and len(made["id"]) == 32 and made["id"] != "kv-1"
    # One that deployed scripts bind is not deleted under them.
    assert "bound by" in _error(wr.delete(f"{A}/storage/kv/namespaces/kv-1"), 409, 10409)


def test_delete_asks_what_refers_to_the_script(wr):
    # wrangler delete (without --force) first asks what would break: the
    # script's references and the scripts tailing to it.
    _upload(wr, "PUT", f"{A}/workers/scripts/logger", {"excludeScript": "true"})
    meta = _metadata()
    meta["bindings"].append({"name": "LOG", "type": "service", "service": "logger"})
    meta["tail_consumers"] = [{"service": "logger"}]
    body, ctype = _form(meta, {"entry.py": ENTRY, "helper.py": HELPER})
    resp = wr.put(f"{A}/workers/scripts/producer", content=body, headers={"content-type": ctype})
    assert resp.status_code == 200, resp.text

    refs = wr.get(f"{A}/workers/scripts/logger/references").json()["result"]
    assert refs["services"]["incoming"] == [{"name": "LOG", "service": "producer", "environment": "production"}]
    assert refs["durable_objects"] == [] and refs["dispatch_outbounds"] == []
    assert wr.get(f"{A}/workers/scripts/producer/references").json()["result"]["services"]["outgoing"] == [
        {"name": "LOG", "service": "logger", "environment": "production"}]
    tails = wr.get(f"{A}/workers/tails/by-consumer/logger").json()["result"]
    assert [t["producer"] for t in tails] == [{"service": "producer", "environment": "production"}]
    assert wr.get(f"{A}/workers/tails/by-consumer/producer").json()["result"] == []
    _error(wr.get(f"{A}/workers/scripts/nope/references"), 404, 10007)


def _upload_with(wr, path, extra_bindings):
    meta = _metadata()
    meta["bindings"] += extra_bindings
    body, ctype = _form(meta, {"entry.py": ENTRY, "helper.py": HELPER})
    return wr.put(path, content=body, headers={"content-type": ctype})


def test_a_user_worker_cannot_bind_a_sibling(server, wr):
    # Cloudflare refuses at upload (10143) a service binding it cannot resolve:
    # one to another user worker of the namespace, or to no script at all.
    # Service bindings reach the account's (platform) scripts only.
    ns = f"{A}/workers/dispatch/namespaces/customers/scripts"
    assert _upload_with(wr, f"{ns}/sibling", []).status_code == 200
    resp = _upload_with(wr, f"{ns}/caller", [{"name": "SIB", "type": "service", "service": "sibling"}])
    message = _error(resp, 400, 10143)
    assert "'SIB'" in message and "'sibling'" in message and "user worker" in message
    message = _error(_upload_with(wr, f"{ns}/caller", [{"name": "GONE", "type": "service", "service": "gone"}]),
                     400, 10143)
    assert "'GONE'" in message and "no platform script 'gone'" in message
    _error(wr.get(f"{ns}/caller"), 404, 10007)  # nothing was stored
    # A platform script is what a service binding reaches.
    _upload(wr, "PUT", f"{A}/workers/scripts/shared", {})
    assert _upload_with(wr, f"{ns}/caller", [{"name": "SH", "type": "service", "service": "shared"}]
                        ).status_code == 200
    # Settings cannot add one either.
    resp = wr.patch(f"{ns}/caller/settings", json={"bindings": [
        {"name": "SIB", "type": "service", "service": "sibling"}]})
    assert "'SIB'" in _error(resp, 400, 10143)
    assert '"code":10143' in server.log()


def test_a_platform_script_binds_only_a_deployed_script_or_itself(server, wr):
    # As Cloudflare refuses it (10143) for any Worker: a platform script too.
    path = f"{A}/workers/scripts/binder"
    message = _error(_upload_with(wr, path, [{"name": "GONE", "type": "service", "service": "gone-too"}]),
                     400, 10143)
    assert "'GONE'" in message and "no platform script 'gone-too'" in message
    _error(wr.get(path), 404, 10007)  # nothing was stored
    # Itself (its own entrypoints) and a deployed platform script are bound.
    _upload(wr, "PUT", f"{A}/workers/scripts/target", {})
    assert _upload_with(wr, path, [{"name": "SELF", "type": "service", "service": "binder"},
                                   {"name": "T", "type": "service", "service": "target"}]).status_code == 200


def _logged(server, event):
    lines = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            lines.append(entry)
    return lines


def test_a_refused_subdomain_is_a_warning_without_traceback(server, wr):
    # Turning workers.dev on is refused (501): the caller's to change, not a
    # fault of Corral's, so the log says it plainly, as it says a 4xx.
    _upload(wr, "PUT", f"{A}/workers/scripts/nodev", {})
    path = f"{A}/workers/scripts/nodev/subdomain"
    _error(wr.post(path, json={"enabled": True}), 501, 10501)
    [line] = [e for e in _logged(server, "admin.error") if e["path"] == path]
    assert line["level"] == "warning" and line["status"] == 501 and "traceback" not in line, line
    assert "workers.dev" in line["message"]


def test_secret_bulk_keeps_the_bindings_it_names_by_type_only(server, wr):
    # wrangler 4's `secret bulk`: PATCH .../settings with a multipart
    # `settings` part, every binding it leaves alone by type and name only.
    path = f"{A}/workers/scripts/bulky"
    assert _upload(wr, "PUT", path, {}).status_code == 200
    bindings = [{"type": "plain_text", "name": "GREETING"}, {"type": "kv_namespace", "name": "KV"},
                {"type": "secret_text", "name": "A", "text": "1"}, {"type": "secret_text", "name": "B", "text": "2"}]
    form = httpx.Request("PATCH", "http://x", files={"settings": (None, json.dumps({"bindings": bindings}))})
    resp = wr.patch(f"{path}/settings", content=form.read(), headers={"content-type": form.headers["content-type"]})
    assert resp.status_code == 200, resp.text
    kept = {b["name"]: b for b in resp.json()["result"]["bindings"]}
    assert kept["GREETING"] == {"type": "plain_text", "name": "GREETING", "text": "hi"}
    assert kept["KV"]["namespace_id"] == "kv-1" and set(kept) == {"GREETING", "KV", "A", "B"}
    # By type and name, a binding the script does not have is still refused, naming what it lacks.
    resp = wr.patch(f"{path}/settings", json={"bindings": [{"type": "d1", "name": "DB"}]})
    assert "missing required field `id`" in _error(resp, 400, 10400)
