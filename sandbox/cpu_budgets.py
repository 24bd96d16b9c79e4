"""Each invocation's CPU budget while several share this child.

The supervisor keeps CPU limits with the kernel (supervisor.limits.cpu_account):
a counter of the whole child, armed with what the invocations in flight have
left. With one invocation in flight that is exact. With several, the kernel
cannot tell whose CPU it counts: one invocation could spend the budgets of
the others waiting beside it (a handler burning 150 ms under ``cpuMs: 50``
while three others slept was answered 200), and when the sum ran out the
kill took every invocation of the child, the sleeping ones with it.

So while two or more invocations are in flight and one of them has a
budget, this child times each callback of its event loop and charges it to
the invocation whose context it runs in (the Cloudflare way: a request's
CPU is what its own events run). A callback of an invocation with a budget
runs under a profiling timer set to what it has left (``ITIMER_PROF``: the
process's CPU, which here is the one thread's); when it fires, the
callback is interrupted by :class:`CpuLimitExceeded`, and the invocation
fails with ``exceededCpu``, the others untouched. One alone is not timed
here at all (the kernel's count is its own, and the hot path stays as it
is); its CPU so far is taken when a second one starts.

Once spent, an invocation is over (its failure and its end are sent) and
no callback of it runs again: code that catches :class:`CpuLimitExceeded`
(a bare ``except:`` in a library is enough) carried on burning, untimed,
until the kernel's sum ran out and took every invocation of the child with
it. Its tasks are left suspended, held here so that none is collected
half-way. What is left to the kernel: a single callback that never yields
with SIGPROF ignored (``signal.signal`` is the tenant's own to call).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

from .workers import current_invocation

#: The message the caller hears, as for the kernel's kill (supervisor.lifecycle).
MESSAGE = "Worker exceeded CPU time limit."
#: The shortest timer set: one that is due at once still lets the callback start.
_MIN_TIMER_S = 0.0002


class CpuLimitExceeded(BaseException):
    """Raised in an invocation's code when its CPU budget is spent. A
    BaseException, so that ``except Exception`` in tenant code lets it by."""


class CpuBudgets:
    """The budgets of the invocations in flight, and the CPU each used."""

    __slots__ = ("budgets", "used", "metering", "spent", "_dropped", "_in_flight", "_since", "_timed",
                 "_on_exceeded")

    def __init__(self, on_exceeded: Callable[[int], None]) -> None:
        #: Invocation id: its budget, and what it used, in ns (budgeted ones only).
        self.budgets: dict[int, int] = {}
        self.used: dict[int, int] = {}
        #: Two or more invocations in flight, one of them budgeted, or one
        #: spent: the loop runs each callback through :meth:`run`
        #: (ChildLoop._run_once reads this per callback).
        self.metering = False
        #: Invocations whose budget ran out: their callbacks never run again.
        self.spent: set[int] = set()
        self._dropped: list[Any] = []
        self._in_flight: set[int] = set()
        #: The process's CPU when the lone invocation was last charged.
        self._since = 0
        #: The invocation whose callback runs under the timer (0: none).
        self._timed = 0
        self._on_exceeded = on_exceeded

    def install(self) -> None:
        """Take SIGPROF (in the child, before its first invocation)."""
        signal.signal(signal.SIGPROF, self._on_timer)

    # -- invocations -----------------------------------------------------------
    def started(self, inv: int, budget_ns: int) -> None:
        """Invocation ``inv`` is in flight, with a budget (0: none)."""
        if budget_ns or self.budgets:
            self._checkpoint()
        self._in_flight.add(inv)
        if budget_ns:
            self.budgets[inv] = budget_ns
            self.used[inv] = 0
        self._meter()

    def ended(self, inv: int) -> None:
        """Invocation ``inv`` is over (its ``waitUntil`` work too, or it was spent)."""
        if inv not in self._in_flight:
            return
        self._in_flight.discard(inv)
        self.budgets.pop(inv, None)
        self.used.pop(inv, None)
        was = self.metering
        self._meter()
        if was and len(self._in_flight) <= 1:
            self._since = time.process_time_ns()  # from here the lone one's own

    def spend(self, inv: int) -> None:
        """``inv``'s budget is spent: none of its callbacks runs from now on."""
        self.spent.add(inv)
        self._meter()

    def _meter(self) -> None:
        self.metering = bool(self.spent) or (len(self._in_flight) > 1 and bool(self.budgets))

    def _checkpoint(self) -> None:
        """Charge the lone budgeted invocation what ran since it was last
        charged (while it was alone, every cycle was its own)."""
        now = time.process_time_ns()
        if len(self._in_flight) == 1 and self.used:
            (inv,) = self.used
            self._charge(inv, now - self._since)
        self._since = now

    # -- the loop's callbacks --------------------------------------------------
    def run(self, handle: Any) -> None:
        """Run one callback of the loop (an ``asyncio.Handle``); one of an
        invocation with a budget is timed, charged to it, and runs under its
        timer. Others (an unbudgeted invocation's, the channel's) just run."""
        inv = handle._context.get(current_invocation, 0)
        if inv in self.spent and isinstance(getattr(handle._callback, "__self__", None), asyncio.Task):
            # A step of one of its tasks: dropped (held, so that the task is
            # never collected half-way). Not every callback made in its
            # context: the channel's flush of its very failure is one.
            self._dropped.append(handle)
            return
        budget = self.budgets.get(inv)
        if budget is None:
            handle._run()
            return
        left = budget - self.used[inv]
        if left <= 0:
            self._on_exceeded(inv)  # spent now: its task's step is dropped like any after it
            self.run(handle)
            return
        self._timed = inv
        signal.setitimer(signal.ITIMER_PROF, max(left / 1e9, _MIN_TIMER_S))
        start = time.process_time_ns()
        try:
            handle._run()
        finally:
            spent = time.process_time_ns() - start
            signal.setitimer(signal.ITIMER_PROF, 0)
            self._timed = 0
            self._charge(inv, spent)

    def _charge(self, inv: int, spent: int) -> None:
        used = self.used.get(inv)
        if used is None:
            return
        self.used[inv] = used = used + spent
        if used > self.budgets[inv]:
            self._on_exceeded(inv)

    def _on_timer(self, _signum: int, _frame: Any) -> None:
        if self._timed:
            self._timed = 0
            raise CpuLimitExceeded(MESSAGE)
