"""Cloudflare's own Python projects, deployed unmodified with `corral deploy`.

The folders (tests/cf_projects/c3-*, wrangler-*; sources and licences in its
README) are C3's Python templates from cloudflare/workers-sdk
(``npm create cloudflare`` with Python: hello world, static assets, a Durable
Object, both), wrangler's own ``fixtures/python-worker`` (a
``requirements.txt``, the older ``on_fetch`` and ``js.Response``) and the
Python projects wrangler's end-to-end tests seed (modules vendored by hand
in ``python_modules/``, and ``python_modules.exclude``). Each is deployed as a
user worker of a dispatch namespace by the real CLI over one ``corral serve``
and requested through the dispatcher, answering what it answers on Cloudflare.

What they needed that Corral did not do (each test of it failed before):

* a static page's other URLs redirect as Cloudflare's asset server has them
  (``/index`` and ``/docs/index`` to the folder, ``/docs.html`` to
  ``/docs/``; never to a URL that serves something else, so ``/x.html`` is
  served when ``/x`` is a file of its own), in each ``html_handling`` mode;
* modules vendored by hand in ``python_modules/`` are importable, and
  ``python_modules.exclude`` leaves some out (``corral deploy`` left the
  whole folder out, as pywrangler's packages are);
* the error for a product Corral lacks names the product and the binding.

Projects for products Corral does not have (Workers AI, Workflows, Vectorize,
Browser Rendering, Containers; shaped as cloudflare/python-workers-examples
and Cloudflare's docs configure them) are refused at deploy time by an error
naming the product and the binding the code would have used.

Left out: django-cf's templates (cloudflare/workers-py
``packages/django-cf/templates``) need django-cf 0.2, which needs Python 3.12;
on an older host Python pip picks 0.1.5, which has no D1 backend.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from supervisor.admin.project import ProjectError, load_project
from supervisor.edge.assets import resolve
from supervisor.model import AssetConfig, AssetEntry, AssetSet
from tests.harness import Corral

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = Path(__file__).resolve().parent / "cf_projects"
NS = "customers"


@pytest.fixture(scope="module")
def corral(tmp_path_factory):
    server = Corral(tmp_path_factory.mktemp("cft")).start()
    try:  # a set-up that fails must not leave the server running
        server.namespace(NS)
        server.deploy_dispatcher(namespace=NS)
        yield server
    finally:
        server.stop()


def deploy(corral: Corral, name: str, folder: Path) -> subprocess.CompletedProcess:
    """``corral deploy --namespace customers NAME FOLDER``, as an operator runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "supervisor", "deploy", "--socket", corral.socket_path,
                           "--namespace", NS, name, str(folder)],
                          capture_output=True, text=True, env=env, timeout=120)


def deployed(corral: Corral, name: str) -> None:
    result = deploy(corral, name, PROJECTS / name)
    assert result.returncode == 0, result.stderr


def get(corral: Corral, name: str, path: str = "/"):
    return corral.request(path, host=f"{name}.localhost")


def stored_modules(corral: Corral, name: str) -> list[str]:
    script = corral.admin("GET", f"/accounts/local/workers/dispatch/namespaces/{NS}/scripts/{name}")
    return [m["name"] for m in script.json()["result"]["modules"]]


# -- C3's Python templates -------------------------------------------------------------


def test_c3_hello_world(corral):
    deployed(corral, "c3-hello-world")
    resp = get(corral, "c3-hello-world")
    assert (resp.status, resp.text) == (200, "Hello World!")
    assert resp.headers["content-type"] == "text/plain;charset=UTF-8"


