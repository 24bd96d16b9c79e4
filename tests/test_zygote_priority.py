"""The zygote forks at nice 10, except while a request waits for a spare.

At nice 10 it got a tenth of a core against the very requests it was forking
for, and a storm of first requests queued behind it; it is raised above the
tenants (RUSH_NICE) while a request waits. A real ``corral serve`` with no
spares kept: every cold start waits for a fork. The test stops the zygote
(SIGSTOP) so that the wait lasts until it looks, then lets it go.

A zygote started ahead of its rotation starts on idle CPU only (SCHED_IDLE),
and forks under the normal policy once it is the one that forks. Every
child runs under SCHED_BATCH, so that the supervisor's sends never hand
its core to the child they wake (sandbox.jail.take_batch_policy).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from supervisor.pool.child_process import Renicer
from supervisor.pool.fork_priority import IDLE_ONLY, RUSH_NICE
from tests.harness import REPO, Corral, read_each

HELLO = r'''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("hello")
'''


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _wait_for(check, what: str, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@contextmanager
def _rushed(tmp_path: Path) -> Iterator[tuple[Corral, int, dict[str, int], threading.Thread]]:
    """A server keeping no spares, its zygote stopped (SIGSTOP) and rushed
    for the request waiting on it in a thread (its status lands in the dict)."""
    server = Corral(tmp_path / "state", config="[pool]\nspares = 0\nmax_spares = 0\n").start()
    try:
        server.deploy("hello", HELLO, namespace=None)
        server.route("hello.localhost/*", "hello")
        zygote = server.zygote()
        assert zygote
        _wait_for(lambda: _nice(zygote) == 10, "the zygote at nice 10 with nobody waiting")
        answer: dict[str, int] = {}
        os.kill(zygote, signal.SIGSTOP)  # no fork until it is let go: the request waits
        waiting = threading.Thread(
            target=lambda: answer.update(status=server.request("/", host="hello.localhost").status))
        waiting.start()
        _wait_for(lambda: _nice(zygote) == RUSH_NICE, f"the zygote at nice {RUSH_NICE} while a request waits")
        yield server, zygote, answer, waiting
    finally:
        server.stop()


def test_the_zygote_leaves_nice_10_only_while_a_request_waits_for_a_fork(tmp_path) -> None:
    """And the spare forked for that request serves at the tenants' nice 0."""
    with _rushed(tmp_path) as (server, zygote, answer, waiting):
        os.kill(zygote, signal.SIGCONT)
        waiting.join(15)
        assert answer == {"status": 200}, (answer, server.log())
        _wait_for(lambda: _nice(zygote) == 10, "the zygote back at nice 10")
        served = server.children()
        assert len(served) == 1, served  # no spares kept: only the child that answered
        assert _nice(served[0]) == 0, "the spare forked in a rush serves at nice 0, not above the tenants"


def test_a_zygote_that_replaces_a_rushed_one_is_rushed_for_the_requests_still_waiting(tmp_path) -> None:
    """The zygote crashes while a request waits for its fork; its replacement,
    which starts at nice 10, is raised for that request too (and calmed after)."""
    with _rushed(tmp_path) as (server, first, answer, waiting):
        os.kill(first, signal.SIGKILL)  # a crash while rushed: a new zygote takes over
        seen: set[int] = set()

        def replacement_rushed() -> bool:
            pid = server.zygote()
            if pid and pid != first:
                try:
                    seen.add(_nice(pid))
                except (OSError, IndexError):
                    return False
            return RUSH_NICE in seen or "status" in answer

        _wait_for(replacement_rushed, "the replacement zygote rushed", timeout=20)
        waiting.join(20)
        assert answer == {"status": 200}, (answer, server.log()[-2000:])
        assert RUSH_NICE in seen, f"the replacement never left nice {sorted(seen)} while the request waited"
        second = server.zygote()
        assert second and second != first
        _wait_for(lambda: _nice(second) == 10, "the replacement back at nice 10")


def test_idle_only_puts_a_process_under_sched_idle_and_a_nice_ends_it() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        renice = Renicer()
        renice(proc.pid, IDLE_ONLY)
        assert os.sched_getscheduler(proc.pid) == os.SCHED_IDLE
        renice(proc.pid, 10)
        assert os.sched_getscheduler(proc.pid) == os.SCHED_OTHER, "a nice must end SCHED_IDLE"
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == 10
    finally:
        proc.kill()
        proc.wait()


