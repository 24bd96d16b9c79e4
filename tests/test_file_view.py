"""The jail's read-only file view, seen by real tenants in a real ``corral serve``.

A child sees the standard library, the runtime's code and its own bundle as
files, read-only; nothing else exists. Each test deploys tenant workers
through the admin API and reads what they report (see tests/test_jail.py for
the conventions: ``attempt()`` reports an exception instead of raising).
"""

from __future__ import annotations

import ctypes.util
import glob
import json
import os
import shutil
from pathlib import Path

import pytest

from supervisor.pool import bundles as bundles_mod
from tests.harness import REPO, Corral
from tests.test_jail import (
    EACCES,
    ENOENT,
    EPERM,
    EROFS,
    _wait_admin,
    assert_healthy,
    call,
    corral_with_control,
    denied,
    wait_for,
    worker,
)

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the mount view needs root")


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory):
    with corral_with_control(tmp_path_factory.mktemp("fileview")) as server:
        yield server


def _view_ready(c: Corral) -> dict:
    for line in c.log_path.read_text().splitlines():
        if '"zygote.ready"' in line:
            return json.loads(line)
    raise AssertionError(f"no zygote.ready in the log:\n{c.log()}")


# ---------------------------------------------------------------------------
# a tenant's own files
# ---------------------------------------------------------------------------

OWN_FILES = worker('''
    import importlib.metadata
    import importlib.resources
    from pathlib import Path

    import helpers.util

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            here = Path(__file__).parent
            return Response.json({
                "file": __file__,
                "helper_file": helpers.util.__file__,
                "data": attempt(lambda: (here / "data" / "greeting.txt").read_text()),
                "resource": attempt(lambda: importlib.resources.files("helpers")
                                    .joinpath("table.json").read_text()),
                "version": attempt(importlib.metadata.version, "tinydist"),
                "listing": attempt(lambda: sorted(os.listdir(here))),
                "template": attempt(lambda: helpers.util.render("Ada")),
            })
''')


def test_a_tenant_reads_its_own_files(c: Corral) -> None:
    c.deploy("own", OWN_FILES, modules={
        "data/greeting.txt": "hello from a data file",
        "helpers/__init__.py": "",
        "helpers/util.py": "from pathlib import Path\n"
                           "def render(name):\n"
                           "    return (Path(__file__).with_name('hello.tmpl').read_text()"
                           ".format(name=name))\n",
        "helpers/hello.tmpl": "Hello, {name}!",
        "helpers/table.json": '{"rows": 3}',
        "tinydist-1.2.3.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinydist\nVersion: 1.2.3\n",
    })
    out = call(c, "own")
    bundle = Path(out["file"]).parent
    assert bundle.parent == c.state_dir.resolve() / "bundles", out["file"]
    assert out["helper_file"] == str(bundle / "helpers" / "util.py")
    assert out["data"] == {"ok": True, "value": "'hello from a data file'"}
    assert out["resource"] == {"ok": True, "value": "'{\"rows\": 3}'"}
    assert out["version"] == {"ok": True, "value": "'1.2.3'"}
    assert out["template"] == {"ok": True, "value": "'Hello, Ada!'"}
    assert "helpers" in out["listing"]["value"] and "worker.py" in out["listing"]["value"]
    # The supervisor's copy is the same bytes, owner-writable only.
    assert (bundle / "helpers" / "hello.tmpl").read_text() == "Hello, {name}!"
    assert oct((c.state_dir / "bundles").stat().st_mode & 0o777) == "0o711"


# ---------------------------------------------------------------------------
# nothing else exists
# ---------------------------------------------------------------------------

OUTSIDE = worker('''
    from pathlib import Path

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return Response.json({
                "locale_exists": attempt(lambda: Path("/usr/share/locale").exists()),
                "passwd": attempt(lambda: open("/etc/passwd").read()),
                "var": attempt(os.listdir, "/var"),
                "root": attempt(os.listdir, "/"),
                "proc_exists": os.path.exists("/proc"),
                "proc_self": attempt(os.listdir, "/proc/self"),
                "proc_1": attempt(lambda: open("/proc/1/status").read()),
                "dev_exists": os.path.exists("/dev"),
                "pid": os.getpid(),
            })
''')


