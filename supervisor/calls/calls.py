"""Calls: what a child asks the supervisor to do on its behalf.

A child has no sockets and cannot see other scripts. Everything that leaves
it is a ``SubRequest``, handled here as one task per call, inside the
calling child's nursery (so a dead child's calls die with it) and inside a
cancel scope of the invocation that made it (so an ended invocation's calls
stop too):

* ``dispatch``: a dispatch-namespace stub's ``fetch``: look the script up in
  the binding's namespace (``Worker not found`` if absent), apply the limits
  the dispatcher set, and invoke it in its own child. The request body is
  handed over by reference when the dispatcher did not read it, and the
  response body goes back the same way.
* ``service``: a service binding to a platform script. The script is the
  one the platform stored in the caller's binding, never one the child names.
* ``fetch``: an outbound request, sent
  through the platform's outbound worker when the dispatcher configured one,
  else made by the supervisor's own HTTP client.

Every call counts against the caller's subrequest limit. Every failure reaches the tenant as
an exception from its ``fetch``
(``SubFailed``), with Cloudflare's messages; none reaches the supervisor.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

import msgspec
import trio

from protocol.http_grammar import TOKEN
from protocol.messages import (
    DurableObjectEvent,
    ExceptionInfo,
    Header,
    Limits,
    RequestEvent,
    RpcEvent,
    SubFailed,
    SubRequest,
    SubResponse,
    WsConnect,
)
from supervisor.calls import http_client
from supervisor.calls.dynamic_workers import DynamicWorkers
from supervisor.calls.redirects import RedirectError, RedirectPolicy
from supervisor.config import LimitsConfig
from supervisor.edge.websockets import MAX_SERVER_SOCKETS, ServerSession, SocketSource
from supervisor.lifecycle import OUTCOME_MESSAGE, PLATFORM_OUTCOMES, Outcome
from supervisor.limits import loop_limit
from supervisor.limits.open_connections import OpenConnections, script_share
from supervisor.limits.policy import LimitPolicy
from supervisor.log import error, warn
from supervisor.model import PLATFORM, DispatchNamespace, ScriptRecord, Service, WorkerLoader
from supervisor.pool import rpc_stubs
from supervisor.pool.bodies import (
    BodyError,
    BodySource,
    BytesBody,
    ChildBody,
    ProtocolViolation,
    body_length,
    declare_length,
    hand_on,
)
from supervisor.pool.child_process import ChildProcess
from supervisor.pool.invocation import Invocation, Outbound
from supervisor.pool.pool import Pool, PoolUnavailable
from supervisor.store.lookup import NOT_CACHED, ScriptSource

#: How deep workers may call workers (dispatch, service, outbound) in one
#: request chain, and what the caller sees past it (Cloudflare's limit and words).
MAX_DEPTH = 32
DEPTH_MESSAGE = ("Subrequest depth limit exceeded. This request recursed through Workers too "
                 "many times. This can happen e.g. if you have a Worker or Durable Object that "
                 "calls other Workers or objects recursively.")


class CallFailed(Exception):
    """Raised inside call handling; becomes the tenant-side exception."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


class Head(msgspec.Struct):
    status: int
    headers: list[Header]
    body: BodySource | None
    url: str = ""
    redirected: bool = False
    #: The reason phrase, when not the status's standard one: the callee's
    #: ``status_text``, an upstream's own phrase.
    status_text: str = ""
    #: An RPC result's functions: the handles its caller now holds (supervisor.pool.rpc_stubs).
    functions: list[int] = []


BindingT = TypeVar("BindingT", Service, DispatchNamespace)


class _Target:
    """The script a call names, before it is read: a cache hit resolves it
    inline, a store miss in a task (the read runs in a worker thread)."""

    __slots__ = ("namespace", "name", "limits", "outbound", "params", "missing", "record", "entrypoint",
                 "props")

    def __init__(self, namespace: str, name: str, limits: Callable[[ScriptRecord], Limits],
                 missing: Callable[[], CallFailed], outbound: Outbound | None = None,
                 params: dict | None = None, record: ScriptRecord | None = None,
                 entrypoint: str = "", props: dict | None = None) -> None:
        self.namespace = namespace
        self.name = name
        #: The callee's entrypoint class a service binding names ("": Default).
        self.entrypoint = entrypoint
        #: The service binding's props (the callee's ``ctx.props``).
        self.props = props
        #: Already known (a dynamic worker, held in memory): no store lookup.
        self.record = record
        #: The callee's limits, once its record is known (may raise CallFailed).
        self.limits = limits
        #: The failure when no such script is deployed.
        self.missing = missing
        self.outbound = outbound
        self.params = params


