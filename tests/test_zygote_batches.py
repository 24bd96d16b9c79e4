"""Spawns that queued while the zygote was forking are forked as one batch.

In a storm the supervisor asks for a spare or two at a time; each batch's
own Python runs after its forks, when every page it touches is a copy, so
fewer, larger batches copy fewer pages. But a batch is announced once all
of it is forked, so a run of Spawns is forked in batches of 1, 2, 4, ...,
and a batch's children set themselves up a few at a time, in fork order.
The zygote's control socket is real here; the forks are recorded, or made
with the children's main replaced (``Zygote.spawn`` with the real one is
exercised by every test that starts a server).
"""

from __future__ import annotations

import array
import json
import os
import select
import socket

import msgspec

from protocol.messages import Spawn, Spawned, StartPackageZygote
from sandbox.zygote import _GONE, MAX_BATCH, Zygote


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def test_queued_spawns_are_summed_up_to_the_first_other_command() -> None:
    supervisor, control = _pair()
    zygote = Zygote(control, 0)
    encode = msgspec.msgpack.Encoder().encode
    for message in (Spawn(2), Spawn(3, address_space=5 << 20), StartPackageZygote("k", ["/p"]), Spawn(4)):
        supervisor.send(encode(message))
    count, slots, other = zygote._queued_spawns(Spawn(1), [])
    assert count == 6 and slots == []
    assert other == StartPackageZygote("k", ["/p"])
    assert zygote.address_space == 5 << 20, "the last address space asked for holds"
    count, slots, other = zygote._queued_spawns(msgspec.msgpack.decode(control.recv(65536), type=Spawn), [])
    assert (count, other) == (4, None), "what follows the other command is the next batch"
    supervisor.close()
    assert zygote._queued_spawns(Spawn(1), []) == (1, [], _GONE)
    control.close()


def _file_fds(count: int) -> list[int]:
    """Stand-ins for cgroup join files, each a file of its own (a pipe's
    write end; its read end is closed), told apart by fstat."""
    ends = []
    for _ in range(count):
        read_end, write_end = os.pipe()
        os.close(read_end)
        ends.append(write_end)
    return ends


def _same_file(a: int, b: int) -> bool:
    return os.path.sameopenfile(a, b)