def test_nothing_outside_the_view_exists(c: Corral) -> None:
    c.deploy("outside", OUTSIDE)
    out = call(c, "outside")
    # CPython's Path.exists() swallows ENOENT only: Django asks this on import.
    assert out["locale_exists"] == {"ok": True, "value": "False"}
    denied(out["passwd"], "FileNotFoundError", errno=ENOENT)
    denied(out["var"], "FileNotFoundError", errno=ENOENT)
    # No /proc at all: nothing of other processes (nor of itself).
    assert out["proc_exists"] is False and out["dev_exists"] is False
    denied(out["proc_self"], "FileNotFoundError", errno=ENOENT)
    denied(out["proc_1"], "FileNotFoundError", errno=ENOENT)
    # Landlock lets a script list only its own trees, not the view's root.
    denied(out["root"], errno=EACCES)
    assert_healthy_view(c, out["pid"])


def assert_healthy_view(c: Corral, pid: int) -> None:
    """Seen from outside (as root), the child's root holds the view and nothing else."""
    if os.geteuid() != 0 or not _view_ready(c).get("view"):
        return
    root = Path(f"/proc/{pid}/root")
    stdlib = Path(os.__file__).resolve().parent
    expected_tops = {p.parts[1] for p in (stdlib, REPO.resolve(), c.state_dir.resolve(),
                                           Path("/usr/lib"))} | {"lib", "lib64"}
    tops = set(os.listdir(root))
    assert tops <= expected_tops | {"etc"}, tops - expected_tops
    for absent in ("proc", "dev", "home", "var", "sys"):
        assert absent not in tops or absent in expected_tops
    # Of /etc, only public data the standard library reads (MIME types, CAs).
    if "etc" in tops:
        assert set(os.listdir(root / "etc")) <= {"mime.types", "ssl"}, os.listdir(root / "etc")
    assert sorted(os.listdir(root / str(c.state_dir.resolve()).lstrip("/"))) == ["bundles", "packages"]
    # Of the repository, the runtime's code (and the virtualenv holding msgspec, if here).
    repo = set(os.listdir(root / str(REPO.resolve()).lstrip("/")))
    assert {"protocol", "sandbox"} <= repo <= {"protocol", "sandbox", ".venv"}, repo


def test_another_tenants_bundle_is_unreadable(c: Corral) -> None:
    c.deploy("victim", worker('''
        SECRET_SOURCE = "victim-source-marker"

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                return Response.json({"file": __file__})
    '''), modules={"private.txt": "victim-data"})
    victim_file = call(c, "victim")["file"]
    c.deploy("thief", worker('''
        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                q = query(request)
                victim = q["file"]
                folder = os.path.dirname(victim)
                return Response.json({
                    "source": attempt(lambda: open(victim).read()),
                    "data": attempt(lambda: open(os.path.join(folder, "private.txt")).read()),
                    "listing": attempt(os.listdir, folder),
                    "bundles": attempt(os.listdir, os.path.dirname(folder)),
                    "own": attempt(lambda: len(open(__file__).read())),
                })
    '''))
    out = call(c, "thief", f"/?file={victim_file}")
    for key in ("source", "data", "listing", "bundles"):
        denied(out[key], errno=EACCES)
    assert out["own"]["ok"] is True
    assert "victim-source-marker" not in str(out) and "victim-data" not in str(out)
    assert_healthy(c)


