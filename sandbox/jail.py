"""Jailing: once per zygote (namespaces, chroot) and once per child (the rest).

Everything here runs *before* any tenant byte exists in the process. The
order matters and is explained step by step; the last step, loading the
seccomp filter, is irreversible and leaves the child able to do nothing but
compute and talk over the one socket it kept.

What a child ends up with:

* its own session, no controlling terminal, fds 0-2 on /dev/null and the
  channel as the only other open fd;
* an unprivileged uid/gid of its own (when started as root), no groups,
  ``no_new_privs``, not dumpable;
* rlimits: no core files, no file writes, no new processes, a bounded
  address space and fd table;
* the zygote's namespaces (no network interfaces, a private mount table with
  an empty read-only root, private IPC) where the kernel allows them;
* the seccomp allowlist of :mod:`sandbox.seccomp_policy`.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
from dataclasses import dataclass, field

from . import seccomp_policy

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

#: First uid/gid handed to children; each child gets base + (pid % span),
#: so that no two live children share a uid and RLIMIT_NPROC means "none".
UID_BASE = 0x10000000
UID_SPAN = 0x01000000


@dataclass
class ZygoteJail:
    """What the zygote managed to set up; reported to the supervisor's log."""

    namespaces: list[str] = field(default_factory=list)
    chroot: bool = False
    problems: list[str] = field(default_factory=list)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def isolate_zygote() -> ZygoteJail:
    """Move the zygote (and so every future child) into empty namespaces.

    Done once per zygote rather than per child: creating a network namespace
    costs milliseconds and the kernel tears them down serially, which a
    pool churning thousands of children cannot afford. Siblings share these
    namespaces, but there is nothing in them to share: no interface but a
    down loopback, no mounts but an empty read-only tmpfs root. Each step
    is best effort: hosts without the privilege still get the per-child jail.
    """
    report = ZygoteJail()
    for flag, name in ((CLONE_NEWNET, "net"), (CLONE_NEWIPC, "ipc"), (CLONE_NEWUTS, "uts")):
        if _libc.unshare(flag) == 0:
            report.namespaces.append(name)
        else:
            report.problems.append(f"unshare({name}): {os.strerror(ctypes.get_errno())}")
    if "uts" in report.namespaces:
        _libc.sethostname(b"corral", 6)  # tenants see no trace of the host's name
    if _libc.unshare(CLONE_NEWNS) != 0:
        report.problems.append(f"unshare(mnt): {os.strerror(ctypes.get_errno())}")
        return report
    report.namespaces.append("mnt")
    try:
        _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        # An empty read-only tmpfs over /tmp becomes the whole filesystem.
        _check(
            _libc.mount(b"corral", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                        b"size=4k,nr_inodes=4,mode=0555"),
            "mount tmpfs",
        )
        _check(
            _libc.mount(b"none", b"/tmp", None,
                        0x20 | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, None),  # MS_REMOUNT
            "remount tmpfs read-only",
        )
        os.chdir("/tmp")
        os.chroot(".")
        os.chdir("/")
        report.chroot = True
    except OSError as exc:
        report.problems.append(str(exc))
    return report


def jail_child(channel_fd: int, devnull_fd: int, address_space: int) -> None:
    """Turn a freshly forked child into a sandbox, all but the filter.

    ``address_space`` is the absolute RLIMIT_AS in bytes (0: none). The caller
    creates its event loop next (epoll and the loop's wake-up socketpair are
    fds the filter would refuse) and then calls :func:`lock`.
    """
    os.setsid()
    # 1. Signals: the zygote's handlers must not run here; SIGPIPE as EPIPE.
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.set_wakeup_fd(-1)

    # 2. File descriptors: stdio to /dev/null, then everything but the channel.
    for std in (0, 1, 2):
        os.dup2(devnull_fd, std)
    keep = sorted({0, 1, 2, channel_fd})
    low = 3
    for fd in keep[3:]:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)

    # 3. Priority: a spare keeps the zygote's nice 10 while it sets itself
    # up and waits, so refilling the pool never takes a core from a live
    # request; the supervisor renices it when it assigns a script.

    # 4. Resource limits that need no privilege to lower.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
    resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (channel_fd + 8, channel_fd + 8))
    if address_space > 0:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    # 5. Identity: a uid/gid of its own, no groups, no way back.
    if os.geteuid() == 0:
        uid = UID_BASE + os.getpid() % UID_SPAN
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    _libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0


def lock(bpf: bytes) -> None:
    """The filter. After this call only the allowlist exists."""
    seccomp_policy.load_bpf(bpf)


def mapped_bytes() -> int:
    """Current virtual size; the zygote reads it before its chroot hides /proc."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def describe(report: ZygoteJail) -> dict:
    return {
        "namespaces": report.namespaces,
        "chroot": report.chroot,
        "problems": report.problems,
        "python": sys.version.split()[0],
    }
