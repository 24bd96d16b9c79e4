"""The admin REST API's script, version, settings, route, KV, asset, token
and usage endpoints as a hostile or buggy platform client meets them, against
a real `corral serve` (its admin unix socket and its TCP listener with a bearer
token). Every bad input gets a 4xx JSON error envelope naming the problem; a
refused call writes nothing (no half-applied settings PATCH); the supervisor
lives on and what was deployed keeps answering as before.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest

from tests.harness import multipart, refused, tcp_admin_client, with_tcp_admin

A = "/accounts/local"
NS = f"{A}/workers/dispatch/namespaces"
PS = f"{A}/workers/scripts"
KEEPER = f"{NS}/default/scripts/keeper"
PLAT = f"{PS}/plat"
JSON = "application/json"
CODE = '''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("hi " + self.env.WORD)
'''
META: dict[str, Any] = {"main_module": "worker.py", "bindings": [{"type": "plain_text", "name": "WORD", "text": "x"}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    corral = with_tcp_admin(tmp_path_factory.mktemp("hostile-api")).start()
    corral.deploy("keeper", CODE, bindings=META["bindings"], tags=["plan:free"])
    corral.deploy("plat", CODE, namespace=None, bindings=META["bindings"], tags=["keep"])
    corral.route("plat.test/*", "plat")
    assert corral.admin("PUT", f"{PLAT}/secrets", {"name": "TOKEN", "text": "s3cret"}).status == 200
    yield corral
    corral.stop()


@pytest.fixture(scope="module")
def tcp(server):
    with tcp_admin_client(server, "hostile-api", "/client/v4") as client:
        yield client



def state(server) -> dict[str, Any]:
    """What a refused call must leave as it was: both scripts' deployed
    versions, settings, tags, secrets and deployments, and the routes."""
    out: dict[str, Any] = {}
    for name, path in (("keeper", KEEPER), ("plat", PLAT)):
        for what in ("settings", "tags", "secrets", "deployments", "versions"):
            resp = server.admin("GET", f"{path}/{what}")
            assert resp.status == 200, resp
            out[f"{name}.{what}"] = resp.json()["result"]
    out["plat.script-settings"] = server.admin("GET", f"{PLAT}/script-settings").json()["result"]
    out["routes"] = server.admin("GET", f"{A}/workers/routes").json()["result"]
    return out


def still_serving(server) -> None:
    """The supervisor lives and the platform script answers as before."""
    assert server.alive(), server.log()
    resp = server.request("/", host="plat.test")
    assert (resp.status, resp.body) == (200, b"hi x"), resp


@pytest.fixture
def unchanged(server):
    """The test's calls, all refused, change nothing deployed."""
    before = state(server)
    yield
    still_serving(server)
    assert state(server) == before


# -- settings PATCH: all or nothing ------------------------------------------------------------

BAD_SERVICE = [{"type": "service", "name": "S", "service": "nope"}]


@pytest.mark.parametrize("path", [f"{KEEPER}/settings", f"{PLAT}/settings"])
@pytest.mark.parametrize(("settings", "status", "words"), [
    # Both changed the tags (a 400 that had written half of the PATCH) before.
    ({"tags": ["changed"], "bindings": BAD_SERVICE}, 400, ("could not resolve binding 'S'", "'nope'")),
    ({"tags": ["changed"], "bindings": [*META["bindings"], *BAD_SERVICE]}, 400, ("'nope' not found",)),
    ({"tags": ["changed"], "compatibility_date": "garbage"}, 400, ("compatibility_date", "'garbage'")),
    ({"tags": ["changed"], "bindings": [{"type": "inherit", "name": "NOPE"}]}, 400, ("'NOPE'", "inherit")),
    ({"tags": ["a,b"], "compatibility_date": "2025-06-01"}, 400, ("invalid tag 'a,b'",)),
    ({"tags": [f"t{i}" for i in range(9)], "compatibility_flags": ["nodejs_compat"]}, 400, ("at most 8 tags",)),
    ({"tags": "abc"}, 400, ("settings.tags must be a list",)),
    ({"bindings": "abc"}, 400, ("$.bindings",)),
    ({"bindings": [META["bindings"][0], META["bindings"][0]]}, 400, ("two bindings are named 'WORD'",)),
])
def test_a_refused_settings_patch_changes_nothing(server, unchanged, path, settings, status, words):
    before = state(server)
    refused(server.admin("PATCH", path, settings), status, *words)
    assert state(server) == before
    # The SDK's shape: a multipart 'settings' part.
    body = (f"--b\r\nContent-Disposition: form-data; name=settings\r\n\r\n{json.dumps(settings)}\r\n--b--\r\n")
    refused(server.admin("PATCH", path, body.encode(), "multipart/form-data; boundary=b"), status, *words)


