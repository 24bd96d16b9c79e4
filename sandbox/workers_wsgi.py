"""``workers.wsgi``: serve a WSGI app (Flask, Django) from a handler.

``return await wsgi.fetch(app, request, self.env)`` as on Cloudflare. The app
is synchronous; it runs in the handler's own invocation, and ``wsgi.input``
reads the request body lazily through :func:`sandbox.run_sync.run_sync`, so
a large upload is never buffered before the app asks for it and other
requests keep running while it waits. ``environ["workers.env"]`` holds the
bindings. A body of more than one chunk and no Content-Length streams as
Cloudflare's adapter streams it: the rest is pulled from the app's iterable
as the client reads, and the iterable's ``close()`` runs at its end, or when
the client stops reading. Both run in the handler's invocation (the task
that sends its response, :func:`sandbox.streams.pump`), so the app's
generator can wait there as its view could: ``requests``, ``urllib3``,
``httpx.Client``, ``run_sync``. A status that takes no body
(101, 103, 204, 205, 304) is answered with none, and the app's body iterable
is closed at its first non-empty chunk rather than drained.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from . import workers
from .run_sync import can_suspend, run_sync

NULL_BODY_STATUSES = frozenset({101, 103, 204, 205, 304})
logger = logging.getLogger("wsgi")


def _path_info(path: str) -> str:
    """``PATH_INFO`` as PEP 3333 has it: the percent-decoded *bytes* as latin-1
    code points. Decoding to text first (``unquote``) turned bytes that are not
    UTF-8 (``/%FF``) into U+FFFD, so the app never saw what was sent."""
    return unquote_to_bytes(path).decode("latin-1")


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
        "PATH_INFO": _path_info(parts.path or "/"),
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
        # The input ends by itself (EOF at the body's end): without this
        # Werkzeug reads nothing of a body that has no Content-Length (a
        # chunked upload). The key is the convention mod_wsgi and Gunicorn set.
        "wsgi.input_terminated": True,
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


def _declares_length(headers: list[tuple[str, str]]) -> bool:
    """The app said how long its body is (``send_file``, a static file): it
    ends, and answered whole it keeps its Content-Length (a streamed body
    goes out chunked), so such a body is still collected first."""
    return any(name.lower() == "content-length" for name, _ in headers)


def _close(result: Any) -> None:
    """PEP 3333: the server calls the iterable's ``close()``, however it ended."""
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _call_app(app: Callable[..., Any], environ: dict[str, Any]) -> workers.Response:
    """Run ``app`` until its response head and body are known. As Cloudflare's
    adapter does, a body of more than one chunk and no declared length
    streams, the rest pulled from the app's iterator as the client reads (a
    Flask generator, Django's ``StreamingHttpResponse``, an endless event
    stream) rather than drained into memory before the first byte goes out;
    any other body is answered whole."""
    head: dict[str, Any] = {}
    written: list[bytes] = []  # start_response's write(), emitted before the iterable

    def write(data: bytes) -> None:
        if data:
            written.append(bytes(data))

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and head.get("sent"):
            raise exc_info[1].with_traceback(exc_info[2])
        head["status"] = status
        head["headers"] = headers
        return write

    result = app(environ, start_response)
    chunks = iter(result)
    first: list[bytes] = []
    streaming = False
    try:
        # The first non-empty chunk (the head is known by then), and whether
        # another follows: only then is the body a stream.
        for chunk in chunks:
            if not chunk:
                continue
            head["sent"] = True
            if _status_code(head) in NULL_BODY_STATUSES:
                break  # no body goes with it: stop pulling, as Cloudflare's adapter does
            first.append(bytes(chunk))
            if not _declares_length(head["headers"]) and (
                    len(first) == 2 or not isinstance(result, (list, tuple))):
                # A body of unknown length that is no list (a generator, Flask's
                # and Django's streaming responses) streams from its first chunk:
                # pulling a second first waited out a generator that blocks
                # between chunks (an SSE loop) before anything went out.
                streaming = True
                break
    except BaseException:
        _close(result)
        raise
    if "status" not in head:
        _close(result)
        raise RuntimeError("the WSGI application did not call start_response()")
    status = _status_code(head)
    text = head["status"].partition(" ")[2]
    if not streaming:
        _close(result)
        body = None if status in NULL_BODY_STATUSES else b"".join(written + first)
        return workers.Response(body, status=status, status_text=text, headers=head["headers"])

    async def rest() -> AsyncIterator[bytes]:
        """The body as the client reads it; the iterable is closed at its end,
        on an error, or when the reader stops (``aclose``, which the sender
        calls in the invocation, not the garbage collector after it)."""
        try:
            for chunk in written + first:
                yield chunk
            written.clear()
            await asyncio.sleep(0)  # see below: the first chunks go out before the app runs on
            for chunk in chunks:
                if written:  # write() called while the body streams
                    for data in written:
                        yield data
                    written.clear()
                if chunk:
                    yield bytes(chunk)
                    # The loop turns, and the chunk goes out, before the app's
                    # iterator runs again (one that blocks between chunks, time.sleep
                    # in a generator, held every chunk back until its end).
                    await asyncio.sleep(0)
            for data in written:
                yield data
        except Exception:
            logger.exception("Exception while streaming WSGI response body")
            raise
        finally:
            _close(result)

    return workers.Response(rest(), status=status, status_text=text, headers=head["headers"])


async def fetch(app: Any, request: workers.Request, env: Any, ctx: Any = None) -> workers.Response:
    """Serve ``request`` with the WSGI ``app`` (Cloudflare's ``workers.wsgi.fetch``)."""
    if can_suspend():
        body: io.IOBase = io.BufferedReader(_BodyInput(request.body))
    else:  # outside a handler's invocation: no lazy reads, buffer the body first
        body = io.BytesIO(await request.bytes())
    return _call_app(app, build_environ(request, env, body))


def entrypoint(app: Any) -> type:
    """``Default = wsgi.entrypoint(app)``: a ``WorkerEntrypoint`` whose
    ``fetch`` serves the WSGI ``app`` (Cloudflare's shorthand, "equivalent to
    creating a WorkerEntrypoint class and using the wsgi.fetch method")."""

    class WsgiEntrypoint(workers.WorkerEntrypoint):
        async def fetch(self, request: workers.Request) -> workers.Response:
            return await fetch(app, request, self.env, self.ctx)

    return WsgiEntrypoint
