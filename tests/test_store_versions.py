"""The store's versions, deployments, schema upgrade, bounded cache, asset
manifests and tokens."""

from __future__ import annotations

import sqlite3

import msgspec
import pytest

from supervisor.errors import Invalid, NotFound
from supervisor.model import AssetEntry, AssetSet, ScriptRecord, content_version
from supervisor.store.assets import AssetBlobs
from supervisor.store.records import Split
from supervisor.store.schema import SCHEMA_VERSION
from supervisor.store.store import Store


def rec(name, code=b"print(1)\n", ns="default", tags=(), assets=None):
    modules = {"worker.py": code}
    return ScriptRecord(namespace=ns, name=name, version=content_version("worker.py", modules, [], ""),
                        main_module="worker.py", modules=modules, tags=list(tags), assets=assets or {})


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "corral.db") as s:
        yield s


def test_every_upload_is_a_version_and_deploys_it(store):
    first = store.put_script(rec("a", b"one"))
    second = store.put_script(rec("a", b"two"))
    assert first.version_id != second.version_id
    versions, total = store.list_versions("default", "a")
    assert total == 2 and [v.number for v in versions] == [2, 1]
    assert store.get_script("default", "a").modules["worker.py"] == b"two"
    assert store.get_version_record("default", "a", first.version_id).modules["worker.py"] == b"one"
    # same content twice: two versions, one bundle
    store.put_script(rec("a", b"two"))
    assert store._read("SELECT COUNT(*) FROM bundles")[0][0] == 2


def test_upload_without_deploy_and_rollback(store):
    first = store.put_script(rec("a", b"one"))
    draft = store.put_script(rec("a", b"two"), deploy=False)
    assert store.get_script("default", "a").modules["worker.py"] == b"one"
    store.deploy("default", "a", [Split(version_id=draft.version_id, percentage=100)])
    assert store.get_script("default", "a").modules["worker.py"] == b"two"
    store.deploy("default", "a", [Split(version_id=first.version_id, percentage=100)], message="rollback")
    assert store.get_script("default", "a").version_id == first.version_id
    deployments = store.list_deployments("default", "a")
    assert len(deployments) == 3 and deployments[0].message == "rollback"
    with pytest.raises(NotFound):
        store.put_script(rec("never-deployed"), deploy=False)


def test_gradual_deployment_splits_by_percentage(store):
    a = store.put_script(rec("a", b"one"))
    b = store.put_script(rec("a", b"two"), deploy=False)
    store.deploy("default", "a", [Split(version_id=a.version_id, percentage=80),
                                  Split(version_id=b.version_id, percentage=20)])
    seen = [store.get_script("default", "a").modules["worker.py"] for _ in range(2000)]
    assert 250 < seen.count(b"two") < 550  # 20% of 2000, loosely
    assert store.get_primary("default", "a").version_id == a.version_id


def test_a_deploy_leaves_what_it_deployed_in_the_cache_for_the_first_request(store):
    from supervisor.store.store import NOT_CACHED

    first = store.put_script(rec("a", b"one"))
    cached = store.cached("default", "a")
    assert cached is not NOT_CACHED and cached.version_id == first.version_id
    assert cached.modules["worker.py"] == b"one"
    draft = store.put_script(rec("a", b"two"), deploy=False)
    assert store.cached("default", "a").version_id == first.version_id, "an upload alone changes nothing"
    store.deploy("default", "a", [Split(version_id=draft.version_id, percentage=100)])
    assert store.cached("default", "a").modules["worker.py"] == b"two"
    store.deploy("default", "a", [Split(version_id=first.version_id, percentage=100)])
    assert store.cached("default", "a").version_id == first.version_id
    assert store.cached("default", "a") == store.get_version_record("default", "a", first.version_id)


def test_after_a_restart_the_cache_is_warmed_with_the_most_recently_changed_scripts(tmp_path):
    from supervisor.store.store import NOT_CACHED

    with Store(tmp_path / "w.db") as store:
        for name in ("old", "mid", "new", "newest"):
            store.put_script(rec(name, name.encode()))
    with Store(tmp_path / "w.db", cache_entries=3) as restarted:
        assert restarted.cached("default", "newest") is NOT_CACHED
        assert restarted.warm_cache() == 3
        assert restarted.cached("default", "old") is NOT_CACHED, "the least recently changed did not fit"
        assert [restarted.cached("default", n).modules["worker.py"] for n in ("mid", "new", "newest")] == [
            b"mid", b"new", b"newest"]


