"""Script versions as directories of files, which jailed children read.

A child imports its script with Python's own import system from
``<state_dir>/bundles/<name>/``: real files, so ``__file__``, data files
next to modules, ``importlib.resources`` and ``importlib.metadata`` work. The
directory is named after the version (a content hash of code and bindings;
the name is a keyed hash of it, see Permissions), so it never changes once
written, and two stored scripts with the same content share it.

* **Atomic.** A bundle is written to a temporary directory beside the
  others and renamed into place: a child never sees half a bundle, and a
  crash leaves only a temporary directory, removed by the next collection.
* **Off the trio thread.** Writing and deleting files is blocking I/O; both
  run in a worker thread, serialised by one lock (so a collection never
  deletes what is being written or is about to be used).
* **Collected.** :meth:`Bundles.collect` removes every bundle that no stored
  script and no live child uses.
* **Permissions.** The root is ``0711``: a child (another uid) can reach a
  bundle it knows the name of, never list the others, and Landlock keeps
  each child to its own bundle's files. Landlock does not cover ``stat``,
  though, so a bundle's name must not be one a tenant can work out: it is
  not the version (a content hash anyone who knows a script's code and
  bindings can compute, and the ``etag`` of the admin API) but a keyed
  hash of it (:meth:`Bundles.dir_name`, the key in ``<state_dir>/bundles.key``,
  outside the jail's view). A path built from another tenant's version does
  not exist, to ``stat`` too (ENOENT). A child learns only its own bundle's
  name. Bundles are ``0755``/``0644``, read-only to children by the mount too.

The ``packages`` directory beside it is the package store's root, shown
read-only in the jail; the package store fills it. A version with packages
knows its lock's entry directories once :meth:`Bundles.ensure` has read the
lock (in the same worker thread as the bundle write), so a cold start needs
neither a thread nor a disk read for them.

* **Precompiled.** A child cannot write ``__pycache__``, so without help it
  would compile every module of its script on every cold start. The bundle
  is compiled when it is written (``UNCHECKED_HASH`` pycs: the files never
  change, so there is nothing to check).
* **In memory too.** The main module's compiled code and its folder's
  names are kept (:mod:`.main_code`) for versions written here and, read
  at start, for the deployed versions an earlier run wrote: a cold start
  sends them with ``Load`` and reads nothing from disk.
"""

from __future__ import annotations

import compileall
import hashlib
import hmac
import os
import py_compile
import re
import shutil
import tempfile
from collections.abc import Callable

import trio

from protocol.messages import MainCode
from supervisor.model import BUNDLE_MARKER, ScriptRecord
from supervisor.packages.store import PackageStore, read_or_make_key
from supervisor.pool.main_code import MainCodeCache, read_main_code

#: How often unused bundles are collected when nothing asks for it sooner.
COLLECT_PERIOD_S = 600.0
#: Requests to collect that come within this long make one collection.
COLLECT_DEBOUNCE_S = 0.2
_VERSION = re.compile(r"[A-Za-z0-9_-]{1,128}")
_TEMP_PREFIX = ".tmp-"


class BundleError(ValueError):
    """A script's files cannot be laid out as a bundle (the message says why)."""


def _check_path(path: str) -> list[str]:
    parts = path.split("/")
    if (not path or path.startswith("/") or "\\" in path or "\0" in path
            or any(p in ("", ".", "..") for p in parts)):
        raise BundleError(f"invalid file name in the script: {path[:200]!r}")
    return parts


#: In every bundle written since versions are injective: the hash of the
#: files it was written with (:func:`files_digest`).
MARKER = BUNDLE_MARKER


def files_digest(modules: dict[str, bytes]) -> str:
    """An injective hash of a bundle's files (length-prefixed names and data)."""
    digest = hashlib.sha256(b"corral.bundle.v1")
    for path in sorted(modules):
        for item in (path.encode(), modules[path]):
            digest.update(len(item).to_bytes(8, "big") + item)
    return digest.hexdigest()


