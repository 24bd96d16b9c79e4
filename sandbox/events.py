"""Which handler an event goes to, and how it is called.

A script's handlers are the methods of ``class Default(WorkerEntrypoint)``
(``fetch``, ``scheduled``, ``queue``, ``tail``) or the older module-level
functions (``on_fetch``, ``on_scheduled``, ...). Cloudflare calls a
handler with ``(event, env, ctx)`` and a handler that declares fewer
parameters gets fewer, so ``async def tail(self, events)`` and
``async def tail(self, events, env, ctx)`` both work.

Tail workers receive trace events as dicts that also answer attribute access
(``event.scriptName``, ``event.logs[0].message``), as the TraceItem proxies
of Python Workers on Cloudflare do.
"""

from __future__ import annotations

import asyncio
import inspect
import types
from collections.abc import Callable
from typing import Any

from protocol.messages import (
    DurableObjectEvent,
    QueueEvent,
    RequestEvent,
    RpcEvent,
    ScheduledEvent,
    TailEvent,
    WebSocketEvent,
)

from . import tail_call
from .pyodide_shim import JsException
from .sdk_types import JsDict

#: Handler kinds a script may define, in the order the load error names them.
KINDS = ("fetch", "scheduled", "queue", "tail")
#: Methods of an entrypoint that are handlers or the runtime's, not RPC methods
#: (Cloudflare's reserved methods: ``connect`` opens a socket to the Worker,
#: ``dup`` duplicates a stub; neither is ever called over RPC).
RPC_RESERVED = frozenset({*KINDS, "email", "alarm", "constructor", "webSocketMessage",
                          "webSocketClose", "webSocketError", "connect", "dup"})


#: Properties of workerd's TraceItem (and of its event info, request, log,
#: exception and script version) that are ``undefined`` when they do not
#: apply. The JSON leaves them out, as ``JSON.stringify`` does; read as
#: attributes they are None, as Pyodide reads an undefined property, not an
#: AttributeError (``event.dispatchNamespace`` of a platform script).
OPTIONAL_FIELDS = frozenset({"entrypoint", "scriptVersion", "dispatchNamespace", "scriptTags",
                             "tailAttributes", "preview", "durableObjectId", "response", "cf",
                             "stack", "errorInfo", "tag", "message", "id"})


class TraceItem(JsDict):
    """A trace event as tail workers see it: a dict with attribute access,
    whose optional properties read as None when absent."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            if name in OPTIONAL_FIELDS:
                return None
            raise AttributeError(name) from None


class TraceRequest(TraceItem):
    """A fetch event's request in a trace (TraceItemFetchEventInfoRequest):
    URL and headers redacted, and ``getUnredacted()`` with them as they were.
    The unredacted copy is no item of the dict, so a tail worker that logs
    or forwards the event as JSON passes on the redacted one, as
    ``JSON.stringify`` of Cloudflare's does."""

    def getUnredacted(self) -> TraceItem:  # noqa: N802 - Cloudflare's name
        return TraceItem({**self, **object.__getattribute__(self, "_unredacted")})


#: The key the supervisor sends the unredacted request under
#: (supervisor.observability.traces.UNREDACTED).
_UNREDACTED = "unredacted"


def trace_items(value: Any, in_event: bool = False) -> Any:
    """JSON-able data with every dict made a :class:`TraceItem`; an event's
    ``request`` a :class:`TraceRequest`. Only there: the key was looked for
    at any depth, and a tenant's log argument or a client's header named
    ``unredacted`` vanished from what tail workers were given."""
    if isinstance(value, dict):
        return TraceItem((k, _request(v) if in_event and k == "request" else trace_items(v, k == "event"))
                         for k, v in value.items())
    if isinstance(value, list):
        return [trace_items(v) for v in value]
    return value


def _request(value: Any) -> Any:
    if not isinstance(value, dict) or _UNREDACTED not in value:
        return trace_items(value)
    request = TraceRequest((k, trace_items(v)) for k, v in value.items() if k != _UNREDACTED)
    object.__setattr__(request, "_unredacted", trace_items(value[_UNREDACTED]))
    return request


