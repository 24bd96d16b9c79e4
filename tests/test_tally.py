"""The invocation tally exposes what prometheus-client's own metrics would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from supervisor.observability.metrics import CPU_BUCKETS, LATENCY_BUCKETS
from supervisor.observability.tally import InvocationTally


def _samples(text: bytes) -> set[str]:
    """Sample lines, less the ``_created`` ones the tally does not keep."""
    return {line for line in text.decode().splitlines()
            if line and not line.startswith("#") and "_created" not in line}


def test_the_tally_exposes_the_same_samples_as_prometheus_client_metrics():
    rng = random.Random(7)
    ours = CollectorRegistry()
    tally = InvocationTally(LATENCY_BUCKETS, CPU_BUCKETS, script_labels=True)
    ours.register(tally)
    theirs = CollectorRegistry()
    invocations = Counter("corral_invocations", "", ["namespace", "outcome", "handler"], registry=theirs)
    requests = Counter("corral_requests", "", ["outcome"], registry=theirs)
    latency = Histogram("corral_request_duration_seconds", "", buckets=LATENCY_BUCKETS, registry=theirs)
    wall = Histogram("corral_invocation_wall_seconds", "", ["namespace"], buckets=LATENCY_BUCKETS,
                     registry=theirs)
    cpu = Histogram("corral_invocation_cpu_seconds", "", ["namespace"], buckets=CPU_BUCKETS, registry=theirs)
    subrequests = Counter("corral_subrequests", "", ["namespace"], registry=theirs)
    scripts = Counter("corral_script_invocations", "", ["namespace", "script", "outcome"], registry=theirs)
    for _ in range(2000):
        ns = rng.choice(["", "tenants", "staging"])
        outcome = rng.choice(["ok", "exception", "exceededCpu"])
        kind = rng.choice(["fetch", "scheduled"])
        # Exactly on a bound, between bounds, beyond the last one.
        wall_ms = rng.choice([rng.choice(LATENCY_BUCKETS) * 1000.0, rng.uniform(0, 100), 120_000.0])
        cpu_ns = rng.choice([round(rng.choice(CPU_BUCKETS) * 1e9), rng.randrange(0, 50_000_000),
                             40_000_000_000])
        subs = rng.randrange(0, 4)
        tally.invocation(ns, outcome, kind, wall_ms, cpu_ns, subs, "s1")
        invocations.labels(ns, outcome, kind).inc()
        wall.labels(ns).observe(wall_ms / 1000.0)
        cpu.labels(ns).observe(cpu_ns / 1e9)
        subrequests.labels(ns).inc(subs)
        scripts.labels(ns, "s1", outcome).inc()
        if kind == "fetch":
            tally.request(outcome, wall_ms)
            requests.labels(outcome).inc()
            latency.observe(wall_ms / 1000.0)
    ours_text, theirs_text = _samples(generate_latest(ours)), _samples(generate_latest(theirs))
    # Bucket counts must match exactly; sums may differ in the last float digits.
    def buckets_and_counts(lines: set[str]) -> set[str]:
        return {line for line in lines if "_sum" not in line}
    assert buckets_and_counts(ours_text) == buckets_and_counts(theirs_text)
    def sums(lines: set[str]) -> dict[str, float]:
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if "_sum" in line}
    ours_sums, theirs_sums = sums(ours_text), sums(theirs_text)
    assert ours_sums.keys() == theirs_sums.keys() and ours_sums
    for key, value in theirs_sums.items():
        assert abs(ours_sums[key] - value) <= 1e-9 * max(1.0, abs(value)), key
