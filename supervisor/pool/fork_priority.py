"""A zygote's priority: nice 10 while it refills the pool, -10 while requests wait for it.

A zygote sets nice 10 itself at start, so that refilling the pool never takes a
core from warm traffic. But at nice 10 it got a tenth of a core against the very
requests it was forking for: a storm of 300 first requests had a p50 of 44-48 ms,
30-37 ms with the zygote at nice 0 while a request waits for one of its forks.

At nice 0 the forks still lost the CPU to the cold starts they were feeding:
in a storm the CPU is saturated by spares loading scripts, the spare line ran
dry for hundreds of milliseconds at a time, and the requests that waited in
it made the p99 (3-4 times the p50). The forks a waiting request needs are
the shortest work in the pipeline and gate everything after them, so while
requests wait the zygote, and the spares it forks for them until they are
assigned (``Pool._adopt``, ``ChildProcess.assign``), run at
:data:`RUSH_NICE`, ahead of the tenants. Paired storm runs (500 warm tenants,
then 300 first requests from 8 connections): p99 90-116 ms at nice 0, 60-92
ms at -10, the p50 unchanged within noise. The zygote's share is bounded by
what is waited for: it forks only the spares asked of it.

The base zygote and every package zygote share this one rule (see
``Pool._take_spare`` and ``Pool._take_package_spare``).
"""

from __future__ import annotations

from collections.abc import Callable

#: The nice a zygote sets itself, and returns to once nobody waits for it.
ZYGOTE_NICE = 10
#: Not a nice: the process runs under ``SCHED_IDLE``, on CPU nobody else
#: wants (``child_process.Renicer``; any nice given later ends it). A zygote
#: started ahead of its rotation starts so (``zygote_client``): at nice 10 it
#: still took ~13% of the CPU of a storm of cold starts it fell into.
IDLE_ONLY = 20
#: The nice of a zygote while a request waits for its fork, and of the spares
#: it forks meanwhile until they are assigned a script (needs CAP_SYS_NICE;
#: without it they stay where they are, see ``child_process.Renicer``).
RUSH_NICE = -10


class ForkPriority:
    """Renices a zygote only when its urgency changes (one syscall per change).

    It remembers which process it rushed: a zygote that replaced the rushed
    one (a rotation, a restart) starts at :data:`ZYGOTE_NICE` of its own, and
    is rushed in turn the first time a request waits for it.
    """

    __slots__ = ("rushed_pid", "until")

    def __init__(self) -> None:
        #: The zygote at :data:`RUSH_NICE` now, if any.
        self.rushed_pid: int | None = None
        #: trio time before which the base zygote stays rushed (set as the last waiter leaves).
        self.until = 0.0

    @property
    def rushed(self) -> bool:
        return self.rushed_pid is not None

    def rush(self, renice: Callable[[int, int], None], pid: int) -> None:
        """A request waits for this zygote's fork: :data:`RUSH_NICE`."""
        if self.rushed_pid != pid:
            self.rushed_pid = pid
            renice(pid, RUSH_NICE)

    def calm(self, renice: Callable[[int, int], None], pid: int) -> None:
        """Nobody waits any more: back to :data:`ZYGOTE_NICE` (a zygote since
        replaced is not touched: it is gone, and its pid may be another's)."""
        if self.rushed_pid is not None:
            if self.rushed_pid == pid:
                renice(pid, ZYGOTE_NICE)
            self.rushed_pid = None
