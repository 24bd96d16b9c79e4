"""Spawns that queued while the zygote was forking are forked as one batch.

In a storm the supervisor asks for a spare or two at a time; each batch's
own Python runs after its forks, when every page it touches is a copy, so
fewer, larger batches copy fewer pages. The zygote's control socket is real
here; the forks are recorded instead of made (``Zygote.spawn`` itself is
exercised by every test that starts a server).
"""

from __future__ import annotations

import json
import os
import socket

import msgspec

from protocol.messages import Spawn, StartPackageZygote
from sandbox.zygote import _GONE, MAX_BATCH, Zygote


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def test_queued_spawns_are_summed_up_to_the_first_other_command() -> None:
    supervisor, control = _pair()
    zygote = Zygote(control, 0)
    encode = msgspec.msgpack.Encoder().encode
    for message in (Spawn(2), Spawn(3, address_space=5 << 20), StartPackageZygote("k", ["/p"]), Spawn(4)):
        supervisor.send(encode(message))
    count, other = zygote._queued_spawns(Spawn(1))
    assert count == 6
    assert other == StartPackageZygote("k", ["/p"])
    assert zygote.address_space == 5 << 20, "the last address space asked for holds"
    count, other = zygote._queued_spawns(msgspec.msgpack.decode(control.recv(65536), type=Spawn))
    assert (count, other) == (4, None), "what follows the other command is the next batch"
    supervisor.close()
    assert zygote._queued_spawns(Spawn(1)) == (1, _GONE)
    control.close()


def test_serve_forks_one_batch_then_handles_the_next_command_in_order() -> None:
    """In a forked process (``serve`` installs signal handlers): every child
    asked for is forked, in batches of at most MAX_BATCH, before the command
    that followed the Spawns."""
    supervisor, control = _pair()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked process
        supervisor.close()
        os.close(report_r)
        calls: list = []
        zygote = Zygote(control, 0)
        zygote.spawn = lambda count: calls.append(["spawn", count])  # type: ignore[method-assign]
        zygote.start_package_zygote = lambda command: calls.append(["package", command.key])  # type: ignore[method-assign]
        zygote.serve()
        os.write(report_w, json.dumps(calls).encode())
        os._exit(0)
    control.close()
    os.close(report_w)
    encode = msgspec.msgpack.Encoder().encode
    for message in (Spawn(40), Spawn(30), StartPackageZygote("k", ["/p"]), Spawn(1)):
        supervisor.send(encode(message))
    supervisor.close()  # serve() returns at EOF
    _, status = os.waitpid(pid, 0)
    report = b""
    while chunk := os.read(report_r, 65536):
        report += chunk
    os.close(report_r)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    calls = json.loads(report)
    # The first recv may come before the others are queued: then the batches
    # are smaller, but the order and the total are the same.
    spawned_before = [c[1] for c in calls[: calls.index(["package", "k"])]]
    assert sum(spawned_before) == 70 and all(0 < n <= MAX_BATCH for n in spawned_before)
    assert calls[calls.index(["package", "k"]) + 1:] == [["spawn", 1]]
