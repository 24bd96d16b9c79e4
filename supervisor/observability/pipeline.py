"""The one place a finished invocation goes: fanned out to every consumer.

Metrics and usage read the invocation tree directly (no event is built for
them); the JSON trace event is built once, and only when something reads
it: the log (``log_invocations``), a live tail, a tail worker of a script in
the tree, or the OTLP exporter.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from protocol.messages import RequestEvent
from supervisor.lifecycle import Outcome
from supervisor.log import log, warn
from supervisor.model import PLATFORM, ScriptRecord
from supervisor.observability import traces
from supervisor.observability.metrics import BUSY, Metrics
from supervisor.observability.request_id import RequestIds
from supervisor.observability.tail import LiveTail, TailDelivery
from supervisor.observability.usage import Usage

if TYPE_CHECKING:
    from protocol.messages import Limits
    from supervisor.config import ServeConfig
    from supervisor.pool.invocation import Invocation
    from supervisor.pool.pool import Pool


class Observability:
    def __init__(self, config: ServeConfig, pool: Pool,
                 lookup: Callable[[str, str], ScriptRecord | None],
                 limits_for: Callable[[ScriptRecord], Limits],
                 http_stats: Callable[[], dict[str, int]]) -> None:
        cfg = config.observability
        self.config = cfg
        self.log_invocations = config.log_invocations
        self.lookup = lookup
        self.metrics = Metrics(lambda: _pool_snapshot(pool), http_stats, cfg.metrics_script_labels)
        pool.observer = self.metrics
        self.usage = Usage(os.path.join(config.state_dir, "usage.db"), cfg.usage_retention_days,
                           cfg.usage_flush_s, self.metrics.usage_dropped.inc) if cfg.usage else None
        self.live = LiveTail(cfg, self.metrics)
        self.live.on_first = self._exact_cpu
        self.tails = TailDelivery(pool, lookup, limits_for, cfg, self.metrics, self.tail_finished)
        self.request_ids = RequestIds(cfg.trusted_proxies)
        self.otel: Any = None
        from supervisor.observability import otel_config

        self._otel_wanted = otel_config.configured(cfg.otlp)
        self._pool = pool
        # cpuTime is exact only when something reads it (each end costs a
        # syscall); tail consumers and live tails switch it on as they appear.
        pool.set_exact_cpu(bool(config.log_invocations or self.usage is not None or self._otel_wanted))

    def _exact_cpu(self) -> None:
        self._pool.set_exact_cpu(True)

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """The tasks of the consumers (usage flusher, tail delivery, OTLP)."""
        try:
            async with trio.open_nursery() as nursery:
                if self.usage is not None:
                    await nursery.start(self.usage.run)
                await nursery.start(self.tails.run)
                if self._otel_wanted:
                    from supervisor.observability.otel import OtelExport

                    self.otel = OtelExport(self.config.otlp, self.metrics.otel_dropped.inc)
                    log("otel.exporting", endpoint=self.config.otlp.endpoint or "(OTEL_EXPORTER_OTLP_* "
                                                                                "environment)")
                task_status.started()
        finally:
            if self.otel is not None:
                otel, self.otel = self.otel, None
                with trio.CancelScope(shield=True), trio.move_on_after(6):
                    await trio.to_thread.run_sync(otel.shutdown, abandon_on_cancel=True)

    # -- finished invocations ----------------------------------------------------------
    def finished(self, inv: Invocation) -> None:
        """A client request's invocation tree is over (response and waitUntil work)."""
        try:
            self._finished(inv, top_level=True)
        except Exception as exc:  # noqa: BLE001 - a consumer's bug must not fail requests
            warn("observability.failed", reason=f"{type(exc).__name__}: {exc}")

    def tail_finished(self, inv: Invocation) -> None:
        """A tail worker's invocation: counted and billed, never tailed (no loops)."""
        try:
            self._finished(inv, top_level=False, tails=False)
        except Exception as exc:  # noqa: BLE001
            warn("observability.failed", reason=f"{type(exc).__name__}: {exc}")

    def _finished(self, inv: Invocation, top_level: bool, tails: bool = True) -> None:
        nodes = traces.nodes(inv)
        # Each node's outcome and wall time once, for both consumers (they
        # are read for every invocation of every request).
        figures = [(node, traces.outcome_of(node), node.wall_ms) for node in nodes]
        # A client's request is counted and timed as one (corral_requests_total);
        # a cron run, a queue batch or an alarm is an invocation, not a request.
        request = top_level and (inv.event is None or isinstance(inv.event, RequestEvent))
        self.metrics.observe(figures, top_level=request)
        if self.usage is not None:
            self.usage.record(figures)
        consumers = [(node, traces.consumers_of(node.record)) for node in nodes
                     if node.record.tail_consumers] if tails else []
        if not (self.log_invocations or self.live.active or consumers or self.otel is not None):
            return
        event = traces.build(inv)
        if self.log_invocations:
            log("invocation", trace=event)
        if self.live.active:
            self.live.publish(event)
        if consumers:
            self._exact_cpu()
            wanted = {id(node) for node, _ in consumers}
            for node, node_event in traces.pairs(inv, event):
                if id(node) in wanted:
                    self.tails.submit(traces.consumers_of(node.record), traces.with_unredacted(node_event, node))
        if self.otel is not None:
            self.otel.submit(event, traces.fetch_tree(inv))

    def background(self, record: ScriptRecord, outcome: str, message: str) -> None:
        """What a script did outside any invocation (a task left running after
        its response, killed for its CPU), as an event of its own."""
        self.event(traces.background(record, outcome, message))

    def event(self, event: dict[str, Any]) -> None:
        """An event with no invocation behind it (a background kill, scriptNotFound)."""
        self.metrics.observe_event(event)
        if self.log_invocations:
            log("invocation", trace=event)
        if self.live.active:
            self.live.publish(event)
        name = event.get("scriptName")
        if name and event.get("outcome") != Outcome.SCRIPT_NOT_FOUND:
            record = self.lookup(event.get("dispatchNamespace") or PLATFORM, name)
            if record is not None and record.tail_consumers:
                self.tails.submit(traces.consumers_of(record), event)
        if self.otel is not None:
            self.otel.submit(event, {"fetches": [], "children": []})

    def script_not_found(self, script: str, url: str, method: bytes,
                         headers: list[tuple[bytes, bytes]], request_id: str) -> None:
        self.event(traces.script_not_found(script, url, method, headers, request_id))


def _pool_snapshot(pool: Pool) -> dict[str, Any]:
    snap = dict(pool.snapshot())
    snap[BUSY] = sum(1 for child in list(pool.children.values()) if child.invocations)
    return snap
