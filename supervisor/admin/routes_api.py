"""Routes to platform scripts, in every shape Cloudflare's API gives them.

Corral has one routing table per host (:mod:`supervisor.edge.routes`), and
Cloudflare's tools reach routes three ways, all of which end in it:

* ``/accounts/{a}/workers/routes``: Corral's own listing (``corral routes``);
* ``/zones/{zone}/workers/routes``: Cloudflare's zone routes API, which its
  SDKs call (``client.workers.routes``) and wrangler reads before a deploy;
* ``/accounts/{a}/workers/scripts/{name}/routes``: a script's routes, which
  ``wrangler deploy`` replaces with the ``routes`` of its config.

Corral has no zones. A zone is a label, as the account is: every zone id
reaches the same table, so a zone's listing shows every route (a pattern can
be routed only once either way). Wrangler finds a route's zone by asking
``/zones?name=HOST`` for the route's host and then its parent domains; every
such name is a zone here, with an id derived from the name (32 hex digits,
the shape of Cloudflare's), so the first name asked answers.

A route without a script is an exclusion, as on Cloudflare: the requests it
matches, being the most specific route, are served by no script.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from typing import Any

import msgspec

from supervisor.admin.account import ACCOUNT_ID
from supervisor.admin.decode import body_as, clip, page_of
from supervisor.admin.handlers import _PS, Handlers, log_event
from supervisor.admin.render import Response, envelope, route_json
from supervisor.admin.router import Request, Router
from supervisor.errors import Invalid, NotFound
from supervisor.store.records import RouteInfo

#: A zone name as Cloudflare's ``/zones?name=`` takes it: a host name.
_ZONE_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
#: Most zones one ``/zones`` page lists (Cloudflare's ``per_page`` bound).
MAX_PER_PAGE = 50


class RouteBody(msgspec.Struct, kw_only=True):
    """``POST``/``PUT`` of one route (Cloudflare's body; no script: an exclusion)."""

    pattern: str
    script: str = ""


class ScriptRoute(msgspec.Struct, kw_only=True):
    """One entry of ``PUT .../scripts/{name}/routes``, as wrangler sends it."""

    pattern: str
    #: Where the route lives on Cloudflare; a label here (see the module docstring).
    zone_id: str | None = None
    zone_name: str | None = None
    custom_domain: bool = False


def zone_id(name: str) -> str:
    """The id of the zone called ``name``: the same for every call, shaped like Cloudflare's."""
    return hashlib.blake2b(name.encode(), digest_size=16, person=b"corral-zone").hexdigest()


def zone_json(name: str) -> dict[str, Any]:
    return {"id": zone_id(name), "name": name, "status": "active", "paused": False, "type": "full",
            "account": {"id": ACCOUNT_ID, "name": "Corral"}}


def _zone_of(pattern: str) -> str | None:
    """The zone a route's host names: the host without a leading wildcard label."""
    host = pattern.partition("/")[0].removeprefix("*.")
    return host if _ZONE_NAME.match(host) else None


class RouteHandlers:
    """The three route APIs and the zone lookup, over the store's one table."""

    def __init__(self, core: Handlers) -> None:
        self.core = core
        self.store = core.store

    def register(self, router: Router) -> None:
        router.add("accounts/*/workers/routes", GET=self.list_routes, POST=self.add_account_route)
        router.add("accounts/*/workers/routes/{id}", GET=self.get_route, DELETE=self.delete_route)
        router.add("zones", GET=self.list_zones)
        router.add("zones/*/workers/routes", GET=self.list_routes, POST=self.add_route)
        router.add("zones/*/workers/routes/{id}", GET=self.get_route, PUT=self.update_route,
                   DELETE=self.delete_route)
        router.add(f"{_PS}/{{name}}/routes", GET=self.script_routes, PUT=self.set_script_routes)

    async def _routes(self) -> list[RouteInfo]:
        return await self.core._run(self.store.list_routes)

    # -- one route at a time --------------------------------------------------

    async def list_routes(self, request: Request) -> Response:
        return envelope(200, [route_json(r) for r in await self._routes()])

    async def add_account_route(self, request: Request) -> Response:
        """Corral's own endpoint (SPEC): a script is required; exclusions go through a zone."""
        body = body_as(request.body, RouteBody, '{"pattern": "*.example.com/*", "script": "NAME"}', "add a route")
        if not body.script:
            raise Invalid('send {"pattern": "*.example.com/*", "script": "NAME"} to add a route (a route '
                          "without a script, an exclusion, is added through /zones/{zone}/workers/routes)")
        return await self._add(body)

    async def add_route(self, request: Request) -> Response:
        return await self._add(body_as(request.body, RouteBody, '{"pattern": "example.com/*", "script": "NAME"}',
                                       "add a route"))

    async def _add(self, body: RouteBody) -> Response:
        info = await self.core._run(functools.partial(self.store.add_route, body.pattern, body.script,
                                                      deployed_only=True))
        log_event(logging.INFO, "admin.route_added", pattern=info.pattern, script=info.script)
        return envelope(200, route_json(info))

    async def get_route(self, request: Request) -> Response:
        route_id = request.params["id"]
        for route in await self._routes():
            if route.id == route_id:
                return envelope(200, route_json(route))
        raise NotFound(f"route {clip(route_id)!r} does not exist")

    async def update_route(self, request: Request) -> Response:
        route_id = request.params["id"]
        body = body_as(request.body, RouteBody, '{"pattern": "example.com/*", "script": "NAME"}',
                       "update a route")
        info = await self.core._run(functools.partial(self.store.update_route, route_id, body.pattern,
                                                      body.script, deployed_only=True))
        if info is None:
            raise NotFound(f"route {clip(route_id)!r} does not exist")
        log_event(logging.INFO, "admin.route_updated", id=route_id, pattern=info.pattern, script=info.script)
        return envelope(200, route_json(info))

    async def delete_route(self, request: Request) -> Response:
        route_id = request.params["id"]
        if not await self.core._run(self.store.delete_route, route_id):
            raise NotFound(f"route {clip(route_id)!r} does not exist")
        log_event(logging.INFO, "admin.route_deleted", id=route_id)
        return envelope(200, {"id": route_id})

    # -- a script's routes ----------------------------------------------------

    async def script_routes(self, request: Request) -> Response:
        _, name, _ = await self.core.deployed(request)
        return envelope(200, [route_json(r) for r in await self._routes() if r.script == name])

    async def set_script_routes(self, request: Request) -> Response:
        """wrangler's deploy: the script's routes become exactly these."""
        _, name, _ = await self.core.deployed(request)
        wanted = body_as(request.body, list[ScriptRoute], '[{"pattern": "example.com/*"}, ...]',
                         "set the script's routes")
        for route in wanted:
            if route.custom_domain:
                raise Invalid(f"{clip(route.pattern)!r} is a custom domain: attach it through "
                              "PUT .../scripts/{name}/domains/records or /workers/domains, as wrangler does")
        routes = await self.core._run(self.store.set_script_routes, name, [r.pattern for r in wanted])
        log_event(logging.INFO, "admin.script_routes_set", script=name, patterns=[r.pattern for r in routes])
        return envelope(200, [route_json(r) for r in routes])

    # -- zones ----------------------------------------------------------------

    async def list_zones(self, request: Request) -> Response:
        """``/zones?name=``: the zone of that name (any host name is one);
        without a name, the zones the routes' hosts name."""
        name = request.query.get("name")
        if name is not None:
            name = name.strip().lower().rstrip(".")
            names = [name] if _ZONE_NAME.match(name) else []
        else:
            names = sorted({zone for r in await self._routes() if (zone := _zone_of(r.pattern))})
        shown, info = page_of(request.query, names, 20, MAX_PER_PAGE)
        return envelope(200, [zone_json(n) for n in shown], result_info=info)


__all__ = ["RouteHandlers", "zone_id"]
