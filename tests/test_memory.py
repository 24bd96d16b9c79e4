"""Memory limits under real attack: a hostile tenant against each backend.

A real ``corral serve`` with the dispatcher of ``test_limits`` (limits from
the ``x-limits`` header, failures answered as JSON). The tenant tries to
raise its own limits (``resource.setrlimit``, ``resource.prlimit`` and raw
``prlimit64``/``setrlimit`` through ctypes, dug out of ``sys.modules`` as a
hostile tenant would), then allocates past the ``memoryMb`` the dispatcher
set. What must hold: the raise fails with EPERM and the child lives on, the
allocation ends the invocation with ``exceededMemory``, the next request
cold-starts, and no cgroup is left behind.

The default server picks its backend itself (on a host with a memory
cgroup: a cgroup per child); a second server runs unprivileged with
``memory_enforcement = "prlimit"``, as a developer would on a laptop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from supervisor.limits import cgroup_slots
from supervisor.limits import memory as ml
from tests.harness import REPO, Corral
from tests.test_limits import DISPATCHER

MB = 1 << 20
NOBODY = 65534
#: An interpreter the unprivileged uid can run (the virtualenv's may live under /root).
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"


def _runnable_by_nobody() -> str | None:
    """Why a server cannot run as nobody here, or None."""
    if os.geteuid() != 0:
        return "needs root to start a server as another uid"
    for python in (sys.executable, SYSTEM_PYTHON):
        try:
            subprocess.run([python, "-c", "import msgspec, trio"], user=NOBODY, group=NOBODY,
                           extra_groups=[], capture_output=True, check=True,
                           env={"PYTHONPATH": sysconfig.get_paths()["purelib"]})
            return None
        except (OSError, subprocess.CalledProcessError):
            continue
    return f"neither {sys.executable} nor {SYSTEM_PYTHON} can be run by uid {NOBODY}"


def _python_for_nobody() -> str:
    try:
        subprocess.run([sys.executable, "-c", "import sys"], user=NOBODY, group=NOBODY,
                       extra_groups=[], check=True, capture_output=True)
        return sys.executable
    except (OSError, subprocess.CalledProcessError):
        return SYSTEM_PYTHON

TENANT = r'''
import json, os, sys
from urllib.parse import parse_qs, urlsplit
from workers import Response, WorkerEntrypoint

resource = sys.modules["resource"]
ctypes = sys.modules["ctypes"]
libc = ctypes.CDLL(None, use_errno=True)
hold = []


class Rlimit(ctypes.Structure):
    _fields_ = [("cur", ctypes.c_uint64), ("max", ctypes.c_uint64)]


def attempt(fn, *args):
    try:
        return {"ok": True, "value": repr(fn(*args))}
    except BaseException as exc:  # noqa: BLE001
        return {"ok": False, "type": type(exc).__name__, "errno": getattr(exc, "errno", None),
                "error": str(exc)}


def raw(fn, *args):
    ctypes.set_errno(0)
    result = fn(*args)
    return {"ok": result == 0, "result": result, "errno": ctypes.get_errno()}


def raise_limits():
    AS = resource.RLIMIT_AS
    before = resource.getrlimit(AS)
    huge = Rlimit(2**62, 2**62)
    out = {
        "before": before,
        "setrlimit_hard": attempt(resource.setrlimit, AS, (before[1], before[1])),
        "setrlimit_inf": attempt(resource.setrlimit, AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)),
        "prlimit_self": attempt(resource.prlimit, 0, AS, (before[1], before[1])),
        "prlimit_pid": attempt(resource.prlimit, os.getpid(), AS, (2**62, 2**62)),
        "ctypes_prlimit64": raw(libc.prlimit64, 0, AS, ctypes.byref(huge), None),
        "ctypes_setrlimit": raw(libc.setrlimit, AS, ctypes.byref(huge)),
        "ctypes_syscall_prlimit64": raw(libc.syscall, 302, 0, AS, ctypes.byref(huge), None),
    }
    out["after"] = resource.getrlimit(AS)
    return out


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        q = {k: v[-1] for k, v in parse_qs(urlsplit(request.url).query).items()}
        path = urlsplit(request.url).path
        out = {"pid": os.getpid(), "ppid": os.getppid()}
        if path == "/raise":
            out.update(raise_limits())
        elif path == "/alloc":  # real memory: every page written
            blob = bytearray(b"\x01") * (int(q["mb"]) * 1024 * 1024)
            out["allocated_mb"] = len(blob) >> 20
            if q.get("keep"):
                hold.append(blob)
        elif path == "/reserve":  # address space only: mapped, never touched
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_int, ctypes.c_long]
            size = int(q["mb"]) * 1024 * 1024
            addr = libc.mmap(None, size, 3, 0x22, -1, 0)  # RW, MAP_PRIVATE|MAP_ANONYMOUS
            out["reserved"] = addr not in (None, ctypes.c_void_p(-1).value)
            if out["reserved"]:
                libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
        elif path == "/hash":
            out["hash"] = hash(q["s"])
        return Response.json(out)
'''

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def call(c: Corral, worker: str, path: str, memory_mb: int | None = None):
    headers = {"x-limits": json.dumps({"memoryMb": memory_mb})} if memory_mb else {}
    return c.request(path, host=f"{worker}.localhost", headers=headers)


def ok(c: Corral, worker: str, path: str, memory_mb: int | None = None) -> dict:
    resp = call(c, worker, path, memory_mb)
    assert resp.status == 200, f"{resp!r}\n{c.log()}"
    return resp.json()


def exceeded(c: Corral, worker: str, path: str, memory_mb: int | None = None) -> dict:
    resp = call(c, worker, path, memory_mb)
    out = resp.json()
    assert resp.status == 502 and out.get("error") == "exceededMemory", (resp, c.log())
    assert out["platform_error"] is True and out["message"] == "Worker exceeded memory limit.", out
    return out


def events(c: Corral, name: str) -> list[dict]:
    found = []
    for line in c.log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            found.append(event)
    return found


def backend(c: Corral) -> dict:
    [line] = events(c, "memory.enforcement")
    return line


def wait_for(predicate, timeout: float = 5.0) -> bool:
    """Until ``predicate()`` holds (a state to reach, never a duration to sleep)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def cgroup_of(pid: int) -> str | None:
    """The v1 memory cgroup (or the cgroup2 path) of ``pid``, as /proc says."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _hid, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    return None


def cgroup_dir(c: Corral) -> Path:
    return Path(backend(c)["cgroup"])


def as_limits(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_AS of ``pid`` from /proc/PID/limits (-1: unlimited)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            soft, hard = line.split()[3:5]
            return tuple(-1 if v == "unlimited" else int(v) for v in (soft, hard))  # type: ignore[return-value]
    raise AssertionError("no address space line")


def assert_raise_refused(out: dict) -> None:
    """Every way to raise RLIMIT_AS failed with EPERM and changed nothing."""
    for key in ("setrlimit_hard", "setrlimit_inf"):
        # CPython's wording for setrlimit's EPERM.
        assert out[key]["ok"] is False and out[key]["type"] == "ValueError", (key, out)
        assert "not allowed to raise" in out[key]["error"], (key, out)
    for key in ("prlimit_self", "prlimit_pid"):
        assert out[key]["ok"] is False and out[key]["type"] == "PermissionError", (key, out)
        assert out[key]["errno"] == 1, (key, out)
    for key in ("ctypes_prlimit64", "ctypes_setrlimit", "ctypes_syscall_prlimit64"):
        assert out[key] == {"ok": False, "result": -1, "errno": 1}, (key, out)
    assert out["after"] == out["before"], out


def attack_then_overflow(c: Corral, worker: str) -> None:
    """The shared attack: raise the limits (refused, child lives), then
    allocate 64 MB under memoryMb 32 (exceededMemory, fresh child next)."""
    first = ok(c, worker, "/raise", memory_mb=32)
    assert_raise_refused(first)
    again = ok(c, worker, "/raise", memory_mb=32)
    assert again["pid"] == first["pid"], "the attempt must not cost the child its life"
    assert_raise_refused(again)
    exceeded(c, worker, "/alloc?mb=64", memory_mb=32)
    assert wait_for(lambda: first["pid"] not in c.children())
    fresh = ok(c, worker, "/alloc?mb=16", memory_mb=32)
    assert fresh["pid"] != first["pid"] and fresh["allocated_mb"] == 16
    assert c.alive()


# ---------------------------------------------------------------------------
# the backend this host gives by default (a memory cgroup here)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory):
    server = Corral(tmp_path_factory.mktemp("memory")).start()
    try:
        server.deploy_dispatcher(DISPATCHER)
        for name in ("raiser", "real", "oom", "follow", "lower", "clean"):
            server.deploy(name, TENANT)
        yield server
    finally:
        server.stop()


@pytest.fixture
def cgroup(c: Corral) -> Path:
    line = backend(c)
    if not line["backend"].startswith("cgroup"):
        pytest.skip(f"no memory cgroup on this host: {line.get('not_used')}")
    return Path(line["cgroup"])


def test_enforcement_is_decided_and_logged_at_start(c: Corral) -> None:
    line = backend(c)
    print(f"\nmemory enforcement: {json.dumps(line)}")
    assert line["mode"] == "auto" and line["pool_mb"] == 128
    assert line["backend"] in ("cgroup2", "cgroup1", "prlimit", "none")
    if line["backend"] == "cgroup1":
        assert line["jail_rlimit_as_mb"] == 512  # max(4 x 128, 512): a backstop only
        assert any(r.startswith("cgroup2:") for r in line["not_used"]), line


def test_every_child_sits_in_its_own_cgroup_at_the_pool_cap(c: Corral, cgroup: Path) -> None:
    """Spares included: a child joins its cgroup before its Hello is read
    (one forked a moment ago may not have yet: wait until the pool settles)."""
    ok(c, "clean", "/")

    def jailed(pid: int) -> bool:
        """The child finished its own jail (its seccomp filter is the last step,
        after its rlimits): the supervisor may join a child to its cgroup before."""
        try:
            return "\nSeccomp:\t2" in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return True  # gone: the loop below skips it

    children: list[int] = []

    def all_joined() -> bool:
        # The children checked below are exactly those seen jailed here: a spare
        # forked after this wait may not have set its rlimits yet.
        children[:] = c.children()
        return all((cgroup_of(pid) or "").endswith(f"/{cgroup.name}/child-{pid}") and jailed(pid)
                   for pid in children)

    assert wait_for(all_joined), [(pid, cgroup_of(pid)) for pid in children]
    assert children
    checked = 0
    for pid in children:
        directory = cgroup / f"child-{pid}"
        try:
            if (directory / "memory.limit_in_bytes").exists():
                assert int((directory / "memory.limit_in_bytes").read_text()) == 128 * MB
                if (directory / "memory.memsw.limit_in_bytes").exists():
                    assert int((directory / "memory.memsw.limit_in_bytes").read_text()) == 128 * MB
            else:
                assert int((directory / "memory.max").read_text()) == 128 * MB
            soft, hard = as_limits(pid)
        except FileNotFoundError:
            # Every child joined its cgroup above; one whose cgroup is gone now
            # was retired meanwhile (surplus spares are trimmed as the recent
            # cold-start rate falls), and its cgroup went as it died.
            gone = not directory.exists() or not os.path.exists(f"/proc/{pid}/limits")
            assert gone, f"child {pid} is alive but its cgroup is incomplete"
            continue
        assert soft == hard and soft > 512 * MB, "RLIMIT_AS is the generous backstop"
        checked += 1
    assert checked, "no child could be checked"


def test_children_join_their_cgroups_themselves_under_cgroup_v1(c: Corral, cgroup: Path) -> None:
    """Each new child joins a cgroup slot made ahead, first thing after its
    fork (the fast path: no global kernel lock; see cgroup_slots), and the
    supervisor moves none itself."""
    if backend(c)["backend"] != "cgroup1":
        pytest.skip("children join themselves under cgroup v1 only")
    assert backend(c)["children_join_themselves"] is True
    ok(c, "clean", "/")
    metrics = c.admin("GET", "/metrics").text
    itself = re.search(r'^corral_children_cgroup_joins_total\{by="itself"\} (\S+)$', metrics, re.M)
    assert itself and float(itself.group(1)) >= 1, metrics
    assert 'corral_children_cgroup_joins_total{by="supervisor"}' not in metrics
    assert not events(c, "memory.slots_stopped")


def test_tenant_cannot_raise_its_limits_then_overflows(c: Corral) -> None:
    attack_then_overflow(c, "raiser")


def test_cgroup_counts_real_memory_not_address_space(c: Corral, cgroup: Path) -> None:
    """Under memoryMb 32, 256 MB of untouched address space is fine (the
    prlimit backend would refuse it) and 24 MB of written pages fit; 48 MB
    of written pages do not: the kernel kills the child."""
    first = ok(c, "real", "/reserve?mb=256", memory_mb=32)
    assert first["reserved"] is True, first
    fits = ok(c, "real", "/alloc?mb=24", memory_mb=32)
    assert fits["pid"] == first["pid"] and fits["allocated_mb"] == 24
    exceeded(c, "real", "/alloc?mb=48", memory_mb=32)
    [ended] = [e for e in events(c, "child.ended") if e["pid"] == first["pid"]]
    assert ended["reason"] == "exceededMemory" and ended["memory_mb"] == 32, ended
    if ended["peak_mb"] is not None:
        assert ended["peak_mb"] <= 32.5, ended  # charged memory never passed the limit


def test_oom_killed_child_is_replaced_and_cleaned_up(c: Corral, cgroup: Path) -> None:
    victim = ok(c, "oom", "/", memory_mb=32)["pid"]
    assert (cgroup / f"child-{victim}").is_dir()
    exceeded(c, "oom", "/alloc?mb=40&keep=1", memory_mb=32)
    # Killed by the kernel's OOM killer (not by the supervisor), reported as such.
    assert wait_for(lambda: victim not in c.children())
    assert wait_for(lambda: not (cgroup / f"child-{victim}").exists()), "its cgroup was left behind"
    again = ok(c, "oom", "/alloc?mb=8", memory_mb=32)
    assert again["pid"] != victim
    assert c.alive()


def test_limit_follows_each_invocation(c: Corral, cgroup: Path) -> None:
    """The supervisor lowers and raises one child's limit per invocation."""
    pid = ok(c, "follow", "/alloc?mb=8", memory_mb=32)["pid"]
    limit_file = cgroup / f"child-{pid}" / "memory.limit_in_bytes"
    if not limit_file.exists():
        limit_file = cgroup / f"child-{pid}" / "memory.max"
    assert int(limit_file.read_text()) == 32 * MB
    out = ok(c, "follow", "/alloc?mb=64", memory_mb=96)
    assert out["pid"] == pid and int(limit_file.read_text()) == 96 * MB
    ok(c, "follow", "/alloc?mb=8")  # no memoryMb: the platform default, the pool cap
    assert int(limit_file.read_text()) == 128 * MB
    ok(c, "follow", "/alloc?mb=8", memory_mb=100_000)  # never above the pool cap
    assert int(limit_file.read_text()) == 128 * MB