def test_a_settings_patch_of_tags_and_bindings_still_changes_both(server):
    for tags in (["changed"], ["plan:free"]):
        resp = server.admin("PATCH", f"{KEEPER}/settings", {"tags": tags, "bindings": META["bindings"]})
        assert resp.status == 200 and resp.json()["result"]["tags"] == tags, resp
    assert server.admin("GET", f"{KEEPER}/tags").json()["result"] == ["plan:free"]


@pytest.mark.parametrize(("body", "words"), [
    # Made a new version with the tail consumer before refusing the tag.
    ({"tail_consumers": [{"service": "keeper-tail"}], "tags": ["a,b"]}, ("invalid tag 'a,b'",)),
    ({"tail_consumers": [{"service": "keeper-tail"}], "tags": [f"t{i}" for i in range(9)]}, ("at most 8 tags",)),
    ({"tail_consumers": [{"service": 5}]}, ("$.tail_consumers[0].service",)),
    ({"tags": [5]}, ("$.tags[0]",)),
    ([], ("Expected `object`",)),
])
def test_a_refused_script_settings_patch_changes_nothing(server, body, words):
    before = state(server)
    refused(server.admin("PATCH", f"{PLAT}/script-settings", body), 400, *words)
    assert state(server) == before
    still_serving(server)


# -- usage query times ---------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "words"), [
    # An OverflowError from SQLite (a 500) before.
    ("until=" + "9" * 30, ("until must be a time before the year 10000",)),
    ("since=" + "9" * 30, ("since must be a time before the year 10000",)),
    ("until=" + "9" * 400, ("until must be",)),
    ("since=abc", ("since must be epoch seconds",)),
    ("since=1e400", ("since must be epoch seconds",)),
    ("since=nan", ("since must be epoch seconds",)),
    ("since=-infh", ("since must be epoch seconds",)),
    ("until=0&since=1", ("since must not be after until",)),
    ("script=../x", ("invalid script name '../x'",)),
    ("script=plat&tag=keep", ("give script= or tag=",)),
])
def test_a_bad_usage_query_is_a_400(server, query, words):
    refused(server.admin("GET", f"{A}/workers/usage?{query}"), 400, *words)
    still_serving(server)


@pytest.mark.parametrize("query", ["since=-" + "9" * 30 + "d", "since=0001-01-01T00:00:00", "since=-1h"])
def test_a_usage_query_from_before_1970_reads_from_the_start(server, query):
    """(``-1e30d`` was a 500 too: a time before 1970 is read as 1970.)"""
    resp = server.admin("GET", f"{A}/workers/usage?{query}")
    assert resp.status == 200 and resp.json()["success"] is True, resp


# -- deployments, secrets, tags ----------------------------------------------------------------

def _version(server, path: str = PLAT) -> str:
    return server.admin("GET", f"{path}/versions").json()["result"]["items"][0]["id"]


