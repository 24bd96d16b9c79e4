"""Per-child memory limits the tenant cannot undo.

A sandboxed child may not change its own limits (the seccomp filter refuses
``setrlimit`` and any ``prlimit64`` that writes), so whatever bounds its
memory is set from outside, by the supervisor, with one of these backends,
chosen once at start (``[pool] memory_enforcement``) and logged:

``cgroup2`` / ``cgroup1``
    Each child gets a memory cgroup of its own under the supervisor's
    (delegated) cgroup, joined before the child reads its first frame. The
    limit counts memory the child really holds: pages it touched, including
    the copies it made of pages it shared with the zygote; pages still
    shared copy-on-write stay charged to the zygote. Past the limit the
    kernel OOM-kills the child, and the supervisor reads the cgroup's
    ``oom_kill`` counter to report ``exceededMemory``. The jail's
    RLIMIT_AS stays, as a generous backstop against absurd reservations.
``prlimit``
    The supervisor sets the child's RLIMIT_AS (address space, not memory)
    with ``prlimit()``: soft and hard where it holds CAP_SYS_RESOURCE (so it
    may raise them again for the next invocation), the soft limit alone
    otherwise (children then share its uid; the filter keeps the tenant
    from raising it). Past the limit an allocation raises MemoryError.
``none``
    Only the jail's RLIMIT_AS, set at the pool's cap: a lower per-invocation
    ``memoryMb`` cannot be enforced, which is said once, loudly, at start.

Nothing here is on the hot path unless an invocation asks for a limit its
child does not have already (the caller caches the child's current value).
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import time
from collections.abc import Callable
from typing import Protocol

from supervisor.limits.cgroup_slots import NO_SLOTS, CgroupSlots, SlotBatch
from supervisor.log import log, warn

MB = 1024 * 1024
#: With a cgroup, RLIMIT_AS is only a backstop: this many times the pool's
#: cap, and never less than :data:`MIN_BACKSTOP_MB`, above the zygote's own
#: mapping. A CPython heap maps more than it touches (pymalloc arenas,
#: glibc's mmap'd blocks and free lists, an over-allocated list or buffer),
#: but measured on real workloads by well under 2x; 4x never refuses code
#: whose real memory fits the cgroup, and still turns ``b"x" * 10**10`` into
#: a clean MemoryError instead of handing it to the OOM killer.
BACKSTOP_MULTIPLE = 4
MIN_BACKSTOP_MB = 512
#: Without a cgroup, RLIMIT_AS is the limit: the pool's cap plus this slack
#: for what the child maps beyond the zygote before tenant code runs.
RLIMIT_SLACK_MB = 64
#: How long shutdown waits for a killed child to leave its cgroup.
DRAIN_S = 2.0

_CAP_SYS_RESOURCE = 24


class MemoryEnforcementError(RuntimeError):
    """The configured backend cannot work on this host; the message says why."""


class ChildMemory(Protocol):
    """One child's limit, as a backend holds it."""

    #: The limit (MB) already in force once attached, if the backend knows it.
    initial_mb: int | None
    #: Who put the child into its cgroup: "itself" (a slot), "supervisor", "" (no cgroup).
    joined_by: str

    def ready(self) -> bool:
        """The child finished its jail and is idle: its baseline, if any.
        False: it is not under its limit (it must go)."""

    def set_limit(self, mb: int) -> bool:
        """Bound the child to ``mb``; False if it already holds more (it must go)."""

    def oom_killed(self) -> bool:
        """Did the kernel kill the child for exceeding its limit?"""

    def peak_bytes(self) -> int | None:
        """Most memory the child was charged for, where the backend knows."""

    def release(self) -> bool:
        """Remove what the child had; False while the kernel still counts it."""


