"""Starting, talking to and restarting the zygote.

The zygote is the supervisor's own child process; it forks the sandboxed
children. This module owns its life: it starts it with a scrubbed
environment and a fresh random hash seed (forked children share the
zygote's seed, so a restart is also how the seed rotates), receives each new
child's channel and pidfd over SCM_RIGHTS, forwards exit statuses, and
restarts the zygote if it dies, with a back-off. The next generation's
zygote is started shortly before a rotation is due and stands by, so a
rotation is a swap rather than a pause in forking.

Why rotation, and what it bounds
--------------------------------
Every child of one zygote has the zygote's hash seed (``_Py_HashSecret``),
and a tenant can learn it: read it through ctypes, or infer it from
``hash()`` values. Knowing it lets that tenant craft colliding keys (hash
flooding) against a neighbour it can send requests to. A child cannot get
a seed of its own: reseeding after fork was tried (CPython 3.11) and breaks
the interpreter at once, because every string created before the fork
(interned names, module and keyword dicts) caches its hash, so a lookup
with a freshly built equal string misses; ``import json`` itself fails
with ``KeyError``. So the seed is rotated instead: a zygote forks at most
``pool.zygote_max_children`` children and lives at most
``pool.zygote_max_age_s``, and when it goes, its unassigned spares go with
it (also those still starting), so only the children it forked during its
life share a seed, and a child forked by an old zygote never gets a new
tenant. A tenant that learned its seed can therefore target at most the
other children of its generation, i.e. tenants cold-started in the same
window: ``zygote_max_children - 1`` of them, or up to twice that when the
successor was late (a zygote's start took 1.8 s in a storm of cold starts
here, not 0.6 s, i.e. ~450 forks): forking then goes on until it is up,
rather than every waiting request stalling for it (storm p99 250-360 ms
against ~80, measured with a late successor). Children keep their seed
while they serve. A zygote per dispatch namespace would separate
namespaces fully, but costs a zygote's private memory and start-up (a second or so of CPU)
per namespace, plus a spare pool per namespace, on hosts with thousands of
namespaces; it is not done.
"""

from __future__ import annotations

import array
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import trio

from protocol.messages import (
    PROTOCOL_VERSION,
    Exited,
    FromZygote,
    PackageZygoteStarted,
    Spawn,
    Spawned,
    StartPackageZygote,
    ZygoteReady,
)
from supervisor.limits.cgroup_slots import NO_SLOTS, SlotBatch
from supervisor.log import error, log, warn
from supervisor.pool.fork_priority import IDLE_ONLY, ZYGOTE_NICE

#: The next zygote is started this many forks before the current one's last
#: (at most a fifth of them) or this long before its age is up, so that it is
#: ready when rotation comes: a storm forks ~150 children a second here, and
#: a zygote takes ~0.3 s to start.
SUCCESSOR_LEAD_CHILDREN = 200
SUCCESSOR_LEAD_S = 30.0
#: A successor starts on idle CPU only (``IDLE_ONLY``); still starting after
#: this long (a host busy for that long), it gets the zygotes' nice 10 share.
SUCCESSOR_IDLE_S = 3.0

#: ``(pid, channel, pidfd, cgroup slot or -1)`` of a new child.
SpawnedCallback = Callable[[int, socket.socket, int, int], None]
#: Cgroup slots for a Spawn's ``count`` children (Enforcer.take_slots).
TakeSlots = Callable[[int], SlotBatch]
#: ``(key, pid, control socket, pidfd, generation)`` of a new package zygote.
PackageZygoteCallback = Callable[[str, int, socket.socket, int, int], None]
ExitedCallback = Callable[[int, int], None]


