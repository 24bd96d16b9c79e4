"""Custom domains: a whole host name to one platform script, in Cloudflare's shapes.

On Cloudflare a Custom Domain sends every request for a host name to a
Worker, ahead of any route on that host. Corral keeps them beside the routes
in its one routing table (:class:`supervisor.edge.routes.RouteTable` looks
the host up among them first), and Cloudflare's tools reach them two ways:

* ``/accounts/{a}/workers/domains``: the API its SDKs call
  (``client.workers.domains``): attach (``PUT``), list with filters, get and
  detach;
* ``/accounts/{a}/workers/scripts/{name}/domains/records``: what
  ``wrangler deploy`` puts for the ``routes`` marked ``custom_domain``, after
  asking ``.../domains/changeset`` what would change when it runs in a
  terminal.

There is no DNS and no certificate here (TLS ends in front of Corral), so
nothing can conflict but another script's claim on the host name, which
moves only when the caller says so (``override_existing_origin``), as
wrangler asks its user first. Zones are labels, as for routes
(:mod:`supervisor.admin.routes_api`): a domain's zone is the one the caller
names, by name or id, among the host name and its parent domains, else the
host name itself.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from supervisor.admin.decode import body_as, clip, page_of
from supervisor.admin.handlers import _PS, Handlers, log_event
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.admin.routes_api import zone_id
from supervisor.edge.routes import RouteError, normalize_hostname
from supervisor.errors import Invalid, NotFound
from supervisor.model import PLATFORM
from supervisor.store.records import DomainInfo
from supervisor.store.store import script_not_found

#: Most domains one listing page shows.
MAX_PER_PAGE = 1000
#: The one environment a Corral script has (Cloudflare's service environments are gone).
ENVIRONMENT = "production"


class DomainBody(msgspec.Struct, kw_only=True):
    """``PUT /workers/domains``: attach ``hostname`` to script ``service``."""

    hostname: str
    service: str
    zone_id: str | None = None
    zone_name: str | None = None
    environment: str | None = None


class Origin(msgspec.Struct, kw_only=True):
    """One custom domain of ``wrangler deploy``."""

    hostname: str
    zone_id: str | None = None
    zone_name: str | None = None
    enabled: bool | None = None
    previews_enabled: bool | None = None


class RecordsBody(msgspec.Struct, kw_only=True):
    """``PUT .../scripts/{name}/domains/records``, as wrangler sends it (its
    ``override_existing_dns_record`` is left out: there is no DNS here)."""

    origins: list[Origin]
    #: The script's custom domains become exactly ``origins``.
    override_scope: bool = False
    #: A host name another script holds moves to this one (else: a conflict).
    override_existing_origin: bool = False


_EXAMPLE = '{"hostname": "api.example.com", "service": "SCRIPT"}'
_RECORDS_EXAMPLE = '{"origins": [{"hostname": "api.example.com"}], "override_scope": true}'


def placed(hostname: str, zone_name: str | None, zone: str | None) -> tuple[str, str]:
    """``hostname`` checked and lowercased, and the name of the zone it is
    attached in: ``zone_name``, or the parent domain whose id is ``zone``, or
    else the host name itself. A host name that is not one, or a zone that
    does not contain it, is a 400 naming both."""
    try:
        host = normalize_hostname(hostname)
    except RouteError as exc:
        raise Invalid(str(exc)) from None
    labels = host.split(".")
    parents = [".".join(labels[i:]) for i in range(len(labels))]
    if zone_name:
        name = zone_name.strip().lower().rstrip(".")
        if name not in parents:
            raise Invalid(f"custom domain {clip(hostname)!r} is not in zone {clip(zone_name)!r}")
        return host, name
    if zone:
        for name in parents:
            if zone_id(name) == zone:
                return host, name
        raise Invalid(f"custom domain {clip(hostname)!r} is not in zone {clip(zone)!r} (a zone id is "
                      "that of the host name or one of its parent domains: GET /zones?name=...)")
    return host, host


def domain_json(info: DomainInfo) -> dict[str, Any]:
    return {"id": info.id, "hostname": info.hostname, "service": info.service,
            "environment": ENVIRONMENT, "zone_id": zone_id(info.zone_name), "zone_name": info.zone_name,
            "cert_id": "", "enabled": True, "previews_enabled": False}


class DomainHandlers:
    """The custom domain APIs, over the store's ``domains`` table."""

    def __init__(self, core: Handlers) -> None:
        self.core = core
        self.store = core.store

    def register(self, router: Router) -> None:
        # The literal "records" before "{id}": the router takes the first match.
        router.add("accounts/*/workers/domains/records", GET=self.list_domains)
        router.add("accounts/*/workers/domains/records/{id}", GET=self.get_domain)
        router.add("accounts/*/workers/domains", GET=self.list_domains, PUT=self.attach)
        router.add("accounts/*/workers/domains/{id}", GET=self.get_domain, DELETE=self.detach)
        router.add(f"{_PS}/{{name}}/domains/records", GET=self.script_domains, PUT=self.set_script_domains)
        router.add(f"{_PS}/{{name}}/domains/changeset", POST=self.changeset)

    async def _domains(self) -> list[DomainInfo]:
        return await self.core._run(self.store.list_domains)

    async def _platform_script(self, name: str) -> None:
        if await self.core._run(self.store.get_primary, PLATFORM, name) is None:
            raise script_not_found(PLATFORM, name)

    # -- /workers/domains -----------------------------------------------------

    async def list_domains(self, request: Request) -> Response:
        """Every custom domain, narrowed by ``hostname``, ``service``,
        ``zone_name``, ``zone_id`` and ``environment`` as Cloudflare's are."""
        query = request.query
        shown = [domain_json(d) for d in await self._domains()]
        for field in ("hostname", "service", "zone_name", "zone_id", "environment"):
            if query.get(field):  # host and zone names compare lowercased; a script's name exactly
                wanted = query[field] if field == "service" else query[field].lower()
                shown = [d for d in shown if d[field] == wanted]
        if query.get("page") == "0":  # wrangler asks for page 0; Cloudflare's pages start at 1
            query = {**query, "page": "1"}
        page, info = page_of(query, shown, MAX_PER_PAGE, MAX_PER_PAGE)
        return envelope(200, page, result_info=info)

    async def get_domain(self, request: Request) -> Response:
        domain = request.params["id"]
        for info in await self._domains():
            if info.id == domain:
                return envelope(200, domain_json(info))
        raise NotFound(f"custom domain {clip(domain)!r} does not exist")

    async def attach(self, request: Request) -> Response:
        body = body_as(request.body, DomainBody, _EXAMPLE, "attach a custom domain")
        if body.environment not in (None, "", ENVIRONMENT):
            raise Invalid(f"environment {clip(body.environment)!r} does not exist: Corral scripts have "
                          f"one, {ENVIRONMENT!r}")
        await self._platform_script(body.service)
        host, zone = placed(body.hostname, body.zone_name, body.zone_id)
        info = await self.core._run(self.store.attach_domain, host, body.service, zone)
        log_event(logging.INFO, "admin.domain_attached", hostname=info.hostname, script=info.service)
        return envelope(200, domain_json(info))

    async def detach(self, request: Request) -> Response:
        domain = request.params["id"]
        if not await self.core._run(self.store.detach_domain, domain):
            raise NotFound(f"custom domain {clip(domain)!r} does not exist")
        log_event(logging.INFO, "admin.domain_detached", id=domain)
        return envelope(200, None)

    # -- a script's custom domains (wrangler deploy) --------------------------

    async def script_domains(self, request: Request) -> Response:
        _, name, _ = await self.core.deployed(request)
        return envelope(200, [domain_json(d) for d in await self._domains() if d.service == name])

    async def set_script_domains(self, request: Request) -> Response:
        _, name, _ = await self.core.deployed(request)
        body = body_as(request.body, RecordsBody, _RECORDS_EXAMPLE, "set the script's custom domains")
        wanted = [placed(o.hostname, o.zone_name, o.zone_id) for o in body.origins]
        attached = await self.core._run(
            lambda: self.store.set_script_domains(name, wanted, take=body.override_existing_origin,
                                                  only=body.override_scope))
        log_event(logging.INFO, "admin.script_domains_set", script=name,
                  hostnames=[d.hostname for d in attached])
        return envelope(200, [domain_json(d) for d in attached])

    async def changeset(self, request: Request) -> Response:
        """What ``PUT .../domains/records`` with these origins would change
        (with ``?replace_state=true``, the script's other domains go)."""
        _, name, _ = await self.core.deployed(request)
        origins = body_as(request.body, list[Origin], '[{"hostname": "api.example.com"}]',
                          "ask what attaching custom domains would change")
        held = {d.hostname: d for d in await self._domains()}
        added, updated, wanted = [], [], set()
        for origin in origins:
            host, zone = placed(origin.hostname, origin.zone_name, origin.zone_id)
            wanted.add(host)
            current = held.get(host)
            if current is None:
                added.append(domain_json(DomainInfo(id="", hostname=host, service=name, zone_name=zone)))
            else:
                updated.append({**domain_json(current), "modified": current.service != name})
        removed = [] if request.query.get("replace_state") != "true" else [
            domain_json(d) for d in held.values() if d.service == name and d.hostname not in wanted]
        return envelope(200, {"added": added, "removed": removed, "updated": updated, "conflicting": []})


__all__ = ["DomainHandlers", "domain_json"]
