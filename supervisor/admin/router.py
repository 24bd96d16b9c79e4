"""Which handler answers a request: path templates to methods.

Templates are paths whose segments are literal, ``*`` (anything: the account
label) or ``{name}`` (captured into ``Request.params``); a last ``{name+}``
takes the rest of the path, slashes and all (an R2 object's key).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from supervisor.admin.decode import decode_json
from supervisor.admin.errors import MethodNotAllowed
from supervisor.admin.render import Response
from supervisor.errors import NotFound


class Request(msgspec.Struct, kw_only=True):
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    #: The API token's id on the TCP listener; empty on the unix socket.
    token_id: str = ""
    #: The dispatch namespaces the caller's token is bound to; empty: any.
    namespaces: tuple[str, ...] = ()
    #: The caller's IP address on the TCP listener; empty on the unix socket
    #: (wrangler tail's ``--ip self`` means it).
    client_ip: str = ""

    def json(self) -> Any:
        return decode_json(self.body, "request body")


Handler = Callable[[Request], Awaitable[Response]]


def api_segments(path: str) -> list[str]:
    """A request path's segments from ``accounts`` (or ``user``...) on: without
    its query, empty segments and Cloudflare's ``/client/v4`` prefix."""
    segments = [s for s in path.split("?", 1)[0].split("/") if s]
    return segments[2:] if segments[:1] == ["client"] else segments


def account_url(request: Request, scheme: str) -> str:
    """``SCHEME://HOST/[client/v4/]accounts/{a}`` as the caller reached it: the
    base of a URL it is given back to fetch itself (a download, a socket)."""
    segments = request.path.strip("/").split("/")
    account = "/".join(segments[:segments.index("accounts") + 2])
    return f"{scheme}://{request.headers.get('host', 'localhost')}/{account}"


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[tuple[str, ...], dict[str, Handler]]] = []

    def add(self, template: str, **methods: Handler) -> None:
        self._routes.append((tuple(template.strip("/").split("/")), methods))

    def resolve(self, method: str, path: str, segments: list[str]) -> tuple[Handler, dict[str, str]]:
        allowed: list[str] = []
        for template, methods in self._routes:
            params = _match(template, segments)
            if params is None:
                continue
            handler = methods.get(method)
            if handler is not None:
                return handler, params
            allowed = list(methods)
        if allowed:
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use {', '.join(allowed)}", allowed)
        raise NotFound(f"no admin API endpoint at {path}")


def _match(template: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if template and template[-1].endswith("+}"):
        if len(segments) < len(template):
            return None
        rest = len(template) - 1
        params = _match(template[:rest], segments[:rest])
        if params is not None:
            params[template[-1][1:-2]] = "/".join(segments[rest:])
        return params
    if len(template) != len(segments):
        return None
    params: dict[str, str] = {}
    for want, got in zip(template, segments, strict=False):
        if want == "*":
            continue
        if want.startswith("{"):
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params