def _deployments() -> list[tuple[Any, int, tuple[str, ...]]]:
    v = "VERSION"
    return [
        ({"versions": [{"version_id": v, "percentage": 50}]}, 400, ("add up to 100", "got 50")),
        ({"versions": [{"version_id": v, "percentage": -100}, {"version_id": "x", "percentage": 200}]}, 400,
         ("each be 0 to 100",)),
        ({"versions": [{"version_id": v, "percentage": 1e308}]}, 400, ("add up to 100",)),
        ({"versions": [{"version_id": v, "percentage": 10**26}]}, 400, ("add up to 100",)),
        ({"versions": [{"version_id": v, "percentage": 60}, {"version_id": v, "percentage": 40}]}, 400,
         ("the same version twice",)),
        ({"versions": [{"version_id": v, "percentage": 100}] * 3}, 400, ("one version (100%) or two",)),
        ({"versions": [{"version_id": "nope", "percentage": 100}]}, 404, ("has no version 'nope'",)),
        ({"versions": [{"version_id": "KEEPER", "percentage": 100}]}, 404, ("script 'plat' has no version",)),
        ({"versions": [{"version_id": "a" * 5000, "percentage": 100}]}, 404, ("has no version",)),
        ({"versions": [{"version_id": v, "percentage": "100"}]}, 400, ("a percentage (number)",)),
        ({"versions": [{"version_id": v, "percentage": True}]}, 400, ("a percentage (number)",)),
        ({"versions": [{"version_id": 5, "percentage": 100}]}, 400, ("a version_id (string)",)),
        ({"versions": [{"version_id": v}]}, 400, ("a percentage (number)",)),
        ({"versions": {"a": 1}}, 400, ('"strategy": "percentage"',)),
        ({"versions": []}, 400, ('"strategy": "percentage"',)),
        ({"strategy": "immediate", "versions": [{"version_id": v, "percentage": 100}]}, 400,
         ("strategy 'immediate' is not supported",)),
        ({"versions": [{"version_id": v, "percentage": 100}], "annotations": {"workers/message": 5}}, 400,
         ("workers/message",)),
        (b'{"versions": [{"version_id": "VERSION", "percentage": NaN}]}', 400, ("not valid JSON",)),
        (b'{"versions": [{"version_id": "VERSION", "percentage": 1e999}]}', 400, ("Number out of range",)),
        (b"null", 400, ('"strategy": "percentage"',)),
        (b'"x"', 400, ('"strategy": "percentage"',)),
    ]


@pytest.mark.parametrize(("body", "status", "words"), _deployments())
def test_a_bad_deployment_is_refused_and_the_running_split_kept(server, unchanged, body, status, words):
    version, other = _version(server), _version(server, KEEPER)
    if isinstance(body, bytes):
        data = body.replace(b"VERSION", version.encode())
    else:
        data = json.dumps(body).replace("VERSION", version).replace("KEEPER", other).encode()
    refused(server.admin("POST", f"{PLAT}/deployments", data, JSON), status, *words)


@pytest.mark.parametrize(("body", "words"), [
    ({"name": "a b", "text": "x"}, ("binding name 'a b'",)),
    ({"name": "", "text": "x"}, ("binding name ''",)),
    ({"name": "A\u0000", "text": "x"}, ("binding name",)),
    ({"name": "1A", "text": "x"}, ("'1A'",)),
    ({"name": "A", "text": 5}, ('"text": "VALUE"',)),
    ({"name": ["A"], "text": "x"}, ('"name": "KEY"',)),
    ({"name": "A", "text": "x", "type": "plain_text"}, ("secret type 'plain_text' is not supported",)),
    # Cloudflare's WebCrypto key secret (no "text"): said so, not "send {name, text}".
    ({"name": "K", "type": "secret_key", "algorithm": {"name": "HMAC"}, "format": "raw", "key_base64": "AA=="},
     ("'secret_key' (a WebCrypto key) is not supported", "importKey")),
    ({"name": "WORD", "text": "x"}, ("already has a plain_text binding named 'WORD'",)),
    ({"name": "A", "text": "\ud800"}, ("lone surrogate",)),
    ([], ('"name": "KEY"',)),
])
def test_a_bad_secret_is_refused_and_the_secrets_kept(server, unchanged, body, words):
    refused(server.admin("PUT", f"{PLAT}/secrets", body), 400, *words)


