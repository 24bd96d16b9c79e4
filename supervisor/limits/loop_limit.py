"""Cloudflare's loop limit: a request passes through Workers at most 16 times.

A worker's ``fetch()`` of a host routed back to Corral (its own listener,
or another Corral a platform runs) is a new client request to Corral, with
fresh limits: without a count carried across that hop, one request fanned
out without end (red team 5: a chain 100 deep, one request made 121
invocations with a fan-out of 3). Cloudflare carries the count in the
``CF-EW-Via`` header: "an integer that indicates how many invocations are
left. Every time a Worker is invoked, the integer will decrement by 1. If
the count reaches zero, a 1019 error is returned."

Here the supervisor writes the header on every outbound HTTP fetch (a
tenant's own ``CF-EW-Via`` is replaced: the count cannot be raised), and
the ingress refuses a request that arrives with none left. A client may
lower the count, never raise it past 16.
"""

from __future__ import annotations

from typing import Protocol

from protocol.messages import Header


class Chained(Protocol):
    """An invocation as this module needs it: the request it serves, and
    who called it (none: a client's request, a cron or a queue's batch)."""

    headers: list[Header]
    depth: int

    @property
    def parent(self) -> Chained | None: ...

HEADER = b"cf-ew-via"
#: Cloudflare's: "A Worker cannot call itself or another Worker more than 16 times."
MAX_LOOPS = 16
#: What the ingress answers a request with no invocation left (Cloudflare's error 1019).
REFUSAL = b"error code: 1019\nWorker hit loop limit: this request passed through Workers too many times\n"


def loops_left(headers: list[Header]) -> int:
    """Invocations a request with ``headers`` may still make: its
    ``CF-EW-Via`` (at most 16), or 16 without one or with one that is not a
    whole number."""
    for name, value in headers:
        if name == HEADER:
            try:
                return min(int(value), MAX_LOOPS)
            except ValueError:
                return MAX_LOOPS
    return MAX_LOOPS


def outbound_headers(headers: list[Header], caller: Chained) -> list[Header]:
    """``headers`` of a fetch ``caller`` makes, with the count it carries:
    what its request had left, less one for each invocation on the way to
    ``caller`` (a dispatcher and its user worker are two)."""
    root = caller
    while (up := root.parent) is not None:
        root = up
    left = max(0, loops_left(root.headers) - caller.depth - 1)
    return [h for h in headers if h[0].lower() != HEADER] + [(HEADER, str(left).encode("ascii"))]
