"""Custom domains as Cloudflare's tools attach them, against a real `corral serve`:
the official Python SDK's ``client.workers.domains`` and the calls
``wrangler deploy`` makes for ``routes`` marked ``custom_domain``, each
checked by the requests the domain then serves."""

from __future__ import annotations

import pytest
from cloudflare import NotFoundError

from supervisor.admin.routes_api import zone_id
from tests.harness import Corral, sdk_fixtures

A = "/client/v4/accounts/local"
EDGE = '''from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("{name} " + request.url)
'''

server, cf = sdk_fixtures("domains")


@pytest.fixture(scope="module", autouse=True)
def scripts(server):
    for name in ("edge", "edge2"):
        server.deploy(name, EDGE.replace("{name}", name), namespace=None)


@pytest.fixture(autouse=True)
def clean(server):
    """Each test starts with no custom domain and no route."""
    yield
    for domain in server.admin("GET", f"{A}/workers/domains").json()["result"]:
        assert server.admin("DELETE", f"{A}/workers/domains/{domain['id']}").status == 200
    for route in server.admin("GET", f"{A}/workers/routes").json()["result"]:
        server.admin("DELETE", f"{A}/workers/routes/{route['id']}")


def _served(server, host: str, path: str = "/") -> str:
    resp = server.request(path, host=host)
    return f"{resp.status} {resp.body.decode()}"


def test_a_domain_attached_with_the_sdk_takes_its_host_ahead_of_any_route(server, cf):
    server.route("api.example.com/static/*", "edge2")
    assert _served(server, "api.example.com", "/static/a").startswith("200 edge2 ")
    domain = cf.workers.domains.update(account_id="local", hostname="API.example.com", service="edge",
                                       zone_name="example.com")
    assert (domain.hostname, domain.service, domain.zone_name, domain.environment) == (
        "api.example.com", "edge", "example.com", "production")
    assert domain.zone_id == zone_id("example.com")
    # Every path of the host, the route's too, as a Custom Domain precedes routes on Cloudflare.
    assert _served(server, "api.example.com", "/static/a?q=1") == "200 edge http://api.example.com/static/a?q=1"
    assert _served(server, "api.example.com:8080", "/").startswith("200 edge ")
    assert _served(server, "www.example.com").startswith("404 ")  # only that host
    assert cf.workers.domains.get(domain.id, account_id="local").hostname == "api.example.com"
    listed = cf.workers.domains.list(account_id="local", service="edge")
    assert [d.id for d in listed] == [domain.id]
    assert list(cf.workers.domains.list(account_id="local", hostname="other.example.com")) == []
    # Attached again, elsewhere: the host moves and keeps its id.
    moved = cf.workers.domains.update(account_id="local", hostname="api.example.com", service="edge2",
                                      zone_id=zone_id("example.com"))
    assert (moved.id, moved.service, moved.zone_name) == (domain.id, "edge2", "example.com")
    assert _served(server, "api.example.com", "/").startswith("200 edge2 ")
    cf.workers.domains.delete(domain.id, account_id="local")
    assert _served(server, "api.example.com", "/static/a").startswith("200 edge2 ")  # the route again
    assert _served(server, "api.example.com", "/").startswith("404 ")
    with pytest.raises(NotFoundError):
        cf.workers.domains.get(domain.id, account_id="local")


