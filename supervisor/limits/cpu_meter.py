"""Per-child CPU accounting and enforcement, by the kernel.

The child is never asked how much CPU it used. The supervisor opens a
``perf_event`` task-clock counter on the child's pid and

* reads it (8 bytes, nanoseconds of CPU the child ran) as invocations end,
  which gives ``cpuTime`` exact to the microsecond;
* arms it: ``PERF_EVENT_IOC_PERIOD`` sets the next overflow N nanoseconds of
  child CPU time from now, and the fd is set up (``O_ASYNC`` + ``F_SETOWN``
  the child + ``F_SETSIG SIGKILL``) so that the kernel delivers the overflow
  to the child as SIGKILL. A tight loop is stopped within about half a
  millisecond of its budget, without the supervisor having to be scheduled.

Where perf events are not allowed (``perf_event_paranoid`` and no
CAP_PERFMON, some containers), :class:`TickCpuMeter` reads
``/proc/PID/schedstat`` instead and the pool's watchdog polls armed children;
its precision is the scheduler tick (4-10 ms here).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import struct

_libc = ctypes.CDLL(None, use_errno=True)

_SYS_PERF_EVENT_OPEN = 298  # x86_64
_PERF_TYPE_SOFTWARE = 1
_PERF_COUNT_SW_TASK_CLOCK = 1
_PERF_FLAG_FD_CLOEXEC = 8
_PERF_EVENT_IOC_PERIOD = 0x40082404  # _IOW('$', 4, u64)
_F_SETSIG = 10
_F_SETOWN_EX = 15
_F_OWNER_PID = 1
_ATTR_SIZE = 128
#: An overflow that never comes: ~292 years of CPU.
_NEVER = (1 << 63) - 1
#: How far short of its armed budget a dead child may be and still have been
#: killed for it (the overflow timer's own granularity).
SPENT_SLACK_NS = 200_000


class _PerfEventAttr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
        ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32),
        ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64),
        ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16),
        ("reserved", ctypes.c_uint16),
        ("aux_sample_size", ctypes.c_uint32),
        ("reserved2", ctypes.c_uint32),
        ("sig_data", ctypes.c_uint64),
        ("config3", ctypes.c_uint64),
    ]


_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class CpuMeter:
    """Interface of both meters."""

    precise = False

    def read_ns(self) -> int:
        raise NotImplementedError

    def arm(self, budget_ns: int) -> None:
        """Kill the child after ``budget_ns`` more nanoseconds of its CPU."""

    def disarm(self) -> None:
        """No enforcement until the next :meth:`arm`."""

    def budget_left_ns(self) -> int | None:
        """CPU left of what it was last armed with (None: not armed)."""
        return None

    def spent(self) -> bool:
        """Did the child use up what it was last armed with (within
        :data:`SPENT_SLACK_NS`)? Asked once it is dead, to tell a CPU kill
        from a crash."""
        return False

    def close(self) -> None:
        """Release kernel resources."""


class PerfCpuMeter(CpuMeter):
    """task-clock counter whose overflow the kernel turns into SIGKILL."""

    precise = True

    def __init__(self, pid: int) -> None:
        attr = _PerfEventAttr()
        attr.type = _PERF_TYPE_SOFTWARE
        attr.size = _ATTR_SIZE
        attr.config = _PERF_COUNT_SW_TASK_CLOCK
        attr.sample_period = _NEVER
        attr.wakeup_events = 1
        fd = _syscall(_SYS_PERF_EVENT_OPEN, ctypes.byref(attr), pid, -1, -1, _PERF_FLAG_FD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"perf_event_open(task-clock, pid {pid}): {os.strerror(err)}")
        self.fd = int(fd)
        try:
            fcntl.fcntl(self.fd, _F_SETSIG, signal.SIGKILL)
            owner = struct.pack("ii", _F_OWNER_PID, pid)
            fcntl.fcntl(self.fd, _F_SETOWN_EX, owner)
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_ASYNC)
        except OSError:
            os.close(self.fd)
            raise
        self._period = ctypes.c_uint64(_NEVER)
        #: The counter value at which the kernel kills, while armed.
        self._kill_at: int | None = None

    def read_ns(self) -> int:
        # Reading a running child's counter costs an inter-processor
        # interrupt (~10 us here), yet /proc/PID/schedstat (~1.3 us) will not
        # do: the scheduler's count of a running task is brought up to date
        # only at ticks and context switches (up to 4 ms behind here), and CPU
        # read late at an invocation's end would be billed to whoever reads
        # next, such as the background allowance. The process CPU clock
        # (clock_gettime on the pid) reads that same stale count.
        return int.from_bytes(os.read(self.fd, 8), "little")

    def arm(self, budget_ns: int) -> None:
        # The kernel's minimum hrtimer period for software events is 10 us.
        self._period.value = max(10_000, int(budget_ns))
        # The new period counts from the ioctl, so the kill point (for spent()
        # and budget_left_ns()) is taken from a reading *before* it: one taken
        # after could land past the kill itself if the supervisor is
        # descheduled in between while the child spins on, and the CPU kill
        # would then be taken for a crash.
        before = self.read_ns()
        fcntl.ioctl(self.fd, _PERF_EVENT_IOC_PERIOD, self._period)
        self._kill_at = before + self._period.value

    def disarm(self) -> None:
        self._period.value = _NEVER
        fcntl.ioctl(self.fd, _PERF_EVENT_IOC_PERIOD, self._period)
        self._kill_at = None

    def budget_left_ns(self) -> int | None:
        return None if self._kill_at is None else self._kill_at - self.read_ns()

    def spent(self) -> bool:
        return self._kill_at is not None and self.read_ns() >= self._kill_at - SPENT_SLACK_NS

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TickCpuMeter(CpuMeter):
    """Fallback: ``/proc/PID/schedstat``; enforcement is the watchdog's job."""

    def __init__(self, pid: int) -> None:
        self._path = f"/proc/{pid}/schedstat"
        self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        self.deadline_ns: int | None = None

    def read_ns(self) -> int:
        try:
            return int(os.pread(self._fd, 128, 0).split()[0])
        except (OSError, IndexError, ValueError):
            return 0

    def arm(self, budget_ns: int) -> None:
        self.deadline_ns = self.read_ns() + int(budget_ns)

    def disarm(self) -> None:
        self.deadline_ns = None

    def over_budget(self) -> bool:
        return self.deadline_ns is not None and self.read_ns() >= self.deadline_ns

    def budget_left_ns(self) -> int | None:
        return None if self.deadline_ns is None else self.deadline_ns - self.read_ns()

    def spent(self) -> bool:
        return self.deadline_ns is not None and self.read_ns() >= self.deadline_ns - SPENT_SLACK_NS

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class MeterFactory:
    """Opens each child's meter: the precise one while the host allows it.

    One per pool (not a module global): once ``perf_event_open`` failed for
    the first child it is not tried again for the others, and a test or a
    second pool in the same process starts with a clean slate.
    """

    def __init__(self, allow_perf: bool = True) -> None:
        #: None: not tried yet; False: refused (every child gets the tick meter).
        self.perf_works: bool | None = None if allow_perf else False

    def open(self, pid: int) -> CpuMeter:
        """The precise meter when the host allows it, else the tick fallback."""
        if self.perf_works is not False:
            try:
                meter = PerfCpuMeter(pid)
                self.perf_works = True
                return meter
            except OSError:
                if self.perf_works is None:
                    self.perf_works = False
        return TickCpuMeter(pid)
