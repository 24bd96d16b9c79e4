"""The admin REST API, driven through AdminAPI.handle against a real SQLite store."""

import json
import logging

import msgspec
import pytest
import trio

from supervisor.admin.api import AdminAPI
from supervisor.admin.multipart import Part, encode
from supervisor.model import PLATFORM, LoadCheck
from supervisor.store.store import Store

NS = "/accounts/local/workers/dispatch/namespaces"
PS = "/accounts/local/workers/scripts"
ROUTES = "/accounts/local/workers/routes"
CODE = b"from workers import Response, WorkerEntrypoint\n"


class Hooks:
    """Records what the API told the rest of the supervisor."""

    def __init__(self):
        self.validated = []
        self.changed = []
        self.fail = None

    async def validate(self, record):
        self.validated.append(record)
        return LoadCheck(self.fail, ("fetch",))

    def script_changed(self, namespace, name):
        self.changed.append((namespace, name))

    def metrics_text(self):
        return "# TYPE corral_up gauge\ncorral_up 1\n"


class Client:
    def __init__(self, tmp_path, **kw):
        self.path = tmp_path / "corral.db"
        self.store = Store(self.path)
        self.hooks = Hooks()
        self.api = AdminAPI(self.store, self.hooks, **kw)

    def reopen(self):
        self.store.close()
        self.store = Store(self.path)
        self.api = AdminAPI(self.store, self.hooks)

    def raw(self, method, target, body=b"", headers=()):
        return trio.run(self.api.handle, method, target, list(headers), body)

    def __call__(self, method, target, body=None, *, headers=(), expect=200):
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = [*headers, (b"content-type", b"application/json")]
        status, hdrs, payload = self.raw(method, target, body or b"", headers)
        assert (b"content-type", b"application/json") in hdrs
        envelope = json.loads(payload)
        assert set(envelope) >= {"success", "errors", "messages", "result"}
        assert status == expect, (status, envelope)
        assert envelope["success"] is (status < 400)
        if status >= 400:
            assert envelope["result"] is None
            assert len(envelope["errors"]) == 1
            err = envelope["errors"][0]
            assert isinstance(err["code"], int) and err["message"]
        return envelope

    def upload(self, target, metadata, modules=None, *, expect=200, content_type=None):
        modules = {"worker.py": CODE} if modules is None else modules
        parts = [Part(name="metadata", data=json.dumps(metadata).encode(), content_type="application/json")]
        parts += [Part(name=k, filename=k.rsplit("/", 1)[-1], data=v) for k, v in modules.items()]
        ct, body = encode(parts)
        return self("PUT", target, body, headers=[(b"content-type", (content_type or ct).encode())],
                    expect=expect)


@pytest.fixture
def client(tmp_path):
    c = Client(tmp_path)
    yield c
    c.store.close()


def error_message(envelope):
    return envelope["errors"][0]["message"]


SECRET_META = {
    "main_module": "worker.py",
    "bindings": [
        {"type": "plain_text", "name": "GREETING", "text": "hi"},
        {"type": "secret_text", "name": "TOKEN", "text": "s3cret"},
        {"type": "json", "name": "CONF", "json": {"a": [1, 2]}},
        {"type": "kv_namespace", "name": "KV", "namespace_id": "kv-1"},
        {"type": "d1", "name": "DB", "id": "db-1"},
        {"type": "r2_bucket", "name": "BUCKET", "bucket_name": "b-1"},
        {"type": "service", "name": "AUTH", "service": "auth"},
    ],
    "tags": ["plan:free", "user:42"],
    "tail_consumers": [{"service": "logger"}],
    "compatibility_date": "2025-06-01",
}


# -- namespaces ------------------------------------------------------------------


