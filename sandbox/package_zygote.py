"""Package zygotes: a zygote per dependency set, with the set already imported.

Importing FastAPI costs ~220 ms and Django ~75 ms, per process. A child of
the base zygote pays that on every cold start. A package zygote is forked
from the base zygote (so it has the runtime, the jail's prepared rules, the
seccomp program, the file view), imports the top-level modules of every
wheel in one set, freezes the GC, and then serves spawn requests on a
control socket of its own: its children are jailed by the very same code
path as the base's (:func:`sandbox.child.main`), and find the set's modules
already in ``sys.modules``.

Package code runs here, outside any tenant, so the package zygote confines
itself before it imports anything: it dies with the base zygote
(``PR_SET_PDEATHSIG``), is under Landlock's first layer (read the view, write
nothing, and no mount, which Landlock refuses to a confined process: the
base zygote's own, inherited, or taken here where the base could not), and
drops every capability but the two its children need to take their own uid
(``CAP_SETUID``, ``CAP_SETGID``). What it imports is a tenant's choice of
wheels from the index, so it then loads a seccomp filter that refuses every
call reaching another process (signals, tracing, another's memory, limits
or scheduling): with ``CAP_SETUID`` a wheel's import code could otherwise
take another tenant's child's uid and signal it.

Past the top-level imports, :mod:`sandbox.package_warmup` imports the
set's submodules and serves one request through a synthetic app of the
runtime's own per framework, so lazy imports and first-use caches are
shared too.

Tenant code is not run here: a script's top level (building its app) still
runs per child, since a zygote per *script* would cost a process per tenant.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import os
import signal
import sys
import time

from . import heap_fill, jail, package_warmup, seccomp_policy

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
CAP_SETGID = 6
CAP_SETUID = 7
CAP_LAST = 63
_SKIP = frozenset({"test", "tests", "testing", "docs", "doc", "examples", "benchmarks", "bin", "scripts"})


def top_level_modules(package_dirs: list[str]) -> list[str]:
    """The importable top-level names of the wheels in ``package_dirs``:
    each ``.dist-info``'s ``top_level.txt``, else the first parts of its RECORD."""
    names: set[str] = set()
    for directory in package_dirs:
        try:
            infos = [n for n in os.listdir(directory) if n.endswith(".dist-info")]
        except OSError:
            continue
        for info in infos:
            names.update(_names_of(os.path.join(directory, info)))
    return sorted(n for n in names if n.isidentifier() and not n.startswith("__") and n not in _SKIP)


def _names_of(info: str) -> set[str]:
    try:
        with open(os.path.join(info, "top_level.txt"), encoding="utf-8") as f:
            return {line.strip().replace("/", ".").split(".")[0] for line in f if line.strip()}
    except OSError:
        pass
    found: set[str] = set()
    try:
        with open(os.path.join(info, "RECORD"), encoding="utf-8") as f:
            for line in f:
                first = line.split(",", 1)[0].split("/", 1)[0]
                if first.endswith((".dist-info", ".data", ".libs", ".pth")):
                    continue
                if first.endswith(".py"):
                    found.add(first[:-3])
                elif ".so" in first:
                    found.add(first.split(".", 1)[0])
                elif "." not in first and "/" in line.split(",", 1)[0]:
                    found.add(first)
    except OSError:
        pass
    return found


def _drop_capabilities() -> None:
    """Keep only what a child's jail needs of root: setting its own uid and gid."""
    for cap in range(CAP_LAST + 1):
        if cap not in (CAP_SETUID, CAP_SETGID):
            _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the kernel's last cap: fine
    if os.geteuid() != 0:
        return

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    keep = (1 << CAP_SETUID) | (1 << CAP_SETGID)
    data = (Data * 2)(Data(keep, keep, 0), Data(0, 0, 0))
    if _libc.capset(ctypes.byref(Header(0x20080522, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), f"capset: {os.strerror(ctypes.get_errno())}")


def become(rules: jail.FileRules, package_dirs: list[str], bpf: bytes) -> dict:
    """Turn a fresh fork of the base zygote into the zygote of one set; returns its report.
    ``bpf``: :func:`sandbox.seccomp_policy.compile_package_zygote_policy`'s filter."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the base zygote died before the line above
        os._exit(0)
    problems: list[str] = []
    if rules.layer1 is None:
        problems.append("no landlock: the package zygote imports unconfined by it")
    elif not rules.inherited:  # else the base zygote's own (jail.confine_zygote), and so ours
        rules.layer1.enforce()  # children enforce it again: the same layer twice is the same
    try:
        _drop_capabilities()
    except OSError as exc:
        problems.append(str(exc))
    # The set's import code is the tenant's choice of wheels: it may reach no
    # other process (seccomp_policy.compile_package_zygote_policy).
    seccomp_policy.load_bpf(bpf)
    for directory in package_dirs:
        if directory not in sys.path:
            sys.path.append(directory)
    started = time.perf_counter()
    imported, failed = [], {}
    for name in top_level_modules(package_dirs):
        try:
            importlib.import_module(name)
            imported.append(name)
        except BaseException as exc:  # noqa: BLE001 - a module that cannot load here is the tenant's to import
            failed[name] = f"{type(exc).__name__}: {exc}"[:200]
    seconds = time.perf_counter() - started
    warmed = package_warmup.warm(imported, package_dirs)
    gc.collect()
    gc.freeze()
    heap_fill.fill_partial_pools()  # as in the base zygote (see sandbox.heap_fill)
    heap_fill.fill_malloc_bins()
    return {"imported": imported, "failed": failed, "import_s": round(seconds, 3), "warm": warmed,
            "problems": problems}