def test_stored_versions_are_every_deployed_content_version_read_without_the_records(store):
    a = store.put_script(rec("a", b"one"))
    b = store.put_script(rec("a", b"two"), deploy=False)
    store.put_script(rec("a", b"three"), deploy=False)  # stored, never deployed
    c = store.put_script(rec("c", b"four"))
    store.deploy("default", "a", [Split(version_id=a.version_id, percentage=80),
                                  Split(version_id=b.version_id, percentage=20)])
    store._cache.clear()
    assert store.stored_versions() == {a.version, b.version, c.version}
    assert len(store._cache) == 0, "no record was read into the cache"


@pytest.mark.parametrize("splits, fragment", [
    ([], "one version"),
    ([("x", 50), ("y", 30)], "add up to 100"),
    ([("x", 50), ("x", 50)], "twice"),
    ([("x", 40), ("y", 30), ("z", 30)], "one version"),
])
def test_bad_deployments(store, splits, fragment):
    store.put_script(rec("a"))
    with pytest.raises(Invalid, match=fragment):
        store.deploy("default", "a", [Split(version_id=v, percentage=p) for v, p in splits])


def test_unknown_version_is_not_found(store):
    store.put_script(rec("a"))
    with pytest.raises(NotFound, match="corral versions"):
        store.deploy("default", "a", [Split(version_id="nope", percentage=100)])
    other = store.put_script(rec("b"))
    with pytest.raises(NotFound):  # another script's version is not this one's
        store.deploy("default", "a", [Split(version_id=other.version_id, percentage=100)])


def test_delete_removes_versions_and_unused_bundles(store):
    store.put_script(rec("a", b"shared"))
    store.put_script(rec("b", b"shared"))
    store.put_script(rec("a", b"only-a"))
    store.delete_script("default", "a")
    assert store._read("SELECT COUNT(*) FROM versions WHERE name = 'a'")[0][0] == 0
    assert store._read("SELECT COUNT(*) FROM bundles")[0][0] == 1  # "shared" is still b's
    assert store.get_script("default", "b").modules["worker.py"] == b"shared"
    store.put_script(rec("t1", tags=["bulk"]))
    store.put_script(rec("t2", tags=["bulk"]))
    assert sorted(store.delete_scripts_by_tags("default", ["bulk"])) == ["t1", "t2"]
    assert store._read("SELECT COUNT(*) FROM deployments WHERE name IN ('t1', 't2')")[0][0] == 0


