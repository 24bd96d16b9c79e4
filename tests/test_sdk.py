"""Cloudflare's official Python SDK (`cloudflare` on PyPI), pointed at a real
`corral serve` over the admin unix socket: every call a platform's back end
makes for Workers for Platforms, success and error, as the SDK itself sends
and parses them."""

from __future__ import annotations

import base64
import hashlib
import io
import types

import cloudflare
import httpx
import pytest
from cloudflare import Cloudflare

from tests.harness import sdk_fixtures

ACCOUNT = "local"
NS = "sdk-tenants"
CODE = b'''from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(f"v={self.env.VERSION} secret={getattr(self.env, 'TOKEN', '-')}")
'''
HELPER = b"X = 1\n"


server, cf = sdk_fixtures("sdk")


@pytest.fixture(scope="module")
def scripts(cf):
    cf.workers_for_platforms.dispatch.namespaces.create(account_id=ACCOUNT, name=NS)
    return cf.workers_for_platforms.dispatch.namespaces.scripts


def upload(scripts, name, version="1", **metadata):
    meta = {"main_module": "worker.py", "bindings": [{"type": "plain_text", "name": "VERSION", "text": version}],
            **metadata}
    return scripts.update(
        name, account_id=ACCOUNT, dispatch_namespace=NS, metadata=meta,
        files=[("worker.py", io.BytesIO(CODE), "text/x-python"),
               ("lib/helper.py", io.BytesIO(HELPER), "text/x-python")],
    )


def test_namespaces(cf, scripts):
    namespaces = cf.workers_for_platforms.dispatch.namespaces
    names = [n.namespace_name for n in namespaces.list(account_id=ACCOUNT)]
    assert NS in names and "default" in names
    got = namespaces.get(NS, account_id=ACCOUNT)
    assert got.namespace_name == NS and got.namespace_id
    created = namespaces.create(account_id=ACCOUNT, name="sdk-doomed")
    assert created.namespace_name == "sdk-doomed" and created.created_on is not None
    with pytest.raises(cloudflare.ConflictError):
        namespaces.create(account_id=ACCOUNT, name="sdk-doomed")
    namespaces.delete("sdk-doomed", account_id=ACCOUNT)
    with pytest.raises(cloudflare.NotFoundError):
        namespaces.get("sdk-doomed", account_id=ACCOUNT)
    with pytest.raises(cloudflare.BadRequestError):
        namespaces.create(account_id=ACCOUNT, name="bad name!")


def test_upload_get_and_delete(cf, scripts):
    result = upload(scripts, "hello", tags=["plan:free"], compatibility_date="2025-06-01",
                    compatibility_flags=["python_workers"], tail_consumers=[{"service": "logger"}])
    assert result.id == "hello" and result.etag and "plan:free" in result.tags
    assert result.compatibility_date == "2025-06-01" and result.startup_time_ms == 0
    got = scripts.get("hello", account_id=ACCOUNT, dispatch_namespace=NS)
    assert got.dispatch_namespace == NS and got.created_on is not None
    assert got.script.id == "hello" and got.script.tags == ["plan:free"]
    assert got.script.tail_consumers[0].service == "logger"
    with pytest.raises(cloudflare.NotFoundError) as exc:
        scripts.get("nope", account_id=ACCOUNT, dispatch_namespace=NS)
    assert exc.value.body["errors"][0]["code"] == 10007
    upload(scripts, "doomed")
    scripts.delete("doomed", account_id=ACCOUNT, dispatch_namespace=NS)
    with pytest.raises(cloudflare.NotFoundError):
        scripts.delete("doomed", account_id=ACCOUNT, dispatch_namespace=NS)


def test_upload_errors(scripts):
    with pytest.raises(cloudflare.BadRequestError, match="main_module"):
        upload(scripts, "bad", main_module="missing.py")
    with pytest.raises(cloudflare.BadRequestError, match="known binding types"):
        upload(scripts, "bad", bindings=[{"type": "warp_drive", "name": "X"}])
    with pytest.raises(cloudflare.BadRequestError, match="failed to load"):
        scripts.update("bad", account_id=ACCOUNT, dispatch_namespace=NS, metadata={"main_module": "worker.py"},
                       files=[("worker.py", io.BytesIO(b"raise SystemExit('no')\nimport nope_nope\n"),
                               "text/x-python")])
    with pytest.raises(cloudflare.NotFoundError):
        scripts.update("x", account_id=ACCOUNT, dispatch_namespace="no-such-ns", metadata={"main_module": "worker.py"},
                       files=[("worker.py", io.BytesIO(CODE), "text/x-python")])


