"""Spawns that queued while the zygote was forking are forked as one batch.

In a storm the supervisor asks for a spare or two at a time; each batch's
own Python runs after its forks, when every page it touches is a copy, so
fewer, larger batches copy fewer pages. The zygote's control socket is real
here; the forks are recorded instead of made (``Zygote.spawn`` itself is
exercised by every test that starts a server).
"""

from __future__ import annotations

import array
import json
import os
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


def test_a_batch_announces_its_children_in_doubling_chunks_as_it_forks() -> None:
    """Real forks, a real control socket: a batch of 9 hands the supervisor
    its children after the 1st, 2nd, 4th and 8th fork and at its end, so a
    request waiting for a spare is not kept for the whole batch. Each child
    reports how many announcements its zygote had sent when it was forked
    (the count is in the memory it inherited)."""
    supervisor, control = _pair()
    report_r, report_w = os.pipe()
    zygote = Zygote(control, 0)
    sent = [0]
    announce = zygote._announce

    def counting(message, pid, parent_end) -> None:  # type: ignore[no-untyped-def]
        announce(message, pid, parent_end)
        sent[0] += 1

    def child(sock, channel, layer2, cgroup_fd, keep) -> int:  # type: ignore[no-untyped-def]
        os.write(report_w, f"{sent[0]}\n".encode())
        return 0

    zygote._announce = counting  # type: ignore[method-assign]
    zygote._run_child = child  # type: ignore[method-assign]
    zygote.spawn(9)
    os.close(report_w)
    pids = []
    for _ in range(9):
        packet, ancillary, _flags, _address = supervisor.recvmsg(65536, socket.CMSG_SPACE(2 * 4))
        spawned = msgspec.msgpack.decode(packet, type=Spawned)
        for _level, _kind, data in ancillary:
            for fd in array.array("i", data):
                os.close(fd)
        pids.append(spawned.pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    seen = b""
    while chunk := os.read(report_r, 4096):
        seen += chunk
    os.close(report_r)
    assert len(set(pids)) == 9, "every child announced once"
    assert sorted(int(n) for n in seen.split()) == [0, 1, 2, 2, 4, 4, 4, 4, 8], (
        "announced after the 1st, 2nd, 4th and 8th fork")
    assert sent[0] == 9
    supervisor.close()
    control.close()
