"""Finding a script's handlers and calling them the way Cloudflare does.

A script defines ``class Default(WorkerEntrypoint)`` with ``fetch``,
``scheduled``, ``queue`` (and ``tail``) methods, or the older module-level
``on_fetch``, ``on_scheduled``, ``on_queue``. Cloudflare passes
``(event, env, ctx)`` and cuts the list to what the handler declares: an
``async def fetch(self)`` gets nothing, ``fetch(self, request)`` the request.
"""

from __future__ import annotations

import inspect
import types
from typing import Any, Callable

#: Handler kinds a script may define, in the order the error message names them.
KINDS = ("fetch", "scheduled", "queue", "tail")


def _arity(fn: Callable[..., Any]) -> int:
    """How many of ``(event, env, ctx)`` ``fn`` takes (3 for ``*args``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 3
    count = 0
    for param in params:
        if param.kind == param.VAR_POSITIONAL:
            return 3
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            count += 1
    return min(count, 3)


class Entry:
    """The handlers of one loaded module."""

    def __init__(self, module: types.ModuleType) -> None:
        entry = getattr(module, "Default", None)
        self.cls: type | None = None
        self.functions: dict[str, Callable[..., Any]] = {}
        if isinstance(entry, type) and any(callable(getattr(entry, k, None)) for k in KINDS):
            self.cls = entry
        else:
            for kind in KINDS:
                fn = getattr(module, f"on_{kind}", None)
                if callable(fn):
                    self.functions[kind] = fn
        if self.cls is None and not self.functions:
            raise LookupError(
                "the script has no fetch handler (or other handler): define "
                "`class Default(WorkerEntrypoint)` with "
                "`async def fetch(self, request)` (or scheduled/queue), or a module-level "
                "`async def on_fetch(request, env)`")

    def has(self, kind: str) -> bool:
        if self.cls is not None:
            return callable(getattr(self.cls, kind, None))
        return kind in self.functions

    async def call(self, kind: str, event: Any, env: Any, ctx: Any) -> Any:
        """Run handler ``kind``; raises a TypeError naming what is missing."""
        if self.cls is not None:
            method = getattr(self.cls(ctx, env), kind, None)
            if not callable(method):
                raise TypeError(f"the worker's Default class has no {kind}() handler")
            fn = method
        else:
            fn = self.functions.get(kind)  # type: ignore[assignment]
            if fn is None:
                raise TypeError(f"the worker defines no on_{kind}() handler")
        result = fn(*(event, env, ctx)[: _arity(fn)])
        if inspect.isawaitable(result):
            result = await result
        return result


class ScheduledController:
    """What ``scheduled(self, controller, env, ctx)`` receives (Cloudflare's names and ours)."""

    type = "scheduled"

    def __init__(self, cron: str, scheduled_time: float) -> None:
        self.cron = cron
        self.scheduledTime = scheduled_time  # noqa: N815 - Workers API name
        self.scheduled_time = scheduled_time
        self._retry = True

    def noRetry(self) -> None:  # noqa: N802 - Workers API name
        self._retry = False

    no_retry = noRetry

    def __repr__(self) -> str:
        return f"<ScheduledController cron={self.cron!r} scheduledTime={self.scheduledTime}>"
