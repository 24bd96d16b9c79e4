"""Pure parts of Cloudflare compatibility, in-process: cron planning, asset
resolution, the HTTP-library shims over a fake brokered fetch, run_sync."""

from __future__ import annotations

import asyncio
import datetime
import importlib
import sys

import pytest

from supervisor.cron import CronError, Scheduler, parse_cron
from supervisor.edge.assets import content_type, resolve, static_route
from supervisor.errors import Invalid
from supervisor.model import AssetConfig, AssetEntry, AssetSet

UTC = datetime.UTC


def test_cron_next_times_and_errors():
    saturday = datetime.datetime(2025, 6, 7, 10, 0, tzinfo=UTC)
    assert parse_cron("*/15 2 * * MON-FRI").next_after(saturday) == datetime.datetime(2025, 6, 9, 2, 0, tzinfo=UTC)
    assert parse_cron("0 0 1 JAN *").next_after(saturday).year == 2026
    # Cloudflare numbers weekdays 1-7 from Sunday: its docs' "0 17 * * 1" is
    # 5 PM on Sunday and "10 7 * * 2-6" the weekdays.
    assert parse_cron("59 23 * * 7").next_after(saturday).day == 7  # 7 is Saturday
    assert parse_cron("0 17 * * 1").next_after(saturday) == datetime.datetime(2025, 6, 8, 17, 0, tzinfo=UTC)
    assert parse_cron("10 7 * * 2-6").next_after(saturday).day == 9  # Monday
    # L, W and # as its docs list them (June 2025 ends on a Monday; the 15th is a Sunday).
    assert parse_cron("59 23 LW * *").next_after(saturday).day == 30
    assert parse_cron("0 0 L * *").next_after(saturday).day == 30
    assert parse_cron("0 0 15W * *").next_after(saturday).day == 16
    assert parse_cron("0 0 1W * *").next_after(saturday).date() == datetime.date(2025, 7, 1)
    assert parse_cron("0 18 * * 6L").next_after(saturday).day == 27  # the last Friday
    assert parse_cron("0 18 * * FRIL").next_after(saturday).day == 27
    assert parse_cron("0 0 * * MON#1").next_after(saturday).date() == datetime.date(2025, 7, 7)
    assert parse_cron("0 0 * * 2#2").next_after(saturday).day == 9
    # saffron (Cloudflare's cron parser): L-3 is the third day before the
    # last, L-3W the weekday nearest it; ranges wrap around, steps walking on.
    assert parse_cron("0 0 L-3 * *").next_after(saturday).day == 27
    assert parse_cron("0 0 L-2W * *").next_after(saturday).day == 27  # the 28th is a Saturday
    assert parse_cron("0 0 L-1W * *").next_after(saturday).day == 30  # the 29th is a Sunday
    assert parse_cron("0 22-2 * * *").next_after(saturday) == datetime.datetime(2025, 6, 7, 22, 0, tzinfo=UTC)
    assert parse_cron("0 9 * * FRI-MON").next_after(saturday) == datetime.datetime(2025, 6, 8, 9, 0, tzinfo=UTC)
    assert parse_cron("0 22-2/2 * * *").hours == {22, 0, 2}
    assert parse_cron("59-0 23-0 31-1 12-1 *").months == {12, 1}
    for bad, words in [("* * * *", "five fields"), ("61 * * * *", "outside 0-59"),
                       ("*/0 * * * *", "step"), ("0 0 L-0 * *", "1-30"), ("0 0 L-31W * *", "1-30"),
                       ("0 0 * * 0", "1-7 from Sunday"), ("0 0 * * MON#6", "week, 1-5"),
                       ("0 0 3L * *", "L-3W and 15W")]:
        with pytest.raises(CronError, match=words):
            parse_cron(bad)


def test_missed_runs_are_not_replayed_in_a_burst():
    scheduler = Scheduler(lambda: [], None)  # type: ignore[arg-type]
    # Corral was down for three hours: only the next run from now is planned.
    now = datetime.datetime(2025, 6, 7, 13, 2, 30, tzinfo=UTC).timestamp()
    plan = scheduler.plan([("", "w", ["*/5 * * * *", "0 * * * *"])], now)
    assert [datetime.datetime.fromtimestamp(w, UTC).strftime("%H:%M") for w, *_ in plan] == ["13:05", "14:00"]


