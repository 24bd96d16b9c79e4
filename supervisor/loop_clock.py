"""trio's clock, read without Python frames on the request path.

``trio.current_time()`` is three Python calls deep (the generated wrapper,
the runner, the clock's own ``current_time``), and a request through the
dispatcher read it nine times in the supervisor: 27 of its ~250 Python
calls per request (cProfile, 2 tenants). The supervisor therefore runs trio
on :class:`PerfCounterClock`, whose ``current_time`` *is* ``time.perf_counter``
(a C function; trio's default clock adds a random offset in Python), and the
hot paths read the clock through :data:`CLOCK` (``loop_clock.CLOCK.get()()``,
two C calls), which inside :func:`installed` is that clock's ``current_time``
itself.

``CLOCK`` is a context variable, set by the supervisor's main task for
everything it runs (trio's tasks inherit their spawner's context): it always
gives trio's clock of the run in progress. Outside :func:`installed` (a
component run under another ``trio.run``, as tests do) it is
``trio.current_time``, so deadlines handed to trio stay right.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import trio

#: A reader of trio's current time (see the module docstring).
CLOCK: ContextVar[Callable[[], float]] = ContextVar("loop_clock", default=trio.current_time)


class PerfCounterClock(trio.abc.Clock):
    """``time.perf_counter`` as trio's clock: no offset, no Python on a read."""

    current_time = staticmethod(time.perf_counter)

    def start_clock(self) -> None:
        pass

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return deadline - time.perf_counter()


@contextmanager
def installed() -> Iterator[None]:
    """In a trio task: :data:`CLOCK` reads this run's clock directly, in this
    task and every task it starts from here on."""
    token = CLOCK.set(trio.lowlevel.current_clock().current_time)
    try:
        yield
    finally:
        CLOCK.reset(token)
