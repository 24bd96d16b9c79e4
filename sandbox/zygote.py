"""The zygote: one pre-imported interpreter that forks jailed children.

Python's start-up here costs over 100 ms; a fork of a process that already
imported the runtime costs about one. The supervisor starts one zygote and
asks it, over a SOCK_SEQPACKET control socket, to fork spare children ahead
of demand. Each child jails itself completely (see :mod:`sandbox.jail`)
before it says hello, so a spare in the pool is already locked down when a
script is assigned to it.

Per child, the zygote creates a socketpair, forks (a Spawn's children back
to back), and sends the supervisor the parent end plus a pidfd of the child
(SCM_RIGHTS). It reaps its children and reports their wait status, which is
how the supervisor learns that a child died by SIGKILL (CPU limit) or
SIGSYS (seccomp).

The zygote runs at nice 10: refilling the pool must never take a core from a
live request on a small machine.
"""

from __future__ import annotations

import _socket
import argparse
import array
import asyncio
import functools
import gc
import importlib
import os
import select
import signal
import site
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from protocol.messages import (
    PROTOCOL_VERSION,
    Exited,
    FromZygote,
    PackageZygoteStarted,
    Spawn,
    Spawned,
    StartPackageZygote,
    ToZygote,
    ZygoteReady,
)

from . import (
    file_view,
    fork,
    heap_fill,
    jail,
    logs,
    preload,
    reshare,
    seccomp_policy,
    thread_shims,
    warmup,
)


def _wake_only(signum: int, frame: object) -> None:
    """SIGCHLD's handler: its wake-up byte is all the zygote needs (``serve``).

    A module function, not a lambda made in ``serve``: a child's jail sets
    SIGCHLD back to its default, and a handler only the signal table held
    was freed there, its object's fields written first (~7 of the zygote's
    pages copied into every child, seen in perf's page-fault samples)."""


def _preimport() -> None:
    """Import what most children need, once, to share it (see sandbox.preload)."""
    from . import tenant_modules  # registers workers / js / pyodide aliases

    tenant_modules.install()
    for name in preload.COMMON + preload.RUNTIME:
        importlib.import_module(name)
    from . import child  # noqa: F401  (the child's main loop and runtime)


