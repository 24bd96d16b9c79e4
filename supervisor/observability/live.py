"""``GET /tail`` on the admin socket: the live tail's HTTP side.

The admin API is sans-I/O (whole answers); a live tail is a stream, so the
server hands ``GET /tail`` here instead. Bad filters and a full house are
answered with the API's usual error envelope before streaming starts.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from supervisor.admin.decode import MAX_QUERY_FIELDS, parse_target
from supervisor.admin.errors import status_and_code
from supervisor.admin.render import envelope
from supervisor.errors import Invalid, NotFound, Unavailable
from supervisor.model import check_name
from supervisor.observability.tail import TailFilter

if TYPE_CHECKING:
    from supervisor.edge.http_server import Connection
    from supervisor.observability.tail import LiveTail


#: Raises the 404 when a tail's ``(namespace=, script=)`` names nothing deployed.
ScopeCheck = Callable[[str | None, str | None], Awaitable[None]]


async def serve_live_tail(live: LiveTail, target: str, conn: Connection,
                          check_scope: ScopeCheck | None = None) -> None:
    """Stream ``GET /tail``. A ``script=`` that names no deployed script (in
    ``namespace=``, or any namespace without it), or a ``namespace=`` that
    does not exist, is a 404, as Cloudflare's tail of an unknown Worker is:
    it would stream nothing, forever."""
    try:
        parse_target(target)  # bounded and well-formed, or a 400 saying why
        # Every value of a repeated key (header=..&header=..), which the API's
        # decoder keeps only the last of.
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query, keep_blank_values=True,
                                      errors="strict", max_num_fields=MAX_QUERY_FIELDS)
        wanted = TailFilter.parse(query)  # a bad filter is a 400 before any lookup
        script, namespace = wanted.script, wanted.namespace
        if (script or namespace) and check_scope is not None:
            if script:
                check_name("script", script)
            if namespace is not None:
                check_name("namespace", namespace)
            await check_scope(namespace, script)
        await live.serve(query, conn)
    except (Invalid, NotFound, Unavailable) as exc:
        status, code, message = status_and_code(exc)
        status, headers, payload = envelope(status, None, errors=[{"code": code, "message": message}])
        await conn.respond(status, headers, payload)