def test_namespaces_lifecycle(client):
    env = client("GET", NS)
    assert [n["namespace_name"] for n in env["result"]] == ["default"]
    created = client("POST", NS, {"name": "customers"})["result"]
    assert created["name"] == "customers" and created["namespace_id"] and created["script_count"] == 0
    env = client("POST", NS, {"name": "customers"}, expect=409)
    assert "already exists" in error_message(env)
    client("POST", NS, {"name": "bad name"}, expect=400)
    client("POST", NS, {"nom": "x"}, expect=400)
    client("POST", NS, b"{not json", headers=[(b"content-type", b"application/json")], expect=400)
    client("POST", NS, expect=400)  # empty body
    assert client("GET", f"{NS}/customers")["result"]["name"] == "customers"
    client("GET", f"{NS}/nope", expect=404)
    client.upload(f"{NS}/customers/scripts/a", {"main_module": "worker.py"})
    assert client("GET", f"{NS}/customers")["result"]["script_count"] == 1
    client.hooks.changed.clear()
    assert client("DELETE", f"{NS}/customers")["result"] == {"name": "customers", "scripts_deleted": 1}
    assert client.hooks.changed == [("customers", "a")]
    client("DELETE", f"{NS}/customers", expect=404)


# -- upload and script metadata --------------------------------------------------------


def test_upload_get_hides_secrets(client):
    client.upload(f"{PS}/auth", {"main_module": "worker.py"})  # the platform script AUTH binds
    client.hooks.changed.clear()
    client.hooks.validated.clear()
    env = client.upload(f"{NS}/default/scripts/hello", SECRET_META,
                        {"worker.py": CODE, "src/lib/util.py": b"X = 1\n"})
    result = env["result"]
    assert result["id"] == "hello" and result["dispatch_namespace"] == "default"
    assert len(result["etag"]) == 32 and result["etag"] == result["version"]
    assert client.hooks.changed == [("default", "hello")]
    [record] = client.hooks.validated
    assert record.modules == {"worker.py": CODE, "src/lib/util.py": b"X = 1\n"}
    # the sandbox needs it
    assert {"type": "secret_text", "name": "TOKEN", "text": "s3cret"} in msgspec.to_builtins(record.bindings)
    got = client("GET", f"{NS}/default/scripts/hello")["result"]
    assert b"s3cret" not in json.dumps(got).encode()
    assert {"type": "secret_text", "name": "TOKEN"} in got["bindings"]
    assert {"type": "plain_text", "name": "GREETING", "text": "hi"} in got["bindings"]
    assert got["main_module"] == "worker.py"
    assert got["modules"] == [{"name": "src/lib/util.py", "size": 6}, {"name": "worker.py", "size": len(CODE)}]
    assert got["tags"] == ["plan:free", "user:42"]
    assert got["tail_consumers"] == [{"service": "logger"}]
    assert got["compatibility_date"] == "2025-06-01"
    assert got["created_on"] and got["modified_on"]
    assert "code" not in got and CODE.decode() not in json.dumps(got)
    # the upload answer hides secrets too
    assert "s3cret" not in json.dumps(result)
    # listing hides them as well
    listed = client("GET", f"{NS}/default/scripts")["result"]
    assert "s3cret" not in json.dumps(listed) and "modules" not in listed[0]


def test_redeploy_changes_version_keeps_created_on(client):
    first = client.upload(f"{NS}/default/scripts/s", {"main_module": "worker.py"})["result"]
    same = client.upload(f"{NS}/default/scripts/s", {"main_module": "worker.py"})["result"]
    assert same["version"] == first["version"]
    second = client.upload(f"{NS}/default/scripts/s", {"main_module": "worker.py"},
                           {"worker.py": CODE + b"# v2\n"})["result"]
    assert second["version"] != first["version"]
    assert second["created_on"] == first["created_on"]
    third = client.upload(f"{NS}/default/scripts/s", {"main_module": "worker.py", "bindings": [
        {"type": "plain_text", "name": "A", "text": "1"}]}, {"worker.py": CODE + b"# v2\n"})["result"]
    assert third["version"] != second["version"]  # bindings are part of the version


def test_redeploy_without_tags_keeps_them(client):
    target = f"{NS}/default/scripts/s"
    client.upload(target, {"main_module": "worker.py", "tags": ["a", "b"]})
    assert client.upload(target, {"main_module": "worker.py"})["result"]["tags"] == ["a", "b"]
    assert client.upload(target, {"main_module": "worker.py", "tags": ["c"]})["result"]["tags"] == ["c"]
    assert client.upload(target, {"main_module": "worker.py", "tags": []})["result"]["tags"] == []