def failure_of(inv: Invocation) -> CallFailed:
    """How a callee's failure looks to its caller."""
    error = inv.error
    assert error is not None
    if inv.outcome in PLATFORM_OUTCOMES:
        return CallFailed(inv.outcome, OUTCOME_MESSAGE.get(inv.outcome, error.message))
    if error.name in OUTCOME_MESSAGE:
        # The callee's own exception, named as a platform verdict (``class
        # exceededCpu(Exception)``): it must not read as one to its caller,
        # nor to the client a caller lets it escape to (a 503, a limit).
        return CallFailed("Error", f"{error.name}: {error.message}")
    return CallFailed(error.name, error.message)


async def head_of(inv: Invocation) -> Head:
    """Wait for a callee's response head, within its wall-time limit."""
    try:
        await inv.wait_head()
    except trio.Cancelled:
        inv.cancel(Outcome.CANCELED)
        raise
    if inv.error is not None:
        raise failure_of(inv)
    return Head(inv.status, inv.response_headers, inv.body, status_text=inv.status_text,
                functions=_returned(inv))


def _returned(inv: Invocation) -> list[int]:
    """The handles of the functions an RPC callee's result carries, if any."""
    return inv.rpc.returned if inv.rpc is not None else []


class Calls:
    """Handles a child's calls; :meth:`handle` runs inside the child's reader."""

    def __init__(self, pool: Pool, scripts: ScriptSource, defaults: LimitsConfig,
                 client: http_client.HTTPClient, assets: AssetAnswerer | None = None,
                 dynamic: DynamicWorkers | None = None, max_server_sockets: int = 4096) -> None:
        self.pool = pool
        #: WebSockets to servers open on this host (every child's), and the
        #: cap on them (``[outbound] max_websockets``).
        self.server_sockets = 0
        self.max_server_sockets = max_server_sockets
        #: Workers scripts load at run time (Worker Loader bindings).
        self.dynamic = dynamic if dynamic is not None else DynamicWorkers()
        # A dynamic worker dropped (its owner's cap, the host's, its owner
        # deleted) lets go of its child too: the child holds its memory.
        self.dynamic.on_drop = lambda record: pool.retire_script(record.namespace, record.name)
        #: Static assets (supervisor.edge.assets): answer dispatches before the
        #: user worker, and ``env.ASSETS.fetch``.
        self.assets = assets
        self.scripts = scripts
        self.defaults = defaults
        #: Outbound connections one tenant's invocations may hold together, and
        #: each tenant's share (see _tenant_of).
        self.script_connections = script_share(defaults.script_open_connections)
        self._shares: dict[tuple[str, str], trio.CapacityLimiter] = {}
        self.client = client
        self.limits = LimitPolicy(defaults)

    def handle(self, child: ChildProcess, message: SubRequest) -> None:
        """Start call ``message.call``; its answer goes back to ``child`` later.

        A dispatch or service call to a warm script is started right here and
        answered from the callee's head callback: no task, no task switch. A
        cold start or an outbound HTTP request needs to wait, so it gets a task
        in the calling child's nursery, under a cancel scope of the invocation
        that made the call.
        """
        call = message.call
        parent = child.invocations.get(message.parent)
        try:
            if parent is None:
                raise CallFailed("Error", "the request that made this call has already ended")
            if (message.rpc or message.functions) and message.kind not in RPC_KINDS:
                # Only a binding's stub makes RPC calls: a fetch() reaching the platform's
                # outbound worker as an RPC call ran any method of it, past its fetch policy.
                raise CallFailed("TypeError", f"a {message.kind} subrequest makes no RPC call")
            parent.calls.add(call)
            body = self._request_body(child, message)
            if message.kind == "stub":  # a call of a function stub this invocation holds
                inv = self._stub_call(parent, message, body)
                child.calls[call] = _Canceller(inv)
                inv.on_head = lambda callee_inv: self._answer(child, call, callee_inv, parent, False)
                return
            if message.kind == "assets":  # the caller's own assets, never another script's
                child.spawn(self._run, child, parent, message,
                            self._serve_assets(parent.record, message, body))
                return
            target = self._target(parent, message, body)
            if target is None:  # a plain outbound HTTP request
                child.spawn(self._run, child, parent, message,
                            self._on_connection(parent, body, self._http(message, body, parent),
                                                network=True))
                return
            found = target.record or self.scripts.cached(target.namespace, target.name)
            if found is NOT_CACHED:  # a store miss: read it off the event loop, then call
                child.spawn(self._run, child, parent, message,
                            self._load_and_call(target, parent, message, body))
                return
            record, limits, outbound, params = self._resolve(target, found, body)  # type: ignore[arg-type]
            if self._assets_first(record, message):
                child.spawn(self._run, child, parent, message, self._serve_assets(record, message, body))
                return
            if message.kind == "fetch" and message.redirect != "manual":
                # Through an outbound worker: fetch's redirect rules, hop by hop.
                child.spawn(self._run, child, parent, message,
                            self._follow(record, parent, message, body, limits, params))
                return
            share, handles = _lend(parent, message, body)
            event = _event_for(message, target.entrypoint, target.props, handles)
            callee = self.pool.warm_child(record) or self.pool.acquire_now(record)
            if callee is None:
                child.spawn(self._run, child, parent, message,
                            self._cold(record, parent, message, body, limits, outbound, params, event,
                                       share))
                return
            inv = self.pool.start(callee, record, message.method, message.url, message.headers,
                                  body, limits, parent=parent, outbound=outbound, params=params,
                                  event=event, rpc=share)
        except CallFailed as exc:
            child.held.end(call)
            child.send(SubFailed(call, ExceptionInfo(exc.name, exc.message)))
            return
        child.calls[call] = _Canceller(inv)
        tail = message.tail
        inv.on_head = lambda callee_inv: self._answer(child, call, callee_inv, parent, tail)

    def connect_socket(self, child: ChildProcess, message: WsConnect) -> None:
        """``new WebSocket(url)``: a subrequest of the invocation that opened
        it, then a connection that lives as long as the socket (or its child).
        Not through the platform's outbound worker yet: with one, refused (it
        is where the platform vets what tenants reach)."""
        state = child.socket_state(message.ws)
        if state.source is not None:
            raise ProtocolViolation(f"WebSocket {message.ws} is already in use")
        parent = child.invocations.get(message.parent)
        event = parent.event if parent is not None else None
        # Opened by a Durable Object: its events run as the object's (its
        # storage, its input gate), as the object's own sockets' do.
        key = None if not isinstance(event, DurableObjectEvent) else (
            parent.record.namespace, parent.record.name, event.class_name, event.object_id)  # type: ignore[union-attr]
        state.source = SocketSource(child, message.ws, False, message.url, key)
        refused = None
        if parent is None:
            refused = "the request that opened this WebSocket has already ended"
        elif any(not TOKEN.fullmatch(p) for p in message.protocols):
            # The sandbox refuses these (SyntaxError); a child that sends one anyway gets no handshake.
            refused = "a WebSocket subprotocol must be an HTTP token"
        elif parent.outbound is not None:
            refused = ("WebSockets to servers are not supported through the platform's outbound "
                       "worker yet: this dispatch namespace has one")
        elif sum(1 for s in child.sockets.values() if s.source is not None and s.source.url) > MAX_SERVER_SOCKETS:
            refused = (f"too many WebSockets to servers are open in this worker's sandbox: at most "
                       f"{MAX_SERVER_SOCKETS} at once (close one first)")
        elif self.server_sockets >= self.max_server_sockets:
            refused = (f"too many WebSockets to servers are open on this host: at most "
                       f"{self.max_server_sockets} at once, every worker's together "
                       f"([outbound] max_websockets)")
        else:
            try:
                _count_subrequest(parent)
            except CallFailed as exc:
                refused = exc.message
        # A connect is a subrequest like a fetch: it carries the loop limit's count too
        # (a worker opening WebSockets to itself recursed past it without end).
        session = ServerSession(state.source, self.pool.websockets, self.client, message.protocols,
                                [] if parent is None else loop_limit.outbound_headers([], parent))
        if refused is not None:
            child.spawn(session.connect, refused)
        elif child.alive:  # spawn() starts the task (a dead child's message starts nothing)
            self.server_sockets += 1  # counted now, so a burst of connects cannot overshoot
            child.spawn(self._server_socket, session)

    async def _server_socket(self, session: ServerSession) -> None:
        """One counted WebSocket to a server, for as long as its session runs
        (ended by either side, or with its child)."""
        try:
            await session.connect()
        finally:
            self.server_sockets -= 1

    def _answer(self, child: ChildProcess, call: int, inv: Invocation, parent: Invocation,
                tail: bool) -> None:
        """The callee's head is ready: hand it to the caller, if it still listens."""
        child.calls.pop(call, None)
        child.held.end(call)
        if not child.alive or parent.is_done:
            if inv.body is not None:
                inv.body.close()  # nobody will read it: release the callee's stream
            return
        if inv.error is not None:
            failure = failure_of(inv)
            child.send(SubFailed(call, ExceptionInfo(failure.name, failure.message)))
            return
        self._deliver(child, call, Head(inv.status, inv.response_headers, inv.body,
                                        status_text=inv.status_text, functions=_returned(inv)),
                      parent if tail else None)

    async def _run(self, child: ChildProcess, parent: Invocation, message: SubRequest,
                   work: Any) -> None:
        """Run a call that must wait (cold start, HTTP) and answer it."""
        call = message.call
        with trio.CancelScope() as scope:
            child.calls[call] = scope
            parent.call_scopes.add(scope)
            try:
                head = await work
                self._deliver(child, call, head, parent if message.tail else None)
            except CallFailed as exc:
                child.send(SubFailed(call, ExceptionInfo(exc.name, exc.message)))
            except BodyError as exc:
                # The request body the tenant streamed failed (its generator
                # raised): fetch() fails with that, the tenant's own error, as a
                # request body stream's error rejects fetch() in workerd.
                child.send(SubFailed(call, ExceptionInfo("Error", f"the request body failed: {exc}")))
            except Exception as exc:  # noqa: BLE001 - one call's failure, never the server's
                # A fault of the platform's (an asset file gone from the
                # state dir, a disk error) fails this call, as a request's
                # handler failing answers 500; escaping, it stopped the
                # supervisor, every tenant with it (durability audit F1).
                error("call.failed", exc_info=exc, kind=message.kind, target=message.target,
                      script=parent.record.name, namespace=parent.record.namespace)
                child.send(SubFailed(call, ExceptionInfo("Error", "internal error in the platform while "
                                                                  "serving this call; it is logged")))
            finally:
                child.calls.pop(call, None)
                child.held.end(call)
                parent.call_scopes.discard(scope)
        if scope.cancelled_caught and hasattr(work, "close"):
            work.close()

    # -- request and response bodies ------------------------------------------
    def _request_body(self, child: ChildProcess, message: SubRequest) -> BodySource | bytes | None:
        body = child.receive_body(message.body, message.call)
        if message.length is not None and type(body) is ChildBody:
            declare_length(body, message.length)
        return body

    def _deliver(self, child: ChildProcess, call: int, head: Head, tail: Invocation | None = None) -> None:
        """Answer call ``call`` with ``head``. ``tail``: the caller's invocation,
        when the call was in tail position (``SubRequest.tail``): answered
        with the head at once, it spares the round trip through the child
        (sandbox.tail_call), which is only told that it was."""
        if tail is not None and tail.answer_tail_call(head.status, head.headers, head.body,
                                                      head.status_text):
            if head.body is not None:
                hand_on(head.body)  # the caller's response now, no fetch of its own
            # Only the status: the child's handler returns the response at
            # once, and nothing reads its headers on the way. Nobody waits
            # for that but the invocation's trace: while the child has other
            # invocations in flight (it will be sent frames soon), the news
            # goes with its next frame.
            answered = SubResponse(call, head.status, [], None, answered=True)
            if len(child.invocations) > 1:
                child.defer(answered, tail)
            else:
                child.send(answered)
            return
        child.send(SubResponse(call, head.status, head.headers, child.send_body(head.body, call),
                               url=head.url, redirected=head.redirected, status_text=head.status_text,
                               functions=head.functions))

    def _stub_call(self, parent: Invocation, message: SubRequest, body: BodySource | bytes | None
                   ) -> Invocation:
        """Call the function behind stub ``message.target`` of ``parent``: an
        invocation in the child that exported it, a subrequest of ``parent``
        as any RPC call is. Only ``parent``'s own stubs are looked up: a
        handle means nothing outside the invocation it was granted to."""
        try:
            _count_subrequest(parent)
            try:
                handle = int(message.target)
            except ValueError:
                raise CallFailed("Error", rpc_stubs.DISPOSED) from None
            target = rpc_stubs.lookup(parent, handle)
            share, handles = _lend(parent, message, None)
        except rpc_stubs.StubError as exc:
            _close(body)
            raise CallFailed(exc.name, exc.message) from None
        except CallFailed:
            _close(body)
            raise
        record = target.record
        # The function runs as the invocation that made it: its fetches go
        # through that one's outbound worker, with its parameters.
        return self.pool.start(target.child, record, b"POST", "https://rpc.invalid/", [], body,
                               _within(self.limits.defaults_for(record), parent), parent=parent,
                               outbound=target.outbound, params=target.params,
                               event=RpcEvent("", functions=handles, function=target.fn), rpc=share)

    # -- what a call targets ------------------------------------------------------
    def _binding(self, parent: Invocation, name: str, kind: type[BindingT]) -> BindingT:
        binding = parent.record.binding(name, kind)
        if binding is None:
            raise CallFailed("TypeError", f"the script has no {kind.__struct_config__.tag} binding "
                                          f"named {name!r}")
        return binding

    def _target(self, parent: Invocation, message: SubRequest, body: BodySource | bytes | None
                ) -> _Target | None:
        """The script a call invokes (and how), or None for a plain HTTP fetch."""
        try:
            # Every call is a subrequest of its caller, whatever it reaches.
            _count_subrequest(parent)
            if message.kind == "dispatch":
                return self._dispatch_target(parent, message)
            if message.kind == "loader":
                return self._loader_target(parent, message)
            if message.kind == "service":
                # The target is the one the platform stored in the binding;
                # whatever the child wrote in ``message.target`` is ignored.
                service = self._binding(parent, message.binding, Service)
                name = service.service
                return _Target(PLATFORM, name, lambda record: _within(self.limits.defaults_for(record), parent),
                               lambda: CallFailed("WorkerNotFound", f"Worker not found: {name}"),
                               entrypoint=service.entrypoint or "", props=service.props)
            return self._fetch_target(parent)
        except CallFailed:
            _close(body)
            raise

    def _resolve(self, target: _Target, record: ScriptRecord | None, body: BodySource | bytes | None
                 ) -> tuple[ScriptRecord, Limits, Outbound | None, dict | None]:
        """The target's record (read), its limits, outbound and params."""
        try:
            if record is None:
                raise target.missing()
            return record, target.limits(record), target.outbound, target.params
        except CallFailed:
            _close(body)
            raise

    def _dispatch_target(self, parent: Invocation, message: SubRequest) -> _Target:
        binding = self._binding(parent, message.binding, DispatchNamespace)
        outbound = None
        config = binding.outbound
        if config is not None and config.worker is not None:
            given = message.params or {}
            outbound = Outbound(config.worker.service, {p.name: given.get(p.name) for p in config.params})
        # A user worker dispatching (to its own namespace, say) keeps the platform's
        # hold on it: its outbound worker, and its limits as a ceiling. Its callee
        # fetched past the outbound worker, with whatever limits the tenant asked for.
        tenant = parent.record.namespace != PLATFORM
        if tenant and outbound is None:
            outbound = parent.outbound

        def limits(record: ScriptRecord) -> Limits:
            if message.limits is not None:
                _check_limits(message.limits)
            own = self.limits.for_call(record, message.limits)
            return _within(own, parent) if tenant else own

        return _Target(binding.namespace, message.target, limits,
                       lambda: CallFailed("WorkerNotFound", f"Worker not found: {message.target}"),
                       outbound)

    def _loader_target(self, parent: Invocation, message: SubRequest) -> _Target:
        """A dynamic worker of the caller's Worker Loader binding; ``CodeNeeded``
        when its code is not held (the stub then hands it over and calls again)."""
        self._binding(parent, message.binding, WorkerLoader)
        record = self.dynamic.get(parent.record, message.binding, message.target)
        if record is None:
            raise CallFailed("CodeNeeded", f"no code is loaded for the dynamic worker "
                                           f"{message.target!r}")
        offline = self.dynamic.offline(record)

        def limits(callee: ScriptRecord) -> Limits:
            within = _within(self.limits.defaults_for(callee), parent)
            return msgspec.structs.replace(within, sub_requests=0) if offline else within

        # Its fetches go where its loader's go: through the loader's outbound
        # worker (a user worker escaped the platform's egress by loading code).
        return _Target(record.namespace, record.name, limits,
                       lambda: CallFailed("WorkerNotFound", f"Worker not found: {message.target}"),
                       outbound=None if offline else parent.outbound, record=record)

    def _fetch_target(self, parent: Invocation) -> _Target | None:
        outbound = parent.outbound
        if outbound is None:
            return None

        def missing() -> CallFailed:
            warn("outbound.missing", service=outbound.service, script=parent.record.name)
            return CallFailed("Error", f"the outbound worker {outbound.service!r} is not deployed")

        # The outbound worker's own fetch *is* this subrequest, already counted.
        return _Target(PLATFORM, outbound.service,
                       lambda record: _within(self.limits.defaults_for(record), parent, subrequests=False),
                       missing, None, outbound.params)

    # -- calls that wait ------------------------------------------------------------
    async def _load_and_call(self, target: _Target, parent: Invocation, message: SubRequest,
                             body: BodySource | bytes | None) -> Head:
        """A call whose target missed the store's cache: read it in a thread, then call."""
        try:
            found = await self.scripts.load(target.namespace, target.name)
        except BaseException:
            _close(body)
            raise
        record, limits, outbound, params = self._resolve(target, found, body)
        if self._assets_first(record, message):
            return await self._serve_assets(record, message, body)
        if message.kind == "fetch" and message.redirect != "manual":
            return await self._follow(record, parent, message, body, limits, params)
        share, handles = _lend(parent, message, body)
        return await self._cold(record, parent, message, body, limits, outbound, params,
                                _event_for(message, target.entrypoint, target.props, handles), share)

    def _assets_first(self, record: ScriptRecord, message: SubRequest) -> bool:
        """A dispatch to a user worker whose assets answer this request first."""
        return (message.kind == "dispatch" and not message.rpc and self.assets is not None
                and self.assets.wants(record, message.method, message.url, message.headers,
                                                     from_worker=False))

    async def _serve_assets(self, record: ScriptRecord, message: SubRequest,
                            body: BodySource | bytes | None) -> Head:
        _close(body)
        if self.assets is None or record.assets is None:
            if message.kind == "assets":  # an ASSETS binding over no files (an empty folder): nothing there
                return Head(404, [], None)
            raise CallFailed("TypeError", "the script has no static assets")
        if message.kind != "assets":  # a dispatch the assets answer first: no redirect is followed
            answer = await self.assets.answer(record, message.method, message.url, message.headers)
            return Head(answer.status, answer.headers, answer.body)
        # env.ASSETS.fetch(url) follows redirects as fetch() does (the request's
        # redirect mode): "/index.html" answers what "/" serves.
        try:
            policy = RedirectPolicy(message.url, message.method.decode("latin-1"),
                                    list(message.headers), mode=message.redirect)
        except ValueError as exc:
            raise CallFailed("TypeError", str(exc)) from None

        async def one_hop(_body: BodySource | bytes | None) -> Head:
            answer = await self.assets.answer(record, policy.method.encode("latin-1"), policy.url,
                                              policy.headers)
            return Head(answer.status, answer.headers, answer.body)

        return await _following(policy, one_hop, None, lambda: None)  # the assets' own hops: no subrequests

    async def _cold(self, record: ScriptRecord, parent: Invocation, message: SubRequest,
                    body: BodySource | bytes | None, limits: Limits, outbound: Outbound | None,
                    params: dict | None, event: RpcEvent | RequestEvent | None,
                    share: rpc_stubs.Lent | None = None) -> Head:
        return await self._call_script(record, parent, message.method, message.url,
                                       message.headers, body, limits, outbound, params, event, share)

    async def _call_script(self, record: ScriptRecord, parent: Invocation, method: bytes, url: str,
                           headers: list[Header], body: BodySource | bytes | None, limits: Limits,
                           outbound: Outbound | None, params: dict | None,
                           event: RpcEvent | RequestEvent | None = None,
                           share: rpc_stubs.Lent | None = None) -> Head:
        try:
            inv = await self.pool.invoke(record, method, url, headers, body, limits,
                                         parent=parent, outbound=outbound, params=params, event=event,
                                         rpc=share)
        except PoolUnavailable as exc:
            _close(body)
            raise CallFailed("Error", f"the worker could not be started: {exc}") from None
        return await head_of(inv)

    async def _follow(self, record: ScriptRecord, parent: Invocation, message: SubRequest,
                      body: BodySource | bytes | None, limits: Limits, params: dict | None) -> Head:
        """fetch()'s redirect rules (supervisor.calls.redirects), applied to an
        outbound worker's answers: every hop is a call to the worker."""
        try:
            policy = RedirectPolicy(message.url, message.method.decode("latin-1"),
                                    list(message.headers), mode=message.redirect,
                                    streamed_body=not (body is None or isinstance(body, bytes)))
        except ValueError as exc:
            _close(body)
            raise CallFailed("TypeError", str(exc)) from None
        async def one_hop(sent: BodySource | bytes | None) -> Head:
            return await self._call_script(record, parent, policy.method.encode("latin-1"),
                                           policy.url, policy.headers, sent, limits, None, params)

        # Through the platform's outbound worker too, a fetch is one of the
        # caller's open connections.
        return await self._on_connection(parent, body, _following(policy, one_hop, body,
                                                                  lambda: _count_subrequest(parent)))

    async def _http(self, message: SubRequest, body: BodySource | bytes | None,
                    parent: Invocation) -> Head:
        upload: bytes | AsyncIterator[bytes] | None
        upload = body if body is None or isinstance(body, bytes) else _iterate(body)
        span = _fetch_span(parent, message)
        try:
            response = await self.client.request(message.method.decode("latin-1"), message.url,
                                                 loop_limit.outbound_headers(message.headers, parent),
                                                 upload, redirect=message.redirect,
                                                 length=None if body is upload else body_length(body),
                                                 on_redirect=lambda: _count_subrequest(parent))
            span["status"] = response.status
        except http_client.FetchError as exc:
            span["error"] = str(exc)[:500]
            # The child raises both as OSError (workers.NetworkError); the
            # HTTP libraries' shims tell a timeout from a failed connection.
            name = "FetchTimeout" if isinstance(exc, http_client.FetchTimeout) else "FetchError"
            raise CallFailed(name, str(exc)) from None
        except ValueError as exc:  # a redirect mode fetch does not know
            span["error"] = str(exc)[:500]
            raise CallFailed("TypeError", str(exc)) from None
        finally:
            span["end_ns"] = time.time_ns()
            _close(body)
        return Head(response.status, response.headers, _ClientBody(response), response.url,
                    response.redirected, response.status_text)

    async def _on_connection(self, parent: Invocation, body: BodySource | bytes | None,
                             fetch: Coroutine[Any, Any, Head], network: bool = False) -> Head:
        """``fetch`` as one of ``parent``'s open connections: it starts once
        the caller has fewer than its limit open, and holds its place until
        its response body is read or closed (supervisor.limits.open_connections)."""
        try:
            # A connection to the network also takes a place of its tenant's
            # share; one to the outbound worker does not (that worker's own
            # fetch does, for the same tenant: counted once).
            share = self._share_of(_tenant_of(parent)) if network else None
            connection = await self._connections(parent).open(share)
        except BaseException:
            fetch.close()
            _close(body)
            raise
        try:
            head = await fetch
        except BaseException:
            connection.close()
            raise
        if head.body is None or isinstance(head.body, (BytesBody, SocketSource)):
            connection.close()  # read already, or a WebSocket: nothing left open to count
        else:
            head.body = connection.carry(head.body)
        return head

    def _connections(self, parent: Invocation) -> OpenConnections:
        """The caller's connections open and in line, made at its first fetch."""
        line = parent.connections
        if line is None:
            line = parent.connections = OpenConnections(self.defaults.open_connections)
        return line

    def _share_of(self, tenant: tuple[str, str]) -> trio.CapacityLimiter:
        """The tenant's share of outbound connections, made at its first fetch;
        shares nobody holds or waits for are let go once there are many."""
        share = self._shares.get(tenant)
        if share is None:
            if len(self._shares) >= MAX_IDLE_SHARES:
                for key, old in list(self._shares.items()):
                    stats = old.statistics()
                    if not stats.borrowed_tokens and not stats.tasks_waiting:
                        del self._shares[key]
            share = self._shares[tenant] = trio.CapacityLimiter(self.script_connections)
        return share