def test_another_tenants_bundle_cannot_be_found_by_its_version(c: Corral) -> None:
    """The attacker knows the layout (its own ``__file__`` is
    ``<state>/bundles/<name>/worker.py``) and the victim's version: the
    content hash of its code and bindings, which anyone who knows the code
    can compute, and the ``etag`` the admin API shows. A bundle folder's
    name is not that hash (supervisor.pool.bundles.Bundles.dir_name), so
    every path built from it does not exist: not even ``stat`` tells
    whether the victim runs, nor the size of its files."""
    resp = c.deploy("quarry", worker('''
        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                return Response.json({"file": __file__})
    '''), modules={"private.txt": "quarry-data"})
    version = resp.json()["result"]["etag"]
    assert version and os.path.basename(os.path.dirname(call(c, "quarry")["file"])) != version
    c.deploy("prowler", worker('''
        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                version = query(request)["version"]
                own = os.path.dirname(__file__)
                root = os.path.dirname(own)
                guess = os.path.join(root, version)
                return Response.json({
                    "folder": attempt(os.stat, guess),
                    "main": attempt(os.stat, os.path.join(guess, "worker.py")),
                    "data": attempt(os.stat, os.path.join(guess, "private.txt")),
                    "exists": os.path.exists(guess),
                    "open": attempt(lambda: open(os.path.join(guess, "worker.py")).read()),
                    "listing": attempt(os.listdir, guess),
                    "root": attempt(os.listdir, root),
                    "own": attempt(os.listdir, own),
                })
    '''))
    out = call(c, "prowler", f"/?version={version}")
    for key in ("folder", "main", "data", "open", "listing"):
        denied(out[key], "FileNotFoundError", errno=ENOENT)
    assert out["exists"] is False
    denied(out["root"], errno=EACCES)  # the bundles root is not listable (it names no one)
    assert out["own"]["ok"] is True and "worker.py" in out["own"]["value"]
    assert_healthy(c)


WRITER = worker('''
    import tempfile

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            def write(path, mode="w"):
                with open(path, mode) as f:
                    f.write("x")

            return Response.json({
                "pid": os.getpid(),
                "own_file": attempt(write, __file__, "a"),
                "own_new": attempt(write, os.path.join(os.path.dirname(__file__), "new.txt")),
                "own_mkdir": attempt(os.mkdir, os.path.join(os.path.dirname(__file__), "d")),
                "own_remove": attempt(os.remove, __file__),
                "tmp": attempt(write, "/tmp/x"),
                "tempfile": attempt(tempfile.TemporaryFile),
                "stdlib": attempt(write, os.__file__, "r+"),
                "stdlib_new": attempt(write, os.path.join(os.path.dirname(os.__file__), "evil.py")),
                "runtime": attempt(write, sys.modules["workers"].__file__, "a"),
                "truncate": attempt(os.truncate, __file__, 0),
            })
''')


def test_writes_fail_and_the_child_lives(c: Corral) -> None:
    c.deploy("writer", WRITER)
    first = call(c, "writer")
    for key in ("own_file", "own_new", "tmp", "stdlib", "stdlib_new", "runtime"):
        denied(first[key], "OSError", errno=EROFS)
    for key in ("own_mkdir", "own_remove", "truncate"):
        denied(first[key], errno=EPERM)
    assert first["tempfile"]["ok"] is False  # no writable directory anywhere
    again = call(c, "writer")
    assert again["pid"] == first["pid"], "the child died writing"
    assert_healthy(c)


def _small_library() -> bytes:
    name = ctypes.util.find_library("uuid") or "libuuid.so.1"
    for folder in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"):
        path = Path(folder) / name
        if path.exists():
            return path.resolve().read_bytes()
    candidates = glob.glob("/usr/lib/**/libuuid.so*", recursive=True)
    if not candidates:
        pytest.skip("no small shared library to copy into a bundle")
    return Path(candidates[0]).resolve().read_bytes()


def test_native_code_from_a_bundle_cannot_be_mapped(c: Corral) -> None:
    c.deploy("dlopen", worker('''
        import ctypes

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                mine = os.path.join(os.path.dirname(__file__), "native", "libtiny.so")
                return Response.json({
                    "exists": os.path.exists(mine),
                    "readable": attempt(lambda: len(open(mine, "rb").read())),
                    "bundle": attempt(ctypes.CDLL, mine),
                    # The same library from the view's system libraries loads.
                    "system": attempt(ctypes.CDLL, "libuuid.so.1"),
                })
    '''), modules={"native/libtiny.so": _small_library()})
    out = call(c, "dlopen")
    assert out["exists"] is True and out["readable"]["ok"] is True, out
    denied(out["bundle"], "OSError", errno=None)
    assert "failed to map segment" in out["bundle"]["error"] or "not permitted" in out["bundle"]["error"], out
    assert out["system"]["ok"] is True, out


