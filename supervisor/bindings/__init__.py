"""Binding calls: KV, D1, R2, the Cache API (and next Durable Objects, queues).

A child names only its binding and a method (``BindingCall``); everything
else is resolved here from the script the platform stored:

1. the invocation that made the call (its script record, its limits);
2. the binding of that name in the record, which must be a brokered type
   (``supervisor.model.BROKERED``), or the Cache API (``CACHE_BINDING``);
3. the data scope: the script's dispatch namespace plus the binding's id,
   so tenants of different namespaces never share data;
4. the storage caps in force for the script (``supervisor.bindings.quota``);
5. the handler registered for the binding's type, one module each.

A new binding type is one module with a handler class, registered with
:func:`register` under its metadata ``type`` (and added to ``BROKERED`` in
the model); this file does not change.

Each call runs as a task in the calling child's nursery, under a cancel
scope of its invocation (an ended invocation's calls stop; a dead child's
calls die with it). Every binding operation counts as a subrequest of the
invocation, as on Cloudflare, where requests to KV, R2 and D1 are
subrequests. Values travel as the call's body, streamed with credit when
large, so no frame ever exceeds its limit.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from protocol.messages import (
    CACHE_BINDING,
    DO_STORAGE,
    BindingCall,
    BindingResult,
    DurableObjectEvent,
    ExceptionInfo,
    SubFailed,
)
from supervisor.bindings.base import BindingError, Context, Handler, Reply, Scope, object_scope
from supervisor.bindings.io import STORAGE_OWNER, Databases, Offload
from supervisor.bindings.quota import quota_for
from supervisor.config import StorageConfig
from supervisor.errors import storage_full
from supervisor.log import error
from supervisor.model import BROKERED, PLATFORM
from supervisor.pool.bodies import BodyError, BodySource, read_all

if TYPE_CHECKING:
    from supervisor.pool.child_process import ChildProcess
    from supervisor.pool.invocation import Invocation

#: Largest msgpack-encoded arguments a call may send as its body.
MAX_PACKED_ARGS = 32 * 1024 * 1024
#: Cloudflare's words when an invocation is out of subrequests.
TOO_MANY = "Too many API requests by single Worker invocation."


class Services:
    """What handlers are built from: where storage lives and how it is reached."""

    def __init__(self, root: str, config: StorageConfig) -> None:
        self.root = root
        self.config = config
        self.offload = Offload(config.threads)
        self.databases = Databases(self.offload, config.open_databases)

    def path(self, kind: str, scope: Scope, *parts: str) -> str:
        """``<root>/<kind>/<scope key>/<parts>``: ids never become path segments."""
        return os.path.join(self.root, kind, scope.key, *parts)


HandlerFactory = Callable[[Services], Handler]
_FACTORIES: dict[str, HandlerFactory] = {}


def register(kind: str) -> Callable[[HandlerFactory], HandlerFactory]:
    """Register the handler of binding type ``kind`` (metadata ``type``)."""

    def add(factory: HandlerFactory) -> HandlerFactory:
        _FACTORIES[kind] = factory
        return factory

    return add


def _load_handlers() -> None:
    """Import every module of this package: each registers its handler."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "io", "quota"):
            importlib.import_module(f"{__name__}.{info.name}")


def _scope_id(binding: Any) -> str:
    """The id a binding's data is keyed by (Cloudflare's field per type)."""
    for field in ("namespace_id", "id", "bucket_name", "class_name", "queue_name"):
        value = getattr(binding, field, None)
        if isinstance(value, str) and value:
            if field == "bucket_name" and getattr(binding, "jurisdiction", None):
                return f"{binding.jurisdiction}/{value}"
            return value
    raise BindingError(f"the binding {binding.name!r} names no data")


