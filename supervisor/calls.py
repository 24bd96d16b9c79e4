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
* ``service``: a service binding to a platform script.
* ``fetch``: an outbound request. Counted against the subrequest limit, sent
  through the platform's outbound worker when the dispatcher configured one,
  else made by the supervisor's own HTTP client.

Every failure reaches the tenant as an exception from its ``fetch``
(``SubFailed``), with Cloudflare's messages; none reaches the supervisor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

import msgspec
import trio

from protocol.messages import MAX_CHUNK, ExceptionInfo, Header, Limits, SubFailed, SubRequest, SubResponse

from . import http_client
from .bodies import BodySource, BytesBody, ChildBody, ChildSink
from .config import LimitsConfig
from .invocation import OUTCOME_MESSAGE, Invocation, Outbound
from .log import warn
from .scripts import PLATFORM, ScriptRecord

if TYPE_CHECKING:
    from .child_process import ChildProcess
    from .pool import Pool

#: Largest response body the outbound client accepts for a tenant.
MAX_FETCH_RESPONSE = 128 * 1024 * 1024


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


ScriptLookup = Callable[[str, str], "ScriptRecord | None"]


def effective_limits(requested: Limits | None, defaults: LimitsConfig,
                     ceiling: Limits | None = None) -> Limits:
    """The dispatcher's limits, capped by the platform's defaults."""

    def pick(value: Any, default: Any) -> Any:
        if value is None or value <= 0:
            return default
        return min(value, default)

    requested = requested or Limits()
    limits = Limits(
        cpu_ms=pick(requested.cpu_ms, defaults.cpu_ms),
        sub_requests=pick(requested.sub_requests, defaults.sub_requests),
        wall_ms=pick(requested.wall_ms, defaults.wall_ms),
        memory_mb=pick(requested.memory_mb, defaults.memory_mb),
    )
    return limits


def failure_of(inv: Invocation) -> CallFailed:
    """How a callee's failure looks to its caller."""
    error = inv.error
    assert error is not None
    if inv.outcome.startswith("exceeded") or inv.outcome in ("canceled", "crashed"):
        return CallFailed(inv.outcome, OUTCOME_MESSAGE.get(inv.outcome, error.message))
    return CallFailed(error.name, error.message)


async def head_of(inv: Invocation) -> Head:
    """Wait for a callee's response head, within its wall-time limit."""
    try:
        with trio.move_on_at(inv.deadline):
            await inv.head_ready.wait()
    except trio.Cancelled:
        inv.cancel("canceled")
        raise
    if not inv.head_ready.is_set():
        inv.cancel("exceededWallTime")
    if inv.error is not None:
        raise failure_of(inv)
    return Head(inv.status, inv.response_headers, inv.body)


