"""``corral serve``: the supervisor process, put together.

One trio nursery owns everything: the pool (and through it the zygote and
every child), the public HTTP listener and the admin listener on a unix
socket. SIGTERM/SIGINT stop accepting, let in-flight requests drain, then
cancel the rest; systemd's ``NOTIFY_SOCKET`` hears READY/STOPPING.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import resource
import signal
import socket
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from supervisor import instrument_checks, loop_clock, state_lock
from supervisor import log as logmod
from supervisor.admin import (
    d1_exports,
    d1_imports,
    durable_objects_api,
    kv_data,
    queue_messages,
    r2_objects,
    render,
    tails_api,
)
from supervisor.admin import storage as storage_admin
from supervisor.admin.api import AdminAPI
from supervisor.bindings import Bindings, purge_bound, r2
from supervisor.bindings.base import Scope
from supervisor.bindings.d1 import D1Handler
from supervisor.bindings.worker_loader import dynamic_workers_of
from supervisor.busy_poll import BusyPoll
from supervisor.calls import http_client
from supervisor.calls.calls import Calls
from supervisor.calls.egress import EgressPolicy
from supervisor.config import ERRORS as config_errors
from supervisor.config import AdminConfig, HttpConfig, ServeConfig, host_port
from supervisor.cron import Scheduler, run_scheduled
from supervisor.edge.assets import AssetServer
from supervisor.edge.http_server import Connection, Request, Server, bind_tcp
from supervisor.edge.ingress import Ingress
from supervisor.edge.websockets import Deliverer
from supervisor.errors import Conflict, NotFound, NotSupported, StartupError, Unavailable
from supervisor.limits.policy import LimitPolicy
from supervisor.log import log, warn
from supervisor.model import PLATFORM, LoadCheck, ScriptRecord
from supervisor.observability.live import serve_live_tail
from supervisor.observability.pipeline import Observability
from supervisor.observability.tail_sessions import TailSessions
from supervisor.packages.resolver import Resolver
from supervisor.packages.store import Lock
from supervisor.pool.bodies import read_all
from supervisor.pool.pool import Pool, PoolUnavailable
from supervisor.store.assets import AssetBlobs
from supervisor.store.lookup import ScriptLookup
from supervisor.store.schema import NewerSchema
from supervisor.store.store import SCRIPT_NOT_FOUND_CODE, Store, namespace_not_found, script_not_found

#: Connections the kernel queues for the HTTP listener before it accepts them.
HTTP_BACKLOG = 1024
#: Largest response body a tenant's fetch() accepts.
MAX_FETCH_RESPONSE = 128 * 1024 * 1024



#: Net container allocations between two young-generation collections
#: (CPython's default is 700).
YOUNG_COLLECTION_THRESHOLD = 10_000


def freeze_startup_heap() -> None:
    """Move everything alive at start-up (modules, config, the store's
    caches, the pool) out of the collector's reach, and collect less often.

    A full collection walks every tracked object; at start-up that is ~40,000
    objects that live as long as the process, and walking them was most of a
    full collection's ~30 ms pause under load (a p99 figure). Frozen, they
    are never walked again; garbage made later is collected as usual.

    The request path makes almost no reference cycles: under wrk at 300
    tenants, 401 young and 36 middle collections in 16,000 requests found
    nothing at all, and the 4 full ones 264 objects, for ~4% of the
    supervisor's CPU (perf). A young collection every 10,000 net allocations
    instead of 700 makes them ~14 times rarer; what cycles there are wait
    a little longer. ``python_gc_*`` on /metrics shows the counts.
    """
    gc.collect()
    gc.freeze()
    _, middle, full = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, full)


def _open_store(path: str) -> Store:
    """The state dir's database, or a :class:`StartupError` that names it: a
    truncated or corrupt ``corral.db`` was a bare traceback (durability
    audit). It is never rewritten here: the operator restores it."""
    _check_not_lost(path)
    try:
        return Store(path)
    except NewerSchema as exc:
        raise StartupError(str(exc)) from None
    except sqlite3.DatabaseError as exc:
        raise StartupError(f"{path} cannot be read as Corral's database ({exc}); it is left as it is: "
                           "restore it from a backup, or move it aside to start empty") from None


def _check_not_lost(path: str) -> None:
    """Refuse a ``corral.db`` with no schema in a state directory that has
    been used (bundles deployed, tenants' storage): its write-ahead log
    (``corral.db-wal``, where recent writes live until a checkpoint) was lost
    or damaged, or the file replaced. Started on, it was a new control plane:
    no script, no route, and every bundle collected as no script's."""
    state = os.path.dirname(path)
    used = [name for name in ("bundles", "storage") if _has_entries(os.path.join(state, name))]
    if not used:
        return
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (version,) = db.execute("PRAGMA user_version").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return  # unreadable or missing: Store() says so, naming the file
    if version == 0:
        raise StartupError(f"{path} holds no Corral data, but {' and '.join(used)} in {state} show the "
                           "state directory was in use: its write-ahead log (corral.db-wal) may be lost "
                           "or damaged. Nothing was changed; restore corral.db and corral.db-wal together "
                           "from a backup, or move the state directory aside to start empty")


def _has_entries(folder: str) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def _check_usage(usage: Any) -> None:
    """The usage database read once at start, or a :class:`StartupError`
    naming it (as :func:`_open_store`): a corrupt ``usage.db`` was accepted
    without a word, then every flush failed and every usage query was a 500."""
    if usage is None:
        return
    try:
        usage.store.check()
    except sqlite3.DatabaseError as exc:
        usage.store.close()
        raise StartupError(f"{usage.store.path} cannot be read as Corral's usage database ({exc}); it is "
                           "left as it is: restore it from a backup, or move it aside to start "
                           "counting anew") from None


class Supervisor:
    """Holds the parts; also the admin API's hooks."""

    def __init__(self, config: ServeConfig, reread: Callable[[], ServeConfig] | None = None) -> None:
        self.config = config
        #: The configuration file read again (supervisor.config.read), for SIGHUP to check.
        self.reread = reread
        os.makedirs(config.state_dir, exist_ok=True)
        self.store = _open_store(os.path.join(config.state_dir, "corral.db"))
        #: Scripts for the request path: cache hits inline, misses in a thread.
        self.scripts = ScriptLookup(self.store)
        self.client = http_client.HTTPClient(
            max_response_bytes=MAX_FETCH_RESPONSE, policy=EgressPolicy(config.outbound),
            connect_timeout=config.outbound.connect_timeout_s,
            read_timeout=config.outbound.read_timeout_s)
        self.bindings = Bindings(config.state_dir, config.storage)
        self.asset_blobs = AssetBlobs(os.path.join(config.state_dir, "assets"))
        self.asset_server = AssetServer(self.asset_blobs)
        self.limit_policy = LimitPolicy(config.limits)
        self.scheduler = Scheduler(self._schedules, self._run_cron)
        self.pool = Pool(
            config,
            calls=lambda pool: Calls(pool, self.scripts, config.limits, self.client, self.asset_server,
                                     dynamic_workers_of(self.bindings.services),
                                     max_server_sockets=config.outbound.max_websockets),
            bindings=self.bindings,
            on_background=self._on_background,
            exact_cpu=True)  # set again below, once observability knows who reads traces
        self._wire_objects_and_queues()
        self.observability = Observability(
            config, self.pool, self.store.get_script, self.pool.calls.limits.defaults_for,
            lambda: {"requests": self.http.requests, "connections": self.http.connections,
                     "in_flight": self.http.in_flight})
        _check_usage(self.observability.usage)
        #: pip in an unprivileged process, into the pool's package store.
        self.resolver = Resolver(self.pool.bundles.package_store)
        self.ingress = Ingress(config, self.pool, self.route, self.scripts,
                               on_trace=self.observability.finished, on_missing=self._not_found,
                               request_ids=self.observability.request_ids.assign,
                               assets=self.asset_server,
                               scheduled=self._scheduled_now if config.scheduled_test_endpoint else None)
        self.ingress.websockets = self.pool.websockets = Deliverer(
            self.pool, self.objects, self.limit_policy, lambda inv: self.observability.finished(inv))
        self.admin = AdminAPI(self.store, self, blobs=self.asset_blobs)
        storage_admin.register(self.admin.router, self.admin.handlers, self.bindings)
        kv_data.register(self.admin.router, self.bindings)
        durable_objects_api.register_objects(self.admin.router, self.admin.handlers, self.bindings)
        r2_objects.register(self.admin.router, self.admin.handlers, self.bindings)
        queue_messages.register(self.admin.router, self.admin.handlers, self.bindings)
        tls = bool(config.admin.tls_cert and config.admin.tls_key)
        d1_exports.register(self.admin.router, self.admin.handlers, self.bindings, "https" if tls else "http")
        d1_imports.register(self.admin.router, self.admin.handlers, self.bindings, "https" if tls else "http")
        #: Live tails made through the API (``wrangler tail``); their sockets are on the TCP listener.
        self.tail_sessions = TailSessions(self.observability.live)
        tails_api.register(self.admin.router, self.admin.handlers, self.tail_sessions, "wss" if tls else "ws")
        self.http = Server(self.ingress.handle, config.http_limits, "ingress")
        #: Requests ended (http.requests - in_flight) when the core keepers were last poked.
        self._ended_at_poke = 0
        # The admin socket is the operator's: its own limits (uploads may be
        # large; the API itself answers 413 past the script size limit).
        #: Live tails (``GET /tail``) streaming on the admin socket.
        self._live_tails = 0
        self.admin_http = Server(self._admin_handle, HttpConfig(max_body_bytes=64 * 2**20), "admin",
                                 error_body=render.transport_error)

    def _wire_objects_and_queues(self) -> None:
        """Durable Objects and queues invoke scripts: hand them the pool, the
        script lookup, the limits and (late-bound) the trace pipeline."""
        from supervisor.bindings.durable_objects import alarms_of, host_of, run_alarm
        from supervisor.bindings.queues import hub_of
        from supervisor.objects.host import Runtime

        services = self.bindings.services
        runtime = Runtime(self.pool, self.scripts, self.limit_policy,
                          lambda inv: self.observability.finished(inv))
        self.objects = host_of(services)
        self.objects.attach(runtime)
        self.alarms = alarms_of(services)
        self.alarms.runner = lambda key, when, retries: run_alarm(services, key, when, retries)
        self.queues = hub_of(services)
        self.queues.attach(runtime, self._queue_consumers)

    def _queue_consumers(self) -> list[tuple[str, str, object]]:
        """(namespace, script, consumer) of every stored script (runs in a thread)."""
        out = []
        for namespace, name in self.store.script_names():
            record = self.store.get_script(namespace, name)
            if record is not None:
                out.extend((namespace, name, consumer) for consumer in record.queue_consumers)
        return out

    # -- routing ---------------------------------------------------------------
    def route(self, host: str, path: str) -> str | None:
        """The platform script routed for ``host`` and ``path`` (the ingress reads it)."""
        return self.store.route_table().match(host, path)

    def _on_background(self, record: ScriptRecord, outcome: str, message: str) -> None:
        """The pool's report of what a script did outside any invocation (made
        before the observability pipeline is, so looked up at the call)."""
        self.observability.background(record, outcome, message)

    def _not_found(self, request: Request, url: str, request_id: str) -> None:
        """A request no script answered: a scriptNotFound event if a route
        names a script that no longer exists."""
        host = request.host.decode("latin-1")
        script = self.store.route_table().match(host, request.target.decode("latin-1").split("?", 1)[0])
        if script is not None:
            self.observability.script_not_found(script, url, request.method, request.headers, request_id)

    # -- admin hooks -------------------------------------------------------------
    async def validate(self, record: ScriptRecord) -> LoadCheck:
        try:
            return await self.pool.validate(record)
        except PoolUnavailable as exc:
            raise Unavailable(f"no sandbox is free to check the script, retry: {exc}") from None

    async def resolve_requirements(self, requirements: list[str]) -> Lock:
        return await self.resolver.resolve(requirements)

    async def purge_script_data(self, namespace: str, name: str) -> None:
        """Delete what is private to a deleted script, so that a script given
        its name later (another tenant, perhaps) starts with none of it: its
        dynamic workers' code, its Cache API entries, its Durable Objects'
        storage and alarms. Called once the script is deleted and retired.
        Account-level data bound by id (KV, D1, R2, queues) is not the
        script's and stays. Raises on a failure, having deleted part at most."""
        from supervisor.bindings import cache, durable_objects

        services = self.bindings.services
        dynamic_workers_of(services).drop_owner(namespace, name)
        await cache.purge_script(services, namespace, name)
        await durable_objects.purge_script(services, namespace, name)

    async def migrate_durable_objects(self, namespace: str, name: str, migrations: Any,
                                      bound_classes: frozenset[str]) -> None:
        """Apply an upload's Durable Object migrations (renamed and deleted
        classes) before its version serves (supervisor.bindings.do_migrations)."""
        from supervisor.bindings import do_migrations

        await do_migrations.apply(self.bindings.services, namespace, name, migrations, bound_classes)

    async def d1_info(self, namespace: str, database_id: str) -> dict[str, int]:
        """A D1 database's ``file_size`` and ``num_tables``, as Cloudflare's API shows one."""
        handler = self.bindings.handlers["d1"]
        assert isinstance(handler, D1Handler)
        return await handler.info(Scope(namespace, database_id))

    async def purge_bound_data(self, kind: str, bound_id: str) -> None:
        """Delete what the platform and every dispatch namespace keep under
        ``bound_id`` for binding type ``kind`` (a deleted KV namespace or D1
        database, or an R2 bucket: that one only when it holds no object,
        else :class:`Conflict`, as Cloudflare deletes only an empty bucket).
        Raises on a failure, having deleted part at most."""
        namespaces = [PLATFORM, *(n.name for n in await trio.to_thread.run_sync(self.store.list_namespaces))]
        services = self.bindings.services
        if kind == "r2_bucket":
            holding = await r2.namespaces_holding(services, namespaces, bound_id)
            if holding:
                where = ", ".join(f"dispatch namespace {n!r}" if n else "the platform's" for n in holding[:5])
                raise Conflict(f"The bucket you tried to delete is not empty: it holds objects ({where}); "
                               "delete them first")
        await purge_bound(services, kind, namespaces, bound_id)

    def script_changed(self, namespace: str, name: str) -> None:
        self.scheduler.scripts_changed()
        self.queues.consumers_changed()
        self.pool.retire_script(namespace, name)
        self.pool.bundles.want_collection()

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
        return await run_scheduled(self.pool, self.limit_policy, record, cron, when,
                                   self.observability.finished)

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
            raise script_not_found(namespace, name)
        try:
            return await self._scheduled_now(record, cron)
        except PoolUnavailable as exc:
            raise Unavailable(f"no sandbox is free to run the trigger, retry: {exc}") from None

    async def _warm_store(self) -> None:
        """Fill the record cache in a worker thread (Store.warm_cache), while
        the server already answers: a request it has not reached yet reads
        its script as any cache miss does."""
        try:
            held = await trio.to_thread.run_sync(self.store.warm_cache)
        except sqlite3.Error as exc:
            warn("store.warm_failed", reason=str(exc))
            return
        log("store.cache_warmed", scripts=held)

    def _bundles_in_use(self) -> set[str]:
        """Versions whose bundle must stay: stored ones, and those live children run."""
        return self.store.stored_versions() | self.pool.versions_in_use()

    def metrics_text(self) -> str:
        self.pool.settle_cpu()  # invocations that ended before the scrape are in it
        return self.observability.metrics.text().decode()

    async def usage(self, namespace: str | None, script: str | None, tag: str | None,
                    since: int, until: int) -> list[dict]:
        usage = self.observability.usage
        if usage is None:
            raise NotSupported("usage is off: set observability.usage = true")
        self.pool.settle_cpu()  # invocations that ended before the query are in it
        return await usage.query(namespace, script, tag, since, until)

    async def _tail_scope_exists(self, namespace: str | None, name: str | None) -> None:
        """For ``GET /tail``: a ``script=`` deployed (in ``namespace=``, else
        anywhere) and a ``namespace=`` that exists, else the 404 saying which."""
        if name:
            if not await trio.to_thread.run_sync(self.store.script_exists, namespace, name):
                where = f" in dispatch namespace {namespace!r}" if namespace else ""
                raise NotFound(f"script {name!r} not found{where}: there is nothing to tail",
                               code=SCRIPT_NOT_FOUND_CODE)
        elif namespace and await trio.to_thread.run_sync(self.store.get_namespace, namespace) is None:
            raise namespace_not_found(namespace)

    async def _admin_handle(self, request: Request, conn: Connection) -> None:
        body = request.body if isinstance(request.body, bytes) else await read_all(
            request.body, self.admin_http.config.max_body_bytes)
        target = request.target.decode("latin-1")
        if request.method == b"GET" and target.split("?", 1)[0].rstrip("/") == "/tail":
            # Streamed, so not through the sans-I/O API (supervisor.observability.tail).
            self.observability.metrics.admin_call("GET", 200)
            self._live_tails += 1  # a stream that never ends: no stop waits for it
            try:
                await serve_live_tail(self.observability.live, target, conn, self._tail_scope_exists)
            finally:
                self._live_tails -= 1
            return
        method = request.method.decode("latin-1")
        # HEAD is GET without the body (RFC 9110 section 9.3.2), for health checks.
        head_only = method == "HEAD"
        status, headers, payload = await self.admin.handle(
            "GET" if head_only else method, target, request.headers, body)
        self.observability.metrics.admin_call(method, status)
        await conn.respond(status, headers, payload, head_only)

    def _admin_tcp(self) -> AdminTCP:  # noqa: F821 - imported where it is needed
        from supervisor.admin.tcp import AdminTCP, tls_context

        admin = self.config.admin
        context = tls_context(admin.tls_cert, admin.tls_key) if admin.tls_cert and admin.tls_key else None
        return AdminTCP(self.admin, context, self.tail_sessions)

    # -- running -------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        instrument_checks.install()
        with loop_clock.installed():
            await self._serve_all(task_status)

    def _keep_cores_awake(self) -> None:
        """The loop is about to wait: while requests are in flight, the answer
        it waits for is imminent, and once one has ended, a keep-alive
        client's next request is; so no core may halt (supervisor.core_keeper).
        An idle server's timers never poke the keepers."""
        http = self.http
        ended = http.requests - http.in_flight
        if http.in_flight or ended != self._ended_at_poke:
            self._ended_at_poke = ended
            self.pool.core_keeper.poke()

    async def _serve_all(self, task_status: trio.TaskStatus) -> None:
        host, port = self.config.http_host_port
        try:
            listener = bind_tcp(host, port)  # listens once it can serve
        except OSError as exc:
            raise StartupError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}") from None
        _refuse_live_socket(self.config.admin_socket_path)
        admin_tcp = await self._bind_admin_tcp()
        admin_bound = False
        # The signals are ours before the admin socket exists (the sign a
        # script takes for "started") and before READY=1 (systemd may send
        # the reload or stop right after it): SIGHUP's default action ends
        # the process. One that comes while starting is acted on once serving.
        signals = trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        try:
            with signals as received:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.observability.run)
                    await nursery.start(self.pool.run)
                    # After the pool's send batch: the frames of a turn leave
                    # before the poll waits for their answers.
                    trio.lowlevel.add_instrument(BusyPoll(
                        self.config.busy_poll_us,
                        self._keep_cores_awake if self.pool.core_keeper.running else None,
                        self.pool.send_deferred))
                    nursery.start_soon(self._warm_store)
                    nursery.start_soon(self.pool.bundles.run, self._bundles_in_use, self.store.package_locks,
                                       self.store.deployed_mains)
                    nursery.start_soon(self.scheduler.run)
                    nursery.start_soon(self.objects.run)
                    nursery.start_soon(self.alarms.run)
                    nursery.start_soon(self.queues.run)
                    listener.listen(HTTP_BACKLOG)
                    admin_listener = _unix_listener(self.config.admin_socket_path)
                    admin_bound = True
                    _socket_access(self.config.admin_socket_path, self.config.admin)
                    if admin_tcp is not None:
                        await nursery.start(admin_tcp[0].serve, admin_tcp[1])
                    freeze_startup_heap()
                    await nursery.start(self.ingress.run)
                    with trio.CancelScope() as accepting:
                        await nursery.start(self.http.serve, listener)
                        nursery.start_soon(self.admin_http.serve, admin_listener)
                        bound = listener.getsockname()
                        log("serve.ready", http=f"{bound[0]}:{bound[1]}",
                            admin_socket=self.config.admin_socket_path, state_dir=self.config.state_dir)
                        _notify("READY=1")
                        task_status.started(bound)
                        await _wait_for_stop(received, self._reconsider_config)
                        log("serve.stopping", in_flight=self.http.in_flight)
                        _notify("STOPPING=1")
                        self.http.begin_drain(listener)
                        self.admin_http.begin_drain(admin_listener)
                        self.queues.drain()
                        self.scheduler.drain()
                        with trio.move_on_after(self.config.drain_s):
                            while self._under_way():
                                await trio.sleep(0.02)
                        accepting.cancel()  # idle keep-alive connections close here
                    nursery.cancel_scope.cancel()
        finally:
            listener.close()
            # The pool's tasks are over: every child was killed; now their cgroups go.
            self.pool.memory.close()
            self.bindings.close()
            self.store.close()
            if admin_bound:  # ours: never what was at the path before
                try:
                    os.unlink(self.config.admin_socket_path)
                except OSError:
                    pass

    def _under_way(self) -> bool:
        """Whether a stop still has something to wait for: a request in
        flight or on its way in (ingress or admin), a queue batch or cron run
        under way, or the ``waitUntil`` work
        of an answered request, which would be lost with its child (a KV
        write after the response), or trace events on their way to tail
        workers. Not what is left of an invocation that failed (its wall
        time: a handler stuck in C may never end)."""
        admin = self.admin_http.in_flight - self._live_tails
        if self.http.in_flight or self.http.starting or admin or self.admin_http.starting:
            return True
        if self.queues.delivering or self.scheduler.running:  # batches and cron runs under way
            return True
        if any(inv.response_end is not None and inv.error is None
               for child in self.pool.children.values() for inv in child.invocations.values()):
            return True
        # The ended invocations' traces: complete now (not in the watchdog's
        # 25 ms), so that their tail workers get them and usage counts them.
        self.pool.settle_cpu()
        return self.observability.tails.pending

    async def _bind_admin_tcp(self) -> tuple[Any, list[Any]] | None:
        """The TCP admin listener bound (served once the rest is up), or a
        :class:`StartupError` naming its address (an unknown host or a port
        in use was a traceback). Bound before the pool starts, as the HTTP
        listener is: a start that fails on it leaves no spares being forked."""
        if not self.config.admin.tcp:
            return None
        host, port = host_port(self.config.admin.tcp, "admin.tcp")
        server = self._admin_tcp()
        try:
            return server, await server.listen(host, port)
        except OSError as exc:
            raise StartupError(f"cannot listen for the admin API on admin.tcp {self.config.admin.tcp}: "
                               f"{exc.strerror or exc}") from None

    def _reconsider_config(self) -> None:
        """SIGHUP: settings are read once, at start, and the running server
        keeps them; the file is read again only to tell the operator, now
        rather than at the next restart, that it no longer reads (the
        reason) or that its changes wait for a restart (which settings)."""
        if self.reread is None:
            return
        try:
            config = self.reread()
        except config_errors as exc:
            warn("serve.reload_config_invalid", reason=str(exc),
                 kept="the running configuration: fix the file before the next restart")
            return
        changed = [name for name in ServeConfig.__struct_fields__
                   if getattr(config, name) != getattr(self.config, name)]
        if changed:
            warn("serve.reload_config_changed", changed=changed,
                 kept="the running configuration: the changes apply at the next restart")


