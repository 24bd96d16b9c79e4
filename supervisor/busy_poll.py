"""Polling a little before the supervisor's event loop sleeps.

A request crosses processes five times (client, supervisor, dispatcher,
tenant, and back), and every crossing that finds the receiving core asleep
pays for waking it: on this host (a VM that halts idle vCPUs at once) that is
tens of microseconds of wake-up delay, and the woken code then runs with cold
caches. One request at a time, the supervisor slept four times per request
and the round trip was ~0.9 ms, of which a third went to those wake-ups:
with the cores kept busy by idle-priority spinners it was ~0.6 ms.

So before trio blocks in ``epoll_wait``, this instrument polls trio's epoll
instance without blocking for up to ``busy_poll_us``. The answer the
supervisor waits for (a child's reply to the frame it just sent, the client's
next request on a keep-alive connection) usually comes within that time, and
then the supervisor's core never went to sleep. This is the kernel's
``SO_BUSY_POLL`` and the guest's halt-polling, done where the supervisor
knows it is waiting for something imminent.

The poll yields its core after each look (``sched_yield``), as the kernel's
own busy poll stops as soon as another task needs the CPU: this host puts a
woken task on the core of the task that woke it, so the child the
supervisor has just sent a frame to often waits on the supervisor's own
core, and children run under ``SCHED_BATCH``, which never preempts on
wake-up. A poll that kept the core held that child (and so the very answer
it polled for) off it until the scheduler's slice ran out: a peer woken
every millisecond on that core waited ~3 ms each time, and one request at a
time with 2 ms between them took 1.45-1.64 ms at the median instead of
0.70-1.01 ms with the yield (four A/B pairs on one box; back to back, and
throughput at one and 300 tenants, unchanged). With nothing else runnable
the yield returns at once.

When nothing came within the window, ``idle`` is called before the loop
sleeps: frames that were to travel with a child's next ones
(``ChildProcess.defer``) go then, since no next one is coming soon. The
instrument is installed for that even with polling off.

What it costs: at most ``busy_poll_us`` of the supervisor's CPU each time its
loop would sleep. Under load the loop rarely sleeps, so it rarely polls; an
idle server wakes a few times a second for its timers, a few hundred
microseconds a second at most. Tenants never pay: the supervisor's time is
not any invocation's ``cpuTime``, and children never poll. 0 turns it off.

trio has no public way to reach its epoll instance; when the private
attribute is missing (another trio, another I/O backend), polling is off and
a log line says so.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

import trio

from supervisor.log import warn


class BusyPoll(trio.abc.Instrument):
    """The instrument: install with ``trio.run(..., instruments=[BusyPoll(us)])``."""

    def __init__(self, busy_poll_us: int, poke: Callable[[], None] | None = None,
                 idle: Callable[[], None] | None = None) -> None:
        self.window_s = max(0, busy_poll_us) / 1e6
        #: Called each time the loop is about to wait: keeps the supervisor's
        #: cores awake for the answer (supervisor.core_keeper).
        self._poke = poke
        #: Called when nothing came within the window and the loop sleeps:
        #: what could wait for a busier moment cannot any more (Pool.send_deferred).
        self._idle = idle
        self._poll: select.poll | None = None
        self._ready = False

    def _setup(self) -> None:
        self._ready = True
        try:
            # trio's EpollIOManager keeps its instance as ``_epoll``; an epoll
            # fd is itself readable while any of its registrations is ready.
            epoll = _trio_epoll()
        except (AttributeError, RuntimeError) as exc:
            warn("busy_poll.unavailable", reason=f"trio's epoll instance is not reachable ({exc})")
            return
        poll = select.poll()
        poll.register(epoll.fileno(), select.POLLIN)
        self._poll = poll

    def before_io_wait(self, timeout: float) -> None:
        if timeout <= 0:
            return
        if self._poke is not None:
            self._poke()
        if self.window_s > 0 and not self._ready:
            self._setup()
        poll = self._poll
        if self.window_s > 0 and poll is not None:
            end = time.perf_counter() + min(self.window_s, timeout)
            while True:
                if poll.poll(0):
                    return
                if time.perf_counter() >= end:
                    break
                os.sched_yield()  # a task woken onto this core runs now (module docstring)
        if self._idle is not None:
            try:
                self._idle()
            except Exception as exc:  # noqa: BLE001 - trio drops an instrument that raises
                warn("busy_poll.idle_failed", reason=f"{type(exc).__name__}: {exc}")


def _trio_epoll() -> select.epoll:
    runner = trio._core._run.GLOBAL_RUN_CONTEXT.runner  # noqa: SLF001 - see the module docstring
    epoll = runner.io_manager._epoll  # noqa: SLF001
    if not isinstance(epoll, select.epoll):
        raise AttributeError(f"trio's I/O manager is {type(runner.io_manager).__name__}")
    return epoll
