"""A cold start gets its main module's code from the supervisor's memory, not the disk.

Bundles stay the files a child imports from; the supervisor also keeps the
main module's pyc and its folder's names (``MainCode``) and sends them with
``Load``, so a cold start over a page cache that dropped the bundle reads
nothing from disk. The server tests prove the child ran what it was sent:
the bundle on disk is made unlistable to the child and its pyc replaced by
other code, and a cold start still answers with the deployed code.
"""

from __future__ import annotations

import marshal
import os
import time
from collections.abc import Callable
from pathlib import Path

import trio

from protocol.messages import PYC_HEADER, MainCode
from supervisor.model import ScriptRecord
from supervisor.pool.bundles import Bundles, write_bundle
from supervisor.pool.main_code import MAX_ENTRY_BYTES, MainCodeCache, read_main_code
from tests.harness import Corral

SOURCE = """\
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("the deployed code")
"""


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _bundle_of(server: Corral, source: str) -> Path:
    found = [p.parent for p in (server.state_dir / "bundles").glob("*/worker.py") if p.read_text() == source]
    assert len(found) == 1, found
    return found[0]


def _tamper(bundle: Path) -> None:
    """What a child would run if it read the bundle: other code, in a folder it cannot list."""
    other = compile('raise RuntimeError("read from disk")\n', str(bundle / "worker.py"), "exec")
    pyc = next((bundle / "__pycache__").glob("worker.*.pyc"))
    pyc.write_bytes(PYC_HEADER + bytes(8) + marshal.dumps(other))
    bundle.chmod(0o311)  # children (other uids) may pass through, not list


def test_a_cold_start_runs_the_main_code_it_was_sent_not_the_bundles_files(fresh_corral: Corral) -> None:
    server = fresh_corral
    # Same content, same version: "second" shares the bundle "first" wrote.
    server.deploy("first", SOURCE)
    server.deploy("second", SOURCE)
    assert server.request("/", host="first.localhost").text == "the deployed code"
    bundle = _bundle_of(server, SOURCE)
    _tamper(bundle)
    try:
        resp = server.request("/", host="second.localhost")
        assert (resp.status, resp.text) == (200, "the deployed code"), resp.text
    finally:
        bundle.chmod(0o755)
    assert server.alive()


def test_after_a_restart_the_deployed_versions_main_code_is_read_into_memory(tmp_path: Path) -> None:
    server = Corral(tmp_path / "state").start()
    try:
        server.deploy_dispatcher()
        server.deploy("first", SOURCE)
        server.deploy("second", SOURCE)
        assert server.request("/", host="first.localhost").text == "the deployed code"
    finally:
        server.stop()
    bundle = _bundle_of(server, SOURCE)
    server.start()
    try:
        _wait_for(lambda: "bundles.code_loaded" in server.log_path.read_text(), "the main code to be read")
        _tamper(bundle)
        resp = server.request("/", host="second.localhost")
        assert (resp.status, resp.text) == (200, "the deployed code"), resp.text
    finally:
        bundle.chmod(0o755)
        server.stop()


def _code(size: int, entries: tuple[str, ...] = ("worker.py",)) -> MainCode:
    return MainCode(b"x" * size, list(entries))


def test_the_cache_keeps_to_its_budget_least_recently_used_first_out() -> None:
    cache = MainCodeCache(budget_bytes=3000)
    for version in ("a", "b", "c"):
        assert cache.put(version, _code(700))
    assert cache.get("a") is not None  # "b" is now the least recently used
    assert cache.put("d", _code(700))
    assert [v for v in "abcd" if v in cache] == ["a", "c", "d"]
    assert cache.bytes <= 3000
    assert not cache.put("huge", _code(4000)), "one entry over the budget is not held"
    assert "huge" not in cache and len(cache) == 3
    roomy = MainCodeCache(budget_bytes=1 << 30)
    assert not roomy.put("huge", _code(MAX_ENTRY_BYTES)), "a Load must stay well within a frame"
    cache.keep_only({"a"})
    assert len(cache) == 1 and "a" in cache and 700 < cache.bytes < 1400


def test_main_code_is_the_bundles_own_pyc_and_folder(tmp_path: Path) -> None:
    path = write_bundle(str(tmp_path), "v1", {"src/entry.py": b"VALUE = 1\n", "src/data.txt": b"d",
                                              "README": b"r"})
    code = read_main_code(path, "src/entry.py")
    assert code is not None
    assert code.root_entries == ["__pycache__", "data.txt", "entry.py"]
    assert code.pyc == next(Path(path, "src", "__pycache__").glob("entry.*.pyc")).read_bytes()
    assert code.pyc.startswith(PYC_HEADER)
    broken = write_bundle(str(tmp_path), "v2", {"worker.py": b"def (:\n"})
    assert read_main_code(broken, "worker.py") is None, "no pyc: the import reports the syntax error"
    assert read_main_code(str(tmp_path / "absent"), "worker.py") is None


def test_a_version_whose_code_was_read_at_start_is_ready_without_a_stat(tmp_path: Path) -> None:
    record = ScriptRecord(namespace="ns", name="tenant", version="v1", main_module="worker.py",
                          modules={"worker.py": b"x = 1\n"})
    trio.run(Bundles(str(tmp_path)).ensure, record)  # an earlier run wrote it

    async def restarted() -> None:
        bundles = Bundles(str(tmp_path))
        assert await bundles.load_code(lambda: [("v1", "worker.py")]) == 1
        hidden = Path(bundles.path("v1"))
        hidden.rename(Path(bundles.root) / "moved")  # a stat would now say it is absent
        try:
            assert bundles.ready(record), "the code read at start vouches for the bundle"
        finally:
            (Path(bundles.root) / "moved").rename(hidden)

    trio.run(restarted)


def test_a_written_bundle_has_its_code_held_until_it_is_collected(tmp_path: Path) -> None:
    record = ScriptRecord(namespace="ns", name="tenant", version="v1", main_module="worker.py",
                          modules={"worker.py": b"x = 1\n"})

    async def main() -> None:
        bundles = Bundles(str(tmp_path))
        await bundles.ensure(record)
        held = bundles.code.get("v1")
        assert held is not None and held.root_entries == ["__pycache__", "worker.py"]
        assert await bundles.collect(lambda: set()) == [bundles.dir_name("v1")]
        assert "v1" not in bundles.code and not os.path.exists(bundles.path("v1"))

    trio.run(main)
