"""Jailing: once per zygote (namespaces, file view) and once per child (the rest).

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
* the zygote's namespaces (no network interfaces, a private mount table whose
  root is the read-only file view of :mod:`sandbox.file_view`, private IPC)
  where the kernel allows them;
* Landlock's first layer (read the view, write nothing), enforced at birth,
  and its second layer (the view minus every bundle but its own and every
  package-store entry but its set's) prepared here and enforced at ``Load``
  by :func:`confine_to_bundle`;
* the seccomp allowlist of :mod:`sandbox.seccomp_policy`.
"""

from __future__ import annotations

import _signal
import ctypes
import os
import platform
import resource
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import file_view, jailcalls, landlock, seccomp_policy

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
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
    #: The read-only file view is the mount namespace's root.
    view: bool = False
    #: Landlock ABI in force for children (0: none, see problems).
    landlock: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class FileRules:
    """Landlock state the zygote prepares once; every child inherits the fds.

    ``layer1`` is shared by all children (enforcing a ruleset does not change
    it). Layer 2 gets a ruleset per child, since the child adds its bundle's
    rule to it: ``static`` are O_PATH fds of the trees it is built from.
    """

    abi: int = 0
    layer1: landlock.Ruleset | None = None
    static: list[tuple[int, bool, str]] = field(default_factory=list)
    #: The zygote enforced layer 1 on itself (:func:`confine_zygote`): its
    #: children are born in that domain and need not enforce it again.
    inherited: bool = False


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def isolate_zygote(view: file_view.FileView) -> ZygoteJail:
    """Move the zygote (and so every future child) into namespaces of its own.

    Done once per zygote rather than per child: creating a network namespace
    costs milliseconds and the kernel tears them down serially, which a
    pool churning thousands of children cannot afford. Siblings share these
    namespaces, but there is nothing in them to share: no interface but a
    down loopback, no mounts but the read-only file view. Each step is best
    effort: hosts without the privilege still get the per-child jail, and
    Landlock then keeps children to the same files on the host's tree.
    """
    report = ZygoteJail()
    for flag, name in ((CLONE_NEWNET, "net"), (CLONE_NEWIPC, "ipc"), (CLONE_NEWUTS, "uts")):
        if _libc.unshare(flag) == 0:
            report.namespaces.append(name)
        else:
            report.problems.append(f"unshare({name}): {os.strerror(ctypes.get_errno())}")
    if "uts" in report.namespaces:
        _libc.sethostname(b"corral", 6)  # tenants see no trace of the host's name
        # ... nor in platform's cache of uname(), filled on the host's side
        # (file_view.plan asks platform.machine()): platform.node() and
        # platform.uname() gave children the host's name.
        platform._uname_cache = None  # type: ignore[attr-defined]
    if _libc.unshare(CLONE_NEWNS) != 0:
        report.problems.append(f"unshare(mnt): {os.strerror(ctypes.get_errno())}")
        return report
    report.namespaces.append("mnt")
    try:
        _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        file_view.build(view)
        report.view = True
    except OSError as exc:
        report.problems.append(f"file view: {exc}")
    return report


def prepare_file_rules(view: file_view.FileView, report: ZygoteJail) -> FileRules:
    """Layer 1 once for all children, and the fds layer 2 is built from."""
    abi, why = landlock.abi_version()
    rules = FileRules(abi=abi)
    if not abi:
        report.problems.append(why)
        return rules
    flags = os.O_PATH | os.O_CLOEXEC
    try:
        rules.layer1 = landlock.Ruleset(abi)
        # Without the view, a masked folder is on the host's tree: Landlock leaves it out.
        for path, is_dir in view.readable(with_bundles=True, split_masked=not report.view):
            fd = os.open(path, flags)
            rules.layer1.allow_read(fd, is_dir, path)
            # Layer 2 leaves out the roots a child sees only a part of: its
            # own bundle and its own set's package entries, added at Load
            # (confine_to_bundle). The store's root would show every other
            # tenant's wheels and lock files, and let a tenant import them.
            if path not in (view.bundles, view.packages):
                rules.static.append((fd, is_dir, path))
            else:
                os.close(fd)
    except OSError as exc:
        report.problems.append(f"landlock disabled: {exc}")
        return FileRules()
    report.landlock = abi
    return rules