def test_schema_1_database_is_upgraded(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE namespaces (name TEXT PRIMARY KEY, id TEXT NOT NULL, created_on TEXT NOT NULL);
        CREATE TABLE scripts (namespace TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL,
            main_module TEXT NOT NULL, modules BLOB NOT NULL, metadata TEXT NOT NULL, tags TEXT NOT NULL,
            created_on TEXT NOT NULL, modified_on TEXT NOT NULL, PRIMARY KEY (namespace, name));
        CREATE TABLE script_tags (namespace TEXT NOT NULL, name TEXT NOT NULL, tag TEXT NOT NULL,
            PRIMARY KEY (namespace, name, tag));
        CREATE TABLE routes (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            pattern TEXT NOT NULL UNIQUE, script TEXT NOT NULL);
        INSERT INTO namespaces VALUES ('default', 'id-1', '2025-01-01T00:00:00Z');
        PRAGMA user_version = 1;
    """)
    db.execute("INSERT INTO scripts VALUES ('default', 'old', 'v-old', 'worker.py', ?, ?, '[\"t\"]', "
               "'2025-01-01T00:00:00Z', '2025-01-02T00:00:00Z')",
               (msgspec.msgpack.encode({"worker.py": b"print('old')"}),
                '{"bindings":[{"type":"plain_text","name":"A","text":"x"}]}'))
    db.execute("INSERT INTO script_tags VALUES ('default', 'old', 't')")
    db.commit()
    db.close()
    with Store(path) as store:
        record = store.get_script("default", "old")
        assert record.modules == {"worker.py": b"print('old')"} and record.version == "v-old"
        assert record.bindings[0].text == "x" and record.tags == ["t"] and record.version_id
        versions, total = store.list_versions("default", "old")
        assert total == 1 and versions[0].source == "migration"
        assert store.list_deployments("default", "old")[0].versions[0].version_id == record.version_id
        assert store._read("PRAGMA user_version")[0][0] == SCHEMA_VERSION
        store.put_script(rec("old", b"new"))
        assert store.list_versions("default", "old")[1] == 2
    with Store(path) as store:  # reopening an upgraded database changes nothing
        assert store.get_script("default", "old").modules["worker.py"] == b"new"


def test_cache_is_bounded_and_keeps_no_index(tmp_path):
    with Store(tmp_path / "c.db", cache_entries=50) as store:
        for i in range(500):
            store.put_script(rec(f"s{i}"))
        for i in range(500):
            assert store.get_script("default", f"s{i}") is not None
        assert len(store._cache) == 50
        assert not hasattr(store._cache, "_versions")
        for i in range(20_000):
            store.get_script("default", f"missing{i}")
        assert len(store._cache._missing) <= 10_000
        # a miss remembered is forgotten when the script appears
        assert store.get_script("default", "late") is None
        store.put_script(rec("late"))
        assert store.get_script("default", "late") is not None


def test_asset_manifest_per_version_and_blobs_per_script(store, tmp_path):
    blobs = AssetBlobs(tmp_path / "assets")
    blobs.put("default", "site", "ab" * 16, b"<h1>hi</h1>")
    one = store.put_script(rec("site", assets=AssetSet(manifest={"/index.html": AssetEntry("ab" * 16, 11)})))
    store.put_script(rec("site", b"two"))
    assert store.get_script("default", "site").assets is None
    assert store.get_version_record("default", "site", one.version_id).assets.manifest["/index.html"].hash == "ab" * 16
    with blobs.open("default", "site", "ab" * 16) as f:
        assert f.read() == b"<h1>hi</h1>"
    with pytest.raises(FileNotFoundError):  # never across scripts
        blobs.open("default", "other", "ab" * 16)
    with pytest.raises(Invalid):
        blobs.open("default", "site", "../../etc/passwd")


def test_tokens_are_hashed(store):
    info, secret = store.create_token("ci", "deploy", ["default"])
    assert store.lookup_token(secret).id == info.id
    assert store.lookup_token(secret + "x") is None
    assert secret not in str(store._read("SELECT * FROM tokens"))
    with pytest.raises(Invalid):
        store.create_token("x", "root", [])
    assert store.delete_token(info.id) and store.lookup_token(secret) is None


def test_a_failed_commit_leaves_no_write_transaction_open(store):
    """A COMMIT SQLite fails (a full disk; here refused once by an
    authorizer) left the writer's transaction open: the next write's BEGIN
    failed, or nested in it and was lost with it."""
    refused = {"commit": True}

    def authorize(action, arg1, *_):
        if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT" and refused["commit"]:
            refused["commit"] = False
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    store._writer.set_authorizer(authorize)
    with pytest.raises(sqlite3.DatabaseError):
        store.create_namespace("lost")
    assert not store._writer.in_transaction
    store.create_namespace("kept")
    names = {n.name for n in store.list_namespaces()}
    assert "kept" in names and "lost" not in names


def test_writes_reach_the_database_file_itself_not_only_its_log(tmp_path, monkeypatch):
    """The control plane writes little, so SQLite's own checkpoint (at 4 MB of
    log) could be weeks away and every deploy lived in corral.db-wal only: a
    backup that took corral.db alone (or lost the WAL) had nothing. A write
    past the interval copies the log in (here the interval is 0)."""
    import shutil

    from supervisor.store import store as store_module

    monkeypatch.setattr(store_module, "CHECKPOINT_EVERY_S", 0.0)
    with Store(tmp_path / "corral.db") as s:
        s.create_namespace("copied")
        shutil.copy(tmp_path / "corral.db", tmp_path / "alone.db")  # the main file only, the WAL left behind
    alone = sqlite3.connect(tmp_path / "alone.db")
    assert ("copied",) in alone.execute("SELECT name FROM namespaces").fetchall()