def test_c3_hello_world_with_assets(corral):
    name = "c3-hello-world-with-assets"
    deployed(corral, name)
    page = get(corral, name)
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert page.body == (PROJECTS / name / "public/index.html").read_bytes()
    # What the page's script fetches, from the worker.
    assert get(corral, name, "/message").text == "Hello, World!"
    assert uuid.UUID(get(corral, name, "/random").text).version == 4
    missing = get(corral, name, "/nope")
    assert (missing.status, missing.text) == (404, "Not Found")
    for other in ("/index", "/index.html"):  # the page's other URLs redirect, as on Cloudflare
        moved = get(corral, name, other)
        assert (moved.status, moved.headers["location"]) == (307, "/"), other


def assets(mode: str, *paths: str) -> AssetSet:
    """A manifest of ``paths``, each with content of its own, served with ``html_handling = mode``."""
    return AssetSet(manifest={p: AssetEntry(hash=p, size=1) for p in paths},
                    config=AssetConfig(html_handling=mode))


SITE = ("/index.html", "/about.html", "/docs/index.html", "/both.html", "/both/index.html", "/exact.html", "/exact")


@pytest.mark.parametrize(("mode", "path", "answer"), [
    ("auto-trailing-slash", "/index", ("redirect", "/")),
    ("auto-trailing-slash", "/about/index", ("redirect", "/about")),     # about.html's URL is /about
    ("auto-trailing-slash", "/about/index.html", ("redirect", "/about")),
    ("auto-trailing-slash", "/docs.html", ("redirect", "/docs/")),       # docs/index.html's URL is /docs/
    ("auto-trailing-slash", "/docs/index", ("redirect", "/docs/")),
    ("auto-trailing-slash", "/exact.html", ("serve", "/exact.html")),    # /exact is a file of its own
    ("auto-trailing-slash", "/exact", ("serve", "/exact")),
    ("auto-trailing-slash", "/about", ("serve", "/about.html")),
    ("auto-trailing-slash", "/docs", ("redirect", "/docs/")),
    ("auto-trailing-slash", "/about.html", ("redirect", "/about")),
    ("auto-trailing-slash", "/both", ("serve", "/both.html")),
    ("auto-trailing-slash", "/both/", ("serve", "/both/index.html")),
    ("auto-trailing-slash", "/", ("serve", "/index.html")),
    ("force-trailing-slash", "/index", ("redirect", "/")),
    ("force-trailing-slash", "/docs/index", ("redirect", "/docs/")),
    ("force-trailing-slash", "/both.html", ("serve", "/both.html")),     # /both/ is both/index.html's
    ("force-trailing-slash", "/about", ("redirect", "/about/")),
    ("drop-trailing-slash", "/docs/index", ("redirect", "/docs")),
    ("drop-trailing-slash", "/both/index.html", ("serve", "/both/index.html")),  # /both is both.html's
    ("drop-trailing-slash", "/docs/", ("redirect", "/docs")),
    ("none", "/about", ("not_found", "")),
])
def test_html_handling_as_cloudflares_asset_server(mode, path, answer):
    found = resolve(assets(mode, *SITE), path)
    assert (found.kind, found.path or found.location) == answer


# -- wrangler's fixtures and end-to-end projects -----------------------------------------------


def test_wrangler_python_worker_fixture(corral):
    """requirements.txt (bcrypt), modules beside the main one, ``js.Response.new`` from a sync on_fetch."""
    deployed(corral, "wrangler-python-worker")
    resp = get(corral, "wrangler-python-worker")
    assert resp.status == 200, resp.text
    found = re.fullmatch(r"Hi world 3 6 b'(\$2b\$14\$[./A-Za-z0-9]{53})'", resp.text)
    assert found, resp.text


def test_modules_vendored_by_hand_in_python_modules_are_importable(corral):
    """wrangler uploads python_modules/ and workerd puts it on sys.path: ``import mod2`` works."""
    name = "wrangler-vendored-modules"
    deployed(corral, name)
    assert get(corral, name).text == "py hello world 6"
    vendored = get(corral, name, "/vendored")
    assert (vendored.status, vendored.text) == (200, "mod2.hello() = 42, mod1 from mod1")
    assert stored_modules(corral, name) == ["arithmetic.py", "index.py", "mod1.py", "mod2.py"]


