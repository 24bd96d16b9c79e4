"""Durable Object namespaces as Cloudflare's API lists them
(``/workers/durable_objects/namespaces``, the SDK's
``client.durable_objects.namespaces.list``).

A namespace is a class a script defines and binds (``durable_object_namespace``
bindings: the class is the binding's script's own, or ``script_name``'s of the
same dispatch namespace). Its id is ``SCRIPT:CLASS`` and its name
``SCRIPT_CLASS``, as a platform script's ``references`` show them. The
platform's scripts' namespaces are listed, or with ``?namespace=NS`` those of
dispatch namespace NS. Every object keeps its storage in SQLite
(``use_sqlite``).

A namespace's objects (``.../namespaces/{id}/objects``, the SDK's
``client.durable_objects.namespaces.objects.list``) are those whose storage
was opened, by id, ``limit`` at a time with Cloudflare's ``cursors.after``.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from supervisor.admin.decode import page_of, query_int
from supervisor.admin.handlers import Handlers, namespace_in_query
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.bindings.durable_objects import ID_RE, objects_of
from supervisor.errors import Invalid, NotFound
from supervisor.model import DurableObjectNamespace, ScriptRecord

if TYPE_CHECKING:
    from supervisor.bindings import Bindings

MAX_PER_PAGE = 1000
#: Objects one page lists by default and at most (Cloudflare's).
OBJECTS_PER_PAGE, MAX_OBJECTS_PER_PAGE = 1000, 10_000


def namespace_json(script: str, class_name: str) -> dict[str, Any]:
    return {"id": f"{script}:{class_name}", "name": f"{script}_{class_name}", "script": script,
            "class": class_name, "use_sqlite": True}


def namespaces_of(records: list[ScriptRecord]) -> list[dict[str, Any]]:
    """The (script, class) pairs ``records`` bind, once each, by script and class."""
    pairs = {(b.script_name or r.name, b.class_name) for r in records for b in r.bindings
             if isinstance(b, DurableObjectNamespace)}
    return [namespace_json(script, class_name) for script, class_name in sorted(pairs)]


class DurableObjectHandlers:
    def __init__(self, core: Handlers) -> None:
        self.core = core
        self.store = core.store

    def register(self, router: Router) -> None:
        router.add("accounts/*/workers/durable_objects/namespaces", GET=self.list_namespaces)

    async def list_namespaces(self, request: Request) -> Response:
        found = namespaces_of(await self.core.every_script(namespace_in_query(request)))
        shown, info = page_of(request.query, found, 20, MAX_PER_PAGE)
        return envelope(200, shown, result_info=info)


def _after(cursor: str) -> str:
    """The object id a cursor names (opaque to callers: base64 of the last id shown)."""
    try:
        after = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
    except (UnicodeError, ValueError, binascii.Error):
        after = ""
    if not ID_RE.fullmatch(after):
        raise Invalid(f"cursor {cursor[:80]!r} is not one this API gave")
    return after


def register_objects(router: Router, core: Handlers, bindings: Bindings) -> None:
    """``GET .../durable_objects/namespaces/{id}/objects``, over the object index."""
    services = bindings.services

    async def list_objects(request: Request) -> Response:
        namespace = namespace_in_query(request)
        wanted = request.params["id"]
        script, _, class_name = wanted.partition(":")
        known = {n["id"] for n in namespaces_of(await core.every_script(namespace))}
        if wanted not in known:
            raise NotFound(f"Durable Object namespace {wanted[:80]!r} does not exist (ids are SCRIPT:CLASS, "
                           "as .../durable_objects/namespaces lists them)")
        limit = query_int(request.query, "limit", OBJECTS_PER_PAGE, MAX_OBJECTS_PER_PAGE)
        cursor = request.query.get("cursor")
        after = _after(cursor) if cursor else ""
        found = await objects_of(services, namespace, script, class_name, after, limit + 1)
        shown = found[:limit]
        more = len(found) > limit
        next_cursor = base64.urlsafe_b64encode(shown[-1][0].encode()).decode() if more else ""
        return envelope(200, [{"id": object_id, "hasStoredData": stored} for object_id, stored in shown],
                        result_info={"count": len(shown), "cursors": {"after": next_cursor}})

    router.add("accounts/*/workers/durable_objects/namespaces/{id}/objects", GET=list_objects)


__all__ = ["DurableObjectHandlers", "register_objects"]