class Enforcer:
    """A backend: chosen once, attaches every child."""

    name = "none"
    #: What the per-invocation limit counts, for the start-up log line.
    counts = "nothing below the pool cap"

    def __init__(self, pool_mb: int) -> None:
        self.pool_mb = pool_mb
        self._pending: dict[int, ChildMemory] = {}

    def jail_address_space_mb(self) -> int:
        """RLIMIT_AS the jail sets, in MB above the zygote's own mapping (0: none)."""
        return self.pool_mb + RLIMIT_SLACK_MB if self.pool_mb else 0

    def attach(self, pid: int) -> ChildMemory:
        """Put a freshly forked child under its limit (before any tenant code)."""
        return _Unlimited()

    def claim(self, pid: int, slot: int) -> ChildMemory | None:
        """The limit of a child that joined cgroup slot ``slot`` itself (checked
        at its Hello: see ChildMemory.ready); None if there is no such slot,
        and the child must be attached."""
        return None

    def take_slots(self, count: int) -> SlotBatch:
        """Cgroup slots for the next ``count`` children (see supervisor.limits.cgroup_slots)."""
        return NO_SLOTS

    async def keep_slots(self) -> None:
        """Keep the slots' reserve filled (a task of the pool's; nothing here)."""

    def forget(self, pid: int, child: ChildMemory) -> None:
        """The child is gone: release its limit now, or once it is reaped."""
        try:
            done = child.release()
        except OSError as exc:
            warn("memory.release_failed", pid=pid, reason=str(exc))
            return
        if not done:
            self._pending[pid] = child

    def reaped(self, pid: int) -> None:
        """The zygote reaped ``pid``: nothing of it is left in the kernel."""
        child = self._pending.pop(pid, None)
        if child is not None:
            self.forget(pid, child)
            if pid in self._pending:
                warn("memory.release_pending", pid=pid, reason="cgroup still populated after reap")

    def retry_pending(self) -> None:
        """Release what still waits for a reap no zygote will report (the pool's
        periodic scan calls this). A child that outlives its zygote (rotated
        away with spares alive, or dead) is reaped by init, and nothing tells
        :meth:`reaped`: about half the spares a rotation killed left their
        cgroups behind for the server's life before this (seen in cgroupfs)."""
        for pid, child in list(self._pending.items()):
            try:
                done = child.release()
            except OSError:
                continue  # forget() said why when it first failed
            if done:
                del self._pending[pid]

    def close(self) -> None:
        """At shutdown, after every child was killed."""

    def describe(self) -> dict:
        return {"backend": self.name, "counts": self.counts, "pool_mb": self.pool_mb,
                "jail_rlimit_as_mb": self.jail_address_space_mb()}


class _Unlimited:
    initial_mb: int | None = None
    joined_by = ""

    def ready(self) -> bool:
        return True

    def set_limit(self, mb: int) -> bool:
        return True

    def oom_killed(self) -> bool:
        return False

    def peak_bytes(self) -> int | None:
        return None

    def release(self) -> bool:
        return True


# ---------------------------------------------------------------------------
# prlimit
# ---------------------------------------------------------------------------


class PrlimitEnforcer(Enforcer):
    name = "prlimit"
    counts = "address space (RLIMIT_AS), above the idle child's"

    def __init__(self, pool_mb: int, privileged: bool) -> None:
        super().__init__(pool_mb)
        self.privileged = privileged
        self.failed = False

    def attach(self, pid: int) -> ChildMemory:
        return _PrlimitChild(self, pid)

    def refused(self, pid: int, exc: OSError) -> None:
        """prlimit() failed although start-up said it would work: say so once."""
        if not self.failed:
            self.failed = True
            warn("memory.prlimit_refused", pid=pid, reason=str(exc),
                 consequence="per-invocation memoryMb is not enforced below the pool cap "
                             f"({self.pool_mb} MB, the jail's RLIMIT_AS)")

    def describe(self) -> dict:
        return {**super().describe(),
                "sets": "soft and hard" if self.privileged else
                        "soft only (no CAP_SYS_RESOURCE; the seccomp filter keeps children from raising it)"}


class _PrlimitChild:
    initial_mb: int | None = None
    joined_by = ""

    def __init__(self, owner: PrlimitEnforcer, pid: int) -> None:
        self.owner = owner
        self.pid = pid
        self.base = 0
        self.cap = 0  # the jail's hard limit: never exceeded

    def ready(self) -> bool:
        self.base = vm_size(self.pid)
        return True

    def set_limit(self, mb: int) -> bool:
        if self.owner.failed or not self.base:
            return True
        try:
            if not self.cap:
                _soft, hard = resource.prlimit(self.pid, resource.RLIMIT_AS)
                self.cap = hard if hard != resource.RLIM_INFINITY else 1 << 62
            limit = min(self.base + mb * MB, self.cap)
            hard = limit if self.owner.privileged else self.cap
            resource.prlimit(self.pid, resource.RLIMIT_AS, (limit, hard))
            if self.owner.privileged:
                self.cap = max(self.cap, limit)
        except PermissionError as exc:
            self.owner.refused(self.pid, exc)
        except ProcessLookupError:
            pass  # it died; the supervisor is about to hear of it
        return True

    def oom_killed(self) -> bool:
        return False  # a MemoryError is reported by the child itself

    def peak_bytes(self) -> int | None:
        return None

    def release(self) -> bool:
        return True


