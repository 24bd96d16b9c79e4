"""What a queue consumer's ``queue(batch, env, ctx)`` receives.

``batch.queue``, ``batch.messages`` (each with ``id``, ``timestamp`` (a
datetime), ``body``, ``attempts``, ``ack()``, ``retry(delaySeconds=)``),
``batch.ackAll()``, ``batch.retryAll(delaySeconds=)``. The decisions are sent
to the supervisor as one ``QueueSettled`` before the invocation's result;
what is left undecided follows the handler (returned: acked; raised:
retried), as on Cloudflare.
"""

from __future__ import annotations

import datetime
from typing import Any

from protocol.messages import QueueEvent, QueueSettled

from .bindings import options
from .bindings.queues import decode_body


def _delay(options_: Any, keywords: dict[str, Any], where: str) -> float | None:
    delay = options(options_, keywords, where).get("delaySeconds")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))
                              or not 0 <= delay <= 43200):
        raise TypeError(f"{where}: delaySeconds must be a number between 0 and 43200")
    return delay


class Message:
    def __init__(self, batch: MessageBatch, raw: Any) -> None:
        self._batch = batch
        self.id = raw.id
        # Naive, as the SDK hands a Date to Python (python_from_rpc's
        # datetime.fromtimestamp, in a runtime whose zone is UTC): it
        # subtracts from datetime.now() (an aware one raised TypeError).
        self.timestamp = datetime.datetime.fromtimestamp(raw.timestamp / 1000, datetime.UTC).replace(tzinfo=None)
        self.attempts = raw.attempts
        self.body = decode_body(raw.body, raw.content_type)

    def ack(self) -> None:
        self._batch._decide(self.id, None, False)

    def retry(self, options_: Any = None, **keywords: Any) -> None:
        self._batch._decide(self.id, _delay(options_, keywords, "retry()"), True)

    def __repr__(self) -> str:
        return f"<Message {self.id} attempts={self.attempts}>"


class MessageBatch:
    def __init__(self, event: QueueEvent) -> None:
        self.queue = event.queue
        self.messages = [Message(self, m) for m in event.messages]
        self._acked: dict[str, None] = {}
        self._retried: dict[str, float | None] = {}
        self._all = ""
        self._all_delay: float | None = None

    def _decide(self, id_: str, delay: float | None, retry: bool) -> None:
        if id_ in self._acked or id_ in self._retried:
            return  # the first decision holds, as on Cloudflare
        if self._all == ("ack" if retry else "retry"):
            # After ackAll() a message's retry() has no effect, and after
            # retryAll() its ack() (workerd's queue.c++: "Calling retry() on a
            # message after calling ackAll() has no effect"). A call made
            # before the batch-wide one still takes precedence over it.
            return
        if retry:
            self._retried[id_] = delay
        else:
            self._acked[id_] = None

    def ackAll(self) -> None:  # noqa: N802 - Workers API name
        self._all = self._all or "ack"

    def retryAll(self, options_: Any = None, **keywords: Any) -> None:  # noqa: N802
        if not self._all:
            self._all, self._all_delay = "retry", _delay(options_, keywords, "retryAll()")

    ack_all, retry_all = ackAll, retryAll

    def settled(self, inv: int) -> QueueSettled:
        return QueueSettled(inv, list(self._acked), list(self._retried.items()), self._all,
                            self._all_delay)

    def __repr__(self) -> str:
        return f"<MessageBatch {self.queue} ({len(self.messages)} messages)>"
