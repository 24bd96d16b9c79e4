"""The cgroup v2 backend's logic, as far as a host without delegated v2 memory allows.

This host's cgroup2 mount has no memory controller, so a real ``corral
serve`` uses v1 (see test_memory). Here the v2 backend runs against:

* a fake cgroupfs in a temporary directory: ``mkdir`` is patched to create
  the interface files the kernel would (memory.max, memory.events, ...), so
  every write and read the backend makes is checked, in order;
* the real cgroup2 mount, for what it has without memory: refusing with a
  clear reason, and cgroup.kill + rmdir of a populated leaf.

What stays untested here: the kernel charging and OOM-killing a child in a
v2 leaf, and enabling +memory in a real delegated subtree.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.limits import memory as ml

MB = 1 << 20

V2_FILES = {
    "cgroup.procs": "", "cgroup.controllers": "memory pids", "cgroup.subtree_control": "",
    "cgroup.kill": "", "memory.max": "max", "memory.swap.max": "max", "memory.oom.group": "0",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    "memory.peak": "0",
}


@pytest.fixture
def fake_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory that behaves like a delegated cgroup2 subtree."""
    real_mkdir = os.mkdir

    def mkdir(path, mode=0o777, *args, **kwargs):
        real_mkdir(path, mode, *args, **kwargs)
        if str(path).startswith(str(tmp_path)):
            for name, value in V2_FILES.items():
                Path(path, name).write_text(value)

    def rmdir(path):
        for entry in Path(path).iterdir():
            if entry.is_dir():
                raise OSError(16, "Device or resource busy", str(path))
            entry.unlink()
        os.rmdir.__wrapped__(path)  # type: ignore[attr-defined]

    rmdir_real = os.rmdir
    rmdir.__wrapped__ = rmdir_real  # type: ignore[attr-defined]
    base = tmp_path / "service"
    mkdir(base)
    Path(base, "cgroup.procs").write_text(f"{os.getpid()}\n")
    monkeypatch.setattr(ml.os, "mkdir", mkdir)
    monkeypatch.setattr(ml.os, "rmdir", rmdir)
    return base


def test_v2_setup_moves_us_to_a_leaf_and_delegates_memory(fake_v2: Path) -> None:
    enforcer = ml.setup_cgroup2(128, str(fake_v2))
    parent = fake_v2 / f"corral-{os.getpid()}"
    assert enforcer.parent == str(parent) and enforcer.name == "cgroup2"
    assert (parent / "supervisor" / "cgroup.procs").read_text() == str(os.getpid())
    assert (fake_v2 / "cgroup.subtree_control").read_text() == "+memory"
    assert (parent / "cgroup.subtree_control").read_text() == "+memory"
    assert enforcer.jail_address_space_mb() == 512


def test_v2_child_limit_events_and_release(fake_v2: Path) -> None:
    enforcer = ml.setup_cgroup2(128, str(fake_v2))
    child = enforcer.attach(4242)
    leaf = Path(enforcer.parent) / "child-4242"
    assert (leaf / "memory.max").read_text() == str(128 * MB)
    assert (leaf / "memory.swap.max").read_text() == "0"
    assert (leaf / "memory.oom.group").read_text() == "1"
    assert (leaf / "cgroup.procs").read_text() == "4242"
    assert child.initial_mb == 128
    assert child.set_limit(32) is True and (leaf / "memory.max").read_text() == str(32 * MB)
    assert child.oom_killed() is False
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n")
    (leaf / "memory.peak").write_text(str(32 * MB))
    assert child.oom_killed() is True and child.peak_bytes() == 32 * MB
    enforcer.forget(4242, child)
    assert not leaf.exists() and 4242 not in enforcer.live


def test_v2_refuses_a_cgroup_without_memory(fake_v2: Path) -> None:
    (fake_v2 / "cgroup.controllers").write_text("cpu pids")
    with pytest.raises(ml.MemoryEnforcementError, match="memory controller is not available.*Delegate=yes"):
        ml.setup_cgroup2(128, str(fake_v2))