def _copies_open(fd: int) -> int:
    """Descriptors of this process on the same file as ``fd``, ``fd`` aside."""
    return sum(1 for other in map(int, os.listdir("/proc/self/fd"))
               if other != fd and _is_open(other) and _same_file(other, fd))


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_cgroup_slots_ride_with_their_spawns_and_stray_ones_are_closed() -> None:
    """A Spawn's slot numbers pair with the fds its packet carried, in order,
    across the Spawns summed into one batch; fds beyond a Spawn's count and
    any that came with another command are closed, not leaked."""
    supervisor, control = _pair()
    zygote = Zygote(control, 0)
    encode = msgspec.msgpack.Encoder().encode
    ours = _file_fds(4)

    def send(message: object, fds: list[int]) -> None:
        supervisor.sendmsg([encode(message)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])

    send(Spawn(1, slots=(7, 8)), ours[:2])  # one child: slot 8 is one too many
    send(Spawn(2, slots=(9,)), ours[2:3])
    send(StartPackageZygote("k", ["/p"]), ours[3:])
    packet, fds = zygote._receive(0)
    count, slots, other = zygote._queued_spawns(msgspec.msgpack.decode(packet, type=Spawn), fds)
    assert count == 3 and other == StartPackageZygote("k", ["/p"])
    assert [number for number, _ in slots] == [7, 9]
    assert _same_file(slots[0][1], ours[0]) and _same_file(slots[1][1], ours[2])
    assert _copies_open(ours[1]) == 0, "the slot beyond the Spawn's count was left open"
    assert _copies_open(ours[3]) == 0, "a slot sent with another command was left open"
    for _, fd in slots:
        os.close(fd)
    for fd in ours:
        os.close(fd)
    supervisor.close()
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
        zygote.spawn = lambda count, slots: calls.append(["spawn", count, [n for n, _ in slots]])  # type: ignore[method-assign]
        zygote.start_package_zygote = lambda command: calls.append(["package", command.key])  # type: ignore[method-assign]
        zygote.serve()
        os.write(report_w, json.dumps(calls).encode())
        os._exit(0)
    control.close()
    os.close(report_w)
    encode = msgspec.msgpack.Encoder().encode
    slot_fds = _file_fds(3)
    for message in (Spawn(40), Spawn(30, slots=(1, 2, 3)), StartPackageZygote("k", ["/p"]), Spawn(1)):
        fds = slot_fds if message == Spawn(30, slots=(1, 2, 3)) else []
        supervisor.sendmsg([encode(message)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                           if fds else [])
    for fd in slot_fds:
        os.close(fd)
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
    slots_before = [n for c in calls[: calls.index(["package", "k"])] for n in c[2]]
    assert slots_before == [1, 2, 3], "every slot reaches a batch, once"
    assert all(len(c[2]) <= c[1] for c in calls if c[0] == "spawn"), "no batch gets more slots than children"
    assert calls[calls.index(["package", "k"]) + 1:] == [["spawn", 1, []]]


def test_serve_forks_a_run_of_spawns_in_batches_that_double_from_one() -> None:
    """The first child asked for is announced after one fork, not after the
    whole run: in a storm, requests wait for it while a dozen more fork."""
    supervisor, control = _pair()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked process
        supervisor.close()
        os.close(report_r)
        sizes: list[int] = []
        zygote = Zygote(control, 0)
        zygote.spawn = lambda count, slots: sizes.append(count)  # type: ignore[method-assign]
        zygote.serve()
        os.write(report_w, json.dumps(sizes).encode())
        os._exit(0)
    control.close()
    os.close(report_w)
    supervisor.send(msgspec.msgpack.Encoder().encode(Spawn(20)))
    supervisor.close()
    _, status = os.waitpid(pid, 0)
    sizes = json.loads(os.read(report_r, 65536))
    os.close(report_r)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert sizes == [1, 2, 4, 8, 5]


def _silent_for(fd: int, seconds: float) -> bool:
    """Nothing to read on ``fd`` for ``seconds`` (a bounded wait on the descriptor, not a sleep)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return not poller.poll(seconds * 1000)


def _batch_of_stand_ins(lanes: int, count: int) -> tuple[list[int], int, int, list[int]]:
    """``Zygote.spawn`` for real, with the children's main replaced by a
    stand-in that says it started and exits (closing what it inherited, as
    a spare's jail does) when it reads a byte from the gate. Returns
    the pids announced, the read end of the starts, the gate's write end and
    the descriptors to close."""
    supervisor, control = _pair()
    started_r, started_w = os.pipe()
    gate_r, gate_w = os.pipe()

    def stand_in(*_args: object) -> int:
        os.write(started_w, f"{os.getpid():>10}".encode())
        os.read(gate_r, 1)
        return 0

    zygote = Zygote(control, 0)
    zygote.lanes = lanes
    zygote._child_main = stand_in
    zygote.spawn(count)
    announced = []
    for _ in range(count):
        packet, ancillary, _, _ = supervisor.recvmsg(4096, socket.CMSG_SPACE(8))
        announced.append(msgspec.msgpack.decode(packet, type=Spawned).pid)
        for _level, _kind, data in ancillary:
            for fd in array.array("i", data):  # its channel's end and a pidfd
                os.close(fd)
    supervisor.close()
    control.close()
    return announced, started_r, gate_w, [started_r, started_w, gate_r, gate_w]


def _next_start(started_r: int) -> int:
    return int(os.read(started_r, 10).decode())


def _end(children: list[int], gate_w: int, fds: list[int]) -> None:
    os.write(gate_w, b"x")  # the last one
    for child in children:
        assert os.waitpid(child, 0)[1] == 0
    for fd in fds:
        os.close(fd)


def test_the_children_of_a_batch_set_themselves_up_in_turn_in_fork_order() -> None:
    """One lane: each child starts once the one forked before it closed what
    it inherited (or died), so the first spare of a batch is ready after one
    set-up, not after all of them."""
    announced, started_r, gate_w, fds = _batch_of_stand_ins(lanes=1, count=3)
    started = [_next_start(started_r)]
    for turn in (1, 2):
        assert _silent_for(started_r, 0.3), f"child {turn} started while child {turn - 1} held its turn"
        os.write(gate_w, b"x")  # the running one exits
        started.append(_next_start(started_r))
    assert started == announced, "the children start in the order they were forked"
    _end(announced, gate_w, fds)


def test_a_batch_sets_up_as_many_children_at_once_as_it_has_lanes() -> None:
    announced, started_r, gate_w, fds = _batch_of_stand_ins(lanes=2, count=3)
    first_two = {_next_start(started_r), _next_start(started_r)}
    assert first_two == set(announced[:2])
    assert _silent_for(started_r, 0.3), "the third child started while two held their turns"
    os.write(gate_w, b"xx")  # both exit
    assert _next_start(started_r) == announced[2]
    _end(announced, gate_w, fds)