class Zygote:
    """Owns the control socket and the fork loop."""

    def __init__(self, control: socket.socket, address_space_headroom: int,
                 bundles_dir: str = "", packages_dir: str = "") -> None:
        import msgspec

        self.control = control
        #: The state dir's trees the file view shows (see sandbox.file_view).
        self.bundles_dir = bundles_dir
        self.packages_dir = packages_dir
        self.rules = jail.FileRules()
        #: RLIMIT_AS of every child above the zygote's own mapping (0: none);
        #: the supervisor chose it with its memory backend.
        self.address_space_headroom = address_space_headroom
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder(ToZygote)
        self.bpf = b""
        self.devnull = -1
        #: Every child's event loop and runtime, built before the fork (sandbox.child.prebuild).
        self.prebuilt: tuple | None = None
        #: sandbox.child.main and .prebuild_channel, bound by prepare() (see there).
        self._child_main: Callable[..., int] | None = None
        self._child_channel: Callable[..., Any] | None = None
        #: Only this thread runs here: children are forked without Python's
        #: at-fork work (sandbox.fork). Checked at the end of prepare().
        self.single_threaded = False
        self.address_space = 0

    def prepare(self) -> dict:
        _preimport()
        # Tenants may import os: nothing of the host's environment reaches
        # them, only what keeps native libraries to one thread.
        os.environ.clear()
        os.environ.update(thread_shims.NATIVE_SINGLE_THREADED)
        # ... nor the home of the user the zygote runs as, which site worked
        # its per-user paths out from at start-up (site.getusersitepackages()
        # gave "/root/.local/..."): a child works them out again from its
        # own home (sandbox.stdlib_shims).
        site.USER_BASE = site.USER_SITE = None
        # CPython's method cache (4096 entries) holds what the imports
        # looked up. A child's miss puts its own name in an entry and drops
        # the name it held: a write to that old name's reference count, so
        # one more of the zygote's pages copied into the child. Emptied
        # here, before the rehearsals fill in what a request looks up, the
        # entries a child's misses land in mostly hold None, whose page every
        # child writes anyway: ~20 pages fewer per child (654 -> 633 served,
        # 429 -> 416 spare; ru_minflt medians, 62 cold starts, two runs each).
        sys._clear_type_cache()
        for _ in range(warmup.REHEARSALS):
            warmup.rehearse()
        logs.install_logging()  # once here, not in every child (see there)
        from . import child

        self.prebuilt = child.prebuild()
        # Bound once: a function-level ``from . import child`` in every fork
        # ran the import system's Python (~20 of the zygote's pages copied
        # into each child, measured).
        self._child_main = child.main
        self._child_channel = child.prebuild_channel
        self.bpf = seccomp_policy.compile_policy()
        # Compiled here, where files may be written (libseccomp exports through
        # one); a package zygote, which writes nothing, loads it.
        self.package_bpf = seccomp_policy.compile_package_zygote_policy()
        self.devnull = os.open(os.devnull, os.O_RDWR)
        reshare_problem = reshare.load_library()
        proc = reshare.open_proc() if reshare_problem is None else None
        self.address_space = (
            jail.mapped_bytes() + self.address_space_headroom if self.address_space_headroom else 0
        )
        view = file_view.plan(self.bundles_dir, self.packages_dir)
        report = jail.isolate_zygote(view)
        self.rules = jail.prepare_file_rules(view, report)
        jail.confine_zygote(self.rules, report)
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 10)
        except OSError:
            pass
        # Everything imported so far is shared with every child; freezing
        # keeps the collector from writing to (and so copying) those pages.
        gc.collect()
        gc.freeze()
        _, middle, full = gc.get_threshold()
        gc.set_threshold(CHILD_YOUNG_COLLECTION_THRESHOLD, middle, full)
        # ... and children put their first objects in pools of their own,
        # not one block into each of hundreds of the zygote's pages.
        heap_fill.fill_partial_pools()
        malloc_fill = heap_fill.fill_malloc_bins()
        snapshot = {"problem": reshare_problem}
        if proc is not None:
            try:
                snapshot = reshare.take(*proc)
            except Exception as exc:  # noqa: BLE001 - optional: children keep their copies
                snapshot = {"problem": f"snapshot: {exc!r}"}
            finally:
                for fd in proc:
                    os.close(fd)
        self.single_threaded = threading.active_count() == 1
        if self.address_space and snapshot.get("pages"):
            self.address_space += snapshot["pages"] * reshare.PAGE  # every child maps it too
        return {**jail.describe(report), "reshare": snapshot, "malloc_fill": malloc_fill}

    def send(self, message: FromZygote, fds: list[int] | None = None) -> None:
        payload = self.encoder.encode(message)
        if fds:
            self.control.sendmsg(
                [payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
        else:
            self.control.send(payload)

    def spawn(self, count: int, slots: list[tuple[int, int]] | None = None) -> None:
        """Fork ``count`` spare children back to back, announcing them in
        doubling chunks as they are forked (see :func:`_announce_after`).

        ``slots``: (number, join file) of the cgroups the supervisor made for
        the first of them; each child joins its own first thing
        (jail.join_cgroup_slot), and its Spawned names it. The zygote's
        copies are closed once the batch is forked.

        Why a batch: a fork write-protects every page of the zygote, so each
        page its own Python touches after one is copied again: ~170 pages
        per fork one at a time, ~40% of the zygote's CPU in a storm of cold
        starts (measured, with ~3.4 forks per Spawn). Between two forks of a
        batch only the loop below runs; the socket pairs, the children's
        kernel sides and channels (sandbox.child.ChildLoop, prebuild_channel),
        their Landlock rulesets (jail.second_layer) and the announcements are
        made once per batch.
        """
        slots = slots or []
        if count <= 0:
            _close_slots(slots)
            return
        # _socket's own pairs: socket.socketpair() wraps each end in Python code.
        pairs = [_socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(count)]
        channels: list[Any] = [None] * count
        # Landlock's second layer, one ruleset per child (see jail.second_layer).
        layers = [jail.second_layer(self.rules) for _ in range(count)]
        sides = []
        # What each child's jail leaves open (jail.fds_to_keep): its channel,
        # its ruleset, the snapshot and (below) its loop's kernel side.
        snapshot = reshare.snapshot_fd()
        kept: list[list[int]] = [[] if snapshot is None else [snapshot] for _ in range(count)]
        if self.prebuilt is not None and self._child_channel is not None:
            loop, runtime = self.prebuilt
            # The children's current loop, made so here once per batch (a
            # package zygote's framework rehearsal unsets it) rather than in
            # every child, where asyncio's policy, its thread-local and an ABC
            # check copied ~22 of the zygote's pages: a spare's set-up
            # faulted ~293 times before, ~279 after (means of 6 and 7 runs).
            asyncio.set_event_loop(loop)
            sides = loop.renew_kernel_sides(count)
            for index, side in enumerate(sides):
                # Each child's channel too, registered in its own epoll instance.
                loop.take_kernel_side(side)
                channels[index] = self._child_channel(pairs[index][1], loop, runtime)
                kept[index] += loop.kernel_fds()
        keeps = [jail.fds_to_keep(pair[1].fileno(), layer, extra)
                 for pair, layer, extra in zip(pairs, layers, kept, strict=True)]
        pids: list[int] = []
        announced = 0

        def announce_forked() -> None:
            """Hand the supervisor every child forked and not yet announced."""
            nonlocal announced
            for index in range(announced, len(pids)):
                pairs[index][1].close()
                slot = slots[index][0] if index < len(slots) else -1
                self._announce(Spawned(pids[index], slot), pids[index], pairs[index][0])
            announced = len(pids)

        try:
            for index in range(count):
                if sides:
                    loop.take_kernel_side(sides[index])
                pid = fork.fork() if self.single_threaded else os.fork()
                if pid == 0:  # pragma: no cover - runs in the forked process
                    self._run_forked("child", functools.partial(
                        self._run_child, pairs[index][1], channels[index],
                        layers[index], slots[index][1] if index < len(slots) else -1, keeps[index]))
                pids.append(pid)
                if _announce_after(len(pids)) and len(pids) < count:
                    announce_forked()
        finally:
            _close_slots(slots)
            # The zygote's copies; the last side stays the loop's until the next batch.
            if sides:
                loop.close_kernel_sides(sides[:-1])
            for layer in layers:
                if layer is not None:
                    layer.close()
            announce_forked()
            for parent_end, child_end in pairs[len(pids):]:  # a fork failed: never forked
                child_end.close()
                parent_end.close()

    def _run_child(self, sock: _socket.socket, channel: Any, layer2: Any, cgroup_fd: int,
                   keep: tuple[int, ...]) -> int:
        assert self._child_main is not None, "prepare() binds it before any fork"
        return self._child_main(sock, self.devnull, self.address_space, self.bpf, self.rules,
                                keep, self.prebuilt, channel, layer2, cgroup_fd)

    def start_package_zygote(self, command: StartPackageZygote) -> None:
        """Fork the zygote of one dependency set (see :mod:`sandbox.package_zygote`)."""

        def run_package_zygote(control: socket.socket) -> int:
            self.control = control
            self.single_threaded = False  # its packages may start threads (see sandbox.fork)
            from . import package_zygote

            report = package_zygote.become(self.rules, command.package_dirs, self.package_bpf)
            self.send(ZygoteReady(version=PROTOCOL_VERSION, pid=os.getpid(),
                                  jail={"package_set": command.key, **report}))
            self.serve()
            return 0

        self._fork_announced(socket.SOCK_SEQPACKET, "package zygote", run_package_zygote,
                             lambda pid: PackageZygoteStarted(key=command.key, pid=pid))

    def _fork_announced(
        self,
        sock_type: int,
        what: str,
        body: Callable[[_socket.socket], int],
        announce: Callable[[int], FromZygote],
    ) -> None:
        """Fork a process running ``body`` and hand its socket and pidfd to the supervisor."""
        parent_end, child_end = _socket.socketpair(socket.AF_UNIX, sock_type)
        try:
            pid = fork.fork() if self.single_threaded else os.fork()
            if pid == 0:  # pragma: no cover - runs in the forked process
                def run() -> int:
                    parent_end.close()  # else the supervisor closing its end is no EOF here
                    return body(child_end)

                self._run_forked(what, run)
        finally:
            child_end.close()
        self._announce(announce(pid), pid, parent_end)

    def _run_forked(self, what: str, body: Callable[[], int]) -> NoReturn:
        """The forked side: it never returns into this zygote's loop. Whatever
        ``body`` does, it ends in ``os._exit`` with its last words on stderr,
        so a failure in a child can never run zygote code twice. A spare's
        jail closes every other descriptor it inherited (a batch's other
        pairs and kernel sides among them) before it reads its channel."""
        code = 70
        try:
            self.control.close()
            code = body()
        except BaseException as exc:  # noqa: BLE001 - last words before _exit
            try:
                os.write(2, f"corral {what} {os.getpid()}: {exc!r}\n".encode())
            except OSError:
                pass
        finally:
            os._exit(code)

    def _announce(self, message: FromZygote, pid: int, parent_end: _socket.socket) -> None:
        """Hand a forked process's socket end and a pidfd of it to the supervisor."""
        try:
            pidfd = os.pidfd_open(pid)
            try:
                self.send(message, [parent_end.fileno(), pidfd])
            finally:
                os.close(pidfd)
        finally:
            parent_end.close()

    def reap(self) -> None:
        """Report every child that has ended. Called when SIGCHLD's wake-up
        byte arrives, and only then: each ``waitpid`` scans all of the
        zygote's children, and with a thousand of them, reaping after every
        command was ~1% of the host's CPU in a storm of cold starts
        (measured with perf)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.send(Exited(pid=pid, status=status))

    def serve(self) -> None:
        """Carry out the supervisor's commands until it closes its end.

        It closes it to retire this zygote (a rotation), maybe while
        announcements this zygote sent are unread or while it sends more:
        that reads, or sends, as a reset or a broken pipe rather than an end
        of file, and means the same. The zygote then ends quietly, without
        a traceback in the server's log for every rotation.
        """
        try:
            self._obey()
        except (BrokenPipeError, ConnectionResetError):
            return

    def _obey(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, _wake_only)
        poller = select.poll()
        poller.register(self.control, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == wake_r:
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                    continue
                packet, fds = self._receive(0)
                if not packet:
                    return  # the supervisor is gone; so are we
                command = self.decoder.decode(packet)
                if isinstance(command, Spawn):
                    count, slots, command = self._queued_spawns(command, fds)
                    while count > 0:
                        self.spawn(min(count, MAX_BATCH), slots[:MAX_BATCH])
                        count -= MAX_BATCH
                        slots = slots[MAX_BATCH:]
                    _close_slots(slots)
                    if command is _GONE:
                        return
                else:
                    _close_fds(fds)
                if isinstance(command, StartPackageZygote):
                    self.start_package_zygote(command)

    def _receive(self, flags: int) -> tuple[bytes, list[int]]:
        """One packet from the supervisor and the descriptors it carried."""
        packet, ancillary, _flags, _address = self.control.recvmsg(65536, _FDS_SPACE, flags)
        fds: list[int] = []
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
        return packet, fds

    def _queued_spawns(self, first: Spawn, fds: list[int]) -> tuple[int, list[tuple[int, int]], Any]:
        """How many children ``first`` and the Spawns already queued behind
        it ask for, forked then as one batch, with the cgroup slots they
        carried (``fds``: ``first``'s); and the first other command read
        meanwhile (None: none; ``_GONE``: the supervisor closed).

        Why: in a storm of cold starts the supervisor asks for a spare or two
        at a time (1.8 on average), and each batch's own Python runs after
        its forks, when every page it touches is a copy: ~130 page copies in
        the zygote per fork. Spawns that queued while the last batch was
        forked are one batch here, announced in its doubling chunks
        (:func:`_announce_after`).
        """
        count = max(0, first.count)
        slots = _pair_slots(first, fds)
        if first.address_space > 0:
            self.address_space = first.address_space
        while True:
            try:
                packet, fds = self._receive(socket.MSG_DONTWAIT)
            except BlockingIOError:
                return count, slots, None
            if not packet:
                return count, slots, _GONE
            command = self.decoder.decode(packet)
            if not isinstance(command, Spawn):
                _close_fds(fds)
                return count, slots, command
            if command.address_space > 0:
                self.address_space = command.address_space
            slots += _pair_slots(command, fds)
            count += max(0, command.count)


def _announce_after(forked: int) -> bool:
    """Whether a batch announces its children once ``forked`` of them are:
    after the 1st, 2nd, 4th, 8th, ... fork (and at its end).

    Why not all at the end: the spares of a batch had said their Hello long
    before the batch ended, and the requests waiting for them waited for
    every fork of it: in a storm of first requests, a batch of 12-19 forks
    kept the first of its waiters ~40 ms (traced). Why not after every fork:
    each announcement's Python runs on pages the next fork write-protects
    again (see :meth:`Zygote.spawn`). Doubling chunks serve the first waiter
    after one fork, at ~log2(batch) announcements' copies.
    """
    return forked & (forked - 1) == 0


def _pair_slots(spawn: Spawn, fds: list[int]) -> list[tuple[int, int]]:
    """A Spawn's slot numbers with the fds that came with it; any extra closed."""
    paired = list(zip(spawn.slots, fds, strict=False))[: max(0, spawn.count)]
    _close_fds(fds[len(paired):])
    return paired


def _close_slots(slots: list[tuple[int, int]]) -> None:
    _close_fds([fd for _number, fd in slots])


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


#: Room for the descriptors one packet from the supervisor may carry (the kernel's SCM_MAX_FD).
_FDS_SPACE = socket.CMSG_SPACE(253 * 4)
#: The most children one batch forks (see Zygote.spawn): a larger ask is forked in several.
MAX_BATCH = 64
#: What :meth:`Zygote._queued_spawns` returns when the supervisor closed the control socket.
_GONE = object()


#: Net container allocations between two young-generation collections in
#: the zygote and so in every child (CPython's default is 700). A warm
#: request makes a few hundred containers and, in the runtime's own code,
#: no reference cycles: at 700 a child walked its young objects every few
#: requests. At 10,000 (the supervisor's figure, see supervisor.server) the
#: children's CPU per request fell ~4% (scripts/bench_revisions: 87.8 ->
#: 84.5 us at 2 tenants, 236 -> 228 us at 300). Garbage in cycles, which a
#: tenant's code may make, waits a little longer for its collection.
CHILD_YOUNG_COLLECTION_THRESHOLD = 10_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Corral zygote (started by the supervisor)")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--address-space-mb", type=int, default=0,
                        help="children's RLIMIT_AS above the zygote's own mapping (0: none)")
    parser.add_argument("--bundles-dir", default="",
                        help="root of the script bundles, shown read-only and noexec in the jail")
    parser.add_argument("--packages-dir", default="",
                        help="root of the package store, shown read-only in the jail")
    args = parser.parse_args(argv)
    # No command line from here on: the children (and what they import) see
    # an embedded interpreter's [""], not the supervisor's paths. Set here,
    # once: a child that replaced the zygote's list freed it, and every
    # string in it, at the price of a dozen copied pages each.
    sys.argv = [""]
    control = socket.socket(fileno=args.control_fd)
    zygote = Zygote(control, args.address_space_mb * 1024 * 1024, args.bundles_dir,
                    args.packages_dir)
    report = zygote.prepare()
    zygote.send(ZygoteReady(version=PROTOCOL_VERSION, pid=os.getpid(), jail=report))
    zygote.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
