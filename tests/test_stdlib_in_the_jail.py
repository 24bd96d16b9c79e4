"""The standard library in the jail: a call the jail cannot grant raises a
Python exception in the tenant, never ends its child (audit "real Python in
the jail").

Real server, real jailed children; each tenant calls the standard library
itself and reports what it got.
"""

from __future__ import annotations

import os
import ssl

import pytest

from tests.harness import Corral
from tests.test_jail import (
    EACCES,
    ENOENT,
    EPERM,
    EROFS,
    assert_healthy,
    call,
    corral_with_control,
    denied,
    pid_of,
    wait_for,
    worker,
    x86_64_only,
)
from tests.test_package_tenants import deploy as deploy_with_requirements

ENOSYS = 38
EOPNOTSUPP = 95


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory):
    with corral_with_control(tmp_path_factory.mktemp("stdlib")) as server:
        yield server


# ---------------------------------------------------------------------------
# 1. calls outside the seccomp allowlist: an OSError, the child lives on
# ---------------------------------------------------------------------------

SYSCALLS = worker('''
    import fcntl, mmap, shutil, signal, uuid

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            if query(request).get("mode") == "pid":
                return Response.json({"pid": os.getpid()})
            ct = sys.modules["ctypes"]
            libc = ct.CDLL(None, use_errno=True)

            def raw(nr, *args):
                ct.set_errno(0)
                return [libc.syscall(nr, *args), ct.get_errno()]

            def flush():
                with mmap.mmap(-1, 4096) as m:
                    m[:1] = b"x"
                    m.flush()

            def fsync():
                with open(__file__, "rb") as f:
                    os.fsync(f.fileno())
                    os.fdatasync(f.fileno())

            def flock():
                with open(__file__, "rb") as f:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)

            out = {
                "uuid1": attempt(lambda: uuid.uuid1().version),
                "getnode": attempt(uuid.getnode),
                "umask": attempt(os.umask, 0o22),
                "fsync": attempt(fsync),
                "msync": attempt(flush),
                "disk_usage": attempt(shutil.disk_usage, "/"),
                "statvfs": attempt(os.statvfs, os.__file__),
                "flock": attempt(flock),
                "getxattr": attempt(os.getxattr, os.__file__, "user.x"),
                "listxattr": attempt(os.listxattr, os.__file__),
                "setsid": attempt(os.setsid),
                "setpgid": attempt(os.setpgid, 0, 0),
                "alarm": attempt(signal.alarm, 1),
                "setitimer": attempt(signal.setitimer, signal.ITIMER_REAL, 1.0),
                # Outside every list: "not implemented", as a kernel without it says.
                "mincore": raw(27, 0, 4096, 0),
                "pid": os.getpid(),
            }
            return Response.json(out)
''')


@x86_64_only
def test_unsupported_syscalls_raise_in_the_tenant_and_the_child_lives(c: Corral) -> None:
    c.deploy("syscalls", SYSCALLS)
    before = pid_of(c, "syscalls")
    out = call(c, "syscalls")
    assert out["pid"] == before, "the child was replaced"
    # Harmless in the jail: allowed.
    assert out["uuid1"] == {"ok": True, "value": "1"}, out["uuid1"]
    assert out["getnode"]["ok"] is True, out["getnode"]
    assert out["umask"]["ok"] is True, out["umask"]
    assert out["fsync"]["ok"] is True, out["fsync"]
    assert out["msync"]["ok"] is True, out["msync"]
    # Refused, with an errno the standard library understands.
    for key in ("disk_usage", "statvfs", "flock", "setsid", "setpgid"):
        denied(out[key], errno=EPERM)
    denied(out["setitimer"], "itimer_error", errno=EPERM)  # signal.ItimerError, an OSError
    # CPython's signal.alarm() does not check for errors: alarm()'s -1, unsigned,
    # is all the refusal shows (and no SIGALRM comes).
    assert out["alarm"] == {"ok": True, "value": str(2**32 - 1)}, out["alarm"]
    for key in ("getxattr", "listxattr"):
        denied(out[key], "OSError", errno=EOPNOTSUPP)
    assert out["mincore"] == [-1, ENOSYS], out["mincore"]
    # Still the same child.
    assert pid_of(c, "syscalls") == before
    assert_healthy(c)


