"""The package store: every wheel once, unpacked, read-only, shared by all.

Layout under ``<state_dir>/packages``::

    entries/<keyed name>/   one unpacked wheel: its packages and .dist-info
    locks/<lock id>.json    a resolved dependency set: its entries, in order
    tmp/                    downloads and unpacking in progress (same filesystem,
                            so entries appear by an atomic rename)

The store is shown read-only in the jail, and Landlock, which keeps a child
to its own set's entries, does not cover ``stat``. So no path in it may be
one a tenant can work out, or ``os.stat`` of a guess would tell it which
packages other tenants use on the host:

* an entry's folder is not named ``<dist>-<version>-<sha16>`` (all public:
  a wheel's name and hash are on its index) but by a keyed hash of that
  (:meth:`PackageStore.entry_dir`, the key in ``<state_dir>/packages.key``,
  outside the jail's view). A store an earlier run left with the public
  names is renamed in place when it is opened (:meth:`PackageStore.migrate`);
* ``locks`` and ``tmp`` (lock ids are a plain hash of requirements) are not
  in the jail's view at all, only ``entries`` is (:func:`sandbox.file_view.plan`);
  on the host they are ``0700``, so another uid cannot even ``stat`` what
  is in them; and ``entries`` is ``0711``, reachable, never listable.

A child's ``sys.path`` gets one entry directory per wheel of its set: each
wheel unpacked at its own root is importable as it is, and
``importlib.metadata`` finds its ``.dist-info`` there. Native extensions are
mapped from these real files (``dlopen`` needs a path), which is why native
code only ever comes from here and never from a tenant's bundle.

Entries are named after the wheel's content hash, so two tenants asking for the
same wheel share one copy, and a tenant can never put bytes of its own into
the store: only wheels the resolver downloaded from the platform's index get
in. Unused entries and locks are removed by :meth:`PackageStore.gc`.

Blocking file I/O: call these methods from a worker thread.
"""

from __future__ import annotations

import compileall
import hashlib
import hmac
import json
import os
import py_compile
import re
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath

import msgspec
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from supervisor.errors import Invalid, TooLarge

#: A single wheel may unpack to at most this much (a zip bomb stops here).
MAX_WHEEL_BYTES = 512 * 2**20
#: A dependency set may unpack to at most this much, all wheels together.
MAX_SET_BYTES = 1024 * 2**20
MAX_WHEEL_FILES = 50_000
#: An entry's folder name (:meth:`PackageStore.entry_dir`); any other is from before keyed names.
_KEYED = re.compile(r"[0-9a-f]{32}")


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: str
    dir: str  # under entries/
    size: int


class Lock(msgspec.Struct, kw_only=True):
    """A resolved dependency set."""

    id: str
    requirements: list[str]
    entries: list[Entry]
    size: int
    created: float


def lock_id(requirements: list[str], target: str) -> str:
    """The same requirements for the same interpreter resolve once."""
    return hashlib.sha256(json.dumps([target, requirements]).encode()).hexdigest()[:32]