def test_keep_bindings_and_inherit_carry_secrets_over(client):
    client.upload(f"{PS}/auth", {"main_module": "worker.py"})  # the platform script AUTH binds
    client.upload(f"{PS}/s", SECRET_META)
    client.upload(f"{PS}/s", {"main_module": "worker.py", "keep_bindings": ["secret_text"]})
    record = client.store.get_script(PLATFORM, "s")
    assert msgspec.to_builtins(record.bindings) == [{"type": "secret_text", "name": "TOKEN", "text": "s3cret"}]
    client.upload(f"{PS}/s", {"main_module": "worker.py", "bindings": [{"type": "inherit", "name": "TOKEN"}]})
    assert client.store.get_script(PLATFORM, "s").bindings[0].text == "s3cret"
    with_token = client.store.get_script(PLATFORM, "s").version_id
    # old_name renames it; version_id takes it from that version (Cloudflare's inherit fields).
    client.upload(f"{PS}/s", {"main_module": "worker.py", "bindings": [
        {"type": "inherit", "name": "RENAMED", "old_name": "TOKEN"}]})
    assert msgspec.to_builtins(client.store.get_script(PLATFORM, "s").bindings) == [
        {"type": "secret_text", "name": "RENAMED", "text": "s3cret"}]
    # A secret outlives an upload of code that does not bind its name, as a
    # Worker's secrets outlive wrangler deploy on Cloudflare.
    client.upload(f"{PS}/s", {"main_module": "worker.py"})
    assert [b.name for b in client.store.get_script(PLATFORM, "s").bindings] == ["RENAMED"]
    client("DELETE", f"{PS}/s/secrets/RENAMED")  # the latest has none now
    client.upload(f"{PS}/s", {"main_module": "worker.py", "bindings": [
        {"type": "inherit", "name": "TOKEN", "version_id": with_token}]})
    assert client.store.get_script(PLATFORM, "s").bindings[0].text == "s3cret"
    # One that names nothing is dropped, as Cloudflare drops it, unless bindings_inherit=strict.
    nothing = {"main_module": "worker.py", "bindings": [{"type": "inherit", "name": "NO"}]}
    client.upload(f"{PS}/s", nothing)
    assert [b.name for b in client.store.get_script(PLATFORM, "s").bindings] == ["TOKEN"]
    env = client.upload(f"{PS}/s?bindings_inherit=strict", nothing, expect=400)
    assert "'inherit' but the script's latest version has no binding named 'NO'" in error_message(env)
    env = client.upload(f"{PS}/s?bindings_inherit=strict", {"main_module": "worker.py", "bindings": [
        {"type": "inherit", "name": "TOKEN", "version_id": "0" * 32}]}, expect=400)
    assert "which the script does not have" in error_message(env)


def test_inherit_takes_the_latest_version_not_the_deployed_one(client):
    """Cloudflare's ``inherit`` "defaults to inheriting the binding from the
    latest version": wrangler's ``versions secret put`` after a ``versions
    upload`` (not deployed) sends the latest version's bindings as inherit,
    and was refused, or given the deployed version's values."""
    def version(bindings):
        parts = [Part(name="metadata", content_type="application/json",
                      data=json.dumps({"main_module": "worker.py", "bindings": bindings}).encode()),
                 Part(name="worker.py", filename="worker.py", data=CODE)]
        ct, body = encode(parts)
        return client("POST", f"{PS}/v/versions", body, headers=[(b"content-type", ct.encode())])

    client.upload(f"{PS}/v", {"main_module": "worker.py", "bindings": [
        {"type": "plain_text", "name": "GREETING", "text": "v1"}]})
    version([{"type": "plain_text", "name": "GREETING", "text": "v2"},
             {"type": "secret_text", "name": "K2", "text": "only-in-the-latest"}])
    version([{"type": "inherit", "name": "GREETING"}, {"type": "inherit", "name": "K2"},
             {"type": "secret_text", "name": "S3", "text": "new"}])
    latest = client.store.get_latest(PLATFORM, "v")
    assert {b.name: b.text for b in latest.bindings} == {"GREETING": "v2", "K2": "only-in-the-latest", "S3": "new"}
    assert client.store.get_script(PLATFORM, "v").bindings[0].text == "v1"  # what serves is unchanged