# ---------------------------------------------------------------------------
# 2. a refused process is an OSError, so the standard library's fallbacks run
# ---------------------------------------------------------------------------

FALLBACKS = worker('''
    import ctypes.util, platform, subprocess

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return Response.json({
                "platform": attempt(platform.platform),
                "uname": attempt(lambda: tuple(platform.uname())[0]),
                "processor": attempt(platform.processor),
                "find_library": attempt(ctypes.util.find_library, "c"),
                "subprocess": attempt(subprocess.run, ["true"]),
                "fork": attempt(os.fork),
            })
''')


def test_a_refused_process_is_an_oserror_and_the_stdlib_falls_back(c: Corral) -> None:
    c.deploy("fallbacks", FALLBACKS)
    out = call(c, "fallbacks")
    assert out["platform"]["ok"] is True and "Linux" in out["platform"]["value"], out["platform"]
    assert out["uname"] == {"ok": True, "value": "'Linux'"}, out["uname"]
    assert out["processor"]["ok"] is True, out["processor"]
    assert out["find_library"]["ok"] is True, out["find_library"]  # a name, or None
    for key in ("subprocess", "fork"):
        denied(out[key], errno=EPERM)
        assert "not available in Corral's sandbox" in out[key]["error"], out[key]
        assert "cannot start processes" in out[key]["error"], out[key]
    assert_healthy(c)


# ---------------------------------------------------------------------------
# 3. the system's time zones, MIME types and CA certificates, read-only
# ---------------------------------------------------------------------------

SYSTEM_DATA = worker('''
    import datetime, mimetypes, ssl, zoneinfo

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            def paris():
                when = datetime.datetime(2026, 7, 1, 12, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
                return when.utcoffset().total_seconds()

            def write_tz():
                with open(zoneinfo.TZPATH[0] + "/Corral", "w") as f:
                    f.write("x")

            return Response.json({
                "paris": attempt(paris),
                "utc": attempt(lambda: str(zoneinfo.ZoneInfo("UTC"))),
                "webp": attempt(lambda: mimetypes.guess_type("a.webp")[0]),
                "cas": attempt(lambda: ssl.create_default_context().cert_store_stats()["x509_ca"] > 0),
                "write_tz": attempt(write_tz),
            })
''')


@pytest.mark.skipif(not os.path.isdir("/usr/share/zoneinfo/Europe"), reason="no system tz database")
def test_the_system_time_zones_mime_types_and_cas_are_readable(c: Corral) -> None:
    c.deploy("systemdata", SYSTEM_DATA)
    out = call(c, "systemdata")
    assert out["paris"] == {"ok": True, "value": "7200.0"}, out["paris"]
    assert out["utc"] == {"ok": True, "value": "'UTC'"}, out["utc"]
    if os.path.isfile("/etc/mime.types"):
        assert out["webp"] == {"ok": True, "value": "'image/webp'"}, out["webp"]
    if os.path.isfile(ssl.get_default_verify_paths().openssl_cafile):
        assert out["cas"] == {"ok": True, "value": "True"}, out["cas"]
    denied(out["write_tz"], "OSError", errno=EROFS)
    assert_healthy(c)


# ---------------------------------------------------------------------------
# 4. of the package store, a tenant sees its own set's entries only
# ---------------------------------------------------------------------------

OTHER = worker('''
    import certifi

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            from importlib.metadata import version
            return Response.json({"entry": os.path.dirname(os.path.dirname(certifi.__file__)),
                                  "version": version("certifi")})
''')

NOSY = worker('''
    preloaded = "itsdangerous" in sys.modules

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            q = query(request)
            store, other = q["store"], q["other"]
            import itsdangerous

            def borrow():
                sys.path.append(other)
                try:
                    import certifi
                    return certifi.where()
                finally:
                    sys.path.remove(other)

            return Response.json({
                "preloaded": preloaded,
                "own": attempt(lambda: len(open(itsdangerous.__file__).read()) > 0),
                "own_entry": attempt(os.listdir, os.path.dirname(os.path.dirname(itsdangerous.__file__))),
                "store": attempt(os.listdir, store),
                "entries": attempt(os.listdir, store + "/entries"),
                "locks": attempt(os.listdir, store + "/locks"),
                "other_entry": attempt(os.listdir, other),
                "other_file": attempt(lambda: open(other + "/certifi/__init__.py").read()),
                "borrow": attempt(borrow),
            })
''')


