"""scripts/bench: Corral vs workerd (Dynamic Worker Loader) vs a bare trio+h11 server.

Two passes, each system with the same load generator and clients:

* latency and throughput: every system's server up at once, each repetition
  of a figure run on one system at a time, turn about (``Runner.speed``);
* memory, cold starts and storms: one system after another, alone on the
  machine, each on a fresh server with every tenant deployed.

Then it prints each system's figures and the Corral/workerd and Corral/bare
ratios, and the ratio of each side-by-side pair of runs.
"""
from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator

from . import corral_extras, corral_observability, httpclient, loadgen, procs, report
from .systems import SYSTEMS, Unavailable

#: How long the memory figure waits with every tenant idle: past Corral's
#: pool.reshare_after_s (5 s) and its once-a-second scan, and through the
#: round that follows (paced: ~4 s for 300 tenants here, see
#: supervisor/pool/idle_trim.py), with a margin.
IDLE_WAIT_S = 12.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark Corral against workerd (Dynamic Worker Loader) and a bare "
                    "trio+h11 server on 127.0.0.1. Runs go to one system at a time: the latency "
                    "and throughput runs turn about, the rest one system after another.")
    ap.add_argument("--only", default="workerd,bare,corral",
                    help="comma list of systems to run, in this order (default: %(default)s)")
    ap.add_argument("--duration", type=float, default=10.0,
                    help="seconds per throughput run (default: %(default)s)")
    ap.add_argument("--connections", type=int, default=32,
                    help="keep-alive connections for throughput runs (default: %(default)s)")
    ap.add_argument("--tenants", default="300",
                    help="comma list of tenant counts for the round-robin throughput runs; "
                         "the memory figure is taken at each (default: %(default)s)")
    ap.add_argument("--cold", type=int, default=200,
                    help="fresh tenants for the cold-start figure (default: %(default)s)")
    ap.add_argument("--cold-pause-ms", type=float, default=20.0,
                    help="pause before each cold request (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="throughput runs per figure; the median is reported and every run "
                         "logged (default: %(default)s)")
    ap.add_argument("--storm", type=int, default=300,
                    help="fresh tenants for the cold-start storm: their first requests back to "
                         "back, no pause (default: %(default)s; 0: none)")
    ap.add_argument("--storm-connections", type=int, default=8,
                    help="connections the storm is sent from at once (default: %(default)s)")
    ap.add_argument("--latency-requests", type=int, default=2000,
                    help="sequential requests for the warm latency figure (default: %(default)s)")
    ap.add_argument("--paced-gap-ms", type=float, default=2.0,
                    help="pause after each request of the paced latency figure, which sends half "
                         "of --latency-requests so: one tenant lightly used (0: no such figure; "
                         "default: %(default)s)")
    ap.add_argument("--warmup", type=float, default=2.0,
                    help="unrecorded load seconds before each throughput run (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1,
                    help="wrk threads (default %(default)s: leaves the other core to the server)")
    ap.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                    help="throughput generator: wrk (installed from Debian if missing) or the "
                         "Python multi-process fallback (default: %(default)s)")
    ap.add_argument("--corral-cmd", default=None,
                    help="command that starts Corral, with {port} and {state} placeholders "
                         "(default: .venv/bin/python -m supervisor serve --http "
                         "127.0.0.1:{port} --state-dir {state})")
    ap.add_argument("--quick", action="store_true",
                    help="smoke check in under a minute: short runs, few tenants, extras with "
                         "150 fetch rounds and 2 runs per CPU budget")
    ap.add_argument("--deploy-threads", type=int, default=4,
                    help="Corral: concurrent admin-API uploaders when deploying 600 or more "
                         "scripts (fewer go from one thread) (default: %(default)s)")
    ap.add_argument("--only-extras", action="store_true",
                    help="run only the Corral extras (brokered fetch overhead, CPU-limit "
                         "precision) on a Corral of their own: no workerd/bare, no tenants")
    ap.add_argument("--only-packages", action="store_true",
                    help="run only the package figures: cold starts of FastAPI and Django tenants "
                         "(first ever and with their package zygote warm) and PSS per warm tenant, "
                         "next to a bare hello (see benchlib/corral_packages.py)")
    ap.add_argument("--package-tenants", type=int, default=15,
                    help="--only-packages: fresh tenants per set (default: %(default)s)")
    ap.add_argument("--no-extras", action="store_true",
                    help="skip the Corral extras after the main Corral run")
    ap.add_argument("--only-observability", action="store_true",
                    help="run only the observability overhead figure: req/s with a tail worker "
                         "and OTLP export on, as a ratio to both off")
    ap.add_argument("--no-observability", action="store_true",
                    help="skip the observability overhead figure after the main Corral run")
    ap.add_argument("--extras-requests", type=int, default=1000,
                    help="brokered fetch: sequential requests of each kind (direct, worker, "
                         "worker+fetch, and both through the outbound worker) (default: "
                         "%(default)s)")
    ap.add_argument("--cpu-budgets", default="10,50,200",
                    help="CPU-limit precision: comma list of limits.cpuMs budgets "
                         "(default: %(default)s)")
    ap.add_argument("--cpu-runs", type=int, default=5,
                    help="CPU-limit precision: killed runs per budget (default: %(default)s)")
    ap.add_argument("--json", default=str(procs.BENCH_DIR / "results" / "latest.json"),
                    help="where to write all figures as JSON (default: .bench/results/latest.json)")
    a = ap.parse_args(argv)
    if a.quick:
        a.duration = min(a.duration, 2.0)
        a.tenants = "30" if a.tenants == "300" else a.tenants
        a.cold = min(a.cold, 20)
        a.storm = min(a.storm, 30)
        a.repeat = 1
        a.latency_requests = min(a.latency_requests, 300)
        a.warmup = min(a.warmup, 1.0)
        a.extras_requests = min(a.extras_requests, 150)
        a.cpu_runs = min(a.cpu_runs, 2)
    try:
        a.tenant_counts = sorted({int(x) for x in a.tenants.split(",") if x.strip()})
    except ValueError:
        ap.error("--tenants takes a comma list of integers")
    if not a.tenant_counts or a.tenant_counts[0] < 2:
        ap.error("--tenants: each count must be at least 2")
    try:
        a.cpu_budget_list = [float(x) for x in a.cpu_budgets.split(",") if x.strip()]
    except ValueError:
        ap.error("--cpu-budgets takes a comma list of numbers (ms)")
    if a.only_extras and a.no_extras:
        ap.error("--only-extras and --no-extras exclude each other")
    if a.extras_requests < 1 or a.cpu_runs < 0 or any(b <= 0 for b in a.cpu_budget_list):
        ap.error("--extras-requests, --cpu-runs and --cpu-budgets must be positive")
    a.systems = [s.strip() for s in a.only.split(",") if s.strip()]
    if a.only_extras or a.only_observability:
        a.systems = ["corral"]
    for s in a.systems:
        if s not in SYSTEMS:
            ap.error(f"--only: unknown system {s!r} (known: {', '.join(SYSTEMS)})")
    if a.storm < 0 or a.storm_connections < 1 or a.repeat < 1:
        ap.error("--storm must be >= 0, --storm-connections and --repeat >= 1")
    if a.paced_gap_ms < 0:
        ap.error("--paced-gap-ms must be >= 0")
    if a.connections < 1 or a.duration <= 0 or a.cold < 0 or a.latency_requests < 1:
        ap.error("--connections, --duration and --latency-requests must be positive")
    return a