def read_or_make_key(path: str) -> bytes:
    """A 32-byte secret kept in ``path`` (``0600``), made at its first use (blocking)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path, "rb") as f:
            key = f.read()
        if len(key) >= 32:
            return key
        os.unlink(path)  # torn by a crash before it was written whole
        return read_or_make_key(path)
    key = os.urandom(32)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


class PackageStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.entries = self.root / "entries"
        self.locks = self.root / "locks"
        self.tmp = self.root / "tmp"
        for path, mode in ((self.root, 0o755), (self.entries, 0o711), (self.locks, 0o700), (self.tmp, 0o700)):
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, mode)
        # Beside the root, so outside the jail's view of it.
        self._key = read_or_make_key(str(self.root.parent / f"{self.root.name}.key"))
        self.migrate()

    def entry_dir(self, public_name: str) -> str:
        """The folder of the entry whose public name is ``<dist>-<version>-<sha16>``."""
        return hmac.new(self._key, public_name.encode(), hashlib.sha256).hexdigest()[:32]

    def migrate(self) -> None:
        """Rename entries an earlier run named publicly, and the locks' references
        to them (blocking; once, at start). Nothing is unpacked again, nothing lost:
        a lock still naming an old folder after a crash half-way is rewritten by
        the next start, and :meth:`read_lock` maps old names meanwhile."""
        for entry in self.entries.iterdir():
            if not _KEYED.fullmatch(entry.name) and entry.is_dir():
                target = self.entries / self.entry_dir(entry.name)
                if target.exists():  # unpacked again meanwhile
                    _make_writable(entry)
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    os.rename(entry, target)
        for path in self.locks.glob("*.json"):
            try:
                lock = msgspec.json.decode(path.read_bytes(), type=Lock)
            except (OSError, msgspec.DecodeError):
                continue
            if any(not _KEYED.fullmatch(e.dir) for e in lock.entries):
                self.write_lock(self._keyed(lock))

    def _keyed(self, lock: Lock) -> Lock:
        lock.entries = [e if _KEYED.fullmatch(e.dir) else msgspec.structs.replace(e, dir=self.entry_dir(e.dir))
                        for e in lock.entries]
        return lock

    # -- locks -------------------------------------------------------------
    def read_lock(self, lock: str) -> Lock | None:
        try:
            data = (self.locks / f"{lock}.json").read_bytes()
        except FileNotFoundError:
            return None
        found = msgspec.json.decode(data, type=Lock)
        if not all((self.entries / e.dir).is_dir() for e in found.entries):
            found = self._keyed(found)  # an old lock whose entries were renamed (migrate)
        # A lock whose entries were collected is no lock: resolve again.
        if not all((self.entries / e.dir).is_dir() for e in found.entries):
            return None
        return found

    def write_lock(self, lock: Lock) -> None:
        path = self.locks / f"{lock.id}.json"
        fd, tmp = tempfile.mkstemp(dir=self.tmp, suffix=".json")
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(lock))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    def paths(self, lock: Lock) -> list[str]:
        """``sys.path`` entries of a set, in resolution order."""
        return [str(self.entries / e.dir) for e in lock.entries]

    # -- entries -----------------------------------------------------------
    def add_wheel(self, wheel: Path) -> Entry:
        """Unpack ``wheel`` into the store (once per content hash)."""
        try:
            name, version, _build, _tags = parse_wheel_filename(wheel.name)
        except InvalidWheelFilename as exc:
            raise Invalid(f"{wheel.name} is not a wheel: {exc}") from None
        digest = hashlib.sha256()
        with open(wheel, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        directory = self.entry_dir(f"{name}-{version}-{digest.hexdigest()[:16]}")
        target = self.entries / directory
        if not target.is_dir():
            staging = Path(tempfile.mkdtemp(dir=self.tmp, prefix="unpack-"))
            try:
                _unpack(wheel, staging)
                # Children cannot write __pycache__: compile once, here (no package code runs).
                compileall.compile_dir(str(staging), ddir=str(target), quiet=2, workers=1,
                                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
                _make_read_only(staging)
                try:
                    os.rename(staging, target)
                except OSError:
                    if not target.is_dir():  # not a concurrent unpack of the same wheel
                        raise
            finally:
                if staging.exists():
                    _make_writable(staging)
                    shutil.rmtree(staging, ignore_errors=True)
        return Entry(name=str(name), version=str(version), dir=directory, size=_tree_size(target))

    # -- garbage -----------------------------------------------------------
    def gc(self, keep: set[str], grace_s: float = 3600.0) -> tuple[int, int]:
        """Remove locks not in ``keep`` (older than ``grace_s``, so a deploy
        in progress keeps its fresh lock) and entries no kept lock uses."""
        now = time.time()
        removed_locks = 0
        used: set[str] = set()
        for path in self.locks.glob("*.json"):
            lock_name = path.stem
            if lock_name not in keep and now - path.stat().st_mtime > grace_s:
                path.unlink(missing_ok=True)
                removed_locks += 1
                continue
            try:
                used.update(e.dir for e in msgspec.json.decode(path.read_bytes(), type=Lock).entries)
            except (OSError, msgspec.DecodeError):
                continue
        removed_entries = 0
        for entry in self.entries.iterdir():
            if entry.name not in used and now - entry.stat().st_mtime > grace_s:
                _make_writable(entry)
                shutil.rmtree(entry, ignore_errors=True)
                removed_entries += 1
        return removed_locks, removed_entries


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\0" in name or "\\" in name:
        raise Invalid(f"wheel member {name!r} escapes the wheel")
    return path


def _unpack(wheel: Path, into: Path) -> None:
    """Install a wheel's files as pip would into site-packages (purelib and
    platlib at the root; scripts, headers and data are not needed)."""
    with zipfile.ZipFile(wheel) as archive:
        members = archive.infolist()
        if len(members) > MAX_WHEEL_FILES:
            raise TooLarge(f"{wheel.name} has {len(members)} files, more than {MAX_WHEEL_FILES}")
        total = sum(m.file_size for m in members)
        if total > MAX_WHEEL_BYTES:
            raise TooLarge(f"{wheel.name} unpacks to {total} bytes, over {MAX_WHEEL_BYTES}")
        for member in members:
            path = _safe_member(member.filename)
            parts = path.parts
            if len(parts) >= 3 and parts[0].endswith(".data"):
                if parts[1] not in ("purelib", "platlib"):
                    continue
                path = PurePosixPath(*parts[2:])
            if member.is_dir():
                continue
            destination = into / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(destination, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)


def _make_read_only(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
        os.chmod(dirpath, 0o555)


def _make_writable(root: Path) -> None:
    for dirpath, _dirnames, _filenames in os.walk(root):
        os.chmod(dirpath, stat.S_IRWXU)


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