STAT = worker('''
    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return Response.json({path: attempt(os.stat, path) for path in query(request)["paths"].split(",")})
''')


PLAIN = worker('''
    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            q = query(request)
            return Response.json({"store": attempt(os.listdir, q["store"]),
                                  "other_entry": attempt(os.listdir, q["other"])})
''')


def test_a_tenant_sees_only_its_own_packages_in_the_store(c: Corral) -> None:
    deploy_with_requirements(c, "other", OTHER, ["certifi"])
    other = call(c, "other")["entry"]
    store = str(c.state_dir.resolve() / "packages")
    assert other.startswith(store + "/entries/"), other
    deploy_with_requirements(c, "nosy", NOSY, ["itsdangerous==2.2.0"])
    assert wait_for(lambda: '"imported":["itsdangerous"]' in c.log_path.read_text(), timeout=30), c.log()
    out = call(c, "nosy", f"/?store={store}&other={other}")
    assert out["preloaded"] is True, "a child of the set's package zygote"
    # Its own set: readable, after Load too.
    assert out["own"] == {"ok": True, "value": "True"}, out["own"]
    assert out["own_entry"]["ok"] is True, out["own_entry"]
    # The rest of the store: not even listable; its lock files are not in the view at all.
    for key in ("store", "entries", "other_entry", "other_file"):
        denied(out[key], errno=EACCES)
    denied(out["locks"], "FileNotFoundError", errno=ENOENT)
    denied(out["borrow"], "ModuleNotFoundError", errno=None)
    # A tenant without packages sees none.
    c.deploy("plain", PLAIN)
    out = call(c, "plain", f"/?store={store}&other={other}")
    for key in ("store", "other_entry"):
        denied(out[key], errno=EACCES)
    assert_healthy(c)


def test_a_tenant_cannot_stat_other_tenants_packages_by_their_public_names(c: Corral) -> None:
    """Landlock does not cover ``stat``: a store entry named ``<dist>-<version>-<sha16>``
    (a public wheel's name and hash) or a lock named by the hash of its
    requirements would tell a tenant, by ``os.stat`` of a guess, which packages
    other tenants use on the host. Neither is found (ENOENT; a lock was
    refused, EACCES, which told that the store has a locks folder)."""
    import glob
    import hashlib

    from supervisor.packages.requirements import normalize
    from supervisor.packages.resolver import target_tags
    from supervisor.packages.store import lock_id

    pinned = ["certifi==2026.7.22"]  # the version in the local index's files
    deploy_with_requirements(c, "pinned", OTHER, pinned)
    found = call(c, "pinned")
    store = str(c.state_dir.resolve() / "packages")
    wheels = [w for root in ("/opt/wheels", "/opt/pypi", "/opt/pypi-more")
              for w in glob.glob(f"{root}/**/certifi-{found['version']}-*.whl", recursive=True)]
    assert wheels, f"the wheel the index served, as any tenant can download it: {found}"
    guesses = [f"{store}/entries/certifi-{found['version']}-"
               f"{hashlib.sha256(open(w, 'rb').read()).hexdigest()[:16]}" for w in wheels]
    lock = f"{store}/locks/{lock_id(normalize(pinned).requirements, target_tags()[0])}.json"
    c.deploy("stat", STAT)
    out = call(c, "stat", f"/?paths={','.join([*guesses, lock])}")
    assert any(out[g]["ok"] is False for g in guesses), out
    for guess in guesses:
        denied(out[guess], "FileNotFoundError", errno=ENOENT)
    # Lock files are outside the view: as every such path, they do not exist (SPEC).
    denied(out[lock], "FileNotFoundError", errno=ENOENT)
    assert_healthy(c)