class Bindings:
    """Answers the binding calls of every child; one per supervisor."""

    def __init__(self, state_dir: str, config: StorageConfig) -> None:
        _load_handlers()
        self.services = Services(os.path.join(state_dir, "storage"), config)
        self.config = config
        self.handlers: dict[str, Handler] = {kind: factory(self.services)
                                             for kind, factory in _FACTORIES.items()}

    def close(self) -> None:
        for handler in self.handlers.values():
            handler.close()
        self.services.databases.close()

    # -- from the child's reader (synchronous) ----------------------------------
    def handle(self, child: ChildProcess, message: BindingCall) -> None:
        """Start call ``message.call``; the answer goes back when it is done."""
        call = message.call
        body = self._request_body(child, message)
        try:
            parent = child.invocations.get(message.parent)
            if parent is None:
                raise BindingError("the request that made this call has already ended")
            parent.calls.add(call)
            _count(parent)
            handler, ctx, kind = self._resolve(parent, message.binding, body)
        except BindingError as exc:
            _close(body)
            child.held.end(call)
            child.send(SubFailed(call, ExceptionInfo(exc.name, exc.message)))
            return
        span = parent.add_span({"binding": message.binding, "type": kind, "method": message.method[:64],
                                "start_ns": time.time_ns()})
        if kind == "durable_object_namespace":
            # Calls on objects reach them in the order the caller made them
            # (Cap'n Proto's E-order, which Cloudflare's stubs keep): each waits
            # for its predecessor's delivery. Tasks alone start in trio's order,
            # which shuffles them on purpose.
            ctx.after, ctx.delivered = parent.object_call, trio.Event()
            parent.object_call = ctx.delivered
        child.spawn(self._run, child, parent, message, handler, ctx, span)

    def _request_body(self, child: ChildProcess, message: BindingCall) -> BodySource | bytes | None:
        return child.receive_body(message.body, message.call)

    def _resolve(self, parent: Invocation, name: str, body: BodySource | bytes | None
                 ) -> tuple[Handler, Context, str]:
        record = parent.record
        if name == CACHE_BINDING:
            kind, binding = "cache", None
            scope = Scope(record.namespace, record.name)  # private to the script
        elif name == DO_STORAGE:
            # A Durable Object's own storage: the object is the one the
            # supervisor invoked, named by the invocation's event.
            event = parent.event
            if not isinstance(event, DurableObjectEvent):
                raise BindingError("ctx.storage is only available inside a Durable Object")
            kind, binding = "durable_object_storage", event
            scope = object_scope(record.namespace, record.name, event.class_name, event.object_id)
        else:
            binding = next((b for b in record.bindings if b.name == name), None)
            if binding is None or not isinstance(binding, BROKERED):
                raise BindingError(f"the script has no storage binding named {name!r}", "TypeError")
            kind = type(binding).__struct_config__.tag  # type: ignore[attr-defined]
            # A Worker Loader keeps no data: its scope is the script itself.
            scope = Scope(record.namespace, record.name if kind == "worker_loader" else _scope_id(binding))
        handler = self.handlers.get(kind)
        if handler is None:
            raise BindingError(f"{kind} bindings are not served by this Corral yet")
        return handler, Context(record, binding, scope, quota_for(self.config.quota, record), body,
                                parent), kind

    # -- the call's task ------------------------------------------------------------
    async def _run(self, child: ChildProcess, parent: Invocation, message: BindingCall,
                   handler: Handler, ctx: Context, span: dict[str, Any]) -> None:
        call = message.call
        STORAGE_OWNER.set((parent.record.namespace, parent.record.name))  # this task's: its storage's tenant
        ctx.hold = lambda size: child.held.hold(call, size, child.memory_mb)
        with trio.CancelScope() as scope:
            child.calls[call] = scope
            parent.call_scopes.add(scope)
            try:
                args = message.args
                if message.args_in_body:
                    args = await _unpack_args(ctx, child, call)
                reply = await handler.call(ctx, message.method, args)
                self._deliver(child, call, reply)
            except BindingError as exc:
                span["error"] = exc.message
                child.send(SubFailed(call, ExceptionInfo(exc.name, exc.message)))
            except Exception as exc:  # noqa: BLE001 - a handler bug fails one call, not the child
                span["error"] = "internal error"
                error("binding.failed", exc_info=exc, script=parent.record.name,
                      namespace=parent.record.namespace, binding=message.binding,
                      method=message.method[:64], reason=f"{type(exc).__name__}: {exc}"[:300])
                # The platform's storage failing is said as such (the tenant
                # can tell "try later" from a bug); anything else stays vague.
                what = ("the platform's storage is full" if storage_full(exc) else
                        "the platform's storage for this binding cannot be read"
                        if isinstance(exc, sqlite3.DatabaseError) else "internal error")
                child.send(SubFailed(call, ExceptionInfo(
                    "Error", f"{message.method[:64]}() failed: {what}; the platform logged it")))
            finally:
                span["end_ns"] = time.time_ns()
                child.calls.pop(call, None)
                child.held.end(call)
                parent.call_scopes.discard(scope)
                _close(ctx.body)
                if ctx.delivered is not None:
                    ctx.delivered.set()  # delivered or failed: the next call's turn

    def _deliver(self, child: ChildProcess, call: int, reply: Reply) -> None:
        child.send(BindingResult(call, reply.value, child.send_body(reply.body, call)))


