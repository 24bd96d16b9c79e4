"""Attributing a child's CPU to its invocations, and having budgets enforced.

The kernel counts (:mod:`supervisor.limits.cpu_meter`); this module decides what the
counts mean. Each meter call is a syscall, and on a child running on the other
core an inter-processor interrupt, so the hot path makes as few as it can:

* **Attribution.** The counter is read once per invocation, at the next
  read after it ends; the CPU used since the previous read is split evenly
  among the invocations that were running or had ended since ("settling").
  With one invocation in flight this is exact. The read is not made at the
  end itself because the child is then still running (finishing its turn of
  the event loop), and reading a running task's counter costs an
  inter-processor interrupt: ~12 us of the supervisor's time, and the
  child's, against ~1 us once it sleeps. Measured under wrk at 2 tenants: a
  read at every end made 2 reads per request, 12% of them 10-40 us; deferred,
  0.3 per request. The next read comes when the
  child's next invocation starts (it is usually asleep by then), or from the
  pool's watchdog within :data:`WATCHDOG_PERIOD_S <supervisor.pool.pool>`
  (25 ms), or at its death; the invocation's trace (``cpuTime``) waits for it
  (:meth:`Charged.cpu_final`). Its CPU so includes the rest of its child's
  turn after its end, as it should.
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
* **Outside invocations.** A task the tenant left running after its response
  (``loop.create_task``, not ``waitUntil``) belongs to no invocation. Its CPU
  drains the child's *background allowance*: a small bucket
  (``limits.background_cpu_ms``) that each ended invocation refills by
  :data:`BACKGROUND_REFILL_NS`. While a child is freshly idle the pool's
  watchdog reads its counter every 100 ms (:meth:`CpuAccount.check_idle`: a
  read of a sleeping task's counter is ~1 us, with no inter-processor
  interrupt) and kills it once the allowance is spent. Idle for
  :data:`IDLE_GUARD_AFTER_S`, the counter is armed with what is left, and
  from then on the kernel kills it. Arming and disarming cost ~13 us each
  here (``PERF_EVENT_IOC_PERIOD``), so it is done once per long idle
  period: a tenant that gets a request every few hundred milliseconds never
  pays it.
"""

from __future__ import annotations

import time
from typing import Protocol

from supervisor.limits.cpu_meter import CpuMeter, TickCpuMeter

#: Budgets below this are armed in the kernel; larger ones are watched.
PRECISE_BELOW_NS = 2_000_000_000
#: CPU a script's top-level code may use while loading.
STARTUP_CPU_NS = 1_000_000_000
#: Background allowance given back by each invocation that ends.
BACKGROUND_REFILL_NS = 1_000_000
#: How long a child stays idle before the kernel guards its background allowance.
IDLE_GUARD_AFTER_S = 1.0


class Charged(Protocol):
    """What the account needs of an invocation (``supervisor.pool.invocation``)."""

    #: CPU charged to it so far, and its budget (0: none).
    cpu_ns: int
    cpu_budget_ns: int
    #: False while its last share is still to be read.
    cpu_settled: bool

    def cpu_final(self) -> None:
        """Its last share is charged (called once per ended invocation that waited)."""


