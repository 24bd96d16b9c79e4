"""Standard-library calls that ask the system for what the jail hides, answered inside it.

A few everyday calls fail in the jail not because what they ask is
forbidden but because the answer lives in a file the view does not show, on
a descriptor a child does not have, or behind a program it cannot start;
or they ask the host about itself, and glibc takes the refusal for an answer:

* ``getpass.getuser()``, ``os.path.expanduser("~")``, ``pathlib.Path.home()``
  look the process's own uid up in ``/etc/passwd``, which is the host's and
  not in the view: a bare ``KeyError`` (``getpwuid(): uid not found``) or
  ``RuntimeError``. The child's own uid and gid are answered with a fixed
  sandbox user (:data:`USER`, home ``/``, read-only like the rest), in
  ``pwd`` and ``grp``; every other name or id stays unknown (``KeyError``),
  as before: nothing of the host's accounts is shown.
* ``faulthandler`` writes to a file descriptor, and the tenant's
  ``sys.stderr`` is the trace's log stream, which has none:
  ``faulthandler.enable()`` raised ``io.UnsupportedOperation: fileno``.
  ``dump_traceback()`` to the log stream now writes the same text to it
  (one log line per line, level ``error``); ``enable()`` and ``register()``
  with it succeed and write to the child's fd 2, which is ``/dev/null``: a
  signal handler cannot send a log frame, and a fatal error ends the child,
  which the supervisor logs. ``dump_traceback_later()`` needs a watchdog
  thread, which a child cannot start: a ``RuntimeError`` saying so, as for
  every thread.
* ``os.sysconf("SC_PHYS_PAGES")`` (and ``SC_AVPHYS_PAGES``): glibc asks
  ``sysinfo()``, which the jail refuses (it describes the host), and does
  not check the answer: the call returned stack garbage (a number in the
  quintillions), and ``page size * phys pages``, the usual idiom for "the
  memory there is", sized caches after it. Now an ``OSError`` (EINVAL)
  saying that the host's memory is not the worker's.
* ``ctypes.util.find_library()`` asks ``ldconfig``, ``gcc`` or ``ld``,
  programs a child cannot start: it found nothing, not even ``c``. It now
  also looks in the system's library folders of the view, which show the
  libraries the standard library's extensions and manylinux wheels link.
* ``tempfile.SpooledTemporaryFile`` moves its data to a file on disk past
  ``max_size``, and a child has nowhere to write (OSError: EROFS): every
  upload past the frameworks' spool size failed (Starlette's 1 MiB,
  Werkzeug's 500 KiB). It now stays in memory, where Pyodide's in-memory
  ``/tmp`` keeps it on Cloudflare too (the worker's memory limit bounds it).

* ``open(os.devnull, "w")`` (and ``os.open`` of it): refused (EROFS) like
  every open for writing (ENOENT for reading); it now answers a copy of the
  child's fd 2, which is ``/dev/null`` (see :func:`_patch_io`).

Like :mod:`sandbox.unavailable`, the patches are installed in the zygote and
switched on in a child just before its script is imported
(:func:`activate`); until then each patched call is the original.
"""

from __future__ import annotations

import _thread
import errno
import functools
import os
import re
import sys
import types
from collections.abc import Callable
from typing import Any

from . import import_patches, logs

#: The name, group and home of a child's own uid and gid.
USER = "worker"
HOME = "/"
SHELL = "/usr/sbin/nologin"

_active = False


def _own_passwd(pwd: types.ModuleType) -> Any:
    return pwd.struct_passwd((USER, "x", os.getuid(), os.getgid(), "Corral worker", HOME, SHELL))


def _own_group(grp: types.ModuleType) -> Any:
    return grp.struct_group((USER, "x", os.getgid(), []))


def _patch_pwd(pwd: types.ModuleType) -> None:
    getpwuid, getpwnam, getpwall = pwd.getpwuid, pwd.getpwnam, pwd.getpwall

    @functools.wraps(getpwuid)
    def patched_getpwuid(uid: Any, /) -> Any:
        if _active and isinstance(uid, int) and uid == os.getuid():
            return _own_passwd(pwd)
        return getpwuid(uid)

    @functools.wraps(getpwnam)
    def patched_getpwnam(name: Any, /) -> Any:
        if _active and name == USER:
            return _own_passwd(pwd)
        return getpwnam(name)

    @functools.wraps(getpwall)
    def patched_getpwall() -> list:
        entries = getpwall()
        if _active and not any(e.pw_uid == os.getuid() for e in entries):
            entries.append(_own_passwd(pwd))
        return entries

    pwd.getpwuid, pwd.getpwnam, pwd.getpwall = patched_getpwuid, patched_getpwnam, patched_getpwall


