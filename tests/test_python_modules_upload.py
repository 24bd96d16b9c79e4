"""Uploads with pywrangler's ``python_modules/``: Pyodide builds replaced by native ones.

Cloudflare's tooling for Python Workers with packages (pywrangler) installs a
project's dependencies as Pyodide builds into ``python_modules/``, and
wrangler uploads each of its files as a module named ``python_modules/<path>``
(Data parts; the SDK's ``.js`` files as ES modules), with no requirement
parts. Corral reads each ``<dist>.dist-info/METADATA`` into a pin, resolves
the pins as native builds into its package store (PyPI is reachable here, as
in tests/test_packages.py), and stores none of the vendored files: a
wasm32 ``.so`` cannot load, and a vendored ``workers`` must not shadow
Corral's SDK. Small pure-Python packages (six, idna) keep the installs short.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.admin import multipart
from supervisor.admin.project import load_project
from supervisor.admin.vendored_packages import read_pin, split
from supervisor.errors import Invalid, TooLarge
from tests.harness import REPO, Corral, Response, refused, with_tcp_admin
from tests.wrangler_cli import ensure_wrangler

SIX = "1.17.0"
NS = "/accounts/local/workers/dispatch/namespaces/default/scripts"
#: Bytes no CPython can load: what a Pyodide extension module is to it.
WASM_SO = b"\x00asm\x01\x00\x00\x00\xff\xfe junk, not an ELF file \x80\x81"

WORKER = '''import six
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        try:
            import fakepkg  # noqa: F401 - vendored only, so not stored
            fake = "importable"
        except ImportError:
            fake = "absent"
        where = "python_modules" if "python_modules" in six.__file__ else "store"
        return Response(f"six {six.__version__} from the {where}; fakepkg {fake}")
'''


def dist_info(name: str, version: str, *, headers: str | None = None) -> dict[str, bytes]:
    """A ``.dist-info`` as uv installs it into the Pyodide venv pywrangler copies."""
    folder = f"python_modules/{name.replace('-', '_')}-{version}.dist-info"
    meta = headers if headers is not None else f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    return {f"{folder}/METADATA": meta.encode(), f"{folder}/INSTALLER": b"uv\n",
            f"{folder}/RECORD": f"{folder}/METADATA,,\n".encode()}


def python_modules(six_version: str = SIX) -> dict[str, bytes]:
    """pywrangler's python_modules for ``dependencies = ["six"]``: six, the SDK
    it always adds, and a package with a wasm32 extension module."""
    return {
        "python_modules/pyvenv.cfg": b"",
        "python_modules/six.py": b'__version__ = "vendored"\nraise ImportError("the vendored six was imported")\n',
        **dist_info("six", six_version),
        "python_modules/fakepkg/__init__.py": b"from fakepkg._speedups import speed\n",
        "python_modules/fakepkg/_speedups.cpython-312-wasm32-emscripten.so": WASM_SO,
        "python_modules/workers/__init__.py": b'raise RuntimeError("the vendored workers SDK was imported")\n',
        "python_modules/workers/workflows.js": b"export async function run() {}\n",
        **dist_info("workers-runtime-sdk", "1.9.5"),
    }


def content_type(path: str) -> str:
    """The part type wrangler gives a module: vendored files are Data, the SDK's .js ES modules."""
    if path.startswith("python_modules/workers/") and path.endswith(".js"):
        return "application/javascript+module"
    return "application/octet-stream" if path.startswith("python_modules/") else "text/x-python"


def upload(c: Corral, method: str, path: str, modules: dict[str, bytes | str],
           requirements: tuple[str, ...] = ()) -> Response:
    """An upload in wrangler's shape: one part per module, named by its path."""
    parts = [multipart.Part(name="metadata", content_type="application/json",
                            data=json.dumps({"main_module": "worker.py"}).encode())]
    for name, data in modules.items():
        parts.append(multipart.Part(name=name, filename=name, content_type=content_type(name),
                                    data=data.encode() if isinstance(data, str) else data))
    parts += [multipart.Part(name=r, filename=r, content_type="text/x-python-requirement", data=b"")
              for r in requirements]
    ctype, body = multipart.encode(parts)
    return c.admin(method, path, body, ctype)


