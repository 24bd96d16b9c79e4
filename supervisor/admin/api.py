"""The admin REST API (SPEC section 2) as a sans-I/O handler.

The HTTP server owns sockets and framing; it hands each complete request to
:meth:`AdminAPI.handle` and writes back the ``(status, headers, body)`` it
returns. Keeping the API free of I/O makes it testable with plain bytes.

The API is split by job: :mod:`.decode` bounds what enters, :mod:`.router`
picks the handler, :mod:`.handlers` does the work against the store,
:mod:`.render` shapes the answers (Cloudflare's envelope) and :mod:`.errors`
is the one place that maps a failure to a status and an error code. Nothing
raised by bad input escapes: domain errors carry their kind, anything else
becomes a logged 500.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import trio

from supervisor.admin import unsupported
from supervisor.admin.account import AccountHandlers
from supervisor.admin.asset_handlers import AssetHandlers
from supervisor.admin.decode import MAX_HEADERS, MAX_MESSAGE, clip, parse_target
from supervisor.admin.domains_api import DomainHandlers
from supervisor.admin.durable_objects_api import DurableObjectHandlers
from supervisor.admin.errors import MethodNotAllowed, status_and_code
from supervisor.admin.handlers import AdminHooks, Handlers, log_event
from supervisor.admin.kv import KVHandlers
from supervisor.admin.queues_api import QueueHandlers
from supervisor.admin.r2_buckets import R2BucketHandlers
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.admin.routes_api import RouteHandlers
from supervisor.admin.schedules import ScheduleHandlers
from supervisor.admin.script_config import ScriptConfigHandlers
from supervisor.admin.secrets_bulk import SecretsBulkHandlers
from supervisor.admin.tokens import OWNER, Principal, TokenHandlers, authorize
from supervisor.admin.versions import VersionHandlers
from supervisor.errors import CorralError, Invalid, NotSupported
from supervisor.model import BINDING_TYPES
from supervisor.store.assets import AssetBlobs
from supervisor.store.store import Store

__all__ = ["AdminAPI", "AdminHooks", "BINDING_TYPES", "Response"]


class AdminAPI:
    """Answers admin requests; one instance per supervisor."""

    def __init__(self, store: Store, hooks: AdminHooks, *, max_script_bytes: int = 10 * 2**20,
                 blobs: AssetBlobs | None = None) -> None:
        self.store = store
        self.hooks = hooks
        self.max_script_bytes = max_script_bytes
        self.router = Router()
        self.handlers = Handlers(store, hooks, max_script_bytes, blobs)
        self.handlers.register(self.router)
        # Each group of endpoints is one module over the core handlers.
        for group in (VersionHandlers, ScriptConfigHandlers, AssetHandlers, TokenHandlers, AccountHandlers,
                      KVHandlers, QueueHandlers, R2BucketHandlers, RouteHandlers, ScheduleHandlers,
                      DurableObjectHandlers, DomainHandlers, SecretsBulkHandlers):
            group(self.handlers).register(self.router)
        unsupported.register(self.router)

    async def handle(
        self, method: str | bytes, target: str | bytes, headers: list[tuple[bytes, bytes]], body: bytes,
        principal: Principal = OWNER, client_ip: str = "",
    ) -> Response:
        """Answer one request. Never raises (except cancellation).

        ``principal``: who is calling (the owner on the unix socket; a token
        on the TCP listener); ``client_ip``: its address, on the TCP listener.
        A ``/client/v4`` prefix is accepted, so an SDK whose base URL ends in
        Cloudflare's path layout works unchanged.
        """
        if isinstance(method, bytes):
            method = method.decode("latin-1")
        if isinstance(target, bytes):
            target = target.decode("latin-1")
        method = clip(method.upper(), 20)
        path = clip(target, 200)
        try:
            path, segments, query = parse_target(target)
            if segments[:2] == ["client", "v4"]:
                segments = segments[2:]
            if len(headers) > MAX_HEADERS:
                raise Invalid(f"the request has {len(headers)} headers, more than the {MAX_HEADERS} accepted")
            header_map = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
            handler, params = self.router.resolve(method, path, segments)
            authorize(principal, method, path, params)
            request = Request(method=method, path=path, params=params, query=query,
                              headers=header_map, body=body,
                              token_id=principal.token.id if principal.token is not None else "",
                              namespaces=tuple(principal.token.namespaces) if principal.token is not None else (),
                              client_ip=client_ip)
            return await handler(request)
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - the API must answer, whatever happened
            return self._error(method, path, exc)

    def _error(self, method: str, path: str, exc: BaseException) -> Response:
        status, code, message = status_and_code(exc)
        record: dict[str, Any] = {"method": method, "path": path}
        # A refusal Corral chose (a CorralError: 501 for what it does not do,
        # 503 while busy) has no traceback to show; an unexpected failure has.
        if status >= 500 and not isinstance(exc, CorralError):
            record["traceback"] = "".join(traceback.format_exception(exc))
        message = clip(message, MAX_MESSAGE)  # a hostile value echoed in it stays small
        record.update(status=status, code=code, message=message)
        # What Corral does not do is the caller's to change: a warning, as a 4xx is.
        quiet = status < 500 or isinstance(exc, NotSupported)
        log_event(logging.WARNING if quiet else logging.ERROR, "admin.error", **record)
        status_, headers, payload = envelope(status, None, errors=[{"code": code, "message": message}])
        if isinstance(exc, MethodNotAllowed):
            headers.append((b"allow", ", ".join(exc.allowed).encode()))
        if isinstance(exc, NotSupported):
            # A 5xx that no retry can change: Cloudflare's SDKs retry every
            # 5xx unless told not to, and would ask again (with backoff) for nothing.
            headers.append((b"x-should-retry", b"false"))
        return status_, headers, payload
