"""Resolving requirements to wheels, in an unprivileged process with a deadline.

pip does the resolving (``pip download``), because it is what the platform's
pip configuration (index, mirrors, proxy, certificates, constraints) is
written for: the host's ``pip.conf`` files and ``PIP_*``/proxy environment
are honoured. It runs

* as an unprivileged user (``nobody`` by default) in a private temporary
  home, so a hostile index or wheel cannot touch the host as the supervisor;
* with ``--only-binary=:all:``, so no package code ever runs here: a package
  with no wheel for the host's Python is refused, by name;
* for the host interpreter's exact tags (implementation, ABI, platforms);
* under a deadline, after which it is killed.

The wheels then go into the :class:`~supervisor.packages.store.PackageStore`;
the resolved set is saved as a lock, so deploying an unchanged dependency
set again does no network or resolver work.
"""

from __future__ import annotations

import functools
import os
import platform
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from packaging import tags

from supervisor.errors import Invalid, TooLarge, Unavailable
from supervisor.log import log, warn
from supervisor.packages.store import MAX_SET_BYTES, Lock, PackageStore, lock_id

_ENV_KEEP = re.compile(r"^(PIP_[A-Z_]+|(HTTPS?|NO|ALL)_PROXY|(https?|no|all)_proxy|SSL_CERT_(FILE|DIR)|"
                       r"REQUESTS_CA_BUNDLE|PYTHONIOENCODING|LANG|LC_[A-Z]+)$")
_NO_WHEEL = re.compile(r"(?:No matching distribution found for|Could not find a version that satisfies "
                       r"the requirement) ([^\s(]+)")
#: pip's note of the releases it skipped for their ``Requires-Python``:
#: ``0.2.14 Requires-Python >=3.12; 0.2.15 Requires-Python >=3.12``.
_OTHER_PYTHON = re.compile(r"Ignored the following versions that require a different python version: (.+)")