def test_lowering_below_what_the_child_holds_is_exceeded_memory(c: Corral, cgroup: Path) -> None:
    held = ok(c, "lower", "/alloc?mb=48&keep=1", memory_mb=96)
    exceeded(c, "lower", "/", memory_mb=32)
    assert wait_for(lambda: held["pid"] not in c.children())
    assert ok(c, "lower", "/", memory_mb=32)["pid"] != held["pid"]


def test_no_cgroup_outlives_its_child_or_the_server(tmp_path: Path) -> None:
    server = Corral(tmp_path / "state").start()
    try:
        line = backend(server)
        if not line["backend"].startswith("cgroup"):
            pytest.skip("no memory cgroup on this host")
        parent = Path(line["cgroup"])
        server.deploy_dispatcher(DISPATCHER)
        for name in ("a", "b"):
            server.deploy(name, TENANT)
            ok(server, name, "/")
        exceeded(server, "a", "/alloc?mb=64", memory_mb=32)

        def only_live_children() -> bool:
            """Child cgroups for live children only; besides them, the slots
            made ahead for the next children (supervisor.limits.cgroup_slots)."""
            dirs = {p.name for p in parent.iterdir() if p.is_dir()}
            slots = {name for name in dirs if re.fullmatch(r"slot-\d+", name)}
            return dirs - slots == {f"child-{pid}" for pid in server.children()} \
                and len(slots) <= cgroup_slots.RESERVE

        assert wait_for(only_live_children), (sorted(parent.iterdir()), server.children())
    finally:
        server.stop()
    assert not parent.exists(), f"{parent} left behind: {list(parent.iterdir())}"


