"""The jail's file system: a read-only view of what a child may read, nothing else.

Built once per zygote, in its private mount namespace, so every child
forked from it lives in it. The root is an empty tmpfs; into it go, as
read-only bind mounts at the *same absolute paths* they have on the host
(so ``sys.path``, ``__file__`` of every pre-imported module and the
libraries' load paths stay valid):

* the standard library, ``lib-dynload`` included, but not the base
  interpreter's ``site-packages`` (or ``dist-packages``) inside it: whatever
  the host has installed there (boto3, numpy...) is no tenant's package, and
  would bypass the package store. An empty read-only tmpfs is mounted over
  it (:attr:`FileView.masked`); the runtime's own packages below, if the
  interpreter has them there, are mounted back into it;
* the runtime's own code a child runs: ``sandbox/``, ``protocol/``, ``msgspec``,
  ``greenlet`` (``pyodide.ffi.run_sync``, see :mod:`sandbox.run_sync`);
  ``brotli`` (two top-level files of site-packages, not a folder) is not in
  the view: the zygote imports it before the view is built
  (:data:`sandbox.preload.RUNTIME`), and children inherit the module;
* the shared libraries the standard library's extension modules load
  lazily (``libsqlite3``, ``libffi``, ...), found by reading their
  ``DT_NEEDED`` (:mod:`sandbox.elf_needed`), with the symlinks the dynamic
  loader follows to reach them (``/lib -> usr/lib``, sonames), and the
  system libraries manylinux wheels may link (:data:`MANYLINUX_LIBRARIES`);
* the package store's unpacked wheels (``<state_dir>/packages/entries``),
  for wheels' native code; only that folder of the store: its lock files and
  downloads in progress do not exist in the view (ENOENT, as SPEC has every
  path outside it), where they were there and refused (EACCES);
* the bundles root (``<state_dir>/bundles``), also ``noexec``: native code
  may be mapped executable from the package store, never from a bundle;
* the system's public data the standard library reads, where the host has
  it (:func:`_system_data`), ``noexec``: the time zone database
  (``zoneinfo``), ``/etc/mime.types`` (``mimetypes``), OpenSSL's CA
  bundle (``ssl.create_default_context()``) and glibc's ``C.UTF-8`` locale
  (``locale.setlocale``).

Everything else does not exist: ``open('/etc/passwd')`` is ENOENT, and so is
``Path('/usr/share/locale').exists()`` (which CPython only answers False
to for ENOENT). There is no ``/proc``, ``/dev`` or ``/tmp``.

The view is built with ``pivot_root`` into the tmpfs, the host's tree
detached afterwards: the host's file system is not even in the namespace,
so no chroot escape could reach it. Which of these files a particular
child may open is Landlock's job (:mod:`sandbox.landlock`), per child.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import sysconfig
from dataclasses import dataclass, field

from . import elf_needed

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 2
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
#: Where the host's root is while the view is assembled; gone afterwards.
_OLD_ROOT = "/.host"


@dataclass
class FileView:
    """What the view holds; all paths absolute and free of symlinks."""

    #: Directories mounted read-only (native code may run from them).
    trees: list[str] = field(default_factory=list)
    #: Shared library files mounted read-only, one by one.
    libraries: list[str] = field(default_factory=list)
    #: The package store's entries folder (read-only, native code allowed).
    packages: str = ""
    #: The bundles root (read-only, noexec); Landlock's layer 2 narrows it to one bundle.
    bundles: str = ""
    #: Symlinks recreated so that host paths resolve the same way: path -> target.
    symlinks: dict[str, str] = field(default_factory=dict)
    #: Directories inside a tree that the view hides (an empty read-only
    #: tmpfs over each): the base interpreter's site-packages. Trees and
    #: libraries beneath one are mounted back into it.
    masked: list[str] = field(default_factory=list)
    #: The system's public data (directories and files), read-only and noexec.
    data: list[str] = field(default_factory=list)

    def hidden(self, path: str) -> bool:
        """Is ``path`` in a masked directory and not in a tree mounted back into it?"""
        masks = [m for m in self.masked if _beneath(path, [m])]
        return any(not any(_beneath(t, [m]) and _beneath(path, [t]) for t in self.trees) for m in masks)

    def readable(self, with_bundles: bool, split_masked: bool = False) -> list[tuple[str, bool]]:
        """``(path, is_dir)`` a child may read: Landlock rules of layer 1 or 2.

        ``split_masked``: the view could not be built (no mount namespace),
        so a masked directory is really there; a tree holding one is then
        given as its entries, the masked directory left out, so Landlock
        keeps it out instead."""
        out: list[tuple[str, bool]] = []
        for path in self.trees:
            out += self._unmasked(path) if split_masked else [(path, True)]
        out += [(path, True) for path in sorted({os.path.dirname(p) for p in self.libraries})]
        out += [(path, os.path.isdir(path)) for path in self.data]
        if self.packages:
            out.append((self.packages, True))
        if with_bundles and self.bundles:
            out.append((self.bundles, True))
        return out

    def _unmasked(self, path: str) -> list[tuple[str, bool]]:
        if path in self.masked:
            return []
        if not any(_beneath(m, [path]) for m in self.masked):
            return [(path, os.path.isdir(path))]
        try:
            names = sorted(os.listdir(path))
        except OSError:
            return []
        out: list[tuple[str, bool]] = []
        for name in names:
            out += self._unmasked(os.path.join(path, name))
        return out


def system_dirs() -> list[str]:
    arch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    return [f"/lib/{arch}", f"/usr/lib/{arch}", "/lib", "/usr/lib", "/lib64", "/usr/lib64"]


def _beneath(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


class _Planner:
    def __init__(self) -> None:
        self.view = FileView()

    def mirror(self, path: str, depth: int = 0) -> str:
        """Resolve ``path`` like the kernel, recording each symlink met on the way."""
        if depth > 40:
            raise OSError(f"too many symlinks resolving {path}")
        parts = [p for p in os.path.normpath(path).split("/") if p]
        current = "/"
        for i, part in enumerate(parts):
            candidate = os.path.join(current, part)
            if os.path.islink(candidate):
                target = os.readlink(candidate)
                self.view.symlinks[candidate] = target
                resolved = os.path.normpath(os.path.join(current, target))
                return self.mirror(os.path.join(resolved, *parts[i + 1:]), depth + 1)
            current = candidate
        return current

    def libraries_named(self, names: tuple[str, ...]) -> None:
        """Add the system libraries ``names`` (those this host has) and their closure."""
        found = []
        for name in names:
            path = next((c for c in (os.path.join(d, name) for d in system_dirs()) if os.path.isfile(c)),
                        None)
            if path is not None:
                real = self.mirror(path)
                if real not in self.view.libraries:
                    self.view.libraries.append(real)
                found.append(real)
        self.libraries_of(found)

    def libraries_of(self, objects: list[str]) -> None:
        """Add the DT_NEEDED closure of ``objects`` to the view's libraries."""
        system = system_dirs()
        seen: set[str] = set()
        todo = list(objects)
        while todo:
            obj = todo.pop()
            names, runpath = elf_needed.needed(obj)
            for name in names:
                if name in seen:
                    continue
                seen.add(name)
                candidates = [name] if "/" in name else [os.path.join(d, name) for d in runpath + system]
                found = next((c for c in candidates if os.path.isfile(c)), None)
                if found is None:
                    continue  # the extension module will fail to import, clearly
                real = self.mirror(found)
                if real not in self.view.libraries:
                    self.view.libraries.append(real)
                    todo.append(real)


