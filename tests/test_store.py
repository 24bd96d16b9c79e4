"""The SQLite store: namespaces, scripts, tags, routes, caching, persistence."""

import sqlite3
import threading
import time

import msgspec
import pytest

from supervisor.errors import Conflict, Invalid, NotFound
from supervisor.errors import CorralError as StoreError
from supervisor.model import PLATFORM, ScriptRecord
from supervisor.store.cursors import parse_tag_filters
from supervisor.store.schema import DEFAULT_NAMESPACE
from supervisor.store.store import Store


def rec(name, ns=DEFAULT_NAMESPACE, version="v1", tags=(), code=b"print(1)\n", **kw):
    return ScriptRecord(namespace=ns, name=name, version=version, main_module="worker.py",
                        modules={"worker.py": code}, tags=list(tags), **kw)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "corral.db")
    yield s
    s.close()


def status_of(exc_info):
    """The kind of domain error, as the status the admin API answers for it."""
    return next(status for kind, status in ((Invalid, 400), (NotFound, 404), (Conflict, 409))
                if isinstance(exc_info.value, kind))


def test_fresh_store_has_default_namespace_and_wal(tmp_path, store):
    assert [n.name for n in store.list_namespaces()] == [DEFAULT_NAMESPACE]
    conn = sqlite3.connect(tmp_path / "corral.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_deleted_default_namespace_stays_deleted(tmp_path):
    with Store(tmp_path / "c.db") as s:
        s.delete_namespace(DEFAULT_NAMESPACE)
    with Store(tmp_path / "c.db") as s:
        assert s.list_namespaces() == []


def test_namespaces_crud_and_errors(store):
    info = store.create_namespace("customers")
    assert info.name == "customers" and info.id and info.created_on.endswith("Z")
    with pytest.raises(StoreError) as e:
        store.create_namespace("customers")
    assert status_of(e) == 409 and "already exists" in e.value.message
    for bad in ("", "a b", "x" * 64, "ns/1", "é"):
        with pytest.raises(StoreError) as e:
            store.create_namespace(bad)
        assert status_of(e) == 400 and "invalid namespace name" in e.value.message
    store.put_script(rec("a", ns="customers"))
    assert store.get_namespace("customers").script_count == 1
    assert store.get_namespace("nope") is None
    assert store.delete_namespace("customers") == ["a"]
    assert store.get_script("customers", "a") is None
    assert store.get_version("customers", "a") is None
    with pytest.raises(StoreError) as e:
        store.delete_namespace("customers")
    assert status_of(e) == 404


def test_put_get_keeps_created_on_and_updates_modified_on(store):
    first = store.put_script(rec("hello", bindings=[{"type": "plain_text", "name": "A", "text": "x"}],
                                 compatibility_date="2025-06-01", tail_consumers=[{"service": "t"}]))
    assert first.created_on == first.modified_on
    got = store.get_script(DEFAULT_NAMESPACE, "hello")
    assert got.modules == {"worker.py": b"print(1)\n"}
    assert msgspec.to_builtins(got.bindings) == [{"type": "plain_text", "name": "A", "text": "x"}]
    assert got.compatibility_date == "2025-06-01"
    assert msgspec.to_builtins(got.tail_consumers) == [{"service": "t"}]
    time.sleep(0.002)
    second = store.put_script(rec("hello", version="v2", code=b"print(2)\n"))
    assert second.created_on == first.created_on and second.modified_on > first.modified_on
    assert store.get_version(DEFAULT_NAMESPACE, "hello") == "v2"
    assert store.get_script(DEFAULT_NAMESPACE, "hello").modules["worker.py"] == b"print(2)\n"


def test_put_into_missing_namespace_is_404(store):
    with pytest.raises(StoreError) as e:
        store.put_script(rec("x", ns="missing"))
    assert status_of(e) == 404 and "missing" in e.value.message


def test_platform_scripts_need_no_namespace(store):
    store.put_script(rec("dispatcher", ns=PLATFORM))
    assert store.get_version(PLATFORM, "dispatcher") == "v1"
    assert store.get_script(DEFAULT_NAMESPACE, "dispatcher") is None
    records, _ = store.list_scripts(PLATFORM)
    assert [r.name for r in records] == ["dispatcher"]


def test_binary_modules_round_trip(store):
    blob = bytes(range(256)) * 10
    r = rec("bin")
    r.modules["data.bin"] = blob
    store.put_script(r)
    store._cache.clear()  # force a read from SQLite
    assert store.get_script(DEFAULT_NAMESPACE, "bin").modules["data.bin"] == blob


def test_cache_is_correct_across_writes_and_deletes(store):
    store.put_script(rec("s", version="v1"))
    a = store.get_script(DEFAULT_NAMESPACE, "s")
    assert store.get_script(DEFAULT_NAMESPACE, "s") is a  # warm hit: same object
    store.put_script(rec("s", version="v2"))
    assert store.get_script(DEFAULT_NAMESPACE, "s").version == "v2"
    store.add_tag(DEFAULT_NAMESPACE, "s", "t1")
    assert store.get_script(DEFAULT_NAMESPACE, "s").tags == ["t1"]
    assert store.delete_script(DEFAULT_NAMESPACE, "s") is True
    assert store.get_script(DEFAULT_NAMESPACE, "s") is None
    assert store.delete_script(DEFAULT_NAMESPACE, "s") is False


def test_cache_is_bounded(tmp_path):
    with Store(tmp_path / "c.db", cache_entries=3, cache_bytes=10_000) as s:
        for i in range(10):
            s.put_script(rec(f"s{i}", code=b"x" * 100))
            s.get_script(DEFAULT_NAMESPACE, f"s{i}")
        assert len(s._cache) == 3
        s.put_script(rec("huge", code=b"x" * 5000))  # > a quarter of the byte budget: never cached
        assert s.get_script(DEFAULT_NAMESPACE, "huge").modules["worker.py"] == b"x" * 5000
        assert (DEFAULT_NAMESPACE, "huge") not in s._cache
        assert s._cache.bytes <= 10_000


def test_warm_gets_do_not_touch_the_database(store):
    """The hot path's lookups are answered from memory: what is cached (a
    script, its version, a name known to be missing) costs no SQL at all.
    Counting statements, not timing them, keeps this honest on a noisy host."""
    store.put_script(rec("hot"))
    store.get_script(DEFAULT_NAMESPACE, "hot")
    store.get_version(DEFAULT_NAMESPACE, "hot")
    store.get_script(DEFAULT_NAMESPACE, "missing")
    statements: list[str] = []
    for conn in (store._reader, store._writer):
        conn.set_trace_callback(statements.append)
    for _ in range(100):
        assert store.get_script(DEFAULT_NAMESPACE, "hot").name == "hot"
        store.get_version(DEFAULT_NAMESPACE, "hot")
        assert store.get_script(DEFAULT_NAMESPACE, "missing") is None
    assert statements == []
    store.put_script(rec("hot", version="v2"))
    assert statements, "the trace callback saw nothing: the check above proves nothing"
    assert store.get_script(DEFAULT_NAMESPACE, "hot").version == "v2"


def test_list_pagination_and_tag_filters(store):
    for i in range(25):
        tags = ["plan:free" if i % 2 else "plan:pro"] + (["beta"] if i % 5 == 0 else [])
        store.put_script(rec(f"w{i:02d}", tags=tags))
    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = store.list_scripts(DEFAULT_NAMESPACE, cursor=cursor, per_page=10)
        assert all(r.modules == {} for r in page)
        seen += [r.name for r in page]
        pages += 1
        if cursor is None:
            break
    assert seen == [f"w{i:02d}" for i in range(25)] and pages == 3
    free, _ = store.list_scripts(DEFAULT_NAMESPACE, tags=["plan:free"], per_page=100)
    assert len(free) == 12 and all("plan:free" in r.tags for r in free)
    both, _ = store.list_scripts(DEFAULT_NAMESPACE, tags=[("plan:pro", True), ("beta", True)])
    assert [r.name for r in both] == ["w00", "w10", "w20"]
    pro_not_beta, _ = store.list_scripts(DEFAULT_NAMESPACE, tags=[("plan:pro", True), ("beta", False)])
    assert len(pro_not_beta) == 10


def test_list_errors(store):
    for per_page in (0, 1001, "10", True):
        with pytest.raises(StoreError) as e:
            store.list_scripts(DEFAULT_NAMESPACE, per_page=per_page)
        assert status_of(e) == 400 and "per_page" in e.value.message
    with pytest.raises(StoreError) as e:
        store.list_scripts(DEFAULT_NAMESPACE, cursor="!!!")
    assert status_of(e) == 400 and "cursor" in e.value.message
    with pytest.raises(StoreError) as e:
        store.list_scripts("nope")
    assert status_of(e) == 404


def test_cursor_survives_deletes(store):
    for name in "abcdef":
        store.put_script(rec(name))
    page, cursor = store.list_scripts(DEFAULT_NAMESPACE, per_page=3)
    store.delete_script(DEFAULT_NAMESPACE, "c")
    store.delete_script(DEFAULT_NAMESPACE, "d")
    page2, cursor2 = store.list_scripts(DEFAULT_NAMESPACE, cursor=cursor, per_page=3)
    assert [r.name for r in page2] == ["e", "f"] and cursor2 is None


def test_parse_tag_filters():
    assert parse_tag_filters("a,b:yes,c:no, plan:free ,") == [
        ("a", True), ("b", True), ("c", False), ("plan:free", True)]
    assert parse_tag_filters("") == []
    assert parse_tag_filters("x:YES") == [("x", True)]


def test_tags_crud_and_validation(store):
    store.put_script(rec("s", tags=["a", "a", "b"]))
    assert store.get_tags(DEFAULT_NAMESPACE, "s") == ["a", "b"]
    assert store.add_tag(DEFAULT_NAMESPACE, "s", "c") == ["a", "b", "c"]
    assert store.add_tag(DEFAULT_NAMESPACE, "s", "c") == ["a", "b", "c"]
    assert store.remove_tag(DEFAULT_NAMESPACE, "s", "a") == ["b", "c"]
    assert store.remove_tag(DEFAULT_NAMESPACE, "s", "zzz") == ["b", "c"]
    assert store.put_tags(DEFAULT_NAMESPACE, "s", ["x", "y"]) == ["x", "y"]
    assert [r.name for r in store.list_scripts(DEFAULT_NAMESPACE, tags=["x"])[0]] == ["s"]
    assert store.list_scripts(DEFAULT_NAMESPACE, tags=["b"])[0] == []
    for bad in (["a,b"], [""], ["x\n"], [f"t{i}" for i in range(9)], [1]):
        with pytest.raises(StoreError) as e:
            store.put_tags(DEFAULT_NAMESPACE, "s", bad)
        assert status_of(e) == 400
    with pytest.raises(StoreError) as e:
        store.get_tags(DEFAULT_NAMESPACE, "missing")
    assert status_of(e) == 404 and "missing" in e.value.message
    with pytest.raises(StoreError) as e:
        store.add_tag(DEFAULT_NAMESPACE, "missing", "t")
    assert status_of(e) == 404


def test_delete_by_tags(store):
    store.create_namespace("other")
    store.put_script(rec("a", tags=["free", "old"]))
    store.put_script(rec("b", tags=["free"]))
    store.put_script(rec("c", tags=["pro"]))
    store.put_script(rec("a", ns="other", tags=["free", "old"]))
    assert store.delete_scripts_by_tags(DEFAULT_NAMESPACE, [("free", True), ("old", False)]) == ["b"]
    assert store.get_version(DEFAULT_NAMESPACE, "b") is None
    assert store.delete_scripts_by_tags(DEFAULT_NAMESPACE, ["free"]) == ["a"]
    assert store.get_version("other", "a") == "v1"  # other namespaces untouched
    assert [r.name for r in store.list_scripts(DEFAULT_NAMESPACE)[0]] == ["c"]
    with pytest.raises(StoreError) as e:
        store.delete_scripts_by_tags(DEFAULT_NAMESPACE, [])
    assert status_of(e) == 400
    with pytest.raises(StoreError) as e:
        store.delete_scripts_by_tags("nope", ["x"])
    assert status_of(e) == 404


def test_routes(store):
    r1 = store.add_route("https://Example.com/*", "dispatcher")
    assert r1.pattern == "example.com/*" and len(r1.id) == 32
    r2 = store.add_route("*/*", "fallback")
    assert store.list_routes() == [r1, r2]
    assert store.route_table().match("example.com", "/x") == "dispatcher"
    assert store.route_table() is store.route_table()  # cached until a change
    with pytest.raises(StoreError) as e:
        store.add_route("example.com/*", "other")
    assert status_of(e) == 409 and r1.id in e.value.message
    with pytest.raises(StoreError) as e:
        store.add_route("example.com", "x")
    assert status_of(e) == 400 and "no path" in e.value.message
    with pytest.raises(StoreError) as e:
        store.add_route("a.com/*", "bad name")
    assert status_of(e) == 400
    assert store.delete_route(r1.id) is True
    assert store.delete_route(r1.id) is False
    assert store.route_table().match("example.com", "/x") == "fallback"


def test_everything_persists_across_reopen(tmp_path):
    path = tmp_path / "state" / "corral.db"
    with Store(path) as s:
        s.create_namespace("customers")
        s.put_script(rec("hello", ns="customers", tags=["t"], version="abc"))
        s.put_script(rec("dispatcher", ns=PLATFORM))
        route = s.add_route("*/*", "dispatcher")
    with Store(path) as s:
        assert {n.name for n in s.list_namespaces()} == {"default", "customers"}
        assert s.get_version("customers", "hello") == "abc"
        got = s.get_script("customers", "hello")
        assert got.tags == ["t"] and got.modules == {"worker.py": b"print(1)\n"}
        assert s.list_routes() == [route]
        assert s.route_table().match("any", "/") == "dispatcher"


def test_concurrent_writers_and_readers(store):
    errors = []

    def writer(n):
        try:
            for i in range(30):
                store.put_script(rec(f"w{n}-{i % 5}", version=f"v{i}"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader():
        try:
            for _ in range(300):
                for n in range(4):
                    r = store.get_script(DEFAULT_NAMESPACE, f"w{n}-0")
                    if r is not None:
                        assert r.version.startswith("v")
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)] + [
        threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for n in range(4):
        for i in range(5):
            # last write of w{n}-{i} was version v{25 + i}
            assert store.get_script(DEFAULT_NAMESPACE, f"w{n}-{i}").version == f"v{25 + i}"


def test_script_name_validation(store):
    with pytest.raises(StoreError) as e:
        store.put_script(rec("bad name"))
    assert status_of(e) == 400 and "invalid script name" in e.value.message