def _marker_matches(folder: str, expected: str) -> bool:
    try:
        with open(os.path.join(folder, MARKER), "rb") as f:
            return f.read(100) == expected.encode()
    except OSError:
        return False


def write_bundle(root: str, version: str, modules: dict[str, bytes]) -> str:
    """Write ``modules`` to ``root/version`` unless it holds them; returns its path (blocking).
    (``version`` is the folder's name: :meth:`Bundles.dir_name` of the version.)

    A folder already there is used only if its :data:`MARKER` says it was
    written with these very files. Otherwise (a folder of an earlier run,
    from before versions were injective, possibly pre-squatted by another
    tenant whose files had the same old version) it is written again and
    swapped in.
    """
    if not _VERSION.fullmatch(version):
        raise BundleError(f"invalid script version {version[:200]!r}")
    final = os.path.join(root, version)
    expected = files_digest(modules)
    if _marker_matches(final, expected):
        return final
    temp = tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=root)
    stale = None
    try:
        for path, data in modules.items():
            parts = _check_path(path)
            if path == MARKER:
                raise BundleError(f"invalid file name in the script: {path!r} is the platform's")
            target = os.path.join(temp, *parts)
            try:
                os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
                with open(target, "xb") as f:
                    f.write(data)
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
                raise BundleError(f"the script's files clash: {path[:200]!r} is both a file "
                                  f"and a folder") from exc
            os.chmod(target, 0o644)
        compile_tree(temp, final)
        with open(os.path.join(temp, MARKER), "x") as f:
            f.write(expected)
        os.chmod(os.path.join(temp, MARKER), 0o644)
        for folder, _dirs, files in os.walk(temp):
            os.chmod(folder, 0o755)
            for name in files:
                if name.endswith(".pyc"):
                    os.chmod(os.path.join(folder, name), 0o644)
        if os.path.lexists(final) and not _marker_matches(final, expected):
            # Not these files: move it aside (a temp name, so a collection
            # removes it if this fails half-way) and put ours in its place.
            stale = tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=root)
            os.rename(final, os.path.join(stale, "old"))
        try:
            os.rename(temp, final)
        except OSError:
            if not _marker_matches(final, expected):  # else: written meanwhile, by another process
                raise
    finally:
        for leftover in (temp, stale):
            if leftover is not None and os.path.exists(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
    return final


def compile_tree(root: str, ddir: str) -> None:
    """Precompile every ``.py`` under ``root`` (blocking), as if it were at
    ``ddir``. A file that does not compile is left alone: importing it
    reports the error, as it should."""
    compileall.compile_dir(root, ddir=ddir, quiet=2, workers=1, legacy=False,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def collect(root: str, keep: frozenset[str]) -> list[str]:
    """Remove every bundle (and leftover temporary dir) not in ``keep`` (blocking)."""
    removed = []
    for name in os.listdir(root):
        if name in keep:
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        removed.append(name)
    return removed


def _name_key(state_dir: str) -> bytes:
    """The key of bundle folders' names, made once per state dir (blocking).

    Outside the bundles root, so outside the jail's file view. Lost, the
    next run names every bundle anew: each is written again at its first
    use and the old folders are collected."""
    return read_or_make_key(os.path.join(state_dir, "bundles.key"))


class Bundles:
    """The bundles root of one state dir, and which versions are on disk."""

    def __init__(self, state_dir: str) -> None:
        self.root = os.path.abspath(os.path.join(state_dir, "bundles"))
        self._name_key = _name_key(state_dir)
        self._names: dict[str, str] = {}
        self.packages = os.path.abspath(os.path.join(state_dir, "packages"))
        os.makedirs(self.root, 0o711, exist_ok=True)
        os.chmod(self.root, 0o711)
        os.makedirs(self.packages, 0o755, exist_ok=True)
        #: The content-addressed package store (supervisor.packages.store).
        self.package_store = PackageStore(self.packages)
        #: Entry directories of each present version's packages (a version names one lock).
        self._package_dirs: dict[str, list[str]] = {}
        #: The lock of each present version that has packages.
        self._locks: dict[str, str] = {}
        #: Versions known to be complete on disk: a cold start needs no thread for them.
        self._present: set[str] = set()
        #: Main modules' code, sent with Load instead of read from disk by the child.
        self.code = MainCodeCache()
        self._lock = trio.Lock()
        self._wanted = trio.Event()
        self._wanted.set()  # once at start: what a previous run left behind

    def dir_name(self, version: str) -> str:
        """The folder of ``version``'s bundle: a keyed hash of it, which no
        tenant can compute from a version it knows (see the module's doc)."""
        name = self._names.get(version)
        if name is None:
            name = self._names[version] = hmac.new(
                self._name_key, version.encode(), hashlib.sha256).hexdigest()[:32]
        return name

    def path(self, version: str) -> str:
        return os.path.join(self.root, self.dir_name(version))

    def ready(self, record: ScriptRecord) -> bool:
        """Is this version on disk (so a child can be assigned it without awaiting)?

        A version written by an earlier run of the server is found here with
        one ``stat``, instead of a trip to a worker thread under the bundles'
        lock (:meth:`ensure`): after a restart, every tenant's first cold
        start made that trip, one at a time, and in a storm of 300 first
        requests it held each one 12 ms on average, 69 ms at worst. A bundle
        is renamed into place whole and removed only under the lock, so one
        seen while the lock is free is complete. Versions with packages still
        go through :meth:`ensure`, which reads their entry directories from
        the package store.
        """
        version = record.version
        if version in self._present:
            return True
        if record.packages_lock:
            return False
        if version in self.code:
            # Read from disk by this run and not collected since (a collection
            # forgets the code of what it removes before removing it): no stat,
            # which would block the event loop on a cold inode.
            self._present.add(version)
            return True
        if self._lock.locked() or not _VERSION.fullmatch(version):
            return False
        # The marker, not the folder: a folder without it (from before
        # versions were injective) is checked by ensure() before use.
        if not os.path.isfile(os.path.join(self.path(version), MARKER)):
            return False
        self._present.add(version)
        return True

    def package_dirs(self, version: str) -> list[str]:
        """The package entry directories of a :meth:`ready` version ([] for none)."""
        return self._package_dirs.get(version, [])

    async def ensure(self, record: ScriptRecord) -> str:
        """The bundle directory of ``record``, written first if needed."""
        if record.version not in self._present:
            async with self._lock:
                if record.version not in self._present:
                    dirs, code = await trio.to_thread.run_sync(self._write, record)
                    self._package_dirs[record.version] = dirs
                    if code is not None:
                        self.code.put(record.version, code)
                    if record.packages_lock:
                        self._locks[record.version] = record.packages_lock
                    self._present.add(record.version)
        return self.path(record.version)

    def _write(self, record: ScriptRecord) -> tuple[list[str], MainCode | None]:
        """Blocking: the bundle's files; its lock's entry directories and its main code."""
        dirs: list[str] = []
        if record.packages_lock:
            lock = self.package_store.read_lock(record.packages_lock)
            if lock is None:
                raise BundleError(f"the packages of script {record.name!r} ({', '.join(record.requirements)}) "
                                  "are no longer in the package store: deploy it again")
            dirs = self.package_store.paths(lock)
        path = write_bundle(self.root, self.dir_name(record.version), record.modules)
        return dirs, read_main_code(path, record.main_module)  # just written: from the page cache

    async def collect(self, keep: Callable[[], set[str]]) -> list[str]:
        """Remove the bundles outside ``keep()``; returns the removed folders' names.

        ``keep()`` must return every stored version and every version a live
        child was assigned. It is called once the lock is held, and versions
        outside it stop being :meth:`ready` at that moment: a cold start that
        comes later writes its bundle again (after this collection, under the
        same lock) instead of using one being deleted. Callers check
        :meth:`ready` right before they assign a child, with no await between.
        """
        async with self._lock:
            kept = frozenset(keep())
            self._present &= kept
            self.code.keep_only(kept)
            for version in list(self._package_dirs):
                if version not in kept:
                    self._package_dirs.pop(version, None)
                    self._locks.pop(version, None)
            for version in [v for v in self._names if v not in kept]:
                del self._names[version]
            folders = frozenset(self.dir_name(version) for version in kept)
            return await trio.to_thread.run_sync(collect, self.root, folders)

    def want_collection(self) -> None:
        """A script was deployed or deleted: collect soon."""
        self._wanted.set()

    async def run(self, keep: Callable[[], set[str]],
                  stored_locks: Callable[[], set[str]] | None = None,
                  deployed_mains: Callable[[], list[tuple[str, str]]] | None = None) -> None:
        """Collect when asked, and every :data:`COLLECT_PERIOD_S` (retired children end).

        ``stored_locks`` (blocking: it reads the store) names the package
        locks stored scripts use; with it, the package store is collected
        too, after the bundles, keeping those and the locks of live versions.
        ``deployed_mains`` (blocking) names each deployed ``(version,
        main_module)``: after the first collection, their main code already
        on disk is read into memory (:meth:`load_code`).
        """
        from supervisor.log import log, warn

        first = True
        while True:
            with trio.move_on_after(COLLECT_PERIOD_S):
                await self._wanted.wait()
            await trio.sleep(COLLECT_DEBOUNCE_S)
            self._wanted = trio.Event()
            try:
                removed = await self.collect(keep)
            except OSError as exc:
                warn("bundles.collect_failed", reason=str(exc))
                continue
            if removed:
                log("bundles.collected", removed=len(removed))
            if stored_locks is not None:
                live = set(self._locks.values())
                try:
                    locks, entries = await trio.to_thread.run_sync(self._collect_packages, stored_locks, live)
                except OSError as exc:
                    warn("packages.collect_failed", reason=str(exc))
                    continue
                if locks or entries:
                    log("packages.collected", locks=locks, entries=entries)
            if first and deployed_mains is not None:
                first = False
                try:
                    held = await self.load_code(deployed_mains)
                except OSError as exc:
                    warn("bundles.code_not_loaded", reason=str(exc))
                else:
                    log("bundles.code_loaded", versions=held, bytes=self.code.bytes)

    async def load_code(self, deployed_mains: Callable[[], list[tuple[str, str]]]) -> int:
        """Read the main code of deployed versions already on disk into memory,
        in one worker thread, up to the cache's budget; returns how many are held.

        After a restart, every tenant's first request is a cold start. Their
        bundles were written by an earlier run, and reading them then, one
        disk read after another in a storm, is what this avoids. Only
        :meth:`run` calls it, between collections, so what it read is still
        on disk (a later collection forgets what it removes).
        """
        found = await trio.to_thread.run_sync(self._read_code, deployed_mains, self.code.budget_bytes)
        for version, code in found:
            if version not in self.code:  # else: written by this run meanwhile
                self.code.put(version, code)
        return len(found)

    def _read_code(self, deployed_mains: Callable[[], list[tuple[str, str]]],
                   budget: int) -> list[tuple[str, MainCode]]:
        """Blocking: the main code of deployed versions on disk, ``budget`` bytes at most."""
        found, total = [], 0
        for version, main_module in deployed_mains():
            if not _VERSION.fullmatch(version) or not os.path.isfile(os.path.join(self.path(version), MARKER)):
                continue  # (an unmarked folder is checked by ensure() first)
            code = read_main_code(self.path(version), main_module)
            if code is None:
                continue
            total += len(code.pyc)
            if total > budget:
                break
            found.append((version, code))
        return found

    def _collect_packages(self, stored_locks: Callable[[], set[str]], live: set[str]) -> tuple[int, int]:
        return self.package_store.gc(stored_locks() | live)
