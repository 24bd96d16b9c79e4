"""Cloudflare Python Workers projects, deployed unmodified with `corral deploy`.

Each folder under tests/cf_projects/ is shaped as Cloudflare's tooling writes
it (``src/entry.py``, ``wrangler.jsonc``/``wrangler.toml``, ``pyproject.toml``,
``public/``). One supervisor serves the module; every project is deployed as
a user worker of a dispatch namespace by the real CLI and requested through
the dispatcher (``NAME.localhost``), except the cron worker, which is also a
platform script so that ``/cdn-cgi/handler/scheduled`` can reach it.

Projects whose dependencies (FastAPI, Flask, requests, httpx) are not yet
installed by ``corral deploy`` are skipped with that reason, and switch on by
themselves once tenant packages land. ``scripts/cf_projects`` runs this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from supervisor.store.assets import AssetBlobs
from tests.harness import Corral
from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = Path(__file__).resolve().parent / "cf_projects"
NS = "customers"
PACKAGES_PENDING = "tenant dependencies are not installed by `corral deploy` yet (packages work pending)"


@pytest.fixture(scope="module")
def corral(tmp_path_factory):
    state = tmp_path_factory.mktemp("cf")
    config = state / "serve.toml"
    config.write_text("scheduled_test_endpoint = true\n")
    server = Corral(state, extra_args=["--config", str(config)]).start()
    try:  # a set-up that fails must not leave the server running
        server.namespace(NS)
        server.deploy_dispatcher(namespace=NS)
        yield server
    finally:
        server.stop()


def deploy(corral: Corral, name: str, folder: str, namespace: str | None = NS
           ) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "supervisor", "deploy", "--socket", corral.socket_path]
    if namespace:
        args += ["--namespace", namespace]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*args, name, str(PROJECTS / folder)], capture_output=True, text=True,
                          env=env, timeout=120)


def deployed(corral: Corral, name: str, folder: str, namespace: str | None = NS) -> None:
    result = deploy(corral, name, folder, namespace)
    assert result.returncode == 0, result.stderr


def deployed_with_packages(corral: Corral, name: str, folder: str) -> None:
    """Deploy a project that needs third-party packages, or skip until deploy installs them."""
    result = deploy(corral, name, folder)
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(PACKAGES_PENDING)
    assert result.returncode == 0, result.stderr


def get(corral: Corral, name: str, path: str = "/", **kwargs):
    return corral.request(path, host=f"{name}.localhost", **kwargs)


# -- 1. the workers module -------------------------------------------------------------


def test_sdk_project(corral):
    deployed(corral, "sdk", "sdk")
    resp = get(corral, "sdk")
    assert resp.status == 200, resp.text
    assert resp.headers["x-sdk"] == "1"
    assert resp.json() == {"greeting": "HELLO!", "limits_max": 3, "attr": 3, "nested": None,
                           "rpc": {"a": [1, 2]}, "env_same": True, "method": True,
                           "status_text": "Not Found", "handler": 1}
    assert get(corral, "sdk", "/status").status == 410
    api = get(corral, "sdk", "/sdkapi").json()
    assert api == {
        "headers": ["true", "7", ["a, b"], ["a=1", "b=2"]],
        "repr": ["Request(method='POST', url='https://test.com/')",
                 "Response(status=200, status_text='OK', content_type='application/json')"],
        "replaced": [201, "other", "true"],
        "blob": ["application/json", "application/json", "application/json", "", "j"],
        "form": "v",
        "jsism": "fetch() takes 1 positional argument but 2 were given",
        "unsupported": "Unsupported type in Response: Odd",
        "form_keys": ["k", "k"],
    }, api
    # A user worker has no request.cf (untrusted mode); a platform script has it.
    assert get(corral, "sdk", "/cf").json() == {"untrusted": True, "built": {"cacheTtl": 5}}
    deployed(corral, "sdk-platform", "sdk", namespace=None)
    corral.route("sdk-platform.example/*", "sdk-platform")
    cf = corral.request("/cf", host="sdk-platform.example", headers={"accept-encoding": "gzip"}).json()
    assert cf == {"protocol": "HTTP/1.1", "country": None, "encoding": "gzip", "clone": "HTTP/1.1",
                  "built": {"cacheTtl": 5}, "plain": None}
    redirect = get(corral, "sdk", "/redirect")
    assert (redirect.status, redirect.headers["location"]) == (301, "https://example.com/next")
    blob = get(corral, "sdk", "/blob")
    assert blob.text == "<b>bold</b>" and blob.headers["content-type"] == "text/html"
    assert blob.headers["x-hints"] == "True"
    assert get(corral, "sdk", "/sendform").headers["content-type"].startswith("multipart/form-data")
    boundary = "XyZ"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nann\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
            f"Content-Type: text/plain\r\n\r\nhi there\r\n--{boundary}--\r\n")
    form = get(corral, "sdk", "/form", method="POST", body=body,
               headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert form.json() == {"name": "ann", "file": "a.txt", "size": 8, "text": "hi there"}


# -- 2. web frameworks ----------------------------------------------------------------------


def test_asgi_and_wsgi_apps(corral):
    deployed(corral, "asgi-plain", "asgi-plain")
    resp = get(corral, "asgi-plain", "/a%20b?x=1", method="POST", body="payload")
    assert resp.status == 201, resp.text
    data = resp.json()
    assert data["who"] == "asgi" and data["path"] == "/a b" and data["query"] == "x=1"
    assert data["body"] == "payload" and data["ready"] is True
    assert get(corral, "asgi-plain", "/x").json()["starts"] == data["starts"] + 1  # lifespan per request
    assert get(corral, "asgi-plain", "/stream").text == "chunk0;chunk1;chunk2;"
    wsgi = get(corral, "asgi-plain", "/wsgi", method="POST", body="in")
    assert (wsgi.status, wsgi.text, wsgi.headers["x-who"]) == (202, "wsgi /wsgi in", "asgi")


def test_fastapi_project(corral):
    deployed_with_packages(corral, "fastapi", "fastapi")
    assert get(corral, "fastapi").json() == {"message": "Hello, World!"}
    assert get(corral, "fastapi", "/sync").json() == {"sync": True}
    teapot = get(corral, "fastapi", "/teapot")
    assert (teapot.status, teapot.headers["x-tea"]) == (418, "earl grey")
    assert get(corral, "fastapi", "/nope").status == 404


def test_flask_project(corral):
    deployed_with_packages(corral, "flask", "flask")
    assert get(corral, "flask").json() == {"flask": True, "method": "GET"}
    missing = get(corral, "flask", "/missing")
    assert (missing.status, missing.text, missing.headers["x-flask"]) == (404, "nope", "1")


# -- 3. synchronous code that awaits -----------------------------------------------------------


def test_run_sync_suspends_only_its_invocation(corral):
    deployed(corral, "run-sync", "run-sync")
    assert get(corral, "run-sync", "/sum").text == "10"
    assert get(corral, "run-sync", "/error").text == "caught from the awaitable"
    waiting: dict = {}
    thread = threading.Thread(target=lambda: waiting.update(r=get(corral, "run-sync", "/wait")))
    thread.start()
    # The first request is parked in run_sync; the same child still serves this one,
    # which releases it. (Retried: the /wait request may not have arrived yet.)
    while thread.is_alive():
        assert get(corral, "run-sync", "/open").text == "opened"
        thread.join(0.2)
    assert waiting["r"].text == "released"


def test_http_clients_go_through_brokered_fetch(corral):
    deployed_with_packages(corral, "http-clients", "http-clients")
    with Upstream() as upstream:
        headers = {"x-target": upstream.url("").rstrip("/")}
        assert get(corral, "http-clients", "/requests", headers=headers).text == "200 /echo/requests"
        assert get(corral, "http-clients", "/httpx", headers=headers).text == "200 /echo/httpx"
        assert get(corral, "http-clients", "/async", headers=headers).text == "200 /echo/async"


# -- 4. pyodide and js ------------------------------------------------------------------------


def test_pyodide_and_js(corral):
    deployed(corral, "pyodide-js", "pyodide-js")
    resp = get(corral, "pyodide-js")
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"a": 1, "y_is_none": True, "roundtrip": {"a": 1, "b": [1, 2]},
                           "proxy": "called", "jsnull": False, "isproxy": False, "jsexc": True,
                           "ffi_types": [False, False, True]}
    png = get(corral, "pyodide-js", "/bytes")
    assert png.status == 200 and png.body == b"\x89PNG\r\n\x1a\n\x01\x02\x03"
    assert png.headers["content-type"] == "image/png" and png.headers["x-lengths"] == "11 11"
    missing = get(corral, "pyodide-js", "/notfound")
    assert missing.status == 501 and "js.WebAssembly is not available in Corral" in missing.text


# -- 5. cron triggers ---------------------------------------------------------------------------


def test_cron_trigger_by_hand_and_test_endpoint(corral):
    deployed(corral, "cron-worker", "cron", namespace=None)
    corral.route("cron.test/*", "cron-worker")
    # Cloudflare's script metadata names the handlers the code defines.
    meta = corral.admin("GET", "/accounts/local/workers/scripts/cron-worker").json()["result"]
    assert meta["handlers"] == ["fetch", "scheduled"], meta
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "supervisor", "trigger", "--socket", corral.socket_path]
    ok = subprocess.run([*base, "--json", "--cron", "*/5 * * * *", "cron-worker"],
                        capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    trace = json.loads(ok.stdout)
    assert trace["outcome"] == "ok"
    assert trace["event"]["cron"] == "*/5 * * * *" and trace["event"]["scheduledTime"] > 0
    assert trace["logs"][0]["message"][0].startswith("scheduled */5 * * * * at ")
    failed = subprocess.run([*base, "--cron", "0 3 * * MON", "cron-worker"],
                            capture_output=True, text=True, env=env, timeout=60)
    # A failed run is the command's error: on stderr, with exit status 1 (SPEC 1).
    assert failed.returncode == 1 and "exception" in failed.stderr and failed.stdout == ""
    assert "monday job failed" in failed.stderr
    bad = subprocess.run([*base, "--cron", "61 * * * *", "cron-worker"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and "minute 61 is outside 0-59" in bad.stderr
    endpoint = corral.request("/cdn-cgi/handler/scheduled?cron=*/5+*+*+*+*", host="cron.test")
    assert (endpoint.status, endpoint.text) == (200, "ok\n")
    assert corral.request("/", host="cron.test").text == "cron worker"


# -- 5b. Dynamic Workers ------------------------------------------------------------------------


def test_dynamic_workers_project(corral):
    """A worker_loaders binding from wrangler.jsonc, the code from a create_proxy'd
    callback as to_js(..., dict_converter=Object.fromEntries), and the request
    handed on as request._js_request: as the official example has it."""
    deployed(corral, "dynamic", "dynamic-workers")
    for _ in range(2):  # the second call reuses the loaded worker
        resp = get(corral, "dynamic", "/path?q=1")
        assert (resp.status, resp.text) == (
            200, "Hello from a dynamically-loaded Python Worker! http://dynamic.localhost/path?q=1")


# -- 6. static assets ----------------------------------------------------------------------------


def test_static_assets_through_the_dispatcher(corral):
    deployed(corral, "site", "assets")
    home = get(corral, "site", "/")
    assert home.text.startswith("<!doctype html>")
    assert home.headers["content-type"] == "text/html; charset=utf-8"
    assert get(corral, "site", "/app.js").headers["content-type"] == "text/javascript; charset=utf-8"
    assert get(corral, "site", "/favicon.ico").headers["content-type"] == "image/vnd.microsoft.icon"
    assert get(corral, "site", "/sub/data.json").headers["content-type"] == "application/json"
    assert get(corral, "site", "/about").text == "<h1>About</h1>\n"
    redirect = get(corral, "site", "/about.html")
    assert (redirect.status, redirect.headers["location"]) == (307, "/about")
    assert get(corral, "site", "/docs").headers["location"] == "/docs/"
    assert get(corral, "site", "/docs/").text == "<h1>Docs</h1>\n"
    missing = get(corral, "site", "/nope/deeper")
    assert (missing.status, missing.text) == (404, "<h1>Not here</h1>\n")
    assert get(corral, "site", "/notes.private").status == 404  # .assetsignore
    etag = home.headers["etag"]
    assert get(corral, "site", "/", headers={"if-none-match": etag}).status == 304
    head = get(corral, "site", "/app.js", method="HEAD")
    assert head.status == 200 and head.body == b""
    big = (PROJECTS / "assets/public/big.bin").read_bytes()
    whole = get(corral, "site", "/big.bin")
    assert hashlib.sha256(whole.body).digest() == hashlib.sha256(big).digest()
    part = get(corral, "site", "/big.bin", headers={"range": "bytes=1000-1999"})
    assert part.status == 206 and part.body == big[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(big)}"
    assert get(corral, "site", "/big.bin", headers={"range": "bytes=999999999-"}).status == 416
    # run_worker_first patterns, and the worker's own env.ASSETS.
    api = get(corral, "site", "/api/users")
    assert (api.text, api.headers["x-from"]) == ("worker /api/users", "worker")
    assert get(corral, "site", "/api/docs/x").status == 404  # excluded: assets, 404 page
    own = get(corral, "site", "/api/asset")
    assert own.text == 'console.log("app");\n' and own.headers["x-from"] == "env.ASSETS"
    assert own.headers["x-type"] == "text/javascript; charset=utf-8"
    # env.ASSETS.fetch follows the 307 of /about.html as fetch() would ...
    about = get(corral, "site", "/api/about")
    assert (about.status, about.text) == (200, "<h1>About</h1>\n")
    assert (about.headers["x-url"], about.headers["x-redirected"]) == ("https://assets.local/about", "True")
    # ... unless told not to.
    manual = get(corral, "site", "/api/about-manual")
    assert (manual.status, manual.headers["x-location"]) == (307, "/about")


def test_the_sites_redirects_and_headers_files(corral):
    """public/_redirects and public/_headers: sent with the config as Wrangler
    sends them (never served), and applied as Cloudflare's asset server does."""
    result = deploy(corral, "site", "assets")
    assert result.returncode == 0, result.stderr
    assert "_redirects line 6: expected 2 or 3 whitespace-separated tokens, got 6" in result.stderr
    moved = get(corral, "site", "/old-about?ref=mail")
    assert (moved.status, moved.headers["location"]) == (301, "/about?ref=mail")
    splat = get(corral, "site", "/go/intro")
    assert (splat.status, splat.headers["location"]) == (302, "/docs/intro")
    away = get(corral, "site", "/external")
    assert (away.status, away.headers["location"]) == (308, "https://example.com/elsewhere")
    # 200: another asset served at the same URL, with headers whose :name it fills.
    person = get(corral, "site", "/people/ada")
    assert (person.status, person.text) == (200, "<h1>About</h1>\n")
    assert (person.headers["x-person"], person.headers["x-site"]) == ("ada", "corral-test")
    assert get(corral, "site", "/app.js").headers["x-site"] == "corral-test"
    docs = get(corral, "site", "/docs/")
    assert docs.headers["cache-control"] == "no-store" and "x-site" not in docs.headers
    assert moved.headers["x-site"] == "corral-test"  # on the asset server's redirects too
    # The files themselves are no assets.
    for name in ("/_redirects", "/_headers"):
        assert get(corral, "site", name).text == "<h1>Not here</h1>\n"


