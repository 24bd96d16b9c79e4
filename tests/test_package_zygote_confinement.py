"""A package zygote runs the import code of wheels a tenant chose.

It keeps CAP_SETUID (its children take their uid with it), so a wheel's
import, there, could take another process's uid (the jail's uid is a
function of the pid) and signal it, lower its limits or read its memory:
a probe's wheel found another tenant's jailed child "signalable". The
package zygote now refuses every call that reaches another process before
it imports anything. A real wheel (built here, served to Corral's pip as a
find-links directory), a real package zygote, real children.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from tests.harness import Corral
from tests.test_cf_gaps import deploy

PROBE = '''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
IMPORTED_IN = os.getpid()
RESULTS = {}


def attempt(name, call):
    try:
        call()
        RESULTS[name] = "done"
    except OSError as exc:
        RESULTS[name] = type(exc).__name__


def prlimit_other():
    # prlimit64(ppid, RLIMIT_NOFILE, NULL, &old): reading another's limits
    old = (ctypes.c_ulong * 2)()
    if libc.prlimit(os.getppid(), 7, None, old) != 0:
        raise OSError(ctypes.get_errno(), "prlimit")


attempt("kill_parent", lambda: os.kill(os.getppid(), 0))
attempt("prlimit_parent", prlimit_other)
attempt("setpriority_parent", lambda: os.setpriority(os.PRIO_PROCESS, os.getppid(), 19))
'''

WORKER = '''
import os
import corral_zygote_probe as probe
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response.json({"imported_in": probe.IMPORTED_IN, "child": os.getpid(), "results": probe.RESULTS})
'''


def _wheel(directory: Path, module: str, source: str, version: str = "0.1") -> None:
    """A well-formed pure wheel (RECORD, WHEEL, top_level.txt) as pip wants it."""
    dist = f"{module}-{version}.dist-info"
    files = {f"{module}/__init__.py": source.encode(),
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: corral-tests\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n",
             f"{dist}/top_level.txt": f"{module}\n".encode()}
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for name, data in files.items()] + [f"{dist}/RECORD,,"]
    with zipfile.ZipFile(directory / f"{module}-{version}-py3-none-any.whl", "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")


def test_a_wheels_import_in_the_package_zygote_reaches_no_other_process(tmp_path):
    # Corral's pip runs as an unprivileged user: the wheel must be where it can read.
    wheels = Path(tempfile.mkdtemp(prefix="corral-wheels-"))
    wheels.chmod(0o755)
    _wheel(wheels, "corral_zygote_probe", PROBE)
    (wheels / "corral_zygote_probe-0.1-py3-none-any.whl").chmod(0o644)
    server = Corral(tmp_path / "state", env={"PIP_FIND_LINKS": str(wheels)}).start()
    try:
        server.deploy_dispatcher()
        deploy(server, "prober", WORKER, requirements=("corral_zygote_probe",))
        deadline = time.monotonic() + 60
        while not any(e.get("event") == "package_zygote.ready" for e in server.log_events()):
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.1)  # the set's zygote starts after the deploy (its imports, its rehearsal)
        # A second tenant of the same set: its cold start is a child of that zygote.
        deploy(server, "prober2", WORKER, requirements=("corral_zygote_probe",))
        resp = server.request("/", host="prober2.localhost")
        assert resp.status == 200, (resp, server.log()[-3000:])
        out = resp.json()
        # Imported in the set's package zygote, not in the child that serves.
        assert out["imported_in"] != out["child"], out
        assert out["results"] == {"kill_parent": "PermissionError", "prlimit_parent": "PermissionError",
                                  "setpriority_parent": "PermissionError"}, out
    finally:
        server.stop()
        shutil.rmtree(wheels, ignore_errors=True)
