"""The supervisor's side of package zygotes (see sandbox/package_zygote.py).

A script with packages cold-starts in a child of its dependency set's
package zygote, which imported the set once: the child pays no import. The
base zygote forks package zygotes on request (:meth:`PackageZygotes.want`,
on a set's first cold start or deploy); each then talks to the supervisor
on its own control socket, exactly as the base zygote does (``Spawned`` with
fds, ``Exited``, ``ZygoteReady``).

Which spares to fork and which package zygotes to end is decided by
:func:`supervisor.pool.plan.plan_packages`, from the pool's one convergence
step. A package zygote belongs to a generation of the base zygote (they
share its hash seed; it dies with it by ``PR_SET_PDEATHSIG``), so a base
restart ends them all.
"""

from __future__ import annotations

import os
import signal
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
import trio

from protocol.messages import Exited, FromZygote, Spawned, ZygoteReady
from supervisor.log import error, log, warn
from supervisor.pool.fork_priority import ForkPriority
from supervisor.pool.plan import PackageSet
from supervisor.pool.rate import EventRate
from supervisor.pool.spare_line import SpareLine
from supervisor.pool.zygote_client import TakeSlots, receive_messages, send_spawn


class PackageOwner(Protocol):
    """What package zygotes report to (the pool)."""

    def on_package_spawned(self, zygote: PackageZygote, pid: int, sock: socket.socket, pidfd: int,
                           slot: int) -> None: ...

    def on_package_exited(self, pid: int, status: int) -> None: ...

    def on_package_zygote_change(self) -> None: ...


class PackageZygote:
    """One dependency set's zygote, its spares and what the plan needs of it."""

    def __init__(self, key: str, dirs: list[str], generation: int) -> None:
        self.key = key
        self.dirs = dirs
        self.generation = generation
        self.pid = 0
        self.pidfd = -1
        self.sock: Any = None  # trio's, for receiving
        self._send_sock: socket.socket | None = None  # the same socket, non-blocking sends
        self.ready = trio.Event()
        self.alive = True
        #: Its spares ready to take, and the requests in line for one.
        self.line: SpareLine[Any] = SpareLine()
        self.spares = self.line.spares
        self.requested = 0
        self.waiting = 0
        self.in_use = 0
        self.last_used = trio.current_time()
        #: One of its spares became a script's child at least once.
        self.served = False
        #: Cold starts that took one of its spares (sizes its spares).
        self.cold_rate = EventRate()
        self.memory = 0
        #: The children's RLIMIT_AS (0: none), known once its mapping was read.
        self.address_space = 0
        #: Nice 0 while a request waits for its fork (see fork_priority).
        self.priority = ForkPriority()
        self._encoder = msgspec.msgpack.Encoder()

    def view(self, now: float) -> PackageSet:
        return PackageSet(self.key, self.ready.is_set() and self.alive, len(self.spares), self.requested,
                          self.waiting, self.in_use, self.last_used, self.memory,
                          self.cold_rate.per_second(now), self.served)

    def taken(self, now: float) -> None:
        """One of its spares became a script's child."""
        self.last_used = now
        self.served = True
        self.cold_rate.record(now)

    def spawn(self, count: int, take_slots: TakeSlots) -> bool:
        if self._send_sock is None or not self.alive:
            return False
        if not send_spawn(self._send_sock, self._encoder, count, self.address_space, take_slots):
            return False
        self.requested += count
        return True

    def end(self) -> None:
        """Kill it; its control socket's EOF does the rest. Whoever waits
        for it to be ready wakes (and finds it gone)."""
        self.alive = False
        self.ready.set()
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:
                pass
        self.line.release()