@pytest.mark.parametrize(
    "metadata, fragment",
    [
        ({}, "main_module"),
        ({"main_module": "other.py"}, "not among the uploaded parts"),
        ({"main_module": "worker.py", "bindings": {}}, "Expected `array`, got `object` - at `$.bindings`"),
        ({"main_module": "worker.py", "bindings": [{"type": "plain_text", "name": "A"}]},
         "missing required field `text` - at `$.bindings[0]`"),
        ({"main_module": "worker.py", "bindings": [{"type": "wasm_module", "name": "A"}]},
         "known binding types: plain_text"),
        ({"main_module": "worker.py", "bindings": [{"type": "plain_text", "name": "not-ident", "text": ""}]},
         "identifier"),
        ({"main_module": "worker.py", "bindings": [{"type": "plain_text", "name": "A", "text": ""},
                                                  {"type": "json", "name": "A", "json": 1}]}, "two bindings"),
        ({"main_module": "worker.py", "bindings": [{"type": "kv_namespace", "name": "KV"}]}, "namespace_id"),
        ({"main_module": "worker.py", "bindings": [{"type": "d1", "name": "DB"}]}, "missing required field `id`"),
        ({"main_module": "worker.py", "bindings": [{"type": "r2_bucket", "name": "B"}]}, "bucket_name"),
        ({"main_module": "worker.py", "bindings": [{"type": "json", "name": "J"}]}, "missing required field `json`"),
        ({"main_module": "worker.py", "bindings": [{"type": "service", "name": "S"}]}, "service"),
        ({"main_module": "worker.py", "bindings": [{"type": "dispatch_namespace", "name": "D"}]},
         "missing required field `namespace`"),
        ({"main_module": "worker.py", "bindings": [{"type": "dispatch_namespace", "name": "D", "namespace": "x",
                                                    "outbound": {"params": [{"nom": 1}]}}]}, "param"),
        ({"main_module": "worker.py", "tags": "a"}, "tags"),
        ({"main_module": "worker.py", "tags": ["a,b"]}, "tag"),
        ({"main_module": "worker.py", "tail_consumers": [{"svc": "x"}]}, "`$.tail_consumers[0]`"),
        ({"main_module": "worker.py", "compatibility_date": "June"}, "compatibility_date"),
        ({"main_module": "worker.py", "compatibility_date": "2025-13-01"}, "compatibility_date"),
        # Cloudflare's API refuses a date to come.
        ({"main_module": "worker.py", "compatibility_date": "2999-01-01"}, "compatibility date in the future"),
    ],
)
def test_bad_metadata_is_400(client, metadata, fragment):
    env = client.upload(f"{NS}/default/scripts/s", metadata, expect=400)
    assert fragment in error_message(env)
    assert client.hooks.validated == [] and client.hooks.changed == []


def test_dispatch_namespace_binding_with_outbound(client):
    meta = {"main_module": "worker.py", "bindings": [
        {"type": "dispatch_namespace", "name": "dispatcher", "namespace": "customers",
         "outbound": {"worker": {"service": "egress"}, "params": [{"name": "customer_name"}]}, "extra": 1}]}
    got = client.upload(f"{PS}/dispatcher", meta)["result"]
    assert got["bindings"] == [{"type": "dispatch_namespace", "name": "dispatcher", "namespace": "customers",
                                "outbound": {"worker": {"service": "egress"},
                                             "params": [{"name": "customer_name"}]}}]


