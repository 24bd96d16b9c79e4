"""Admin endpoints for storage: D1 queries as Cloudflare's D1 API has them.

``POST /accounts/{a}/d1/database/{id}/query`` with ``{"sql": ..., "params":
[...]}`` runs the statements of ``sql`` in one transaction on the database
``id`` of the dispatch namespace given as ``?namespace=`` (none: the
platform's), and answers one ``{results, success, meta}`` per statement.
``corral d1 execute`` and ``corral d1 migrations apply`` are built on it.
The operator is not held to tenants' caps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from supervisor.admin.handlers import namespace_in_query
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.bindings.base import BindingError, Scope
from supervisor.errors import Invalid

if TYPE_CHECKING:
    from supervisor.bindings import Bindings


def register(router: Router, bindings: Bindings) -> None:
    async def query(request: Request) -> Response:
        from supervisor.bindings.d1 import D1Handler, _value, split_sql

        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
            raise Invalid('the body must be {"sql": "...", "params": [...]}')
        namespace = namespace_in_query(request)
        params = body.get("params") or []
        if not isinstance(params, list):
            raise Invalid("params must be a list")
        try:
            # As a binding call checks them: a NUL in the SQL, or an integer past
            # 64 bits, was a 500 (SQLite's ValueError and OverflowError).
            statements = split_sql(body["sql"])
            params = [_value(v) for v in params]
        except BindingError as exc:
            raise Invalid(exc.message) from None
        if not statements:
            raise Invalid("sql holds no statement")
        if params and len(statements) != 1:
            raise Invalid("params can only be bound to a single statement")
        handler = bindings.handlers["d1"]
        assert isinstance(handler, D1Handler)
        try:
            results = await handler.run(Scope(namespace, request.params["id"]),
                                        [(s, params if params else []) for s in statements], None)
        except BindingError as exc:
            raise Invalid(exc.message) from None
        return envelope(200, [_result(r) for r in results])

    router.add("accounts/*/d1/database/{id}/query", POST=query)


def _result(raw: dict[str, Any]) -> dict[str, Any]:
    columns = raw["columns"]
    rows = [dict(zip(columns, [list(v) if isinstance(v, bytes) else v for v in row], strict=False))
            for row in raw["rows"]]
    return {"results": rows, "success": True, "meta": raw["meta"]}