class AssetAnswerer(Protocol):
    """What calls need of the asset server (supervisor.edge.assets.AssetServer)."""

    def wants(self, record: ScriptRecord, method: bytes, url: str, headers: list[Header], *,
              from_worker: bool) -> bool: ...

    async def answer(self, record: ScriptRecord, method: bytes, url: str,
                     headers: list[Header]) -> Any: ...


class _Canceller:
    """What ``child.calls`` holds for a call running without a task."""

    __slots__ = ("_inv",)

    def __init__(self, inv: Invocation) -> None:
        self._inv = inv

    def cancel(self) -> None:
        self._inv.cancel(Outcome.CANCELED)


class _ClientBody:
    """An upstream response body as a :class:`BodySource`."""

    __slots__ = ("_response",)

    def __init__(self, response: http_client.ClientResponse) -> None:
        self._response = response

    @property
    def length(self) -> int | None:
        """The upstream's Content-Length (None: chunked or close-delimited),
        so a response passed on untouched keeps it, as through workerd."""
        return self._response.length

    async def receive(self) -> bytes:
        return await self._response.receive_some()

    def close(self) -> None:
        self._response.close()


async def _iterate(source: BodySource) -> AsyncIterator[bytes]:
    while chunk := await source.receive():
        yield chunk


async def _following(policy: RedirectPolicy,
                     one_hop: Callable[[BodySource | bytes | None], Awaitable[Head]],
                     body: BodySource | bytes | None, on_redirect: Callable[[], None]) -> Head:
    """fetch()'s redirect loop (supervisor.calls.redirects): ``one_hop(body)``
    answers the policy's current request; a 301/302 POST or a 303 goes on
    without the body. ``on_redirect`` before each hop: every hop is a
    subrequest, as Cloudflare counts them ("the total number of subrequests
    may exceed the number of fetch() calls")."""
    while True:
        head = await one_hop(body)
        try:
            hop = policy.next_hop(head.status, _header(head.headers, b"location"))
        except RedirectError as exc:
            _close(head.body)
            raise CallFailed("FetchError", str(exc)) from None
        if hop is None:
            head.url, head.redirected = policy.url, policy.redirected
            return head
        _close(head.body)
        on_redirect()
        if hop.drop_body:
            body = None