@pytest.fixture
def v1_parent():
    """A fresh directory in our own v1 memory cgroup, as a supervisor's ``corral-PID``."""
    own = cgroup_of(os.getpid())
    root = Path("/sys/fs/cgroup/memory")
    if own is None or not (root / "memory.limit_in_bytes").exists():
        pytest.skip("no cgroup v1 memory hierarchy on this host")
    parent = root / own.lstrip("/") / f"corral-test-{os.getpid()}"
    parent.mkdir()
    yield parent
    if parent.exists():
        for leftover in [*parent.glob("child-*"), *parent.glob("slot-*")]:
            leftover.rmdir()
        parent.rmdir()


def test_a_cgroup_still_busy_when_its_child_ended_goes_without_a_zygote_reap(v1_parent: Path) -> None:
    """A child's cgroup is removed when its channel closes; if its process has
    not left the cgroup yet, the removal waits for the zygote's report that
    it reaped it. A child that outlived its zygote (rotated away with spares
    alive, or dead) is reaped by init, and no report comes: the pool's
    periodic scan retries (Enforcer.retry_pending). Seen before it did: about
    half the spares a rotation killed left their cgroups for the server's life.

    Real v1 memory cgroups: a process of ours in a child cgroup, forgotten
    while it still runs, then killed and reaped here, as init would."""
    parent = v1_parent
    enforcer = ml.Cgroup1Enforcer(64, str(parent))
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        child = enforcer.attach(sleeper.pid)
        leaf = parent / f"child-{sleeper.pid}"
        assert (leaf / "cgroup.procs").read_text().split() == [str(sleeper.pid)]
        enforcer.forget(sleeper.pid, child)  # its channel closed; the process is still in there
        assert leaf.is_dir()
        enforcer.retry_pending()
        assert leaf.is_dir(), "removed while its process still ran"
        sleeper.kill()
        sleeper.wait()  # reaped, and enforcer.reaped() never called
        enforcer.retry_pending()
        assert not leaf.exists(), "left behind once its process was gone"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_process_that_skips_its_slot_is_caught_and_slots_stop(v1_parent: Path) -> None:
    """Real v1 cgroups, real processes: one writes ``0`` to the join file it
    was handed and sits in its slot, renamed child-PID, at the slot's limit;
    one that was handed a slot and did not join is found out at its Hello
    (ready() is False: it must go), slots stop for good, the reserve goes,
    and at close no slot is left."""
    parent = v1_parent
    enforcer = ml.Cgroup1Enforcer(64, str(parent))
    assert enforcer.slots is not None
    processes = []
    try:
        assert enforcer.slots.fill() == ""
        assert len(list(parent.glob("slot-*"))) == cgroup_slots.RESERVE
        joiner_slot = enforcer.take_slots(1)
        [fd] = joiner_slot.fds
        joiner = subprocess.Popen([sys.executable, "-c", f"import os, time; os.write({fd}, b'0'); "
                                   f"os.close({fd}); time.sleep(60)"], pass_fds=[fd],
                                  stdout=subprocess.PIPE)
        processes.append(joiner)
        joiner_slot.sent()
        leaf = parent / f"child-{joiner.pid}"
        assert wait_for(lambda: (parent / f"slot-{joiner_slot.numbers[0]}" / "tasks").read_text().split()
                        == [str(joiner.pid)])
        child = enforcer.claim(joiner.pid, joiner_slot.numbers[0])
        assert child is not None and child.joined_by == "itself" and leaf.is_dir()
        assert (leaf / "cgroup.procs").read_text().split() == [str(joiner.pid)]
        assert int((leaf / "memory.limit_in_bytes").read_text()) == 64 * MB
        assert child.ready()

        skipper_slot = enforcer.take_slots(1)
        skipper = subprocess.Popen(["sleep", "60"])
        processes.append(skipper)
        skipper_slot.sent()
        skipped = enforcer.claim(skipper.pid, skipper_slot.numbers[0])
        assert skipped is not None and not skipped.ready(), "a child outside its cgroup passed the check"
        assert enforcer.slots.stopped and enforcer.take_slots(1) is cgroup_slots.NO_SLOTS
        assert not list(parent.glob("slot-*")), "the reserve outlived the stop"
    finally:
        for process in processes:
            process.kill()
            process.wait()
        enforcer.close()
    assert not parent.exists(), list(parent.iterdir())