def test_assets_are_per_script_and_deduplicated(corral):
    deployed(corral, "site", "assets")  # the same files again: a new version, the same blobs
    deployed(corral, "site-copy", "assets")
    def blobs(script):  # where the asset store keeps one script's blobs
        scope = corral.state_dir / "assets" / AssetBlobs.scope(NS, script)
        return sorted(p.name for p in scope.rglob("*") if p.is_file())

    site, copy = blobs("site"), blobs("site-copy")
    assert site == copy and len(site) == 8  # one blob per file (ignored ones left out), per script
    assert get(corral, "sdk", "/about").status == 200  # sdk has no assets: its worker answers
    assert "About" not in get(corral, "sdk", "/about").text


# -- 7. wrangler configs ---------------------------------------------------------------------------


def test_wrangler_keys(corral, tmp_path):
    result = deploy(corral, "wrangler-keys", "wrangler")
    assert result.returncode == 0, result.stderr
    # A real flag Corral does not act on: stored, and the deploy says so (an
    # unknown one is refused, as Cloudflare refuses it).
    assert "compatibility flag 'url_standard' has no effect in Corral" in result.stderr
    resp = get(corral, "wrangler-keys")
    assert resp.json() == {"host": "example.com", "retries": 3, "root": "src is the import root",
                           "page": "<p>a template beside the code</p>\n", "query": "SELECT 1;\n"}
    script = corral.admin("GET", f"/accounts/local/workers/dispatch/namespaces/{NS}/scripts/wrangler-keys")
    # Only what the main module's folder holds goes up beside the Python modules.
    assert [m["name"] for m in script.json()["result"]["modules"]] == [
        "src/entry.py", "src/lib/__init__.py", "src/lib/util.py", "src/page.html", "src/queries/one.sql"]
    content = corral.admin("GET", f"/accounts/local/workers/dispatch/namespaces/{NS}/scripts/"
                                  "wrangler-keys/content")
    assert b'filename="src/page.html"\r\nContent-Type: text/plain' in content.body
    assert script.json()["result"]["compatibility_flags"] == ["python_workers", "url_standard"]
    project = tmp_path / "durable"
    (project / "src").mkdir(parents=True)
    (project / "src/entry.py").write_text("")
    (project / "wrangler.jsonc").write_text(
        '{"main": "src/entry.py", "workflows": [{"name": "w", "binding": "W", "class_name": "W"}]}')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    refused = subprocess.run([sys.executable, "-m", "supervisor", "deploy", "--socket",
                              corral.socket_path, "-n", NS, "durable", str(project)],
                             capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 2
    assert "'workflows' is not supported by Corral yet" in refused.stderr