def confine_zygote(rules: FileRules, report: ZygoteJail) -> None:
    """Landlock's first layer on the zygote itself, once its preparation no
    longer needs the file system: every child is then born in that domain.

    Each child used to enforce it as it set itself up, ~200 us of CPU (the
    kernel building the domain) and the pages the ctypes call copied, in
    every cold start. After this point the zygote reads only the view (the
    package zygotes' imports) and writes nothing: its snapshot is a memfd,
    which no path rule reaches, and its children are its own domain's.
    If the zygote cannot confine itself, every child still does (see
    :func:`jail_child`)."""
    if not rules.abi or rules.layer1 is None:
        return
    try:
        rules.layer1.enforce()
    except OSError as exc:
        report.problems.append(f"the zygote could not take Landlock's first layer: {exc}")
        return
    rules.inherited = True


def second_layer(rules: FileRules) -> landlock.Ruleset | None:
    """Landlock's second layer with its static rules, for one child (None
    without Landlock). The zygote makes one per fork of a batch: made in
    the child, the ruleset and its rules copied ~40 of the zygote's pages
    into every child (measured when these calls still went through ctypes).
    A ruleset is a descriptor only that child keeps; its bundle's rule is
    added at Load."""
    if not (rules.abi and rules.layer1 is not None):
        return None
    layer2 = landlock.Ruleset(rules.abi)
    for fd, is_dir, path in rules.static:
        layer2.allow_read(fd, is_dir, path)
    return layer2


def join_cgroup_slot(fd: int) -> None:
    """Join the memory cgroup the supervisor made for this child, first of all.

    ``fd`` (-1: none) is the cgroup's join file (cgroup v1's ``tasks``),
    opened by the supervisor and handed down by the zygote; writing ``0``
    moves the calling thread. Why the child and not the supervisor: a
    process moved by pid takes the kernel's global threadgroup lock for
    writing, an RCU grace period (~8 ms here) under the cgroup mutex, and in
    a storm of cold starts every other cgroup operation queued behind those
    joins (p90 ~20 ms per spare, measured); a thread moving itself skips that
    lock (~35 us). The kernel checks the file's opener's rights, not ours.
    A failure is not fatal here: the supervisor finds the child outside its
    cgroup when its Hello comes, kills it and stops handing out slots (see
    supervisor.limits.cgroup_slots). Runs before any tenant code, so no page
    the tenant touches is charged to the zygote.
    """
    if fd < 0:
        return
    try:
        os.write(fd, b"0")
    except OSError:
        pass
    finally:
        os.close(fd)


def take_batch_policy() -> None:
    """Run this process under SCHED_BATCH: the same share of the CPU as
    SCHED_OTHER at the same nice, but a wake-up never preempts the task
    running.

    Why: the supervisor wakes a child with every frame it sends, and under
    SCHED_OTHER the woken child preempted it in the middle of its loop turn
    on their shared core, so the supervisor (the hub every request crosses)
    sat runnable while one child ran its invocation, and every other child
    waited on it: at 300 tenants a profile put 145 us per request inside the
    supervisor's ``send`` calls, 34 us at one tenant. Under SCHED_BATCH the
    child runs on an idle core at once, or when the supervisor's turn ends.
    Measured on one server, the policy toggled between interleaved runs
    (three A/Bs): req/s +8% to +31% at one tenant, +8% to +29% at two, and
    +13%, +0% and +0.5% at 300 (bound there by the children's own memory
    stalls); one request at a time (an idle core), and storms of first
    requests, the same within noise.

    Leaving SCHED_OTHER for SCHED_BATCH needs no privilege. (A zygote under
    SCHED_IDLE, a successor starting ahead, is given the normal policy back
    before it forks; a child of one would be refused and keep SCHED_IDLE.)
    """
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        pass


def fds_to_keep(channel_fd: int, layer2: landlock.Ruleset | None, extra: Iterable[int]) -> tuple[int, ...]:
    """What step 3 of :func:`jail_child` leaves open, ascending: stdio, the
    channel, layer 2's ruleset and ``extra``. The zygote works it out for
    each child of a batch before the fork (sandbox.zygote.Zygote.spawn):
    in the child, asking the prebuilt loop for its descriptors and making
    the set copied ~20 of the zygote's pages into every child (the jail
    step's page faults, means over ~120 spares in two runs each: 86-87
    before, 62-68 after)."""
    return tuple(sorted({0, 1, 2, channel_fd, *extra} | ({layer2.fd} if layer2 is not None else set())))


