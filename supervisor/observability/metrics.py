"""``GET /metrics``: Prometheus text exposition from prometheus-client.

prometheus-client fits trio as it is: updating a metric is a few dict and
lock operations with no I/O, and exposition (``generate_latest``) is a pure
function of the registry, run on the admin request's task. Two things are
read at scrape time by custom collectors instead: what only the pool knows
(children by state), and the figures every invocation moves, which are kept
as plain counts by :mod:`supervisor.observability.tally` because the request
path could not afford a lock and a handful of calls per figure.

Cardinality is bounded: labels are namespaces (operator-created), outcomes,
handler types and fixed reason sets. Per-script labels, which grow with
tenants, are off unless ``observability.metrics_script_labels`` is set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from supervisor.lifecycle import ChildState, KillReason
from supervisor.observability.tally import InvocationTally

if TYPE_CHECKING:
    from supervisor.pool.invocation import Invocation

#: Seconds: sub-millisecond hello-worlds up to the 60 s wall limit.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0)
CPU_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
               0.5, 1.0, 5.0, 30.0)
COLD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

#: Why children end, as a fixed set of labels: every :class:`KillReason`
#: (a child's end reason is one, possibly followed by ``": detail"``), longest
#: first so that a reason another one begins with never shadows it.
KILL_REASONS: tuple[str, ...] = tuple(sorted((reason.value for reason in KillReason), key=len, reverse=True))

#: The ``corral_pool_children`` gauge's state labels (``starting``: forked, no Hello yet). Each is read from the
#: pool snapshot's key of that name or its plural (``spares``); :data:`BUSY`
#: is added to the snapshot by the pipeline (children with invocations in flight).
BUSY = "busy"
POOL_STATES = (ChildState.STARTING.value, "spare", "warm", BUSY, "retired")


def kill_reason(reason: str) -> str:
    """The ``corral_children_ended`` label for a child's end reason."""
    for known in KILL_REASONS:
        if reason.startswith(known):
            return known
    return "other"


def _kind(inv: Invocation) -> str:
    event = inv.event
    return "fetch" if event is None else type(event).__struct_config__.tag