def stored_modules(c: Corral, name: str) -> list[str]:
    resp = c.admin("GET", f"{NS}/{name}/content")
    assert resp.status == 200, resp
    return [p.filename or p.name for p in multipart.parse(resp.headers["content-type"], resp.body)]


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corral]:
    server = Corral(tmp_path_factory.mktemp("python-modules")).start()
    try:
        server.deploy_dispatcher()
        yield server
    finally:
        server.stop()


# -- over the admin API ------------------------------------------------------------------

def test_a_pywrangler_upload_runs_on_native_builds_of_its_pins(c: Corral) -> None:
    resp = upload(c, "PUT", f"{NS}/pyw", {"worker.py": WORKER, **python_modules()})
    assert resp.status == 200, f"{resp.text}\n{c.log()[-3000:]}"
    # The store's six, at the vendored version; the vendored SDK and package are not there.
    assert c.request("/", host="pyw.localhost").text == f"six {SIX} from the store; fakepkg absent"
    lines = [e for e in c.log_events() if e.get("event") == "admin.python_modules_replaced"]
    assert lines and lines[-1]["script"] == "pyw", c.log()[-2000:]
    assert lines[-1]["pins"] == [f"six=={SIX}"] and lines[-1]["dropped_files"] == len(python_modules())
    assert lines[-1]["runtime"] == ["workers-runtime-sdk"]


def test_vendored_files_are_not_stored(c: Corral) -> None:
    upload(c, "PUT", f"{NS}/pyw-content", {"worker.py": WORKER, **python_modules()})
    assert stored_modules(c, "pyw-content") == ["worker.py"]
    script = c.admin("GET", f"{NS}/pyw-content").json()["result"]
    assert "python_modules" not in json.dumps(script)


def test_an_explicit_requirement_part_alongside(c: Corral) -> None:
    source = WORKER.replace("import six\n", "import idna\nimport six\n").replace(
        'f"six {six.__version__}', 'f"{idna.encode(\'bücher.example\').decode()} six {six.__version__}')
    resp = upload(c, "PUT", f"{NS}/pyw-idna", {"worker.py": source, **python_modules()},
                  requirements=("idna", f"six=={SIX}"))
    assert resp.status == 200, resp.text
    assert c.request("/", host="pyw-idna.localhost").text == \
        f"xn--bcher-kva.example six {SIX} from the store; fakepkg absent"
    assert stored_modules(c, "pyw-idna") == ["worker.py"]
    script = c.admin("GET", f"{NS}/pyw-idna").json()["result"]
    assert script["requirements"] == ["idna", f"six=={SIX}"]


def test_a_requirement_part_that_conflicts_with_a_pin_is_refused_naming_both(c: Corral) -> None:
    resp = upload(c, "PUT", f"{NS}/pyw-clash", {"worker.py": WORKER, **python_modules()},
                  requirements=("six==1.16.0",))
    refused(resp, 400, "six==1.16.0", f"six=={SIX}", "python_modules/six-1.17.0.dist-info/METADATA")


def test_a_pin_with_no_build_for_the_host_is_refused_naming_python_modules(c: Corral) -> None:
    resp = upload(c, "PUT", f"{NS}/pyw-nope", {"worker.py": WORKER, **python_modules("0.0.1")})
    refused(resp, 400, "six==0.0.1", "python_modules/six-0.0.1.dist-info/METADATA", "Pyodide")


def test_a_metadata_without_a_version_is_refused(c: Corral) -> None:
    modules = {**python_modules(), **dist_info("six", SIX, headers="Metadata-Version: 2.1\nName: six\n")}
    resp = upload(c, "PUT", f"{NS}/pyw-bad", {"worker.py": WORKER, **modules})
    refused(resp, 400, "python_modules/six-1.17.0.dist-info/METADATA", "no Version")


def test_versions_upload_and_content_update_take_python_modules_too(c: Corral) -> None:
    c.deploy("pyw-later", "from workers import Response, WorkerEntrypoint\n\n"
                          "class Default(WorkerEntrypoint):\n"
                          "    async def fetch(self, request):\n        return Response('no packages')\n")
    resp = upload(c, "POST", f"{NS}/pyw-later/versions", {"worker.py": WORKER, **python_modules()})
    assert resp.status == 200, resp.text
    assert c.request("/", host="pyw-later.localhost").text == "no packages"
    resp = upload(c, "PUT", f"{NS}/pyw-later/content", {"worker.py": WORKER, **python_modules()})
    assert resp.status == 200, resp.text
    assert c.request("/", host="pyw-later.localhost").text == f"six {SIX} from the store; fakepkg absent"
    assert stored_modules(c, "pyw-later") == ["worker.py"]


