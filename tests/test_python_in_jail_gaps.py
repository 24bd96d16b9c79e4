"""Issue 13's points that had no test: the Landlock fallback, the zygote's
pre-imported standard library, the unprivileged pip under a deadline, and the
cap on a script's code and packages together.

Real servers, real jailed children, real subprocesses; every wait is a poll
with a deadline.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
import textwrap
from pathlib import Path

import pytest
import trio

from sandbox import landlock, preload
from supervisor.errors import TooLarge, Unavailable
from supervisor.packages import upload as packages_upload
from supervisor.packages.requirements import normalize
from supervisor.packages.resolver import Resolver, target_tags
from supervisor.packages.store import Entry, Lock, PackageStore, _tree_size, lock_id
from tests.harness import Corral
from tests.test_file_view import ROOT_ONLY, _view_ready
from tests.test_jail import (
    ENOENT,
    assert_healthy,
    call,
    corral_with_control,
    denied,
    log_events,
    wait_for,
    worker,
)
from tests.test_package_tenants import deploy as deploy_with_requirements
from tests.test_packages import make_wheel


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory):
    with corral_with_control(tmp_path_factory.mktemp("gaps")) as server:
        yield server


# ---------------------------------------------------------------------------
# 1. without Landlock: a logged warning, and the mount view still hides the host
# ---------------------------------------------------------------------------

READER = worker('''
    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return Response.json({
                "passwd": attempt(lambda: open("/etc/passwd").read()),
                "var": attempt(os.listdir, "/var"),
                "own": attempt(lambda: len(open(__file__).read())),
            })
''')


@ROOT_ONLY
def test_without_landlock_the_zygote_warns_and_the_mount_view_still_hides_the_host(
        tmp_path: Path) -> None:
    with corral_with_control(tmp_path / "state", env={"CORRAL_LANDLOCK": "off"}) as server:
        assert wait_for(lambda: any(e.get("event") == "zygote.no_landlock" for e in log_events(server)),
                        timeout=10), server.log()
        warning = next(e for e in log_events(server) if e.get("event") == "zygote.no_landlock")
        assert warning["level"] == "warning", warning
        assert any("CORRAL_LANDLOCK=off" in p for p in warning["problems"]), warning
        assert "bundles" in warning["consequence"], warning
        ready = _view_ready(server)
        assert ready["landlock"] == 0 and ready["view"] is True, ready

        server.deploy("reader", READER)
        out = call(server, "reader")
        # Nothing of the host's /etc (but its public data) or /var exists in
        # the view: ENOENT, not EACCES (no Landlock here).
        denied(out["passwd"], "FileNotFoundError", errno=ENOENT)
        denied(out["var"], "FileNotFoundError", errno=ENOENT)
        assert out["own"]["ok"] is True, out
        assert_healthy(server)


def test_the_landlock_switch_is_off_only_when_asked() -> None:
    # This test process was started without the switch: the kernel is asked.
    assert not landlock._TURNED_OFF
    abi, why = landlock.abi_version()
    assert abi > 0 or "turned off" not in why


# ---------------------------------------------------------------------------
# 2. the common standard library is already imported when a script starts
# ---------------------------------------------------------------------------

PROBED = ["json", "re", "asyncio", "csv", "difflib", "fractions", "statistics", "zoneinfo",
          "mimetypes", "http.client", "importlib.metadata", "html.parser", "decimal", "uuid"]
LAZY = ["sqlite3", "tarfile", "xml.etree.ElementTree"]

PRELOAD_PROBE = textwrap.dedent(f'''
    import sys

    # Before this script imports anything of its own.
    SEEN = {{name: name in sys.modules for name in {PROBED + LAZY!r}}}
    COMMON = {{name: name in sys.modules for name in {list(preload.COMMON)!r}}}

    import json
    from workers import Response, WorkerEntrypoint


    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return Response(json.dumps({{"seen": SEEN, "common": COMMON}}),
                            headers={{"content-type": "application/json"}})
''')


def test_common_stdlib_modules_are_preimported_before_a_script_imports_them(c: Corral) -> None:
    assert {"json", "re", "asyncio"} <= set(preload.COMMON)
    c.deploy("preloaded", PRELOAD_PROBE)
    out = call(c, "preloaded")
    for name in PROBED:
        assert out["seen"][name] is True, f"{name} is not pre-imported: {out}"
    missing = [name for name, present in out["common"].items() if not present]
    assert missing == [], f"preload.COMMON modules missing in a fresh child: {missing}"
    # What preload leaves lazy is not imported for the script: the check is real.
    for name in LAZY:
        assert out["seen"][name] is False, f"{name} was expected to stay lazy: {out}"


# ---------------------------------------------------------------------------
# 3. pip runs unprivileged and under a deadline
# ---------------------------------------------------------------------------

FAKE_PIP = """#!/bin/sh
id -u > "{record}/uid.tmp" && mv "{record}/uid.tmp" "{record}/uid"
echo $$ > "{record}/pid.tmp" && mv "{record}/pid.tmp" "{record}/pid"
exec sleep 60
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_the_resolver_runs_pip_unprivileged_and_kills_it_at_its_deadline() -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this host")
    # Under /tmp, not pytest's 0700 tmp_path: the unprivileged user must reach it.
    scratch = Path(tempfile.mkdtemp(prefix="corral-fake-pip-"))
    try:
        os.chmod(scratch, 0o755)
        record = scratch / "record"
        record.mkdir()
        os.chmod(record, 0o777)
        fake = scratch / "pip"
        fake.write_text(FAKE_PIP.format(record=record))
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | 0o444)

        resolver = Resolver(PackageStore(scratch / "packages"), timeout_s=1.5)
        # The real command builder chooses the interpreter and the identity...
        command, uid, gid = resolver._pip_command()
        assert uid == nobody.pw_uid and gid == nobody.pw_gid, (command, uid, gid)
        assert uid != 0
        # ...and the real resolve runs a pip that only records who it is and hangs.
        resolver._runner = ([str(fake)], uid, gid)

        async def main() -> None:
            with pytest.raises(Unavailable) as caught:
                await resolver.resolve(["hangs-forever==1.0"])
            message = str(caught.value)
            assert "hangs-forever==1.0" in message and "took more than 1.5 s" in message, message
            assert "package index" in message, message

        trio.run(main)
        assert (record / "uid").read_text().strip() == str(nobody.pw_uid)
        pid = int((record / "pid").read_text())
        assert wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
                        Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                        timeout=10), "the hung pip outlived its deadline"
        # Nothing was stored for a set that never resolved.
        assert list((scratch / "packages" / "locks").iterdir()) == []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------
