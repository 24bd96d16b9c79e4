"""Admin endpoints for storage: D1 queries as Cloudflare's D1 API has them.

``POST /accounts/{a}/d1/database/{id}/query`` with ``{"sql": ..., "params":
[...]}`` (or a ``batch`` of them) runs the statements in one transaction on
the database ``id`` of the dispatch namespace given as ``?namespace=``
(none: the platform's), and answers one ``{results, success, meta}`` per
statement; ``.../raw`` answers each statement's rows as arrays beside its
``columns``, as Cloudflare's raw endpoint does.
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
    from supervisor.admin.handlers import Handlers
    from supervisor.bindings import Bindings


#: The code of Cloudflare's API for a D1 query that failed (SQL, a constraint...).
D1_QUERY_ERROR_CODE = 7500


def _statements(body: Any) -> list[tuple[str, list[Any]]]:
    """The statements of a query call: ``{"sql", "params"}``, or ``{"batch":
    [{"sql", "params"}, ...]}`` (the SDK's batch), each checked as a binding
    call checks them."""
    from supervisor.bindings.d1 import _value, split_sql

    if isinstance(body, dict) and "sql" in body and "batch" in body:
        # Else the sql ran and the batch was dropped without a word, its writes with it.
        raise Invalid('send "sql" or "batch", not both: a batch\'s statements go in its entries')
    if isinstance(body, dict) and isinstance(body.get("batch"), list):
        items = body["batch"]
        if not items:
            raise Invalid("batch holds no statement")
    elif isinstance(body, dict) and isinstance(body.get("sql"), str):
        items = [body]
    else:
        raise Invalid('the body must be {"sql": "...", "params": [...]} or {"batch": [{"sql": ...}, ...]}')
    statements: list[tuple[str, list[Any]]] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("sql"), str):
            raise Invalid('each batch entry must be {"sql": "...", "params": [...]}')
        params = item.get("params")
        if params is None:
            params = []
        elif not isinstance(params, list):
            # Not "or []": a 0, "" or {} was taken for no parameters without a word.
            raise Invalid(f"params must be a list of values, got {type(params).__name__}")
        try:
            # As a binding call checks them: a NUL in the SQL, or an integer past
            # 64 bits, was a 500 (SQLite's ValueError and OverflowError).
            split = split_sql(item["sql"])
            params = [_value(v) for v in params]
        except BindingError as exc:
            raise Invalid(exc.message) from None
        if not split:
            raise Invalid("sql holds no statement")
        if params and len(split) != 1:
            raise Invalid("params can only be bound to a single statement")
        statements += [(sql, params) for sql in split]
    return statements


def register(router: Router, core: Handlers, bindings: Bindings) -> None:
    from supervisor.admin.kv import ResourceHandlers
    from supervisor.bindings.d1 import D1Handler

    handler = bindings.handlers["d1"]
    assert isinstance(handler, D1Handler)
    databases = ResourceHandlers(core)

    async def run(request: Request) -> list[dict[str, Any]]:
        statements = _statements(request.json())
        # A database the list, GET and DELETE know of (made here, or bound): a
        # mistyped id made a database no other endpoint could show or delete.
        await databases._one(request, "d1", "id", "D1 database", "id")
        try:
            return await handler.run(Scope(namespace_in_query(request), request.params["id"]), statements, None)
        except BindingError as exc:
            # Cloudflare's API: code 7500, the error without the "D1_ERROR: "
            # the binding's JavaScript puts before it (wrangler prints both).
            raise Invalid(exc.message.removeprefix("D1_ERROR: "), code=D1_QUERY_ERROR_CODE) from None

    async def query(request: Request) -> Response:
        return envelope(200, [_result(r) for r in await run(request)])

    async def raw(request: Request) -> Response:
        """Rows as arrays, with the column names once (``client.d1.database.raw``)."""
        return envelope(200, [{"results": {"columns": r["columns"], "rows": [_row(v) for v in r["rows"]]},
                               "success": True, "meta": r["meta"]} for r in await run(request)])

    router.add("accounts/*/d1/database/{id}/query", POST=query)
    router.add("accounts/*/d1/database/{id}/raw", POST=raw)


def _row(values: list[Any]) -> list[Any]:
    """A row as JSON has it: a blob as its list of bytes, as D1's API shows it."""
    return [list(v) if isinstance(v, bytes) else v for v in values]


def _result(raw: dict[str, Any]) -> dict[str, Any]:
    columns = raw["columns"]
    rows = [dict(zip(columns, _row(row), strict=False)) for row in raw["rows"]]
    return {"results": rows, "success": True, "meta": raw["meta"]}