def test_a_secret_value_past_the_body_limit_is_a_413(server, unchanged):
    refused(server.admin("PUT", f"{PLAT}/secrets", {"name": "BIG", "text": "x" * (2 * 2**20)}), 413, "larger than")


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), [
    ("PUT", f"{KEEPER}/tags", ["a,b"], 400, ("invalid tag 'a,b'",)),
    ("PUT", f"{KEEPER}/tags", [None], 400, ("invalid tag None",)),
    ("PUT", f"{KEEPER}/tags", [""], 400, ("non-empty strings",)),
    ("PUT", f"{KEEPER}/tags", [f"t{i}" for i in range(1000)], 400, ("at most 8 tags",)),
    ("PUT", f"{KEEPER}/tags", {"tags": "x"}, 400, ("as a JSON list",)),
    ("PUT", f"{NS}/default/scripts/nosuch/tags", ["a"], 404, ("'nosuch' not found",)),
    ("PUT", f"{NS}/default/scripts/nosuch/tags/a", None, 404, ("'nosuch' not found",)),
    ("DELETE", f"{NS}/default/scripts?tags=:yes", None, 400, ("invalid tag ''",)),
    ("DELETE", f"{NS}/default/scripts?tags=%2C", None, 400, ("bulk delete needs ?tags=",)),
    ("DELETE", f"{NS}/default/scripts", None, 400, ("bulk delete needs ?tags=",)),
])
def test_bad_tags_are_refused_and_the_tags_kept(server, unchanged, method, path, body, status, words):
    refused(server.admin(method, path, body), status, *words)


# -- uploads -----------------------------------------------------------------------------------

def _upload(meta: dict[str, Any] | None = None, modules: dict[str, Any] | None = None) -> tuple[bytes, str]:
    return multipart({**META, **(meta or {})}, modules or {"worker.py": CODE})


UPLOADS: dict[str, tuple[tuple[bytes, str], int, tuple[str, ...]]] = {
    "main-missing": (_upload({"main_module": "nope.py"}), 400, ("main_module 'nope.py' is not among",)),
    "syntax-error": (_upload(modules={"worker.py": "def ("}), 400, ("failed to load", "SyntaxError")),
    "not-utf8": (_upload(modules={"worker.py": b"\xff\xfe"}), 400, ("worker.py", "is not utf-8 text")),
    "nul-path": (_upload(modules={"worker.py": CODE, "lib/\x00.py": "x"}), 400, ("invalid module name",)),
    "absolute-path": (_upload(modules={"worker.py": CODE, "/abs.py": "x"}), 400, ("invalid module name '/abs.py'",)),
    "dotdot-path": (_upload(modules={"worker.py": CODE, "a/../b.py": "x"}), 400, ("invalid module name",)),
    "unknown-binding": (_upload({"bindings": [{"type": "nope", "name": "X"}]}), 400, ("known binding types",)),
    "binding-missing-field": (_upload({"bindings": [{"type": "kv_namespace", "name": "X"}]}), 400,
                              ("missing required field `namespace_id`",)),
    "duplicate-binding": (_upload({"bindings": [META["bindings"][0]] * 2}), 400, ("two bindings are named 'WORD'",)),
    "date-garbage": (_upload({"compatibility_date": "2025-02-30"}), 400, ("compatibility_date",)),
    "nine-tags": (_upload({"tags": [f"t{i}" for i in range(9)]}), 400, ("at most 8 tags",)),
    "tag-int": (_upload({"tags": [1]}), 400, ("$.tags[0]",)),
    "tail-consumers-garbage": (_upload({"tail_consumers": "x"}), 400, ("$.tail_consumers",)),
    "bad-cron": (_upload({"crons": ["bad cron"]}), 400, ("cron 'bad cron'",)),
    "js-main": (_upload({"main_module": "worker.js"}, {"worker.js": "x"}), 400, ("must be a .py file",)),
    "no-handler": (_upload(modules={"worker.py": "x = 1"}), 400, ("no fetch handler",)),
    "endless-top-level": (_upload(modules={"worker.py": "while True: pass"}), 400, ("startup CPU time",)),
    "assets-unknown-jwt": (_upload({"assets": {"jwt": "nope"}}), 404, ("unknown or expired assets completion",)),
}


