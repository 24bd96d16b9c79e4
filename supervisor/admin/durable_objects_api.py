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
"""

from __future__ import annotations

from typing import Any

from supervisor.admin.decode import page_of
from supervisor.admin.handlers import Handlers, namespace_in_query
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.model import DurableObjectNamespace, ScriptRecord

MAX_PER_PAGE = 1000


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


__all__ = ["DurableObjectHandlers"]