def _fetch_span(parent: Invocation | None, message: SubRequest) -> dict[str, Any]:
    """A record of one outbound fetch, kept on ``parent`` for its
    OpenTelemetry span; filled in as the fetch goes."""
    span: dict[str, Any] = {"method": message.method.decode("latin-1"), "url": message.url,
                            "start_ns": time.time_ns()}
    return parent.add_span(span) if parent is not None else span


#: Tenants' connection shares kept before the idle ones are let go.
MAX_IDLE_SHARES = 1024


def _tenant_of(inv: Invocation) -> tuple[str, str]:
    """Whose share of outbound connections a fetch of ``inv`` takes: the
    user worker it runs for (the nearest in its chain of callers that is in
    a dispatch namespace; a dynamic worker's, its owner), else the platform
    script its request began with. Not its child's: the platform's outbound
    worker fetches for every tenant, and one tenant's slow fetches through
    it held the one share of that child, every other tenant waiting."""
    node: Invocation | None = inv
    root = inv
    while node is not None:
        if node.record.namespace != PLATFORM:
            return node.record.namespace, node.record.name.partition(":")[0]
        root = node
        node = node.parent
    return PLATFORM, root.record.name.partition(":")[0]


def _count_subrequest(parent: Invocation) -> None:
    """Charge one subrequest to the caller, refusing it past the limit or
    past the depth of a chain of workers calling workers."""
    if parent.depth >= MAX_DEPTH:
        raise CallFailed("Error", DEPTH_MESSAGE)
    parent.subrequests += 1
    limit = parent.limits.sub_requests
    if limit is not None and parent.subrequests > limit:
        raise CallFailed(Outcome.EXCEEDED_SUBREQUESTS,
                         f"Too many subrequests: this worker may make {limit} per request.")


