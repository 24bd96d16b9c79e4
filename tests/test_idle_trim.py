"""Idle children give unchanged copied pages back to the zygote's snapshot.

What must hold (see sandbox.reshare and supervisor.pool.idle_trim):

* the mechanism itself never changes a byte: a forked process that wrote
  some pages for good and some back to what they were gives back exactly
  the pages still equal to the snapshot, and reads the same memory after;
* a real tenant, idle past the guard period, holds clearly less private
  memory, and then serves on with its state intact;
* a hostile tenant that finds the snapshot's descriptor can change nothing
  in it: every way of writing is refused by its seals.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from errno import EACCES, EFBIG, EPERM
from pathlib import Path
from typing import Any

import pytest

from sandbox import reshare
from tests.harness import Corral
from tests.test_jail import call, corral_with_control, wait_for, worker

pytestmark = pytest.mark.skipif(not os.path.exists(reshare.LIBRARY),
                                reason="sandbox/_reshare is not built (scripts/setup)")


def anonymous_kb(pid: int) -> int:
    """The process's anonymous memory: its copies; given back, a page is the snapshot's."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1])
    raise AssertionError(f"no Anonymous for {pid}")


# ---------------------------------------------------------------------------
# the mechanism, in a forked process of this test
# ---------------------------------------------------------------------------

FORKED = r"""
import hashlib, json, os, socket, sys
sys.path.insert(0, sys.argv[1])
from sandbox import reshare
from supervisor.pool.idle_trim import own_pages


def anonymous_kb(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return int(next(line for line in f if line.startswith("Anonymous:")).split()[1])


assert reshare.load_library() is None
# What a zygote would have built: a structure spread over many pages.
data = [bytearray(os.urandom(3000)) for _ in range(2000)]
first = [block[0] for block in data]
maps, pagemap = reshare.open_proc()
report = reshare.take(maps, pagemap)
assert report["pages"] > 0, report
ours, theirs = socket.socketpair()
pid = os.fork()
if pid == 0:
    ours.close()
    for i, block in enumerate(data):
        block[0] ^= 0xFF                     # every block's page is copied ...
        if i % 2:
            block[0] ^= 0xFF                 # ... and every other one put back as it was
    before = hashlib.sha256(b"".join(data)).hexdigest()
    theirs.send(b"ready")
    pages = theirs.recv(1 << 24)             # our page map, read by the parent as the supervisor does
    anon_before_kb = anonymous_kb("self")
    given = reshare.give_back(pages)
    anon_after_kb = anonymous_kb("self")
    after = hashlib.sha256(b"".join(data)).hexdigest()
    kept = all(data[i][0] == first[i] ^ 0xFF for i in range(0, len(data), 2))
    theirs.send(json.dumps({"given": given, "same": before == after, "kept": kept,
                            "anon_before_kb": anon_before_kb, "anon_after_kb": anon_after_kb}).encode())
    theirs.recv(1)
    os._exit(0)
theirs.close()
assert ours.recv(16) == b"ready"

ours.send(own_pages(pid))
result = json.loads(ours.recv(1 << 16))
ours.send(b"x")
os.waitpid(pid, 0)
print(json.dumps(result))
"""