def target_tags() -> tuple[str, list[str]]:
    """``(key, pip flags)`` naming exactly this interpreter's wheel tags."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    abi = f"cp{sys.version_info.major}{sys.version_info.minor}"
    platforms = sorted({t.platform for t in tags.sys_tags() if t.platform != "any"})
    flags = ["--python-version", version, "--implementation", "cp", "--abi", abi, "--abi", "abi3",
             "--abi", "none"]
    for tag_platform in platforms:
        flags += ["--platform", tag_platform]
    return f"cp{version}-{'+'.join(platforms)}", flags


class Resolver:
    """Turns requirement lists into locks; one instance per supervisor."""

    def __init__(self, store: PackageStore, *, timeout_s: float = 300.0, user: str = "nobody") -> None:
        self.store = store
        self.timeout_s = timeout_s
        self.user = user
        self._target, self._flags = target_tags()
        self._busy: dict[str, trio.Lock] = {}
        self._runner: tuple[list[str], int | None, int | None] | None = None

    def cached(self, requirements: list[str]) -> Lock | None:
        """The lock of an already resolved set (no network), or None. Blocking: a thread."""
        return self.store.read_lock(lock_id(requirements, self._target))

    async def resolve(self, requirements: list[str]) -> Lock:
        """The lock for ``requirements``, resolving (network) only if it is new."""
        ident = lock_id(requirements, self._target)
        mutex = self._busy.setdefault(ident, trio.Lock())
        async with mutex:
            found = await trio.to_thread.run_sync(self.store.read_lock, ident)
            if found is not None:
                return found
            started = time.monotonic()
            lock = await self._resolve(ident, requirements)
            log("packages.resolved", lock=ident, requirements=requirements,
                wheels=[f"{e.name}=={e.version}" for e in lock.entries], bytes=lock.size,
                seconds=round(time.monotonic() - started, 2))
            return lock

    async def _resolve(self, ident: str, requirements: list[str]) -> Lock:
        # In the system's temporary directory, not the state directory: the
        # unprivileged resolver must be able to reach it.
        work = Path(await trio.to_thread.run_sync(
            functools.partial(tempfile.mkdtemp, prefix="corral-resolve-")))
        try:
            command, uid, gid = await trio.to_thread.run_sync(self._pip_command)
            await trio.to_thread.run_sync(self._prepare, work, requirements, uid, gid)
            env = self._environment(work)
            with trio.move_on_after(self.timeout_s) as scope:
                result = await trio.run_process(
                    [*command, "download", "--only-binary=:all:", "--dest", str(work / "wheels"),
                     "--progress-bar", "off", "--no-input", *self._flags,
                     "-r", str(work / "requirements.txt")],
                    cwd=str(work), env=env, user=uid, group=gid, extra_groups=[] if uid is not None else None,
                    capture_stdout=True, capture_stderr=True, check=False, start_new_session=True)
            if scope.cancelled_caught:
                raise Unavailable(f"resolving {', '.join(requirements)} took more than "
                                  f"{self.timeout_s:g} s; retry, or check the package index")
            if result.returncode != 0:
                raise _explain_failure(result.stderr.decode(errors="replace"), requirements)
            return await trio.to_thread.run_sync(self._store_wheels, ident, requirements, work)
        finally:
            await trio.to_thread.run_sync(functools.partial(shutil.rmtree, work, ignore_errors=True))

    def _store_wheels(self, ident: str, requirements: list[str], work: Path) -> Lock:
        wheels = sorted((work / "wheels").glob("*.whl"))
        entries = [self.store.add_wheel(wheel) for wheel in wheels]
        size = sum(e.size for e in entries)
        if size > MAX_SET_BYTES:
            raise TooLarge(f"the dependencies unpack to {size} bytes, over the {MAX_SET_BYTES}-byte "
                           "limit of a script's packages")
        lock = Lock(id=ident, requirements=requirements, entries=entries, size=size, created=time.time())
        self.store.write_lock(lock)
        return lock

    # -- the unprivileged pip ------------------------------------------------
    def _prepare(self, work: Path, requirements: list[str], uid: int | None, gid: int | None) -> None:
        (work / "wheels").mkdir()
        (work / "home").mkdir()
        (work / "requirements.txt").write_text("\n".join(requirements) + "\n")
        user_config = Path.home() / ".config" / "pip" / "pip.conf"
        if user_config.is_file():  # the operator's own pip settings, readable by the resolver
            (work / "home" / ".config" / "pip").mkdir(parents=True)
            shutil.copy(user_config, work / "home" / ".config" / "pip" / "pip.conf")
        if uid is not None:
            for dirpath, _dirnames, filenames in os.walk(work):
                os.chown(dirpath, uid, gid or -1)
                for name in filenames:
                    os.chown(os.path.join(dirpath, name), uid, gid or -1)

    def _environment(self, work: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if _ENV_KEEP.match(k)}
        env.update(HOME=str(work / "home"), PATH="/usr/bin:/bin", PIP_NO_CACHE_DIR="1",
                   PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
        return env

    def _pip_command(self) -> tuple[list[str], int | None, int | None]:
        """The interpreter to run pip with, and the identity to run it as.

        The unprivileged user may not be able to reach the supervisor's own
        interpreter (a pyenv under /root, say): then a system Python of the
        same version is used; failing both, pip runs as the supervisor's user,
        with a warning (the download still runs no package code).
        """
        if self._runner is not None:
            return self._runner
        uid = gid = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(self.user)
                uid, gid = entry.pw_uid, entry.pw_gid
            except KeyError:
                warn("packages.no_user", user=self.user, hint="pip runs as the supervisor's user")
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
        for python in candidates:
            if uid is None or _runs_as(python, uid, gid):
                self._runner = ([python, "-m", "pip"], uid, gid)
                log("packages.resolver", python=python, user=self.user if uid is not None else "self")
                return self._runner
        warn("packages.resolver_privileged", user=self.user,
             hint=f"no Python {version} with pip is usable by {self.user}; pip runs as the supervisor's user")
        self._runner = ([sys.executable, "-m", "pip"], None, None)
        return self._runner


def _runs_as(python: str, uid: int, gid: int | None) -> bool:
    if not os.path.exists(python):
        return False
    try:
        subprocess.run([python, "-c", "import pip"], user=uid, group=gid, extra_groups=[],
                       env={"PATH": "/usr/bin:/bin", "HOME": "/"}, cwd="/", timeout=30, check=True,
                       capture_output=True)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def _explain_failure(stderr: str, requirements: list[str]) -> Exception:
    """pip's failure as an error naming the package and the fix."""
    missing = _NO_WHEEL.search(stderr)
    python = f"CPython {sys.version_info.major}.{sys.version_info.minor}"
    skipped = _OTHER_PYTHON.search(stderr)
    if missing and skipped:
        # Wheels exist, but for a newer Python: "no wheel" would send the
        # tenant looking for a source-only package.
        name = missing.group(1).rstrip(".,;")
        needs = sorted({part.split(" Requires-Python ", 1)[-1].strip()
                        for part in skipped.group(1).split(";") if "Requires-Python" in part})
        count = skipped.group(1).count("Requires-Python")
        return Invalid(f"no release of {name} installs on {python}, the Python tenants run on here: "
                       f"{count} release{'s' if count != 1 else ''} that would match need another Python "
                       f"(Requires-Python {' or '.join(needs)[:200]}); pick a release that supports {python}")
    if missing:
        name = missing.group(1).rstrip(".,;")
        return Invalid(f"no wheel of {name} for {python} "
                       f"on {platform.machine()} Linux was found on the package index: Corral installs "
                       "binary wheels only and never builds packages from source (check the name and "
                       "version, or pick a release that publishes wheels)")
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    tail = " ".join(lines[-3:])[-600:] if lines else "pip failed without a message"
    return Invalid(f"resolving {', '.join(requirements)[:200]} failed: {tail}")
