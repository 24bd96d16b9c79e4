"""A child's Hello read after the child was condemned changes nothing.

At a rotation the pool kills the old zygote's spares; one whose Hello was
already on its way was then offered as a spare, and (being dead, and so in
no cgroup) reported as ``child.memory_limit_failed``. A real process stands
behind the child here (``sleep``, killed through its pidfd) and a real socket
pair carries nothing; the owner records what the child asks of it.
"""

from __future__ import annotations

import os
import socket
import subprocess

import trio

from protocol.messages import PROTOCOL_VERSION, Hello
from supervisor.limits.cpu_meter import MeterFactory
from supervisor.pool.child_process import ChildKit, ChildProcess, KillReason


class _Owner:
    def __init__(self) -> None:
        self.ready: list[int] = []
        self.condemned: list[int] = []

    def on_ready(self, child: ChildProcess) -> None:
        self.ready.append(child.pid)

    def on_condemned(self, child: ChildProcess) -> None:
        self.condemned.append(child.pid)


def _child(owner: _Owner) -> tuple[ChildProcess, subprocess.Popen, socket.socket]:
    proc = subprocess.Popen(["sleep", "60"])
    ours, theirs = socket.socketpair()
    kit = ChildKit(enforcer=None, meters=MeterFactory(allow_perf=False))  # type: ignore[arg-type]
    return ChildProcess(owner, proc.pid, ours, os.pidfd_open(proc.pid), 0, kit), proc, theirs  # type: ignore[arg-type]


def test_a_hello_is_offered_as_a_spare_but_not_once_the_child_is_condemned() -> None:
    owner = _Owner()

    async def main() -> None:
        for condemn in (False, True):
            child, proc, theirs = _child(owner)
            try:
                if condemn:
                    child.kill(KillReason.ZYGOTE_REPLACED)
                    assert proc.wait(10) == -9
                child._on_hello(Hello(version=PROTOCOL_VERSION, pid=proc.pid))
                assert (proc.pid in owner.ready) is not condemn, owner.ready
                assert (proc.pid in owner.condemned) is condemn
            finally:
                proc.kill()
                proc.wait()
                theirs.close()
                child.sock.close()
                os.close(child.pidfd)

    trio.run(main)