_LIMIT_NAMES = {"cpu_ms": "cpuMs", "sub_requests": "subRequests", "wall_ms": "wallMs",
                "memory_mb": "memoryMb"}


def _check_limits(limits: Limits) -> None:
    """Limits a dispatcher sent: each absent, or a positive finite number.

    The SDK checks the same before sending; a frame that skipped it is the
    caller's error, not a reason to kill the caller's process.
    """
    for field, key in _LIMIT_NAMES.items():
        value = getattr(limits, field)
        if value is not None and not (0 < value < float("inf")):
            raise CallFailed("TypeError", f"options.limits.{key} must be a positive finite number, "
                                          f"got {value!r}")


def _within(own: Limits, caller: Invocation, subrequests: bool = True) -> Limits:
    """A service or outbound-worker call runs within what its caller has left.

    Cloudflare: workers connected by service bindings share the resources of
    the top-level request. The callee's budgets are its own, capped by the
    caller's remaining CPU, wall time and subrequests at the time of the call,
    so a tight limit cannot be escaped by calling a platform script.
    """
    cpu_ms, wall_ms, sub_requests = own.cpu_ms, own.wall_ms, own.sub_requests
    if caller.cpu_budget_ns:
        left = max(1.0, (caller.cpu_budget_ns - caller.cpu_ns) / 1e6)
        cpu_ms = left if cpu_ms is None else min(cpu_ms, left)
    if caller.deadline != float("inf"):
        left = max(1.0, (caller.deadline - trio.current_time()) * 1000.0)
        wall_ms = left if wall_ms is None else min(wall_ms, left)
    if subrequests and caller.limits.sub_requests is not None:
        left = max(0, caller.limits.sub_requests - caller.subrequests)
        sub_requests = left if sub_requests is None else min(sub_requests, left)
    if (cpu_ms, wall_ms, sub_requests) == (own.cpu_ms, own.wall_ms, own.sub_requests):
        return own
    return Limits(cpu_ms=cpu_ms, sub_requests=sub_requests, wall_ms=wall_ms, memory_mb=own.memory_mb)