@pytest.mark.parametrize("name", list(UPLOADS))
def test_a_bad_upload_over_a_deployed_script_leaves_it_deployed(server, unchanged, name):
    (body, ctype), status, words = UPLOADS[name]
    refused(server.admin("PUT", KEEPER, body, ctype), status, *words)
    refused(server.admin("PUT", PLAT, body, ctype), status, *words)


# An upload's name is held to Cloudflare's rule, with its code (10016) and words.
@pytest.mark.parametrize(("name", "status", "words"), [
    ("..", 400, ("invalid Worker name '..'",)),
    ("%2e%2e", 400, ("invalid Worker name '..'",)),
    ("a%2Fb", 400, ("invalid Worker name 'a/b'",)),
    ("a.b", 400, ("invalid Worker name 'a.b'",)),
    ("a" * 64, 400, ("invalid Worker name",)),
    ("%C3%A9", 400, ("invalid Worker name",)),
    ("a%00", 400, ("invalid Worker name",)),
])
def test_a_bad_script_name_is_refused(server, unchanged, name, status, words):
    body, ctype = _upload()
    refused(server.admin("PUT", f"{NS}/default/scripts/{name}", body, ctype), status, *words)
    refused(server.admin("PUT", f"{PS}/{name}", body, ctype), status, *words)


# -- routes, namespaces ------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "body", "status", "words"), [
    ("POST", f"{A}/workers/routes", {"pattern": "", "script": "plat"}, 400, ("non-empty string",)),
    ("POST", f"{A}/workers/routes", {"pattern": "a" * 10_000, "script": "plat"}, 400, ("longer than 1024",)),
    ("POST", f"{A}/workers/routes", {"pattern": "*", "script": "plat"}, 400, ("has no path",)),
    ("POST", f"{A}/workers/routes", {"pattern": "x .test/*", "script": "plat"}, 400, ("invalid host",)),
    ("POST", f"{A}/workers/routes", {"pattern": "x.test/*?a=b", "script": "plat"}, 400, ("invalid path",)),
    ("POST", f"{A}/workers/routes", {"pattern": "x.test:99999/*", "script": "plat"}, 400, ("has a port",)),
    ("POST", f"{A}/workers/routes", {"pattern": "PLAT.TEST/*", "script": "keeper"}, 409, ("already exists",)),
    ("POST", f"{A}/workers/routes", {"pattern": "x.test/*", "script": "a b"}, 400, ("invalid script name",)),
    ("PUT", f"{PLAT}/routes", [{"pattern": "p1.test/*"}, {"pattern": "bad pattern"}], 400, ("has no path",)),
    ("PUT", f"{PLAT}/routes", [{"pattern": "p1.test/*", "custom_domain": True}], 400, ("is a custom domain",)),
    ("PUT", f"{PLAT}/routes", {"pattern": "p1.test/*"}, 400, ("set the script's routes",)),
    ("PUT", f"{PS}/nope/routes", [{"pattern": "p1.test/*"}], 404, ("'nope' not found",)),
    ("DELETE", f"{A}/workers/routes/nope", None, 404, ("route 'nope' does not exist",)),
    ("POST", NS, {"name": "default"}, 409, ("'default' already exists",)),
    ("POST", NS, {"name": "a" * 64}, 400, ("invalid namespace name",)),
    ("POST", NS, {"namespace_name": 5}, 400, ("invalid namespace name 5",)),
    ("DELETE", f"{NS}/nope", None, 404, ("'nope' does not exist",)),
    ("DELETE", f"{NS}/..", None, 400, ("invalid namespace name '..'",)),
])
def test_a_bad_route_or_namespace_call_is_refused(server, unchanged, method, path, body, status, words):
    refused(server.admin(method, path, body), status, *words)