class CpuAccount:
    __slots__ = ("meter", "active", "settling", "_last", "_armed", "loading", "background",
                 "_idle_base", "idle_since", "exact", "background_ns")

    def __init__(self, meter: CpuMeter, *, exact: bool = True,
                 background_ns: int = 50_000_000) -> None:
        self.meter = meter
        #: Read the counter whenever an invocation ends. Costs a syscall per
        #: invocation; worth it only when someone reads traces (cpuTime).
        self.exact = exact
        #: Capacity of the background allowance (``limits.background_cpu_ms``).
        self.background_ns = background_ns
        self.active: list[Charged] = []
        #: Ended invocations whose last share the next read charges.
        self.settling: list[Charged] = []
        self._last = 0
        self._armed = False
        self.loading = False
        #: What is left of the background allowance (see the module docstring).
        self.background = background_ns
        #: Counter value when the kernel started guarding the allowance (None: not guarded).
        self._idle_base: int | None = None
        #: time.monotonic() when the child fell idle, until the allowance is guarded.
        self.idle_since: float | None = None

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
        if self.active:
            self._rearm()
        else:
            self.idle_since = time.monotonic()

    # -- invocations -------------------------------------------------------------
    def start(self, inv: Charged) -> int | None:
        """``inv`` runs from now. Returns the CPU budget armed in the kernel
        for what is in flight, if it was armed now (for :mod:`budget_watch`)."""
        self.idle_since = None
        if self.settling:
            self.charge()  # what ran since the last read is theirs, none of it inv's
        if self._idle_base is not None:
            # CPU burnt while guarded is the background allowance's, not this
            # invocation's.
            now = self._read()
            self.background -= max(0, now - self._idle_base)
            self._last = now
            self._idle_base = None
            if self.background <= 0:
                # Spent while idle and not yet stopped by the kernel: stop now.
                self.active.append(inv)
                return self._arm_for(0)
        self.active.append(inv)
        if not self.loading and (self._armed or 0 < inv.cpu_budget_ns < PRECISE_BELOW_NS):
            return self._rearm()
        return None

    def stop(self, inv: Charged) -> None:
        if inv in self.active:
            self.active.remove(inv)
            # Its exact share is needed for traces (cpuTime) and for armed
            # budgets: the next read charges it (see the module docstring).
            # Without them the watchdog's periodic reads are enough.
            if not self.loading and (self.exact or self._armed):
                inv.cpu_settled = False
                self.settling.append(inv)
            if not self.active and not self.loading:
                self.background = min(self.background_ns, self.background + BACKGROUND_REFILL_NS)
                self.idle_since = time.monotonic()

    def rearm(self, inv: Charged) -> int | None:
        """``inv``'s budget changed while it runs: arm what is left of
        everything in flight (as :meth:`start` does). Returns the budget armed,
        if it was."""
        if inv not in self.active or self.loading:
            return None
        return self._rearm()

    def check_idle(self) -> bool:
        """Freshly idle: the CPU used since the last read is the allowance's.
        False if it is spent (the caller kills the child)."""
        if self.active or self.loading or self._idle_base is not None:
            return True
        if self.settling:
            self.charge()  # the rest of the ended invocations' turn
            return self.background > 0
        now = self._read()
        self.background -= max(0, now - self._last)
        self._last = now
        return self.background > 0

    def guard_idle(self) -> bool:
        """Idle for a while: what ran since the last read is the allowance's,
        and the kernel kills the child once the rest of it is spent. False if
        it is spent already (the caller kills the child)."""
        self.idle_since = None
        if self.active or self.loading or self._idle_base is not None:
            return True
        if self.settling:
            self.charge()  # that read is the ended invocations'; nothing since is the allowance's
            now = self._last
        else:
            now = self._read()
            self.background -= max(0, now - self._last)
            self._last = now
        if self.background <= 0:
            return False
        self._idle_base = now
        self._arm_for(self.background)
        return True

    def charge(self) -> None:
        """Split the CPU used since the last read among the invocations
        running or settling; the settling ones are then final."""
        now = self._read()
        delta = now - self._last
        self._last = now
        settling = self.settling
        count = len(self.active) + len(settling)
        if delta > 0 and count:
            share = delta // count
            for inv in self.active:
                inv.cpu_ns += share
            for inv in settling:
                inv.cpu_ns += share
        if settling:
            self.settling = []  # before the callbacks: they may start another invocation
            for inv in settling:
                inv.cpu_final()

    def settle(self) -> None:
        """Charge ended invocations their last share, if any wait (the watchdog's call)."""
        if self.settling:
            self.charge()

    def over_budget(self) -> bool:
        """The watchdog's check for coarse budgets (and the tick fallback)."""
        if self.loading:
            return False
        if not self.active:
            return isinstance(self.meter, TickCpuMeter) and self.meter.over_budget()
        self.charge()
        return any(inv.cpu_budget_ns and inv.cpu_ns >= inv.cpu_budget_ns for inv in self.active)

    def budget_left_ns(self) -> int | None:
        """CPU left before what is in flight spends its armed budget (None:
        nothing armed is in flight). Asked by :mod:`budget_watch`."""
        if not self._armed or not self.active:
            return None
        return self.meter.budget_left_ns()

    def exceeded(self) -> bool:
        """Did the kernel stop the child for CPU? (Its counter passed the deadline.)"""
        if not self._armed:
            return False
        try:
            return self.meter.spent()
        except OSError:
            return False

    def close(self) -> None:
        if (self.active or self.settling) and not self.loading:
            self.charge()
        # The child is gone: its invocations (and the bodies and events they
        # hold, a WebSocket message of 1 MiB each) are no longer this account's.
        self.active.clear()
        self.settling.clear()
        self.meter.close()

    # -- arming -------------------------------------------------------------------
    def _rearm(self) -> int | None:
        precise = [inv for inv in self.active if 0 < inv.cpu_budget_ns < PRECISE_BELOW_NS]
        if not precise or len(precise) < len(self.active):
            # Something unlimited-or-coarse is running: the watchdog's job.
            if self._armed:
                self._disarm()
            return None
        remaining = sum(max(0, inv.cpu_budget_ns - inv.cpu_ns) for inv in precise)
        return self._arm_for(remaining)

    def _arm_for(self, budget_ns: int) -> int | None:
        try:
            self.meter.arm(budget_ns)
        except OSError:
            return None
        self._armed = True
        return budget_ns

    def _disarm(self) -> None:
        try:
            self.meter.disarm()
        except OSError:
            pass
        self._armed = False

    def _read(self) -> int:
        try:
            return self.meter.read_ns()
        except OSError:
            return self._last

    @property
    def idle(self) -> bool:
        """No invocation runs (and no script is loading)."""
        return not self.active and not self.loading

    @property
    def needs_watchdog(self) -> bool:
        """Busy with budgets the kernel is not enforcing (or no kernel help at
        all), or ended invocations wait for a read."""
        if self.settling:
            return True
        if isinstance(self.meter, TickCpuMeter):
            return bool(self.active) or self._idle_base is not None or self.idle_since is not None
        return bool(self.active) and not self._armed
