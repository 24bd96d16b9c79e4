"""The public HTTP entry: route a request to a script, invoke it, answer.

Routing: the route table (``corral routes``) maps host/path patterns to a
platform script, normally the dispatch worker, which then picks a user worker
from a dispatch namespace. Nothing matching is a 404 from Corral itself. The
script comes from the store's cache inline; only a miss awaits a read in a
worker thread (supervisor.store.lookup).

The response head comes from the child; the body is streamed from wherever
it is (inline, the child, or a body the dispatcher passed on unread) straight
to the client socket, one chunk at a time: with a Content-Length when its
source knows the length in advance (supervisor.pool.bodies.body_length), as
workerd frames it, else chunked.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

import trio

from protocol.url_path import needs_normalising, normalised
from supervisor import loop_clock
from supervisor.config import ServeConfig
from supervisor.edge.assets import AssetServer, send_answer
from supervisor.edge.client_ip import ClientAddress, TrustedProxies
from supervisor.edge.http_server import Connection, InvalidResponse, LengthMismatch, Request, RequestBody
from supervisor.edge.websockets import Deliverer, Session, SocketSource, handshake_problem
from supervisor.lifecycle import OUTCOME_MESSAGE, OUTCOME_STATUS, Outcome
from supervisor.limits import loop_limit
from supervisor.limits.policy import LimitPolicy
from supervisor.log import log, warn
from supervisor.log import request_id as log_request_id
from supervisor.model import PLATFORM
from supervisor.pool.bodies import BodyError, BodySource, BytesBody, body_length
from supervisor.pool.child_process import MAX_CALL_URL
from supervisor.pool.invocation import Invocation
from supervisor.pool.pool import Pool, PoolUnavailable
from supervisor.store.lookup import NOT_CACHED, ScriptSource

#: Runs the routed script's ``scheduled()`` for a cron (``/cdn-cgi/handler/scheduled``).
ScheduledRunner = Callable[..., Awaitable[dict]]
SCHEDULED_PATH = "/cdn-cgi/handler/scheduled"

#: host, path -> the platform script routed there (None: no route matches).
Router = Callable[[str, str], "str | None"]
TraceSink = Callable[[Invocation], None]
#: ``(request, url, request_id)``: a request no script answered (the route's
#: script may be gone: a scriptNotFound trace event).
MissingSink = Callable[[Request, str, str], None]
#: ``(headers, peer address) -> request id`` (supervisor.observability.request_id).
RequestIdSource = Callable[[list[tuple[bytes, bytes]], str], str]

REQUEST_ID_HEADER = b"x-corral-request-id"
#: How long a request waits for its response head before it also watches
#: for the client going away (fast answers never pay for the watch).
WATCH_CLIENT_AFTER_S = 0.05
#: How often :meth:`Ingress.run` wakes the requests whose head is late.
SWEEP_S = 0.01
#: Sweeps that found nothing parked before the sweeper sleeps until a request
#: parks: at a few requests a second it then does not wake at every one.
QUIET_SWEEPS = 5

_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]

#: A Host header's value (RFC 9112 section 3.2, RFC 3986 section 3.2.2): a
#: registered name or an IP literal, and a port. No userinfo, path, query,
#: fragment, space or list: the router reads the host as the text before
#: the path, but a worker reads ``http://{host}{target}`` as a URL, where
#: ``a.example#`` or ``a.example/x`` would move the path it routed on, and
#: ``x@a.example`` would name another host.
_AUTHORITY = re.compile(rb"(?:[-A-Za-z0-9._~!$&'()*+,;=]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?")
_ABSOLUTE = re.compile(rb"https?://([^/?#]*)([/?].*)?", re.IGNORECASE | re.DOTALL)


#: Host headers that passed :data:`_AUTHORITY` (the request path's shortcut in
#: ``Ingress._to_origin_form``), at most :data:`MAX_CHECKED_HOSTS` of them.
_CHECKED_HOSTS: set[bytes] = set()
MAX_CHECKED_HOSTS = 4096


class BadTarget(Exception):
    """The request's target or Host cannot name one worker's URL (answered with 400)."""


def origin_form(method: bytes, target: bytes, host: bytes) -> tuple[bytes, bytes]:
    """``(host, target)`` with the target as a path (origin-form).

    An absolute-form target (``GET http://a.example/x``) is read as RFC 9112
    section 3.2.2 has it, naming the host itself, and must agree with a Host
    header if there is one: the router and a proxy in front could otherwise
    each take a different one. What names no resource of a worker (``*``,
    CONNECT's ``host:port``, a fragment, a malformed Host) raises
    :class:`BadTarget` naming the problem, rather than reaching the worker
    as a URL it cannot parse (a 500).
    """
    if method == b"CONNECT":
        raise BadTarget("CONNECT asks for a tunnel, and this server is not a proxy")
    absolute = None if target[:1] == b"/" else _ABSOLUTE.fullmatch(target)  # the common case first
    if absolute is not None:
        authority = absolute.group(1)
        if host and authority.lower() != host.lower():
            raise BadTarget(f"the target names the host {authority[:100].decode('latin-1')!r} but the Host "
                            f"header {host[:100].decode('latin-1')!r}; they must agree (RFC 9112 section 3.2.2)")
        host = authority
        target = absolute.group(2) or b"/"
        if target.startswith(b"?"):
            target = b"/" + target
    elif target == b"*":
        raise BadTarget("the asterisk-form target '*' asks about the server, not a worker; send a path")
    elif not target.startswith(b"/"):
        raise BadTarget("the request target must be a path starting with '/' or an absolute http(s) URL")
    if b"#" in target:
        raise BadTarget("a request target may not have a fragment ('#') (RFC 9112 section 3.2)")
    if not host:
        raise BadTarget("the request has no Host header (or an empty one), so names no site "
                        "(RFC 9112 section 3.2)")
    if not _AUTHORITY.fullmatch(host):
        raise BadTarget(f"malformed Host header {host[:100].decode('latin-1')!r}: expected a host name or "
                        "IP literal and an optional port (RFC 9112 section 3.2)")
    return host, target


class Ingress:
    def __init__(self, config: ServeConfig, pool: Pool, router: Router, scripts: ScriptSource,
                 on_trace: TraceSink | None = None, on_missing: MissingSink | None = None,
                 request_ids: RequestIdSource | None = None, assets: AssetServer | None = None,
                 scheduled: ScheduledRunner | None = None) -> None:
        self.config = config
        self.assets = assets
        #: Set where the platform enables the scheduled test endpoint.
        self.scheduled = scheduled
        self.pool = pool
        self.router = router
        self.scripts = scripts
        self.on_trace = on_trace
        self.on_missing = on_missing
        self.request_ids = request_ids
        #: CF-Connecting-IP and X-Forwarded-For, as Cloudflare's edge sets them.
        self.client_address = ClientAddress(TrustedProxies(config.observability.trusted_proxies))
        self.limits = LimitPolicy(config.limits)
        #: Request tasks parked for their response head (see _wait_head),
        #: with when each must wake anyway (trio's clock).
        self._parked: dict[Invocation, tuple[trio.lowlevel.Task, float]] = {}
        self._sweeping = False
        #: Set while the sweeper sleeps for want of parked requests: the next
        #: request to park sets it (an idle server's sweeper does not wake
        #: every SWEEP_S).
        self._pushed: trio.Event | None = None
        #: Hands clients' WebSocket messages to workers (set by the server).
        self.websockets: Deliverer | None = None

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Wake the requests whose response head is late (every SWEEP_S).

        Why not a cancel scope per request: entering and leaving one with a
        deadline cost up to ~4% of the throughput (scripts/bench_revisions,
        with and without it), and nearly every head comes long before the
        scope's deadline. A parked task is woken by its head (``on_head``) or
        by this sweeper, whichever comes first; the rare late one then waits
        on with scopes, as before, watching its client."""
        self._sweeping = True
        task_status.started()
        parked = self._parked
        clock = loop_clock.CLOCK.get()
        quiet = 0
        try:
            while True:
                quiet = quiet + 1 if not parked else 0
                if quiet > QUIET_SWEEPS:
                    pushed = self._pushed = trio.Event()
                    await pushed.wait()
                    quiet = 0
                await trio.sleep(SWEEP_S)
                now = clock()
                self._unpark_due(parked, now)
        finally:
            self._sweeping = False
            for inv in list(parked):
                self._unpark(inv)

    def _unpark_due(self, parked: dict, now: float) -> None:
        """Unpark what is due, in a frame of its own: a loop variable of the
        sweep's kept the last one swept alive (its child, a dead one's
        buffers and all) for as long as the sweep waited."""
        for inv in [inv for inv, (_task, until) in parked.items() if until <= now]:
            self._unpark(inv)

    def _unpark(self, inv: Invocation) -> None:
        parked = self._parked.pop(inv, None)
        if parked is not None:
            inv.on_head = None
            trio.lowlevel.reschedule(parked[0])

    async def _wait_head(self, inv: Invocation, until: float) -> None:
        """Wait for ``inv``'s head, or until ``until`` (trio's clock)."""
        if inv.has_head:
            return
        if not self._sweeping:  # no sweeper (not served by Supervisor.run): a scope
            with trio.move_on_at(until):
                await inv.head_ready.wait()
            return
        parked = self._parked
        parked[inv] = (trio.lowlevel.current_task(), until)
        inv.on_head = self._unpark
        if self._pushed is not None:
            self._pushed.set()
            self._pushed = None

        def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
            parked.pop(inv, None)
            inv.on_head = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def handle(self, request: Request, conn: Connection) -> None:
        request.headers = self.client_address.stamp(request.headers, conn.peer_address)
        if self.request_ids is None:
            await self._handle(request, conn, "")
            return
        rid = self.request_ids(request.headers, conn.peer_address)
        token = log_request_id.set(rid)
        conn.tag = (REQUEST_ID_HEADER, rid.encode("ascii"))
        try:
            await self._handle(request, conn, rid)
        finally:
            conn.tag = None
            log_request_id.reset(token)

    async def _handle(self, request: Request, conn: Connection, rid: str) -> None:
        try:
            self._to_origin_form(request)
        except BadTarget as exc:
            warn("ingress.bad_target", reason=str(exc))
            await conn.respond(400, _TEXT, f"Bad request: {exc}\n".encode(), request.method == b"HEAD")
            return
        host = request.host.decode("latin-1")
        target = request.target.decode("latin-1")
        if len(host) + len(target) + 7 > MAX_CALL_URL:
            # Cloudflare's 16 KB, at the edge: a dispatcher passing the request
            # on would fail with it, blamed on its code (a 500).
            warn("ingress.url_too_long", length=len(host) + len(target) + 7)
            await conn.respond(414, _TEXT, f"URI Too Long: a URL is at most {MAX_CALL_URL} characters\n".encode(),
                               request.method == b"HEAD")
            return
        if loop_limit.loops_left(request.headers) <= 0:
            warn("ingress.loop_limit", host=host)
            await conn.respond(508, _TEXT, loop_limit.REFUSAL, request.method == b"HEAD")
            return
        path = target.split("?", 1)[0]
        script = self.router(host, path)
        record = None if script is None else self.scripts.cached(PLATFORM, script)
        if record is NOT_CACHED:
            record = await self.scripts.load(PLATFORM, script)  # type: ignore[arg-type]
        head_only = request.method == b"HEAD"
        if record is None:
            if self.on_missing is not None:
                url = f"http://{host}{target}" if target.startswith("/") else target
                self.on_missing(request, url, rid)
            await conn.respond(404, _TEXT, f"No worker is routed for {host or '(no host)'}{path}\n".encode(),
                               head_only)
            return
        url = f"http://{host}{target}" if target.startswith("/") else target
        if path == SCHEDULED_PATH and self.scheduled is not None:
            await self._scheduled(record, target, conn, head_only)
            return
        if self.assets is not None and self.assets.wants(record, request.method, url, request.headers,
                                                         from_worker=False):
            await send_answer(conn, await self.assets.answer(record, request.method, url, request.headers),
                              head_only)
            return
        try:
            inv = await self.pool.invoke(record, request.method, url, request.headers, request.body,
                                         self.limits.defaults_for(record))
        except PoolUnavailable as exc:
            warn("ingress.unavailable", script=record.name, reason=str(exc))
            await conn.respond(503, _TEXT + [(b"retry-after", b"1")],
                               b"Service unavailable: no sandbox free, retry shortly\n", head_only)
            return
        inv.request_id = rid
        if self.on_trace is not None:
            inv.on_done = self.on_trace  # once waitUntil work is over too
        try:
            await self._answer(inv, conn, head_only, isinstance(request.body, bytes), request)
        except InvalidResponse as exc:
            warn("ingress.invalid_response", script=record.name, reason=str(exc))
            if inv.body is not None:
                inv.body.close()
            if not conn.response_started:
                await conn.respond(500, _TEXT, b"Worker returned an invalid response\n", head_only)

    @staticmethod
    def _to_origin_form(request: Request) -> None:
        """Read the request's host and path as :func:`origin_form` does. The
        Host header becomes the host an absolute-form target named (as a
        proxy sets it, RFC 9112 section 3.2.2): the worker's URL and a
        dispatcher that routes on the header must see the same host. Dot
        segments are resolved (protocol.url_path): routes, assets
        and the worker see the path the worker's URL has.

        The common request (a path, a Host seen and checked before) is
        answered by three byte checks and a set lookup: the Host pattern is
        a regular expression, and this runs on every request."""
        target, host = request.target, request.host
        if target[:1] == b"/" and host in _CHECKED_HOSTS and b"#" not in target and request.method != b"CONNECT" \
                and not needs_normalising(target):
            return
        host, target = origin_form(request.method, target, host)
        if needs_normalising(target):  # the path workerd's URL parser would give the worker
            target = normalised(target.decode("latin-1")).encode("latin-1")
        if len(_CHECKED_HOSTS) >= MAX_CHECKED_HOSTS:
            _CHECKED_HOSTS.clear()  # bounded: a client sending endless hosts only costs their checks
        _CHECKED_HOSTS.add(host)
        if host != request.host:
            request.headers = [(name, value) for name, value in request.headers if name != b"host"]
            request.headers.append((b"host", host))
        request.host, request.target = host, target

    async def _scheduled(self, record: object, target: str, conn: Connection, head_only: bool) -> None:
        """``wrangler dev``'s test endpoint: run ``scheduled()`` once, answer its outcome."""
        query = parse_qs(target.partition("?")[2])
        cron = (query.get("cron") or ["* * * * *"])[0]
        assert self.scheduled is not None
        try:
            trace = await self.scheduled(record, cron)
        except PoolUnavailable:
            await conn.respond(503, _TEXT, b"Service unavailable: no sandbox free, retry shortly\n", head_only)
            return
        ok = trace.get("outcome") == Outcome.OK
        await conn.respond(200 if ok else 500, _TEXT, f"{trace.get('outcome')}\n".encode(), head_only)

    async def _answer(self, inv: Invocation, conn: Connection, head_only: bool,
                      body_read: bool = False, request: Request | None = None) -> None:
        await self._wait_head(inv, min(inv.deadline, loop_clock.CLOCK.get()() + WATCH_CLIENT_AFTER_S))
        if not inv.has_head and body_read and loop_clock.CLOCK.get()() < inv.deadline:
            # A slow answer: also watch the client, whose leaving cancels it.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when_gone, conn, inv, nursery.cancel_scope)
                with trio.move_on_at(inv.deadline):
                    await inv.head_ready.wait()
                nursery.cancel_scope.cancel()
            if inv.outcome == Outcome.CANCELED:
                return
        elif not inv.has_head:
            with trio.move_on_at(inv.deadline):
                await inv.head_ready.wait()
        if not inv.has_head:
            inv.cancel(Outcome.EXCEEDED_WALL_TIME)
        if request is not None and isinstance(request.body, RequestBody):
            if request.body.too_large:
                await _body_too_large(inv, conn, head_only)
                return
            if request.body.timed_out:
                await _body_timed_out(inv, conn, head_only)
                return
        if inv.error is not None:
            # A callee's limit error the dispatcher let escape is still a limit: 503.
            reason = inv.error.name if inv.error.name in OUTCOME_MESSAGE else inv.outcome
            status = OUTCOME_STATUS.get(reason, 500)
            if status == 499:
                return
            message = OUTCOME_MESSAGE.get(reason) or "Worker threw exception"
            log("invocation.failed", script=inv.record.name, namespace=inv.record.namespace,
                outcome=inv.outcome, error=f"{inv.error.name}: {inv.error.message}"[:500])
            await conn.respond(status, _TEXT, f"{message}\n".encode(), head_only)
            return
        body = inv.body
        if isinstance(body, SocketSource):
            await self._websocket(inv, body, conn, request)
            return
        if body is None:
            await conn.respond(inv.status, inv.response_headers, b"", head_only, inv.status_text)
            return
        if isinstance(body, BytesBody):
            await conn.respond(inv.status, inv.response_headers, await body.receive(), head_only,
                               inv.status_text)
            return
        await self._stream(inv, body, conn, head_only)

    async def _websocket(self, inv: Invocation, source: SocketSource, conn: Connection,
                         request: Request | None) -> None:
        """The worker answered with a WebSocket: the handshake, then the relay
        (supervisor.edge.websockets) for as long as the connection lasts."""
        problem = "WebSockets are not served here" if self.websockets is None or request is None \
            else handshake_problem(request.method, request.headers)
        if problem is not None:
            source.close()
            warn("ingress.websocket_refused", script=inv.record.name, reason=problem)
            await conn.respond(500, _TEXT, f"Worker threw exception: {problem}\n".encode())
            return
        assert self.websockets is not None and request is not None
        source.taken = True
        await Session(conn, source, self.websockets).run(request.headers, inv.response_headers)

    async def _stream(self, inv: Invocation, body: BodySource, conn: Connection,
                      head_only: bool) -> None:
        try:
            await conn.start(inv.status, inv.response_headers, head_only, inv.status_text,
                             body_length(body))
            if head_only:
                body.close()
                await conn.end()
                return
            with trio.move_on_at(inv.deadline) as scope:
                while chunk := await body.receive():
                    await conn.send_data(chunk)
            if scope.cancelled_caught:
                inv.cancel(Outcome.EXCEEDED_WALL_TIME)
                raise BodyError("wall time exceeded while streaming the response")
            await conn.end()
        except LengthMismatch as exc:
            # The body's source (a child, an upstream) declared a length and
            # gave another: the connection closes (see Connection.start).
            warn("ingress.body_length_mismatch", script=inv.record.name,
                 namespace=inv.record.namespace, invocation=inv.id, declared=exc.declared,
                 received=exc.received, reason=str(exc))
            body.close()
            raise
        except BodyError as exc:
            # Headers are out; the only honest signal left is a broken stream.
            warn("ingress.body_broken", script=inv.record.name, reason=str(exc))
            body.close()
            raise
        except BaseException:
            inv.response_abandoned()  # the body did not arrive
            body.close()
            raise


async def _body_too_large(inv: Invocation, conn: Connection, head_only: bool) -> None:
    """Answer 413 for a streamed body that outgrew the limit while the worker
    read it: the worker only saw its body fail, and its answer to that (a
    throw, so a 500) would blame the worker for what the client sent."""
    limit = conn.config.max_body_bytes
    warn("ingress.body_too_large", script=inv.record.name, streamed=True)
    await _blame_the_client(inv, conn, head_only, 413, f"Request body larger than {limit} bytes")


async def _body_timed_out(inv: Invocation, conn: Connection, head_only: bool) -> None:
    """Answer 408 for a body the client stopped sending, likewise."""
    timeout = conn.config.body_timeout_s
    warn("ingress.body_timeout", script=inv.record.name, timeout_s=timeout)
    await _blame_the_client(inv, conn, head_only, 408,
                            f"Request body timeout: nothing more came for {timeout:g} s")


async def _blame_the_client(inv: Invocation, conn: Connection, head_only: bool, status: int,
                            message: str) -> None:
    """The answer to a request whose body failed by the client's doing,
    whatever the worker made of it."""
    if inv.body is not None:
        inv.body.close()
    # The rest of the body may still be on its way: close after the answer,
    # lingering so that the client reads it rather than a reset.
    conn.keep_alive = False
    conn.linger = True
    await conn.respond(status, _TEXT, (message + "\n").encode(), head_only)


async def _cancel_when_gone(conn: Connection, inv: Invocation, scope: trio.CancelScope) -> None:
    """Cancel ``inv`` if the client closes its connection before the answer."""
    await conn.wait_peer_closed()
    inv.cancel(Outcome.CANCELED)
    scope.cancel()