class PackageZygotes:
    """Every package zygote of the current base zygote generation."""

    def __init__(self, owner: PackageOwner, start: Callable[[str, list[str]], bool],
                 address_space_mb: int) -> None:
        self.owner = owner
        self._start = start
        self.address_space_mb = address_space_mb
        self.zygotes: OrderedDict[str, PackageZygote] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self._decoder = msgspec.msgpack.Decoder(FromZygote)

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def get(self, key: str) -> PackageZygote | None:
        zygote = self.zygotes.get(key)
        return zygote if zygote is not None and zygote.alive else None

    def current(self, key: str, generation: int) -> PackageZygote | None:
        """The live zygote of set ``key`` from base zygote ``generation`` (an
        older generation's is ended)."""
        zygote = self.get(key)
        if zygote is not None and zygote.generation != generation:
            self.end(zygote)
            return None
        return zygote

    def touch(self, zygote: PackageZygote) -> None:
        """A cold start of one of its tenants (recently used: evicted last)."""
        zygote.last_used = trio.current_time()
        self.zygotes.move_to_end(zygote.key)

    def live(self) -> list[PackageZygote]:
        """The zygotes not ended (ended ones may wait for their socket's EOF)."""
        return [zygote for zygote in self.zygotes.values() if zygote.alive]

    def end(self, zygote: PackageZygote) -> None:
        """End it; one the base zygote has not forked yet leaves at once
        (:meth:`started` then kills the fork), so it counts toward nothing."""
        zygote.end()
        if not zygote.pid and self.zygotes.get(zygote.key) is zygote:
            del self.zygotes[zygote.key]

    def want(self, key: str, dirs: list[str], generation: int) -> PackageZygote | None:
        """The zygote of set ``key``, asked of the base zygote if there is none
        (whether it may start is the pool's plan's call: plan_packages)."""
        zygote = self.current(key, generation)
        if zygote is None:
            zygote = PackageZygote(key, dirs, generation)
            if not self._start(key, dirs):
                return None
            self.zygotes[key] = zygote
            log("package_zygote.starting", set=key)
        self.touch(zygote)
        return zygote

    def started(self, key: str, pid: int, sock: socket.socket, pidfd: int, generation: int) -> None:
        """The base zygote forked it (ZygoteClient's callback)."""
        zygote = self.zygotes.get(key)
        if zygote is None or not zygote.alive or zygote.pid or self._nursery is None \
                or zygote.generation != generation:
            if zygote is not None and not zygote.alive and not zygote.pid:
                del self.zygotes[key]  # ended before its fork came: no stale entry
            sock.close()
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            finally:
                os.close(pidfd)
            return
        zygote.pid, zygote.pidfd = pid, pidfd
        zygote.sock = trio.socket.from_stdlib_socket(sock)
        zygote._send_sock = sock
        self._nursery.start_soon(self._serve, zygote)

    def end_all(self) -> None:
        for zygote in list(self.zygotes.values()):
            self.end(zygote)

    async def _serve(self, zygote: PackageZygote) -> None:
        sock = zygote.sock
        try:
            with sock:
                async for message, fds in receive_messages(sock, self._decoder):
                    if isinstance(message, Spawned) and len(fds) == 2:
                        zygote.requested = max(0, zygote.requested - 1)
                        self.owner.on_package_spawned(zygote, message.pid, socket.socket(fileno=fds[0]), fds[1],
                                                      message.slot)
                    elif isinstance(message, Exited):
                        self.owner.on_package_exited(message.pid, message.status)
                    elif isinstance(message, ZygoteReady):
                        await self._measure(zygote)
                        zygote.ready.set()
                        log("package_zygote.ready", set=zygote.key, pid=message.pid,
                            memory_kb=zygote.memory // 1024, **message.jail)
                        if message.jail.get("failed"):
                            warn("package_zygote.imports_failed", set=zygote.key, failed=message.jail["failed"])
                        self.owner.on_package_zygote_change()
                    else:
                        for fd in fds:
                            os.close(fd)
                        error("package_zygote.bad_message", set=zygote.key, message=type(message).__name__)
        finally:
            zygote.alive = False
            zygote._send_sock = None
            zygote.ready.set()
            zygote.line.release()
            if self.zygotes.get(zygote.key) is zygote:
                del self.zygotes[zygote.key]
            with trio.CancelScope(shield=True):
                zygote.end()
                if zygote.pidfd >= 0:
                    os.close(zygote.pidfd)
                    zygote.pidfd = -1
            log("package_zygote.ended", set=zygote.key, pid=zygote.pid)
            self.owner.on_package_zygote_change()

    async def _measure(self, zygote: PackageZygote) -> None:
        """Its memory (for the cap) and its mapping (its children's RLIMIT_AS
        is relative to it, as for the base zygote), from /proc, in a thread."""
        size, pss = await trio.to_thread.run_sync(_mapping_and_pss, zygote.pid)
        zygote.memory = pss
        if self.address_space_mb and size:
            zygote.address_space = size + self.address_space_mb * 2**20


def _mapping_and_pss(pid: int) -> tuple[int, int]:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        pss = 0
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    pss = int(line.split()[1]) * 1024
        return size, pss
    except (OSError, ValueError, IndexError):
        return 0, 0