def test_upload_body_errors(client):
    target = f"{NS}/default/scripts/s"
    env = client.upload(target, {"main_module": "worker.py"}, content_type="application/json", expect=400)
    assert "multipart/form-data" in error_message(env)
    ct, body = encode([Part(name="worker.py", data=CODE)])
    env = client("PUT", target, body, headers=[(b"content-type", ct.encode())], expect=400)
    assert "no 'metadata' part" in error_message(env)
    ct, body = encode([Part(name="metadata", data=b"{nope")])
    env = client("PUT", target, body, headers=[(b"content-type", ct.encode())], expect=400)
    assert "not valid JSON" in error_message(env)
    ct, body = encode([Part(name="metadata", data=b"[1]")])
    assert "JSON object" in error_message(client("PUT", target, body, headers=[(b"content-type", ct.encode())],
                                                 expect=400))
    env = client.upload(target, {"main_module": "worker.py"}, modules={}, expect=400)
    assert "no modules" in error_message(env)
    for bad in ("../x.py", "/abs.py", "a//b.py", "a\\b.py"):
        env = client.upload(target, {"main_module": "worker.py"}, {"worker.py": CODE, bad: b""}, expect=400)
        assert "invalid module name" in error_message(env)
    env = client.upload(target, {"main_module": "data.txt"}, {"data.txt": b""}, expect=400)
    assert ".py" in error_message(env)
    env = client("PUT", target, b"--x\r\n", headers=[(b"content-type", b"multipart/form-data; boundary=x")],
                 expect=400)
    assert "closing boundary" in error_message(env)


def test_upload_limits_are_413(tmp_path):
    c = Client(tmp_path, max_script_bytes=1000)
    try:
        env = c.upload(f"{NS}/default/scripts/s", {"main_module": "worker.py"},
                       {"worker.py": b"x" * 600, "b.py": b"y" * 600}, expect=413)
        assert "1000-byte limit" in error_message(env)
        c.upload(f"{NS}/default/scripts/s", {"main_module": "worker.py"}, {"worker.py": b"x" * 1001}, expect=413)
        huge = b"x" * (2**20 + 2000)
        env = c("PUT", f"{NS}/default/scripts/s", huge,
                headers=[(b"content-type", b"multipart/form-data; boundary=x")], expect=413)
        assert "exceeds" in error_message(env)
        c.upload(f"{NS}/default/scripts/s", {"main_module": "worker.py"}, {"worker.py": b"x" * 1000})
    finally:
        c.store.close()


def test_validation_failure_is_400_and_nothing_is_stored(client):
    client.hooks.fail = "SyntaxError: invalid syntax (worker.py, line 1)"
    env = client.upload(f"{NS}/default/scripts/s", {"main_module": "worker.py"}, expect=400)
    assert "SyntaxError: invalid syntax" in error_message(env)
    assert env["errors"][0]["code"] == 10021
    assert client.store.get_version("default", "s") is None
    assert client.hooks.changed == []


def test_upload_to_missing_namespace_is_404(client):
    env = client.upload(f"{NS}/nope/scripts/s", {"main_module": "worker.py"}, expect=404)
    assert "nope" in error_message(env)
    assert client.hooks.validated == []


def test_bad_script_name_is_400(client):
    env = client.upload(f"{NS}/default/scripts/bad%20name", {"main_module": "worker.py"}, expect=400)
    assert "invalid Worker name 'bad name'" in error_message(env) and env["errors"][0]["code"] == 10016


def test_get_and_delete_script(client):
    client("GET", f"{NS}/default/scripts/s", expect=404)
    client.upload(f"{NS}/default/scripts/s", {"main_module": "worker.py"})
    client.hooks.changed.clear()
    assert client("DELETE", f"{NS}/default/scripts/s")["result"] == {"id": "s"}
    assert client.hooks.changed == [("default", "s")]
    env = client("DELETE", f"{NS}/default/scripts/s", expect=404)
    assert env["errors"][0]["code"] == 10007
    assert client.hooks.changed == [("default", "s")]


# -- listing, tags, bulk delete -------------------------------------------------------


def deploy_many(client, n=7):
    for i in range(n):
        tags = ["plan:free" if i % 2 else "plan:pro"] + (["beta"] if i < 3 else [])
        client.upload(f"{NS}/default/scripts/w{i}", {"main_module": "worker.py", "tags": tags})