async def _unpack_args(ctx: Context, child: ChildProcess, call: int) -> list[Any]:
    """A call's arguments sent as its body (they were too large to go inline),
    counted among what ``child``'s calls make the supervisor keep."""
    body, ctx.body = ctx.body, None
    if body is None:
        return []
    try:
        raw = body if isinstance(body, bytes) else await read_all(body, MAX_PACKED_ARGS)
    except BodyError as exc:
        raise BindingError(f"the call's arguments could not be read: {exc}") from None
    problem = child.held.hold(call, len(raw), child.memory_mb)
    if problem:
        raise BindingError(problem)
    try:
        args = msgspec.msgpack.decode(raw)
    except msgspec.DecodeError as exc:
        raise BindingError(f"the call's arguments could not be read: {exc}") from None
    if not isinstance(args, list):
        raise BindingError("the call's arguments must be a list", "TypeError")
    return args


def remove_tree(path: str) -> None:
    """Delete a directory and what it holds; one that is not there is fine."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass


#: Where the data of an id bound by type lives: ``<root>/<folder>/<scope key>/<file>``.
BOUND_DATA = {"kv_namespace": ("kv", "kv.sqlite3"), "d1": ("d1", "db.sqlite3"),
              "r2_bucket": ("r2", "index.sqlite3"),  # (an R2 bucket's blobs beside its index)
              "queue": ("queues", "queue.sqlite3")}  # its name is its id (supervisor.queues.hub)


async def purge_bound(services: Services, kind: str, namespaces: list[str], bound_id: str) -> None:
    """Delete what each of ``namespaces`` keeps under ``bound_id`` for binding
    type ``kind`` (its data is per namespace, see :class:`Scope`), so that a
    later binding of the id starts empty, as after Cloudflare deletes a KV
    namespace or D1 database."""
    folder, file = BOUND_DATA[kind]
    for namespace in namespaces:
        path = services.path(folder, Scope(namespace, bound_id), file)
        await services.databases.forget(path)  # no connection left on the deleted file
        await services.offload.run(remove_tree, os.path.dirname(path))


def _count(parent: Invocation) -> None:
    """One binding operation is one subrequest of the invocation."""
    parent.subrequests += 1
    limit = parent.limits.sub_requests
    if limit is not None and parent.subrequests > limit:
        raise BindingError(TOO_MANY)


def _close(body: BodySource | bytes | None) -> None:
    if body is not None and not isinstance(body, bytes):
        body.close()


__all__ = ["BindingError", "Bindings", "Context", "Handler", "PLATFORM", "Reply", "Scope",
           "Services", "register"]
