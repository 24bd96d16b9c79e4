"""CPU accounting against the kernel's counter, on real processes.

A freshly idle child is checked by reading its counter (cheap while it
sleeps) rather than arming it (an ioctl per idle period); these tests pin the
arithmetic of that check against a child that really sleeps and one that
really burns CPU after its last invocation.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

from supervisor.limits.cpu_account import CpuAccount
from supervisor.limits.cpu_meter import PerfCpuMeter, TickCpuMeter


class _Inv:
    cpu_ns = 0
    cpu_budget_ns = 0
    cpu_settled = True
    finals = 0

    def cpu_final(self) -> None:
        self.cpu_settled = True
        self.finals += 1


@contextmanager
def _child(spin: bool) -> Iterator[int]:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            if spin:
                while True:
                    pass
            signal.pause()
        finally:
            os._exit(0)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _meter(pid: int):
    try:
        return PerfCpuMeter(pid)
    except OSError:
        return TickCpuMeter(pid)


def _served_one(account: CpuAccount) -> None:
    inv = _Inv()
    account.start(inv)
    account.stop(inv)
    assert account.idle and account.idle_since is not None


def test_a_sleeping_idle_child_keeps_its_background_allowance() -> None:
    with _child(spin=False) as pid:
        account = CpuAccount(_meter(pid), background_ns=20_000_000)
        _served_one(account)
        for _ in range(5):
            time.sleep(0.01)
            assert account.check_idle()
        assert account.background > 15_000_000


def test_a_child_burning_cpu_while_idle_spends_its_allowance() -> None:
    with _child(spin=True) as pid:
        account = CpuAccount(_meter(pid), background_ns=20_000_000)
        _served_one(account)
        deadline = time.monotonic() + 10
        while account.check_idle():
            assert time.monotonic() < deadline, "the allowance never ran out"
            time.sleep(0.005)
        assert account.background <= 0


def test_cpu_inside_an_invocation_is_not_the_allowances() -> None:
    with _child(spin=True) as pid:
        account = CpuAccount(_meter(pid), background_ns=1_000_000)
        inv = _Inv()
        account.start(inv)
        time.sleep(0.02)
        assert account.check_idle() and account.background == 1_000_000
        account.stop(inv)
        account.settle()
        assert inv.cpu_ns > 5_000_000, "the invocation was charged what ran during it"


def test_an_ended_invocation_is_charged_at_the_next_read_once() -> None:
    """The read at an invocation's end is deferred (a running child's counter
    costs an IPI to read): the next start charges it, before the new
    invocation joins, and says so exactly once."""
    with _child(spin=True) as pid:
        account = CpuAccount(_meter(pid))
        first, second = _Inv(), _Inv()
        account.start(first)
        time.sleep(0.02)
        account.stop(first)
        assert not first.cpu_settled and first.finals == 0
        assert account.needs_watchdog, "the watchdog must come back for the read"
        account.start(second)
        assert first.cpu_settled and first.finals == 1
        assert first.cpu_ns > 5_000_000 and second.cpu_ns == 0
        time.sleep(0.01)
        account.stop(second)
        account.close()
        assert second.finals == 1 and second.cpu_ns > 2_000_000
        account.settle()
        assert first.finals == 1 and second.finals == 1


def test_nothing_waits_for_a_read_when_no_one_needs_exact_cpu() -> None:
    with _child(spin=False) as pid:
        account = CpuAccount(_meter(pid), exact=False)
        inv = _Inv()
        account.start(inv)
        account.stop(inv)
        assert inv.cpu_settled and not account.settling


def test_a_kill_for_cpu_is_told_from_a_crash_after_the_death() -> None:
    """The kernel kills at the perf counter's overflow; the account reads the
    scheduler's count, which can run behind it (interrupt and steal time).
    After the death, a CPU kill must still be recognised as one."""
    if not isinstance(_meter(os.getpid()), PerfCpuMeter):
        import pytest

        pytest.skip("perf events are not allowed here")
    for killed_by_us in (False, True):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            while True:
                pass
        meter = PerfCpuMeter(pid)
        account = CpuAccount(meter)
        inv = _Inv()
        inv.cpu_budget_ns = 30_000_000
        account.start(inv)  # armed: a precise budget
        if killed_by_us:
            os.kill(pid, signal.SIGKILL)  # a crash, long before the budget
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert account.exceeded() is (not killed_by_us)
        account.close()


def test_a_cpu_kill_is_recognised_when_the_supervisor_was_late_after_arming(monkeypatch) -> None:
    """The period counts from the arming ``ioctl``: if the supervisor is
    descheduled right after it (a busy two-core box) while the child spins on,
    the child may be killed before the supervisor reads the counter again.
    The kill point must come from a reading taken before the ``ioctl``, or
    the death is taken for a crash."""
    if not isinstance(_meter(os.getpid()), PerfCpuMeter):
        import pytest

        pytest.skip("perf events are not allowed here")
    import fcntl

    from supervisor.limits import cpu_meter

    real_ioctl = fcntl.ioctl
    killed: list[int] = []

    def ioctl_then_descheduled(fd, request, arg):
        result = real_ioctl(fd, request, arg)
        if request == cpu_meter._PERF_EVENT_IOC_PERIOD and arg.value != cpu_meter._NEVER:
            _, status = os.waitpid(pid, 0)  # the supervisor runs again only after the kill
            killed.append(status)
        return result

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        while True:
            pass
    meter = PerfCpuMeter(pid)
    monkeypatch.setattr(cpu_meter.fcntl, "ioctl", ioctl_then_descheduled)
    try:
        meter.arm(20_000_000)
    finally:
        monkeypatch.setattr(cpu_meter.fcntl, "ioctl", real_ioctl)
    assert killed and os.WIFSIGNALED(killed[0]) and os.WTERMSIG(killed[0]) == signal.SIGKILL
    assert meter.spent()
    meter.close()


def test_a_closed_account_keeps_none_of_its_invocations() -> None:
    """A child that dies with invocations under way: its account is charged
    and then lets them go (it kept them, and every body and event they held,
    a WebSocket message of 1 MiB each, for as long as the dead child's
    object lived: the supervisor grew by hundreds of MB per round)."""
    import gc
    import weakref

    with _child(spin=False) as pid:
        account = CpuAccount(_meter(pid))
        running = _Inv()
        account.start(running)
        gone = weakref.ref(running)
        account.close()
        del running
        gc.collect()
        assert gone() is None and not account.active and not account.settling