def test_list_paginates_with_cursor(client):
    deploy_many(client)
    names, cursor, pages = [], "", 0
    while True:
        target = f"{NS}/default/scripts?per_page=3" + (f"&cursor={cursor}" if cursor else "")
        env = client("GET", target)
        info = env["result_info"]
        assert info["per_page"] == 3 and info["count"] == len(env["result"])
        names += [s["name"] for s in env["result"]]
        cursor = info["cursor"]
        pages += 1
        if not cursor:
            break
    assert names == [f"w{i}" for i in range(7)] and pages == 3
    client("GET", f"{NS}/default/scripts?per_page=0", expect=400)
    client("GET", f"{NS}/default/scripts?per_page=abc", expect=400)
    client("GET", f"{NS}/default/scripts?cursor=%21%21", expect=400)
    client("GET", f"{NS}/nope/scripts", expect=404)


def test_list_filters_by_tags(client):
    deploy_many(client)
    names = lambda env: [s["name"] for s in env["result"]]  # noqa: E731
    assert names(client("GET", f"{NS}/default/scripts?tags=plan:free")) == ["w1", "w3", "w5"]
    assert names(client("GET", f"{NS}/default/scripts?tags=plan:pro,beta")) == ["w0", "w2"]
    assert names(client("GET", f"{NS}/default/scripts?tags=plan:pro:yes,beta:no")) == ["w4", "w6"]
    assert names(client("GET", f"{NS}/default/scripts?tags=nothing")) == []


def test_bulk_delete_by_tags(client):
    deploy_many(client)
    client.hooks.changed.clear()
    env = client("DELETE", f"{NS}/default/scripts?tags=beta:yes,plan:pro:yes")
    assert env["result"] == {"count": 2}
    assert sorted(client.hooks.changed) == [("default", "w0"), ("default", "w2")]
    env = client("DELETE", f"{NS}/default/scripts?tags=plan:pro:no")
    assert env["result"] == {"count": 3}
    assert [s["name"] for s in client("GET", f"{NS}/default/scripts")["result"]] == ["w4", "w6"]
    env = client("DELETE", f"{NS}/default/scripts", expect=400)
    assert "tags" in error_message(env)
    client("DELETE", f"{NS}/nope/scripts?tags=x", expect=404)


def test_tags_endpoints(client):
    client.upload(f"{NS}/default/scripts/s", {"main_module": "worker.py", "tags": ["a"]})
    base = f"{NS}/default/scripts/s/tags"
    assert client("GET", base)["result"] == ["a"]
    assert client("PUT", base, ["x", "y"])["result"] == ["x", "y"]
    assert client("PUT", base, {"tags": ["z"]})["result"] == ["z"]
    assert client("PUT", f"{base}/plan%3Afree")["result"] == ["z", "plan:free"]
    assert client("DELETE", f"{base}/z")["result"] == ["plan:free"]
    assert client("GET", f"{NS}/default/scripts/s")["result"]["tags"] == ["plan:free"]
    assert ("default", "s") in client.hooks.changed
    client("PUT", base, {"tags": "nope"}, expect=400)
    client("PUT", base, ["a,b"], expect=400)
    # A filter's items are stripped: a tag with spaces about it could never be found.
    client("PUT", f"{base}/%20sp", expect=400)
    client("PUT", base, ["sp "], expect=400)
    client("PUT", base, [f"t{i}" for i in range(9)], expect=400)
    client("GET", f"{NS}/default/scripts/missing/tags", expect=404)
    client("PUT", f"{NS}/default/scripts/missing/tags/x", expect=404)
    # The SDK types the body Optional: null, or no body (tags.update(body=None)), clears them.
    assert client("PUT", base, b"null", headers=[(b"content-type", b"application/json")])["result"] == []
    client("PUT", base, ["a"])
    assert client("PUT", base)["result"] == []


# -- platform scripts and routes --------------------------------------------------------


def test_platform_scripts(client):
    env = client.upload(f"{PS}/dispatcher", {"main_module": "worker.py", "bindings": [
        {"type": "dispatch_namespace", "name": "dispatcher", "namespace": "default"}]})
    assert env["result"]["dispatch_namespace"] is None
    assert client.hooks.changed == [(PLATFORM, "dispatcher")]
    assert client("GET", f"{PS}/dispatcher")["result"]["name"] == "dispatcher"
    assert [s["name"] for s in client("GET", PS)["result"]] == ["dispatcher"]
    assert client("GET", f"{NS}/default/scripts")["result"] == []  # separate from namespaces
    assert client("PUT", f"{PS}/dispatcher/tags/platform")["result"] == ["platform"]
    client("DELETE", f"{PS}/dispatcher")
    client("GET", f"{PS}/dispatcher", expect=404)