def test_a_route_moved_onto_a_taken_pattern_keeps_its_own(server, unchanged):
    [route] = [r for r in server.admin("GET", f"{A}/workers/routes").json()["result"] if r["pattern"] == "plat.test/*"]
    taken = server.admin("POST", "/zones/z/workers/routes", {"pattern": "taken.test/*"}).json()["result"]
    try:
        refused(server.admin("PUT", f"/zones/z/workers/routes/{route['id']}",
                             {"pattern": "taken.test/*", "script": "plat"}), 409, "already exists")
        refused(server.admin("PUT", f"/zones/z/workers/routes/{route['id']}",
                             {"pattern": "bad pattern", "script": "plat"}), 400, "has no path")
    finally:
        assert server.admin("DELETE", f"{A}/workers/routes/{taken['id']}").status == 200


# -- KV over REST --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kv(server):
    resp = server.admin("POST", f"{A}/storage/kv/namespaces", {"title": "hostile-kv"})
    base = f"{A}/storage/kv/namespaces/{resp.json()['result']['id']}"
    assert server.admin("PUT", f"{base}/values/a%2Fb", b"kept").status == 200
    return base


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), [
    ("PUT", "/values/" + "k" * 600, b"v", 400, ("exceeds key length limit of 512",)),
    ("PUT", "/values/..", b"v", 400, ('".." is not allowed',)),
    ("PUT", "/values/k?expiration_ttl=5", b"v", 400, ("at least 60",)),
    ("PUT", "/values/k?expiration_ttl=abc", b"v", 400, ("expiration_ttl must be an integer",)),
    ("PUT", "/values/k?expiration=1", b"v", 400, ("Invalid expiration of 1",)),
    ("PUT", "/values/k?expiration_ttl=" + "9" * 30, b"v", 400, ("at most 8640000000000",)),
    ("PUT", "/values/k", b"v" * (25 * 2**20 + 1), 413, ("exceeds limit",)),
    ("PUT", "/bulk", [{"key": "a", "value": 5}], 400, ("$[0].value",)),
    ("PUT", "/bulk", [{"key": "a", "value": "!!!", "base64": True}], 400, ("not base64",)),
    ("PUT", "/bulk", [{"key": "a", "value": "x", "metadata": "x" * 2000}], 413, ("Metadata length",)),
    ("PUT", "/bulk", [{"key": "a", "value": "x", "expiration_ttl": 10**30}], 400, ("at most 8640000000000",)),
    ("PUT", "/bulk", [{"key": "", "value": "x"}], 400, ("must not be empty",)),
    ("PUT", "/bulk", [None], 400, ("$[0]",)),
    ("PUT", "/bulk", {"a": 1}, 400, ("Expected `array`",)),
    ("PUT", "/bulk", [{"key": "a", "value": "x"}] * 10_001, 400, ("more than the 10000",)),
    ("POST", "/bulk/delete", ["a", 5], 400, ("$[1]",)),
    ("POST", "/bulk/get", {"keys": []}, 400, ("maximum of 100 keys",)),
    ("POST", "/bulk/get", {"keys": ["a"], "type": "xml"}, 400, ("'xml'",)),
    ("GET", "/keys?limit=0", None, 400, ("limit must be from 1 to 1000",)),
    ("GET", "/keys?cursor=zz", None, 400, ("Invalid cursor",)),
    ("GET", "/values/a%2Fb?namespace=..%2F", None, 400, ("invalid namespace name '../'",)),
])
def test_a_bad_kv_call_is_refused_and_the_data_kept(server, kv, method, path, body, status, words):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    refused(server.admin(method, kv + path, data, JSON if not isinstance(body, bytes) else None), status, *words)
    kept = server.admin("GET", f"{kv}/values/a%2Fb")
    assert (kept.status, kept.body) == (200, b"kept")
    still_serving(server)


