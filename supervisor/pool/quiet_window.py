"""When a cold start's replacement spare may be forked: the quiet window.

A cold start takes a spare; forking its replacement (the zygote's page
tables, then the new spare's set-up: 2-4 ms of CPU here) must not compete
with that cold start for the CPU. So the fork waits until the cold start is
over, or :attr:`QuietWindow.delay_s` at the most (a request waiting for a
spare forks at once: that is :mod:`.plan`'s rule, not this one's).

"Over" means over for the client. A cold start through a dispatcher ends
for the client when the *dispatcher* has answered, not when the user worker
has: a refill forked at the user worker's answer ran while the dispatcher
finished on a 2-core host, and the dispatcher waited for a core (2.5 ms in
a traced cold request). So the window holds until each cold child's first
invocation is done *and* the client request that called it (the root of
its chain of callers) is done. Sequential cold starts through a dispatcher,
150 per run, 20 ms apart, interleaved A/B, 12-13 runs a side: p50 4.6 ->
3.8 ms and p90 7.6 -> 5.8 ms (medians of the runs).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Protocol


class Caller(Protocol):
    """An invocation as the window sees it (supervisor.pool.invocation.Invocation)."""

    @property
    def parent(self) -> Caller | None: ...

    @property
    def is_done(self) -> bool: ...


class QuietWindow:
    """The base spares' refill window: open while cold starts (and the
    client requests that called them) run, never longer than ``delay_s``."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        #: No fork before this unless a request waits (PoolView.quiet_until).
        self.until = -math.inf
        self._cold: set[Hashable] = set()
        self._callers: set[Caller] = set()

    def opened(self, now: float) -> None:
        """A cold start took a spare (an open window is not extended)."""
        if now >= self.until:
            self.until = now + self.delay_s

    def started(self, child: Hashable) -> None:
        """``child`` is loading a script: the window holds until its first invocation is done."""
        self._cold.add(child)

    @property
    def awaits_callers(self) -> bool:
        """Cheap, for the hot path: is any client request holding the window?"""
        return bool(self._callers)

    def over(self, now: float, child: Hashable, caller: Caller | None = None) -> bool:
        """``child``'s first invocation is done (or it died); ``caller`` is the
        invocation that called it, if any. True if the window closed now."""
        if child not in self._cold:
            return False
        self._cold.discard(child)
        if caller is not None:
            while caller.parent is not None:
                caller = caller.parent
            if not caller.is_done:
                self._callers.add(caller)
        return self.check(now)

    def check(self, now: float) -> bool:
        """Close the window if nothing holds it any more; True if it closed now."""
        if now >= self.until:
            self._callers.clear()  # it ran out by itself
            return False
        if self._callers:
            self._callers = {caller for caller in self._callers if not caller.is_done}
        if self._cold or self._callers:
            return False
        self.until = now
        return True
