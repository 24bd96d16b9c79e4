"""The zygote forks at nice 10, except while a request waits for a spare.

At nice 10 it got a tenth of a core against the very requests it was forking
for, and a storm of first requests queued behind it; it is raised above the
tenants (RUSH_NICE) while a request waits. A real ``corral serve`` with no
spares kept: every cold start waits for a fork. The test stops the zygote
(SIGSTOP) so that the wait lasts until it looks, then lets it go.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from supervisor.pool.fork_priority import RUSH_NICE
from tests.harness import Corral

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
