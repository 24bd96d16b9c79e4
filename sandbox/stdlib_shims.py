"""Standard-library calls that ask the system for what the jail hides, answered inside it.

A few everyday calls fail in the jail not because what they ask is
forbidden but because the answer lives in a file the view does not show or
on a descriptor a child does not have:

* ``getpass.getuser()``, ``os.path.expanduser("~")``, ``pathlib.Path.home()``
  look the process's own uid up in ``/etc/passwd``, which is the host's and
  not in the view: a bare ``KeyError`` (``getpwuid(): uid not found``) or
  ``RuntimeError``. The child's own uid and gid are answered with a fixed
  sandbox user (:data:`USER`, home ``/``, read-only like the rest), in
  ``pwd`` and ``grp``; every other name or id stays unknown (``KeyError``),
  as before: nothing of the host's accounts is shown.

Like :mod:`sandbox.unavailable`, the patches are installed in the zygote and
switched on in a child just before its script is imported
(:func:`activate`); until then each patched call is the original.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable
from typing import Any

from . import import_patches

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

    def patched_getpwuid(uid: Any, /) -> Any:
        if _active and isinstance(uid, int) and uid == os.getuid():
            return _own_passwd(pwd)
        return getpwuid(uid)

    def patched_getpwnam(name: Any, /) -> Any:
        if _active and name == USER:
            return _own_passwd(pwd)
        return getpwnam(name)

    def patched_getpwall() -> list:
        entries = getpwall()
        if _active and not any(e.pw_uid == os.getuid() for e in entries):
            entries.append(_own_passwd(pwd))
        return entries

    for patched, original in ((patched_getpwuid, getpwuid), (patched_getpwnam, getpwnam),
                              (patched_getpwall, getpwall)):
        patched.__name__ = original.__name__
        patched.__doc__ = original.__doc__
    pwd.getpwuid, pwd.getpwnam, pwd.getpwall = patched_getpwuid, patched_getpwnam, patched_getpwall


def _patch_grp(grp: types.ModuleType) -> None:
    getgrgid, getgrnam, getgrall = grp.getgrgid, grp.getgrnam, grp.getgrall

    def patched_getgrgid(id: Any) -> Any:  # noqa: A002 - CPython's keyword
        if _active and isinstance(id, int) and id == os.getgid():
            return _own_group(grp)
        return getgrgid(id)

    def patched_getgrnam(name: Any) -> Any:
        if _active and name == USER:
            return _own_group(grp)
        return getgrnam(name)

    def patched_getgrall() -> list:
        entries = getgrall()
        if _active and not any(e.gr_gid == os.getgid() for e in entries):
            entries.append(_own_group(grp))
        return entries

    for patched, original in ((patched_getgrgid, getgrgid), (patched_getgrnam, getgrnam),
                              (patched_getgrall, getgrall)):
        patched.__name__ = original.__name__
        patched.__doc__ = original.__doc__
    grp.getgrgid, grp.getgrnam, grp.getgrall = patched_getgrgid, patched_getgrnam, patched_getgrall


PATCHES: dict[str, Callable[[types.ModuleType], None]] = {
    "pwd": _patch_pwd,
    "grp": _patch_grp,
}


def install() -> None:
    """In the zygote: patch what is imported, hook what is not (all inactive)."""
    import_patches.install(PATCHES)


def activate() -> None:
    """In a child, before its script runs: the patched calls answer for the jail."""
    global _active
    _active = True