def positional_arity(handler: Callable[..., Any]) -> int | None:
    """Positional parameters ``handler`` declares (a bound method's self not
    counted; decorators that keep the signature are seen through); None: any.

    Asked once per function, not per invocation: ``inspect.signature`` costs
    about 9 us, on the hot path of every request otherwise.
    """
    func = getattr(handler, "__func__", handler)
    bound = func is not handler
    try:
        return _ARITY[(func, bound)]
    except KeyError:
        pass
    except TypeError:  # an unhashable callable: ask every time
        return _signature_arity(handler)
    count = _ARITY[(func, bound)] = _signature_arity(handler)
    return count


_ARITY: dict[tuple[Any, bool], int | None] = {}


def _signature_arity(handler: Callable[..., Any]) -> int | None:
    func = getattr(handler, "__func__", handler)
    if type(func) is types.FunctionType and not hasattr(func, "__wrapped__") \
            and not hasattr(func, "__signature__"):
        # A plain function (or method): its code object says it all. Going
        # through inspect.signature here ran ~120 of inspect's functions (and
        # enum's) on a tenant's first request, each call writing reference
        # counts into the zygote's pages: ~40 pages copied per child.
        code = func.__code__
        if code.co_flags & inspect.CO_VARARGS:
            return None
        return max(0, code.co_argcount - (func is not handler))
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return None
    count = 0
    for param in params:
        if param.kind == param.VAR_POSITIONAL:
            return None
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


class ScheduledController:
    """What ``scheduled(self, controller, env, ctx)`` receives (Cloudflare's names and ours)."""

    type = "scheduled"

    def __init__(self, cron: str, scheduled_time: float) -> None:
        self.cron = cron
        # Whole milliseconds, as JavaScript's number for it converts to Python.
        self.scheduledTime = int(scheduled_time)  # noqa: N815 - Workers API name
        self.scheduled_time = self.scheduledTime
        self._retry = True

    def noRetry(self) -> None:  # noqa: N802 - Workers API name
        self._retry = False

    no_retry = noRetry

    def __repr__(self) -> str:
        return f"<ScheduledController cron={self.cron!r} scheduledTime={self.scheduledTime}>"