def test_v2_explains_processes_in_the_way(fake_v2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cgroup that delegates a controller may hold no process (EBUSY)."""
    real_write = ml._write

    def write(path: str, value: str) -> None:
        if path == str(fake_v2 / "cgroup.subtree_control"):
            raise OSError(16, "Device or resource busy")
        real_write(path, value)

    monkeypatch.setattr(ml, "_write", write)
    (fake_v2 / "cgroup.procs").write_text("1234\n5678\n")
    with pytest.raises(ml.MemoryEnforcementError, match="still holds other processes \\(1234 5678\\)"):
        ml.setup_cgroup2(128, str(fake_v2))


def test_discovery_parses_proc_and_mountinfo() -> None:
    cgroup = "4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/system.slice/corral.service\n"
    assert ml.own_cgroups(cgroup) == {"memory": "/process_api/abc", "cpu": "/", "cpuacct": "/",
                                      "": "/system.slice/corral.service"}
    mountinfo = (
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
        "50 31 0:40 /system.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    mounts = ml.cgroup_mounts(mountinfo)
    assert ("/sys/fs/cgroup/memory", "/", "cgroup", {"rw", "memory"}) in mounts
    # A cgroup namespace (or a container) mounts a subtree: paths are relative to its root.
    assert ml._host_path("/sys/fs/cgroup", "/system.slice", "/system.slice/corral.service") == \
        "/sys/fs/cgroup/corral.service"
    assert ml._host_path("/sys/fs/cgroup", "/system.slice", "/user.slice/x") is None
    assert ml._host_path("/sys/fs/cgroup/memory", "/", "/process_api/abc") == \
        "/sys/fs/cgroup/memory/process_api/abc"


def test_choose_prefers_v2_then_v1_then_prlimit(monkeypatch: pytest.MonkeyPatch) -> None:
    def no(version: str):
        def opener(*_args):
            raise ml.MemoryEnforcementError(f"no {version} here")
        return opener

    picked = ml.choose("auto", 64, cgroup2=no("v2"), cgroup1=lambda mb, *_: ml.Enforcer(mb))
    assert picked.name == "none"  # what the v1 stand-in returned: v1 was asked after v2 failed
    monkeypatch.setattr(ml, "prlimit_possible", lambda: (False, False, "no way"))
    fallback = ml.choose("auto", 64, cgroup2=no("v2"), cgroup1=no("v1"))
    assert fallback.name == "none" and fallback.jail_address_space_mb() == 64 + ml.RLIMIT_SLACK_MB
    with pytest.raises(ml.MemoryEnforcementError, match="cgroup2: no v2 here; cgroup1: no v1 here"):
        ml.choose("cgroup", 64, cgroup2=no("v2"), cgroup1=no("v1"))
    with pytest.raises(ml.MemoryEnforcementError, match="expected"):
        ml.choose("rlimit", 64)


# ---------------------------------------------------------------------------
# the real cgroup2 mount (no memory controller on this host)
# ---------------------------------------------------------------------------


def _real_v2() -> Path:
    own = ml.own_cgroups(Path("/proc/self/cgroup").read_text()).get("")
    for mount, root, fstype, _ in ml.cgroup_mounts(Path("/proc/self/mountinfo").read_text()):
        if fstype == "cgroup2" and own is not None:
            path = ml._host_path(mount, root, own)
            if path and os.access(path, os.W_OK):
                return Path(path)
    pytest.skip("no writable cgroup2 hierarchy")


def test_real_v2_without_memory_is_refused_with_the_reason() -> None:
    base = _real_v2()
    if "memory" in (base / "cgroup.controllers").read_text().split():
        pytest.skip("this host delegates v2 memory: test_memory exercises it for real")
    with pytest.raises(ml.MemoryEnforcementError, match="memory controller is not available"):
        ml.setup_cgroup2(128, str(base))
    assert not list(base.glob(f"corral-{os.getpid()}*")), "nothing is left behind"


def test_real_v2_leaf_is_killed_and_removed() -> None:
    """cgroup.kill and rmdir of a populated leaf, on the kernel's own cgroup2."""
    base = _real_v2()
    leaf = base / f"corral-test-{os.getpid()}"
    os.mkdir(leaf)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (leaf / "cgroup.procs").write_text(str(sleeper.pid))
        child = ml._Cgroup2Child(sleeper.pid, str(leaf))
        assert child.release() is False  # populated: EBUSY, retried later
        child.kill_all()
        assert sleeper.wait(10) == -signal.SIGKILL
        assert child.release() is True and not leaf.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        if leaf.exists():
            os.rmdir(leaf)
