"""``corral serve``: the supervisor process, put together.

One trio nursery owns everything: the pool (and through it the zygote and
every child), the public HTTP listener and the admin listener on a unix
socket. SIGTERM/SIGINT stop accepting, let in-flight requests drain, then
cancel the rest; systemd's ``NOTIFY_SOCKET`` hears READY/STOPPING.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
import time

import trio

from supervisor.calls import http_client
from supervisor import log as logmod
from supervisor.admin.api import AdminAPI
from supervisor.errors import NotFound, Unavailable
from supervisor.calls.calls import Calls
from supervisor.config import HttpConfig, ServeConfig
from supervisor.calls.egress import EgressPolicy
from supervisor.edge.http_server import Connection, Request, Server, listen_tcp
from supervisor.edge.ingress import Ingress
from supervisor.pool.invocation import Invocation
from supervisor.log import log, warn
from supervisor.pool.pool import Pool, PoolUnavailable
from supervisor.model import ScriptRecord
from supervisor.pool.bodies import read_all
from supervisor.store.lookup import ScriptLookup
from supervisor.store.store import Store
from supervisor.assets.store import AssetStore
from supervisor.cron import Scheduler, run_scheduled
from supervisor.edge.assets import AssetServer
from supervisor.limits.policy import LimitPolicy

DRAIN_S = 10.0
#: Largest response body a tenant's fetch() accepts.
MAX_FETCH_RESPONSE = 128 * 1024 * 1024


class Supervisor:
    """Holds the parts; also the admin API's hooks."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        os.makedirs(config.state_dir, exist_ok=True)
        self.store = Store(os.path.join(config.state_dir, "corral.db"))
        #: Scripts for the request path: cache hits inline, misses in a thread.
        self.scripts = ScriptLookup(self.store)
        self.client = http_client.HTTPClient(
            max_response_bytes=MAX_FETCH_RESPONSE, policy=EgressPolicy(config.outbound),
            connect_timeout=config.outbound.connect_timeout_s,
            read_timeout=config.outbound.read_timeout_s)
        self.asset_store = AssetStore(os.path.join(config.state_dir, "assets"))
        self.asset_server = AssetServer(self.asset_store)
        self.limit_policy = LimitPolicy(config.limits)
        self.scheduler = Scheduler(self._schedules, self._run_cron)
        self.pool = Pool(
            config,
            calls=lambda pool: Calls(pool, self.scripts, config.limits, self.client, self.asset_server),
            on_event=self._log_event if config.log_invocations else None,
            # cpuTime per invocation is exact only when someone reads traces.
            exact_cpu=config.log_invocations)
        self.ingress = Ingress(config, self.pool, self.route, self.scripts,
                               on_trace=self._log_trace if config.log_invocations else None,
                               assets=self.asset_server,
                               scheduled=self._scheduled_now if config.scheduled_test_endpoint else None)
        self.admin = AdminAPI(self.store, self)
        self.http = Server(self.ingress.handle, config.http_limits, "ingress")
        # The admin socket is the operator's: its own limits (uploads may be
        # large; the API itself answers 413 past the script size limit).
        self.admin_http = Server(self._admin_handle, HttpConfig(max_body_bytes=64 * 2**20), "admin")

    # -- routing ---------------------------------------------------------------
    def route(self, host: str, path: str) -> str | None:
        """The platform script routed for ``host`` and ``path`` (the ingress reads it)."""
        return self.store.route_table().match(host, path)

    def _log_trace(self, inv: "Invocation") -> None:
        log("invocation", trace=inv.trace())

    def _log_event(self, trace: dict) -> None:
        log("invocation", trace=trace)

    # -- admin hooks -------------------------------------------------------------
    async def validate(self, record: ScriptRecord) -> str | None:
        try:
            return await self.pool.validate(record)
        except PoolUnavailable as exc:
            raise Unavailable(f"no sandbox is free to check the script, retry: {exc}") from None

    def script_changed(self, namespace: str, name: str) -> None:
        self.scheduler.scripts_changed()
        self.pool.retire_script(namespace, name)
        self.pool.bundles.want_collection()

    def store_assets(self, namespace: str, name: str, files: dict[str, bytes]) -> dict:
        """Admin hook: content-addressed asset blobs (in a worker thread); the manifest."""
        from supervisor.model import AssetEntry
        return {path: AssetEntry(self.asset_store.put(namespace, name, data), len(data))
                for path, data in files.items()}

    # -- cron triggers -------------------------------------------------------------
    def _schedules(self) -> list[tuple[str, str, list[str]]]:
        """Every script with cron triggers (runs in a worker thread)."""
        out = []
        for namespace, name in self.store.script_names():
            record = self.store.get_script(namespace, name)
            if record is not None and record.crons:
                out.append((namespace, name, list(record.crons)))
        return out

    async def _scheduled_now(self, record: ScriptRecord, cron: str, when: float | None = None) -> dict:
        on_trace = self._log_trace if self.config.log_invocations else None
        return await run_scheduled(self.pool, self.limit_policy, record, cron, when, on_trace)

    async def _run_cron(self, namespace: str, name: str, cron: str, when: float) -> None:
        record = await self.scripts.load(namespace, name)
        if record is None or cron not in record.crons:
            return
        try:
            trace = await self._scheduled_now(record, cron, when)
        except PoolUnavailable as exc:
            warn("cron.unavailable", script=name, namespace=namespace, cron=cron, reason=str(exc))
            return
        log("cron.ran", script=name, namespace=namespace, cron=cron, outcome=trace.get("outcome"))

    async def run_scheduled(self, namespace: str, name: str, cron: str) -> dict:
        """Admin hook (``corral trigger``): one run of ``scheduled()``; its trace event."""
        record = await self.scripts.load(namespace, name)
        if record is None:
            raise NotFound(f"script {name!r} does not exist")
        try:
            return await self._scheduled_now(record, cron)
        except PoolUnavailable as exc:
            raise Unavailable(f"no sandbox is free to run the trigger, retry: {exc}") from None

    def _bundles_in_use(self) -> set[str]:
        """Versions whose bundle must stay: stored ones, and those live children run."""
        stored = {self.store.get_version(ns, name) for ns, name in self.store.script_names()}
        return {v for v in stored if v} | self.pool.versions_in_use()

    def metrics_text(self) -> str:
        snap = self.pool.snapshot()
        lines = [
            "# HELP corral_children Sandboxed child processes alive.",
            "# TYPE corral_children gauge",
            f"corral_children {snap['children']}",
            "# TYPE corral_spare_children gauge",
            f"corral_spare_children {snap['spares']}",
            "# TYPE corral_warm_scripts gauge",
            f"corral_warm_scripts {snap['warm']}",
            "# TYPE corral_cold_starts_total counter",
            f"corral_cold_starts_total {snap['cold_starts']}",
            "# TYPE corral_invocations_total counter",
            f"corral_invocations_total {snap['invocations']}",
            "# TYPE corral_http_requests_total counter",
            f"corral_http_requests_total {self.http.requests}",
            "# TYPE corral_http_connections gauge",
            f"corral_http_connections {self.http.connections}",
        ]
        return "\n".join(lines) + "\n"

    async def _admin_handle(self, request: Request, conn: Connection) -> None:
        body = request.body if isinstance(request.body, bytes) else await read_all(
            request.body, self.admin_http.config.max_body_bytes)
        status, headers, payload = await self.admin.handle(
            request.method.decode("latin-1"), request.target.decode("latin-1"), request.headers, body)
        await conn.respond(status, headers, payload)

    # -- running -------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.config.http_host_port
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.pool.run)
                nursery.start_soon(self.pool.bundles.run, self._bundles_in_use)
                nursery.start_soon(self.scheduler.run)
                listener = listen_tcp(host, port)
                admin_listener = _unix_listener(self.config.admin_socket_path)
                with trio.CancelScope() as accepting:
                    await nursery.start(self.http.serve, listener)
                    nursery.start_soon(self.admin_http.serve, admin_listener)
                    bound = listener.getsockname()
                    log("serve.ready", http=f"{bound[0]}:{bound[1]}",
                        admin_socket=self.config.admin_socket_path, state_dir=self.config.state_dir)
                    _notify("READY=1")
                    task_status.started(bound)
                    await _wait_for_stop()
                    log("serve.stopping", in_flight=self.http.in_flight)
                    _notify("STOPPING=1")
                    listener.close()
                    self.http.draining = True
                    with trio.move_on_after(DRAIN_S):
                        while self.http.in_flight:
                            await trio.sleep(0.02)
                    accepting.cancel()  # idle keep-alive connections close here
                nursery.cancel_scope.cancel()
        finally:
            # The pool's tasks are over: every child was killed; now their cgroups go.
            self.pool.memory.close()
            self.store.close()
            try:
                os.unlink(self.config.admin_socket_path)
            except OSError:
                pass


async def _wait_for_stop() -> None:
    """Until SIGTERM or SIGINT. SIGHUP is a reload: scripts, routes and
    namespaces are already applied live from the store, so there is nothing
    to re-read; systemd still hears RELOADING=1 then READY=1."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum != signal.SIGHUP:
                return
            log("serve.reload")
            _notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
            _notify("READY=1")


def _unix_listener(path: str) -> socket.socket:
    """The admin socket: created fresh, owner-only (it can deploy code)."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bind and listen under a temporary name, then rename: the path never
    # exists without a listener behind it.
    staging = f"{path}.{os.getpid()}"
    old = os.umask(0o177)
    try:
        sock.bind(staging)
    finally:
        os.umask(old)
    sock.listen(128)
    os.replace(staging, path)
    return sock


def _notify(state: str) -> None:
    """sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            warn("notify.failed", state=state, reason=str(exc))


def run(config: ServeConfig) -> int:
    """Entry point of ``corral serve``."""
    logmod.setup()
    supervisor = Supervisor(config)
    trio.run(supervisor.run)
    return 0