# ---------------------------------------------------------------------------
# prlimit, forced, with an unprivileged supervisor
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unprivileged():
    why_not = _runnable_by_nobody()
    if why_not:
        pytest.skip(why_not)
    state = Path(tempfile.mkdtemp(prefix="corral-prlimit-"))
    config = state / "corral.toml"
    config.write_text('[pool]\nmemory_enforcement = "prlimit"\n')
    server = Corral(state / "state", extra_args=["--config", str(config)], uid=NOBODY,
                    python=_python_for_nobody())
    for path in [state, *state.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    server.start()
    try:
        server.deploy_dispatcher(DISPATCHER)
        for name in ("raiser", "follow"):
            server.deploy(name, TENANT)
        yield server
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


def test_prlimit_backend_forced_is_logged(unprivileged: Corral) -> None:
    line = backend(unprivileged)
    assert line["mode"] == "prlimit" and line["backend"] == "prlimit", line
    assert line["sets"].startswith("soft only"), line  # nobody holds no CAP_SYS_RESOURCE
    assert line["jail_rlimit_as_mb"] == 128 + 64
    for pid in unprivileged.children():
        assert cgroup_of(pid) is None or "corral-" not in cgroup_of(pid)


def test_prlimit_backend_forced_still_enforces(unprivileged: Corral) -> None:
    attack_then_overflow(unprivileged, "raiser")


def test_prlimit_follows_each_invocation(unprivileged: Corral) -> None:
    """Soft RLIMIT_AS tracks memoryMb on one child, down and up again,
    never above the jail's hard limit."""
    pid = ok(unprivileged, "follow", "/alloc?mb=8", memory_mb=32)["pid"]
    soft32, hard = as_limits(pid)
    assert soft32 < hard
    out = ok(unprivileged, "follow", "/alloc?mb=64", memory_mb=96)
    assert out["pid"] == pid
    soft96, hard_after = as_limits(pid)
    assert soft96 - soft32 == 64 * MB and hard_after == hard
    exceeded(unprivileged, "follow", "/alloc?mb=64", memory_mb=32)


# ---------------------------------------------------------------------------
# a forced backend this host cannot give: the server refuses to start
# ---------------------------------------------------------------------------


def _serve_fails(tmp_path: Path, mode: str, uid: int | None = None) -> str:
    config = tmp_path / "corral.toml"
    config.write_text(f'[pool]\nmemory_enforcement = "{mode}"\n')
    python, path = sys.executable, str(REPO)
    kwargs: dict = {}
    if uid is not None:
        kwargs = {"user": uid, "group": uid, "extra_groups": []}
        python = _python_for_nobody()
        path += os.pathsep + sysconfig.get_paths()["purelib"]
    proc = subprocess.run(
        [python, "-m", "supervisor", "serve", "--config", str(config),
         "--state-dir", str(tmp_path / "state"), "--http", "127.0.0.1:0"],
        cwd=str(REPO), env={**os.environ, "PYTHONPATH": path}, capture_output=True,
        text=True, timeout=60, **kwargs)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    return proc.stderr


def test_forced_cgroup_without_one_refuses_to_start(tmp_path: Path) -> None:
    why_not = _runnable_by_nobody()
    if why_not:
        pytest.skip(why_not)
    state = Path(tempfile.mkdtemp(prefix="corral-nocg-"))
    try:
        os.chown(state, NOBODY, NOBODY)
        err = _serve_fails(state, "cgroup", uid=NOBODY)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert 'memory_enforcement = "cgroup", but no memory cgroup can be used' in err, err
    assert re.search(r"cgroup1: cannot create \S+ \(Permission denied\)", err), err


def test_forced_prlimit_without_the_means_refuses_to_start(tmp_path: Path) -> None:
    from supervisor.limits.memory import prlimit_possible

    usable, _privileged, why = prlimit_possible()
    if usable:
        pytest.skip(f"prlimit works here ({why})")
    err = _serve_fails(tmp_path, "prlimit")
    assert "prlimit() cannot work: running as root without CAP_SYS_RESOURCE" in err, err
