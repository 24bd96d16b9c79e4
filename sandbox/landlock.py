"""Landlock: which files a child may read, enforced by the kernel.

The mount namespace (:mod:`sandbox.file_view`) decides what *exists* in the
jail; Landlock decides what a child may *open* within it, per child. Two
layers, stacked (a layer can only take rights away):

1. At spare birth, before the seccomp filter: read-only access to the whole
   view (standard library, runtime, libraries, package store, bundles root).
   The zygote builds this ruleset once; a child enforces it with one call.
2. At ``Load``: read-only access to the same trees *except* the bundles
   root and the package store, plus the child's own bundle directory and
   its own dependency set's package entries. The static rules are added
   at spare birth (before the filter) to a ruleset of the child's own; only
   the bundle's rule and the final ``landlock_restrict_self`` happen after
   the filter is locked, which is why that filter allows
   ``landlock_add_rule`` and ``landlock_restrict_self`` (both can only ever
   restrict the caller) but not ``landlock_create_ruleset``.

Nothing is granted but reading: no write, truncate, remove, make, refer, or
execute (execve) right exists in any layer, and where the kernel knows them
(ABI 4+), TCP bind/connect are handled with no rule, and (ABI 6+) signals
and abstract unix sockets are scoped to the child's own domain.

Where Landlock is missing (old kernel, disabled LSM), :func:`abi_version`
says why and the caller reports it; the mount view and seccomp remain.
"""

from __future__ import annotations

import os

from . import jailcalls

ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5
ACCESS_NET_BIND_TCP = 1 << 0  # ABI 4
ACCESS_NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

READ_DIR = ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR
READ_FILE = ACCESS_FS_READ_FILE

#: Set in this process already (Landlock requires it of an unprivileged caller).
_no_new_privs = False
#: ``CORRAL_LANDLOCK=off`` (read at import: the zygote clears its environment
#: before it asks) makes :func:`abi_version` report Landlock as unavailable,
#: as on a kernel without it: for tests of that fallback, or to rule Landlock out.
_TURNED_OFF = os.environ.get("CORRAL_LANDLOCK", "").lower() == "off"


def abi_version() -> tuple[int, str]:
    """The kernel's Landlock ABI (0 if unusable) and, if 0, why."""
    if _TURNED_OFF:
        return 0, "Landlock unavailable: turned off by CORRAL_LANDLOCK=off"
    try:
        return jailcalls.landlock_abi(), ""
    except OSError as exc:
        return 0, f"Landlock unavailable: {exc.strerror}"


def _handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: execute .. make_sym
    if abi >= 2:
        rights |= ACCESS_FS_REFER
    if abi >= 3:
        rights |= ACCESS_FS_TRUNCATE
    if abi >= 5:
        rights |= ACCESS_FS_IOCTL_DEV
    return rights


class Ruleset:
    """One Landlock ruleset: read-only rules, then :meth:`enforce`."""

    def __init__(self, abi: int) -> None:
        assert abi > 0
        net = scoped = 0
        size = 8  # the attribute as ABI 1 knows it: the kernel refuses fields it does not
        if abi >= 4:
            net = ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP
            size = 16
        if abi >= 6:
            scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
            size = 24
        self.fd: int = jailcalls.landlock_create(_handled_fs(abi), net, scoped, size)

    def allow_read(self, path_fd: int, is_dir: bool, name: str = "") -> None:
        """Allow reading beneath ``path_fd`` (an O_PATH fd of a directory or file)."""
        try:
            jailcalls.landlock_add_path(self.fd, READ_DIR if is_dir else READ_FILE, path_fd)
        except OSError as exc:
            raise OSError(exc.errno, f"landlock_add_rule {name or path_fd}: {os.strerror(exc.errno)}") from None

    def enforce(self) -> None:
        """Add this ruleset as a layer on the calling thread's domain; irreversible."""
        global _no_new_privs
        if not _no_new_privs:  # once: prctl is refused under the seccomp filter
            jailcalls.no_new_privs()
            _no_new_privs = True
        jailcalls.landlock_restrict(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