def _patch_grp(grp: types.ModuleType) -> None:
    getgrgid, getgrnam, getgrall = grp.getgrgid, grp.getgrnam, grp.getgrall

    @functools.wraps(getgrgid)
    def patched_getgrgid(id: Any) -> Any:  # noqa: A002 - CPython's keyword
        if _active and isinstance(id, int) and id == os.getgid():
            return _own_group(grp)
        return getgrgid(id)

    @functools.wraps(getgrnam)
    def patched_getgrnam(name: Any) -> Any:
        if _active and name == USER:
            return _own_group(grp)
        return getgrnam(name)

    @functools.wraps(getgrall)
    def patched_getgrall() -> list:
        entries = getgrall()
        if _active and not any(e.gr_gid == os.getgid() for e in entries):
            entries.append(_own_group(grp))
        return entries

    grp.getgrgid, grp.getgrnam, grp.getgrall = patched_getgrgid, patched_getgrnam, patched_getgrall


#: faulthandler's own limit on the frames it writes.
_MAX_FRAMES = 100


def format_stack(frame: types.FrameType | None, all_threads: bool) -> str:
    """What ``faulthandler.dump_traceback`` writes for the calling thread (the only one)."""
    if all_threads:
        lines = [f"Current thread 0x{_thread.get_ident():016x} (most recent call first):"]
    else:
        lines = ["Stack (most recent call first):"]
    depth = 0
    while frame is not None and depth < _MAX_FRAMES:
        code = frame.f_code
        line = frame.f_lineno if frame.f_lineno is not None else "???"
        lines.append(f'  File "{code.co_filename}", line {line} in {code.co_name}')
        frame = frame.f_back
        depth += 1
    if frame is not None:
        lines.append("  ...")
    return "\n".join(lines) + "\n"


def _log_stream(file: Any) -> bool:
    """Is ``file`` (None: ``sys.stderr``) one of the trace's log streams, which have no fd?"""
    return isinstance(sys.stderr if file is None else file, logs.LineWriter)


def _patch_faulthandler(faulthandler: types.ModuleType) -> None:
    enable, register = faulthandler.enable, faulthandler.register
    dump_traceback, dump_later = faulthandler.dump_traceback, faulthandler.dump_traceback_later

    @functools.wraps(enable)
    def patched_enable(file: Any = None, all_threads: bool = True) -> None:
        if _active and _log_stream(file):
            file = 2  # /dev/null in a child: see the module's docstring
        if file is None:
            return enable(all_threads=all_threads)
        return enable(file, all_threads)

    @functools.wraps(register)
    def patched_register(signum: int, file: Any = None, all_threads: bool = True,
                         chain: bool = False) -> None:
        if _active and _log_stream(file):
            file = 2
        if file is None:
            return register(signum, all_threads=all_threads, chain=chain)
        return register(signum, file, all_threads, chain)

    @functools.wraps(dump_traceback)
    def patched_dump_traceback(file: Any = None, all_threads: bool = True) -> None:
        if _active and _log_stream(file):
            stream = sys.stderr if file is None else file
            stream.write(format_stack(sys._getframe(1), bool(all_threads)))
            stream.flush()
            return None
        if file is None:
            return dump_traceback(all_threads=all_threads)
        return dump_traceback(file, all_threads)

    @functools.wraps(dump_later)
    def patched_dump_later(timeout: float, repeat: bool = False, file: Any = None,
                           exit: bool = False) -> None:  # noqa: A002 - CPython's keyword
        if _active:
            from . import unavailable

            raise RuntimeError(unavailable._message("faulthandler.dump_traceback_later()",
                                                    unavailable.THREADS + " (it needs a watchdog thread)"))
        if file is None:
            return dump_later(timeout, repeat, exit=exit)
        return dump_later(timeout, repeat, file, exit)

    faulthandler.enable, faulthandler.register = patched_enable, patched_register
    faulthandler.dump_traceback, faulthandler.dump_traceback_later = patched_dump_traceback, patched_dump_later