# ---------------------------------------------------------------------------
# the whole standard library
# ---------------------------------------------------------------------------

STDLIB = worker('''
    import builtins, importlib, inspect, sqlite3, zoneinfo, ctypes, socket, threading, subprocess
    import multiprocessing, socketserver, concurrent.futures, xml.etree.ElementTree, tomllib

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            def db():
                con = sqlite3.connect(":memory:")
                con.execute("create table t (x)")
                con.executemany("insert into t values (?)", [(1,), (2,)])
                return con.execute("select sum(x) from t").fetchone()[0]

            def mp_start():
                p = multiprocessing.Process(target=print)
                p.start()

            def serve():
                socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler)

            return Response.json({
                "sqlite": attempt(db),
                "inspect": attempt(lambda: inspect.signature(db).parameters.__len__()),
                "source": attempt(lambda: inspect.getsource(Default).splitlines()[0]),
                "tomllib": attempt(tomllib.loads, "a = 1"),
                "xml": attempt(lambda: xml.etree.ElementTree.fromstring("<a>b</a>").text),
                "popen": attempt(subprocess.Popen, ["id"]),
                "thread": attempt(threading.Thread(target=print).start),
                "socket": attempt(socket.socket),
                "mp_start": attempt(mp_start),
                "mp_pool": attempt(multiprocessing.Pool, 2),
                "process_pool": attempt(concurrent.futures.ProcessPoolExecutor),
                "socketserver": attempt(serve),
                "fork": attempt(os.fork),
            })
''')


def test_the_standard_library_imports_and_what_cannot_work_says_so(c: Corral) -> None:
    c.deploy("stdlib", STDLIB)
    out = call(c, "stdlib")
    assert out["sqlite"] == {"ok": True, "value": "3"}, out["sqlite"]
    assert out["inspect"] == {"ok": True, "value": "0"}
    assert out["source"] == {"ok": True, "value": "'class Default(WorkerEntrypoint):'"}
    assert out["tomllib"]["ok"] and out["xml"] == {"ok": True, "value": "'b'"}
    why = {"popen": "start processes", "thread": "threads", "socket": "sockets",
           "mp_start": "start processes", "mp_pool": "start processes",
           "process_pool": "start processes", "socketserver": "sockets", "fork": "start processes"}
    for key, reason in why.items():
        assert out[key]["ok"] is False, (key, out[key])
        assert "not available in Corral's sandbox" in out[key]["error"], (key, out[key])
        assert reason in out[key]["error"], (key, out[key])
    # An OSError, as libraries expect of a missing program or network.
    for key in ("socket", "socketserver", "popen", "fork", "mp_start", "mp_pool",
                "process_pool"):
        assert out[key]["type"] == "PermissionError", (key, out[key])
    assert out["thread"]["type"] == "RuntimeError"  # as CPython's "can't start new thread"


def _base_only_package() -> tuple[str, str] | None:
    """(a site-packages folder of the base interpreter, a package only it has).
    The base interpreter's own answer: a pyenv or source build keeps its
    site-packages inside the standard library's folder, Debian's python3 in
    /usr/lib/python3/dist-packages and /usr/local/lib/python3.X/dist-packages."""
    import json
    import subprocess
    import sys

    bases = json.loads(subprocess.run(
        [sys._base_executable, "-I", "-c", "import json, site; print(json.dumps(site.getsitepackages()))"],
        capture_output=True, text=True, check=True).stdout)
    ours = {p for p in sys.path if p.endswith("-packages") and p not in bases}
    for base in bases:
        for name in ("colorama", "six", "blinker", "boto3", "numpy", "yaml", "click"):
            if os.path.isfile(os.path.join(base, name, "__init__.py")) or \
                    os.path.isfile(os.path.join(base, name + ".py")):
                if not any(os.path.exists(os.path.join(p, name)) or os.path.exists(os.path.join(p, name + ".py"))
                           for p in ours):
                    return base, name
    return None