#: The system libraries a manylinux wheel may link without vendoring them
#: (PEP 600's policy, minus the X11/GL ones no worker uses). Whatever else a
#: wheel's extensions need is vendored in its ``<name>.libs/`` folder, inside
#: its package-store entry. The view is built once per zygote, before any
#: wheel is known, so the policy's set is shown up front.
MANYLINUX_LIBRARIES = ("libgcc_s.so.1", "libstdc++.so.6", "libm.so.6", "libdl.so.2", "librt.so.1",
                       "libc.so.6", "libnsl.so.1", "libutil.so.1", "libpthread.so.0", "libresolv.so.2",
                       "libz.so.1", "libexpat.so.1", "libcrypt.so.1")


def _lib_dynload() -> list[str]:
    return [p for p in sys.path if p.rstrip("/").endswith("lib-dynload") and os.path.isdir(p)]


def _base_site_packages() -> list[str]:
    """Where the base interpreter (not a virtualenv) installs packages, and
    the ``site-packages``/``dist-packages`` folders beside the standard library."""
    import site

    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    stdlib = os.path.dirname(os.__file__)
    found = [base["purelib"], base["platlib"], *site.getsitepackages([sys.base_prefix, sys.base_exec_prefix]),
             os.path.join(stdlib, "site-packages"), os.path.join(stdlib, "dist-packages")]
    return [p for i, p in enumerate(found) if p not in found[:i] and os.path.isdir(p)]