class Metrics:
    """The registry, and the calls that move it."""

    def __init__(self, pool_snapshot: Callable[[], dict[str, Any]],
                 http_stats: Callable[[], dict[str, int]], script_labels: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.cold_starts = Histogram("corral_cold_start_seconds", "Time from assigning a spare to a "
                                     "script to the script being loaded, for an invocation (an upload's "
                                     "validation is no cold start).", ["result"],
                                     buckets=COLD_BUCKETS, registry=r)
        # How fast the pool refills: in a storm of first requests, requests
        # wait for spares, and a spare is ready only once both its own set-up
        # and the supervisor's part are done. The supervisor's part is kernel
        # work (a memory cgroup made and joined, a perf counter opened) that
        # the kernel serialises; under cgroup v1 a join can wait for an RCU
        # grace period while it holds the lock every other one needs.
        self.spares_ready = Histogram("corral_spare_ready_seconds", "Time from a new child reaching "
                                      "the supervisor (its fork announced) to its Hello being read.",
                                      buckets=COLD_BUCKETS, registry=r)
        # The cold starts that found no spare ready: a burst of first
        # requests that outran the refill shows here, as the wait before its
        # load began (corral_cold_start_seconds is the load).
        self.spare_waits = Histogram("corral_spare_wait_seconds", "Time a cold start (or an "
                                     "upload's validation) waited for a spare sandbox, by the "
                                     "zygote it came from (base or package): 0 when one was ready.",
                                     ["zygote"], buckets=(0.0, *COLD_BUCKETS), registry=r)
        self.child_limits = Histogram("corral_child_limits_seconds", "Of that, the time putting "
                                      "the child under its memory cgroup and CPU meter took.",
                                      buckets=COLD_BUCKETS, registry=r)
        self.cgroup_joins = Counter("corral_children_cgroup_joins", "New children put into their "
                                    "memory cgroup, by who moved them: 'itself' (a slot made ahead, "
                                    "joined first thing: the fast path) or 'supervisor'.", ["by"],
                                    registry=r)
        self.children_ended = Counter("corral_children_ended", "Sandboxed children that ended, by "
                                      "reason.", ["reason"], registry=r)
        self.tail_events = Counter("corral_tail_events", "Trace events for tail workers, by fate.",
                                   ["result"], registry=r)
        self.tail_batches = Counter("corral_tail_batches", "Tail worker invocations, by outcome.",
                                    ["outcome"], registry=r)
        self.live_tails_dropped = Counter("corral_live_tails_dropped", "Live tails disconnected "
                                          "because they fell too far behind.", registry=r)
        self.live_events_dropped = Counter("corral_live_tail_events_dropped", "Events not sent to "
                                           "live tails that fell behind.", registry=r)
        self.admin_calls = Counter("corral_admin_requests", "Admin API requests, by method and "
                                   "status class.", ["method", "status"], registry=r)
        self.otel_dropped = Counter("corral_otel_events_dropped", "Trace events not exported over "
                                    "OTLP because the export queue was full.", registry=r)
        self.usage_dropped = Counter("corral_usage_rows_dropped", "Usage rows that could not be "
                                     "written to the store.", registry=r)
        #: The figures every invocation moves, kept cheaply (see tally.py).
        self.tally = InvocationTally(LATENCY_BUCKETS, CPU_BUCKETS, script_labels)
        r.register(self.tally)
        r.register(_PoolCollector(pool_snapshot, http_stats))
        # The supervisor process itself, as any Python service exports it:
        # python_gc_*, process_cpu_seconds_total, process_resident_memory_bytes...
        GCCollector(registry=r)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def observe(self, figures: list[tuple[Invocation, str, float]], top_level: bool = True) -> None:
        """A finished invocation tree: each invocation (from :func:`traces.nodes`,
        caller first) with its outcome (:func:`traces.outcome_of`) and wall time."""
        tally = self.tally
        if top_level:
            _, outcome, wall_ms = figures[0]
            tally.request(outcome, wall_ms)
        for node, outcome, wall_ms in figures:
            tally.invocation(node.record.namespace or "", outcome, _kind(node),
                             wall_ms, node.cpu_ns, node.subrequests, node.record.name)

    def observe_event(self, event: dict[str, Any]) -> None:
        """An event with no invocation behind it (a background kill, scriptNotFound)."""
        self.tally.count(event.get("dispatchNamespace") or "", event.get("outcome") or "unknown",
                         "fetch" if event.get("event") else "background")

    # -- the pool's observer (supervisor.pool.pool.PoolObserver) -----------------
    def cold_start(self, seconds: float, failed: bool) -> None:
        self.cold_starts.labels("failed" if failed else "ok").observe(seconds)

    def spare_ready(self, seconds: float, limits_seconds: float, joined_by: str) -> None:
        self.spares_ready.observe(seconds)
        self.child_limits.observe(limits_seconds)
        if joined_by:
            self.cgroup_joins.labels(joined_by).inc()

    def spare_wait(self, seconds: float, zygote: str) -> None:
        self.spare_waits.labels(zygote).observe(seconds)

    def child_ended(self, reason: str) -> None:
        self.children_ended.labels(kill_reason(reason)).inc()

    def admin_call(self, method: str, status: int) -> None:
        method = method if method in ("GET", "PUT", "POST", "DELETE", "PATCH", "HEAD") else "other"
        self.admin_calls.labels(method, f"{status // 100}xx").inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _PoolCollector(Collector):
    """Gauges read from the pool (and the HTTP server) when scraped."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]],
                 http_stats: Callable[[], dict[str, int]]) -> None:
        self._snapshot = snapshot
        self._http = http_stats

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        snap = self._snapshot()
        children = GaugeMetricFamily("corral_pool_children", "Sandboxed children by state.",
                                     labels=["state"])
        for state in POOL_STATES:
            children.add_metric([state], snap.get(state, snap.get(f"{state}s", 0)))
        yield children
        yield GaugeMetricFamily("corral_children", "Sandboxed child processes alive.",
                                value=snap.get("children", 0))
        yield GaugeMetricFamily("corral_package_zygotes", "Package zygotes ready to fork: "
                                "each holds a dependency set imported (0 until packages land).",
                                value=snap.get("package_zygotes", 0))
        yield GaugeMetricFamily("corral_hub_core_held", "1 while the supervisor's event loop "
                                "has a core to itself and warm children run on the others "
                                "(pool.hub_core).", value=snap.get("hub_core_held", 0))
        yield CounterMetricFamily("corral_core_keeper_spin_seconds", "CPU the core keepers "
                                  "spent spinning, at idle priority, in time the supervisor's "
                                  "cores would have halted (keep_cores_awake_us).",
                                  value=snap.get("core_keeper_spun_s", 0.0))
        yield CounterMetricFamily("corral_core_keeper_latency_request_seconds", "Time the "
                                  "supervisor held a 0 us CPU latency request, so that every "
                                  "core of the host polled instead of halting "
                                  "(keep_cores_awake_by).", value=snap.get("core_keeper_held_s", 0.0))
        yield CounterMetricFamily("corral_cold_starts", "Scripts loaded into a spare.",
                                  value=snap.get("cold_starts", 0))
        yield CounterMetricFamily("corral_idle_reshares", "Idle children asked to give the "
                                  "zygote's pages they copied but left unchanged back.",
                                  value=snap.get("reshare_asked", 0))
        yield CounterMetricFamily("corral_children_set_up", "Children that finished their "
                                  "own set-up (jail, loop, filter, channel) and said Hello.",
                                  value=snap.get("setups", 0))
        setup = CounterMetricFamily("corral_child_setup_cpu_seconds", "CPU new children spent "
                                    "setting themselves up, by step (as each child reports it).",
                                    labels=["step"])
        for step, us in snap.get("setup_us", {}).items():
            setup.add_metric([step], us / 1e6)
        yield setup
        faults = CounterMetricFamily("corral_child_setup_page_faults", "Minor page faults of new "
                                     "children's set-up, by step: nearly all copies of the "
                                     "zygote's pages, i.e. the private memory each step costs.",
                                     labels=["step"])
        for step, count in snap.get("setup_faults", {}).items():
            faults.add_metric([step], count)
        yield faults
        yield CounterMetricFamily("corral_child_frames_batched", "Frames to children that left "
                                  "with their loop turn's others (see SendBatch).",
                                  value=snap.get("frames_batched", 0))
        yield CounterMetricFamily("corral_child_batch_writes", "Socket writes that carried "
                                  "them: one per child per loop turn, or per 4 frames.",
                                  value=snap.get("batch_writes", 0))
        http = self._http()
        yield CounterMetricFamily("corral_http_requests", "HTTP requests received at the edge.",
                                  value=http.get("requests", 0))
        yield GaugeMetricFamily("corral_http_connections", "Open client connections.",
                                value=http.get("connections", 0))
        yield GaugeMetricFamily("corral_http_in_flight", "Client requests being handled.",
                                value=http.get("in_flight", 0))