def test_python_modules_exclude_leaves_a_module_out(corral):
    name = "wrangler-exclude-module"
    deployed(corral, name)
    assert get(corral, name).text == "py hello world 6"  # its `import excluded_module` fails, as it expects
    assert stored_modules(corral, name) == ["src/arithmetic.py", "src/index.py"]


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


SRC_PROJECT = {"wrangler.toml": 'main = "src/entry.py"\ncompatibility_flags = ["python_workers"]\n',
               "src/entry.py": "import helper\n", "src/helper.py": "", "python_modules/vend.py": "",
               "python_modules/vpkg/__init__.py": "", "python_modules/helper.py": "x = 'vendored'",
               "python_modules/workers/__init__.py": ""}


def test_vendored_modules_go_beside_the_main_module_and_yield_to_the_projects_own(tmp_path):
    project = load_project(write(tmp_path, SRC_PROJECT))
    assert sorted(project.modules) == ["src/entry.py", "src/helper.py", "src/vend.py", "src/vpkg/__init__.py"]
    assert project.modules["src/helper.py"] == b""  # the project's own, imported first on Cloudflare too
    assert any("python_modules/helper.py is left out" in w for w in project.warnings)
    assert any("python_modules/workers/__init__.py is left out: the runtime's" in w for w in project.warnings)


def test_pywranglers_python_modules_stay_out(tmp_path):
    """A synced venv (pyvenv.cfg, *.dist-info) is the dependencies, which pyproject.toml sends."""
    write(tmp_path, {**SRC_PROJECT, "python_modules/pyvenv.cfg": ""})
    assert sorted(load_project(tmp_path).modules) == ["src/entry.py", "src/helper.py"]


def test_python_modules_in_the_module_root_is_refused_as_wrangler_refuses_it(tmp_path):
    write(tmp_path, {**SRC_PROJECT, "src/python_modules/x.py": ""})
    with pytest.raises(ProjectError, match="python_modules belongs beside the config"):
        load_project(tmp_path)


def test_an_exclude_list_replaces_wranglers_default(tmp_path):
    files = {**SRC_PROJECT, "wrangler.toml": SRC_PROJECT["wrangler.toml"] + '[python_modules]\nexclude = ["v*"]\n'}
    assert "src/vend.py" not in load_project(write(tmp_path, files)).modules
    assert "src/vpkg/__init__.py" in load_project(tmp_path).modules  # `*` stays within a name


# -- products Corral does not have ---------------------------------------------------------------

UNSUPPORTED = {
    "ai": ({"binding": "AI"}, "Workers AI: env.AI"),
    "workflows": ([{"name": "dag-workflow", "binding": "MY_WORKFLOW", "class_name": "DAGWorkflow"}],
                  "Workflows: env.MY_WORKFLOW"),
    "vectorize": ([{"binding": "VECTORIZE", "index_name": "idx"}], "Vectorize: env.VECTORIZE"),
    "browser": ({"binding": "MYBROWSER"}, "Browser Rendering: env.MYBROWSER"),
    "containers": ([{"class_name": "MyContainer", "image": "./Dockerfile"}], "Containers: class MyContainer"),
}


@pytest.mark.parametrize("key", sorted(UNSUPPORTED))
def test_a_missing_product_is_refused_at_deploy_naming_its_binding(corral, tmp_path, key):
    value, named = UNSUPPORTED[key]
    config = {"name": "python-x", "main": "src/entry.py", "compatibility_date": "2025-11-02",
              "compatibility_flags": ["python_workers"], key: value}
    write(tmp_path, {"wrangler.jsonc": json.dumps(config), "src/entry.py": "from workers import WorkerEntrypoint\n"})
    refused = deploy(corral, f"refused-{key}", tmp_path)
    assert refused.returncode == 2
    assert f"'{key}' is not supported by Corral yet ({named})" in refused.stderr, refused.stderr