#: Where glibc looks for a locale's compiled data when ``LOCPATH`` is unset
#: (``locale/localeinfo.h``'s ``COMPLOCALEDIR``).
LOCALE_DIR = "/usr/lib/locale"
#: The C library's own UTF-8 locale, the only one the view shows: the
#: locales a host generated (its ``locale-archive``) are its configuration.
C_UTF8_LOCALES = ("C.utf8", "C.UTF-8")


def _system_data(planner: _Planner) -> None:
    """The host's time zone database, MIME types, CA bundle and C.UTF-8 locale, those it has.

    Public data, and what the standard library falls back without: every
    ``ZoneInfo`` key unknown unless a tenant shipped ``tzdata``, ``.webp``
    or ``.woff2`` served as ``None``, no CA in a default SSL context, and
    ``locale.setlocale(locale.LC_ALL, "C.UTF-8")`` an ``unsupported locale
    setting`` (``C`` and ``POSIX`` are built into glibc; ``C.UTF-8`` is a
    directory of glibc's, shipped with it, not generated by the host).
    """
    import ssl
    import zoneinfo

    wanted = [next((p for p in zoneinfo.TZPATH if os.path.isdir(p)), ""), "/etc/mime.types",
              ssl.get_default_verify_paths().openssl_cafile or "",
              next((d for d in (os.path.join(LOCALE_DIR, n) for n in C_UTF8_LOCALES) if os.path.isdir(d)), "")]
    for path in wanted:
        if path and os.path.exists(path):
            real = planner.mirror(os.path.abspath(path))
            if real not in planner.view.data:
                planner.view.data.append(real)


def plan(bundles_dir: str, packages_dir: str) -> FileView:
    """Work out the view from the running interpreter (before any isolation)."""
    import greenlet
    import msgspec

    import protocol

    planner = _Planner()
    roots = [os.path.dirname(os.__file__), *_lib_dynload(),
             os.path.dirname(os.path.abspath(__file__)),
             os.path.dirname(os.path.abspath(protocol.__file__)),
             os.path.dirname(os.path.abspath(msgspec.__file__)),
             os.path.dirname(os.path.abspath(greenlet.__file__))]
    trees: list[str] = []
    for root in roots:
        real = planner.mirror(os.path.abspath(root))
        if real not in trees:
            trees.append(real)
    trees.sort(key=len)
    view = planner.view
    masked = sorted({planner.mirror(os.path.abspath(p)) for p in _base_site_packages()}, key=len)
    # A masked folder counts only inside a tree (elsewhere it is not shown anyway).
    view.masked = [m for m in masked if _beneath(m, trees) and m not in trees]
    # A tree beneath another is part of it, unless a mask lies between them.
    view.trees = [t for i, t in enumerate(trees)
                  if not _beneath(t, trees[:i]) or any(_beneath(t, [m]) for m in view.masked)]
    objects = []
    for folder in [*_lib_dynload(), os.path.dirname(msgspec.__file__),
                   os.path.dirname(greenlet.__file__)]:
        objects += [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if ".so" in n]
    planner.libraries_of(objects)
    planner.libraries_named(MANYLINUX_LIBRARIES)
    view.libraries = [lib for lib in view.libraries if not _beneath(lib, view.trees) or view.hidden(lib)]
    entries = os.path.join(packages_dir, "entries") if packages_dir else ""
    if entries and os.path.isdir(entries):
        view.packages = planner.mirror(os.path.abspath(entries))
    if bundles_dir and os.path.isdir(bundles_dir):
        view.bundles = planner.mirror(os.path.abspath(bundles_dir))
    _system_data(planner)
    # Symlinks inside a mounted tree come with it.
    mounted = view.trees + [p for p in (view.packages, view.bundles, *view.data) if p]
    view.symlinks = {k: v for k, v in view.symlinks.items()
                     if not _beneath(os.path.dirname(k), mounted)}
    return view


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _bind(source: str, target: str, flags: int) -> None:
    _check(_libc.mount(source.encode(), target.encode(), None, MS_BIND, None), f"bind {target}")
    _check(_libc.mount(b"none", target.encode(), None, MS_REMOUNT | MS_BIND | flags, None),
           f"remount {target} read-only")