class Runner:
    def __init__(self, args):
        self.args = args
        self.wrk = None
        self.loadgen_note = ""
        if args.only_extras and not args.only_observability:
            self.loadgen_note = "no throughput runs (--only-extras)"
        elif args.loadgen in ("auto", "wrk"):
            self.wrk = loadgen.ensure_wrk(log)
            if not self.wrk:
                if args.loadgen == "wrk":
                    raise SystemExit("wrk is not installed and could not be installed")
                self.loadgen_note = ("wrk could not be installed: throughput uses the Python "
                                     "multi-process raw-socket generator (it may be the bottleneck)")
        else:
            self.loadgen_note = "throughput uses the Python multi-process raw-socket generator"
        if self.wrk:
            self.loadgen_note = (f"throughput: wrk -t{args.threads} -c{args.connections} "
                                 f"-d{max(1, round(args.duration))}s, Lua script rotating Host")

    def load(self, port: int, hosts: list[str], duration: float) -> dict:
        a = self.args
        if self.wrk:
            return loadgen.run_wrk(self.wrk, port, hosts, a.connections, duration, a.threads)
        return loadgen.run_python(port, hosts, a.connections, duration)

    def throughput(self, sysm, hosts: list[str]) -> dict:
        """``--repeat`` runs, as :meth:`throughput_steps`, one after another."""
        out: dict = {}
        for _ in self.throughput_steps(sysm, hosts, out):
            pass
        return out["rps"]

    def throughput_steps(self, sysm, hosts: list[str], out: dict,
                         before_each: Callable[[], None] | None = None) -> Iterator[str]:
        """``--repeat`` runs, each after unrecorded load; the figure (``out["rps"]``)
        is their median and the log shows every run (a shared machine moves by
        tens of percent). A step ends just before each run: :meth:`speed_steps`
        takes the systems' runs turn about. ``before_each`` runs before each
        run's warm-up (a pass touching every tenant)."""
        runs = []
        used: dict[str, float] = {}
        kernel: dict[str, float] = {}
        for _ in range(self.args.repeat):
            yield f"{len(hosts)} tenant(s) req/s"
            if before_each is not None:
                before_each()
            if self.args.warmup > 0:
                self.load(sysm.port, hosts, self.args.warmup)
            cpu_before = self.cpu(sysm)
            one = self.load(sysm.port, hosts, self.args.duration)
            cpu_after = self.cpu(sysm)
            for role, seconds in self.cpu_used(cpu_before, cpu_after).items():
                used[role] = used.get(role, 0.0) + seconds
            for name, seconds in procs.kernel_delta(cpu_before["kernel"], cpu_after["kernel"]).items():
                kernel[name] = kernel.get(name, 0.0) + seconds
            if "error" not in one:
                one.pop("raw", None)
            runs.append(one)
        requests = sum(x.get("requests", 0) for x in runs)
        cpu_us = {k: seconds * 1e6 / requests for k, seconds in used.items()
                  if seconds > 0} if requests > 0 else {}
        rates = sorted(x["rps"] for x in runs)
        r = dict(sorted(runs, key=lambda x: x["rps"])[(len(runs) - 1) // 2])  # the median run
        r["runs_rps"] = [x["rps"] for x in runs]  # in the order they ran
        r["spread_rps"] = [rates[0], rates[-1]]
        spread = (f" (median of {len(runs)}: {' / '.join(f'{x:.0f}' for x in r['runs_rps'])})"
                  if len(runs) > 1 else "")
        log(f"  {sysm.label}, {len(hosts)} tenant(s): {r['rps']:.0f} req/s{spread}"
            + (f", {r['non2xx']} non-2xx" if r.get("non2xx") else "")
            + (f", {r['socket_errors']} socket errors" if r.get("socket_errors") else "")
            + (f" [{r['error']}]" if r.get("error") else ""))
        if cpu_us:
            r["cpu_us_per_request"] = cpu_us
            log("    CPU per request: " + ", ".join(f"{k} {v:.0f} us" for k, v in cpu_us.items()))
        if requests > 0 and kernel:
            r["kernel_us_per_request"] = kernel_us = {
                name: seconds * 1e6 / requests for name, seconds in kernel.items()}
            log("    the host kernel's own threads meanwhile, per request: " + ", ".join(
                f"{name} {us:.1f} us" for name, us in list(kernel_us.items())[:4]))
        hub_core = getattr(sysm, "hub_core_held", None)
        if hub_core is not None:
            r["hub_core_held"] = held = hub_core()
            log(f"    supervisor's own core (pool.hub_core): {'held' if held else 'not held'} "
                "as the runs ended")
        out["rps"] = r

    def cpu(self, sysm) -> dict:
        """CPU seconds so far of each process with its role (``pids``, see
        procs.cpu_by_pid), plus, where the system reports it, the CPU its
        invocations used by namespace."""
        members = getattr(sysm, "member_pids", None)
        out: dict = {"pids": procs.cpu_by_pid(sysm.pid, members() if members else frozenset()),
                     "kernel": procs.kernel_threads_cpu_s()}
        by_namespace = getattr(sysm, "invocation_cpu_s", None)
        if by_namespace:
            out.update(by_namespace())
        return out

    @staticmethod
    def cpu_used(before: dict, after: dict) -> dict[str, float]:
        """CPU seconds of each role between two :meth:`cpu` readings."""
        used = procs.role_delta(before["pids"], after["pids"])
        used.update({k: after[k] - before.get(k, 0.0) for k in after if k not in ("pids", "kernel")})
        return used

    def pss(self, sysm) -> dict:
        time.sleep(0.5)  # let freed memory settle
        # Corral's children leave its process tree when their zygote is
        # replaced (and set up sessions of their own): found by state dir.
        members = getattr(sysm, "member_pids", None)
        mb, n = procs.tree_pss_mb(sysm.pid, members() if members else frozenset())
        return {"mb": mb, "procs": n}

    def speed_steps(self, sysm, res: dict) -> Iterator[str]:
        """The latency and throughput figures, on a server of their own with
        the round-robin tenants, as steps that each end just before one timed
        run (see :meth:`speed`)."""
        a = self.args
        names = [f"t{i}" for i in range(a.tenant_counts[-1])]
        t = time.monotonic()
        sysm.start(names)
        log(f"  {sysm.label} up on 127.0.0.1:{sysm.port} in {time.monotonic() - t:.1f}s "
            f"(pid {sysm.pid}) for the latency and throughput figures")
        port, h, t0 = sysm.port, sysm.host, "t0"
        httpclient.touch_all(port, [(h(t0), sysm.expect(t0))] * 20)
        warm_runs = []
        for _ in range(a.repeat):
            yield "warm latency"
            wl = httpclient.warm_latency(port, h(t0), sysm.expect(t0), a.latency_requests)
            warm_runs.append(wl)
            log(f"  {sysm.label} warm latency p50 {wl['p50']:.3f} ms, p99 {wl['p99']:.3f} ms, "
                f"p99.9 {wl['p999']:.3f} ms, max {wl['max']:.3f} ms")
        res["warm_latency"] = httpclient.repeated(warm_runs)
        if a.paced_gap_ms:
            # The same, with a pause after each answer: what a lightly used
            # tenant sees, every process on the path woken from sleep.
            paced_runs = []
            for _ in range(a.repeat):
                yield "paced latency"
                pl = httpclient.warm_latency(port, h(t0), sysm.expect(t0),
                                             max(1, a.latency_requests // 2),
                                             gap_s=a.paced_gap_ms / 1000.0)
                paced_runs.append(pl)
                log(f"  {sysm.label} paced latency ({a.paced_gap_ms:g} ms gaps) p50 "
                    f"{pl['p50']:.3f} ms, p99 {pl['p99']:.3f} ms, max {pl['max']:.3f} ms")
            res["paced_latency"] = httpclient.repeated(paced_runs)
        res["rps"] = {}
        out: dict = {}
        yield from self.throughput_steps(sysm, [h(t0)], out)
        res["rps"]["1"] = out["rps"]
        for k in a.tenant_counts:
            hosts = [(h(n), sysm.expect(n)) for n in names[:k]]

            def touch(hosts=hosts, k=k) -> None:
                # Round robin over K tenants, each run after a pass touching all K.
                touch = httpclient.touch_all(port, hosts)
                if touch["errors"]:
                    res.setdefault("touch", {})[f"{k}-before-load"] = {
                        "nerrors": len(touch["errors"]), "errors": touch["errors"][:5]}

            yield from self.throughput_steps(sysm, [host for host, _ in hosts], out, touch)
            res["rps"][str(k)] = out["rps"]
            res.setdefault("pss", {})[f"{k}-after-load"] = self.pss(sysm)
        if not sysm.server.alive():
            res["died"] = f"exited with status {sysm.server.proc.returncode}"

    def speed(self, keys: list[str]) -> dict[str, dict]:
        """Every system's latency and throughput figures, taken turn about.

        The systems' servers are up together (an idle one costs the other
        nothing measurable) and each repetition of a figure runs on each
        system in turn, in the opposite order the next time (A B, B A, ...).
        Run one system after the other instead, minutes apart, and a shared
        host's drift (tens of percent over minutes here) lands in the ratios
        as if it were the systems'. The per-repetition ratios are then pairs
        taken side by side (see report.py)."""
        steps: dict[str, tuple] = {}
        results: dict[str, dict] = {}
        for key in keys:
            sysm = self.system(key)
            results[key] = {"label": sysm.label}
            steps[key] = (sysm, self.speed_steps(sysm, results[key]))
        log(f"== latency and throughput, turn about: {', '.join(keys)}")
        live, turn = list(keys), 0
        try:
            while live:
                for key in (live if turn % 2 == 0 else live[::-1]):
                    sysm, gen = steps[key]
                    try:
                        next(gen)
                        continue
                    except StopIteration:
                        pass
                    except Unavailable as e:
                        results[key] = {"label": sysm.label, "unavailable": str(e)}
                        log(f"{sysm.label}: not available ({e})")
                    except (OSError, httpclient.HTTPError) as e:
                        results[key] = {"label": sysm.label, "unavailable": self._why(sysm, e)}
                        log(f"{sysm.label}: failed ({results[key]['unavailable']})")
                    live.remove(key)
                    sysm.stop()
                turn += 1
        finally:
            for sysm, _ in steps.values():
                sysm.stop()
        return results

    def system(self, key: str):
        sysm = SYSTEMS[key](log)
        if key == "corral":
            sysm.deploy_threads = max(1, self.args.deploy_threads)
            if self.args.corral_cmd:
                sysm.cmd_template = self.args.corral_cmd
        return sysm

    @staticmethod
    def _why(sysm, e: Exception) -> str:
        why = f"{type(e).__name__}: {e}"
        if sysm.server is not None and not sysm.server.alive():
            why += f"; server exited: {sysm.server.log_tail()}"
        return why

    def measure(self, sysm) -> dict:
        """Memory, cold starts and storms, on a fresh server with every tenant
        deployed (the latency and throughput figures come from :meth:`speed`)."""
        a = self.args
        kmax = a.tenant_counts[-1]
        warm_names = [f"t{i}" for i in range(kmax)]
        # Each repetition of a cold or storm run needs tenants never started.
        runs = a.repeat
        cold_names = [f"t{kmax + i}" for i in range(a.cold * runs)]
        storm_names = [f"t{kmax + a.cold * runs + i}" for i in range(a.storm * runs)]
        res: dict = {"label": sysm.label}
        t = time.monotonic()
        sysm.start(warm_names + cold_names + storm_names)
        res["startup_s"] = time.monotonic() - t
        port = sysm.port
        h = sysm.host
        t0 = "t0"
        log(f"  up on 127.0.0.1:{port} in {res['startup_s']:.1f}s (pid {sysm.pid})")

        # the memory baseline: one tenant warm
        httpclient.touch_all(port, [(h(t0), sysm.expect(t0))] * 20)
        res["pss"] = {"1": self.pss(sysm)}
        log(f"  PSS with 1 tenant warm: {res['pss']['1']['mb']:.1f} MB "
            f"({res['pss']['1']['procs']} processes)")
        if hasattr(sysm, "pool_info"):
            res["pool_at_baseline"] = sysm.pool_info()
            log(f"  pool at that baseline: {_n(res['pool_at_baseline'].get('spares_ready'))} spare "
                f"children (setting {res['pool_at_baseline'].get('spares_setting')})")

        # memory: warm K tenants (one request each) and take PSS, before any
        # multi-tenant load, so each K's figure holds tenant state, not load garbage
        res["touch"] = {}
        res["pss_per_tenant_mb"] = {}
        for k in a.tenant_counts:
            touch = httpclient.touch_all(port, [(h(n), sysm.expect(n)) for n in warm_names[:k]])
            tm = httpclient.summarize_ms(touch["times_ns"])
            res["touch"][str(k)] = {"ok": touch["ok"], "errors": touch["errors"][:5],
                                    "nerrors": len(touch["errors"]),
                                    "total_s": sum(touch["times_ns"]) / 1e9, "p50_ms": tm["p50"]}
            log(f"  first pass over {k} tenants: {touch['ok']} ok, {len(touch['errors'])} "
                f"errors, {sum(touch['times_ns']) / 1e9:.2f}s"
                + (f" (first: {touch['errors'][0]})" if touch["errors"] else ""))
            p = self.pss(sysm)
            res["pss"][str(k)] = p
            per = (p["mb"] - res["pss"]["1"]["mb"]) / (k - 1)
            res["pss_per_tenant_mb"][str(k)] = per
            log(f"  PSS with {k} tenants warm: {p['mb']:.1f} MB ({p['procs']} processes) "
                f"-> {per:.3f} MB/tenant")

        # the same K tenants left idle: Corral's children give their unchanged
        # copied pages back after pool.reshare_after_s (5 s; see sandbox/reshare.py)
        time.sleep(IDLE_WAIT_S)
        p = self.pss(sysm)
        res["pss"][f"{kmax}-idle"] = p
        res["pss_idle_per_tenant_mb"] = (p["mb"] - res["pss"]["1"]["mb"]) / (kmax - 1)
        log(f"  PSS with {kmax} tenants idle {IDLE_WAIT_S:g}s: {p['mb']:.1f} MB "
            f"-> {res['pss_idle_per_tenant_mb']:.3f} MB/tenant")

        if cold_names and hasattr(sysm, "pool_info"):
            res["pool"] = sysm.pool_info()
            p = res["pool"]
            log(f"  pool: spares setting {p.get('spares_setting')} ({p.get('spares_source')}), "
                f"{_n(p.get('spares_ready'))} spare children ready before the cold run")
        if cold_names:
            cold_runs = []
            for i in range(runs):
                c = httpclient.cold_starts(
                    port, [(h(n), sysm.expect(n)) for n in cold_names[i * a.cold:(i + 1) * a.cold]],
                    a.cold_pause_ms / 1000.0, warm_host=h(t0))
                cold_runs.append(c)
                log(f"  cold start p50 {c['p50']:.2f} ms, p99 {c['p99']:.2f} ms over {c['n']} tenants"
                    + (f", {c['errors']} errors (first: {c['first_error']})" if c["errors"] else "")
                    + "; slowest " + ", ".join(f"{s['ms']:.1f} ms ({s['host']}, ended at {s['ended_at']:.3f})"
                                               for s in c["slowest"]))
            res["cold"] = httpclient.repeated(cold_runs)
        if storm_names:
            time.sleep(1.0)  # the pool settles after the paced cold run
            members = getattr(sysm, "member_pids", None)
            spent: dict[str, float] = {}
            kernel: dict[str, float] = {}
            timing = getattr(sysm, "spare_timing", None)
            spares_before = timing() if timing else {}
            spare_waits = getattr(sysm, "spare_waits", None)
            storm_runs = []
            for i in range(runs):
                if i:
                    time.sleep(1.0)  # the pool refills its spares between storms
                cpu_before = procs.cpu_by_pid(sysm.pid, members() if members else frozenset())
                kernel_before = procs.kernel_threads_cpu_s()
                box_before, waited_before = procs.box_cpu_ticks(), procs.run_delay_s(sysm.pid)
                available_before = procs.mem_available_kb()
                in_use_gb = procs.mem_in_use_kb() / 1048576
                waits_before = spare_waits() if spare_waits else None
                s = httpclient.storm(port, [(h(n), sysm.expect(n))
                                            for n in storm_names[i * a.storm:(i + 1) * a.storm]],
                                     a.storm_connections)
                cpu_after = procs.cpu_by_pid(sysm.pid, members() if members else frozenset())
                for name, seconds in procs.kernel_delta(kernel_before, procs.kernel_threads_cpu_s()).items():
                    kernel[name] = kernel.get(name, 0.0) + seconds
                box_after, waited_after = procs.box_cpu_ticks(), procs.run_delay_s(sysm.pid)
                taken_kb = available_before - procs.mem_available_kb()
                for role, seconds in procs.role_delta(cpu_before, cpu_after).items():
                    spent[role] = spent.get(role, 0.0) + seconds
                busy = box_after[0] - box_before[0]
                s["box_busy_pct"] = 100.0 * busy / max(1, box_after[1] - box_before[1])
                s["server_waited_ms"] = (waited_after - waited_before) * 1000.0
                s["mb_per_cold_start"] = taken_kb / 1024.0 / max(1, s["n"])
                s["new_page_us"] = procs.new_page_us()
                s["mem_in_use_gb"] = in_use_gb
                if waits_before is not None:
                    s.update(_spare_wait_figures(waits_before, spare_waits()))
                storm_runs.append(s)
                log(f"  cold-start storm: {s['n']} tenants from {s['connections']} connections in "
                    f"{s['seconds']:.2f} s, p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms, "
                    f"p99.9 {s['p999']:.2f} ms"
                    + f"; the machine's CPUs {s['box_busy_pct']:.0f}% busy, the server process "
                    f"runnable but waiting for a CPU {s['server_waited_ms']:.0f} ms in all; "
                    f"the machine's memory {s['mb_per_cold_start']:.2f} MB less per cold start "
                    f"({s['mem_in_use_gb']:.2f} GB in use before it), "
                    f"a new page {s['new_page_us']:.1f} us to fault in after it"
                    + (f", {s['errors']} errors (first: {s['first_error']})" if s["errors"] else "")
                    + "; slowest " + ", ".join(f"{x['ms']:.1f} ms (ended at {x['ended_at']:.3f})"
                                               for x in s["slowest"]))
                if "spare_waited" in s:
                    log(f"    of its cold starts, {s['spare_waited']:.0f} waited for a spare "
                        f"(corral_spare_wait_seconds): {s['spare_wait_mean_ms']:.1f} ms on average, "
                        f"half of them {s['spare_wait_p50_le_ms']:g} ms or less, 99% "
                        f"{s['spare_wait_p99_le_ms']:g} ms or less (histogram bounds)")
            s = res["storm"] = httpclient.repeated(storm_runs)
            s["cpu_ms_per_cold_start"] = {role: seconds * 1000.0 / max(1, a.storm * runs)
                                          for role, seconds in spent.items()}
            s["kernel_ms_per_cold_start"] = {name: seconds * 1000.0 / max(1, a.storm * runs)
                                             for name, seconds in kernel.items()}
            spares_after = timing() if timing else {}
            ready = spares_after.get("n", 0.0) - spares_before.get("n", 0.0)
            if ready > 0:
                s["spare_ready_ms"] = (spares_after["ready_s"] - spares_before.get("ready_s", 0.0)) * 1000 / ready
                s["spare_limits_ms"] = (spares_after["limits_s"] - spares_before.get("limits_s", 0.0)) * 1000 / ready
                log(f"  storm spares: {ready:.0f} children said Hello, {s['spare_ready_ms']:.2f} ms on average "
                    f"from their fork's announcement, {s['spare_limits_ms']:.2f} ms of it the supervisor "
                    "putting each under its memory cgroup and CPU meter")
            log("  storm CPU per cold start (schedstat): " + ", ".join(
                f"{role} {ms:.2f} ms" for role, ms in s["cpu_ms_per_cold_start"].items())
                + " (server = the server process, direct = its children such as Corral's zygote, "
                  "others = the rest of its processes such as Corral's sandboxed children, "
                  "keepers = Corral's core keepers: the thread holding its CPU latency "
                  "request, or the idle-priority spinning ones)")
            if kernel:
                log("  storm: the host kernel's own threads meanwhile, per cold start: " + ", ".join(
                    f"{name} {ms:.2f} ms" for name, ms in list(s["kernel_ms_per_cold_start"].items())[:4]))
        if hasattr(sysm, "pool_info"):
            info = sysm.pool_info()
            setup = info.get("setup_us_mean")
            if setup:
                res["child_setup_us"] = setup
                log("  child set-up CPU per step (mean of every child's own report): " + ", ".join(
                    f"{step} {us:.0f} us" for step, us in setup.items())
                    + f"; {sum(setup.values()) / 1000:.2f} ms in all")
            faults = info.get("setup_faults_mean")
            if faults:
                res["child_setup_faults"] = faults
                log("  child set-up page faults per step (mean; nearly all copies of the zygote's "
                    "4 KiB pages, i.e. what each step costs in private memory): " + ", ".join(
                        f"{step} {count:.0f}" for step, count in faults.items())
                    + f"; {sum(faults.values()):.0f} in all ({sum(faults.values()) * 4 / 1024:.2f} MB)")
        res["pss"]["end"] = self.pss(sysm)
        if not sysm.server.alive():
            res["died"] = f"exited with status {sysm.server.proc.returncode}"
        return res

    def extras(self) -> dict:
        log("== corral extras")
        try:
            return corral_extras.run(self.args, log, self.args.corral_cmd)
        except (OSError, httpclient.HTTPError) as e:
            log(f"corral extras: failed ({type(e).__name__}: {e})")
            return {"unavailable": f"{type(e).__name__}: {e}"}

    def observability(self) -> dict:
        log("== corral observability overhead")
        try:
            return corral_observability.run(self, log)
        except (OSError, httpclient.HTTPError) as e:
            log(f"corral observability: failed ({type(e).__name__}: {e})")
            return {"unavailable": f"{type(e).__name__}: {e}"}

    def run(self) -> dict:
        a = self.args
        out = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "args": {
            k: v for k, v in vars(a).items() if k not in ("systems",)},
            "loadgen": self.loadgen_note, "cores": os.cpu_count(), "systems": {}}
        if a.only_observability:
            out["systems"]["corral"] = {"label": "corral", "main_skipped": True, "notes": [],
                                        "observability": self.observability()}
            return out
        if a.only_extras:
            log(f"bench: corral extras only; {a.extras_requests} rounds of brokered fetch, "
                f"CPU budgets {a.cpu_budgets} ms x {a.cpu_runs} run(s)")
            out["systems"]["corral"] = {"label": "corral", "main_skipped": True, "notes": [],
                                        "extras": self.extras()}
            return out
        log(f"bench: {', '.join(a.systems)}; tenants {a.tenants}, {a.connections} connections, "
            f"{a.duration:g}s runs; {self.loadgen_note}")
        speed = self.speed(a.systems)
        for key in a.systems:
            entry = speed[key]
            if "unavailable" in entry:
                out["systems"][key] = {**entry, "notes": []}
                continue
            sysm = self.system(key)
            log(f"== {sysm.label}: memory, cold starts, storms")
            try:
                rest = self.measure(sysm)
                entry = {**entry, **rest, "pss": {**entry.get("pss", {}), **rest["pss"]},
                         "touch": {**entry.get("touch", {}), **rest["touch"]}}
            except Unavailable as e:
                entry = {"label": sysm.label, "unavailable": str(e)}
                log(f"{sysm.label}: not available ({e})")
            except (OSError, httpclient.HTTPError) as e:
                entry = {"label": sysm.label, "unavailable": self._why(sysm, e)}
                log(f"{sysm.label}: failed ({entry['unavailable']})")
            finally:
                sysm.stop()
            entry["notes"] = sysm.notes
            if key == "corral":
                entry["mode"] = getattr(sysm, "mode", None)
                entry["deploy_ms"] = getattr(sysm, "deploy_stats", {})
                if not a.no_extras:
                    entry["extras"] = self.extras()
                if not a.no_observability:
                    entry["observability"] = self.observability()
            out["systems"][key] = entry
        return out


def _spare_wait_figures(before: dict, after: dict) -> dict:
    """Of the cold starts between two readings of ``Corral.spare_waits``: how
    many waited for a spare, their mean wait, and the bucket bounds (ms) under
    which half and 99% of those waits fell."""
    buckets = sorted((bound, count - before["buckets"].get(bound, 0.0))
                     for bound, count in after["buckets"].items())
    ready = next((count for bound, count in buckets if bound <= 0.0), 0.0)
    total = after["count"] - before["count"]
    waited = total - ready
    if waited <= 0:
        return {"spare_waited": 0.0, "spare_wait_mean_ms": 0.0, "spare_wait_p50_le_ms": 0.0,
                "spare_wait_p99_le_ms": 0.0}

    def bound_for(share: float) -> float:
        for bound, count in buckets:
            if bound > 0.0 and count - ready >= share * waited:
                return bound * 1000.0
        return math.inf

    return {"spare_waited": waited,
            "spare_wait_mean_ms": (after["sum"] - before["sum"]) / waited * 1000.0,
            "spare_wait_p50_le_ms": bound_for(0.5), "spare_wait_p99_le_ms": bound_for(0.99)}


def _n(x) -> str:
    return "?" if x is None else f"{x:.0f}"


def _clean(o):
    """NaN is not JSON: write null instead."""
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--scale"]:  # the management plane at scale: see benchlib/scale.py
        from benchlib import scale

        return scale.main(argv[1:])
    args = parse_args(argv)
    atexit.register(procs.stop_all)
    if args.only_packages:
        from . import corral_packages

        print(json.dumps(corral_packages.run(log, tenants=args.package_tenants), indent=2))
        return 0

    def on_signal(signum, frame):
        log(f"signal {signum}: stopping servers")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        results = Runner(args).run()
    except KeyboardInterrupt:
        log("interrupted: stopping servers")
        return 130
    finally:
        procs.stop_all()
    path = args.json
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_clean(results), f, indent=2, default=str)
    print(report.render(results))
    print(f"\n(all figures as JSON: {os.path.relpath(path)})")
    return 0
