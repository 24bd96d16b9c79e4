"""The seccomp policy of a sandboxed child, compiled once to BPF.

The policy is an allowlist. What is not on it is not run, in one of three
ways:

* calls that tenant code reaches through ordinary library use (creating a
  socket, forking, making a directory, an interval timer) fail with
  ``EPERM`` (:data:`REFUSED`), so the tenant reads a clean
  ``PermissionError``; a few with the errno the standard library expects
  there (:data:`NOT_A_TTY`, :data:`NO_XATTRS`);
* calls that only an attack on the kernel or on another process makes
  (io_uring, bpf, perf events, userfaultfd, another process's memory, the
  filter itself, kernel keys and modules, ...) **kill the process**
  (:data:`KILLED`): no library has a reason to make them, so one is taken
  as a sign of compromise and ends the child at once;
* everything else fails with ``ENOSYS``, as on a kernel that lacks the call.
  The default used to be the kill, which turned any standard-library call
  nobody had listed (``uuid.uuid1()``'s ``umask``, ``shutil.disk_usage``,
  ``signal.alarm``, ``os.fsync``...) into a dead worker with no word of
  why. ENOSYS is what glibc and CPython already handle as "not available
  here" (raise ``OSError``, or take a fallback), and the call is no more
  run than under a kill: the kernel attack surface is the same.

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
    "close", "fstat", "lseek", "pread64",
    # Read-only file access: what exists is the mount view, what may be read Landlock's.
    "stat", "lstat", "newfstatat", "statx", "access", "faccessat", "faccessat2",
    "readlink", "readlinkat", "getdents64", "getcwd",
    # Moving about the view (pytest and Django's tooling chdir to where they
    # are): a path lookup like any other, inside the pivoted root. ``fchdir``
    # stays refused, as a directory fd is the one way a cwd could leave it.
    "chdir",
    # Landlock's second layer is added after this filter (see sandbox.landlock):
    # both calls can only ever take rights away from the caller.
    "landlock_add_rule", "landlock_restrict_self",
    "mmap", "munmap", "mremap", "brk", "madvise", "mprotect",
    "sched_yield", "getrandom",
    "getpid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getppid",
    "gettimeofday", "time", "nanosleep",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
    "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect6",
    "exit", "exit_group", "restart_syscall", "uname", "getrusage", "times",
    "getgroups", "getresuid", "getresgid", "getpgrp", "getcpu",
    # Harmless in the jail: the mask of files it cannot create (libuuid sets
    # it in uuid.uuid1()), and flushing files it cannot write or its own
    # anonymous memory (mmap.flush()).
    "umask", "fsync", "fdatasync", "msync",
    # Descriptors within the process: fcntl's F_DUPFD does what dup does
    # (CPython's os.dup uses it), and libxml2 dup()s every file it parses by
    # path (lxml's parse(path) failed); C libraries capture their output
    # through a pipe. The open-file limit bounds them all; nothing reaches
    # past the process (there is no other process to hand a pipe to).
    "dup", "dup2", "dup3", "pipe", "pipe2",
)

#: Calls that fail softly with EPERM: what a tenant reaches by mistake or
#: by curiosity through the standard library.
REFUSED = (
    "open", "openat2", "creat", "fchdir", "landlock_create_ruleset",
    "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "chown", "fchown",
    "lchown", "fchownat", "truncate", "ftruncate", "utimensat", "mknod", "mknodat",
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "shutdown",
    "getsockopt", "setsockopt", "getsockname", "getpeername",
    "fork", "vfork", "clone", "clone3", "execve", "execveat", "wait4", "waitid",
    "kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal", "ptrace",
    "eventfd2", "memfd_create", "epoll_create",
    "epoll_create1", "inotify_init1", "timerfd_create", "signalfd4",
    "prctl", "sysinfo", "sched_getaffinity",
    "sched_setaffinity", "setpriority", "getpriority", "mount", "umount2", "chroot",
    "pivot_root", "unshare", "setns", "setuid", "setgid", "setresuid", "setresgid",
    "setgroups", "personality", "sendfile", "splice", "tee", "copy_file_range",
    # NUMA memory policy: OpenBLAS (numpy's) asks for it as it starts and
    # carries on without it.
    "mbind", "set_mempolicy", "get_mempolicy", "set_mempolicy_home_node", "migrate_pages",
    "move_pages",
    # A new session or process group: the child keeps the ones the jail gave it.
    "setsid", "setpgid",
    # Timers that deliver a signal (SIGALRM...) to the process, which serves
    # other invocations too: a timeout helper's alarm would interrupt them.
    # asyncio's timeouts are the way.
    # (setitimer too, but for ITIMER_PROF: see ITIMER_PROF below.)
    "alarm", "getitimer", "timer_create", "timer_settime", "timer_gettime",
    "timer_getoverrun", "timer_delete",
    # Advisory locks on files shared with other tenants (the standard
    # library, the package store) would be a channel between them.
    "flock",
    # The size and free space of the host's file systems.
    "statfs", "fstatfs",
)
#: ioctl fails as it does on a non-terminal, which is what Python expects.
NOT_A_TTY = ("ioctl",)
#: Extended attributes fail as on a file system without them (EOPNOTSUPP),
#: which shutil's copystat and friends already pass over.
NO_XATTRS = ("getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
             "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr")
#: Calls no library makes on its way; made, they are an attack (on the kernel:
#: its least-trodden interfaces; on another process; on the filter itself):
#: the process is killed, the supervisor logs ``child.seccomp_kill``.
#: ptrace, mount, unshare, setns and clone's namespaces stay EPERM (REFUSED):
#: debuggers' and test helpers' probes reach them.
KILLED = (
    "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open",
    "userfaultfd", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd",
    "kcmp", "seccomp", "keyctl", "add_key", "request_key", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "open_by_handle_at", "name_to_handle_at",
    "fsopen", "fsconfig", "fsmount", "fspick", "open_tree", "move_mount", "mount_setattr",
    "modify_ldt", "iopl", "ioperm", "swapon", "swapoff", "reboot", "acct", "quotactl",
    "syslog", "uselib", "vhangup", "lookup_dcookie",
)

#: fcntl commands that make the kernel signal another process: F_SETOWN
#: and F_SETOWN_EX name who gets SIGIO (or F_SETSIG's signal, SIGKILL
#: included) when the descriptor is ready. With its channel's owner set to
#: the supervisor's pid and O_ASYNC on, a child signalled the supervisor
#: each time it was sent a frame, around the refused ``kill``; only the
#: kernel's own check (same uid, or Landlock's signal scope, ABI 6) stood in
#: the way, and an unprivileged Corral runs its children under its own uid.
#: No library a tenant runs asks for signal-driven I/O.
FCNTL_OWNER = (8, 15)  # F_SETOWN, F_SETOWN_EX
#: fcntl commands that set a record lock: F_SETLK, F_SETLKW, F_OFD_SETLK and
#: F_OFD_SETLKW. Every file a child can open is read-only and shared by every
#: tenant, so a lock on one was seen by all of them: a covert channel between
#: tenants (lock byte ranges, read them with F_GETLK) that also told one
#: tenant another's host pid. They succeed and lock nothing. A process never
#: conflicts with its own record locks, and nothing writes these files, so
#: what a tenant locks for itself (SQLite reading a bundled database) works.
FCNTL_LOCKS = (6, 7, 37, 38)
#: Every other fcntl command Linux has (``cmd`` values): descriptor and
#: status flags, F_GETLK and F_OFD_GETLK (no lock is ever set: they answer
#: F_UNLCK), the owner and signal getters, F_SETSIG (which signals nobody
#: without an owner), leases, F_DUPFD_CLOEXEC, pipe sizes, seals, write
#: hints. Not dnotify (F_NOTIFY): it signalled a child whenever another
#: tenant read the shared folder it watched (its imports, its cold start).
#: A command not listed fails with ENOSYS, the filter's default.
FCNTL_ALLOWED = (0, 1, 2, 3, 4, 5, 9, 10, 11, 16, 17, 36,
                 1024, 1025, 1030, 1031, 1032, 1033, 1034, 1035, 1036, 1037, 1038)

#: Calls about a process that a child may make about itself only (pid 0):
#: made about another, they told a tenant which processes the host runs,
#: their process groups, sessions and scheduling (SCHED_BATCH marks a
#: Corral child). EPERM for any other pid.
OWN_PROCESS_ONLY = ("getpgid", "getsid", "sched_getparam", "sched_getscheduler")
#: Clock calls, for the clocks of the whole system and the caller's own CPU
#: clocks (ids 0 and up). A negative clock id names another process's or
#: thread's CPU clock, which the kernel reads for anyone: a tenant watched
#: another's CPU time (its every request, to the nanosecond) and the
#: supervisor's (the host's traffic). EPERM. (The vDSO answers the common
#: clocks without a system call at all.)
CLOCK_CALLS = ("clock_gettime", "clock_getres", "clock_nanosleep")
#: ``futex`` with FUTEX_PRIVATE_FLAG only, as glibc and CPython make it: a
#: shared futex on a page of a file every tenant maps (the standard
#: library) is keyed by that file, so one tenant woke another's wait: a
#: covert channel between them. EPERM without the flag.
FUTEX_PRIVATE_FLAG = 128

#: ``setitimer``'s which: the profiling timer (the process's CPU time) that
#: stops one invocation at its CPU budget while others share the child
#: (sandbox.cpu_budgets). The runtime's alone; a tenant that sets it moves
#: CPU between its own invocations only (the kernel keeps their sum).
#: ITIMER_REAL and ITIMER_VIRTUAL stay refused (REFUSED's reason).
ITIMER_PROF = 2

#: openat flags that could write: O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND, __O_TMPFILE.
WRITE_FLAGS = (0o1, 0o2, 0o100, 0o1000, 0o2000, 0o20000000)


def compile_policy() -> bytes:
    """Build the filter with libseccomp and return it as raw BPF."""
    import pyseccomp as seccomp

    policy = seccomp.SyscallFilter(seccomp.ERRNO(errno.ENOSYS))
    # Another ABI (32-bit int 0x80, x32) is never an ordinary library's: kill.
    policy.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
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
    for name in NO_XATTRS:
        policy.add_rule(seccomp.ERRNO(errno.EOPNOTSUPP), name)
    for name in KILLED:
        # A name this libseccomp does not know is a call its kernel tables
        # lack: the default (ENOSYS) then covers it.
        if seccomp.resolve_syscall(seccomp.system_arch(), name) >= 0:
            policy.add_rule(seccomp.KILL_PROCESS, name)
    # openat(dirfd, path, flags, mode): read-only opens only. Every flag value
    # matches exactly one side: no write flag (allowed) or some (EROFS).
    any_write = 0
    for flag in WRITE_FLAGS:
        any_write |= flag
        policy.add_rule(seccomp.ERRNO(errno.EROFS), "openat", seccomp.Arg(2, seccomp.MASKED_EQ, flag, flag))
    policy.add_rule(seccomp.ALLOW, "openat", seccomp.Arg(2, seccomp.MASKED_EQ, any_write, 0))
    # fcntl(fd, cmd, arg): every command but those naming a signal's target
    # (FCNTL_OWNER). A rule per command, as for openat: an unconditional
    # allow would override the refusals. The kernel reads ``cmd`` as 32
    # bits, so the comparisons mask the upper half (F_SETOWN | 1 << 32 is
    # F_SETOWN to the kernel, and refused here too).
    for cmd in FCNTL_OWNER:
        policy.add_rule(seccomp.ERRNO(errno.EPERM), "fcntl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, cmd))
    for cmd in FCNTL_ALLOWED:
        policy.add_rule(seccomp.ALLOW, "fcntl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, cmd))
    for cmd in FCNTL_LOCKS:
        policy.add_rule(seccomp.ERRNO(0), "fcntl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, cmd))
    # Resource limits may be read, never written: the jail set them before
    # this filter, and only the supervisor changes them afterwards (prlimit
    # or the child's cgroup). glibc's getrlimit() is prlimit64(0, res, NULL,
    # &old), so that exact form is allowed; setrlimit() and any prlimit64()
    # with a new value or on another process fail with EPERM. A tenant's
    # resource.setrlimit() then raises ValueError("not allowed to raise
    # maximum limit"), which is CPython's wording for EPERM.
    policy.add_rule(seccomp.ALLOW, "setitimer", seccomp.Arg(0, seccomp.EQ, ITIMER_PROF))
    policy.add_rule(seccomp.ERRNO(errno.EPERM), "setitimer", seccomp.Arg(0, seccomp.NE, ITIMER_PROF))
    policy.add_rule(seccomp.ALLOW, "prlimit64", seccomp.Arg(0, seccomp.EQ, 0),
                    seccomp.Arg(2, seccomp.EQ, 0))
    policy.add_rule(seccomp.ERRNO(errno.EPERM), "prlimit64", seccomp.Arg(0, seccomp.NE, 0))
    policy.add_rule(seccomp.ERRNO(errno.EPERM), "prlimit64", seccomp.Arg(2, seccomp.NE, 0))
    # As prlimit64's: pid 0 exactly (a pid with bits in the upper half is
    # refused too, whatever the kernel would make of it).
    for name in OWN_PROCESS_ONLY:
        policy.add_rule(seccomp.ALLOW, name, seccomp.Arg(0, seccomp.EQ, 0))
        policy.add_rule(seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(0, seccomp.NE, 0))
    # clockid_t is 32 bits to the kernel: its sign bit decides, whatever the upper half.
    for name in CLOCK_CALLS:
        policy.add_rule(seccomp.ALLOW, name, seccomp.Arg(0, seccomp.MASKED_EQ, 0x80000000, 0))
        policy.add_rule(seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(0, seccomp.MASKED_EQ, 0x80000000, 0x80000000))
    policy.add_rule(seccomp.ALLOW, "futex", seccomp.Arg(1, seccomp.MASKED_EQ, FUTEX_PRIVATE_FLAG, FUTEX_PRIVATE_FLAG))
    policy.add_rule(seccomp.ERRNO(errno.EPERM), "futex", seccomp.Arg(1, seccomp.MASKED_EQ, FUTEX_PRIVATE_FLAG, 0))
    policy.add_rule(seccomp.ALLOW, "getrlimit")
    policy.add_rule(seccomp.ERRNO(errno.EPERM), "setrlimit")
    with tempfile.TemporaryFile() as out:
        policy.export_bpf(out)
        out.seek(0)
        return out.read()


#: Calls about another process, refused to a package zygote (see
#: :func:`compile_package_zygote_policy`): signals of every kind, tracing,
#: reading or moving its memory, and changing its scheduling or limits.
#: (Not ``pidfd_open``: the zygote hands the supervisor a pidfd of each
#: child, and a pidfd does nothing to its process without these.)
OTHER_PROCESS_CALLS = (
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal",
    "pidfd_getfd", "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp",
    "ioprio_set", "migrate_pages",
)
#: Calls that take a pid (argument 0) and touch that process: pid 0 (itself) only.
OWN_PID_ONLY = ("sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr", "move_pages",
                "prlimit64")


def compile_package_zygote_policy() -> bytes:
    """A filter for a package zygote, loaded before it imports its set.

    A package's import code is chosen by a tenant (any wheel on the index),
    and a package zygote keeps ``CAP_SETUID`` for its children: with it,
    a wheel's import forked, took another tenant's child's uid (the jail's
    uid is a function of the pid) and could signal it, lower its limits or
    read its memory. Everything is allowed but what reaches another process
    (:data:`OTHER_PROCESS_CALLS`, :data:`OWN_PID_ONLY`, ``setpriority`` of
    anyone but itself) and the kernel interfaces no import needs
    (:data:`KILLED` less ``seccomp``, which each child needs to load its
    own filter). Children inherit it under their own, stricter one, which
    refuses all of these already; the zygote itself needs none of them
    (it forks, waits for its children and sets its own scheduling)."""
    import pyseccomp as seccomp

    policy = seccomp.SyscallFilter(seccomp.ALLOW)
    policy.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    arch = seccomp.system_arch()
    for name in OTHER_PROCESS_CALLS:
        if seccomp.resolve_syscall(arch, name) >= 0:
            policy.add_rule(seccomp.ERRNO(errno.EPERM), name)
    for name in OWN_PID_ONLY:
        policy.add_rule(seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(0, seccomp.NE, 0))
    # setpriority(which, who, prio): PRIO_PROCESS (0) of itself (who 0) only.
    policy.add_rule(seccomp.ERRNO(errno.EPERM), "setpriority", seccomp.Arg(0, seccomp.NE, 0))
    policy.add_rule(seccomp.ERRNO(errno.EPERM), "setpriority", seccomp.Arg(1, seccomp.NE, 0))
    for name in KILLED:
        if name not in OTHER_PROCESS_CALLS and name != "seccomp" and seccomp.resolve_syscall(arch, name) >= 0:
            policy.add_rule(seccomp.KILL_PROCESS, name)
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
