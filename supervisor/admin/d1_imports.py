"""D1 imports as Cloudflare's API takes them (``wrangler d1 execute --remote
--file``, ``client.d1.database.import_``): a SQL file run into a database.

Cloudflare's import is three calls to ``POST .../d1/database/{id}/import``:
``{"action": "init", "etag": MD5}`` answers an ``upload_url`` (a presigned
R2 URL there) and a ``filename``; the client PUTs the file there and checks
the ETag it gets back against its MD5; ``{"action": "ingest", "etag",
"filename"}`` runs it and ``{"action": "poll", "current_bookmark"}`` asks
how it went. Here the upload URL is on this admin listener, its random token
its only credential (as a presigned URL's signature is, like a D1 export's
download: :mod:`supervisor.admin.d1_exports`); the file is held in memory
until ingested or :data:`TTL_S` has passed; the ingest runs the whole file
in one transaction, as the database's own ``exec`` would but all or nothing,
and answers ``complete`` at once, so a poll finds it done. ``?namespace=NS``
imports into dispatch namespace NS's database of that id.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

import msgspec

from supervisor.admin.decode import body_as, clip
from supervisor.admin.handlers import Handlers, namespace_in_query
from supervisor.admin.kv import ResourceHandlers
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router, account_url
from supervisor.bindings.base import BindingError, Scope
from supervisor.bindings.d1 import D1Handler, split_sql
from supervisor.errors import Invalid, NotFound, TooLarge

if TYPE_CHECKING:
    from supervisor.bindings import Bindings

#: How long an upload URL, and an import's result for polling, are kept.
TTL_S = 3600.0
#: Imports kept at once (uploaded, not yet ingested, or done); the oldest goes first.
MAX_KEPT = 8
#: The largest file (held in memory until ingested): the admin listener's body limit.
MAX_BYTES = 64 * 2**20
#: Where a file is uploaded to, under ``/client/v4/accounts/{a}/``.
UPLOAD_PATH = "d1/imports"
_MD5 = re.compile(r"^[0-9a-f]{32}$")


class ImportBody(msgspec.Struct, kw_only=True):
    """One call of an import, as the SDK and wrangler send it."""

    action: str
    etag: str | None = None
    filename: str | None = None
    current_bookmark: str | None = None


class _Import(msgspec.Struct, kw_only=True):
    """An import from ``init`` on: its database, its file once uploaded, its
    answer once ingested (kept for polling)."""

    until: float
    scope: Scope
    etag: str
    sql: bytes | None = None
    answer: dict[str, Any] | None = None


def done_json(bookmark: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """A finished import's answer (``ingest`` and ``poll``): how many
    statements ran and what they changed, in D1's ``meta`` names, with the
    database's size after them (``wrangler d1 execute --file`` prints it in
    MB, ``NaN`` without it)."""
    metas = [r["meta"] for r in results]
    duration = round(sum(m["duration"] for m in metas), 3)
    meta = {"changed_db": any(m["changed_db"] for m in metas),
            "changes": sum(m["changes"] for m in metas),
            "duration": duration,
            "rows_read": sum(m["rows_read"] for m in metas),
            "rows_written": sum(m["rows_written"] for m in metas),
            "last_row_id": metas[-1]["last_row_id"] if metas else 0,
            "size_after": metas[-1].get("size_after", 0) if metas else 0,
            "served_by_primary": True, "served_by_region": "local",
            "timings": {"sql_duration_ms": duration}}
    return {"success": True, "type": "import", "status": "complete", "at_bookmark": bookmark, "error": None,
            "messages": [f"Executed {len(results)} queries"],
            "result": {"final_bookmark": bookmark, "num_queries": len(results), "meta": meta}}


def register(router: Router, core: Handlers, bindings: Bindings, scheme: str = "http") -> None:
    """``scheme``: how a client reaches this admin listener (``https`` with TLS)."""
    handler = bindings.handlers["d1"]
    assert isinstance(handler, D1Handler)
    databases = ResourceHandlers(core)
    kept: dict[str, _Import] = {}

    def live(token: str | None, what: str) -> _Import:
        found = kept.get(token or "")
        if found is None or found.until <= time.monotonic():
            raise NotFound(f"no import {clip(token or '')!r}: {what} is wrong or has expired (an import is "
                           "kept for an hour); start again with action 'init'")
        return found

    def make_room(now: float) -> None:
        for token in [t for t, k in kept.items() if k.until <= now]:
            del kept[token]
        while len(kept) >= MAX_KEPT:
            del kept[next(iter(kept))]

    async def init(request: Request, body: ImportBody) -> Response:
        if body.etag is None or not _MD5.match(body.etag):
            raise Invalid("an import's 'init' sends the file's MD5 as 'etag' (32 lowercase hex digits)")
        database, _ = await databases._one(request, "d1", "id", "D1 database", "id")
        now = time.monotonic()
        make_room(now)
        token = secrets.token_urlsafe(24)
        kept[token] = _Import(until=now + TTL_S, scope=Scope(namespace_in_query(request), database),
                              etag=body.etag)
        return envelope(200, {"success": True, "type": "import", "filename": token,
                              "upload_url": f"{account_url(request, scheme)}/{UPLOAD_PATH}/{token}"})

    async def ingest(request: Request, body: ImportBody) -> Response:
        found = live(body.filename, "its filename")
        if found.sql is None:
            raise Invalid("the file was not uploaded: PUT it to the upload_url that 'init' answered")
        if body.etag != found.etag:
            raise Invalid(f"etag {clip(str(body.etag))!r} is not the uploaded file's ({found.etag})")
        try:
            statements = [(sql, []) for sql in split_sql(found.sql.decode("utf-8"))]
        except UnicodeDecodeError:
            raise Invalid("the imported file is not UTF-8 text (SQL)") from None
        except BindingError as exc:
            raise Invalid(exc.message) from None
        if not statements:
            raise Invalid("the imported file holds no SQL statement")
        try:
            results = await handler.run(found.scope, statements, None)
        except BindingError as exc:
            raise Invalid(f"the import was rolled back: {exc.message}") from None
        found.sql, found.answer = None, done_json(body.filename or "", results)
        return envelope(200, found.answer)

    async def poll(request: Request, body: ImportBody) -> Response:
        found = live(body.current_bookmark, "its bookmark")
        if found.answer is None:
            raise Invalid("this import has not been ingested: send action 'ingest' with its etag and filename")
        return envelope(200, found.answer)

    actions = {"init": init, "ingest": ingest, "poll": poll}

    async def start(request: Request) -> Response:
        body = body_as(request.body, ImportBody, '{"action": "init", "etag": "<md5 of the file>"}',
                       "import into a D1 database")
        action = actions.get(body.action)
        if action is None:
            raise Invalid(f"action {clip(body.action)!r}: an import's actions are init, ingest and poll")
        return await action(request, body)

    async def upload(request: Request) -> Response:
        """The file, PUT to the URL ``init`` gave; answered with its MD5 as ETag,
        as R2 answers a presigned upload (wrangler compares the two)."""
        found = live(request.params["token"], "its upload URL")
        if len(request.body) > MAX_BYTES:
            raise TooLarge(f"an imported file is at most {MAX_BYTES} bytes")
        digest = hashlib.md5(request.body, usedforsecurity=False).hexdigest()
        if digest != found.etag:
            raise Invalid(f"the file's MD5 is {digest}, not the etag {found.etag} given to 'init'")
        found.sql = request.body
        return 200, [(b"etag", f'"{digest}"'.encode())], b""

    router.add("accounts/*/d1/database/{id}/import", POST=start)
    router.add(f"accounts/*/{UPLOAD_PATH}/{{token}}", PUT=upload)


__all__ = ["UPLOAD_PATH", "register"]
