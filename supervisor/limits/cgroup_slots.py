"""Memory cgroups made ahead of the children that join them themselves.

Why: putting a child into its cgroup from here (writing its pid to
``cgroup.procs``) takes the kernel's global threadgroup lock for writing, an
RCU grace period (~8 ms on this host) spent holding the cgroup mutex. In a
storm of cold starts every other cgroup operation (the next child's mkdir,
its limit, its join, a dead child's rmdir) queued behind those joins: a new
spare waited 17-22 ms on average for its cgroup, p90 ~25 ms, and requests
waited for spares (measured, ``corral_child_limits_seconds``). A thread that
moves *itself* (cgroup v1's ``tasks``, pid 0) skips that lock: ~35 us.

So the supervisor keeps a reserve of *slots*, cgroups made and limited off
the request path (a worker thread refills it), each with its join file open.
A Spawn carries up to one slot per child (the files as SCM_RIGHTS); each
child writes ``0`` to its file before anything else (sandbox.jail); its
Spawned names its slot, which is renamed ``child-PID`` (as the supervisor's
own joins name them). Whether it joined is checked when its Hello is read,
before any script reaches it: a child found outside its slot is killed, and
slots stop (said once, loudly); children then join as before.

Only cgroup v1 here: in v2 a single thread cannot move itself outside a
threaded subtree, and the process move takes the same global lock. v2's
answer is ``clone3(CLONE_INTO_CGROUP)`` in the zygote, not built yet.

Who may hold a join file: the base zygote (no third-party code) and package
zygotes, whose wheels' import-time code could write other pids of its own
pid namespace into the slot, i.e. its own children, which it forked and so
controls already; into a cgroup at the pool's cap, never above it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import trio

from supervisor.log import warn

#: Slots kept ready. A storm asks for ~2 spares at a time, a busy start-up
#: for a few dozen; each empty memory cgroup costs the kernel a few pages.
RESERVE = 32
#: A slot handed to a zygote whose child never came (the zygote died or was
#: rotated away first) is removed after this long.
LOST_AFTER_S = 60.0


class SlotChild(Protocol):
    """What a slot's cgroup is, as the memory backend holds it."""

    pid: int
    path: str

    def setup(self, mb: int) -> None: ...

    def release(self) -> bool: ...

    def kill_all(self) -> None: ...


class _Slot:
    __slots__ = ("number", "child", "fd", "handed_at")

    def __init__(self, number: int, child: SlotChild, fd: int) -> None:
        self.number = number
        self.child = child
        self.fd = fd  # the join file, open until it is sent
        self.handed_at = 0.0


class SlotBatch:
    """Slots taken for one Spawn: ``numbers`` and ``fds`` in the same order.
    The caller sends them, then says :meth:`sent` (or :meth:`unsent`)."""

    __slots__ = ("numbers", "fds", "_owner", "_slots")

    def __init__(self, owner: CgroupSlots | None, slots: list[_Slot]) -> None:
        self._owner = owner
        self._slots = slots
        self.numbers = tuple(slot.number for slot in slots)
        self.fds = [slot.fd for slot in slots]

    def sent(self) -> None:
        """The zygote holds its own copies now: ours are closed."""
        for slot in self._slots:
            os.close(slot.fd)
            slot.fd = -1

    def unsent(self) -> None:
        """The Spawn did not go: the slots are ready again."""
        if self._owner is not None:
            self._owner.give_back(self._slots)


NO_SLOTS = SlotBatch(None, [])


