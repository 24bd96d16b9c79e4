"""``GET /tail`` on the admin socket: the live tail's HTTP side.

The admin API is sans-I/O (whole answers); a live tail is a stream, so the
server hands ``GET /tail`` here instead. Bad filters and a full house are
answered with the API's usual error envelope before streaming starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor.admin.decode import parse_target
from supervisor.admin.errors import status_and_code
from supervisor.admin.render import envelope
from supervisor.errors import Invalid, Unavailable

if TYPE_CHECKING:
    from supervisor.edge.http_server import Connection
    from supervisor.observability.tail import LiveTail


async def serve_live_tail(live: LiveTail, target: str, conn: Connection) -> None:
    try:
        _path, _segments, query = parse_target(target)
        await live.serve(query, conn)
    except (Invalid, Unavailable) as exc:
        status, code, message = status_and_code(exc)
        status, headers, payload = envelope(status, None, errors=[{"code": code, "message": message}])
        await conn.respond(status, headers, payload)