def test_content(scripts):
    upload(scripts, "content")
    raw = scripts.content.get("content", account_id=ACCOUNT, dispatch_namespace=NS)
    body = raw.read()
    assert CODE in body and HELPER in body
    assert raw.headers["cf-entrypoint"] == "worker.py"
    new = CODE.replace(b"v=", b"version=")
    updated = scripts.content.update("content", account_id=ACCOUNT, dispatch_namespace=NS,
                                     metadata={"main_module": "worker.py"},
                                     files=[("worker.py", io.BytesIO(new), "text/x-python")])
    assert updated.id == "content"
    assert new in scripts.content.get("content", account_id=ACCOUNT, dispatch_namespace=NS).read()
    # the bindings were kept
    assert scripts.settings.get("content", account_id=ACCOUNT, dispatch_namespace=NS).bindings[0].name == "VERSION"
    with pytest.raises(cloudflare.NotFoundError):
        scripts.content.get("nope", account_id=ACCOUNT, dispatch_namespace=NS)


def test_tags(scripts):
    upload(scripts, "tagged", tags=["a"])
    assert list(scripts.tags.list("tagged", account_id=ACCOUNT, dispatch_namespace=NS)) == ["a"]
    assert list(scripts.tags.update("tagged", account_id=ACCOUNT, dispatch_namespace=NS, body=["b", "c"])) == ["b", "c"]
    scripts.tags.delete("b", account_id=ACCOUNT, dispatch_namespace=NS, script_name="tagged")
    assert list(scripts.tags.list("tagged", account_id=ACCOUNT, dispatch_namespace=NS)) == ["c"]
    with pytest.raises(cloudflare.NotFoundError):
        list(scripts.tags.list("nope", account_id=ACCOUNT, dispatch_namespace=NS))
    with pytest.raises(cloudflare.BadRequestError):
        scripts.tags.update("tagged", account_id=ACCOUNT, dispatch_namespace=NS, body=[f"t{i}" for i in range(20)])


def test_secrets_are_never_returned(server, scripts):
    upload(scripts, "secretive")
    put = scripts.secrets.update("secretive", account_id=ACCOUNT, dispatch_namespace=NS, name="TOKEN",
                                 text="hunter2", type="secret_text")
    assert put.name == "TOKEN" and put.type == "secret_text"
    listed = list(scripts.secrets.list("secretive", account_id=ACCOUNT, dispatch_namespace=NS))
    assert [(s.name, s.type) for s in listed] == [("TOKEN", "secret_text")]
    got = scripts.secrets.get("TOKEN", account_id=ACCOUNT, dispatch_namespace=NS, script_name="secretive")
    assert got.name == "TOKEN"
    # a code upload keeps the secret (keep_bindings), and nothing shows its text
    upload(scripts, "secretive", version="2", keep_bindings=["secret_text"])
    for text in (scripts.get("secretive", account_id=ACCOUNT, dispatch_namespace=NS).to_json(),
                 scripts.settings.get("secretive", account_id=ACCOUNT, dispatch_namespace=NS).to_json(),
                 str(list(scripts.bindings.get("secretive", account_id=ACCOUNT, dispatch_namespace=NS)))):
        assert "TOKEN" in text and "hunter2" not in text
    scripts.secrets.delete("TOKEN", account_id=ACCOUNT, dispatch_namespace=NS, script_name="secretive")
    assert list(scripts.secrets.list("secretive", account_id=ACCOUNT, dispatch_namespace=NS)) == []
    with pytest.raises(cloudflare.NotFoundError):
        scripts.secrets.delete("TOKEN", account_id=ACCOUNT, dispatch_namespace=NS, script_name="secretive")
    with pytest.raises(cloudflare.BadRequestError):
        scripts.secrets.update("secretive", account_id=ACCOUNT, dispatch_namespace=NS, name="not valid",
                               text="x", type="secret_text")
    assert "hunter2" not in server.log()