def _patch_os(os_module: types.ModuleType) -> None:
    sysconf = os_module.sysconf
    host_memory = {os_module.sysconf_names[n] for n in ("SC_PHYS_PAGES", "SC_AVPHYS_PAGES")
                   if n in os_module.sysconf_names}

    @functools.wraps(sysconf)
    def patched_sysconf(name: Any, /) -> int:
        if _active:
            number = os_module.sysconf_names.get(name) if isinstance(name, str) else name
            if number in host_memory:
                raise OSError(errno.EINVAL, f"os.sysconf({name!r}) is not available in Corral's sandbox: "
                              "the host's memory is not the worker's (its limit is the script's memory_mb)")
        return sysconf(name)

    os_module.sysconf = patched_sysconf

    raw_open = os_module.open

    @functools.wraps(raw_open)
    def patched_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        try:
            return raw_open(path, flags, mode, dir_fd=dir_fd)
        except OSError as exc:
            if not _devnull_refused(exc, path):
                raise
            return os_module.dup(_DEVNULL_FD)

    os_module.open = patched_open


#: A child's fd 2: ``/dev/null``, opened read-write before the jail closed in
#: (sandbox.jail.jail_child), so writes to it are the discarding sink itself.
_DEVNULL_FD = 2
#: How the jail answers an open of ``/dev/null``: for writing, seccomp's EROFS
#: (every open for writing); for reading, ENOENT (not in the file view).
_DEVNULL_REFUSALS = (errno.EROFS, errno.ENOENT)


def _devnull_refused(exc: OSError, path: Any) -> bool:
    """Whether ``exc`` is the jail's refusal of ``/dev/null`` in a child
    (both ``open`` patches answer it with a copy of fd 2)."""
    if not (_active and exc.errno in _DEVNULL_REFUSALS):
        return False
    try:
        return os.fsdecode(path) == os.devnull
    except TypeError:  # an fd, or not a path at all
        return False


def _patch_io(io_module: types.ModuleType) -> None:
    """``open(os.devnull, "w")``, the usual way to silence output (numpy.distutils,
    ``redirect_stdout`` sinks, progress bars told to be quiet), failed with
    ``OSError: EROFS``: the jail refuses every open for writing, ``/dev/null``
    included (and reading it, ENOENT: it is not in the view). Only those
    refusals, for that path, now answer a file on a copy of the child's
    fd 2, which is ``/dev/null`` already (writes vanish as they would
    there, reads find its end); the jail is unchanged, and every other open
    is the original call."""
    import builtins

    original = io_module.open

    @functools.wraps(original)
    def patched_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        try:
            return original(file, mode, *args, **kwargs)
        except OSError as exc:
            if not _devnull_refused(exc, file):
                raise
            kwargs.pop("opener", None)  # the descriptor is ours (and closed with the file)
            kwargs.pop("closefd", None)
            return original(os.dup(_DEVNULL_FD), mode.replace("x", "w"), *args[:4], **kwargs)

    io_module.open = patched_open
    if builtins.open is original:
        builtins.open = patched_open


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.partition(".so.")[2].split("."))


def visible_library(name: str) -> str | None:
    """The file name (a soname: ``libssl.so.3``) of the library ``name`` the view
    shows in the system's library folders, the highest version first; None if none."""
    from . import file_view

    pattern = re.compile(rf"lib{re.escape(name)}\.so(\.[0-9]+)+")
    for folder in file_view.system_dirs():
        try:
            found = [n for n in os.listdir(folder) if pattern.fullmatch(n)]
        except OSError:
            continue
        if found:
            return max(found, key=_version)
    return None


def _patch_ctypes_util(util: types.ModuleType) -> None:
    find_library = util.find_library

    @functools.wraps(find_library)
    def patched_find_library(name: str) -> str | None:
        found = find_library(name)
        if found is None and _active:
            found = visible_library(name)
        return found

    util.find_library = patched_find_library


def _patch_tempfile(tempfile: types.ModuleType) -> None:
    spooled = tempfile.SpooledTemporaryFile
    original = spooled.rollover

    @functools.wraps(original)
    def patched_rollover(self: Any) -> None:
        try:
            original(self)
        except OSError:
            if not _active:
                raise
            self._max_size = 0  # no file to move to: stay in memory, and stop asking

    spooled.rollover = patched_rollover


PATCHES: dict[str, Callable[[types.ModuleType], None]] = {
    "pwd": _patch_pwd,
    "grp": _patch_grp,
    "faulthandler": _patch_faulthandler,
    "os": _patch_os,
    "io": _patch_io,
    "ctypes.util": _patch_ctypes_util,
    "tempfile": _patch_tempfile,
}


def install() -> None:
    """In the zygote: patch what is imported, hook what is not (all inactive)."""
    import_patches.install(PATCHES)


def activate() -> None:
    """In a child, before its script runs: the patched calls answer for the jail."""
    global _active
    _active = True