# 4. one cap on code and packages together
# ---------------------------------------------------------------------------

def test_bundle_size_counts_code_and_packages_against_a_configured_cap(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "packages")
    entry = store.add_wheel(make_wheel(tmp_path, "heavy", "1.0", {"heavy/blob.bin": b"\1" * 300_000}))
    lock = Lock(id="x", requirements=["heavy"], entries=[entry], size=entry.size, created=0)
    code = {"worker.py": b"x = 1\n" * 20_000}  # ~120 KB
    limit = 400_000
    # Each part alone fits; together they do not.
    packages_upload.check_bundle_size(code, None, limit=limit)
    packages_upload.check_bundle_size({"worker.py": b""}, lock, limit=limit)
    with pytest.raises(TooLarge) as caught:
        packages_upload.check_bundle_size(code, lock, limit=limit)
    message = str(caught.value)
    assert "cap of a script's code and packages together" in message, message
    assert "heavy" in message and "0 MiB cap" in message, message


def test_a_deploy_over_the_bundle_cap_is_refused_naming_it(c: Corral) -> None:
    """A dependency set already in the store (as a previous deploy left it) whose
    unpacked size, with the code, is over the cap: the deploy is refused."""
    store = PackageStore(c.state_dir / "packages")
    requirements = normalize(["bigdata==1.0"]).requirements
    entry_dir = store.entries / "bigdata-1.0-0123456789abcdef"
    (entry_dir / "bigdata").mkdir(parents=True)
    (entry_dir / "bigdata" / "__init__.py").write_text("")
    with open(entry_dir / "bigdata" / "blob.bin", "wb") as f:  # sparse: no disk used
        f.truncate(packages_upload.MAX_BUNDLE_BYTES + 2**20)
    size = _tree_size(entry_dir)
    store.write_lock(Lock(id=lock_id(requirements, target_tags()[0]), requirements=requirements,
                          entries=[Entry(name="bigdata", version="1.0", dir=entry_dir.name, size=size)],
                          size=size, created=0))
    source = "from workers import Response, WorkerEntrypoint\n" \
             "class Default(WorkerEntrypoint):\n    async def fetch(self, request):\n" \
             "        return Response('never')\n"
    resp = deploy_with_requirements(c, "toobig", source, requirements, check=False)
    assert resp.status == 413, resp
    cap_mib = packages_upload.MAX_BUNDLE_BYTES // 2**20
    assert f"{cap_mib} MiB cap of a script's code and packages together" in resp.text, resp.text
    assert "bigdata" in resp.text, resp.text
    assert c.request("/", host="toobig.localhost").status == 404
    assert_healthy(c)