def jail_child(devnull_fd: int, address_space: int, rules: FileRules, keep: tuple[int, ...],
               layer2: landlock.Ruleset | None = None, cgroup_fd: int = -1) -> landlock.Ruleset | None:
    """Turn a freshly forked child into a sandbox, all but the filter.

    ``keep``: the descriptors it keeps open (:func:`fds_to_keep`; layer 2's
    ruleset is added if it is made here). ``address_space`` is the absolute
    RLIMIT_AS in bytes (0: none). The caller
    creates its event loop next (epoll and the loop's wake-up socketpair are
    fds the filter would refuse) and then calls :func:`lock`. Returns the
    ruleset of Landlock's second layer (``layer2``, the zygote's
    :func:`second_layer` for this child, or one made here), for
    :func:`confine_to_bundle` at Load. ``cgroup_fd``: see :func:`join_cgroup_slot`.
    """
    join_cgroup_slot(cgroup_fd)
    # A process group of its own keeps a terminal's job-control signals (a
    # Ctrl-C to a Corral run in the foreground) away from it, as a session of
    # its own did. Not a session: the kernel gives each session a scheduling
    # autogroup, and the scheduler then weighs every child against the others
    # as a group, where the policies the supervisor sets (SCHED_IDLE for a
    # dying child's teardown) do not count: the dispatcher told of a CPU kill
    # waited for the killed child's whole teardown on their shared core.
    os.setpgid(0, 0)
    # 1. Signals: the zygote's handlers must not run here; SIGPIPE as EPIPE.
    # (_signal, not signal: the module's Enum conversions alone copy ~25 of
    # the zygote's pages into every child.)
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        _signal.signal(signum, _signal.SIG_DFL)
    _signal.signal(signal.SIGPIPE, _signal.SIG_IGN)
    _signal.set_wakeup_fd(-1)

    # 2. Landlock, layer 1: read the view, write nothing, from here on.
    # Layer 2's static rules are added now, while the fds they need are open.
    if rules.abi and rules.layer1 is not None:
        if not rules.inherited:  # else the zygote's own (confine_zygote)
            rules.layer1.enforce()
        if layer2 is None:
            layer2 = second_layer(rules)
            if layer2 is not None:
                keep = tuple(sorted({*keep, layer2.fd}))

    # 3. File descriptors: stdio to /dev/null, then everything but ``keep``:
    # the channel, layer 2's ruleset, the zygote's sealed snapshot
    # (sandbox.reshare: read-only to the child by its seals) and the
    # prebuilt loop's, which the child closes itself (sandbox.child.ChildLoop).
    for std in (0, 1, 2):
        os.dup2(devnull_fd, std)
    low = 3
    for fd in keep[3:]:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)

    # 4. Priority: a spare keeps the zygote's nice 10 while it sets itself
    # up and waits, so refilling the pool never takes a core from a live
    # request; the supervisor renices it when it assigns a script. And every
    # child runs under SCHED_BATCH (see take_batch_policy).
    take_batch_policy()

    # 5. Resource limits that need no privilege to lower. The fd table has
    # room for the files a script reads (one at a time, as a rule).
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
    resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (keep[-1] + 32, keep[-1] + 32))
    if address_space > 0:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    # 6. Identity: a uid/gid of its own, no groups, no way back.
    if os.geteuid() == 0:
        uid = UID_BASE + os.getpid() % UID_SPAN
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    jailcalls.not_dumpable()
    return layer2


def confine_to_bundle(layer2: landlock.Ruleset | None, bundle_dir: str,
                      package_dirs: list[str]) -> None:
    """Landlock, layer 2: from now on, of all bundles only ``bundle_dir`` is
    readable, and of the package store only ``package_dirs`` (its set's entries).

    Runs under the seccomp filter, at Load, before any tenant code: an O_PATH
    open, one rule per directory and the restriction; raises if any step
    fails, so that the script is never imported half-confined.
    """
    if layer2 is None:
        return
    try:
        for path in [bundle_dir, *package_dirs]:
            fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                layer2.allow_read(fd, True, path)
            finally:
                os.close(fd)
        layer2.enforce()
    finally:
        layer2.close()


def lock(bpf: bytes) -> None:
    """The filter. After this call only the allowlist exists."""
    seccomp_policy.load_bpf(bpf)


def mapped_bytes() -> int:
    """Current virtual size; the zygote reads it before the file view hides /proc."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def describe(report: ZygoteJail) -> dict:
    return {
        "namespaces": report.namespaces,
        "view": report.view,
        "landlock": report.landlock,
        "problems": report.problems,
        "python": sys.version.split()[0],
    }
