"""Workers KV namespaces and D1 databases as Cloudflare's API lists, makes
and deletes them (``/storage/kv/namespaces``, ``/d1/database``).

A KV namespace or a D1 database is the id a binding names, and its data
lives per (dispatch namespace, id) from the first write: any id works,
made here or not. Made here (``client.kv.namespaces.create(title=...)``,
``client.d1.database.create(name=...)``, ``wrangler d1 create``), an id is
new and random, in Cloudflare's shape, and keeps its title or name
(:meth:`Store.create_resource`), unique as on Cloudflare. The account's
namespaces and databases are those made here and the ids its deployed
scripts bind: those of the platform's scripts, or with ``?namespace=NS``
those of dispatch namespace NS's scripts (as the D1 query endpoint takes
it); an id only bound is shown with the id as its title or name. Deleting
one deletes its data in every namespace, and is refused while a deployed
script binds it (delete or redeploy that script first): nothing a script
serves from disappears under it.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import msgspec

from supervisor.admin.decode import body_as, clip, page_of
from supervisor.admin.handlers import Handlers, log_event, namespace_in_query
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.errors import Conflict, Invalid, NotFound
from supervisor.store.records import ResourceInfo

_KV = "accounts/*/storage/kv/namespaces"
_D1 = "accounts/*/d1/database"
#: Cloudflare's bounds of ``per_page`` on this list, and its default.
MAX_PER_PAGE = 1000
DEFAULT_PER_PAGE = 20
#: Cloudflare's bound on a KV namespace's title.
MAX_TITLE = 512
#: A D1 database's name, as Cloudflare takes one.
_D1_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_KV_KIND, _D1_KIND = "kv_namespace", "d1"


class _Title(msgspec.Struct):
    title: str


class _Name(msgspec.Struct):
    name: str
    #: Where Cloudflare would place it; one host here.
    primary_location_hint: str | None = None


def _namespace_json(namespace_id: str, title: str | None = None) -> dict[str, Any]:
    return {"id": namespace_id, "title": title or namespace_id, "supports_url_encoding": True}


def _database_json(database_id: str, made: ResourceInfo | None = None, *, listed: bool = False) -> dict[str, Any]:
    """One database as Cloudflare shows it. A list's rows have only its scalars
    (wrangler prints each field of a row as text: an object showed as
    ``[object Object]``); its settings (``read_replication``) come with one."""
    row: dict[str, Any] = {"uuid": database_id, "name": made.name if made else database_id,
                           "created_at": made.created_on if made else None, "version": "production"}
    return row if listed else {**row, "read_replication": {"mode": "disabled"}}


class _DatabaseSettings(msgspec.Struct, kw_only=True):
    """``PUT``/``PATCH`` of a D1 database: its read replication, the one setting Cloudflare's has."""

    read_replication: dict[str, Any] | None = None


def choice(request: Request, field: str, allowed: tuple[str, ...]) -> str:
    value = request.query.get(field, allowed[0])
    if value not in allowed:
        raise Invalid(f"{field} must be {' or '.join(allowed)}, got {clip(value)!r}")
    return value


def _page(request: Request, rows: list[Any]) -> Response:
    shown, info = page_of(request.query, rows, DEFAULT_PER_PAGE, MAX_PER_PAGE)
    return envelope(200, shown, result_info=info)


class ResourceHandlers:
    """What the storage resources' endpoints share: the ids known (made here
    or bound), one of them, and deleting one."""

    def __init__(self, core: Handlers) -> None:
        self.core = core
        self.store = core.store

    async def _known(self, request: Request, kind: str, field: str) -> dict[str, ResourceInfo | None]:
        """The ids of ``kind`` made here (with their record) and bound, by id."""
        bound = await self.core._run(self.store.bound_ids, namespace_in_query(request), kind, field)
        made = {r.id: r for r in await self.core._run(self.store.list_resources, kind)}
        return {i: made.get(i) for i in sorted({*bound, *made})}

    async def _one(self, request: Request, kind: str, field: str, what: str, key: str
                   ) -> tuple[str, ResourceInfo | None]:
        known = await self._known(request, kind, field)
        wanted = request.params[key]
        if wanted not in known:
            raise NotFound(f"no {what} {clip(wanted)!r}: none was made with this id, and no deployed "
                           f"script's {kind} binding names it{await self._elsewhere(kind, field, wanted)}")
        return wanted, known[wanted]

    async def _elsewhere(self, kind: str, field: str, wanted: str) -> str:
        """Where scripts of other dispatch namespaces bind ``wanted``, as a
        hint (their data is their namespace's: ``?namespace=``, ``-n``)."""
        namespaces = sorted({r.namespace for r in await self.core._run(self.store.scripts_naming, wanted)
                             if r.namespace and any(type(b).__struct_config__.tag == kind
                                                    and getattr(b, field, None) == wanted for b in r.bindings)})
        if not namespaces:
            return ""
        return (f" here; scripts of dispatch namespace {', '.join(map(repr, namespaces[:5]))} bind it: ask "
                f"there with ?namespace={namespaces[0]} (the CLI's --namespace {namespaces[0]})")

    async def _make(self, kind: str, resource_id: str, name: str, taken: str) -> ResourceInfo:
        """Record ``resource_id`` as ``name``; a name in use is a conflict saying ``taken``."""
        try:
            made = await self.core._run(self.store.create_resource, kind, resource_id, name)
        except Conflict as exc:
            raise Conflict(f"{taken} ({exc})") from None
        log_event(logging.INFO, "admin.resource_created", kind=kind, id=made.id, name=name)
        return made

    async def _delete(self, kind: str, field: str, what: str, wanted: str) -> None:
        """Refused while a deployed script binds it; else its data in every namespace, then its name."""
        users = [f"{r.namespace + '/' if r.namespace else ''}{r.name}"
                 for r in await self.core._run(self.store.scripts_naming, wanted)
                 if any(type(b).__struct_config__.tag == kind and getattr(b, field, None) == wanted
                        for b in r.bindings)]
        if users:
            raise Conflict(f"{what} {clip(wanted)!r} is bound by {', '.join(users[:5])}"
                           f"{' and more' if len(users) > 5 else ''}: delete or redeploy those scripts first")
        await self.core.hooks.purge_bound_data(kind, wanted)
        await self.core._run(self.store.delete_resource, kind, wanted)
        log_event(logging.INFO, "admin.resource_deleted", kind=kind, id=wanted)


