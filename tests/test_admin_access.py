"""Who reaches the admin API: the unix socket's file mode, and the optional
TCP listener with API tokens (scopes, namespaces, TLS), driven by the
official `cloudflare` SDK over TCP as a remote control plane would."""

from __future__ import annotations

import io
import os
import shutil
import ssl
import stat
import subprocess

import cloudflare
import httpx
import pytest
from cloudflare import Cloudflare

from tests.harness import Corral, free_port

CODE = b"from workers import Response, WorkerEntrypoint\n\nclass Default(WorkerEntrypoint):\n" \
       b"    async def fetch(self, request):\n        return Response('ok')\n"


def _config(tmp_path, text):
    path = tmp_path / "access.toml"
    path.write_text(text)
    return ["--config", str(path)]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def server(tmp_path_factory, tls_files):
    state = tmp_path_factory.mktemp("access")
    port = free_port()
    cert, key = tls_files
    corral = Corral(state, extra_args=_config(state, f'[admin]\ntcp = "127.0.0.1:{port}"\n'
                                                     f'tls_cert = "{cert}"\ntls_key = "{key}"\n')).start()
    corral.tcp_port = port
    corral.namespace("tenant-a")
    corral.namespace("tenant-b")
    yield corral
    corral.stop()


def _token(server, scope, namespaces=(), name=None):
    resp = server.admin("POST", "/accounts/local/corral/tokens",
                        {"name": name or f"{scope}-test", "scope": scope, "namespaces": list(namespaces)})
    assert resp.status == 200, resp
    return resp.json()["result"]["value"]


def _sdk(server, tls_files, token):
    http = httpx.Client(verify=ssl.create_default_context(cafile=str(tls_files[0])), timeout=60)
    return Cloudflare(api_token=token, base_url=f"https://127.0.0.1:{server.tcp_port}/client/v4",
                      http_client=http, max_retries=0)


def _upload(cf, ns, name):
    return cf.workers_for_platforms.dispatch.namespaces.scripts.update(
        name, account_id="local", dispatch_namespace=ns, metadata={"main_module": "worker.py"},
        files=[("worker.py", io.BytesIO(CODE), "text/x-python")])


def test_unix_socket_is_owner_only(server):
    assert stat.S_IMODE(os.stat(server.socket_path).st_mode) == 0o600


def test_group_access_by_configuration(tmp_path):
    state = tmp_path / "g"
    state.mkdir()
    os.chmod(state, 0o700)  # private, as serve makes it: a socket in it the group cannot reach
    corral = Corral(state, extra_args=_config(tmp_path, '[admin]\nsocket_access = "group"\n')).start()
    try:
        assert stat.S_IMODE(os.stat(corral.socket_path).st_mode) == 0o660
        said = [e for e in corral.log_events() if e.get("event") == "serve.admin_socket_unreachable"]
        assert said and str(state).startswith(said[0]["folder"]), said
    finally:
        corral.stop()


def test_tokens_are_stored_hashed_and_listed_without_value(server):
    value = _token(server, "read")
    listed = server.admin("GET", "/accounts/local/corral/tokens").json()["result"]
    assert listed and all("value" not in t for t in listed)
    db = (server.state_dir / "corral.db").read_bytes()
    assert value.encode() not in db


def test_tcp_needs_a_token(server, tls_files):
    with pytest.raises(cloudflare.AuthenticationError, match="unknown API token"):
        list(_sdk(server, tls_files, "crl_forged").workers_for_platforms.dispatch.namespaces.list(account_id="local"))
    response = httpx.get(f"https://127.0.0.1:{server.tcp_port}/accounts/local/workers/dispatch/namespaces",
                         verify=ssl.create_default_context(cafile=str(tls_files[0])))
    assert response.status_code == 401 and "Authorization: Bearer" in response.json()["errors"][0]["message"]
    # With its reason phrase, which clients quote (wrangler's "404: Not Found").
    assert response.reason_phrase == "Unauthorized", response.reason_phrase
    with pytest.raises(httpx.HTTPError):  # TLS only
        httpx.get(f"http://127.0.0.1:{server.tcp_port}/accounts/local/workers/dispatch/namespaces", timeout=5)


def test_read_token_reads_only(server, tls_files):
    _upload(Cloudflare(api_token="x", base_url="http://corral/client/v4", max_retries=0,
                       http_client=httpx.Client(transport=httpx.HTTPTransport(uds=server.socket_path))),
            "tenant-a", "app")
    cf = _sdk(server, tls_files, _token(server, "read"))
    listed = cf.workers_for_platforms.dispatch.namespaces.list(account_id="local")
    assert "tenant-a" in [n.namespace_name for n in listed]
    assert cf.workers_for_platforms.dispatch.namespaces.scripts.get(
        "app", account_id="local", dispatch_namespace="tenant-a").script.id == "app"
    with pytest.raises(cloudflare.PermissionDeniedError, match="read-only"):
        _upload(cf, "tenant-a", "app")