def test_settings(scripts):
    upload(scripts, "configured", tags=["x"])
    settings = scripts.settings.edit("configured", account_id=ACCOUNT, dispatch_namespace=NS,
                                     settings={"compatibility_date": "2025-07-01", "tags": ["y"],
                                               "bindings": [{"type": "plain_text", "name": "VERSION", "text": "9"}]})
    assert settings.compatibility_date == "2025-07-01" and settings.tags == ["y"]
    got = scripts.settings.get("configured", account_id=ACCOUNT, dispatch_namespace=NS)
    assert got.compatibility_date == "2025-07-01" and got.bindings[0].text == "9"
    with pytest.raises(cloudflare.BadRequestError):
        scripts.settings.edit("configured", account_id=ACCOUNT, dispatch_namespace=NS,
                              settings={"compatibility_date": "July"})
    with pytest.raises(cloudflare.NotFoundError):
        scripts.settings.get("nope", account_id=ACCOUNT, dispatch_namespace=NS)


def _manifest(files):
    out = {}
    for path, data in files.items():
        digest = hashlib.sha256(base64.b64encode(data) + path.rsplit(".", 1)[-1].encode()).hexdigest()[:32]
        out[path] = {"hash": digest, "size": len(data)}
    return out


def test_static_assets(server, cf, scripts):
    files = {"/index.html": b"<h1>hi</h1>", "/app.js": b"console.log(1)"}
    manifest = _manifest(files)
    session = scripts.asset_upload.create("site", account_id=ACCOUNT, dispatch_namespace=NS, manifest=manifest)
    assert sorted(h for bucket in session.buckets for h in bucket) == sorted(e["hash"] for e in manifest.values())
    uploader = Cloudflare(api_token=session.jwt, base_url="http://corral/client/v4", max_retries=0,
                          http_client=httpx.Client(transport=httpx.HTTPTransport(uds=server.socket_path)))
    by_hash = {manifest[p]["hash"]: base64.b64encode(d).decode() for p, d in files.items()}
    first, second = list(by_hash.items())
    assert uploader.workers.assets.upload.create(account_id=ACCOUNT, base64=True, body=dict([first])).jwt is None
    done = uploader.workers.assets.upload.create(account_id=ACCOUNT, base64=True, body=dict([second])).jwt
    assert done
    result = upload(scripts, "site", assets={"jwt": done, "config": {"html_handling": "auto-trailing-slash"}})
    assert result.has_assets
    # a second session for the same files has nothing missing: the token is the completion token
    again = scripts.asset_upload.create("site", account_id=ACCOUNT, dispatch_namespace=NS, manifest=manifest)
    assert again.buckets == []
    # the blobs are the script's own: another script must upload them again
    other = scripts.asset_upload.create("other-site", account_id=ACCOUNT, dispatch_namespace=NS, manifest=manifest)
    assert len([h for b in other.buckets for h in b]) == 2
    with pytest.raises(cloudflare.AuthenticationError):
        Cloudflare(api_token="forged", base_url="http://corral/client/v4", max_retries=0,
                   http_client=httpx.Client(transport=httpx.HTTPTransport(uds=server.socket_path))
                   ).workers.assets.upload.create(account_id=ACCOUNT, base64=True, body=dict([first]))
    with pytest.raises(cloudflare.NotFoundError):
        upload(scripts, "site", assets={"jwt": "not-a-token"})
    with pytest.raises(cloudflare.BadRequestError):
        scripts.asset_upload.create("site", account_id=ACCOUNT, dispatch_namespace=NS,
                                    manifest={"/x": {"hash": "zz", "size": 1}})


