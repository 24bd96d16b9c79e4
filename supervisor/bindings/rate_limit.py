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
are over (checked from the least recently touched end of the scope called),
a scope keeps at most :data:`MAX_KEYS_PER_SCOPE` keys and the host
:data:`MAX_KEYS`, the least recently touched going first. Each scope is
ordered apart, and the host's bound takes from the largest scope: one
tenant calling with endless new keys drops only its own counters, never
another's (a victim's refused key, untouched while refused, would otherwise
drift to the old end of one shared list and be forgotten, allowed again).
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
#: Keys kept at most for one scope (a namespace's ``namespace_id``).
MAX_KEYS_PER_SCOPE = 50_000
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

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS,
                 max_keys_per_scope: int = MAX_KEYS_PER_SCOPE) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self.max_keys_per_scope = max_keys_per_scope
        #: Each scope's counters, least recently touched first.
        self.scopes: dict[str, OrderedDict[str, _Counter]] = {}
        self.total = 0

    def limit(self, scope: str, key: str, limit: float, period: int, mitigation_timeout: int = 0) -> bool:
        """Count a call of ``key`` if it is within ``limit`` per ``period``; False if not."""
        now = self.clock()
        counters = self.scopes.get(scope)
        if counters is None:
            counters = self.scopes[scope] = OrderedDict()
        self._expire(counters, now)
        counter = counters.get(key)
        if counter is None:
            counter = counters[key] = _Counter()
            self.total += 1
            if len(counters) > self.max_keys_per_scope:
                self._drop_oldest(counters)
            elif self.total > self.max_keys:
                self._drop_oldest(max(self.scopes.values(), key=len))
        else:
            counters.move_to_end(key)
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

    def _drop_oldest(self, counters: OrderedDict[str, _Counter]) -> None:
        counters.popitem(last=False)
        self.total -= 1

    def _expire(self, counters: OrderedDict[str, _Counter], now: float) -> None:
        for _ in range(EXPIRE_PER_CALL):
            if not counters:
                return
            oldest_key = next(iter(counters))
            if counters[oldest_key].expires > now:
                return
            del counters[oldest_key]
            self.total -= 1


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
        self.limiter.scopes.clear()