def _assets(**config):
    names = ["/index.html", "/about.html", "/docs/index.html", "/404.html", "/app.js", "/docs/404.html"]
    return AssetSet(config=AssetConfig(**config), manifest={n: AssetEntry("0" * 32, 1) for n in names})


def test_asset_resolution():
    auto = _assets()
    assert resolve(auto, "/").path == "/index.html"
    assert resolve(auto, "/about").path == "/about.html"
    assert resolve(auto, "/about/").location == "/about"
    assert resolve(auto, "/index.html").location == "/"
    assert resolve(auto, "/docs").location == "/docs/"
    assert resolve(auto, "/nope").kind == "not_found"
    force = _assets(html_handling="force-trailing-slash")
    assert resolve(force, "/about").location == "/about/"
    assert resolve(force, "/about/").path == "/about.html"
    drop = _assets(html_handling="drop-trailing-slash")
    assert resolve(drop, "/docs/").location == "/docs"
    assert resolve(drop, "/docs").path == "/docs/index.html"
    spa = _assets(not_found_handling="single-page-application")
    assert resolve(spa, "/app/route").path == "/index.html"
    page = _assets(not_found_handling="404-page")
    assert (resolve(page, "/docs/x/y").path, resolve(page, "/docs/x/y").status) == ("/docs/404.html", 404)
    assert resolve(page, "/other").path == "/404.html"
    patterns = _assets(run_worker_first=["/api/*", "!/api/docs/*", "/files/[id]/*"])
    # An exclusion sends its paths to the assets (their 404 included), as Cloudflare's router worker.
    assert static_route(patterns, "/api/x") == "worker" and static_route(patterns, "/api/docs/y") == "assets"
    assert static_route(patterns, "/index.html") is None and static_route(_assets(run_worker_first=True), "/")
    # Only * is a wildcard: brackets are themselves (fnmatch took them for a character class).
    assert static_route(patterns, "/files/[id]/x") == "worker" and static_route(patterns, "/files/i/x") is None
    # Many * against a long path that fails: no backtracking (a regular expression of .* took exponential time).
    many = _assets(run_worker_first=["/" + "*a" * 40 + "b"])
    assert static_route(many, "/" + "a" * 16000) is None


@pytest.mark.parametrize("rules, words", [
    ([], "an empty list"),
    (["api/*"], "must start with '/'"),
    (["/a/*", "/a/*"], "given twice"),
    (["!/static/*"], "only exclusions"),
    ([f"/r{i}" for i in range(101)], "more than the 100 allowed"),
    (["/" + "a*" * 60], "longer than 100 characters"),
])
def test_a_run_worker_first_list_cloudflare_refuses_is_refused(rules, words):
    """Each was accepted, and a rule without its / never matched: the
    worker in front of those paths (its auth) was silently not."""
    with pytest.raises(Invalid, match=words):
        AssetConfig(run_worker_first=rules)


def test_content_types():
    assert content_type("/a.html") == "text/html; charset=utf-8"
    assert content_type("/a.js") == "text/javascript; charset=utf-8"
    assert content_type("/favicon.ico") == "image/vnd.microsoft.icon"
    assert content_type("/x.unknownext") is None  # no header, as workers-sdk's fixture asserts
    # The mime package's types, whatever the host's /etc/mime.types says (.ts was a Qt file here).
    assert [content_type(f"/a{ext}") for ext in (".ts", ".yaml", ".gz", ".toml")] == [
        "video/mp2t", "text/yaml; charset=utf-8", "application/gzip", "application/toml"]


