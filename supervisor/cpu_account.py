"""Attributing a child's CPU to its invocations, and having budgets enforced.

The kernel counts (:mod:`supervisor.cpu_meter`); this module decides what the
counts mean. Each meter call is a syscall, and on a child running on the other
core an inter-processor interrupt, so the hot path makes as few as it can:

* **Attribution.** The counter is read once per invocation, when it ends; the
  CPU used since the previous read is split evenly among the invocations that
  were running. With one invocation in flight this is exact.
* **Precise enforcement** (budgets under :data:`PRECISE_BELOW_NS`, i.e. the
  limits a dispatcher sets): the counter is armed with the remaining budget of
  everything in flight, and the kernel SIGKILLs the child when it is spent,
  within a fraction of a millisecond, with no help from the supervisor. It is
  re-armed when an invocation starts (the total grows) but not when one ends,
  so enforcement is never early, and at worst late by the unused budget of
  what just finished.
* **Coarse enforcement** (the platform defaults, tens of seconds): the pool's
  watchdog reads busy children every few tens of milliseconds. No syscall on
  the request path at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cpu_meter import CpuMeter, TickCpuMeter

if TYPE_CHECKING:
    from .invocation import Invocation

#: Budgets below this are armed in the kernel; larger ones are watched.
PRECISE_BELOW_NS = 2_000_000_000
#: CPU a script's top-level code may use while loading.
STARTUP_CPU_NS = 1_000_000_000


class CpuAccount:
    __slots__ = ("meter", "active", "_last", "_armed", "deadline", "loading")

    #: Read the counter whenever an invocation ends (set when traces are consumed).
    exact = True

    def __init__(self, meter: CpuMeter) -> None:
        self.meter = meter
        self.active: list["Invocation"] = []
        self._last = 0
        self._armed = False
        self.deadline: int | None = None  # counter value at which the kernel kills
        self.loading = False

    # -- loading ---------------------------------------------------------------
    def start_loading(self) -> None:
        """A script is being loaded: its top-level code gets the startup budget."""
        self.loading = True
        self._last = self._read()
        self._arm_for(STARTUP_CPU_NS)

    def finish_loading(self) -> None:
        """Startup CPU was the load's; invocations are charged from here on."""
        self.loading = False
        self._last = self._read()
        self._rearm()

    # -- invocations -------------------------------------------------------------
    def start(self, inv: "Invocation") -> None:
        self.active.append(inv)
        if not self.loading and (self._armed or 0 < inv.cpu_budget_ns < PRECISE_BELOW_NS):
            self._rearm()

    def stop(self, inv: "Invocation") -> None:
        if inv in self.active:
            # A read here attributes CPU exactly to the invocation that ends;
            # it is needed for traces (cpuTime) and for armed budgets. Without
            # them the watchdog's periodic reads are enough, and the hot path
            # saves a syscall (an IPI when the child is running).
            if not self.loading and (CpuAccount.exact or self._armed):
                self.charge()
            self.active.remove(inv)

    def charge(self) -> None:
        """Split the CPU used since the last read among running invocations."""
        now = self._read()
        delta = now - self._last
        self._last = now
        if delta > 0 and self.active:
            share = delta // len(self.active)
            for inv in self.active:
                inv.cpu_ns += share

    def over_budget(self) -> bool:
        """The watchdog's check for coarse budgets (and the tick fallback)."""
        if not self.active or self.loading:
            return False
        self.charge()
        return any(inv.cpu_budget_ns and inv.cpu_ns >= inv.cpu_budget_ns for inv in self.active)

    def exceeded(self) -> bool:
        """Did the kernel stop the child for CPU? (Its counter passed the deadline.)"""
        if self.deadline is None:
            return False
        try:
            return self.meter.read_ns() >= self.deadline - 200_000
        except OSError:
            return False

    def close(self) -> None:
        if self.active and not self.loading:
            self.charge()
        self.meter.close()

    # -- arming -------------------------------------------------------------------
    def _rearm(self) -> None:
        precise = [inv for inv in self.active if 0 < inv.cpu_budget_ns < PRECISE_BELOW_NS]
        if not precise or len(precise) < len(self.active):
            # Something unlimited-or-coarse is running: the watchdog's job.
            if self._armed:
                self._disarm()
            return
        remaining = sum(max(0, inv.cpu_budget_ns - inv.cpu_ns) for inv in precise)
        self._arm_for(remaining)

    def _arm_for(self, budget_ns: int) -> None:
        try:
            self.meter.arm(budget_ns)
        except OSError:
            return
        self._armed = True
        self.deadline = self._last + budget_ns

    def _disarm(self) -> None:
        try:
            self.meter.disarm()
        except OSError:
            pass
        self._armed = False
        self.deadline = None

    def _read(self) -> int:
        try:
            return self.meter.read_ns()
        except OSError:
            return self._last

    @property
    def needs_watchdog(self) -> bool:
        """Busy with budgets the kernel is not enforcing (or no kernel help at all)."""
        return bool(self.active) and (not self._armed or isinstance(self.meter, TickCpuMeter))
