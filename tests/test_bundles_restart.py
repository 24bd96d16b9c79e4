"""A bundle an earlier run wrote is ready without a trip to a worker thread.

After a restart every tenant's first cold start went through
``Bundles.ensure`` (a worker thread, one at a time under the bundles' lock)
only to find its bundle already on disk. ``ready`` now finds it with a stat,
except where that could be wrong: a version with packages (its entry
directories come from the package store), a collection in progress (it may
be deleting that very directory), a name that is not a version.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from supervisor.model import ScriptRecord
from supervisor.pool.bundles import Bundles, write_bundle


def _record(version: str, packages_lock: str = "") -> ScriptRecord:
    return ScriptRecord(namespace="ns", name="tenant", version=version, main_module="worker.py",
                        modules={"worker.py": b"x = 1\n"}, packages_lock=packages_lock)


def test_a_version_on_disk_from_an_earlier_run_is_ready_at_once(tmp_path: Path) -> None:
    trio.run(Bundles(str(tmp_path)).ensure, _record("v1"))  # the earlier run

    async def restarted() -> None:
        bundles = Bundles(str(tmp_path))
        assert bundles.ready(_record("v1"))
        assert (Path(bundles.path("v1")) / "worker.py").read_bytes() == b"x = 1\n"
        assert not bundles.ready(_record("v2")), "a version never written is not ready"

    trio.run(restarted)


def test_what_a_stat_cannot_vouch_for_still_goes_through_ensure(tmp_path: Path) -> None:
    trio.run(Bundles(str(tmp_path)).ensure, _record("v1"))
    (tmp_path / "bundles" / "..v1").mkdir()  # a name no version has

    async def restarted() -> None:
        bundles = Bundles(str(tmp_path))
        assert not bundles.ready(_record("v1", packages_lock="lock1")), \
            "a version with packages needs its entry directories from the package store"
        assert not bundles.ready(_record("..v1"))
        async with bundles._lock:  # as a collection holds it while it deletes
            assert not bundles.ready(_record("v1"))
        assert bundles.ready(_record("v1"))

    trio.run(restarted)


def test_a_bundle_written_under_its_version_is_written_again_under_its_name(tmp_path: Path) -> None:
    """Bundles written before folders had keyed names (``bundles/<version>``)
    are not used: a tenant could find them by the version. Each is written
    again under its name at first use, and the old folder is collected."""
    (tmp_path / "bundles").mkdir()
    old = write_bundle(str(tmp_path / "bundles"), "v1", {"worker.py": b"x = 1\n"})

    async def upgraded() -> None:
        bundles = Bundles(str(tmp_path))
        assert bundles.dir_name("v1") != "v1"
        assert not bundles.ready(_record("v1"))
        path = await bundles.ensure(_record("v1"))
        assert path == bundles.path("v1") and (Path(path) / "worker.py").read_bytes() == b"x = 1\n"
        assert await bundles.collect(lambda: {"v1"}) == ["v1"]
        assert not os.path.exists(old) and os.path.exists(path)
        assert Bundles(str(tmp_path)).dir_name("v1") == bundles.dir_name("v1")  # the key is kept

    trio.run(upgraded)