class ZygoteClient:
    """One zygote at a time; :meth:`run` keeps it alive until cancelled."""

    def __init__(self, address_space_mb: int, on_spawned: SpawnedCallback, on_exited: ExitedCallback,
                 on_restart: Callable[[], None], max_age_s: float = 3600.0,
                 max_children: int = 1000, on_ready: Callable[[], None] | None = None,
                 bundles_dir: str = "", packages_dir: str = "",
                 on_package_zygote: PackageZygoteCallback | None = None,
                 renice: Callable[[int, int], None] = lambda pid, nice: None,
                 take_slots: TakeSlots = lambda count: NO_SLOTS,
                 placed: Callable[[int], None] = lambda pid: None) -> None:
        #: Children's RLIMIT_AS above the zygote's mapping (see memory_limits).
        self.address_space_mb = address_space_mb
        self.max_age_s = max_age_s
        self.max_children = max(1, max_children)
        #: Trees of the state dir the zygote shows read-only in the jail's file view.
        self.bundles_dir = bundles_dir
        self.packages_dir = packages_dir
        self._on_ready = on_ready
        self._on_package_zygote = on_package_zygote
        #: Sets a process's nice (the pool's Renicer: CAP_SYS_NICE may be missing).
        self._renice = renice
        #: Cgroup slots for the children a Spawn asks for (the memory backend's).
        self._take_slots = take_slots
        #: Gives a new zygote every CPU (the pool's HubCore: it inherited the loop thread's).
        self._placed = placed
        self._forked = 0  # children of this generation, package zygotes' included
        self._asked = 0  # children requested of the current zygote
        self._life: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        #: The next generation's zygote, started in advance (see
        #: :meth:`_prepare_successor`), and the event set once its start is
        #: over (None: no successor is coming).
        self._successor: _Launched | None = None
        self._successor_done: trio.Event | None = None
        #: The successor's pid while it starts (0: none starting).
        self._successor_pid = 0
        self._on_spawned = on_spawned
        self._on_exited = on_exited
        self._on_restart = on_restart
        self._sock: socket.socket | None = None  # for sends: short, non-blocking
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(FromZygote)
        self.ready = trio.Event()
        self.pid = 0
        self.jail: dict = {}
        #: Numbers zygotes; a child carries the generation that forked it.
        #: Bumped as a zygote ends, before the pool hears of the restart.
        self.generation = 1

    def spawn(self, count: int) -> bool:
        """Ask for ``count`` more spares; False if no zygote is up right now."""
        count = min(count, self._fork_limit() - self._asked)
        if self._sock is None or count <= 0:
            return False
        if not send_spawn(self._sock, self._encoder, count, 0, self._take_slots):
            return False
        self._asked += count
        return True

    def start_package_zygote(self, key: str, package_dirs: list[str]) -> bool:
        """Ask the zygote to fork the zygote of one dependency set; False if none is up."""
        if self._sock is None:
            return False
        try:
            self._sock.send(self._encoder.encode(StartPackageZygote(key, package_dirs)))
        except (BlockingIOError, OSError):
            return False
        return True

    def forked(self) -> None:
        """A child of this generation exists (forked by the zygote or one of its
        package zygotes, which share its hash seed): rotate when enough have,
        and have the successor started a little before."""
        self._forked += 1
        if self._life is None:
            return
        if self._forked >= self.max_children - _lead_children(self.max_children):
            self._prepare_successor()
        if self._forked >= self._fork_limit():
            self._life.cancel()  # its seed has served enough children

    def _fork_limit(self) -> int:
        """Children the current zygote may fork: ``max_children``, and up to
        twice that while its successor is still starting (see the module's
        docstring); a rotation then waits only for the swap."""
        late = self._successor_done is not None and not self._successor_done.is_set()
        return self.max_children * (2 if late else 1)

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        status: trio.TaskStatus | None = task_status
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._generations(nursery, status)
            finally:
                if self._successor is not None:  # shutting down with one standing by
                    self._bury_later(self._successor)
                    self._successor = None

    async def _generations(self, nursery: trio.Nursery, status: trio.TaskStatus | None) -> None:
        """One zygote per generation, for as long as the client runs."""
        backoff = 0.05
        while True:
            began = trio.current_time()
            # A zygote lives at most max_age: forked children share its hash
            # seed, so a fresh zygote (fresh PYTHONHASHSEED) bounds how long
            # one seed serves new tenants.
            age_watch = trio.CancelScope()  # the successor-by-age task's; ends with the generation
            with trio.move_on_after(self.max_age_s) as aged:
                self._life = aged
                self._asked = 0
                self._forked = 0
                try:
                    zygote = await self._take_successor() or await self._start()
                    if zygote is not None:
                        self._become_current(zygote)
                        if status is not None:
                            status.started()
                            status = None
                        lead = min(SUCCESSOR_LEAD_S, self.max_age_s / 2)
                        nursery.start_soon(self._successor_by_age, began + self.max_age_s - lead,
                                           age_watch)
                        await self._serve(zygote)
                except OSError as exc:
                    error("zygote.failed", reason=str(exc))
                finally:
                    age_watch.cancel()
                    self._sock = None
                    self.ready = trio.Event()
                    self._life = None
            self.generation += 1
            self._on_restart()
            if aged.cancelled_caught:
                spent = self._forked >= self.max_children
                log("zygote.rotated", generation=self.generation - 1,
                    reason="children" if spent else "age",
                    **({"children": self._forked} if spent else {"age_s": self.max_age_s}))
                backoff = 0.05
                continue
            if trio.current_time() - began > 10:
                backoff = 0.05
            if self._successor is not None:
                continue  # a fresh zygote already stands by: no need to wait
            warn("zygote.restarting", after_s=backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    # -- the successor: started before it is needed ------------------------------
    def _prepare_successor(self) -> None:
        """Start the next generation's zygote now, in the background, unless
        one is on its way already. Rotation then swaps zygotes: forks stop for
        no longer than the swap, not for a zygote's start (~0.3 s here, far
        more on a loaded host), which in a storm of cold starts is what
        every request waiting for a spare would wait."""
        if self._successor_done is not None or self._nursery is None:
            return
        self._successor_done = trio.Event()
        self._nursery.start_soon(self._start_successor, self.generation + 1)

    async def _start_successor(self, generation: int) -> None:
        done = self._successor_done
        share_cpu = trio.CancelScope()
        if self._nursery is not None:
            self._nursery.start_soon(self._share_cpu_after, SUCCESSOR_IDLE_S, share_cpu)
        try:
            self._successor = await self._start(successor=generation)
        except OSError as exc:
            error("zygote.failed", reason=str(exc), generation=generation)
        finally:
            share_cpu.cancel()
            if done is not None:
                done.set()
        if self._forked >= self.max_children and self._life is not None and self.generation < generation:
            self._life.cancel()  # the current zygote forked on past its count while this one started
        if self._successor is not None and self.generation < generation:
            # Up before the generation it follows ended: it waits for the swap.
            log("zygote.standby", pid=self._successor.pid, generation=generation)

    async def _share_cpu_after(self, seconds: float, scope: trio.CancelScope) -> None:
        """A successor that idle CPU did not bring up in ``seconds`` gets nice
        10 (the forking zygote meanwhile forks on, up to twice its count)."""
        with scope:
            await trio.sleep(seconds)
            if self._successor_pid:
                self._renice(self._successor_pid, ZYGOTE_NICE)

    async def _successor_by_age(self, at: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep_until(at)
            self._prepare_successor()

    async def _take_successor(self) -> _Launched | None:
        """The zygote started in advance, once it is up (None: there is none)."""
        done = self._successor_done
        if done is None:
            return None
        if not done.is_set() and self._successor_pid:
            self._renice(self._successor_pid, 0)  # the rotation waits for it now
        await done.wait()
        zygote, self._successor, self._successor_done = self._successor, None, None
        if zygote is not None and zygote.process.poll() is not None:
            self._bury_later(zygote)  # it died while it stood by
            return None
        if zygote is not None:
            # It may still be idle-only: its children would inherit that.
            self._renice(zygote.process.pid, ZYGOTE_NICE)
        return zygote

    # -- one zygote's life -----------------------------------------------------------
    async def _start(self, successor: int = 0) -> _Launched | None:
        """Start a zygote and wait for its ZygoteReady (None: it ended or spoke
        another protocol version before that). ``successor``: the generation
        it is started in advance for (0: it is needed now)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONHASHSEED": str(secrets.randbelow(2**32 - 1) + 1),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "PYTHONDONTWRITEBYTECODE": "1",
            # The loader resolves every symbol of the interpreter and the
            # libraries it starts with now, in the zygote, instead of on each
            # function's first call: a call first made in a child wrote its
            # slot in a GOT page and so copied that page into the child
            # (extension modules are bound at import already: Python
            # dlopens them RTLD_NOW). Measured with perf's page-fault
            # samples, 60 cold starts each: ~648 -> ~641 pages copied per
            # served child, ~438 -> ~426 per spare, -2% in the zygote.
            "LD_BIND_NOW": "1",
        }
        if os.environ.get("CORRAL_LANDLOCK"):  # see sandbox.landlock: "off" to do without
            env["CORRAL_LANDLOCK"] = os.environ["CORRAL_LANDLOCK"]
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "sandbox.zygote", "--control-fd", str(theirs.fileno()),
                 "--address-space-mb", str(self.address_space_mb),
                 "--bundles-dir", self.bundles_dir, "--packages-dir", self.packages_dir],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        zygote = _Launched(process, ours)
        self._placed(process.pid)
        if successor:
            # Not needed yet: its start (imports, rehearsals: ~0.3 s of CPU)
            # must not take a core from the cold starts in flight, not even
            # nice 10's share (see fork_priority.IDLE_ONLY).
            self._successor_pid = process.pid
            self._renice(process.pid, IDLE_ONLY)
            log("zygote.preparing", pid=process.pid, generation=successor)
        try:
            while True:
                frame = await receive_frame(zygote.sock)
                if frame is None:
                    break
                data, fds = frame
                for fd in fds:  # nothing is passed before it is ready
                    os.close(fd)
                message = self._decoder.decode(data)
                if isinstance(message, ZygoteReady):
                    if message.version != PROTOCOL_VERSION:
                        error("zygote.version_mismatch", got=message.version,
                              want=PROTOCOL_VERSION)
                        break
                    zygote.pid = message.pid
                    zygote.jail = message.jail
                    return zygote
        except BaseException:
            self._bury_later(zygote)
            raise
        finally:
            if successor:
                self._successor_pid = 0
        self._bury_later(zygote)
        return None

    def _become_current(self, zygote: _Launched) -> None:
        self.pid = zygote.pid
        self.jail = zygote.jail
        self._sock = zygote.ours
        self.ready.set()
        log("zygote.ready", pid=zygote.pid, generation=self.generation, **zygote.jail)
        _warn_weaker_jail(zygote.jail)
        if self._on_ready is not None:
            self._on_ready()

    async def _serve(self, zygote: _Launched) -> None:
        """The current zygote's messages, until it ends or its life does."""
        try:
            async for message, fds in receive_messages(zygote.sock, self._decoder):
                if isinstance(message, Spawned):
                    if len(fds) != 2:
                        for fd in fds:
                            os.close(fd)
                        error("zygote.bad_spawn", pid=message.pid, fds=len(fds))
                        continue
                    channel = socket.socket(fileno=fds[0])
                    self._on_spawned(message.pid, channel, fds[1], message.slot)
                    self.forked()
                elif isinstance(message, PackageZygoteStarted):
                    if len(fds) != 2 or self._on_package_zygote is None:
                        for fd in fds:
                            os.close(fd)
                        error("zygote.bad_package_zygote", pid=message.pid, fds=len(fds))
                        continue
                    control = socket.socket(fileno=fds[0])
                    self._on_package_zygote(message.key, message.pid, control, fds[1], self.generation)
                elif isinstance(message, Exited):
                    self._on_exited(message.pid, message.status)
                else:
                    for fd in fds:
                        os.close(fd)
        finally:
            self._bury_later(zygote)

    def _bury_later(self, zygote: _Launched) -> None:
        """Close its socket now; kill and reap it off the caller's path (a
        rotation swaps zygotes without waiting for the old one's exit)."""
        zygote.sock.close()
        if self._nursery is not None:
            self._nursery.start_soon(_bury, zygote)


class _Launched:
    """A zygote process this client started, and its control socket."""

    __slots__ = ("process", "ours", "sock", "pid", "jail")

    def __init__(self, process: subprocess.Popen, ours: socket.socket) -> None:
        self.process = process
        #: For sends (short, non-blocking), as ``ZygoteClient._sock``.
        self.ours = ours
        self.sock = trio.socket.from_stdlib_socket(ours)
        self.pid = 0
        self.jail: dict = {}


async def _bury(zygote: _Launched) -> None:
    with trio.CancelScope(shield=True):
        if zygote.process.poll() is None:
            zygote.process.kill()
        await trio.to_thread.run_sync(zygote.process.wait)
    log("zygote.exited", pid=zygote.process.pid, status=zygote.process.returncode)


def _lead_children(max_children: int) -> int:
    """How many forks before the last one the successor is started."""
    return min(SUCCESSOR_LEAD_CHILDREN, max(1, max_children // 5))


def _warn_weaker_jail(jail: dict) -> None:
    """Say it loudly when children get less than the full jail on this host."""
    if not jail.get("view"):
        warn("zygote.no_file_view", problems=jail.get("problems", []),
             consequence="children see the host's file system, limited by Landlock only")
    if not jail.get("landlock"):
        warn("zygote.no_landlock", problems=jail.get("problems", []),
             consequence="a child could read other scripts' bundles if it knew their names")


async def receive_frame(sock: trio.socket.SocketType) -> tuple[bytes, list[int]] | None:
    """One datagram from a zygote and the descriptors passed with it; None at end of stream.

    A read error counts as the end: the zygote is gone either way, and any
    descriptors that arrived with the last empty read are closed here so
    they never leak into the supervisor.
    """
    try:
        data, ancdata, _flags, _addr = await sock.recvmsg(65536, socket.CMSG_SPACE(2 * 4))
    except OSError:
        data, ancdata = b"", []
    fds = array.array("i")
    for level, kind, blob in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(blob[: len(blob) - (len(blob) % fds.itemsize)])
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return data, list(fds)


def send_spawn(sock: socket.socket, encoder: msgspec.msgpack.Encoder, count: int,
               address_space: int, take_slots: TakeSlots) -> bool:
    """Ask a zygote for ``count`` children, with the cgroup slots there are
    for them (their join files as SCM_RIGHTS); False if it could not be sent."""
    slots = take_slots(count)
    payload = encoder.encode(Spawn(count, address_space, slots.numbers))
    try:
        if slots.fds:
            sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", slots.fds))])
        else:
            sock.send(payload)
    except OSError:
        slots.unsent()
        return False
    slots.sent()
    return True


async def receive_messages(sock: trio.socket.SocketType, decoder: msgspec.msgpack.Decoder
                           ) -> AsyncIterator[tuple[Any, list[int]]]:
    """Each frame from a zygote's control socket, decoded, with the
    descriptors it carried, until the end of the stream."""
    while True:
        frame = await receive_frame(sock)
        if frame is None:
            return
        data, fds = frame
        yield decoder.decode(data), fds
