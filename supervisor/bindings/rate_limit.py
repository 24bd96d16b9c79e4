"""Rate Limiting bindings: ``await env.NAME.limit(key=...)`` -> ``{"success": bool}``.

Cloudflare keeps these counters in memory where the request runs, per
location, and calls them approximate; Corral's location is this host, so
the counters live in the supervisor's memory and a restart forgets them, as
a Cloudflare location may. Each counter is keyed by the binding's data scope
(the script's dispatch namespace and its ``namespace_id``: scripts of one
namespace that name the same id share their limits, as on Cloudflare,
where the id is account-wide) and the tenant's key.

The window slides the way Cloudflare describes its own rate limiting: the
count of the current fixed window plus the previous window's count weighted
by how much of it still overlaps the sliding one. That holds two integers
per key instead of a timestamp per call. A refused call is not counted;
with ``mitigation_timeout`` set, a key that went over stays refused that
long.

Memory is bounded: an entry is dropped once its windows and any mitigation
are over (checked from the least recently touched end on each call), and at
most :data:`MAX_KEYS` keys are kept, the least recently touched going first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from supervisor.bindings import Services, register
from supervisor.bindings.base import BindingError, Context, Reply, arg, string

#: Keys kept at most, over every binding of the host (~100 bytes each).
MAX_KEYS = 200_000
#: Longest key accepted (Cloudflare's keys are free text; this bounds memory).
MAX_KEY_BYTES = 1024
#: Entries looked at for expiry per call, so that a call's cost stays bounded.
EXPIRE_PER_CALL = 8


class _Counter:
    """One key's sliding window."""

    __slots__ = ("window", "current", "previous", "blocked_until", "expires")

    def __init__(self) -> None:
        self.window = -1
        self.current = 0
        self.previous = 0
        self.blocked_until = 0.0
        self.expires = 0.0


class RateLimiter:
    """Every rate limit counter of the host; ``clock`` is monotonic seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self.counters: OrderedDict[tuple[str, str], _Counter] = OrderedDict()

    def limit(self, scope: str, key: str, limit: float, period: int, mitigation_timeout: int = 0) -> bool:
        """Count a call of ``key`` if it is within ``limit`` per ``period``; False if not."""
        now = self.clock()
        self._expire(now)
        counters = self.counters
        counter = counters.get((scope, key))
        if counter is None:
            counter = counters[(scope, key)] = _Counter()
            if len(counters) > self.max_keys:
                counters.popitem(last=False)
        else:
            counters.move_to_end((scope, key))
        window = int(now // period)
        if counter.window != window:
            counter.previous = counter.current if counter.window == window - 1 else 0
            counter.current = 0
            counter.window = window
        counter.expires = max((window + 2) * period, counter.blocked_until)
        if now < counter.blocked_until:
            return False
        overlap = 1.0 - (now - window * period) / period
        if counter.previous * overlap + counter.current + 1 > limit:
            if mitigation_timeout:
                counter.blocked_until = now + mitigation_timeout
                counter.expires = max(counter.expires, counter.blocked_until)
            return False
        counter.current += 1
        return True

    def _expire(self, now: float) -> None:
        counters = self.counters
        for _ in range(EXPIRE_PER_CALL):
            if not counters:
                return
            oldest_key = next(iter(counters))
            if counters[oldest_key].expires > now:
                return
            del counters[oldest_key]


@register("ratelimit")
class RateLimitHandler:
    def __init__(self, services: Services) -> None:
        self.limiter = RateLimiter()

    async def call(self, ctx: Context, method: str, args: list[Any]) -> Reply:
        if method != "limit":
            raise BindingError(f"RateLimit has no method {method!r}", "TypeError")
        key = string(arg(args, 0), "the rate limit's key")
        if len(key.encode()) > MAX_KEY_BYTES:
            raise BindingError(f"the rate limit's key is longer than {MAX_KEY_BYTES} bytes", "TypeError")
        rule = ctx.binding.simple
        return Reply(self.limiter.limit(ctx.scope.key, key, rule.limit, rule.period,
                                        rule.mitigation_timeout))

    def close(self) -> None:
        self.limiter.counters.clear()