async def _wait_for_stop(signals: AsyncIterator[int], on_reload: Callable[[], None]) -> None:
    """Until SIGTERM or SIGINT. SIGHUP is a reload: scripts, routes and
    namespaces are already applied live from the store, so there is nothing
    to apply (``on_reload`` checks the config file); systemd still hears
    RELOADING=1 then READY=1."""
    async for signum in signals:
        if signum != signal.SIGHUP:
            return
        log("serve.reload")
        on_reload()
        _notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        _notify("READY=1")


def _refuse_live_socket(path: str) -> None:
    """:class:`StartupError` if a server answers on the admin socket's path:
    replacing it (as a stale one is, see :func:`_unix_listener`) would leave
    that server running with no way to manage it."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except OSError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return  # stale: nothing listens there
    raise StartupError(f"the admin socket {path} is in use by a running server; stop it first, "
                       "or give this one another --admin-socket")


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
        sock.listen(128)
        os.replace(staging, path)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise StartupError(f"cannot make the admin socket {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    return sock


def _socket_access(path: str, admin: AdminConfig) -> None:
    """Owner-only by default; group read/write when configured (the group
    may then deploy code: give it only to the platform's deploy tooling)."""
    if admin.socket_access == "group":
        try:
            if admin.socket_group:
                import grp

                os.chown(path, -1, grp.getgrnam(admin.socket_group).gr_gid)
            os.chmod(path, 0o660)
        except (OSError, KeyError) as exc:  # a group this user is not in, say
            raise StartupError(f"cannot give the admin socket {path} to group "
                               f"{admin.socket_group!r}: {exc}") from None
        blocked = _untraversable_by_group(os.path.dirname(os.path.abspath(path)))
        if blocked is not None:
            warn("serve.admin_socket_unreachable", socket=path, folder=blocked,
                 why="the group cannot enter this folder (the state directory is private): set "
                     "admin_socket to a path outside it, such as /run/corral/admin.sock")
    elif admin.socket_access != "owner":
        raise ValueError(f"admin.socket_access must be 'owner' or 'group', got {admin.socket_access!r}")


def _untraversable_by_group(folder: str) -> str | None:
    """The first folder on the way to ``folder`` (itself included) that a
    group member other than its owner cannot enter, or None."""
    path = "/"
    for part in [p for p in folder.split("/") if p]:
        path = os.path.join(path, part)
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return path
        if not mode & 0o011:  # neither group nor others may search it
            return path
    return None


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


def run(config: ServeConfig, reread: Callable[[], ServeConfig] | None = None) -> int:
    """Entry point of ``corral serve``. :class:`StartupError` when it cannot
    start: the state directory or an address is another server's, or a part
    of the state directory cannot be made (``STATE/packages`` a file, say).
    ``reread``: the configuration file read again, for SIGHUP to check."""
    logmod.setup()
    _raise_fd_limit()
    _check_fd_budget(config)
    lock = state_lock.hold(config.state_dir)
    try:
        try:
            supervisor = Supervisor(config, reread)
        except OSError as exc:
            raise StartupError(f"cannot set up the state directory {config.state_dir}: {exc}") from None
        try:
            trio.run(supervisor.run, clock=loop_clock.PerfCounterClock())
        except BaseExceptionGroup as group:
            failed = _startup_error(group)
            if failed is None:
                raise
            raise failed from None
    finally:
        os.close(lock)
    return 0


def _raise_fd_limit() -> None:
    """The open-file limit up to its hard limit. The supervisor holds a
    descriptor or two per connection, child, upstream connection and
    database, and the usual soft limit (1,024) is what one tenant's few
    thousand waiting fetches exhaust, for every tenant; systemd's default
    hard limit is 524,288 (scripts/corral.service asks for more). Raising the
    soft limit needs no privilege; the children set their own (sandbox.jail)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        warn("serve.fd_limit_kept", soft=soft, hard=hard, reason=str(exc))
        return
    log("serve.fd_limit_raised", soft=soft, to=target)


def _check_fd_budget(config: ServeConfig) -> None:
    """Say so when the client connections allowed could take most of the
    open-file limit on their own: each also holds its invocation's upstream
    connections, and a full table stops every tenant's accepts and cold
    starts (``ingress.accept_failed``)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    allowed = config.http_limits.max_connections
    if soft != resource.RLIM_INFINITY and allowed > soft // 2:
        warn("serve.fd_limit_low", open_files=soft, max_connections=allowed,
             hint="raise the open-file limit (scripts/corral.service sets LimitNOFILE) or lower "
                  "http_limits.max_connections to at most half of it")


def _startup_error(group: BaseExceptionGroup) -> StartupError | None:
    """The :class:`StartupError` a start-up step raised inside the nursery,
    which wraps it in an exception group: raised as it is, ``serve`` says
    its message instead of printing a traceback."""
    found, _ = group.split(StartupError)
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found
