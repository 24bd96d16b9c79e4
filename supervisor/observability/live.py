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

#: Cloudflare's workers.api.error.script_not_found.
SCRIPT_NOT_FOUND_CODE = 10007

if TYPE_CHECKING:
    from supervisor.edge.http_server import Connection
    from supervisor.observability.tail import LiveTail


#: Whether a script is deployed: ``(namespace or None for any, name)``.
ScriptExists = Callable[[str | None, str], Awaitable[bool]]


async def serve_live_tail(live: LiveTail, target: str, conn: Connection,
                          script_exists: ScriptExists | None = None) -> None:
    """Stream ``GET /tail``. A ``script=`` that names no deployed script (in
    ``namespace=``, or any namespace without it) is a 404, as Cloudflare's
    tail of an unknown Worker is: it would stream nothing, forever."""
    try:
        parse_target(target)  # bounded and well-formed, or a 400 saying why
        # Every value of a repeated key (header=..&header=..), which the API's
        # decoder keeps only the last of.
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query, keep_blank_values=True,
                                      errors="strict", max_num_fields=MAX_QUERY_FIELDS)
        wanted = TailFilter.parse(query)  # a bad filter is a 400 before any lookup
        script, namespace = wanted.script, wanted.namespace
        if script and script_exists is not None:
            check_name("script", script)
            if namespace is not None:
                check_name("namespace", namespace)
            if not await script_exists(namespace, script):
                where = f" in dispatch namespace {namespace!r}" if namespace else ""
                raise NotFound(f"script {script!r} not found{where}: there is nothing to tail",
                               code=SCRIPT_NOT_FOUND_CODE)
        await live.serve(query, conn)
    except (Invalid, NotFound, Unavailable) as exc:
        status, code, message = status_and_code(exc)
        status, headers, payload = envelope(status, None, errors=[{"code": code, "message": message}])
        await conn.respond(status, headers, payload)
