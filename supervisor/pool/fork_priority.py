"""A zygote's priority: nice 10 while it refills the pool, 0 while requests wait for it.

A zygote sets nice 10 itself at start, so that refilling the pool never takes a
core from warm traffic. But at nice 10 it got a tenth of a core against the very
requests it was forking for: a storm of 300 first requests had a p50 of 44-48 ms,
30-37 ms with the zygote at nice 0 while a request waits for one of its forks.
The base zygote and every package zygote share this one rule (see
``Pool._take_spare`` and ``Pool._take_package_spare``).
"""

from __future__ import annotations

from collections.abc import Callable

#: The nice a zygote sets itself, and returns to once nobody waits for it.
ZYGOTE_NICE = 10


class ForkPriority:
    """Renices one zygote only when its urgency changes (one syscall per change)."""

    __slots__ = ("rushed", "until")

    def __init__(self) -> None:
        #: At nice 0 now.
        self.rushed = False
        #: trio time before which the base zygote stays rushed (set as the last waiter leaves).
        self.until = 0.0

    def rush(self, renice: Callable[[int, int], None], pid: int) -> None:
        """A request waits for this zygote's fork: nice 0."""
        if not self.rushed:
            self.rushed = True
            renice(pid, 0)

    def calm(self, renice: Callable[[int, int], None], pid: int) -> None:
        """Nobody waits any more: back to :data:`ZYGOTE_NICE`."""
        if self.rushed:
            self.rushed = False
            renice(pid, ZYGOTE_NICE)