# -- assets, tokens ------------------------------------------------------------------------------

H = "a" * 32


@pytest.mark.parametrize(("manifest", "words"), [
    ({"../x": {"hash": H, "size": 1}}, ("invalid asset path '../x'",)),
    ({"/a/../b": {"hash": H, "size": 1}}, ("invalid asset path",)),
    ({"/a\x00b": {"hash": H, "size": 1}}, ("invalid asset path",)),
    ({"/x": {"hash": "zz", "size": 1}}, ("invalid asset hash 'zz'",)),
    ({"/x": {"hash": 5, "size": 1}}, ("invalid asset hash",)),
    ({"/x": {"hash": H, "size": -1}}, ("a size of 0 to",)),
    ({"/x": {"hash": H, "size": 10**12}}, ("a size of 0 to",)),
    ({"/x": {"hash": H, "size": 1.5}}, ("a size of 0 to",)),
    # Accepted (as a size of 1) before.
    ({"/x": {"hash": H, "size": True}}, ("a size of 0 to",)),
    ({"/x": None}, ("needs a hash and a size",)),
    ([], ('"manifest"',)),
    ({}, ('"manifest"',)),
])
def test_a_bad_asset_manifest_is_refused(server, manifest, words):
    refused(server.admin("POST", f"{PLAT}/assets-upload-session", {"manifest": manifest}), 400, *words)


def test_an_asset_upload_unlike_its_manifest_is_refused(server):
    session = server.admin("POST", f"{PLAT}/assets-upload-session", {"manifest": {"/x": {"hash": "b" * 32, "size": 3}}})
    token = session.json()["result"]["jwt"]

    def upload(body: dict[str, Any], jwt: str = token) -> Any:
        return httpx.post(f"http://127.0.0.1:{server.tcp_port}/client/v4{A}/workers/assets/upload?base64=true",
                          json=body, headers={"authorization": f"Bearer {jwt}"}, timeout=30)

    refused(upload({"b" * 32: "YWJjZA=="}), 413, "is 4 bytes, the manifest said 3")
    refused(upload({"c" * 32: "YWJj"}), 400, "not one this session is waiting for")
    refused(upload({"b" * 32: "YWJj"}, "forged"), 401, "unknown or expired asset upload token")
    # A completion token of another script's session does not deploy its assets here.
    done = upload({"b" * 32: "YWJj"})
    assert done.status_code == 201, done.text
    body, ctype = _upload({"assets": {"jwt": done.json()["result"]["jwt"]}})
    refused(server.admin("PUT", KEEPER, body, ctype), 400, "issued for another script")
    # A stored file named again with another size: served by that size, it was
    # cut short or framed longer than it is.
    refused(server.admin("POST", f"{PLAT}/assets-upload-session", {"manifest": {"/y": {"hash": "b" * 32, "size": 4}}}),
            400, "manifest entry '/y': hash " + "b" * 32 + " is a stored file of 3 bytes, not 4")
    still_serving(server)


@pytest.mark.parametrize(("body", "words"), [
    # Accepted before: a NUL or an escape sequence in `corral token ls`.
    ({"name": "a\u0000b", "scope": "read"}, ("has control characters",)),
    ({"name": "ci\u001b[2J", "scope": "read"}, ("has control characters",)),
    ({"name": 5, "scope": "admin"}, ("a name of 1 to 200",)),
    ({"name": "x" * 10_000, "scope": "admin"}, ("a name of 1 to 200",)),
    ({"name": "x", "scope": "god"}, ("scope 'god'",)),
    ({"name": "x", "scope": "read", "namespaces": "default"}, ("namespaces must be a list",)),
    ({"name": "x", "scope": "read", "namespaces": ["../"]}, ("invalid namespace name '../'",)),
    ([], ('"scope"',)),
])
def test_a_bad_token_is_refused(server, body, words):
    before = server.admin("GET", f"{A}/corral/tokens").json()["result"]
    refused(server.admin("POST", f"{A}/corral/tokens", body), 400, *words)
    assert server.admin("GET", f"{A}/corral/tokens").json()["result"] == before


