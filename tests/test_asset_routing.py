"""Which requests a worker's static assets answer, as Cloudflare's asset
worker decides (workers-sdk ``asset-worker/src/handler.ts``, ``canFetch``).

Over the real server, through the dispatcher, each project deployed from a
folder by the CLI as a tenant would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cf_projects import deploy

WORKER = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(f"worker {request.method} {request.url}")
'''


def project(root: Path, assets: dict, files: dict[str, str], date: str = "2025-06-01") -> Path:
    (root / "public").mkdir(parents=True)
    for name, text in files.items():
        path = root / "public" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "worker.py").write_text(WORKER)
    (root / "wrangler.jsonc").write_text(json.dumps({
        "name": root.name, "main": "worker.py", "compatibility_date": date,
        "assets": {"directory": "./public", **assets}}))
    return root


def deployed(corral, name: str, folder: Path) -> None:
    result = deploy(corral, name, str(folder), namespace="default")
    assert result.returncode == 0, result.stderr


def raw_get(corral, host: str, target: str) -> tuple[int, bytes]:
    answer = corral.raw(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1"))
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_dot_segments_do_not_walk_around_run_worker_first(corral, tmp_path):
    """The gate was matched on the raw path: /./admin/secret, /x/../admin/secret
    or /x/%2e%2e/admin/secret were served from the assets, past the worker a
    run_worker_first list puts in front of /admin/* (its auth), and without
    the _headers rule of /admin/*. workerd's URL parser resolves them all."""
    folder = project(tmp_path / "gated", {"run_worker_first": ["/admin/*"]}, {
        "admin/secret.html": "TOP SECRET", "index.html": "home", "_headers": "/admin/*\n  X-Frame-Options: DENY\n"})
    deployed(corral, "gated", folder)
    assert raw_get(corral, "gated.localhost", "/admin/secret") == (200, b"worker GET http://gated.localhost/admin/secret")
    for target in ("/./admin/secret", "/x/../admin/secret", "/x/%2e%2e/admin/secret", "/%2E%2e/admin/secret",
                   "/x/.%2E/admin/secret", "/x\\..\\admin/secret", "/admin/./secret"):
        assert raw_get(corral, "gated.localhost", target) == (
            200, b"worker GET http://gated.localhost/admin/secret"), target
    assert raw_get(corral, "gated.localhost", "/x/..") == (200, b"home")  # "/": the assets' index
    # A dot segment's query is left alone.
    assert raw_get(corral, "gated.localhost", "/admin/./secret?a=/../b")[1].endswith(b"/admin/secret?a=/../b")


@pytest.mark.parametrize("handling, served", [("single-page-application", (200, "app shell")),
                                              ("404-page", (404, "no such page"))])
def test_not_found_handling_takes_only_a_browsers_navigation_from_the_worker(corral, tmp_path, handling, served):
    """Every GET of a path with no asset was the fallback page's, so an API
    worker behind a single-page app never saw its fetch() calls. Cloudflare
    keeps not_found_handling for a navigation (Sec-Fetch-Mode: navigate, from
    the 2025-04-01 compatibility date) and sends the rest to the worker."""
    name = "spa" if handling.startswith("single") else "pages"
    folder = project(tmp_path / name, {"not_found_handling": handling},
                     {"index.html": "app shell", "404.html": "no such page"})
    deployed(corral, name, folder)
    host = f"{name}.localhost"
    api = corral.request("/api/users", host=host)
    assert (api.status, api.text) == (200, f"worker GET http://{host}/api/users")
    cors = corral.request("/api/users", host=host, headers={"sec-fetch-mode": "cors"})
    assert cors.text == f"worker GET http://{host}/api/users"
    page = corral.request("/some/page", host=host, headers={"sec-fetch-mode": "navigate"})
    assert (page.status, page.text) == served
    older = project(tmp_path / f"{name}-2024", {"not_found_handling": handling},
                    {"index.html": "app shell", "404.html": "no such page"}, date="2024-12-01")
    deployed(corral, f"{name}-2024", older)
    before = corral.request("/some/page", host=f"{name}-2024.localhost", headers={"sec-fetch-mode": "navigate"})
    assert before.text == f"worker GET http://{name}-2024.localhost/some/page"  # before the flag's date


def test_static_routing_keeps_not_found_handling_for_every_miss(corral, tmp_path):
    """Under run_worker_first's route list the fallback answers every miss,
    navigation or not: the list is how the worker gets its paths."""
    folder = project(tmp_path / "routed", {"not_found_handling": "single-page-application",
                                           "run_worker_first": ["/api/*"]}, {"index.html": "app shell"})
    deployed(corral, "routed", folder)
    assert corral.request("/api/users", host="routed.localhost").text == "worker GET http://routed.localhost/api/users"
    assert corral.request("/chunk-123.js", host="routed.localhost").text == "app shell"


def test_other_methods_on_an_asset_are_405_and_head_keeps_the_length(corral, tmp_path):
    """A POST to a path an asset is at reached the worker; Cloudflare's asset
    worker answers 405 (workers-sdk's workers-with-assets fixture: "should
    NOT be forwarded onto the user Worker"). A path without one is the
    worker's. HEAD said content-length 0; an unknown extension was sent as
    application/octet-stream, where Cloudflare sends no Content-Type."""
    folder = project(tmp_path / "methods", {}, {"index.html": "home page", "data.greg": "x" * 1234})
    deployed(corral, "methods", folder)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        refused = corral.request("/index.html", host="methods.localhost", method=method, body=b"{}")
        assert (refused.status, refused.headers.get("allow")) == (405, "GET, HEAD"), (method, refused)
    posted = corral.request("/api", host="methods.localhost", method="POST", body=b"{}")
    assert posted.text == "worker POST http://methods.localhost/api"
    head = corral.request("/data.greg", host="methods.localhost", method="HEAD")
    assert (head.status, head.headers["content-length"], head.body) == (200, "1234", b"")
    assert "content-type" not in head.headers


def raw_head(corral, host: str, target: str) -> tuple[int, bytes]:
    answer = corral.raw(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1"))
    head, _, _ = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.lower()


def test_an_asset_is_served_at_its_one_spelling_with_its_headers(corral, tmp_path):
    """A %-encoded letter, an encoded slash or a doubled one reached the file
    past the _headers rules of its path (its CSP, X-Frame-Options): each is a
    307 to the path as Cloudflare's asset worker spells it."""
    folder = project(tmp_path / "spelled", {}, {
        "admin/panel.html": "PANEL", "a b.txt": "spaced", "_headers": "/admin/*\n  X-Frame-Options: DENY\n"})
    deployed(corral, "spelled", folder)
    status, head = raw_head(corral, "spelled.localhost", "/admin/panel")
    assert status == 200 and b"x-frame-options: deny" in head, head
    for target in ("/%61dmin/panel", "/admin%2Fpanel", "//admin/panel", "/admin//panel?x=1"):
        status, head = raw_head(corral, "spelled.localhost", target)
        assert status == 307, (target, head)
        assert b"location: /admin/panel" in head, (target, head)
    assert raw_get(corral, "spelled.localhost", "/a%20b.txt") == (200, b"spaced")  # already its spelling


def test_a_range_is_served_only_of_the_version_if_range_names(corral, tmp_path):
    """RFC 9110 13.1.5: If-Range naming another version (an old ETag, or a
    date assets cannot vouch for) gets the whole file, not a 206 of today's
    bytes to splice onto the client's older copy."""
    folder = project(tmp_path / "ranged", {}, {"file.txt": "hello world"})
    deployed(corral, "ranged", folder)
    whole = corral.request("/file.txt", host="ranged.localhost")
    etag = whole.headers["etag"]
    same = corral.request("/file.txt", host="ranged.localhost", headers={"range": "bytes=0-3", "if-range": etag})
    assert (same.status, same.body) == (206, b"hell")
    # A range (or credentials) gets no Cache-Control, as Cloudflare's asset worker's isCacheable.
    assert "cache-control" in whole.headers and "cache-control" not in same.headers
    private = corral.request("/file.txt", host="ranged.localhost", headers={"authorization": "Bearer x"})
    assert private.status == 200 and "cache-control" not in private.headers
    for validator in ('"an-old-etag"', "Wed, 21 Oct 2015 07:28:00 GMT"):
        other = corral.request("/file.txt", host="ranged.localhost",
                               headers={"range": "bytes=0-3", "if-range": validator})
        assert (other.status, other.body) == (200, b"hello world"), (validator, other)


def test_an_excluded_path_is_the_assets_even_when_none_is_there(corral, tmp_path):
    """Cloudflare's router worker sends a path a `!/...` rule matches to the
    assets, their 404 included; it ran the worker for a missing file."""
    folder = project(tmp_path / "excluded", {"run_worker_first": ["/static/*", "!/static/pub/*"]},
                     {"static/pub/here.txt": "public", "index.html": "home"})
    deployed(corral, "excluded", folder)
    assert raw_get(corral, "excluded.localhost", "/static/secret") == (
        200, b"worker GET http://excluded.localhost/static/secret")
    assert raw_get(corral, "excluded.localhost", "/static/pub/here.txt") == (200, b"public")
    status, body = raw_get(corral, "excluded.localhost", "/static/pub/missing")
    assert status == 404 and not body.startswith(b"worker"), body


def test_html_handling_redirects_and_rules_written_encoded(corral, tmp_path):
    """html_handling's redirect sent the decoded name as its Location: a name
    with a space, ? or # went out raw (?x became a query) and a non-Latin-1
    one was a 500; and a run_worker_first rule written encoded (/a%20b/*)
    never matched, Cloudflare's router matching the path as the URL spells it."""
    folder = project(tmp_path / "named", {"run_worker_first": ["/a%20b/*"]}, {
        "日本.html": "nihon", "q?x.html": "query", "sp ace.html": "space", "a b/secret.txt": "SECRET"})
    deployed(corral, "named", folder)
    for target, location in (("/%E6%97%A5%E6%9C%AC.html", b"/%E6%97%A5%E6%9C%AC"), ("/q%3Fx.html", b"/q%3Fx"),
                             ("/sp%20ace.html", b"/sp%20ace")):
        status, head = raw_head(corral, "named.localhost", target)
        assert status == 307 and b"location: " + location.lower() + b"\r\n" in head + b"\r\n", (target, head)
    assert raw_get(corral, "named.localhost", "/a%20b/secret.txt") == (
        200, b"worker GET http://named.localhost/a%20b/secret.txt")
