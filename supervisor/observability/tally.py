"""The per-invocation metrics, counted in plain dicts and lists.

Every finished invocation moves five figures (its count by outcome, its wall
and CPU histograms, its subrequests, and the client request's count and
latency). prometheus-client's ``inc()`` and ``observe()`` take a lock and make
four or five Python calls each: about 50 of the supervisor's Python calls per
request went to them (counted with a profiler hook). Here an invocation costs a few dict lookups and
list increments, and the figures become Prometheus families only when
``/metrics`` is scraped, through the registry's custom-collector hook, which
prometheus-client provides for exactly this. The exposition is the same as
that of the ``Counter``/``Histogram`` objects it replaces, minus their
``_created`` samples.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class Buckets:
    """One histogram: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.total = 0.0


class _Histogram:
    """A labelled histogram family, with the bounds in the unit observed."""

    def __init__(self, name: str, doc: str, labels: Sequence[str], bounds: Sequence[float],
                 scale: float = 1.0) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        #: Bounds as observed (e.g. milliseconds); ``scale`` turns them into the unit shown.
        self.bounds = [round(b / scale, 6) for b in bounds]
        self.scale = scale
        self.le = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self.series: dict[tuple[str, ...], Buckets] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Buckets(len(self.le))
        series.counts[bisect_left(self.bounds, value)] += 1
        series.total += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, series in list(self.series.items()):
            running, buckets = 0, []
            for le, count in zip(self.le, series.counts, strict=True):
                running += count
                buckets.append((le, running))
            family.add_metric(list(key), buckets, series.total * self.scale)
        return family


class _Counter:
    """A labelled counter family."""

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.series: dict[tuple[str, ...], int] = {}

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in list(self.series.items()):
            family.add_metric(list(key), value)
        return family


class InvocationTally(Collector):
    """The invocation figures, moved per invocation, exposed per scrape."""

    def __init__(self, latency_buckets: Sequence[float], cpu_buckets: Sequence[float],
                 script_labels: bool) -> None:
        self.invocations = _Counter("corral_invocations", "Invocations finished, by dispatch namespace "
                                    "('' for platform scripts), outcome and handler type.",
                                    ["namespace", "outcome", "handler"])
        self.requests = _Counter("corral_requests", "Client requests answered by a worker, by outcome "
                                 "of the top-level invocation.", ["outcome"])
        # Wall times are observed in milliseconds, CPU in nanoseconds: as the
        # invocation holds them, with no division per request.
        self.latency = _Histogram("corral_request_duration_seconds", "Wall time of client requests "
                                  "(the top-level invocation, waitUntil work included).", [],
                                  latency_buckets, scale=1e-3)
        self.wall = _Histogram("corral_invocation_wall_seconds", "Wall time of each invocation.",
                               ["namespace"], latency_buckets, scale=1e-3)
        self.cpu = _Histogram("corral_invocation_cpu_seconds", "CPU time of each invocation.",
                              ["namespace"], cpu_buckets, scale=1e-9)
        self.subrequests = _Counter("corral_subrequests", "Subrequests (fetch, service and dispatch "
                                    "calls) made by invocations.", ["namespace"])
        self.scripts = _Counter("corral_script_invocations", "Invocations per script "
                                "(observability.metrics_script_labels).",
                                ["namespace", "script", "outcome"]) if script_labels else None

    def request(self, outcome: str, wall_ms: float) -> None:
        """The top-level invocation, as the client saw it."""
        series = self.requests.series
        series[(outcome,)] = series.get((outcome,), 0) + 1
        self.latency.observe((), wall_ms)

    def count(self, namespace: str, outcome: str, kind: str) -> None:
        """An invocation known only by its event (a background kill): counted, no figures."""
        key = (namespace, outcome, kind)
        series = self.invocations.series
        series[key] = series.get(key, 0) + 1

    def invocation(self, namespace: str, outcome: str, kind: str, wall_ms: float, cpu_ns: int,
                   subrequests: int, script: str) -> None:
        key = (namespace, outcome, kind)
        series = self.invocations.series
        series[key] = series.get(key, 0) + 1
        ns = (namespace,)
        self.wall.observe(ns, wall_ms)
        self.cpu.observe(ns, cpu_ns)
        series = self.subrequests.series
        series[ns] = series.get(ns, 0) + subrequests
        if self.scripts is not None:
            key = (namespace, script, outcome)
            series = self.scripts.series
            series[key] = series.get(key, 0) + 1

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        yield self.invocations.family()
        yield self.requests.family()
        yield self.latency.family()
        yield self.wall.family()
        yield self.cpu.family()
        yield self.subrequests.family()
        if self.scripts is not None:
            yield self.scripts.family()
