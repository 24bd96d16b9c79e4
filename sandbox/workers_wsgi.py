"""``workers.wsgi``: serve a WSGI app (Flask, Django) from a handler.

``return await wsgi.fetch(app, request, self.env)`` as on Cloudflare. The app
is synchronous; it runs in the handler's own invocation, and ``wsgi.input``
reads the request body lazily through :func:`sandbox.run_sync.run_sync`, so
a large upload is never buffered before the app asks for it and other
requests keep running while it waits. ``environ["workers.env"]`` holds the
bindings. A status that takes no body (101, 103, 204, 205, 304) is answered
with none, and the app's body iterable is closed at its first non-empty chunk
rather than drained.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from . import workers
from .run_sync import can_suspend, run_sync

NULL_BODY_STATUSES = frozenset({101, 103, 204, 205, 304})


def _native(value: str) -> str:
    """PEP 3333's "native string": the UTF-8 bytes as latin-1 code points."""
    return value.encode("utf-8").decode("latin-1")


class _BodyInput(io.RawIOBase):
    """A blocking ``wsgi.input`` over the request's async body."""

    def __init__(self, body: Any) -> None:
        self._iter = body.__aiter__() if body is not None else None
        self._buf = bytearray()

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buf and self._iter is not None:
            try:
                self._buf.extend(run_sync(self._iter.__anext__()))
            except StopAsyncIteration:
                self._iter = None
        n = min(len(target), len(self._buf))
        target[:n] = self._buf[:n]
        del self._buf[:n]
        return n


def build_environ(request: workers.Request, env: Any, body: io.IOBase) -> dict[str, Any]:
    parts = urlsplit(request.url)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": str(request._method),
        "SCRIPT_NAME": "",
        "PATH_INFO": _native(unquote(parts.path or "/")),
        "QUERY_STRING": parts.query,
        "SERVER_NAME": parts.hostname or "localhost",
        "SERVER_PORT": str(parts.port or (443 if parts.scheme == "https" else 80)),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": parts.scheme or "http",
        "wsgi.input": body,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "workers.env": env,
        "workers.request": request,
    }
    for name, value in request.headers.items():
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
            continue
        key = f"HTTP_{key}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _status_code(head: dict[str, Any]) -> int | None:
    return int(head["status"].partition(" ")[0]) if "status" in head else None


def _call_app(app: Callable[..., Any], environ: dict[str, Any]) -> workers.Response:
    head: dict[str, Any] = {}
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and head.get("sent"):
            raise exc_info[1].with_traceback(exc_info[2])
        head["status"] = status
        head["headers"] = headers
        return written.append

    result = app(environ, start_response)
    try:
        for chunk in result:
            if chunk:
                head["sent"] = True
                written.append(bytes(chunk))
                if _status_code(head) in NULL_BODY_STATUSES:
                    break  # no body goes with it: stop pulling, as Cloudflare's adapter does
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if "status" not in head:
        raise RuntimeError("the WSGI application did not call start_response()")
    status = _status_code(head)
    text = head["status"].partition(" ")[2]
    body = None if status in NULL_BODY_STATUSES else b"".join(written)
    return workers.Response(body, status=status, status_text=text, headers=head["headers"])


async def fetch(app: Any, request: workers.Request, env: Any, ctx: Any = None) -> workers.Response:
    """Serve ``request`` with the WSGI ``app`` (Cloudflare's ``workers.wsgi.fetch``)."""
    if can_suspend():
        body: io.IOBase = io.BufferedReader(_BodyInput(request.body))
    else:  # outside a handler's invocation: no lazy reads, buffer the body first
        body = io.BytesIO(await request.bytes())
    return _call_app(app, build_environ(request, env, body))
