"""What the supervisor keeps for one child's calls in flight, and its bound.

Why: a call's head and arguments stay in the supervisor's memory for as
long as the call waits for its answer, and some waits have no end of their
own: a Durable Object's input gate queues calls without a bound, and an RPC
call's arguments may be 32 MB. A compromised child sent 300 calls with
900 KB of inline arguments each to an object it kept busy, and the
supervisor held 270 MB for that one request: a few such requests take the
host's memory, and every tenant with it. The per-call caps
(``MAX_CALL_HEADER_BYTES`` and the frame limit) bound one call, not how many
wait.

So what a child's calls make the supervisor keep is counted, per child,
and bounded by that child's own memory limit: on Cloudflare the arguments
of a call in flight live in the caller's isolate, under its memory limit,
and a host sized for its tenants' memory limits is sized for this too. A
call past the bound is refused at once, in words that say so; the calls
already waiting go on. A well-behaved worker never comes near: the runtime
streams any body, and it holds its own copy of every pending call's
arguments under that same limit.

Counted: a call's head (``SubRequest``: URL, headers, the rest), a binding
call's inline arguments, and arguments read from a call's body. Not
counted: bodies streamed through (their windows bound them).
"""

from __future__ import annotations

from typing import Any

#: The bound for a child whose memory limit is not known (no memory backend).
DEFAULT_LIMIT_MB = 128
#: What a value that is neither a string, bytes nor a container counts for.
_SCALAR = 16


class HeldCalls:
    """One child's count: bytes kept per call in flight, and their sum."""

    __slots__ = ("total", "_sizes")

    def __init__(self) -> None:
        self.total = 0
        self._sizes: dict[int, int] = {}

    def hold(self, call: int, size: int, limit_mb: int | None) -> str:
        """Count ``size`` more bytes for ``call`` (a new call, or arguments
        read later); the refusal in the tenant's words, or ""."""
        limit = (limit_mb or DEFAULT_LIMIT_MB) * 1024 * 1024
        if self.total + size > limit:
            return (f"too many calls in flight: this worker's calls waiting for an answer already "
                    f"hold {self.total} bytes of requests and arguments, and this one's {size} "
                    f"would pass {limit} (the worker's memory limit); wait for some of them to "
                    f"finish")
        self._sizes[call] = self._sizes.get(call, 0) + size
        self.total += size
        return ""

    def end(self, call: int) -> None:
        """``call`` was answered, refused or cancelled: what it held is free."""
        self.total -= self._sizes.pop(call, 0)


def args_size(value: Any) -> int:
    """Roughly what decoded call arguments take: their strings and bytes,
    and a little for everything else (the frame decoder bounds the depth)."""
    size = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (bytes, str, bytearray)):
            size += len(item)
        elif isinstance(item, (list, tuple)):
            size += _SCALAR
            stack.extend(item)
        elif isinstance(item, dict):
            size += _SCALAR
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            size += _SCALAR
    return size
