"""A platform script's live tails as Cloudflare's API has them
(``.../workers/scripts/{name}/tails``), for ``wrangler tail`` and the SDK's
``client.workers.scripts.tail``: see
:mod:`supervisor.observability.tail_sessions` for the tails and their sockets.
"""

from __future__ import annotations

import logging

from supervisor.admin.decode import clip, decode_json
from supervisor.admin.handlers import _PS, Handlers, log_event
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router, account_url
from supervisor.errors import NotFound
from supervisor.observability.tail_sessions import TailSessions


def register(router: Router, core: Handlers, sessions: TailSessions, scheme: str = "ws") -> None:
    """``scheme``: how a client reaches the admin TCP listener's sockets (``wss`` with TLS)."""

    async def create(request: Request) -> Response:
        _, name, _ = await core.deployed(request)
        body = decode_json(request.body, "the tail's filters") if request.body.strip() else None
        session = sessions.create(name, body, request.client_ip)
        log_event(logging.INFO, "admin.tail_created", script=name, id=session.id)
        return envelope(200, sessions.json(session, account_url(request, scheme)))

    async def listed(request: Request) -> Response:
        _, name, _ = await core.deployed(request)
        return envelope(200, [sessions.json(s, account_url(request, scheme)) for s in sessions.of_script(name)])

    async def delete(request: Request) -> Response:
        _, name, _ = await core.deployed(request)
        tail_id = request.params["id"]
        if tail_id not in {s.id for s in sessions.of_script(name)} or not sessions.end(tail_id):
            raise NotFound(f"script {name!r} has no tail {clip(tail_id)!r}")
        log_event(logging.INFO, "admin.tail_deleted", script=name, id=tail_id)
        return envelope(200, None)

    router.add(f"{_PS}/{{name}}/tails", GET=listed, POST=create)
    router.add(f"{_PS}/{{name}}/tails/{{id}}", DELETE=delete)


__all__ = ["register"]
