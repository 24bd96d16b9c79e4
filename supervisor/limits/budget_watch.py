"""Seeing a CPU budget run out when it does, not when the child's exit ends.

The kernel kills a child the moment its armed budget is spent (see
:mod:`supervisor.limits.cpu_meter`), but the supervisor used to learn of it
only at the child's socket EOF, which comes after the kernel has torn down
the process's memory: 4-6 ms later here, all of it added to the time a
dispatcher waits for its ``exceededCpu``.

A single-threaded child cannot spend CPU faster than the clock runs, so a
budget of N ms armed now cannot be spent before N ms of wall time. This
watch keeps, per armed child, that earliest moment, sleeps until the first
of them, and then asks the meter what is left: nothing, and the child is
killed on the supervisor's side too, and its callers are answered
``exceededCpu`` at that moment (``ChildProcess.kill``), before its death is
seen; something (the child
slept or waited for a CPU), and it looks again when that much more wall
time has passed. With the tick meter (no perf events) this is also what
enforces precise budgets on time, instead of the watchdog's 25 ms poll.

One task, a dict and a timerfd: arming costs a dict store (and a
``timerfd_settime`` when it is the new earliest), and the task wakes once
per expiry that is still armed, never per request. The timer is a timerfd
rather than a trio deadline because trio's deadlines reach the kernel as an
``epoll_wait`` timeout in whole milliseconds, rounded up: up to a
millisecond late, in a figure whose goal is two.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import trio

#: Looked at this long after the earliest possible expiry, so that the
#: kernel's own kill (at the exact count) has normally happened already.
MARGIN_S = 0.0001


class Metered(Protocol):
    def budget_left_ns(self) -> int | None:
        """CPU left before the armed budget is spent (None: not armed any more)."""


T = TypeVar("T")


class BudgetWatch(Generic[T]):
    """Earliest expiries of armed budgets, checked as they come."""

    def __init__(self, meter_of: Callable[[T], Metered | None], on_spent: Callable[[T], None]) -> None:
        self._meter_of = meter_of
        self._on_spent = on_spent
        #: key -> trio time before which its budget cannot be spent.
        self._due: dict[T, float] = {}
        #: When the timer goes off (inf: disarmed).
        self._next = math.inf
        self._timer: _TimerFd | None = None

    def __len__(self) -> int:
        return len(self._due)

    def arm(self, key: T, budget_ns: int) -> None:
        """``key`` was armed with ``budget_ns`` of CPU, from now."""
        now = trio.current_time()
        due = now + budget_ns / 1e9 + MARGIN_S
        self._due[key] = due
        if due < self._next and self._timer is not None:
            self._next = due
            self._timer.set(due - now)

    def disarm(self, key: T) -> None:
        """Nothing of ``key``'s is in flight any more (or it is gone)."""
        self._due.pop(key, None)

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        with _TimerFd() as timer:
            self._timer = timer
            try:
                self._plan(trio.current_time())
                task_status.started()
                while True:
                    await trio.lowlevel.wait_readable(timer.fd)
                    timer.clear()
                    now = trio.current_time()
                    self._check(now)
                    self._plan(now)
            finally:
                self._timer = None

    def _plan(self, now: float) -> None:
        """Set the timer for the earliest expiry (which may be past: at once)."""
        assert self._timer is not None
        self._next = min(self._due.values(), default=math.inf)
        if self._next == math.inf:
            self._timer.set(None)
        else:
            self._timer.set(max(self._next - now, 1e-6))

    def _check(self, now: float) -> None:
        for key, due in list(self._due.items()):
            if due > now:
                continue
            meter = self._meter_of(key)
            try:
                left = None if meter is None else meter.budget_left_ns()
            except OSError:
                left = None
            if left is None:
                del self._due[key]
            elif left <= 0:
                del self._due[key]
                self._on_spent(key)
            else:
                self._due[key] = now + left / 1e9 + MARGIN_S


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_libc = ctypes.CDLL(None, use_errno=True)


class _TimerFd:
    """A one-shot CLOCK_MONOTONIC timerfd (``os.timerfd_*`` is Python 3.13+)."""

    def __init__(self) -> None:
        fd = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.fd = fd
        self._spec = _Itimerspec()

    def __enter__(self) -> _TimerFd:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            trio.lowlevel.notify_closing(self.fd)
            os.close(self.fd)
            self.fd = -1

    def set(self, after_s: float | None) -> None:
        """Go off ``after_s`` seconds from now (None: never)."""
        value = self._spec.it_value
        if after_s is None:
            value.tv_sec = value.tv_nsec = 0
        else:
            ns = max(1, int(after_s * 1e9))
            value.tv_sec, value.tv_nsec = divmod(ns, 1_000_000_000)
        if _libc.timerfd_settime(self.fd, 0, ctypes.byref(self._spec), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def clear(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass
