"""Real Python in the jail: tenants that depend on packages from the index.

Each test deploys through the admin API with ``text/x-python-requirement``
parts (as Cloudflare's API carries them), so the supervisor resolves the set
with the real pip, keeps it in its package store, and the tenant imports it
in a real jailed child (native code included: pydantic-core, markupsafe).
The attacks on the file view (another tenant's bundle, writes, dlopen from
a bundle, /etc/passwd) are in tests/test_file_view.py.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from sandbox import reshare
from supervisor.admin import multipart
from tests.harness import Corral, Response
from tests.test_idle_trim import anonymous_kb, corral_resharing_after_a_second
from tests.test_jail import call, wait_for, worker


def deploy(c: Corral, name: str, source: str, requirements: list[str], *, as_list: bool = False,
           check: bool = True) -> Response:
    """Upload with one requirement part per requirement, named by it (wrangler's
    shape), or one part listing them (``as_list``)."""
    parts = [multipart.Part(name="metadata", content_type="application/json",
                            data=json.dumps({"main_module": "worker.py"}).encode()),
             multipart.Part(name="files", filename="worker.py", content_type="text/x-python",
                            data=source.encode())]
    if as_list:
        parts.append(multipart.Part(name="requirements.txt", filename="requirements.txt",
                                    content_type="text/x-python-requirement",
                                    data="\n".join(requirements).encode()))
    else:
        parts += [multipart.Part(name=r, filename=r, content_type="text/x-python-requirement", data=b"")
                  for r in requirements]
    ctype, body = multipart.encode(parts)
    resp = c.admin("PUT", f"/accounts/local/workers/dispatch/namespaces/default/scripts/{name}", body, ctype)
    if check and resp.status != 200:
        raise AssertionError(f"deploy {name} failed: {resp.status} {resp.text}\n{c.log()}")
    return resp


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory):
    # Idle tenants give pages back after a second here, so that every test
    # below also runs against children that did (see test_idle_trim).
    with corral_resharing_after_a_second(tmp_path_factory.mktemp("packages")) as server:
        yield server


def resolved_count(c: Corral) -> int:
    return c.log_path.read_text().count('"packages.resolved"')


def events(c: Corral, name: str | None = None) -> list[dict]:
    """The server's log events (those named ``name``)."""
    seen = c.log_events()
    return [e for e in seen if name is None or e.get("event") == name]


def set_of(c: Corral, requirements: list[str]) -> str:
    """The package set (lock) the server resolved ``requirements`` to."""
    locks = [e["lock"] for e in events(c, "packages.resolved") if e["requirements"] == requirements]
    assert locks, c.log()
    return locks[-1]


def zygote_ready(c: Corral, package_set: str) -> bool:
    """The server reported that set's package zygote ready (its imports done)."""
    return any(e.get("set") == package_set for e in events(c, "package_zygote.ready"))


# ---------------------------------------------------------------------------
# frameworks
# ---------------------------------------------------------------------------

ASGI_CALL = '''
async def asgi_call(app, method, path, body=b""):
    """One HTTP request through an ASGI app, in-process."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "server": ("tenant", 80), "client": ("127.0.0.1", 1),
             "headers": [(b"host", b"tenant"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    sent, delivered = [], False

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
'''

FASTAPI = worker(textwrap.indent(ASGI_CALL, "    ") + '''
    import importlib.metadata

    import pydantic
    import pydantic_core
    from fastapi import FastAPI

    app = FastAPI()

    class Item(pydantic.BaseModel):
        name: str
        price: float

    @app.post("/items")
    async def create(item: Item):
        return {"name": item.name, "total": item.price * 2}

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            ok = await asgi_call(app, "POST", "/items", b'{"name": "tea", "price": 1.5}')
            bad = await asgi_call(app, "POST", "/items", b'{"name": "tea"}')
            return Response.json({
                "ok": [ok[0], json.loads(ok[1])], "bad": bad[0],
                "native": pydantic_core._pydantic_core.__file__,
                "fastapi": importlib.metadata.version("fastapi"),
                "pydantic_core": importlib.metadata.version("pydantic-core"),
                # The set's zygote rehearsed FastAPI on a loop of its own and
                # unset it; the children's loop is current again (Zygote.spawn).
                "current_loop": asyncio.get_event_loop_policy().get_event_loop()
                is asyncio.get_running_loop(),
            })
''')


def test_a_fastapi_tenant_with_pydantic_core(c: Corral) -> None:
    resp = deploy(c, "fastapi", FASTAPI, ["fastapi"])
    assert "fastapi" in resp.json()["result"]["requirements"]
    out = call(c, "fastapi")
    assert out["ok"] == [200, {"name": "tea", "total": 3.0}], out
    assert out["bad"] == 422
    assert out["native"].startswith(str(c.state_dir.resolve() / "packages" / "entries")), out
    assert out["native"].endswith(".so")
    assert out["fastapi"] and out["pydantic_core"]
    assert out["current_loop"] is True


@pytest.mark.skipif(not os.path.exists(reshare.LIBRARY),
                    reason="sandbox/_reshare is not built (scripts/setup)")
def test_a_fastapi_tenant_serves_on_after_giving_pages_back(c: Corral) -> None:
    """Its child comes from the set's zygote, which inherited the base
    zygote's snapshot: what still equals it goes back, and the app is intact."""
    source = FASTAPI.replace('"fastapi": importlib.metadata.version("fastapi"),',
                             '"fastapi": importlib.metadata.version("fastapi"), '
                             '"pid": __import__("os").getpid(),')
    assert source != FASTAPI
    deploy(c, "fastapi-idle", source, ["fastapi"])
    first = call(c, "fastapi-idle")
    pid = first["pid"]
    busy_kb = anonymous_kb(pid)
    assert wait_for(lambda: anonymous_kb(pid) < busy_kb - 400, timeout=15, interval=0.1), (
        busy_kb, anonymous_kb(pid))
    assert call(c, "fastapi-idle") == first


def test_the_fastapi_set_zygote_rehearsed_a_synthetic_app(c: Corral) -> None:
    """Its zygote served Corral's own FastAPI app (never a tenant's) before
    freezing, so a tenant's first request finds FastAPI's lazy imports done."""
    call(c, "fastapi")  # the set's zygote exists by now
    ready = [json.loads(line) for line in c.log_path.read_text().splitlines()
             if '"package_zygote.ready"' in line and '"fastapi"' in line]
    assert ready, c.log()
    warm = ready[-1]["warm"]
    assert warm["rehearsed"]["fastapi"]["statuses"] == [200, 422, 200], warm
    assert warm["walk"]["imported"] > 0 and "error" not in warm, warm



def test_a_spare_of_the_set_builds_its_own_rehearsal_app_and_metadata_is_parsed_once(c: Corral) -> None:
    """A cold start is mostly copy-on-write faults: the set's spare builds a
    rehearsal app of its own (page faults taken before any tenant), and
    ``importlib.metadata`` answers from messages the zygote parsed."""
    source = worker('''
        import asyncio
        import importlib.metadata

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                warmup = next(m for n, m in sys.modules.items() if n.endswith(".package_warmup"))
                while warmup._replays:  # a replay cut short ends at its next await
                    await asyncio.sleep(0.001)
                dist = importlib.metadata.distribution("fastapi")
                return Response.json({
                    "kept": len(warmup._KEPT), "rehearsed": warmup._REHEARSED,
                    "cut_short": warmup._loading,
                    "memo": getattr(importlib.metadata.PathDistribution, "_corral_memo", False),
                    "same": dist.metadata is importlib.metadata.distribution("fastapi").metadata,
                    "version": importlib.metadata.version("fastapi"),
                    "path": str(dist._path),
                })
    ''')
    deploy(c, "sparewarm", source, ["fastapi"])
    assert wait_for(lambda: '"package_zygote.ready"' in c.log_path.read_text(), timeout=60), c.log()
    out = call(c, "sparewarm")
    assert "fastapi" in out["rehearsed"], out
    rehearsed = len(out["rehearsed"])
    # The zygote's apps and the spare's own; a Load that came first cut the
    # spare's replay short (it gives way to the tenant), never the zygote's.
    assert out["kept"] == 2 * rehearsed or (out["cut_short"] and rehearsed <= out["kept"] < 2 * rehearsed), out
    assert out["memo"] is True and out["same"] is True, out
    assert out["path"].endswith(f"fastapi-{out['version']}.dist-info"), out


DJANGO = worker('''
    import io

    import django
    from django.conf import settings

    settings.configure(DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="x" * 50,
                       MIDDLEWARE=[], INSTALLED_APPS=[], USE_TZ=True)
    django.setup()

    from django.core.handlers.wsgi import WSGIHandler
    from django.http import JsonResponse
    from django.template import Context, Engine
    from django.urls import path

    def hello(request):
        page = Engine().from_string("<b>{{ name }}</b>").render(Context({"name": "<django>"}))
        return JsonResponse({"hello": request.GET.get("name"), "page": page,
                             "version": django.get_version()})

    urlpatterns = [path("hello", hello)]
    handler = WSGIHandler()

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            status = []
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/hello", "QUERY_STRING": "name=ada",
                       "SERVER_NAME": "tenant", "SERVER_PORT": "80", "HTTP_HOST": "tenant",
                       "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr}
            body = b"".join(handler(environ, lambda s, h: status.append(s)))
            return Response.json({"status": status[0], "body": json.loads(body)})
''')


def test_a_django_tenant(c: Corral) -> None:
    deploy(c, "django", DJANGO, ["django>=4"])
    out = call(c, "django")
    assert out["status"] == "200 OK", out
    assert out["body"]["hello"] == "ada"
    assert out["body"]["page"] == "<b>&lt;django&gt;</b>"
    assert out["body"]["version"].split(".")[0] >= "4"


FLASK = worker('''
    import markupsafe
    from flask import Flask, render_template_string

    app = Flask(__name__)

    @app.get("/hi/<name>")
    def hi(name):
        return render_template_string("Hi {{ name }}!", name=name)

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            got = app.test_client().get("/hi/<b>")
            return Response.json({"status": got.status_code, "body": got.get_data(as_text=True),
                                  "speedups": markupsafe._speedups.__file__})
''')


def test_a_flask_tenant_with_jinja2_and_native_markupsafe(c: Corral) -> None:
    deploy(c, "flask", FLASK, ["flask"], as_list=True)
    out = call(c, "flask")
    assert out == {"status": 200, "body": "Hi &lt;b&gt;!", "speedups": out["speedups"]}, out
    assert out["speedups"].endswith(".so"), "markupsafe's C speedups load from the package store"


DATA_FILES = worker('''
    import importlib.metadata
    import importlib.resources

    import certifi
    import jinja2

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            bundle = open(certifi.where()).read()
            return Response.json({
                "where": certifi.where(),
                "certificates": bundle.count("BEGIN CERTIFICATE"),
                "resource": len(importlib.resources.files("certifi").joinpath("cacert.pem").read_bytes()),
                "versions": {d: importlib.metadata.version(d) for d in ("certifi", "jinja2", "markupsafe")},
                "template": jinja2.Template("{{ n }} certificates").render(n=3),
                "write": attempt(lambda: open(certifi.where(), "a").write("x")),
            })
''')


NUMPY = worker('''
    import os

    import numpy

    from workers import Response, WorkerEntrypoint

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            a = numpy.ones((200, 200))
            return Response.json({"matmul": float((a @ a)[0, 0]),
                                  "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")})
''')


def test_a_numpy_tenant_multiplies_matrices(c: Corral) -> None:
    """OpenBLAS starts a thread pool as numpy loads: in a jailed child (no
    threads) it ended the process at import, and a pool started in the set's
    zygote was gone in its children at the first matrix product."""
    deploy(c, "numpy", NUMPY, ["numpy"])
    for _ in range(2):
        assert call(c, "numpy") == {"matmul": 200.0, "blas_threads": "1"}


def test_a_package_with_data_files_and_its_metadata(c: Corral) -> None:
    deploy(c, "data", DATA_FILES, ["certifi", "jinja2"])
    out = call(c, "data")
    assert out["certificates"] > 50, out
    assert out["resource"] == len(open(out["where"], "rb").read())
    assert all(out["versions"].values()) and out["template"] == "3 certificates"
    assert out["write"]["ok"] is False, "package files are read-only to tenants"


# ---------------------------------------------------------------------------
# refusals and changes
# ---------------------------------------------------------------------------

def test_a_package_without_a_wheel_is_refused_by_name(c: Corral) -> None:
    resp = deploy(c, "nowheel", worker("class Default(WorkerEntrypoint):\n    pass\n"),
                  ["pycrypto==2.6.1"], check=False)
    assert resp.status == 400, resp
    assert "no wheel of pycrypto" in resp.json()["errors"][0]["message"]


def test_an_unchanged_set_resolves_once_and_a_changed_set_changes_the_script(c: Corral) -> None:
    source = worker('''
        import importlib.util

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                return Response.json({m: importlib.util.find_spec(m) is not None
                                      for m in ("jinja2", "itsdangerous")})
    ''')
    first = deploy(c, "changing", source, ["Jinja2>=3", "workers-py"]).json()["result"]
    assert first["warnings"] and "workers-py" in first["warnings"][0]
    assert call(c, "changing") == {"jinja2": True, "itsdangerous": False}
    before = resolved_count(c)
    again = deploy(c, "changing", source, ["jinja2>=3"]).json()["result"]
    assert again["version"] == first["version"], "the same code and set is the same version"
    assert resolved_count(c) == before, "an unchanged set is not resolved again"
    changed = deploy(c, "changing", source, ["itsdangerous"]).json()["result"]
    assert changed["version"] != first["version"]
    assert wait_for(lambda: call(c, "changing") == {"jinja2": False, "itsdangerous": True})
    code_only = deploy(c, "changing", source, []).json()["result"]
    assert "requirements" not in code_only
    assert wait_for(lambda: call(c, "changing") == {"jinja2": False, "itsdangerous": False})


def test_corral_deploy_sends_a_folders_dependencies(c: Corral, tmp_path) -> None:
    import subprocess
    import sys

    from tests.harness import REPO

    (tmp_path / "wrangler.toml").write_text('main = "src/entry.py"\n')
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "entry.py").write_text(
        "import jinja2\nfrom workers import Response, WorkerEntrypoint\n\n"
        "class Default(WorkerEntrypoint):\n"
        "    async def fetch(self, request):\n"
        "        return Response(jinja2.Template('{{ a }}+{{ b }}').render(a='cli', b='pyproject'))\n")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "w"\nrequires-python = ">=3.99"\ndependencies = ["jinja2", "workers-py"]\n')
    done = subprocess.run([sys.executable, "-m", "supervisor", "deploy", "--socket", c.socket_path,
                           "--namespace", "default", "clideps", str(tmp_path)],
                          capture_output=True, text=True, cwd=str(REPO), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1 requirement(s)" in done.stdout
    assert "requires-python" in done.stderr and "workers-py" in done.stderr
    assert c.request("/", host="clideps.localhost").text == "cli+pyproject"


def test_cold_starts_come_from_the_sets_package_zygote(c: Corral) -> None:
    """After a deploy the set's package zygote is up (validation started it
    and waited for it); cold starts are its children, with the set imported
    before the script ran, and they joined their memory cgroups themselves
    (cgroup v1)."""
    from tests.harness import _children_of

    source = worker('''
        import sys
        preloaded = "itsdangerous" in sys.modules

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                import itsdangerous
                return Response.json({"ppid": os.getppid(), "pid": os.getpid(), "preloaded": preloaded,
                                      "v": %d})
    ''')
    deploy(c, "viazygote", source % 1, ["itsdangerous==2.2.0"])
    # Its own set's zygote, as the server reports it (the deploy waited for
    # it). Any "ready" line after the deploy was not enough: under load, the
    # zygote of a set an earlier test deployed was the one that got ready,
    # and this cold start came from a base spare.
    package_set = set_of(c, ["itsdangerous==2.2.0"])
    assert wait_for(lambda: zygote_ready(c, package_set), timeout=30), c.log()
    base = c.zygote()
    first = call(c, "viazygote")
    assert first["preloaded"] is True, first
    assert first["ppid"] != base and first["ppid"] in _children_of(base), "forked by a package zygote"
    deploy(c, "viazygote", source % 2, ["itsdangerous==2.2.0"])  # new code, the same set
    second = wait_for(lambda: call(c, "viazygote")["v"] == 2) and call(c, "viazygote")
    assert second["ppid"] == first["ppid"] and second["preloaded"], "one package zygote per set"
    # Its children join their memory cgroups themselves, as the base zygote's do.
    from tests.test_memory import backend, cgroup_of

    if backend(c)["backend"] == "cgroup1":
        assert (cgroup_of(second["pid"]) or "").endswith(f"/child-{second['pid']}"), cgroup_of(second["pid"])
        metrics = c.admin("GET", "/metrics").text
        assert 'corral_children_cgroup_joins_total{by="itself"}' in metrics
        assert 'corral_children_cgroup_joins_total{by="supervisor"}' not in metrics, "a child was joined the slow way"


def test_a_rotation_starts_the_package_zygotes_in_use_again_at_once(tmp_path) -> None:
    """A rotation ends the old generation's package zygotes; the sets tenants
    used lately are started again from the new zygote right away, not at
    their next cold start (which would otherwise pay the set's imports)."""
    from tests.test_jail import corral_with_control

    config = tmp_path / "corral.toml"
    config.write_text("[pool]\nzygote_max_age_s = 8.0\n")
    with corral_with_control(tmp_path / "state", extra_args=["--config", str(config)]) as server:
        deploy(server, "pkgrot", worker('''
            class Default(WorkerEntrypoint):
                async def fetch(self, request):
                    import itsdangerous
                    return Response.json({"ok": True})
        '''), ["itsdangerous==2.2.0"])
        assert call(server, "pkgrot")["ok"]

        events = server.log_events

        def restarted_after_rotation() -> bool:
            seen = events()
            rotated = [i for i, e in enumerate(seen) if e.get("event") == "zygote.rotated"]
            return bool(rotated) and any(e.get("event") == "package_zygote.ready"
                                         for e in seen[rotated[0] + 1:])

        assert wait_for(restarted_after_rotation, timeout=40), server.log()
        # No request reached the tenant in between: the restart came from the rotation.
        assert call(server, "pkgrot")["ok"]


PRELOADED = worker('''
    import sys
    preloaded = %r in sys.modules

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return Response.json({"ppid": os.getppid(), "preloaded": preloaded, "v": %d})
''')


def test_a_set_past_the_zygote_bound_starts_none_instead_of_thrashing(tmp_path) -> None:
    """With ``package_zygotes`` sets serving scripts, a further set's zygote
    was started and evicted at once at each of its cold starts, and its
    dead entry was "evicted" again every second. It now starts none: its
    tenants start from base spares (and import), the busy set keeps its own."""
    from tests.test_jail import corral_with_control

    config = tmp_path / "corral.toml"
    config.write_text("[pool]\npackage_zygotes = 1\n")
    with corral_with_control(tmp_path / "state", extra_args=["--config", str(config)]) as server:
        deploy(server, "busyset", PRELOADED % ("itsdangerous", 1), ["itsdangerous==2.2.0"])
        busy = set_of(server, ["itsdangerous==2.2.0"])
        assert wait_for(lambda: zygote_ready(server, busy), timeout=30), server.log()
        first = call(server, "busyset")
        assert first["preloaded"] is True, first  # its child serves: the set is in use
        for version in (1, 2, 3):  # a deploy's validation and a request: two cold starts each
            deploy(server, "overflow", PRELOADED % ("markupsafe", version), ["markupsafe"])
            out = call(server, "overflow")
            assert out == {"ppid": server.zygote(), "preloaded": False, "v": version}, out
        overflow = set_of(server, ["markupsafe"])
        assert not [e for e in events(server, "package_zygote.starting") if e["set"] == overflow], server.log()
        assert not events(server, "package_zygote.evicted"), server.log()
        assert len([e for e in events(server, "package_zygote.refused") if e["set"] == overflow]) == 1
        assert call(server, "busyset") == first, "the busy set's zygote and child are untouched"


def test_the_first_request_after_deploying_a_new_set_comes_from_its_zygote(tmp_path) -> None:
    """The deploy's validation waits for the set's zygote (it started it)
    and loads the script in one of its spares: the deploy returns with the
    zygote ready, and the very first request pays no import. It used to
    return first, and that request imported the set in a base spare."""
    from tests.test_jail import corral_with_control

    with corral_with_control(tmp_path / "state") as server:
        deploy(server, "firstreq", PRELOADED % ("markupsafe", 1), ["markupsafe"])
        assert zygote_ready(server, set_of(server, ["markupsafe"])), "the deploy returned before it"
        out = call(server, "firstreq")
        assert out["preloaded"] is True and out["ppid"] != server.zygote(), out


def package_zygotes_metric(c: Corral) -> float:
    """``corral_package_zygotes`` as GET /metrics on the admin API reports it."""
    for line in c.admin("GET", "/metrics").text.splitlines():
        if line.startswith("corral_package_zygotes "):
            return float(line.split()[1])
    raise AssertionError("no corral_package_zygotes in /metrics")


def test_the_package_zygotes_metric_counts_the_ready_ones(tmp_path) -> None:
    """It read 0 whatever ran (the pool's snapshot had no such count)."""
    from tests.test_jail import corral_with_control

    with corral_with_control(tmp_path / "state") as server:
        assert package_zygotes_metric(server) == 0
        deploy(server, "metric1", PRELOADED % ("markupsafe", 1), ["markupsafe"])
        assert package_zygotes_metric(server) == 1  # the deploy returns with it ready
        deploy(server, "metric2", PRELOADED % ("itsdangerous", 1), ["itsdangerous==2.2.0"])
        deploy(server, "metric3", PRELOADED % ("itsdangerous", 2), ["itsdangerous==2.2.0"])  # the same set
        assert package_zygotes_metric(server) == 2
