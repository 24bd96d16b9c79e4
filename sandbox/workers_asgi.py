"""``workers.asgi`` (and the top-level ``asgi``): serve an ASGI app from a handler.

``return await asgi.fetch(app, request, self.env)`` as on Cloudflare: the
app sees ``scope["env"]``, the request body streams in through ``receive``,
and the response is returned as soon as its head and first body chunk are
known (a streamed body keeps coming through an async iterator). A status
that takes no body (101, 103, 204, 205, 304) is answered with none at the
app's first body message, and whatever it sends after is dropped. The lifespan
runs as Cloudflare runs it: a startup before each request and a shutdown
after it, for apps that support it; apps without a lifespan are served as is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote, urlsplit

from . import workers

ASGI = {"spec_version": "2.0", "version": "3.0"}
NULL_BODY_STATUSES = frozenset({101, 103, 204, 205, 304})
logger = logging.getLogger("asgi")
_END = object()


def request_to_scope(request: workers.Request, env: Any, state: dict | None = None) -> dict[str, Any]:
    """The ASGI ``http`` scope of ``request``; ``path`` is percent-decoded as ASGI requires."""
    parts = urlsplit(request.url)
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1"))
               for name, value in request.headers.items()]
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": ASGI,
        "http_version": "1.1",
        "method": str(request._method),
        "scheme": parts.scheme or "http",
        "path": unquote(parts.path or "/"),
        "raw_path": (parts.path or "/").encode("latin-1"),
        "query_string": parts.query.encode("latin-1"),
        "root_path": "",
        "headers": headers,
        "server": (host, port),
        "client": None,
        "env": env,
    }
    if state is not None:
        scope["state"] = dict(state)  # a shallow copy per request, as ASGI asks
    return scope


class _Lifespan:
    """One startup/shutdown cycle of an app's lifespan protocol."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.inbox: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future = loop.create_future()
        self.stopped: asyncio.Future = loop.create_future()
        self.task: asyncio.Task | None = None

    async def startup(self) -> bool:
        """True if the app ran its startup; False if it has no lifespan."""
        await self.inbox.put({"type": "lifespan.startup"})
        self.task = asyncio.ensure_future(self._run())
        return await self.started

    async def shutdown(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.stopped

    async def _run(self) -> None:
        try:
            await self.app({"type": "lifespan", "asgi": ASGI, "state": self.state},
                           self.inbox.get, self._send)
        except Exception as exc:  # noqa: BLE001
            if not self.started.done():
                self.started.set_result(False)  # no lifespan support: serve anyway
                return
            logger.exception("Exception in ASGI lifespan application", exc_info=exc)
        if not self.started.done():
            self.started.set_result(False)
        if not self.stopped.done():
            self.stopped.set_result(None)

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            _settle(self.started, True)
        elif kind == "lifespan.startup.failed":
            _fail(self.started, RuntimeError(message.get("message") or "ASGI lifespan startup failed"))
        elif kind == "lifespan.shutdown.complete":
            _settle(self.stopped, None)
        elif kind == "lifespan.shutdown.failed":
            _fail(self.stopped, RuntimeError(message.get("message") or "ASGI lifespan shutdown failed"))
        else:
            raise RuntimeError(f"unexpected lifespan message {kind!r}")


def _settle(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


async def process_request(app: Any, request: workers.Request, env: Any,
                          state: dict[str, Any] | None = None) -> workers.Response:
    """Run ``app`` for one request; returns once the response head and first chunk are known."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future = loop.create_future()
    finished = asyncio.Event()
    chunks: asyncio.Queue = asyncio.Queue(maxsize=16)
    head: dict[str, Any] = {}
    streaming = False
    source = request.body  # consumed lazily by receive()
    #: The read of the next chunk under way. A receive() given up on (Starlette's
    #: is_disconnected(), asyncio.wait_for) leaves it running for the next one:
    #: the cancellation thrown into the body's generator closed it, and the app
    #: read an empty body.
    pulling: asyncio.Future | None = None

    async def receive() -> dict[str, Any]:
        nonlocal source, pulling
        if source is not None:
            try:
                if pulling is None:
                    pulling = asyncio.ensure_future(source.__anext__())
                chunk = await asyncio.shield(pulling)
                pulling = None
                return {"type": "http.request", "body": bytes(chunk), "more_body": True}
            except StopAsyncIteration:
                pulling = None
                # The last body message: ASGI has none follow it, only
                # ``http.disconnect`` once the response is over.
                source = None
                head["sent_empty"] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if not head.get("sent_empty"):
            head["sent_empty"] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    taken = asyncio.Event()

    async def stream() -> AsyncIterator[bytes]:
        """The body as the runtime sends it. Each chunk the app sends waits
        until the runtime came back for the next (so it went out: an app that
        blocks between chunks, a sync generator with time.sleep, held them
        all back); one closed early (the client went away) ends the app's
        sends with an error and its receive() with ``http.disconnect``, as
        Cloudflare's adapter does (the app's generator ran on for ever)."""
        ended = yielded = False
        try:
            while True:
                if yielded:
                    taken.set()  # back for more: the chunk before went out (its flush is queued first)
                chunk = await chunks.get()
                if chunk is _END:
                    ended = True
                    return
                if isinstance(chunk, BaseException):
                    ended = True
                    raise chunk
                yielded = True
                yield chunk
        finally:
            if not ended:
                head["gone"] = True
                finished.set()
                taken.set()
                while not chunks.empty():  # a send blocked on a full queue goes on, and fails
                    chunks.get_nowait()

    def respond(body: Any) -> None:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.get("headers", [])]
        status = head["status"]
        response = workers.Response(body, status=status, headers=headers)
        if not result.done():
            result.set_result(response)

    async def send(message: dict[str, Any]) -> None:
        nonlocal streaming
        kind = message["type"]
        if kind == "http.response.start":
            head["status"] = int(message["status"])
            head["headers"] = list(message.get("headers", []))
        elif kind == "http.response.body":
            if "status" not in head:
                raise RuntimeError("http.response.body sent before http.response.start")
            body = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            if head["status"] in NULL_BODY_STATUSES:
                # No body goes with 101/103/204/205/304: answer with none at
                # the first body message and drop every chunk after it, so
                # nothing waits on a stream that no one will read.
                if not result.done():
                    respond(None)
                if not more:
                    finished.set()
            elif streaming:
                if head.get("gone"):
                    raise OSError("the client went away: the response is no longer read")
                if body:
                    taken.clear()
                    await chunks.put(body)
                    await taken.wait()
                if not more:
                    await chunks.put(_END)
                    finished.set()
            elif more:
                streaming = True
                respond(stream())
                if body:
                    taken.clear()
                    await chunks.put(body)
                    await taken.wait()
            else:
                respond(body)
                finished.set()

    async def run_app() -> None:
        try:
            await app(request_to_scope(request, env, state), receive, send)
            if not result.done():
                raise RuntimeError("The application did not generate a response")
            if streaming and not finished.is_set():
                await chunks.put(_END)
        except Exception as exc:  # noqa: BLE001
            if not result.done():
                logger.exception("ASGI request failed")
                result.set_exception(exc)
            else:
                # As Cloudflare's adapter does: log it, and end the body where
                # it stopped (a truncated response), not with an error the
                # reader would have to expect.
                logger.exception("Exception in ASGI application after the response started")
                if streaming and not finished.is_set():
                    await chunks.put(_END)
        finally:
            finished.set()

    # A task of its own (sync code the app runs inline may use run_sync in it).
    task = asyncio.ensure_future(run_app())
    if workers.current_invocation.get():
        workers.wait_until(task)  # a streamed body outlives this call
    return await result


def run_in_background(coro: Any) -> asyncio.Future:
    """Run ``coro`` alongside the request (past its response, within the
    invocation's ``waitUntil`` time); an exception it raises is logged on the
    ``asgi`` logger, as Cloudflare's ``asgi.run_in_background`` does."""
    task = asyncio.ensure_future(coro)
    _background.add(task)

    def done(finished: asyncio.Future) -> None:
        _background.discard(finished)
        if not finished.cancelled() and finished.exception() is not None:
            logger.error("Unhandled exception in an ASGI background task",
                         exc_info=finished.exception())

    task.add_done_callback(done)
    if workers.current_invocation.get():
        workers.wait_until(task)
    return task


#: Background tasks still running (the loop keeps only weak references).
_background: set[asyncio.Future] = set()


async def fetch(app: Any, request: workers.Request, env: Any, ctx: Any = None) -> workers.Response:
    """Serve ``request`` with the ASGI ``app`` (Cloudflare's ``workers.asgi.fetch``)."""
    lifespan = _Lifespan(app)
    supported = await lifespan.startup()
    try:
        return await process_request(app, request, env, lifespan.state if supported else None)
    finally:
        if supported:
            await lifespan.shutdown()


def entrypoint(app: Any) -> type:
    """``Default = asgi.entrypoint(app)``: a ``WorkerEntrypoint`` whose
    ``fetch`` serves the ASGI ``app`` (Cloudflare's shorthand for a class
    calling ``asgi.fetch``); a WebSocket upgrade goes to the app's
    ``websocket`` scope, as :func:`websocket` serves it."""

    class AsgiEntrypoint(workers.WorkerEntrypoint):
        async def fetch(self, request: workers.Request) -> workers.Response:
            if (request.headers.get("upgrade") or "").lower() == "websocket":
                return await websocket(app, request, self.env)
            return await fetch(app, request, self.env, self.ctx)

    return AsgiEntrypoint


async def websocket(app: Any, request: workers.Request, env: Any = None) -> workers.Response:
    """Serve a WebSocket upgrade with the ASGI ``app`` (Cloudflare's
    ``workers.asgi.websocket``): the app runs on the server end of a
    ``WebSocketPair`` and the client end goes back in the 101 once the app
    accepts (an app that closes first is answered 403, as ASGI servers do).

    Each client message arrives as an invocation of its own (see
    sandbox.websockets); the app handles it within that invocation, which
    waits for the app to ask for the next message: its CPU is charged there
    and its subrequests and bindings are that invocation's."""
    return await _AsgiSocket(app, request, env).open()


class _AsgiSocket:
    """One ASGI ``websocket`` connection over a worker's accepted socket."""

    def __init__(self, app: Any, request: workers.Request, env: Any) -> None:
        self.app = app
        self.scope = request_to_scope(request, env if env is not None else {})
        self.scope["type"] = "websocket"
        self.scope["scheme"] = "wss" if self.scope["scheme"] == "https" else "ws"
        self.scope.pop("method", None)
        offered = request.headers.get("sec-websocket-protocol") or ""
        self.scope["subprotocols"] = [p.strip() for p in offered.split(",") if p.strip()]
        runtime = workers._runtime
        if runtime is None:
            raise RuntimeError("asgi.websocket() is called while handling a request")
        self.client, self.server = runtime.sockets.pair().object_values()
        self.inbox: asyncio.Queue[tuple[dict[str, Any], int]] = asyncio.Queue()
        #: The headers of the 101: what the app's ``websocket.accept`` gave.
        self.accepted: list[tuple[str, str]] = []
        #: Set while the app waits in ``receive`` with nothing to read.
        self.parked = asyncio.Event()
        self.decided: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task | None = None

    async def open(self) -> workers.Response:
        self.server.accept()
        self.server.addEventListener("message", self._on_message)
        self.server.addEventListener("close", self._on_close)
        self.inbox.put_nowait(({"type": "websocket.connect"}, workers.current_invocation.get()))
        self.task = asyncio.ensure_future(self.app(self.scope, self._receive, self._send))
        _background.add(self.task)
        self.task.add_done_callback(self._ended)
        await asyncio.wait([self.decided, self.task], return_when=asyncio.FIRST_COMPLETED)
        if self.decided.done() and self.decided.result() == 101:
            return workers.Response(None, status=101, web_socket=self.client, headers=self.accepted)
        if self.task.done() and self.task.exception() is not None:
            raise self.task.exception()  # type: ignore[misc]
        self.server.close(1000, "")
        return workers.Response("", status=403)

    def _ended(self, task: asyncio.Task) -> None:
        _background.discard(task)
        self.parked.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("Unhandled exception in an ASGI WebSocket app", exc_info=task.exception())
            if self.decided.done():
                self.server.close(1011, "the app failed")
        elif self.decided.done() and self.server.readyState == 1:
            self.server.close(1000, "")

    async def _receive(self) -> dict[str, Any]:
        if self.inbox.empty():
            self.parked.set()
        message, invocation = await self.inbox.get()
        self.parked.clear()
        # The app's work on this message is the invocation that brought it.
        workers.current_invocation.set(invocation)
        return message

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "websocket.accept":
            if not self.decided.done():
                # The subprotocol and headers the app accepts with go in the 101, as
                # uvicorn sends them (a browser that offered protocols fails one with none).
                self.accepted = [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
                                 for k, v in message.get("headers") or ()]
                if message.get("subprotocol"):
                    self.accepted.append(("sec-websocket-protocol", str(message["subprotocol"])))
                self.decided.set_result(101)
        elif kind == "websocket.send":
            if not self.decided.done():
                self.decided.set_result(101)  # a send accepts, as in ASGI servers
            data = message.get("bytes")
            self.server.send(data if data is not None else message.get("text", ""))
        elif kind == "websocket.close":
            if not self.decided.done():
                self.decided.set_result(403)
            elif self.server.readyState == 1:
                self.server.close(message.get("code") or 1000, message.get("reason") or "")
        else:
            raise RuntimeError(f"unexpected ASGI message on a WebSocket: {kind!r}")

    async def _deliver(self, message: dict[str, Any]) -> None:
        """Hand the app ``message``; wait until it asks for the next (or ends)."""
        if self.task is None or self.task.done():
            return
        self.parked.clear()
        self.inbox.put_nowait((message, workers.current_invocation.get()))
        await self.parked.wait()

    async def _on_message(self, event: Any) -> None:
        data = event.data
        await self._deliver({"type": "websocket.receive", "text": data} if isinstance(data, str)
                            else {"type": "websocket.receive", "bytes": bytes(data)})

    async def _on_close(self, event: Any) -> None:
        await self._deliver({"type": "websocket.disconnect", "code": event.code,
                             "reason": getattr(event, "reason", "")})


def __getattr__(name: str) -> Any:
    """``asgi.env``: Cloudflare's FastAPI dependency for the bindings.

    ``async def route(env=asgi.env)`` is how Cloudflare's FastAPI examples
    reach ``scope["env"]``; it is built on first use so that apps without
    FastAPI never import it.
    """
    if name == "env":
        from fastapi import Depends, Request

        async def env(request: Request) -> Any:
            return request.scope["env"]

        # FastAPI reads the parameter's type to inject the Request; this
        # module's postponed annotations would leave it the string "Request".
        env.__annotations__ = {"request": Request, "return": Any}
        return Depends(env)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