def test_a_successor_starts_on_idle_cpu_and_forks_under_the_normal_policy(tmp_path) -> None:
    """Zygotes rotate every 4 children; every zygote the server starts is
    watched as it comes: the ones started ahead ran under SCHED_IDLE, and
    the zygote that forks, and what it forked, do not."""
    server = Corral(tmp_path / "state", config="[pool]\nspares = 1\nzygote_max_children = 4\n").start()
    policies: dict[int, set[int]] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for pid in server.zygotes():
                try:
                    policies.setdefault(pid, set()).add(os.sched_getscheduler(pid))
                except OSError:
                    pass
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(10):
            server.deploy(f"t{i}", HELLO, namespace=None)
            server.route(f"t{i}.localhost/*", f"t{i}")
            resp = server.request("/", host=f"t{i}.localhost")
            assert resp.status == 200, (resp, server.log()[-2000:])
        _wait_for(lambda: any(os.SCHED_IDLE in seen for seen in policies.values()),
                  "a zygote started ahead of its rotation, under SCHED_IDLE")
        # The forking zygote is the last one the log calls ready, once it is
        # also among the server's children: right after the requests a
        # rotation may still be under way (server.zygote() may then name the
        # one standing by, or none for an instant).
        current = 0

        def forking() -> bool:
            nonlocal current
            ready = [e["pid"] for e in server.log_events() if e.get("event") == "zygote.ready"]
            current = ready[-1] if ready else 0
            return bool(current) and current in server.zygotes()

        _wait_for(forking, "the forking zygote, ready and running")
        assert os.SCHED_IDLE in policies.get(current, set()), "the forking zygote was not started ahead"
        _wait_for(lambda: os.sched_getscheduler(current) == os.SCHED_OTHER,
                  "the forking zygote under the normal policy")
        # Each child is under SCHED_BATCH, one that inherited SCHED_IDLE would
        # stay so; a child seen while it is killed (put under SCHED_IDLE for
        # its teardown, ChildRenice.dying) is gone a moment later.
        _wait_for(lambda: (seen := read_each(server.children(), os.sched_getscheduler))
                  and set(seen.values()) == {os.SCHED_BATCH},
                  "the forking zygote's children under SCHED_BATCH, none inheriting SCHED_IDLE")
        assert "zygote.rotated" in server.log()
    finally:
        stop.set()
        watcher.join()
        server.stop()


def test_every_child_runs_under_sched_batch_at_the_nice_it_is_given(tmp_path) -> None:
    """Spares and the children serving scripts are under SCHED_BATCH (their
    wake-ups do not preempt the supervisor), and a renice keeps it: a spare
    waits at nice 10, a child serving a script runs at nice 0. The zygote
    itself keeps the normal policy."""
    server = Corral(tmp_path / "state", config="[pool]\nspares = 2\n").start()
    try:
        server.deploy("hello", HELLO, namespace=None)
        server.route("hello.localhost/*", "hello")
        resp = server.request("/", host="hello.localhost")
        assert resp.status == 200, (resp, server.log()[-2000:])
        _wait_for(lambda: len(server.children()) >= 3, "a serving child and two spares")

        def policies() -> dict[int, int]:
            return read_each(server.children(), os.sched_getscheduler)

        # A child takes the policy itself, early in its set-up: one just forked may not yet have.
        _wait_for(lambda: set(policies().values()) == {os.SCHED_BATCH}, "every child under SCHED_BATCH")
        nices = set(read_each(policies(), _nice).values())
        assert 0 in nices, "no child was reniced to serve"
        zygote = server.zygote()
        assert zygote and os.sched_getscheduler(zygote) == os.SCHED_OTHER
    finally:
        server.stop()


_WITHOUT_CAP = r"""
import os, subprocess
from supervisor.pool.child_process import Renicer
from supervisor.pool.fork_priority import IDLE_ONLY

def trial(renice):
    proc = subprocess.Popen(["sleep", "60"])
    try:
        renice(proc.pid, IDLE_ONLY)
        renice(proc.pid, 0)
        return os.sched_getscheduler(proc.pid), os.getpriority(os.PRIO_PROCESS, proc.pid)
    finally:
        proc.kill()
        proc.wait()

print(*trial(Renicer()), *trial(Renicer(can_idle=True)))
"""


def test_without_cap_sys_nice_idle_only_is_nice_10_not_a_policy_it_could_not_leave() -> None:
    """Without CAP_SYS_NICE the kernel lets a process into SCHED_IDLE but not
    out of it: the Renicer must then not use it at all (a successor zygote
    stuck there would hand it to every tenant it forks)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop CAP_SYS_NICE")
    out = subprocess.run(["setpriv", "--bounding-set", "-sys_nice", sys.executable, "-c", _WITHOUT_CAP],
                         capture_output=True, text=True, cwd=str(REPO), timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    policy, nice, forced_policy, _ = (int(x) for x in out.stdout.split())
    assert forced_policy == os.SCHED_IDLE, "premise: without the capability SCHED_IDLE cannot be left"
    assert (policy, nice) == (os.SCHED_OTHER, 10), "IDLE_ONLY must fall back to nice 10 without CAP_SYS_NICE"