class CgroupSlots:
    """The reserve, and the slots handed out whose child did not come yet.

    :meth:`fill` runs in a worker thread, everything else on the event loop:
    the lock keeps the reserve consistent between them.
    """

    def __init__(self, parent: str, join_file: str, make: Callable[[str], SlotChild],
                 pool_mb: int, reserve: int = RESERVE) -> None:
        self.parent = parent
        self.join_file = join_file
        self._make = make
        self.pool_mb = pool_mb
        self.reserve = reserve
        self._ready: deque[_Slot] = deque()
        self._handed: dict[int, _Slot] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._low = trio.Event()
        #: Why children no longer join themselves ("": they do).
        self.stopped = ""

    # -- the reserve -------------------------------------------------------
    async def keep_filled(self) -> None:
        """Refill the reserve in a worker thread whenever it runs low (a task of the pool's)."""
        while not self.stopped:
            if len(self._ready) < self.reserve:
                failure = await trio.to_thread.run_sync(self.fill)
                if failure:
                    self.stop(failure)
                    return
            await self._low.wait()
            self._low = trio.Event()

    def fill(self) -> str:
        """Make slots until the reserve is full (blocking: cgroupfs writes);
        why it could not ("": it did)."""
        while len(self._ready) < self.reserve and not self.stopped:
            self._next += 1
            path = os.path.join(self.parent, f"slot-{self._next}")
            try:
                os.mkdir(path)
                child = self._make(path)
                try:
                    child.setup(self.pool_mb)
                    fd = os.open(os.path.join(path, self.join_file), os.O_WRONLY | os.O_CLOEXEC)
                except OSError:
                    child.release()
                    raise
            except OSError as exc:
                return f"cannot make {path}: {exc}"
            with self._lock:
                self._ready.append(_Slot(self._next, child, fd))
        return ""

    def take(self, count: int) -> SlotBatch:
        """Up to ``count`` ready slots for one Spawn (none once stopped)."""
        if count <= 0 or not self._ready:
            return NO_SLOTS
        now = time.monotonic()
        taken: list[_Slot] = []
        with self._lock:
            while self._ready and len(taken) < count:
                slot = self._ready.popleft()
                slot.handed_at = now
                self._handed[slot.number] = slot
                taken.append(slot)
        if len(self._ready) < self.reserve // 2:
            self._low.set()
        return SlotBatch(self, taken)

    def give_back(self, slots: list[_Slot]) -> None:
        with self._lock:
            for slot in reversed(slots):
                del self._handed[slot.number]
                self._ready.appendleft(slot)

    # -- children ----------------------------------------------------------
    def claim(self, number: int, pid: int) -> SlotChild | None:
        """The slot child ``pid`` was given, renamed ``child-PID``; None if no
        such slot is out (then the caller joins the child itself)."""
        with self._lock:
            slot = self._handed.pop(number, None)
        if slot is None:
            return None
        path = os.path.join(self.parent, f"child-{pid}")
        try:
            os.rename(slot.child.path, path)
        except OSError:  # a pid reused before its old cgroup went
            try:
                os.rmdir(path)
                os.rename(slot.child.path, path)
            except OSError:
                path = slot.child.path  # keeps its slot name; still the child's own
        slot.child.pid = pid
        slot.child.path = path
        return slot.child

    def joined(self, pid: int, path: str) -> bool:
        """Did child ``pid`` join ``path``? Read from the cgroup's side
        (its ``cgroup.procs``; /proc/PID/cgroup would take the cgroup mutex)."""
        try:
            with open(os.path.join(path, "cgroup.procs"), "rb") as f:
                return str(pid).encode() in f.read().split()
        except OSError:
            return False

    def stop(self, reason: str) -> None:
        """Children join as before from now on; said once. On the event loop."""
        if self.stopped:
            return
        self.stopped = reason
        self._low.set()
        self.close_ready()
        warn("memory.slots_stopped", reason=reason,
             consequence="each new child is put into its cgroup by the supervisor (slower in storms)")

    # -- clean-up ----------------------------------------------------------
    def sweep(self) -> None:
        """Remove slots handed out whose child never came (the pool's periodic
        scan). A child forked into one but never announced has no supervisor:
        it is killed, and its slot goes at a later scan, once it is empty."""
        cutoff = time.monotonic() - LOST_AFTER_S
        with self._lock:
            lost = [slot for slot in self._handed.values() if slot.handed_at < cutoff]
        for slot in lost:
            if _removed(slot):
                with self._lock:
                    self._handed.pop(slot.number, None)
            else:
                slot.child.kill_all()

    def close_ready(self) -> None:
        """Remove the reserve (its slots were never handed out: empty)."""
        with self._lock:
            ready = list(self._ready)
            self._ready.clear()
        for slot in ready:
            os.close(slot.fd)
            slot.fd = -1
            _removed(slot)

    def close(self) -> list[SlotChild]:
        """At shutdown: the reserve goes; the slots still handed out are the
        caller's to empty and remove, with its children's cgroups."""
        self.close_ready()
        with self._lock:
            handed = [slot.child for slot in self._handed.values()]
            self._handed.clear()
        return handed


def _removed(slot: _Slot) -> bool:
    """Remove an unclaimed slot's cgroup; False while a process is still in it."""
    try:
        return slot.child.release()
    except OSError as exc:
        warn("memory.slot_left", path=slot.child.path, reason=str(exc))
        return True  # nothing more to try