class Handlers:
    """The handlers one loaded module defines."""

    def __init__(self, module: Any) -> None:
        #: The module itself: Durable Object classes are looked up in it by name.
        self.module = module
        entry = getattr(module, "Default", None)
        self.entry: type | None = None
        self.kinds: set[str] = set()
        if isinstance(entry, type) and any(callable(getattr(entry, k, None)) for k in KINDS):
            self.entry = entry
            self.kinds = {k for k in KINDS if callable(getattr(entry, k, None))}
            self.functions: dict[str, Callable[..., Any]] = {}
        else:
            self.functions = {k: getattr(module, f"on_{k}") for k in KINDS
                              if callable(getattr(module, f"on_{k}", None))}
            self.kinds = set(self.functions)
            if not self.kinds and isinstance(entry, type):
                self.entry = entry  # RPC methods only: a service called as env.SVC.method()

    def __bool__(self) -> bool:
        """Whether the module serves anything: handlers, a Default class, or
        a named entrypoint or Durable Object class another script binds to
        (Cloudflare deploys entrypoint-only Workers)."""
        return bool(self.kinds) or self.entry is not None or self._has_bindable_class()

    def _has_bindable_class(self) -> bool:
        from .workers import DurableObject, WorkerEntrypoint

        return any(isinstance(value, type) and issubclass(value, (WorkerEntrypoint, DurableObject))
                   and value not in (WorkerEntrypoint, DurableObject) and not name.startswith("_")
                   for name, value in vars(self.module).items())

    def entrypoint(self, name: str) -> type | None:
        """The entrypoint class ``name`` ("" or "Default": the default one):
        a service binding may name another class of the script's module."""
        if not name or name == "Default":
            return self.entry
        from .workers import WorkerEntrypoint

        # As workerd lists them (introspection.py's collect_classes): a
        # WorkerEntrypoint of the main module, not a private name. A binding
        # could otherwise run the methods of any class the script has, or
        # only imported.
        cls = None if name.startswith("_") else getattr(self.module, name, None)
        if not (isinstance(cls, type) and issubclass(cls, WorkerEntrypoint)):
            raise JsException("TypeError", f"the script has no entrypoint {name!r}: define "
                                           f"`class {name}(WorkerEntrypoint)` in its main module")
        return cls

    async def rpc(self, method: str, ctx: Any, env: Any, data: bytes, entrypoint: str = "",
                  functions: list[int] | None = None, function: int = 0) -> Any:
        """A Workers RPC call on an entrypoint (or, ``function``, of a
        function this child sent over RPC, through a stub of it): its
        result, encoded, as a response."""
        from .bindings import rpc_stubs
        from .bindings.durable_objects import decode_args, encode_rpc, rpc_response

        if function:
            result = await rpc_stubs.call_exported(function, decode_args(data, functions or ()))
            return rpc_response(*await encode_rpc(result, "stub() result"))
        entry = self.entrypoint(entrypoint)
        if entry is None or method.startswith("_") or method in RPC_RESERVED or not _defines(entry, method):
            raise JsException("TypeError", f'The RPC receiver does not implement the method "{method}".')
        result = getattr(entry(ctx, env), method)(*decode_args(data, functions or ()))
        if type(result) is types.CoroutineType or inspect.isawaitable(result):
            result = await result
        return rpc_response(*await encode_rpc(result, f"{method}() result"))

    async def call(self, kind: str, ctx: Any, env: Any, *args: Any, entrypoint: str = "") -> Any:
        """Run the ``kind`` handler with ``(*args, env, ctx)``, cut to what it
        declares; on the ``entrypoint`` class a service binding names, if any."""
        if entrypoint and entrypoint != "Default":
            handler = getattr(self.entrypoint(entrypoint)(ctx, env), kind, None)  # type: ignore[misc]
            if not callable(handler):
                raise TypeError(f"the entrypoint {entrypoint} has no {kind} handler")
        elif kind not in self.kinds:
            raise TypeError(f"the script has no {kind} handler: define `async def {kind}(self, ...)` "
                            "on its Default class")
        elif self.entry is not None:
            handler = getattr(self.entry(ctx, env), kind)
        else:
            handler = self.functions[kind]
        full = (*args, env, ctx)
        count = positional_arity(handler)
        if count is not None:
            full = full[:count]
        result = handler(*full)
        if kind == "fetch":
            tail_call.mark_root(result)
        # A synchronous handler is fine too; an ``async def`` one (nearly all)
        # is told apart without a call into ``inspect`` on every request.
        if type(result) is types.CoroutineType or inspect.isawaitable(result):
            result = await result
            # What it returns is awaited in turn, as a JavaScript promise
            # settles to what it resolves to: Cloudflare's examples end with
            # ``return fetch(url)`` (a coroutine) in an async handler. Two type
            # checks, as the common answer (a Response) is neither.
            while type(result) is types.CoroutineType or isinstance(result, asyncio.Future):
                result = await result
        return result


def settlement(inv: int, args: tuple[Any, ...]) -> Any:
    """The message a handler's event owes the supervisor before its result
    (a queue batch's ack/retry decisions), or None."""
    batch = args[0] if args else None
    settled = getattr(batch, "settled", None)
    return settled(inv) if callable(settled) else None


def kind_and_args(event: Any) -> tuple[str, tuple[Any, ...]]:
    """The handler an event goes to and the arguments before ``env, ctx``."""
    if isinstance(event, TailEvent):
        return "tail", (trace_items(event.events),)
    if isinstance(event, ScheduledEvent):
        return "scheduled", (ScheduledController(event.cron, event.scheduled_time),)
    if isinstance(event, QueueEvent):
        from .queue_batch import MessageBatch

        return "queue", (MessageBatch(event),)
    if event is None or isinstance(event, RequestEvent):
        return "fetch", ()
    if isinstance(event, DurableObjectEvent):
        return "durable_object", ()
    if isinstance(event, WebSocketEvent):
        return "websocket", ()
    if isinstance(event, RpcEvent):
        return "rpc", ()
    raise TypeError(f"an event of an unknown kind: {type(event).__name__}")


def _defines(entry: type, method: str) -> bool:
    """Whether the entrypoint class (or a base of its, not ``object``) has a
    callable ``method``: what only a class's metaclass has (``type.mro``)
    is no method of its instances."""
    for klass in entry.__mro__[:-1]:
        if method in vars(klass):
            return callable(getattr(entry, method, None))
    return False