# -- HTTP level, on the socket and over TCP ------------------------------------------------------

def _raw(server, request: bytes) -> tuple[int, dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(server.socket_path)
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize(("request_line", "extra", "status", "words"), [
    (b"GET //accounts//local//workers//scripts", b"", 404, "no admin API endpoint"),
    (b"GET /accounts/local/workers/scripts%00", b"", 404, "no admin API endpoint"),
    (b"GET /accounts/local/workers/scripts/plat%00", b"", 400, "invalid script name"),
    (b"GET /accounts/local/workers/scripts?per_page=1&per_page=x", b"", 400, "per_page must be an integer"),
    (b"GET /accounts/local/workers/scripts?tags=%ff", b"", 400, "malformed request target"),
    (b"POST /accounts/local/workers/dispatch/namespaces", b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400,
     "malformed chunk-size"),
    (b"POST /accounts/local/workers/dispatch/namespaces", b"Content-Length: -1\r\n\r\n", 400, "Content-Length"),
    (b"PATCH /accounts/local/workers/scripts/plat/settings",
     b"Content-Type: multipart/form-data\r\nContent-Length: 2\r\n\r\n{}", 400, "no boundary"),
    (b"PATCH /accounts/local/workers/scripts/plat/settings",
     b"Content-Type: text/plain\r\nContent-Length: 4\r\n\r\nnull", 400, "settings must be a JSON object"),
    (b"POST /accounts/local/workers/scripts/plat/deployments", b"Content-Length: 2\r\n\r\n[]", 400, '"strategy"'),
    (b"GET /client/v4/client/v4/accounts", b"", 404, "no admin API endpoint"),
    (b"DELETE /accounts/local/workers/scripts/plat/deployments/x", b"", 404, "has no deployment 'x'"),
])
def test_malformed_http_is_a_json_error(server, unchanged, request_line, extra, status, words):
    request = request_line + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + (extra or b"\r\n")
    got, body = _raw(server, request)
    assert got == status and body["success"] is False and words in body["errors"][0]["message"], (got, body)


def test_a_get_with_a_body_is_answered_as_a_get(server):
    got, body = _raw(server, b"GET /accounts/local/workers/scripts HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Connection: close\r\n\r\nhello")
    assert got == 200 and any(s["id"] == "plat" for s in body["result"]), body


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), [
    ("PATCH", f"{PLAT}/settings", {"tags": ["changed"], "bindings": BAD_SERVICE}, 400, "could not resolve binding"),
    ("GET", f"{A}/workers/usage?until=" + "9" * 30, None, 400, "before the year 10000"),
    ("POST", f"{PLAT}/deployments", {"versions": [{"version_id": "nope", "percentage": 100}]}, 404, "no version"),
    ("POST", f"{A}/corral/tokens", {"name": "x", "scope": "admin"}, 403, "only over the admin unix socket"),
    ("PUT", f"{PLAT}/secrets", {"name": "a b", "text": "x"}, 400, "binding name 'a b'"),
])
def test_the_tcp_listener_refuses_the_same_way(server, tcp, unchanged, method, path, body, status, words):
    refused(tcp.request(method, path, json=body), status, words)


@pytest.mark.parametrize("authorization", ["Basic abc", "Bearer " + "x" * 5000, "Bearer a b c", "bearer"])
def test_a_bad_bearer_token_is_a_401(server, unchanged, authorization):
    resp = httpx.put(f"http://127.0.0.1:{server.tcp_port}{PLAT}/tags", json=["x"], timeout=30,
                     headers={"authorization": authorization})
    refused(resp, 401, "token")
