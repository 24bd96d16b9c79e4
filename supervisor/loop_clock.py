"""trio's clock, read without Python frames on the request path.

``trio.current_time()`` is three Python calls deep (the generated wrapper,
the runner, the clock's own ``current_time``), and a request through the
dispatcher read it nine times in the supervisor: 27 of its ~250 Python
calls per request (cProfile, 2 tenants). The supervisor therefore runs trio
on :class:`PerfCounterClock`, whose ``current_time`` *is* ``time.perf_counter``
(a C function; trio's default clock adds a random offset in Python), and the
hot paths read :func:`now`, which inside :func:`installed` is that clock's
``current_time`` itself.

``now`` is always trio's clock of the run in progress: outside
:func:`installed` (a component run under another ``trio.run``, as tests do)
it is ``trio.current_time``, so deadlines handed to trio stay right.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

#: trio's current time (see the module docstring). Read it as ``loop_clock.now()``:
#: a name imported from here would keep the value of import time.
now: Callable[[], float] = trio.current_time


class PerfCounterClock(trio.abc.Clock):
    """``time.perf_counter`` as trio's clock: no offset, no Python on a read."""

    current_time = staticmethod(time.perf_counter)

    def start_clock(self) -> None:
        pass

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return deadline - time.perf_counter()


@contextmanager
def installed() -> Iterator[None]:
    """Inside a trio run: :func:`now` reads this run's clock directly."""
    global now
    now = trio.lowlevel.current_clock().current_time
    try:
        yield
    finally:
        now = trio.current_time