def test_the_base_interpreters_site_packages_are_not_in_the_view(c: Corral) -> None:
    """F9: the standard library's folder holds the base interpreter's
    site-packages; tenants could import whatever the host installed there
    without declaring it. It is hidden; the standard library and the
    runtime's own packages (msgspec, greenlet) still import."""
    found = _base_only_package()
    if found is None:
        pytest.skip("the base interpreter has no package the virtualenv lacks")
    base, name = found
    c.deploy("basepkgs", worker(f'''
        import sys

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                sys.path.append({base!r})
                out = {{"listing": attempt(lambda: os.listdir({base!r})),
                        "import": attempt(lambda: __import__({name!r}).__name__)}}
                for mod in ("json", "sqlite3", "decimal", "email.parser", "zoneinfo", "msgspec", "greenlet"):
                    out[mod] = attempt(lambda: __import__(mod).__name__)
                return Response.json(out)
    '''))
    out = call(c, "basepkgs")
    assert out["import"]["ok"] is False and out["import"]["type"] == "ModuleNotFoundError", out["import"]
    assert out["listing"] in ({"ok": True, "value": "[]"},) or out["listing"]["ok"] is False, out["listing"]
    for mod in ("json", "sqlite3", "decimal", "email.parser", "zoneinfo", "msgspec", "greenlet"):
        assert out[mod]["ok"] is True, (mod, out[mod])
    assert_healthy(c)


# ---------------------------------------------------------------------------
# the bundles on disk
# ---------------------------------------------------------------------------


def test_unused_bundles_are_collected(c: Corral) -> None:
    source = 'from workers import Response, WorkerEntrypoint\n# {}\n' \
             'class Default(WorkerEntrypoint):\n    async def fetch(self, request):\n' \
             '        return Response(__file__)\n'
    c.deploy("gc", source.format(1))
    first = c.request("/", host="gc.localhost").text
    c.deploy("gc", source.format(2))
    second = c.request("/", host="gc.localhost").text
    assert first != second and Path(second).is_file()
    assert wait_for(lambda: not Path(first).exists()), "the old version's bundle stayed"
    r = c.admin("DELETE", "/accounts/local/workers/dispatch/namespaces/default/scripts/gc")
    assert r.status == 200, r
    assert wait_for(lambda: not Path(second).exists()), "a deleted script's bundle stayed"
    assert not [p for p in (c.state_dir / "bundles").iterdir() if p.name.startswith(".tmp-")]


def test_versions_cannot_collide_and_a_squatted_bundle_is_not_reused(tmp_path: Path) -> None:
    """F7: the version hash joined path and data with NULs and no lengths, so
    a squatter's files could share a victim's version, and the victim was
    served the squatter's folder, reused because it existed."""
    from supervisor.model import content_version, module_path_ok

    worker = b"from workers import Response\n"
    squatter = {"worker.py": worker, "x.txt": b"hello\0y.txt\0world"}
    victim = {"worker.py": worker, "x.txt": b"hello", "y.txt": b"world"}
    version = content_version("worker.py", victim, [], "2024-01-01")
    assert content_version("worker.py", squatter, [], "2024-01-01") != version
    assert content_version("a", {"b": b""}, [], "") != content_version("", {"ab": b""}, [], "")

    # A folder of that name that was not written with these files (an old
    # state dir's, squatted before the fix) is replaced, not reused.
    root = tmp_path / "bundles"
    (root / version).mkdir(parents=True)
    (root / version / "x.txt").write_bytes(squatter["x.txt"])
    path = bundles_mod.write_bundle(str(root), version, victim)
    assert sorted(p.name for p in Path(path).iterdir()) == [".corral-bundle", "__pycache__", "worker.py",
                                                            "x.txt", "y.txt"]
    assert Path(path, "x.txt").read_bytes() == b"hello"
    # Written with these files: reused as it is.
    inode = Path(path).stat().st_ino
    assert bundles_mod.write_bundle(str(root), version, victim) == path and Path(path).stat().st_ino == inode
    # Another file set under the same name is not served the folder either.
    again = bundles_mod.write_bundle(str(root), version, squatter)
    assert sorted(p.name for p in Path(again).iterdir()) == [".corral-bundle", "__pycache__", "worker.py",
                                                             "x.txt"]
    assert [p.name for p in root.iterdir()] == [version]  # nothing left behind
    assert not module_path_ok(".corral-bundle")  # the marker is never a module