@pytest.fixture
def fake_fetch(monkeypatch):
    """The sandbox's modules with a runtime whose fetch answers in-process."""
    from sandbox import import_patches, tenant_modules, workers

    calls = []

    class Runtime:
        env = None

        async def sub_request(self, kind, request, tail=False):
            await asyncio.sleep(0)
            calls.append((kind, request._method, request.url))
            response = workers.Response('{{"path": "{}"}}'.format(request.url.split("/", 3)[-1]), status=200,
                                        headers={"content-type": "application/json"})
            return response

    monkeypatch.setattr(workers, "_runtime", Runtime())
    saved = dict(sys.modules)
    # Imported afresh after the shims are installed (as in a child whose
    # tenant imports httpx); one imported before would be patched at install.
    for name in [n for n in sys.modules if n == "httpx" or n.startswith(("httpx.", "anyio.to_thread"))]:
        del sys.modules[name]
    tenant_modules.install()
    yield calls
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, import_patches._PatchOnImport)]
    sys.modules.clear()
    sys.modules.update(saved)


def test_httpx_and_anyio_are_patched_on_import(fake_fetch):
    from sandbox.child import ChildLoop

    httpx = importlib.import_module("httpx")
    anyio_to_thread = importlib.import_module("anyio.to_thread")

    async def handler():
        with httpx.Client() as client:  # synchronous: through run_sync
            sync = client.get("http://upstream.test/sync").json()
        async with httpx.AsyncClient() as client:
            asynchronous = (await client.post("http://upstream.test/async", content=b"x")).json()
        inline = await anyio_to_thread.run_sync(lambda: "inline")
        return sync, asynchronous, inline

    loop = ChildLoop()
    try:
        result = loop.run_until_complete(handler())
    finally:
        loop.close()
    assert result == ({"path": "sync"}, {"path": "async"}, "inline")
    assert [c[1] for c in fake_fetch] == ["GET", "POST"]


def test_run_sync_outside_a_handler_says_why():
    from sandbox.run_sync import run_sync

    async def nothing():
        return 1

    with pytest.raises(RuntimeError, match="only be used while a handler runs"):
        run_sync(nothing())


def test_handlers_get_as_many_positional_arguments_as_they_declare():
    """A handler may declare fewer of ``(request, env, ctx)`` than it is given
    (Cloudflare's module and class styles); the count comes from the code
    object for plain functions and methods, from inspect.signature otherwise."""
    import functools

    from sandbox.events import positional_arity

    def plain(request, env, ctx=None): ...
    def star(request, *rest): ...
    def keyword_only(request, *, env): ...

    class Entry:
        def fetch(self, request): ...
        @staticmethod
        def static(request, env): ...
        @classmethod
        def klass(cls, request): ...
        def __call__(self, a, b): ...

    def keeps_signature(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)
        return wrapper

    entry = Entry()
    assert positional_arity(plain) == 3
    assert positional_arity(star) is None
    assert positional_arity(keyword_only) == 1
    assert positional_arity(entry.fetch) == 1
    assert positional_arity(entry.static) == 2
    assert positional_arity(entry.klass) == 1
    assert positional_arity(entry) == 2  # a callable object: inspect.signature
    assert positional_arity(keeps_signature(plain)) == 3  # seen through functools.wraps
    assert positional_arity(functools.partial(plain, 1)) == 2


def test_url_hosts_serialize_as_the_url_standard_does():
    """IPv4 in the standard's other forms is its dotted address, IPv6 is
    compressed, and an address that does not parse is no URL (js.URL kept
    them as written: the host a check saw was not the one connected to)."""
    from sandbox.js_url import URL

    cases = {"http://0x7f.1/": "http://127.0.0.1/", "http://127.1:8080/x": "http://127.0.0.1:8080/x",
             "http://2130706433/": "http://127.0.0.1/", "http://0300.0250.1.1/": "http://192.168.1.1/",
             "http://[0:0:0:0:0:0:0:1]:8080/": "http://[::1]:8080/", "http://Example.COM./": "http://example.com./"}
    for given, href in cases.items():
        assert URL.new(given).href == href, given
    assert URL.new("http://a.b.0x1g/").host == "a.b.0x1g"  # not a number: a name
    for bad in ("http://1.2.3.4.5/", "http://256.1.1.1/", "http://a.09/", "http://[::g]/"):
        assert URL.parse(bad) is None, bad
