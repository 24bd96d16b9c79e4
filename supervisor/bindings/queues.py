"""Queue producers (``queue`` bindings): ``send`` and ``sendBatch``.

The queue is the binding's ``queue_name`` in the script's dispatch namespace
(supervisor.queues): two namespaces naming the same queue never share it.
"""

from __future__ import annotations

from typing import Any

from supervisor.bindings import Services, register
from supervisor.bindings.base import BindingError, Context, Reply, arg
from supervisor.queues import store
from supervisor.queues.hub import QueueHub, check_message


def hub_of(services: Services) -> QueueHub:
    hub = getattr(services, "queues", None)
    if hub is None:
        hub = services.queues = QueueHub(services)  # type: ignore[attr-defined]
    return hub


@register("queue")
class QueueHandler:
    def __init__(self, services: Services) -> None:
        self.hub = hub_of(services)

    async def call(self, ctx: Context, method: str, args: list[Any]) -> Reply:
        key = (ctx.record.namespace, ctx.binding.queue_name)
        default_delay = ctx.binding.delivery_delay
        if method == "send":
            message = check_message(arg(args, 0), arg(args, 1, "v8"), arg(args, 2), default_delay)
            await self.hub.send(key, [message], ctx.quota.queue_messages)
            return Reply(None)
        if method == "sendBatch":
            batch = arg(args, 0)
            if not isinstance(batch, list) or not batch:
                raise BindingError("sendBatch() needs a non-empty list of messages", "TypeError")
            if len(batch) > store.MAX_BATCH_MESSAGES:
                raise BindingError(f"sendBatch() takes at most {store.MAX_BATCH_MESSAGES} messages, "
                                   f"got {len(batch)}", "RangeError")
            batch_delay = arg(args, 1)
            messages = []
            for item in batch:
                if not isinstance(item, list) or len(item) != 3:
                    raise BindingError("sendBatch() messages are [body, contentType, delay]", "TypeError")
                delay = item[2] if item[2] is not None else batch_delay
                messages.append(check_message(item[0], item[1], delay, default_delay))
            total = sum(len(m.body) for m in messages)
            if total > store.MAX_BATCH_BYTES:
                raise BindingError(f"sendBatch() failed: the batch is {total} bytes; the limit is "
                                   f"{store.MAX_BATCH_BYTES}")
            await self.hub.send(key, messages, ctx.quota.queue_messages)
            return Reply(None)
        raise BindingError(f"Queue has no method {method!r}", "TypeError")

    def close(self) -> None:
        pass
