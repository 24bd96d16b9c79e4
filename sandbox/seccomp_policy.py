"""The seccomp policy of a sandboxed child, compiled once to BPF.

The policy is an allowlist whose default **kills the process**. Between the
two sits a list of calls that tenant code reaches through ordinary library
use (creating a socket, forking, making a directory): those fail with
``EPERM`` instead, so the tenant reads a clean ``PermissionError`` while
anything exotic ends the child at once.

Files are readable (the mount view and Landlock decide which): ``openat``
is allowed only without any flag that could write (``O_WRONLY``, ``O_RDWR``,
``O_CREAT``, ``O_TRUNC``, ``O_APPEND``, ``O_TMPFILE``); with one it fails
with ``EROFS``, before the read-only mounts and Landlock would refuse it too.

Building the filter with libseccomp costs milliseconds; loading exported BPF
costs tens of microseconds. The zygote therefore compiles it once
(:func:`compile_policy`) and every forked child loads the bytes
(:func:`load_bpf`) as the last step of its jail.
"""

from __future__ import annotations

import errno
import tempfile

from . import jailcalls

#: Calls a running child needs: I/O on its channel, memory, time, signals
#: and the event loop (asyncio needs ``getpid`` and ``epoll_ctl``).
ALLOWED = (
    "read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
    "close", "fstat", "lseek", "fcntl", "pread64",
    # Read-only file access: what exists is the mount view, what may be read Landlock's.
    "stat", "lstat", "newfstatat", "statx", "access", "faccessat", "faccessat2",
    "readlink", "readlinkat", "getdents64", "getcwd",
    # Landlock's second layer is added after this filter (see sandbox.landlock):
    # both calls can only ever take rights away from the caller.
    "landlock_add_rule", "landlock_restrict_self",
    "mmap", "munmap", "mremap", "brk", "madvise", "mprotect",
    "futex", "sched_yield", "getrandom",
    "getpid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getppid",
    "clock_gettime", "clock_getres", "gettimeofday", "time", "clock_nanosleep", "nanosleep",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
    "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect6",
    "exit", "exit_group", "restart_syscall", "uname", "getrusage", "times",
    "getgroups", "getresuid", "getresgid", "getpgrp", "getpgid", "getsid", "sched_getparam",
    "sched_getscheduler", "getcpu",
)

#: Calls that fail softly with EPERM: what a tenant reaches by mistake or
#: by curiosity through the standard library.
REFUSED = (
    "open", "openat2", "creat", "chdir", "fchdir", "landlock_create_ruleset",
    "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "chown", "fchown",
    "lchown", "fchownat", "truncate", "ftruncate", "utimensat", "mknod", "mknodat",
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "shutdown",
    "getsockopt", "setsockopt", "getsockname", "getpeername",
    "fork", "vfork", "clone", "clone3", "execve", "execveat", "wait4", "waitid",
    "kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal", "ptrace",
    "pipe", "pipe2", "dup", "dup2", "dup3", "eventfd2", "memfd_create", "epoll_create",
    "epoll_create1", "inotify_init1", "timerfd_create", "signalfd4",
    "prctl", "sysinfo", "sched_getaffinity",
    "sched_setaffinity", "setpriority", "getpriority", "mount", "umount2", "chroot",
    "pivot_root", "unshare", "setns", "setuid", "setgid", "setresuid", "setresgid",
    "setgroups", "personality", "sendfile", "splice", "tee", "copy_file_range",
    # NUMA memory policy: OpenBLAS (numpy's) asks for it as it starts and
    # carries on without it.
    "mbind", "set_mempolicy", "get_mempolicy", "set_mempolicy_home_node", "migrate_pages",
    "move_pages",
)
#: ioctl fails as it does on a non-terminal, which is what Python expects.
NOT_A_TTY = ("ioctl",)

#: openat flags that could write: O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND, __O_TMPFILE.
WRITE_FLAGS = (0o1, 0o2, 0o100, 0o1000, 0o2000, 0o20000000)


def compile_policy() -> bytes:
    """Build the filter with libseccomp and return it as raw BPF."""
    import pyseccomp as seccomp

    policy = seccomp.SyscallFilter(seccomp.KILL_PROCESS)
    # A binary tree of syscall numbers instead of libseccomp's default list:
    # the same rules, but the kernel prepares it faster when each child loads
    # it (~500 us instead of ~650, measured by timing load_bpf in forked
    # processes here: the kernel runs the filter once per syscall number to
    # build its cache of always-allowed calls). libseccomp before 2.5 has no
    # such option; the list it builds then is as correct.
    try:
        policy.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)
    except (OSError, ValueError, RuntimeError, AttributeError):
        pass
    for name in ALLOWED:
        policy.add_rule(seccomp.ALLOW, name)
    for name in REFUSED:
        policy.add_rule(seccomp.ERRNO(errno.EPERM), name)
    for name in NOT_A_TTY:
        policy.add_rule(seccomp.ERRNO(errno.ENOTTY), name)
    # openat(dirfd, path, flags, mode): read-only opens only. Every flag value
    # matches exactly one side: no write flag (allowed) or some (EROFS).
    any_write = 0
    for flag in WRITE_FLAGS:
        any_write |= flag
        policy.add_rule(seccomp.ERRNO(errno.EROFS), "openat", seccomp.Arg(2, seccomp.MASKED_EQ, flag, flag))
    policy.add_rule(seccomp.ALLOW, "openat", seccomp.Arg(2, seccomp.MASKED_EQ, any_write, 0))
    # Resource limits may be read, never written: the jail set them before
    # this filter, and only the supervisor changes them afterwards (prlimit
    # or the child's cgroup). glibc's getrlimit() is prlimit64(0, res, NULL,
    # &old), so that exact form is allowed; setrlimit() and any prlimit64()
    # with a new value or on another process fail with EPERM. A tenant's
    # resource.setrlimit() then raises ValueError("not allowed to raise
    # maximum limit"), which is CPython's wording for EPERM.
    policy.add_rule(seccomp.ALLOW, "prlimit64", seccomp.Arg(0, seccomp.EQ, 0),
                    seccomp.Arg(2, seccomp.EQ, 0))
    policy.add_rule(seccomp.ERRNO(errno.EPERM), "prlimit64", seccomp.Arg(0, seccomp.NE, 0))
    policy.add_rule(seccomp.ERRNO(errno.EPERM), "prlimit64", seccomp.Arg(2, seccomp.NE, 0))
    policy.add_rule(seccomp.ALLOW, "getrlimit")
    policy.add_rule(seccomp.ERRNO(errno.EPERM), "setrlimit")
    with tempfile.TemporaryFile() as out:
        policy.export_bpf(out)
        out.seek(0)
        return out.read()


def load_bpf(program: bytes) -> None:
    """Install ``program`` on the calling process; irreversible.

    Sets ``no_new_privs`` first, which the kernel requires of an unprivileged
    caller and which also makes setuid binaries inert.
    """
    jailcalls.seccomp_load(program)