def test_deploy_token_bound_to_a_namespace(server, tls_files):
    cf = _sdk(server, tls_files, _token(server, "deploy", ["tenant-a"]))
    assert _upload(cf, "tenant-a", "deployed").id == "deployed"
    cf.workers_for_platforms.dispatch.namespaces.scripts.secrets.update(
        "deployed", account_id="local", dispatch_namespace="tenant-a", name="K", text="v", type="secret_text")
    with pytest.raises(cloudflare.PermissionDeniedError, match="bound to namespace"):
        _upload(cf, "tenant-b", "deployed")
    with pytest.raises(cloudflare.PermissionDeniedError):
        cf.workers_for_platforms.dispatch.namespaces.create(account_id="local", name="not-mine")
    with pytest.raises(cloudflare.PermissionDeniedError):
        cf.workers_for_platforms.dispatch.namespaces.delete("tenant-a", account_id="local")
    # Tags are the platform's (its plans' limits): a tenant tagging its script plan:pro took that plan.
    scripts = cf.workers_for_platforms.dispatch.namespaces.scripts
    with pytest.raises(cloudflare.PermissionDeniedError, match="tags are the platform's"):
        scripts.tags.update("deployed", account_id="local", dispatch_namespace="tenant-a", body=["plan:pro"])
    with pytest.raises(cloudflare.PermissionDeniedError, match="tags are the platform's"):
        scripts.settings.edit("deployed", account_id="local", dispatch_namespace="tenant-a",
                              settings={"tags": ["plan:pro"]})
    with pytest.raises(cloudflare.PermissionDeniedError, match="tags are the platform's"):
        scripts.update("deployed", account_id="local", dispatch_namespace="tenant-a",
                       metadata={"main_module": "worker.py", "tags": ["plan:pro"]},
                       files=[("worker.py", io.BytesIO(CODE), "text/x-python")])
    assert _upload(cf, "tenant-a", "deployed").id == "deployed"  # the same tags (none): fine


def test_a_bound_token_cannot_bind_its_way_into_another_namespace(server, tls_files):
    """A token bound to tenant-a uploaded a worker whose dispatch_namespace
    binding named tenant-b, and through it ran tenant-b's workers (with their
    secrets) though the token could not reach tenant-b's paths."""
    server.namespace("tenant-b")
    cf = _sdk(server, tls_files, _token(server, "deploy", ["tenant-a"], name="bound-a"))
    reach = {"type": "dispatch_namespace", "name": "OTHER", "namespace": "tenant-b"}

    def upload(bindings):
        return cf.workers_for_platforms.dispatch.namespaces.scripts.update(
            "reacher", account_id="local", dispatch_namespace="tenant-a",
            metadata={"main_module": "worker.py", "bindings": bindings},
            files=[("worker.py", io.BytesIO(CODE), "text/x-python")])

    with pytest.raises(cloudflare.PermissionDeniedError, match="binding 'OTHER' reaches dispatch namespace "
                                                               "'tenant-b'.*bound to namespace"):
        upload([reach])
    upload([{**reach, "namespace": "tenant-a"}])  # its own namespace it may
    with pytest.raises(cloudflare.PermissionDeniedError, match="reaches dispatch namespace 'tenant-b'"):
        cf.workers_for_platforms.dispatch.namespaces.scripts.settings.edit(
            "reacher", account_id="local", dispatch_namespace="tenant-a", settings={"bindings": [reach]})
    # A service binding and a tail consumer name platform scripts: past every namespace.
    service = {"type": "service", "name": "P", "service": "internal-svc"}
    with pytest.raises(cloudflare.PermissionDeniedError, match="binding 'P' reaches the platform script "
                                                               "'internal-svc'.*bound to namespace"):
        upload([service])
    with pytest.raises(cloudflare.PermissionDeniedError, match="reaches the platform script"):
        cf.workers_for_platforms.dispatch.namespaces.scripts.settings.edit(
            "reacher", account_id="local", dispatch_namespace="tenant-a", settings={"bindings": [service]})
    outbound = {**reach, "namespace": "tenant-a", "outbound": {"worker": {"service": "internal-svc"}}}
    with pytest.raises(cloudflare.PermissionDeniedError, match="names the platform script 'internal-svc' as "
                                                               "its outbound worker"):
        upload([outbound])
    with pytest.raises(cloudflare.PermissionDeniedError, match="tail consumer 'internal-svc' is a platform"):
        cf.workers_for_platforms.dispatch.namespaces.scripts.settings.edit(
            "reacher", account_id="local", dispatch_namespace="tenant-a",
            settings={"tail_consumers": [{"service": "internal-svc"}]})


def test_admin_token_but_no_token_management(server, tls_files):
    cf = _sdk(server, tls_files, _token(server, "admin"))
    created = cf.workers_for_platforms.dispatch.namespaces.create(account_id="local", name="by-admin")
    assert created.namespace_name == "by-admin"
    with pytest.raises(cloudflare.PermissionDeniedError, match="admin unix socket"):
        cf.post("/accounts/local/corral/tokens", cast_to=object, body={"name": "x", "scope": "admin"})


def test_deleted_token_stops_working(server, tls_files):
    value = _token(server, "read", name="short-lived")
    cf = _sdk(server, tls_files, value)
    list(cf.workers_for_platforms.dispatch.namespaces.list(account_id="local"))
    token_id = next(t["id"] for t in server.admin("GET", "/accounts/local/corral/tokens").json()["result"]
                    if t["name"] == "short-lived")
    assert server.admin("DELETE", f"/accounts/local/corral/tokens/{token_id}").status == 200
    with pytest.raises(cloudflare.AuthenticationError):
        list(cf.workers_for_platforms.dispatch.namespaces.list(account_id="local"))