def test_wrangler_deploy_attaches_its_custom_domains(server):
    records = f"{A}/workers/scripts/edge/domains/records"
    origins = [{"hostname": "a.example.com", "zone_name": "example.com"}, {"hostname": "b.example.com"}]
    change = server.admin("POST", f"{A}/workers/scripts/edge/domains/changeset?replace_state=true", origins)
    assert change.status == 200, change
    assert [d["hostname"] for d in change.json()["result"]["added"]] == ["a.example.com", "b.example.com"]
    resp = server.admin("PUT", records, {"override_scope": True, "override_existing_origin": False,
                                         "override_existing_dns_record": False, "origins": origins})
    assert resp.status == 200, resp
    assert _served(server, "a.example.com").startswith("200 edge ")
    assert _served(server, "b.example.com").startswith("200 edge ")
    # What wrangler reads back of a deployed script's domains.
    listed = server.admin("GET", f"{A}/workers/domains/records?page=0&per_page=5&service=edge"
                                 "&environment=production").json()["result"]
    assert sorted(d["hostname"] for d in listed) == ["a.example.com", "b.example.com"]
    one = server.admin("GET", f"{A}/workers/domains/records/{listed[0]['id']}").json()["result"]
    assert one["service"] == "edge"

    # Another script asks for a.example.com: a conflict until it overrides, as wrangler asks first.
    theirs = f"{A}/workers/scripts/edge2/domains/records"
    wanted = {"override_scope": True, "origins": [{"hostname": "a.example.com"}]}
    change = server.admin("POST", f"{A}/workers/scripts/edge2/domains/changeset?replace_state=true",
                          wanted["origins"]).json()["result"]
    assert [(d["hostname"], d["service"], d["modified"]) for d in change["updated"]] == [
        ("a.example.com", "edge", True)]
    refused = server.admin("PUT", theirs, wanted)
    assert refused.status == 409 and "override_existing_origin" in refused.text and "'edge'" in refused.text
    assert _served(server, "a.example.com").startswith("200 edge ")  # nothing changed
    assert server.admin("PUT", theirs, {**wanted, "override_existing_origin": True}).status == 200
    assert _served(server, "a.example.com").startswith("200 edge2 ")
    # override_scope: a redeploy without b.example.com detaches it.
    assert server.admin("PUT", records, {"override_scope": True, "origins": []}).status == 200
    assert _served(server, "b.example.com").startswith("404 ")
    assert [d["hostname"] for d in server.admin("GET", f"{A}/workers/domains").json()["result"]] == [
        "a.example.com"]


def test_a_domain_survives_a_restart(tmp_path):
    first = Corral(tmp_path).start()
    try:
        first.deploy("edge", EDGE.replace("{name}", "edge"), namespace=None)
        assert first.admin("PUT", f"{A}/workers/domains", {"hostname": "kept.example.com",
                                                           "service": "edge"}).status == 200
    finally:
        first.stop()
    again = Corral(tmp_path).start()
    try:
        assert _served(again, "kept.example.com").startswith("200 edge ")
    finally:
        again.stop()


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("PUT", f"{A}/workers/domains", {"hostname": "*.example.com", "service": "edge"}, 400, "has a wildcard"),
    ("PUT", f"{A}/workers/domains", {"hostname": "example.com/api", "service": "edge"}, 400, "has a path"),
    ("PUT", f"{A}/workers/domains", {"hostname": "exa mple.com", "service": "edge"}, 400, "is not a host name"),
    ("PUT", f"{A}/workers/domains", {"hostname": "a.example.com"}, 400, "to attach a custom domain"),
    ("PUT", f"{A}/workers/domains", {"hostname": "a.example.com", "service": "nobody"}, 404,
     "script 'nobody' not found"),
    ("PUT", f"{A}/workers/domains", {"hostname": "a.example.com", "service": "edge", "zone_name": "other.com"},
     400, "is not in zone 'other.com'"),
    ("PUT", f"{A}/workers/domains", {"hostname": "a.example.com", "service": "edge", "zone_id": "f" * 32},
     400, "is not in zone"),
    ("PUT", f"{A}/workers/domains", {"hostname": "a.example.com", "service": "edge", "environment": "staging"},
     400, "environment 'staging' does not exist"),
    ("GET", f"{A}/workers/domains/nope", None, 404, "custom domain 'nope' does not exist"),
    ("DELETE", f"{A}/workers/domains/nope", None, 404, "custom domain 'nope' does not exist"),
    ("PUT", f"{A}/workers/scripts/nobody/domains/records", {"origins": []}, 404, "script 'nobody' not found"),
    ("PUT", f"{A}/workers/scripts/edge/domains/records", [{"hostname": "a.example.com"}], 400,
     "set the script's custom domains"),
    ("POST", f"{A}/workers/scripts/edge/domains/changeset", [{"hostname": "*.example.com"}], 400,
     "has a wildcard"),
])
def test_bad_domain_calls_are_refused_with_a_reason(server, method, path, body, status, message):
    resp = server.admin(method, path, body)
    assert resp.status == status, resp
    assert message in resp.json()["errors"][0]["message"]
    assert server.admin("GET", f"{A}/workers/domains").json()["result"] == []
