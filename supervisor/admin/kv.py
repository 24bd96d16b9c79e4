"""Workers KV namespaces and D1 databases as Cloudflare's API lists them
(``/storage/kv/namespaces``, ``/d1/database``).

Corral has no registry of KV namespaces: a namespace is the id a
``kv_namespace`` binding names, and its data lives per (dispatch namespace,
id) from the first write. So the account's KV namespaces are the ids its
deployed scripts bind: those of the platform's scripts, or with
``?namespace=NS`` those of dispatch namespace NS's scripts (as the D1 query
endpoint takes it). Each is shown as Cloudflare shows one, its id as its
title. Listing and getting are what clients ask (``wrangler delete`` lists
them after deleting a script, looking for its Workers Sites namespaces);
creating, renaming and deleting one are refused (501): the platform names an
id in a binding instead. D1 databases are the same: the ids ``d1`` bindings
name, listed with the id as both ``uuid`` and ``name`` (``corral d1 execute``
outside a project checks a database id against them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from supervisor.admin.decode import clip, query_int
from supervisor.admin.handlers import Handlers
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.errors import Invalid, NotFound, NotSupported
from supervisor.model import PLATFORM, check_name

_KV = "accounts/*/storage/kv/namespaces"
#: Cloudflare's bounds of ``per_page`` on this list, and its default.
MAX_PER_PAGE = 1000
DEFAULT_PER_PAGE = 20


def _namespace_json(namespace_id: str) -> dict[str, Any]:
    return {"id": namespace_id, "title": namespace_id, "supports_url_encoding": True}


def _choice(request: Request, field: str, allowed: tuple[str, ...]) -> str:
    value = request.query.get(field, allowed[0])
    if value not in allowed:
        raise Invalid(f"{field} must be {' or '.join(allowed)}, got {clip(value)!r}")
    return value


def _page(request: Request, ids: list[str], shape: Callable[[str], dict[str, Any]]) -> Response:
    page = query_int(request.query, "page", 1, 1_000_000)
    per_page = query_int(request.query, "per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)
    shown = ids[(page - 1) * per_page:page * per_page]
    return envelope(200, [shape(i) for i in shown], result_info={
        "page": page, "per_page": per_page, "count": len(shown), "total_count": len(ids),
        "total_pages": (len(ids) + per_page - 1) // per_page})


class KVHandlers:
    def __init__(self, core: Handlers) -> None:
        self.core = core
        self.store = core.store

    def register(self, router: Router) -> None:
        router.add(_KV, GET=self.list_namespaces, POST=self.create_namespace)
        router.add(f"{_KV}/{{kv}}", GET=self.get_namespace, PUT=self.rename_namespace,
                   DELETE=self.delete_namespace)
        router.add("accounts/*/d1/database", GET=self.list_databases)

    async def _ids(self, request: Request, binding_type: str = "kv_namespace", field: str = "namespace_id"
                   ) -> list[str]:
        namespace = request.query.get("namespace") or PLATFORM
        if namespace:
            check_name("namespace", namespace)
        return await self.core._run(self.store.bound_ids, namespace, binding_type, field)

    async def list_namespaces(self, request: Request) -> Response:
        _choice(request, "order", ("id", "title"))  # a namespace's title is its id: one order
        direction = _choice(request, "direction", ("asc", "desc"))
        ids = await self._ids(request)
        if direction == "desc":
            ids.reverse()
        return _page(request, ids, _namespace_json)

    async def list_databases(self, request: Request) -> Response:
        """``GET /accounts/{a}/d1/database`` (``?name=`` filters by name)."""
        ids = await self._ids(request, "d1", "id")
        if "name" in request.query:
            ids = [i for i in ids if i == request.query["name"]]
        return _page(request, ids, lambda i: {"uuid": i, "name": i})

    async def get_namespace(self, request: Request) -> Response:
        namespace_id = request.params["kv"]
        if namespace_id not in await self._ids(request):
            raise NotFound(f"no KV namespace {clip(namespace_id)!r}: a KV namespace is the namespace_id a "
                           "deployed script's kv_namespace binding names, and none names this one")
        return envelope(200, _namespace_json(namespace_id))

    async def create_namespace(self, request: Request) -> Response:
        raise NotSupported("Corral creates no KV namespaces: name any id in a script's kv_namespace binding "
                           "(in wrangler's config: kv_namespaces = [{binding, id}]); its data starts with the "
                           "first write")

    async def rename_namespace(self, request: Request) -> Response:
        raise NotSupported("Corral's KV namespaces have no titles to change: a namespace is the id its "
                           "bindings name")

    async def delete_namespace(self, request: Request) -> Response:
        raise NotSupported("Corral deletes no KV namespaces through this API: a namespace is the id its "
                           "bindings name, and is no longer listed once no deployed script binds it")