class KVHandlers(ResourceHandlers):
    def register(self, router: Router) -> None:
        router.add(_KV, GET=self.list_namespaces, POST=self.create_namespace)
        router.add(f"{_KV}/{{kv}}", GET=self.get_namespace, PUT=self.rename_namespace,
                   DELETE=self.delete_namespace)
        router.add(_D1, GET=self.list_databases, POST=self.create_database)
        router.add(f"{_D1}/{{db}}", GET=self.get_database, DELETE=self.delete_database, PUT=self.update_database,
                   PATCH=self.update_database)

    # -- KV namespaces --------------------------------------------------------

    async def list_namespaces(self, request: Request) -> Response:
        order = choice(request, "order", ("id", "title"))
        direction = choice(request, "direction", ("asc", "desc"))
        rows = [_namespace_json(i, r.name if r else None)
                for i, r in (await self._known(request, _KV_KIND, "namespace_id")).items()]
        rows.sort(key=lambda n: n[order], reverse=direction == "desc")
        return _page(request, rows)

    async def get_namespace(self, request: Request) -> Response:
        wanted, made = await self._one(request, _KV_KIND, "namespace_id", "KV namespace", "kv")
        return envelope(200, _namespace_json(wanted, made.name if made else None))

    @staticmethod
    def _title(request: Request) -> str:
        title = body_as(request.body, _Title, '{"title": "my-namespace"}', "name a KV namespace").title.strip()
        if not title or len(title) > MAX_TITLE or not title.isprintable():
            raise Invalid(f"a KV namespace's title is 1 to {MAX_TITLE} printable characters")
        return title

    async def create_namespace(self, request: Request) -> Response:
        made = await self._make(_KV_KIND, uuid.uuid4().hex, self._title(request),
                                "a namespace with this account ID and title already exists")
        return envelope(200, _namespace_json(made.id, made.name))

    async def rename_namespace(self, request: Request) -> Response:
        title = self._title(request)
        wanted, _ = await self._one(request, _KV_KIND, "namespace_id", "KV namespace", "kv")
        made = await self.core._run(self.store.rename_resource, _KV_KIND, wanted, title)
        return envelope(200, _namespace_json(made.id, made.name))

    async def delete_namespace(self, request: Request) -> Response:
        wanted, _ = await self._one(request, _KV_KIND, "namespace_id", "KV namespace", "kv")
        await self._delete(_KV_KIND, "namespace_id", "KV namespace", wanted)
        return envelope(200, None)

    # -- D1 databases ---------------------------------------------------------

    async def list_databases(self, request: Request) -> Response:
        """``GET /accounts/{a}/d1/database`` (``?name=`` filters by name)."""
        rows = [_database_json(i, r, listed=True) for i, r in (await self._known(request, _D1_KIND, "id")).items()]
        if "name" in request.query:
            rows = [r for r in rows if r["name"] == request.query["name"]]
        return _page(request, rows)

    async def get_database(self, request: Request) -> Response:
        """One database, with its size and table count as Cloudflare's has them
        (from the server's D1 binding; an API without one shows neither)."""
        wanted, made = await self._one(request, _D1_KIND, "id", "D1 database", "db")
        info = getattr(self.core.hooks, "d1_info", None)
        data = await info(namespace_in_query(request), wanted) if info is not None else {}
        return envelope(200, {**_database_json(wanted, made), **data})

    async def create_database(self, request: Request) -> Response:
        name = body_as(request.body, _Name, '{"name": "my-database"}', "make a D1 database").name
        if not _D1_NAME.match(name):
            raise Invalid(f"D1 database name {clip(name)!r}: use 1 to 64 letters, digits, '-' and '_', "
                          "starting with a letter or digit")
        made = await self._make(_D1_KIND, str(uuid.uuid4()), name, "A database with that name already exists")
        return envelope(200, _database_json(made.id, made))

    async def update_database(self, request: Request) -> Response:
        """Read replicas are Cloudflare's across regions; one host keeps one copy,
        so ``{"mode": "disabled"}`` is what it has, and ``"auto"`` a 400 saying so."""
        body = body_as(request.body, _DatabaseSettings, '{"read_replication": {"mode": "disabled"}}',
                       "change a D1 database")
        mode = (body.read_replication or {}).get("mode", "disabled")
        if mode != "disabled":
            raise Invalid(f"read_replication mode {clip(str(mode))!r}: Corral keeps one copy of a database, on "
                          "this host (mode 'disabled')")
        wanted, made = await self._one(request, _D1_KIND, "id", "D1 database", "db")
        return envelope(200, _database_json(wanted, made))

    async def delete_database(self, request: Request) -> Response:
        wanted, _ = await self._one(request, _D1_KIND, "id", "D1 database", "db")
        await self._delete(_D1_KIND, "id", "D1 database", wanted)
        return envelope(200, None)