def vm_size(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def has_cap(bit: int) -> bool:
    """Whether this process holds capability ``bit`` (its effective set)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def prlimit_possible() -> tuple[bool, bool, str]:
    """(usable, privileged, why) by the kernel's rules for prlimit() on another process.

    CAP_SYS_RESOURCE allows anything. Without it, prlimit() works only on a
    process with our uid and gid, and cannot raise a hard limit: a root
    supervisor's children run under uids of their own, so it needs the
    capability; a non-root supervisor's children keep its uid.
    """
    if has_cap(_CAP_SYS_RESOURCE):
        return True, True, "CAP_SYS_RESOURCE held"
    if os.geteuid() != 0:
        return True, False, "children share the supervisor's uid (no CAP_SYS_RESOURCE)"
    return False, False, ("running as root without CAP_SYS_RESOURCE: children run under uids "
                          "of their own, and prlimit() of another uid needs that capability")


# ---------------------------------------------------------------------------
# cgroups
# ---------------------------------------------------------------------------


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)  # as a shell redirection does
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _keyed(text: str, key: str) -> int | None:
    """``key N`` out of a flat-keyed cgroup file (memory.events, oom_control)."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def own_cgroups(text: str) -> dict[str, str]:
    """/proc/self/cgroup as {controller: path}; the cgroup2 entry under ""."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hid, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            found[controller] = path
    return found


def cgroup_mounts(text: str) -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root, fstype, super options) of each cgroup mount in mountinfo."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append((_unescape(fields[4]), _unescape(fields[3]), tail[0], set(tail[2].split(","))))
    return mounts


def _unescape(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _host_path(mount: str, root: str, path: str) -> str | None:
    """Where cgroup ``path`` (as /proc/self/cgroup names it) is under ``mount``."""
    if root != "/" and path != root and not path.startswith(root.rstrip("/") + "/"):
        return None
    relative = path[len(root):] if root != "/" else path
    return os.path.join(mount, relative.lstrip("/"))


class CgroupEnforcer(Enforcer):
    """What both cgroup versions share: a parent per supervisor, a leaf per child."""

    version = 0
    counts = "charged memory of the child's own cgroup"

    def __init__(self, pool_mb: int, parent: str) -> None:
        super().__init__(pool_mb)
        #: This supervisor's directory: children's cgroups live below it.
        self.parent = parent
        self.live: dict[int, _CgroupChild] = {}
        #: Cgroups made ahead for children to join themselves (None: they never do).
        self.slots: CgroupSlots | None = None

    def jail_address_space_mb(self) -> int:
        if not self.pool_mb:
            return 0
        return max(BACKSTOP_MULTIPLE * self.pool_mb, MIN_BACKSTOP_MB)

    def claim(self, pid: int, slot: int) -> ChildMemory | None:
        claimed = self.slots.claim(slot, pid) if self.slots is not None else None
        if not isinstance(claimed, _CgroupChild):
            return None
        claimed.slots = self.slots  # checked at its Hello
        claimed.joined_by = "itself"
        self.live[pid] = claimed
        return claimed

    def attach(self, pid: int) -> ChildMemory:
        path = os.path.join(self.parent, f"child-{pid}")
        try:
            os.mkdir(path)
        except FileExistsError:  # a pid reused before its old cgroup went
            os.rmdir(path)
            os.mkdir(path)
        child = self._child(pid, path)
        try:
            child.setup(self.pool_mb)
            _write(os.path.join(path, "cgroup.procs"), str(pid))
        except OSError:
            _rmdir_quietly(path)
            raise
        self.live[pid] = child
        return child

    def _child(self, pid: int, path: str) -> _CgroupChild:
        raise NotImplementedError

    def take_slots(self, count: int) -> SlotBatch:
        return self.slots.take(count) if self.slots is not None and not self.slots.stopped else NO_SLOTS

    async def keep_slots(self) -> None:
        if self.slots is not None:
            await self.slots.keep_filled()

    def retry_pending(self) -> None:
        super().retry_pending()
        if self.slots is not None:
            self.slots.sweep()

    def forget(self, pid: int, child: ChildMemory) -> None:
        self.live.pop(pid, None)
        super().forget(pid, child)

    def close(self) -> None:
        """Kill whatever is left in our cgroups, wait for them to empty, remove them."""
        # Slots handed out whose child never came drain with the children's cgroups (pid 0: none known).
        lost = self.slots.close() if self.slots is not None else []
        leftovers = [*self._pending.items(), *self.live.items(), *((0, slot) for slot in lost)]
        self._pending.clear()
        self.live.clear()
        for _pid, child in leftovers:
            child.kill_all()  # type: ignore[attr-defined]
        deadline = time.monotonic() + DRAIN_S
        for pid, child in leftovers:
            while True:
                try:
                    if child.release():
                        break
                except OSError as exc:
                    warn("memory.release_failed", pid=pid, reason=str(exc))
                    break
                if time.monotonic() > deadline:
                    warn("memory.cgroup_left", path=child.path, reason="still populated at shutdown")
                    break
                time.sleep(0.01)
        self._remove_parent()

    def _remove_parent(self) -> None:
        _rmdir_quietly(self.parent)

    def describe(self) -> dict:
        return {**super().describe(), "cgroup": self.parent}


class _CgroupChild:
    def __init__(self, pid: int, path: str) -> None:
        self.pid = pid
        self.path = path
        self.initial_mb: int | None = None
        self.limit = 0  # bytes now in force
        #: Where it came from if it joined a slot itself (checked at its Hello).
        self.slots: CgroupSlots | None = None
        self.joined_by = "supervisor"

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def setup(self, mb: int) -> None:
        raise NotImplementedError

    def ready(self) -> bool:
        """A child that was to join its slot itself must be in it now; if it is
        not (and still runs), slots stop: the supervisor joins children again."""
        if self.slots is None or self.slots.joined(self.pid, self.path):
            return True
        if _running(self.pid):
            self.slots.stop(f"child {self.pid} said hello outside its cgroup {self.path}")
        return False

    def release(self) -> bool:
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return False
            raise
        return True

    def kill_all(self) -> None:
        try:
            pids = _read(self._file("cgroup.procs")).split()
        except OSError:
            return
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has left its cgroup already)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _rmdir_quietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


class Cgroup1Enforcer(CgroupEnforcer):
    """cgroup v1 memory controller: memory.limit_in_bytes (+ memsw), oom_control."""

    name = "cgroup1"
    version = 1

    def __init__(self, pool_mb: int, parent: str) -> None:
        super().__init__(pool_mb, parent)
        self.memsw = os.path.exists(os.path.join(parent, "memory.memsw.limit_in_bytes"))
        # A thread moves itself through v1's ``tasks`` (see cgroup_slots).
        self.slots = CgroupSlots(parent, "tasks", lambda path: _Cgroup1Child(0, path, self.memsw), pool_mb)

    def _child(self, pid: int, path: str) -> _CgroupChild:
        return _Cgroup1Child(pid, path, self.memsw)

    def describe(self) -> dict:
        return {**super().describe(), "swap_limited": self.memsw,
                "children_join_themselves": self.slots is not None}


class _Cgroup1Child(_CgroupChild):
    def __init__(self, pid: int, path: str, memsw: bool) -> None:
        super().__init__(pid, path)
        self.memsw = memsw
        self.limit = 1 << 62  # a new cgroup is unlimited

    def setup(self, mb: int) -> None:
        if mb and not self.set_limit(mb):
            raise OSError(errno.EBUSY, f"{self.path}: a new child already over {mb} MB")
        self.initial_mb = mb or None

    def set_limit(self, mb: int) -> bool:
        """memory.limit_in_bytes, and memsw (memory + swap) at the same value, so
        swap never extends the limit. The kernel wants memsw >= limit at all
        times: raising, memsw goes first; lowering, it goes last."""
        new = mb * MB
        order = ["memory.limit_in_bytes"]
        if self.memsw:
            memsw = "memory.memsw.limit_in_bytes"
            order = [memsw, *order] if new > self.limit else [*order, memsw]
        try:
            for name in order:
                _write(self._file(name), str(new))
        except OSError as exc:
            if exc.errno == errno.EBUSY:  # usage above the new limit, nothing to reclaim
                return False
            raise
        self.limit = new
        return True

    def oom_killed(self) -> bool:
        try:
            text = _read(self._file("memory.oom_control"))
        except OSError:
            return False
        kills = _keyed(text, "oom_kill")  # Linux >= 4.13
        if kills is not None:
            return kills > 0
        try:  # older kernels: the child hit its limit; it died of it if it died
            return int(_read(self._file("memory.failcnt"))) > 0
        except (OSError, ValueError):
            return False

    def peak_bytes(self) -> int | None:
        try:
            return int(_read(self._file("memory.max_usage_in_bytes")))
        except (OSError, ValueError):
            return None


class Cgroup2Enforcer(CgroupEnforcer):
    """cgroup v2: memory.max, memory.swap.max = 0, memory.oom.group, memory.events.

    v2 forbids processes in a cgroup whose controllers are delegated to its
    children, so the supervisor first moves itself (and so the zygote it
    starts) into a leaf, ``corral-PID/supervisor``, then enables the memory
    controller for ``corral-PID``'s children. That leaf and its parent stay
    until the supervisor exits (a process cannot remove its own cgroup);
    systemd removes the unit's cgroup tree when the service stops.
    """

    name = "cgroup2"
    version = 2

    def __init__(self, pool_mb: int, parent: str) -> None:
        super().__init__(pool_mb, parent)

    def _child(self, pid: int, path: str) -> _CgroupChild:
        return _Cgroup2Child(pid, path)

    def _remove_parent(self) -> None:
        pass  # we are inside it (corral-PID/supervisor)


class _Cgroup2Child(_CgroupChild):
    def setup(self, mb: int) -> None:
        if os.path.exists(self._file("memory.swap.max")):
            _write(self._file("memory.swap.max"), "0")
        # One child, one process: if the OOM killer picks it, it takes it all.
        _write(self._file("memory.oom.group"), "1")
        if mb:
            self.set_limit(mb)
        self.initial_mb = mb or None

    def set_limit(self, mb: int) -> bool:
        # Below current usage the kernel reclaims, then OOM-kills the child:
        # its death is then reported as exceededMemory through oom_killed().
        _write(self._file("memory.max"), str(mb * MB))
        self.limit = mb * MB
        return True

    def oom_killed(self) -> bool:
        try:
            text = _read(self._file("memory.events"))
        except OSError:
            return False
        return (_keyed(text, "oom_kill") or 0) > 0 or (_keyed(text, "oom_group_kill") or 0) > 0

    def peak_bytes(self) -> int | None:
        try:
            return int(_read(self._file("memory.peak")))  # Linux >= 5.19
        except (OSError, ValueError):
            return None

    def kill_all(self) -> None:
        try:
            _write(self._file("cgroup.kill"), "1")  # Linux >= 5.14
        except OSError:
            super().kill_all()


# ---------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------


def _sweep_stale(directory: str) -> None:
    """Remove empty ``corral-PID`` cgroups left by supervisors that died."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith("corral-") or not entry[7:].isdigit():
            continue
        pid = int(entry[7:])
        if pid == os.getpid() or _alive(pid):
            continue
        stale = os.path.join(directory, entry)
        for sub in os.listdir(stale) if os.path.isdir(stale) else []:
            if os.path.isdir(os.path.join(stale, sub)):
                _rmdir_quietly(os.path.join(stale, sub))
        _rmdir_quietly(stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_cgroup1(pool_mb: int, proc_cgroup: str, mountinfo: str) -> Cgroup1Enforcer:
    own = own_cgroups(proc_cgroup).get("memory")
    if own is None:
        raise MemoryEnforcementError("no cgroup v1 memory controller (none in /proc/self/cgroup)")
    for mount, root, fstype, options in cgroup_mounts(mountinfo):
        if fstype == "cgroup" and "memory" in options:
            base = _host_path(mount, root, own)
            if base is not None:
                break
    else:
        raise MemoryEnforcementError(f"the v1 memory hierarchy holding {own} is not mounted here")
    _sweep_stale(base)
    parent = os.path.join(base, f"corral-{os.getpid()}")
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise MemoryEnforcementError(
            f"cannot create {parent} ({exc.strerror}): the supervisor needs write access to its "
            "own memory cgroup") from None
    return Cgroup1Enforcer(pool_mb, parent)


def open_cgroup2(pool_mb: int, proc_cgroup: str, mountinfo: str) -> Cgroup2Enforcer:
    own = own_cgroups(proc_cgroup).get("")
    if own is None:
        raise MemoryEnforcementError("no cgroup2 hierarchy (no 0:: line in /proc/self/cgroup)")
    for mount, root, fstype, _options in cgroup_mounts(mountinfo):
        if fstype == "cgroup2":
            base = _host_path(mount, root, own)
            if base is not None:
                break
    else:
        raise MemoryEnforcementError("cgroup2 is not mounted here")
    return setup_cgroup2(pool_mb, base)


def setup_cgroup2(pool_mb: int, base: str) -> Cgroup2Enforcer:
    """Take over ``base``, our own delegated cgroup: see :class:`Cgroup2Enforcer`."""
    try:
        controllers = _read(os.path.join(base, "cgroup.controllers")).split()
    except OSError as exc:
        raise MemoryEnforcementError(f"cannot read {base}/cgroup.controllers: {exc.strerror}") from None
    if "memory" not in controllers:
        raise MemoryEnforcementError(
            f"the memory controller is not available in {base} (it has: {' '.join(controllers) or 'none'}); "
            "run corral under a cgroup with memory delegated, e.g. a systemd unit with Delegate=yes")
    _sweep_stale(base)
    parent = os.path.join(base, f"corral-{os.getpid()}")
    leaf = os.path.join(parent, "supervisor")
    try:
        os.makedirs(leaf, exist_ok=True)
        _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
    except OSError as exc:
        _rmdir_quietly(leaf)
        _rmdir_quietly(parent)
        raise MemoryEnforcementError(
            f"cannot create and join {leaf} ({exc.strerror}): the supervisor needs its cgroup "
            "delegated (systemd: Delegate=yes)") from None
    try:
        for directory in (base, parent):
            enabled = _read(os.path.join(directory, "cgroup.subtree_control")).split()
            if "memory" not in enabled:
                _write(os.path.join(directory, "cgroup.subtree_control"), "+memory")
    except OSError as exc:
        others = _read(os.path.join(base, "cgroup.procs")).split() if os.path.exists(base) else []
        hint = (f"{base} still holds other processes ({' '.join(others[:5])}): a cgroup that "
                "delegates a controller may hold none" if others else "is it delegated to us?")
        raise MemoryEnforcementError(
            f"cannot enable the memory controller below {base} ({exc.strerror}): {hint}") from None
    return Cgroup2Enforcer(pool_mb, parent)


def _read_proc(name: str) -> str:
    try:
        return _read(f"/proc/self/{name}")
    except OSError:
        return ""


def choose(mode: str, pool_mb: int, *,
           cgroup2: Callable[[int, str, str], Enforcer] = open_cgroup2,
           cgroup1: Callable[[int, str, str], Enforcer] = open_cgroup1) -> Enforcer:
    """The backend for ``[pool] memory_enforcement`` (auto, cgroup, prlimit); logs why.

    auto prefers cgroup v2, then v1, then prlimit, and warns when none of
    them works. A forced backend that cannot work is an error: the operator
    asked for an enforcement this host cannot give.
    """
    if mode not in ("auto", "cgroup", "prlimit"):
        raise MemoryEnforcementError(
            f'[pool] memory_enforcement = "{mode}": expected "auto", "cgroup" or "prlimit"')
    reasons: list[str] = []
    if mode in ("auto", "cgroup"):
        proc_cgroup, mountinfo = _read_proc("cgroup"), _read_proc("mountinfo")
        for version, opener in (("cgroup2", cgroup2), ("cgroup1", cgroup1)):
            try:
                enforcer = opener(pool_mb, proc_cgroup, mountinfo)
            except MemoryEnforcementError as exc:
                reasons.append(f"{version}: {exc}")
                continue
            log("memory.enforcement", mode=mode, **enforcer.describe(), not_used=reasons)
            return enforcer
        if mode == "cgroup":
            raise MemoryEnforcementError(
                'memory_enforcement = "cgroup", but no memory cgroup can be used: ' + "; ".join(reasons))
    usable, privileged, why = prlimit_possible()
    if usable:
        prlimit = PrlimitEnforcer(pool_mb, privileged)
        log("memory.enforcement", mode=mode, **prlimit.describe(), why=why, not_used=reasons)
        return prlimit
    if mode == "prlimit":
        raise MemoryEnforcementError(f'memory_enforcement = "prlimit", but prlimit() cannot work: {why}')
    reasons.append(f"prlimit: {why}")
    fallback = Enforcer(pool_mb)
    warn("memory.enforcement", mode=mode, **fallback.describe(), not_used=reasons,
         consequence=f"a per-invocation memoryMb below the pool's {pool_mb} MB cannot be enforced: "
                     "every child runs with the pool cap (the jail's RLIMIT_AS)")
    return fallback