class Calls:
    def __init__(self, pool: "Pool", lookup: ScriptLookup, defaults: LimitsConfig,
                 client: http_client.HTTPClient) -> None:
        self.pool = pool
        self.lookup = lookup
        self.defaults = defaults
        self.client = client

    async def handle(self, child: "ChildProcess", message: SubRequest) -> None:
        call = message.call
        parent = child.invocations.get(message.parent)
        with trio.CancelScope() as scope:
            child.calls[call] = scope
            try:
                if parent is None:
                    raise CallFailed("Error", "the request that made this call has already ended")
                parent.calls.add(call)
                parent.call_scopes.add(scope)
                body = self._request_body(child, message)
                if message.kind == "dispatch":
                    head = await self._dispatch(parent, message, body)
                elif message.kind == "service":
                    head = await self._service(parent, message, body)
                else:
                    head = await self._fetch(parent, message, body)
                self._deliver(child, call, head)
            except CallFailed as exc:
                child.send(SubFailed(call, ExceptionInfo(exc.name, exc.message)))
            finally:
                child.calls.pop(call, None)
                if parent is not None:
                    parent.call_scopes.discard(scope)

    # -- request and response bodies ------------------------------------------
    def _request_body(self, child: "ChildProcess", message: SubRequest) -> BodySource | bytes | None:
        if message.body_ref is not None:
            return child.take_ref(message.body_ref)
        if message.body_stream:
            stream = ChildBody(child, message.call)
            child.incoming[message.call] = stream
            return stream
        return message.body

    def _deliver(self, child: "ChildProcess", call: int, head: Head) -> None:
        body = head.body
        if body is None:
            child.send(SubResponse(call, head.status, head.headers, url=head.url,
                                   redirected=head.redirected))
            return
        if isinstance(body, BytesBody) and len(body._data) <= MAX_CHUNK:
            child.send(SubResponse(call, head.status, head.headers, body=body._data or None,
                                   url=head.url, redirected=head.redirected))
            return
        child.sinks[call] = ChildSink(child, call, body)
        child.send(SubResponse(call, head.status, head.headers, body_stream=True, url=head.url,
                               redirected=head.redirected))

    # -- the three kinds of call -------------------------------------------------
    def _binding(self, parent: Invocation, name: str, kind: str) -> dict[str, Any]:
        for binding in parent.record.bindings:
            if binding.get("name") == name and binding.get("type") == kind:
                return binding
        raise CallFailed("TypeError", f"the script has no {kind} binding named {name!r}")

    async def _dispatch(self, parent: Invocation, message: SubRequest,
                        body: BodySource | bytes | None) -> Head:
        binding = self._binding(parent, message.binding, "dispatch_namespace")
        namespace = binding.get("namespace", "")
        record = self.lookup(namespace, message.target)
        if record is None:
            _close(body)
            raise CallFailed("WorkerNotFound", f"Worker not found: {message.target}")
        outbound = None
        config = binding.get("outbound")
        if isinstance(config, dict):
            service = (config.get("worker") or {}).get("service")
            if service:
                names = [p.get("name") for p in config.get("params", []) if isinstance(p, dict)]
                given = message.params or {}
                outbound = Outbound(service, {n: given.get(n) for n in names if n})
        limits = effective_limits(message.limits, self.defaults)
        return await self._invoke(record, parent, message, body, limits, outbound=outbound)

    async def _service(self, parent: Invocation, message: SubRequest,
                       body: BodySource | bytes | None) -> Head:
        self._binding(parent, message.binding, "service")
        record = self.lookup(PLATFORM, message.target)
        if record is None:
            _close(body)
            raise CallFailed("WorkerNotFound", f"Worker not found: {message.target}")
        return await self._invoke(record, parent, message, body, effective_limits(None, self.defaults))

    async def _invoke(self, record: ScriptRecord, parent: Invocation, message: SubRequest,
                      body: BodySource | bytes | None, limits: Limits,
                      outbound: Outbound | None = None,
                      params: dict[str, Any] | None = None) -> Head:
        from .pool import PoolUnavailable

        try:
            inv = await self.pool.invoke(record, message.method, message.url, message.headers,
                                         body, limits, parent=parent, outbound=outbound,
                                         params=params)
        except PoolUnavailable as exc:
            raise CallFailed("Error", f"the worker could not be started: {exc}") from None
        return await head_of(inv)

    async def _fetch(self, parent: Invocation, message: SubRequest,
                     body: BodySource | bytes | None) -> Head:
        parent.subrequests += 1
        limit = parent.limits.sub_requests
        if limit is not None and parent.subrequests > limit:
            _close(body)
            raise CallFailed("exceededSubrequests",
                             f"Too many subrequests: this worker may make {limit} per request.")
        outbound = parent.outbound
        if outbound is not None:
            record = self.lookup(PLATFORM, outbound.service)
            if record is None:
                _close(body)
                warn("outbound.missing", service=outbound.service, script=parent.record.name)
                raise CallFailed("Error", f"the outbound worker {outbound.service!r} is not deployed")
            return await self._invoke(record, parent, message, body,
                                      effective_limits(None, self.defaults),
                                      params=outbound.params)
        return await self._http(message, body)

    async def _http(self, message: SubRequest, body: BodySource | bytes | None) -> Head:
        upload: bytes | AsyncIterator[bytes] | None
        upload = body if body is None or isinstance(body, bytes) else _iterate(body)
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in message.headers]
        try:
            response = await self.client.request(
                message.method.decode("latin-1"), message.url, headers, upload,
                redirect=message.redirect if message.redirect in ("follow", "manual", "error") else "follow",
            )
        except http_client.FetchError as exc:
            raise CallFailed("FetchError", str(exc)) from None
        finally:
            if isinstance(body, (ChildBody,)):
                body.close()
        return Head(
            response.status,
            [(n.encode("latin-1"), v.encode("latin-1")) for n, v in response.headers],
            _ClientBody(response),
            response.url,
            response.redirected,
        )


class _ClientBody:
    """An upstream response body as a :class:`BodySource`."""

    __slots__ = ("_response",)

    def __init__(self, response: http_client.ClientResponse) -> None:
        self._response = response

    async def receive(self) -> bytes:
        return await self._response.receive_some()

    def close(self) -> None:
        self._response.close()


async def _iterate(source: BodySource) -> AsyncIterator[bytes]:
    while chunk := await source.receive():
        yield chunk


def _close(body: BodySource | bytes | None) -> None:
    if body is not None and not isinstance(body, bytes):
        body.close()