def test_routes(client):
    # A route names a deployed platform script (Cloudflare refuses one to no Worker: code 10019).
    refused = client("POST", ROUTES, {"pattern": "*.example.com/*", "script": "dispatcher"}, expect=400)
    assert refused["errors"][0]["code"] == 10019 and "does not exist" in error_message(refused)
    client.upload(f"{PS}/dispatcher", {"main_module": "worker.py"})
    added = client("POST", ROUTES, {"pattern": "*.example.com/*", "script": "dispatcher"})["result"]
    assert added["pattern"] == "*.example.com/*" and added["script"] == "dispatcher"
    assert client("GET", ROUTES)["result"] == [added]
    assert client("GET", f"{ROUTES}/{added['id']}")["result"] == added
    env = client("POST", ROUTES, {"pattern": "*.EXAMPLE.com/*", "script": "x"}, expect=409)
    assert "already exists" in error_message(env)
    assert "no path" in error_message(client("POST", ROUTES, {"pattern": "example.com", "script": "x"},
                                             expect=400))
    client("POST", ROUTES, {"pattern": "a.com/*"}, expect=400)
    assert client.store.route_table().match("a.example.com", "/") == "dispatcher"
    assert client("DELETE", f"{ROUTES}/{added['id']}")["result"] == {"id": added["id"]}
    client("DELETE", f"{ROUTES}/{added['id']}", expect=404)
    client("GET", f"{ROUTES}/{added['id']}", expect=404)
    assert client.store.route_table().match("a.example.com", "/") is None


@pytest.mark.parametrize("pattern, where", [
    ("ex*ample.com/*", "host"), ("**.example.com/*", "host"), ("example.com/*.jpg", "path"),
    ("example.com/a*b", "path"), ("*.example.com/*/x", "path")])
def test_a_new_route_with_an_infix_wildcard_is_refused(client, pattern, where):
    # Cloudflare: "route patterns may not contain infix wildcards", e.g.
    # example.com/*.jpg; '*' may begin the host and end the path.
    client.upload(f"{PS}/dispatcher", {"main_module": "worker.py"})
    env = client("POST", ROUTES, {"pattern": pattern, "script": "dispatcher"}, expect=400)
    assert f"'*' inside its {where}" in error_message(env)
    assert client("GET", ROUTES)["result"] == []
    for fine in ("*/*", "*example.com/*", "*.example.com/images/*", "example.com/x"):
        client("POST", ROUTES, {"pattern": fine, "script": "dispatcher"})


def test_a_script_is_its_code_to_a_client_that_asks_for_code(client):
    # Cloudflare's "Download Worker" answers the code, not JSON; the official
    # SDK's scripts.get sends Accept: application/javascript.
    client.upload(f"{PS}/dispatcher", {"main_module": "worker.py"},
                  {"worker.py": CODE, "lib/util.py": b"X = 1\n"})
    status, headers, body = client.raw("GET", f"{PS}/dispatcher",
                                       headers=[(b"accept", b"application/javascript")])
    assert status == 200 and dict(headers)[b"content-type"].startswith(b"multipart/form-data")
    assert dict(headers)[b"cf-entrypoint"] == b"worker.py"
    assert body.index(CODE) < body.index(b"X = 1")  # the main module first
    for accept in (b"application/json", b"*/*", b"application/javascript, application/json"):
        assert client("GET", f"{PS}/dispatcher", headers=[(b"accept", accept)])["result"]["id"] == "dispatcher"


