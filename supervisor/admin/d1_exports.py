"""D1 exports as Cloudflare's API makes them (``wrangler d1 export --remote``).

``POST /accounts/{a}/d1/database/{id}/export`` with ``{"output_format":
"polling", "dump_options": {"no_schema", "no_data", "tables"}}`` answers, as
Cloudflare's does once its export is done, ``status: "complete"`` with a
``signed_url`` to download the SQL from; wrangler then fetches that URL
without credentials. Here the export is made at once (in a worker thread, in
one read transaction: :mod:`supervisor.bindings.d1_export`) and kept in
memory for :data:`TTL_S`; the URL's random token is its only credential, as
a presigned URL's signature is (see ``DOWNLOAD`` in
:mod:`supervisor.admin.tokens`). ``?namespace=NS`` exports dispatch
namespace NS's database of that id, as the query endpoint does.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

import msgspec

from supervisor.admin.decode import body_as
from supervisor.admin.handlers import Handlers, namespace_in_query
from supervisor.admin.kv import ResourceHandlers
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router, account_url
from supervisor.bindings.base import BindingError, Scope
from supervisor.bindings.d1 import D1Handler
from supervisor.errors import Invalid, NotFound

if TYPE_CHECKING:
    from supervisor.bindings import Bindings

#: How long a download URL works (Cloudflare's: one hour).
TTL_S = 3600.0
#: Exports kept at once; the oldest goes first.
MAX_KEPT = 8
#: The largest export (it is held in memory until downloaded or expired).
MAX_BYTES = 64 * 2**20
#: Where an export is downloaded from, under ``/client/v4/accounts/{a}/``.
DOWNLOAD_PATH = "d1/exports"


class DumpOptions(msgspec.Struct, kw_only=True):
    no_schema: bool = False
    no_data: bool = False
    tables: list[str] = []


class ExportBody(msgspec.Struct, kw_only=True):
    """The export call (its ``current_bookmark``, for polling an export under
    way, is left out: an export here is done in the first call)."""

    output_format: str = "polling"
    dump_options: DumpOptions = msgspec.field(default_factory=DumpOptions)


class _Kept(msgspec.Struct):
    until: float
    filename: str
    sql: bytes


def register(router: Router, core: Handlers, bindings: Bindings, scheme: str = "http") -> None:
    """``scheme``: how a client reaches this admin listener (``https`` with TLS)."""
    handler = bindings.handlers["d1"]
    assert isinstance(handler, D1Handler)
    databases = ResourceHandlers(core)
    kept: dict[str, _Kept] = {}

    def forget_expired(now: float) -> None:
        for token in [t for t, k in kept.items() if k.until <= now]:
            del kept[token]
        while len(kept) >= MAX_KEPT:
            del kept[next(iter(kept))]

    async def export(request: Request) -> Response:
        body = body_as(request.body, ExportBody, '{"output_format": "polling"}', "export a D1 database")
        if body.output_format != "polling":
            raise Invalid(f"output_format {body.output_format[:40]!r}: only 'polling' is supported")
        database, _ = await databases._one(request, "d1", "id", "D1 database", "id")
        options = body.dump_options
        try:
            sql = await handler.backend.dump(Scope(namespace_in_query(request), database), options.no_schema,
                                             options.no_data, options.tables, MAX_BYTES)
        except BindingError as exc:
            raise Invalid(exc.message) from None
        now = time.monotonic()
        forget_expired(now)
        token = secrets.token_urlsafe(24)
        filename = f"{database}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}.sql"
        kept[token] = _Kept(now + TTL_S, filename, sql)
        return envelope(200, {
            "success": True, "type": "export", "status": "complete", "at_bookmark": token,
            "messages": [f"Exported {len(sql)} bytes"], "error": None,
            "result": {"filename": filename,
                       "signed_url": f"{account_url(request, scheme)}/{DOWNLOAD_PATH}/{token}"}})

    async def download(request: Request) -> Response:
        found = kept.get(request.params["token"])
        if found is None or found.until <= time.monotonic():
            raise NotFound("no such export: its URL is wrong or has expired (it works for an hour)")
        return 200, [(b"content-type", b"application/sql"),
                     (b"content-disposition", f'attachment; filename="{found.filename}"'.encode())], found.sql

    router.add("accounts/*/d1/database/{id}/export", POST=export)
    router.add(f"accounts/*/{DOWNLOAD_PATH}/{{token}}", GET=download)


__all__ = ["DOWNLOAD_PATH", "register"]