def _header(headers: list[Header], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _close(body: BodySource | bytes | None) -> None:
    if body is not None and not isinstance(body, bytes):
        body.close()


#: The subrequests that may be Workers RPC calls (a service or dispatch stub's
#: method, a function stub's call); a fetch() or an asset is HTTP, always.
RPC_KINDS = frozenset({"service", "dispatch", "stub"})


def _lend(parent: Invocation, message: SubRequest, body: BodySource | bytes | None
          ) -> tuple[rpc_stubs.Lent | None, list[int]]:
    """The stubs an RPC call's arguments hand the callee, and their handles
    there (none, at no cost, when no function crosses)."""
    try:
        return rpc_stubs.lend(parent, message.functions)
    except rpc_stubs.StubError as exc:
        _close(body)
        raise CallFailed(exc.name, exc.message) from None


def _event_for(message: SubRequest, entrypoint: str, props: dict | None = None,
               functions: list[int] | None = None) -> RpcEvent | RequestEvent | None:
    """A Workers RPC call is delivered as such, anything else as an HTTP
    request: to ``Default`` (no event at all, the common case) or to the
    entrypoint class a service binding names, with the binding's props."""
    if message.rpc:
        return RpcEvent(message.rpc, entrypoint, props, functions or [])
    return RequestEvent(entrypoint, props) if entrypoint or props else None
