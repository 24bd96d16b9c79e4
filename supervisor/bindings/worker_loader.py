"""Worker Loader bindings: a script hands over the code of a dynamic worker.

The calls themselves go through :mod:`supervisor.calls` (a ``loader``
subrequest names the binding and the worker's id); this handler takes the one
thing they cannot carry, the code, when a stub found none
(:mod:`supervisor.calls.dynamic_workers` explains the life of that code).
"""

from __future__ import annotations

from typing import Any

from supervisor.bindings import Services, register
from supervisor.bindings.base import BindingError, Context, Reply, arg, string
from supervisor.calls.dynamic_workers import CodeError, DynamicWorkers


def dynamic_workers_of(services: Services) -> DynamicWorkers:
    """The host's one registry, shared with the calls that invoke its workers."""
    registry = getattr(services, "dynamic_workers", None)
    if registry is None:
        registry = services.dynamic_workers = DynamicWorkers()  # type: ignore[attr-defined]
    return registry


@register("worker_loader")
class WorkerLoaderHandler:
    def __init__(self, services: Services) -> None:
        self.registry = dynamic_workers_of(services)

    async def call(self, ctx: Context, method: str, args: list[Any]) -> Reply:
        if method == "put":
            worker_id = string(arg(args, 0), "the worker's id")
            try:
                record = self.registry.put(ctx.record, ctx.binding.name, worker_id, arg(args, 1))
            except CodeError as exc:
                raise BindingError(str(exc), "TypeError") from None
            return Reply(record.version)
        raise BindingError(f"WorkerLoader has no method {method!r}", "TypeError")

    def close(self) -> None:
        pass