def build(view: FileView) -> None:
    """Make ``view`` the root of the calling process's (private) mount namespace.

    The caller has unshared the mount namespace and made ``/`` private.
    """
    pivot_root = _PIVOT_ROOT.get(platform.machine())
    if pivot_root is None:
        raise OSError(f"no pivot_root syscall number for {platform.machine()}")
    _check(_libc.mount(b"corral", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       b"size=256k,nr_inodes=4096,mode=0755"), "mount tmpfs")
    os.mkdir("/tmp" + _OLD_ROOT, 0o700)
    os.chdir("/tmp")
    _check(_libc.syscall(pivot_root, b".", _OLD_ROOT.lstrip("/").encode()), "pivot_root")
    os.chdir("/")
    read_only = MS_RDONLY | MS_NOSUID | MS_NODEV

    def under_mask(path: str) -> bool:
        return _beneath(path, view.masked)

    for path in [*view.trees, view.packages, view.bundles]:
        if path and not under_mask(path):
            os.makedirs(path, 0o755, exist_ok=True)
    files = [p for p in view.data if not os.path.isdir(_OLD_ROOT + p)]
    for path in [p for p in view.data if p not in files]:
        os.makedirs(path, 0o755, exist_ok=True)
    for path in [*view.libraries, *files]:
        if not under_mask(path):
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o444))
    for link, target in view.symlinks.items():
        os.makedirs(os.path.dirname(link), 0o755, exist_ok=True)
        if not os.path.lexists(link):
            os.symlink(target, link)
    for path in [*view.trees, *view.libraries, view.packages]:
        if path and not under_mask(path):
            _bind(_OLD_ROOT + path, path, read_only)
    for mask in view.masked:
        # An empty tmpfs over it, with mount points for what is shown again
        # inside (the runtime's own packages), then read-only.
        _check(_libc.mount(b"corral-masked", mask.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                           b"size=16k,nr_inodes=256,mode=0755"), f"mask {mask}")
        inside = [p for p in view.trees if _beneath(p, [mask]) and p != mask]
        files = [p for p in view.libraries if _beneath(p, [mask])]
        for path in inside:
            os.makedirs(path, 0o755, exist_ok=True)
        for path in files:
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o444))
        _check(_libc.mount(b"none", mask.encode(), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                           None), f"remount {mask} read-only")
        for path in [*inside, *files]:
            _bind(_OLD_ROOT + path, path, read_only)
    for path in [view.bundles, *view.data]:
        if path:
            _bind(_OLD_ROOT + path, path, read_only | MS_NOEXEC)
    _check(_libc.umount2(_OLD_ROOT.encode(), MNT_DETACH), "detach the host's root")
    os.rmdir(_OLD_ROOT)
    _check(_libc.mount(b"none", b"/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       None), "remount the view's root read-only")