def test_versions_and_deployments_of_platform_scripts(cf):
    workers = cf.workers.scripts
    meta = {"main_module": "worker.py", "bindings": [{"type": "plain_text", "name": "VERSION", "text": "1"}]}
    first = workers.update("platform-app", account_id=ACCOUNT, metadata=meta,
                           files=[("worker.py", io.BytesIO(CODE), "text/x-python")])
    assert first.id == "platform-app"
    meta["bindings"][0]["text"] = "2"
    # SDK 5.x cannot build its own VersionCreateResponse / VersionGetResponse
    # models (ResourcesBindings is not a pydantic type), whatever the server
    # answers: read those two through with_raw_response.
    raw = workers.versions.with_raw_response.create("platform-app", account_id=ACCOUNT, metadata=meta,
                                                    files=[("worker.py", io.BytesIO(CODE), "text/x-python")])
    second = types.SimpleNamespace(**raw.http_response.json()["result"])
    assert second.id and second.number == 2 and second.resources["bindings"][0]["text"] == "2"
    versions = workers.versions.list("platform-app", account_id=ACCOUNT)
    ids = [v.id for v in versions.result.items]
    assert ids[0] == second.id and len(ids) == 2
    got = workers.versions.with_raw_response.get(second.id, account_id=ACCOUNT, script_name="platform-app")
    assert got.http_response.json()["result"]["number"] == 2
    # an uploaded version does not serve until deployed
    deployments = workers.deployments.list("platform-app", account_id=ACCOUNT)
    assert len(deployments.result.deployments) == 1
    gradual = workers.deployments.create("platform-app", account_id=ACCOUNT, strategy="percentage",
                                         versions=[{"version_id": second.id, "percentage": 10},
                                                   {"version_id": ids[1], "percentage": 90}])
    assert gradual.strategy == "percentage" and sorted(v.percentage for v in gradual.versions) == [10, 90]
    assert workers.deployments.get(gradual.id, account_id=ACCOUNT, script_name="platform-app").id == gradual.id
    full = workers.deployments.create("platform-app", account_id=ACCOUNT, strategy="percentage",
                                      versions=[{"version_id": second.id, "percentage": 100}],
                                      annotations={"workers_message": "all in"})
    latest = workers.deployments.list("platform-app", account_id=ACCOUNT).result.deployments[0]
    assert latest["id"] == full.id if isinstance(latest, dict) else latest.id == full.id
    with pytest.raises(cloudflare.BadRequestError, match="add up to 100"):
        workers.deployments.create("platform-app", account_id=ACCOUNT, strategy="percentage",
                                   versions=[{"version_id": second.id, "percentage": 50}])
    with pytest.raises(cloudflare.NotFoundError):
        workers.deployments.create("platform-app", account_id=ACCOUNT, strategy="percentage",
                                   versions=[{"version_id": "00000000-0000-0000-0000-000000000000", "percentage": 100}])
    with pytest.raises(cloudflare.NotFoundError):
        workers.versions.with_raw_response.get("00000000-0000-0000-0000-000000000000", account_id=ACCOUNT,
                                               script_name="platform-app")
    # secrets and content on platform scripts too
    workers.secrets.update("platform-app", account_id=ACCOUNT, name="TOKEN", text="s", type="secret_text")
    assert [s.name for s in workers.secrets.list("platform-app", account_id=ACCOUNT)] == ["TOKEN"]
    workers.delete("platform-app", account_id=ACCOUNT)
    with pytest.raises(cloudflare.NotFoundError):
        workers.versions.list("platform-app", account_id=ACCOUNT)


def test_gradual_deployment_and_rollback_serve_requests(server, cf, scripts):
    """Through the dispatcher: a version uploaded without deploying does not
    serve; a 50/50 split serves both; a rollback serves the old one again."""
    server.deploy_dispatcher(namespace=NS, name="sdk-dispatch", pattern="*.sdk.test/*")
    upload(scripts, "split", version="1")
    assert server.request(host="split.sdk.test").text.startswith("v=1")
    base = f"/accounts/{ACCOUNT}/workers/dispatch/namespaces/{NS}/scripts/split"
    meta = {"main_module": "worker.py", "bindings": [{"type": "plain_text", "name": "VERSION", "text": "2"}]}
    created = cf.post(f"{base}/versions", cast_to=object, body={"metadata": meta},
                      files=[("files", ("worker.py", io.BytesIO(CODE), "text/x-python"))],
                      options={"headers": {"Content-Type": "multipart/form-data"}, "multipart_syntax": "json"})
    v2 = created["result"]["id"]
    assert server.request(host="split.sdk.test").text.startswith("v=1")
    items = cf.get(f"{base}/versions", cast_to=object)["result"]["items"]
    v1 = items[1]["id"]
    cf.post(f"{base}/deployments", cast_to=object, body={"strategy": "percentage", "versions": [
        {"version_id": v1, "percentage": 50}, {"version_id": v2, "percentage": 50}]})
    seen = set()
    for _ in range(60):
        seen.add(server.request(host="split.sdk.test").text[:3])
        if len(seen) == 2:
            break
    assert seen == {"v=1", "v=2"}
    cf.post(f"{base}/deployments", cast_to=object, body={"versions": [{"version_id": v1, "percentage": 100}]})
    assert {server.request(host="split.sdk.test").text[:3] for _ in range(5)} == {"v=1"}
    deployments = cf.get(f"{base}/deployments", cast_to=object)["result"]["deployments"]
    assert [d["versions"][0]["version_id"] for d in deployments[:1]] == [v1] and len(deployments) == 3