def test_giving_pages_back_changes_no_byte_and_keeps_what_was_changed(tmp_path: Path) -> None:
    """In an interpreter of its own: the snapshot is of that process's memory."""
    script = tmp_path / "forked.py"
    script.write_text(FORKED)
    result = subprocess.run([sys.executable, str(script), str(Path(__file__).parents[1])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["same"], report            # not one byte of the process changed
    assert report["kept"], report            # the blocks changed for good stay changed
    # ~1000 blocks were put back, 3000 bytes each: most of their pages go back.
    assert report["given"] > 300, report
    # They are the snapshot's (file) pages now, no longer the process's anonymous copies.
    # (less a little: reading smaps_rollup allocates too)
    assert report["anon_after_kb"] <= report["anon_before_kb"] - 3 * report["given"], report


# ---------------------------------------------------------------------------
# a real tenant
# ---------------------------------------------------------------------------

STATEFUL = worker('''
import hashlib
#: Built at load: it lives in pages the child copied from the zygote and in new ones.
TABLE = {f"k{i}": [i, str(i) * 7, float(i)] for i in range(20000)}
DIGEST = hashlib.sha256(repr(sorted(TABLE.items())).encode()).hexdigest()
COUNT = [0]


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        COUNT[0] += 1
        ok = hashlib.sha256(repr(sorted(TABLE.items())).encode()).hexdigest() == DIGEST
        return Response.json({"count": COUNT[0], "intact": ok, "pid": os.getpid()})
''')

HOSTILE = worker('''
import fcntl, mmap, stat

F_GET_SEALS, F_ADD_SEALS = 1034, 1033


def snapshot_fd():
    """The one regular file among the child's descriptors (the rest are its
    channel, stdio on /dev/null and Landlock's ruleset)."""
    for fd in range(3, 64):
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return fd, fcntl.fcntl(fd, F_GET_SEALS)
        except OSError:
            continue
    return None, None


def map_then_make_writable(fd):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    address = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if libc.mprotect(ctypes.c_void_p(address), 4096, mmap.PROT_READ | mmap.PROT_WRITE) != 0:
        errno = ctypes.get_errno()
        raise PermissionError(errno, os.strerror(errno))
    ctypes.memmove(address, b"owned", 5)  # it worked: every child would see this
    return "written"


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        fd, seals = snapshot_fd()
        if fd is None:
            return Response.json({"found": False})
        size = os.fstat(fd).st_size
        return Response.json({
            "found": True, "seals": seals, "size": size,
            "read": attempt(lambda: len(os.pread(fd, 4096, 0))),
            "write": attempt(os.write, fd, b"owned"),
            "truncate": attempt(os.ftruncate, fd, 0),
            "grow": attempt(os.ftruncate, fd, size + 4096),
            "map_shared_write": attempt(mmap.mmap, fd, 4096, mmap.MAP_SHARED,
                                        mmap.PROT_READ | mmap.PROT_WRITE),
            "unseal": attempt(fcntl.fcntl, fd, F_ADD_SEALS, 0),
            "mprotect": attempt(map_then_make_writable, fd),
        })
''')


@contextlib.contextmanager
def corral_resharing_after_a_second(state: Path) -> Iterator[Corral]:
    """A server (with test_jail's control worker) whose idle tenants give
    pages back after one second instead of five."""
    state.mkdir(parents=True, exist_ok=True)
    config = state / "corral.toml"
    config.write_text("[pool]\nreshare_after_s = 1\n")
    with corral_with_control(state, extra_args=["--config", str(config)]) as server:
        yield server


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory):
    with corral_resharing_after_a_second(tmp_path_factory.mktemp("trim")) as server:
        yield server


def test_an_idle_tenant_gives_copied_pages_back_and_serves_on_intact(c: Corral) -> None:
    c.deploy("stateful", STATEFUL)
    first = call(c, "stateful")
    assert first["intact"] and first["count"] == 1
    for n in range(2, 5):
        assert call(c, "stateful")["count"] == n
    pid = first["pid"]
    busy_kb = anonymous_kb(pid)
    # Idle past pool.reshare_after_s: the supervisor reads the page map and asks.
    assert wait_for(lambda: anonymous_kb(pid) < busy_kb - 400, timeout=15, interval=0.1), (
        f"still {anonymous_kb(pid)} kB anonymous (was {busy_kb} kB busy)\n{c.log()}")
    again = call(c, "stateful")
    assert again == {"count": 5, "intact": True, "pid": pid}, again
    assert '"event":"zygote.ready"' in c.log() and '"reshare":{"pages":' in c.log()


def test_a_tenant_cannot_change_the_zygote_snapshot(c: Corral) -> None:
    c.deploy("hostile", HOSTILE)
    out = call(c, "hostile")
    assert out["found"], out
    assert out["seals"] == 15, out                 # seal, shrink, grow, write
    assert out["read"] == {"ok": True, "value": "4096"}
    # A plain write is refused before the seals: RLIMIT_FSIZE is 0 in the jail.
    # (pwrite is not even allowed by the seccomp filter; test_jail covers that.)
    assert out["write"]["ok"] is False and out["write"]["errno"] in (EPERM, EFBIG), out["write"]
    for attack in ("truncate", "grow", "map_shared_write", "unseal", "mprotect"):
        assert out[attack]["ok"] is False, (attack, out[attack])
        assert out[attack]["errno"] in (EPERM, EACCES), (attack, out[attack])
    # ... and every other tenant still reads the same bytes after trims.
    c.deploy("stateful2", STATEFUL)
    pid = call(c, "stateful2")["pid"]
    busy_kb = anonymous_kb(pid)
    assert wait_for(lambda: anonymous_kb(pid) < busy_kb - 400, timeout=15, interval=0.1)
    assert call(c, "stateful2")["intact"]


def _spares(c: Corral) -> list[int]:
    """The base zygote's children waiting for a script (spares idle at nice 10)."""
    assert c.proc is not None
    spares = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            parent = int(fields[1])
            grandparent = int(Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if grandparent == c.proc.pid and int(fields[16]) == 10:
            spares.append(int(entry))
    return spares


def _given_back_runs(pid: int) -> int:
    """Private mappings of the zygote's snapshot: each is a run of pages given back."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return 0
    return sum(1 for line in maps.splitlines()
               if " rw-p " in line and "corral-zygote-snapshot" in line)


def test_a_waiting_spare_gives_back_what_its_own_set_up_copied(c: Corral) -> None:
    """A spare's jail, loop and channel copied hundreds of the zygote's pages,
    a third of them left as they were: given back while it waits (when cold
    starts are calm), they stay shared once it serves."""
    assert wait_for(lambda: len(_spares(c)) >= 2, timeout=15), c.log()
    spares = _spares(c)
    assert wait_for(lambda: all(_given_back_runs(pid) or not Path(f"/proc/{pid}").exists()
                                for pid in spares), timeout=15, interval=0.1), (
        f"spares {spares} kept every copy: {[_given_back_runs(pid) for pid in spares]}\n{c.log()}")
    # ... and one of them, taken by a tenant, serves with intact state.
    c.deploy("stateful3", STATEFUL)
    out = call(c, "stateful3")
    assert out["intact"] and out["count"] == 1, out


class _IdleChild:
    """What the trimmer needs of a child (supervisor.pool.idle_trim.Trimmable)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.last_used = 1.0
        self.reshared_at = -1.0
        self.idle = True
        self.alive = True
        self.sent: list[object] = []

    def send(self, message: object) -> None:
        self.sent.append(message)


def ask_until_the_last_is_sent(trimmer: Any, children: list[_IdleChild]) -> None:
    """Run ``trimmer``, ask each of ``children`` in order, and stop once the
    last one was sent its Trim."""
    import trio

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trimmer.run)
            for child in children:
                trimmer.ask(child)
            with trio.fail_after(10):  # page lists are read in a worker thread
                while not children[-1].sent:
                    await trio.sleep(0.005)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_give_back_that_fails_is_logged_and_the_next_child_still_asked(caplog) -> None:
    """The trimmer is a task of the pool's nursery: an exception escaping it
    would end the supervisor. A failing page read (here: a bug, not an
    OSError) is logged with the child's pid, and the next ask is served."""

    from supervisor.pool.idle_trim import IdleTrimmer

    def read_pages(pid: int) -> bytes:
        if pid == 101:
            raise ValueError("a broken page map")
        return b"\0" * 8

    children = [_IdleChild(pid) for pid in (101, 102)]
    ask_until_the_last_is_sent(IdleTrimmer(read_pages=read_pages), children)
    assert children[0].sent == [] and len(children[1].sent) == 1
    [failed] = [r for r in caplog.records if r.getMessage() == "idle_trim.failed"]
    assert failed.levelname == "ERROR" and failed.fields["pid"] == 101  # type: ignore[attr-defined]
    assert "a broken page map" in str(failed.exc_info[1])


def test_asks_queued_before_cold_starts_got_busy_are_dropped_not_sent() -> None:
    """The trimmer re-checks that cold starts are calm before each child: a
    queue filled before a storm must not spend the storm's CPU. A dropped ask
    leaves the child not reshared, so the next idle scan asks again."""
    import trio
    import trio.testing

    from supervisor.pool.idle_trim import IdleTrimmer

    state = {"calm": False}
    children = [_IdleChild(pid) for pid in (101, 102)]

    async def main() -> None:
        trimmer = IdleTrimmer(read_pages=lambda pid: b"\0" * 8, calm=lambda: state["calm"])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trimmer.run)
            trimmer.ask(children[0])
            await trio.testing.wait_all_tasks_blocked()
            assert children[0].sent == [] and children[0].reshared_at == -1.0
            state["calm"] = True
            trimmer.ask(children[1])
            with trio.fail_after(10):  # the page list is read in a worker thread
                while not children[1].sent:
                    await trio.sleep(0.01)
            assert len(children[1].sent) == 1 and children[1].reshared_at == 1.0
            # Asks are handled in order: the first one was dropped, not late.
            assert children[0].sent == [] and children[0].reshared_at == -1.0
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_the_next_child_is_asked_only_once_the_last_give_back_had_time_to_end() -> None:
    """Asked back to back, children gave back faster than one could finish,
    piled up on a core and kept serving tenants off it. After a Trim of N
    pages the trimmer waits N x PACE_S_PER_PAGE before it reads the next
    child's page map (trio's sleep never ends early: a lower bound, not a
    timing figure of this box)."""
    import trio

    from supervisor.pool import idle_trim
    from supervisor.pool.idle_trim import IdleTrimmer

    pages = 2500
    asked: dict[int, float] = {}

    class Timed(_IdleChild):
        def send(self, message: object) -> None:
            asked[self.pid] = trio.current_time()
            super().send(message)

    children = [Timed(pid) for pid in (101, 102)]
    ask_until_the_last_is_sent(IdleTrimmer(read_pages=lambda pid: b"\0" * 8 * pages), children)
    assert asked[102] - asked[101] >= pages * idle_trim.PACE_S_PER_PAGE