def test_python_modules_are_weighed_apart_from_the_script_size_limit(c: Corral) -> None:
    """What wrangler sends for a big stack (a Django site-packages is ~3,000
    files and several MiB): over the 10 MiB and 1,000-part limits of the code
    itself, which apply to what is kept."""
    big = {f"python_modules/bigpkg/m{i}.py": b"x = 1\n" for i in range(1200)}
    big |= {f"python_modules/bigpkg/_ext{i}.cpython-312-wasm32-emscripten.so": WASM_SO * (6 * 2**20 // len(WASM_SO))
            for i in range(2)}
    resp = upload(c, "PUT", f"{NS}/pyw-big", {"worker.py": WORKER, **python_modules(), **big})
    assert resp.status == 200, resp.text
    assert stored_modules(c, "pyw-big") == ["worker.py"]


# -- the pieces ----------------------------------------------------------------------------

HAND_VENDORED = '''import mod2
import helper
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(f"{mod2.hello()} {helper.WHO}")
'''


def test_modules_vendored_by_hand_import_as_on_cloudflare(c: Corral) -> None:
    # No dist-info, no pyvenv.cfg: modules a project put in python_modules/ by
    # hand (wrangler's e2e "vendored modules" project). workerd has the folder
    # on sys.path after the main module's, so the upload's own module wins and
    # the runtime's names are never shadowed.
    resp = upload(c, "PUT", f"{NS}/hand", {
        "worker.py": HAND_VENDORED,
        "helper.py": 'WHO = "own"\n',
        "python_modules/mod2.py": "def hello():\n    return 'vendored'\n",
        "python_modules/helper.py": 'WHO = "the vendored helper"\n',
        "python_modules/workers.py": 'raise RuntimeError("the vendored workers was imported")\n',
    })
    assert resp.status == 200, resp.text
    answer = c.request("/", host="hand.localhost")
    assert answer.status == 200 and answer.text == "vendored own", answer.text
    assert sorted(stored_modules(c, "hand")) == ["helper.py", "mod2.py", "worker.py"]


def test_pins_are_read_from_metadata_headers_whatever_the_folder_says() -> None:
    pin = read_pin("python_modules/Zope.Interface-7.2.dist-info/METADATA",
                   b"Metadata-Version: 2.1\nName: Zope.Interface\nVersion: 7.2+emscripten\nSummary: x\n\nbody\n")
    assert (pin.name, pin.version, pin.requirement) == ("zope-interface", "7.2", "zope-interface==7.2")
    with pytest.raises(Invalid, match="no Name and Version"):
        read_pin("python_modules/x-1.dist-info/METADATA", b"Metadata-Version: 2.1\n")
    with pytest.raises(Invalid, match="not a valid package name and version"):
        read_pin("python_modules/x-1.dist-info/METADATA", b"Name: x\nVersion: one\n")


def test_split_keeps_the_code_and_skips_cloudflares_runtime() -> None:
    parts = [multipart.Part(name=name, filename=name, data=data)
             for name, data in {"worker.py": b"x = 1", **python_modules(),
                                **dist_info("pyodide-py", "0.27.7"), **dist_info("webtypy", "0.1.7"),
                                "python_modules/fakepkg/inner-1.0.dist-info/METADATA": b"Name: inner\n"}.items()]
    kept, vendored = split(parts)
    assert [p.name for p in kept] == ["worker.py"]
    assert [p.requirement for p in vendored.pins] == [f"six=={SIX}"]
    assert sorted(vendored.provided) == ["pyodide-py", "webtypy", "workers-runtime-sdk"]
    with pytest.raises(TooLarge, match="python_modules/ is .* over the .* limit of vendored packages"):
        split(parts, limit=100)


def test_merging_a_requirement_part_with_the_pins() -> None:
    _, vendored = split([multipart.Part(name=n, data=d) for n, d in
                         {**dist_info("six", SIX), **dist_info("idna", "3.10")}.items()])
    assert vendored.merge([]) == ["idna==3.10", f"six=={SIX}"]
    # An explicit requirement keeps its extras and markers, at the version pywrangler installed.
    assert vendored.merge(["six>=1.10"]) == ["idna==3.10", f"six=={SIX}"]
    assert vendored.merge(["idna[all]; python_version >= '3'"]) == ["idna[all]==3.10", f"six=={SIX}"]
    with pytest.raises(Invalid, match="'six<1.17' .* conflicts with 'six==1.17.0'"):
        vendored.merge(["six<1.17"])
    # A failed resolution names the pin and its METADATA, or lists the pins when another requirement failed.
    assert "six==1.17.0 (from python_modules/six-1.17.0.dist-info/METADATA) came from the upload's " \
        "python_modules/" in vendored.explain(Invalid("no wheel of six==1.17.0 was found")).message
    assert vendored.explain(Invalid("no wheel of attrs==0.1 was found")).message == \
        "no wheel of attrs==0.1 was found (the requirements included pins from the upload's python_modules/: " \
        "idna==3.10, six==1.17.0)"


# -- corral deploy and wrangler ------------------------------------------------------------

def pywrangler_project(root: Path) -> Path:
    """A project as ``uv run pywrangler sync`` leaves it: python_modules/ beside pyproject.toml."""
    files: dict[str, bytes | str] = {
        "wrangler.toml": 'name = "pyw-cli"\nmain = "src/worker.py"\ncompatibility_date = "2025-06-01"\n'
                         'compatibility_flags = ["python_workers"]\n',
        "pyproject.toml": f'[project]\nname = "pyw"\nversion = "0.1.0"\ndependencies = ["six=={SIX}"]\n',
        "src/worker.py": WORKER,
        **python_modules(),
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return root


def test_corral_deploy_does_not_upload_python_modules(c: Corral, tmp_path: Path) -> None:
    project = pywrangler_project(tmp_path)
    assert sorted(load_project(project).modules) == ["src/worker.py"]
    done = subprocess.run([sys.executable, "-m", "supervisor", "deploy", "--socket", c.socket_path,
                           "--namespace", "default", "pyw-cli", str(project)],
                          capture_output=True, text=True, cwd=str(REPO), timeout=300)
    assert done.returncode == 0, done.stderr
    assert c.request("/", host="pyw-cli.localhost").text == f"six {SIX} from the store; fakepkg absent"
    assert stored_modules(c, "pyw-cli") == ["src/worker.py"]


def test_the_real_wrangler_deploys_a_pywrangler_project(tmp_path: Path) -> None:
    """``wrangler deploy`` of the same project: it sends python_modules, not the pyproject's dependencies."""
    wrangler = ensure_wrangler()
    project = pywrangler_project(tmp_path / "project")
    (project / "pyproject.toml").write_text('[project]\nname = "pyw"\nversion = "0.1.0"\ndependencies = []\n')
    server = with_tcp_admin(tmp_path / "state").start()
    try:
        server.namespace("customers")
        server.deploy_dispatcher(namespace="customers")
        token = server.admin("POST", "/accounts/local/corral/tokens", {"name": "wrangler", "scope": "admin"})
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CI": "1", "NO_COLOR": "1",
               "WRANGLER_SEND_METRICS": "false", "XDG_CONFIG_HOME": str(tmp_path / "config"),
               "CLOUDFLARE_API_BASE_URL": f"http://127.0.0.1:{server.tcp_port}/client/v4",  # type: ignore[attr-defined]
               "CLOUDFLARE_API_TOKEN": token.json()["result"]["value"], "CLOUDFLARE_ACCOUNT_ID": "local"}
        done = subprocess.run([str(wrangler), "deploy", "--dispatch-namespace", "customers"], cwd=project,
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert server.request("/", host="pyw-cli.localhost").text == f"six {SIX} from the store; fakepkg absent"
        content = server.admin("GET", "/accounts/local/workers/dispatch/namespaces/customers/scripts/pyw-cli/content")
        names = [p.filename or p.name for p in multipart.parse(content.headers["content-type"], content.body)]
        assert names == ["worker.py"]
    finally:
        server.stop()