def test_a_repeated_query_key_keeps_every_value(client):
    client("POST", NS, {"name": "pg"})
    for name, tags in (("one", ["a"]), ("two", ["a", "c"]), ("three", ["c"])):
        client.upload(f"{NS}/pg/scripts/{name}", {"main_module": "worker.py", "tags": tags})
    # As tags=a,c: every filter holds (the last alone would list "three" too).
    listed = client("GET", f"{NS}/pg/scripts?tags=a&tags=c")["result"]
    assert [s["id"] for s in listed] == ["two"]
    env = client("GET", f"{NS}/pg/scripts?per_page=1&per_page=2", expect=400)
    assert "1,2" in error_message(env)
    assert len(client("GET", f"{NS}/pg/scripts?per_page=2&per_page=2")["result"]) == 2


# -- protocol-level behaviour --------------------------------------------------------


def test_metrics_is_prometheus_text(client):
    status, headers, body = client.raw("GET", "/metrics")
    assert status == 200 and body == b"# TYPE corral_up gauge\ncorral_up 1\n"
    assert dict(headers)[b"content-type"].startswith(b"text/plain")


def test_tail_is_a_stream_the_sans_io_api_does_not_serve(client):
    env = client("GET", "/tail?namespace=default&script=x", expect=501)
    assert "stream" in error_message(env)


@pytest.mark.parametrize("target", ["/", "/nope", "/accounts/local/workers", f"{NS}/default/scripts/s/x",
                                    "/accounts/local/workers/dispatch/namespaces/default/scripts/s/tags/a/b"])
def test_unknown_paths_are_404(client, target):
    env = client("GET", target, expect=404)
    assert "no admin API endpoint" in error_message(env)


def test_wrong_method_is_405_with_allow(client):
    status, headers, body = client.raw("PATCH", f"{NS}/default/scripts/s")
    assert status == 405
    assert dict(headers)[b"allow"] == b"PUT, GET, DELETE"
    env = json.loads(body)
    assert env["success"] is False and "PATCH is not allowed" in env["errors"][0]["message"]
    client("POST", "/metrics", expect=405)
    client("PUT", NS, expect=405)


def test_trailing_slash_query_and_account_label(client):
    assert client("GET", "/accounts/anything/workers/dispatch/namespaces/?x=1")["success"]


def test_malformed_target_is_400(client):
    env = client("GET", f"{NS}/%ff", expect=400)
    assert "malformed" in error_message(env)


def test_unexpected_exception_is_500_and_logged(client, caplog):
    async def boom(record):
        raise RuntimeError("sandbox exploded")

    client.hooks.validate = boom
    with caplog.at_level(logging.WARNING, logger="corral.admin"):
        env = client.upload(f"{NS}/default/scripts/s", {"main_module": "worker.py"}, expect=500)
    assert "RuntimeError: sandbox exploded" in error_message(env)
    [rec] = [r for r in caplog.records if r.name == "corral.admin"]
    assert rec.levelno == logging.ERROR and rec.getMessage() == "admin.error"
    assert rec.fields["status"] == 500 and "Traceback" in rec.fields["traceback"]


def test_errors_are_logged_with_fields(client, caplog):
    with caplog.at_level(logging.WARNING, logger="corral.admin"):
        client("GET", f"{NS}/nope", expect=404)
    [rec] = [r for r in caplog.records if r.name == "corral.admin"]
    assert rec.fields == {"method": "GET", "path": f"{NS}/nope", "status": 404, "code": 10404,
                          "message": "dispatch namespace 'nope' does not exist"}


def test_bytes_method_and_target_are_accepted(client):
    status, _, _ = trio.run(client.api.handle, b"GET", NS.encode(), [], b"")
    assert status == 200


def test_state_persists_across_reopening_the_store(client):
    client("POST", NS, {"name": "customers"})
    client.upload(f"{PS}/auth", {"main_module": "worker.py"})  # the platform script AUTH binds
    client.upload(f"{NS}/customers/scripts/s", SECRET_META)
    client.upload(f"{PS}/dispatcher", {"main_module": "worker.py"})  # the platform script the route names
    route = client("POST", ROUTES, {"pattern": "*/*", "script": "dispatcher"})["result"]
    before = client("GET", f"{NS}/customers/scripts/s")["result"]
    client.reopen()
    assert client("GET", f"{NS}/customers/scripts/s")["result"] == before
    assert client("GET", ROUTES)["result"] == [route]
    assert client.store.get_script("customers", "s").modules == {"worker.py": CODE}
