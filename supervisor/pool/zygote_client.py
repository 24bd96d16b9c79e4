"""Starting, talking to and restarting the zygote.

The zygote is the supervisor's own child process; it forks the sandboxed
children. This module owns its life: it starts it with a scrubbed
environment and a fresh random hash seed (forked children share the
zygote's seed, so a restart is also how the seed rotates), receives each new
child's channel and pidfd over SCM_RIGHTS, forwards exit statuses, and
restarts the zygote if it dies, with a back-off.

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
other ``zygote_max_children - 1`` children of its generation, i.e. tenants
cold-started in the same window; children keep their seed while they
serve. A zygote per dispatch namespace would separate namespaces fully,
but costs a zygote's private memory and start-up (a second or so of CPU)
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
from supervisor.log import error, log, warn

SpawnedCallback = Callable[[int, socket.socket, int], None]
#: ``(key, pid, control socket, pidfd, generation)`` of a new package zygote.
PackageZygoteCallback = Callable[[str, int, socket.socket, int, int], None]
ExitedCallback = Callable[[int, int], None]


class ZygoteClient:
    """One zygote at a time; :meth:`run` keeps it alive until cancelled."""

    def __init__(self, address_space_mb: int, on_spawned: SpawnedCallback, on_exited: ExitedCallback,
                 on_restart: Callable[[], None], max_age_s: float = 3600.0,
                 max_children: int = 1000, on_ready: Callable[[], None] | None = None,
                 bundles_dir: str = "", packages_dir: str = "",
                 on_package_zygote: PackageZygoteCallback | None = None) -> None:
        #: Children's RLIMIT_AS above the zygote's mapping (see memory_limits).
        self.address_space_mb = address_space_mb
        self.max_age_s = max_age_s
        self.max_children = max(1, max_children)
        #: Trees of the state dir the zygote shows read-only in the jail's file view.
        self.bundles_dir = bundles_dir
        self.packages_dir = packages_dir
        self._on_ready = on_ready
        self._on_package_zygote = on_package_zygote
        self._forked = 0  # children of this generation, package zygotes' included
        self._asked = 0  # children requested of the current zygote
        self._life: trio.CancelScope | None = None
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
        count = min(count, self.max_children - self._asked)
        if self._sock is None or count <= 0:
            return False
        try:
            self._sock.send(self._encoder.encode(Spawn(count)))
        except (BlockingIOError, OSError):
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
        package zygotes, which share its hash seed): rotate when enough have."""
        self._forked += 1
        if self._forked >= self.max_children and self._life is not None:
            self._life.cancel()  # its seed has served enough children

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        backoff = 0.05
        started = False
        while True:
            began = trio.current_time()
            # A zygote lives at most max_age: forked children share its hash
            # seed, so a fresh zygote (fresh PYTHONHASHSEED) bounds how long
            # one seed serves new tenants.
            with trio.move_on_after(self.max_age_s) as aged:
                self._life = aged
                self._asked = 0
                self._forked = 0
                try:
                    await self._run_once(task_status if not started else None)
                    started = True
                except OSError as exc:
                    error("zygote.failed", reason=str(exc))
                finally:
                    self._sock = None
                    self.ready = trio.Event()
                    self._life = None
            self.generation += 1
            self._on_restart()
            if aged.cancelled_caught:
                started = True
                spent = self._asked >= self.max_children
                log("zygote.rotated", generation=self.generation - 1,
                    reason="children" if spent else "age",
                    **({"children": self._asked} if spent else {"age_s": self.max_age_s}))
                backoff = 0.05
                continue
            if trio.current_time() - began > 10:
                backoff = 0.05
            warn("zygote.restarting", after_s=backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _run_once(self, task_status: trio.TaskStatus | None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONHASHSEED": str(secrets.randbelow(2**32 - 1) + 1),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if os.environ.get("CORRAL_LANDLOCK"):  # see sandbox.landlock: "off" to do without
            env["CORRAL_LANDLOCK"] = os.environ["CORRAL_LANDLOCK"]
        process = subprocess.Popen(
            [sys.executable, "-m", "sandbox.zygote", "--control-fd", str(theirs.fileno()),
             "--address-space-mb", str(self.address_space_mb),
             "--bundles-dir", self.bundles_dir, "--packages-dir", self.packages_dir],
            pass_fds=[theirs.fileno()],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        sock = trio.socket.from_stdlib_socket(ours)
        try:
            with sock:
                async for message, fds in receive_messages(sock, self._decoder):
                    if isinstance(message, Spawned):
                        if len(fds) != 2:
                            for fd in fds:
                                os.close(fd)
                            error("zygote.bad_spawn", pid=message.pid, fds=len(fds))
                            continue
                        channel = socket.socket(fileno=fds[0])
                        self._on_spawned(message.pid, channel, fds[1])
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
                    elif isinstance(message, ZygoteReady):
                        if message.version != PROTOCOL_VERSION:
                            error("zygote.version_mismatch", got=message.version,
                                  want=PROTOCOL_VERSION)
                            return
                        self.pid = message.pid
                        self.jail = message.jail
                        self._sock = ours
                        self.ready.set()
                        log("zygote.ready", pid=message.pid, generation=self.generation,
                            **message.jail)
                        _warn_weaker_jail(message.jail)
                        if self._on_ready is not None:
                            self._on_ready()
                        if task_status is not None:
                            task_status.started()
                            task_status = None
        finally:
            with trio.CancelScope(shield=True):
                if process.poll() is None:
                    process.kill()
                await trio.to_thread.run_sync(process.wait)
            log("zygote.exited", pid=process.pid, status=process.returncode)


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