def test_write_bundle_is_atomic_and_refuses_bad_paths(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    root.mkdir()
    path = bundles_mod.write_bundle(str(root), "v1", {"a/b.py": b"x = 1", "c.txt": b"c"})
    assert Path(path, "a", "b.py").read_bytes() == b"x = 1"
    assert oct(Path(path, "c.txt").stat().st_mode & 0o777) == "0o644"
    for bad in ({"../x.py": b""}, {"/abs.py": b""}, {"a//b.py": b""}):
        with pytest.raises(bundles_mod.BundleError):
            bundles_mod.write_bundle(str(root), "v2", bad)
    with pytest.raises(bundles_mod.BundleError, match="both a file and a folder"):
        bundles_mod.write_bundle(str(root), "v3", {"a": b"", "a/b.py": b""})
    with pytest.raises(bundles_mod.BundleError):
        bundles_mod.write_bundle(str(root), "../escape", {"a.py": b""})
    # Failed writes leave nothing behind; collection keeps only what is asked.
    assert sorted(p.name for p in root.iterdir()) == ["v1"]
    (root / ".tmp-crashed").mkdir()
    assert sorted(bundles_mod.collect(str(root), frozenset({"v1"}))) == [".tmp-crashed"]
    assert bundles_mod.collect(str(root), frozenset()) == ["v1"]


@ROOT_ONLY
def test_the_zygote_reports_its_file_jail(c: Corral) -> None:
    ready = _view_ready(c)
    assert ready["view"] is True, ready
    assert ready["landlock"] >= 1, ready
    assert ready["problems"] == [], ready
    assert "mnt" in ready["namespaces"]


def test_bundles_survive_a_restart_and_are_rewritten_if_lost(tmp_path: Path) -> None:
    server = Corral(tmp_path / "state").start()
    try:
        _wait_admin(server)
        server.deploy_dispatcher()
        server.deploy("keep", 'from workers import Response, WorkerEntrypoint\n'
                              'class Default(WorkerEntrypoint):\n'
                              '    async def fetch(self, request):\n'
                              '        return Response(open(__file__).read()[:4])\n')
        assert server.request("/", host="keep.localhost").text == "from"
    finally:
        server.stop()
    shutil.rmtree(tmp_path / "state" / "bundles")  # lost (or an upgrade from in-memory scripts)
    server = Corral(tmp_path / "state").start()
    try:
        _wait_admin(server)
        assert server.request("/", host="keep.localhost").text == "from"
        assert server.request("/", host="keep.localhost").text == "from"
    finally:
        server.stop()


def test_without_the_mount_view_landlock_leaves_the_base_site_packages_out(tmp_path: Path) -> None:
    """Where the view cannot be built (no mount namespace), the Landlock rules
    name the standard library's entries one by one, the masked folder left out.
    An interpreter that keeps its site-packages elsewhere (Debian's python3)
    masks nothing: the same split is then checked on a made-up layout of a
    pyenv or source build's."""
    from sandbox import file_view

    view = file_view.plan("", "")
    stdlib = os.path.dirname(os.__file__)
    if not view.masked:
        stdlib = str(tmp_path / "lib" / "python3.11")
        site = os.path.join(stdlib, "site-packages")
        for folder in ("json", "site-packages/six", "site-packages/msgspec"):
            os.makedirs(os.path.join(stdlib, folder))
        Path(stdlib, "os.py").write_text("")
        view = file_view.FileView(trees=[stdlib, os.path.join(site, "msgspec")], masked=[site])
    split = [path for path, _ in view.readable(with_bundles=False, split_masked=True)]
    assert not [p for p in split if view.hidden(p)], [p for p in split if view.hidden(p)][:5]
    assert os.path.join(stdlib, "json") in split and os.path.join(stdlib, "os.py") in split
    assert all(t in split for t in view.trees if t != stdlib)  # msgspec, greenlet, the runtime
    assert stdlib in [p for p, _ in view.readable(with_bundles=False)]  # the view hides it instead
