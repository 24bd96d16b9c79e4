"""``GET /tail`` on the admin socket: the live tail's HTTP side.

The admin API is sans-I/O (whole answers); a live tail is a stream, so the
server hands ``GET /tail`` here instead. Bad filters and a full house are
answered with the API's usual error envelope before streaming starts.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

from supervisor.admin.decode import MAX_QUERY_FIELDS, parse_target
from supervisor.admin.errors import status_and_code
from supervisor.admin.render import envelope
from supervisor.errors import Invalid, Unavailable

if TYPE_CHECKING:
    from supervisor.edge.http_server import Connection
    from supervisor.observability.tail import LiveTail


async def serve_live_tail(live: LiveTail, target: str, conn: Connection) -> None:
    try:
        parse_target(target)  # bounded and well-formed, or a 400 saying why
        # Every value of a repeated key (header=..&header=..), which the API's
        # decoder keeps only the last of.
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query, keep_blank_values=True,
                                      errors="strict", max_num_fields=MAX_QUERY_FIELDS)
        await live.serve(query, conn)
    except (Invalid, Unavailable) as exc:
        status, code, message = status_and_code(exc)
        status, headers, payload = envelope(status, None, errors=[{"code": code, "message": message}])
        await conn.respond(status, headers, payload)
