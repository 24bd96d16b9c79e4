"""Corral-only figures, on a Corral instance of their own (started after the main
Corral run, or alone with --only-extras):

* brokered fetch: what a user worker's `await fetch(url)` costs over a direct
  request to the same local upstream, without and with an outbound worker;
* CPU-limit precision: a tight loop under `limits.cpuMs` = B, the CPU the
  killed child really used (kernel schedstat) against B.

Everything is on 127.0.0.1: the upstream is `upstream.py` in a subprocess.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

from . import httpclient, procs
from .corral_admin import AdminError
from .procs import BENCH_DIR, Server, free_port
from .systems import Corral, Unavailable

TEMPLATES = Path(__file__).resolve().parent / "templates"
NS = "default"
CUSTOMER = {"customer": "x"}

# (key, Host, path): the requests interleaved in the brokered-fetch figure
FETCH_KINDS = (
    ("direct", None, "/"),
    ("plain", "fx.localhost", "/plain"),
    ("fetch", "fx.localhost", "/fetch"),
    ("plain_out", "fx.out.localhost", "/plain"),
    ("fetch_out", "fx.out.localhost", "/fetch"),
)


def _perf_meter(pid: int):
    """Corral's own perf task-clock meter on ``pid``, or None (perf refused)."""
    try:
        if str(procs.REPO) not in sys.path:
            sys.path.insert(0, str(procs.REPO))
        from supervisor.limits.cpu_meter import PerfCpuMeter

        return PerfCpuMeter(pid)
    except (ImportError, OSError):
        return None


#: What the bench's perf counter on a spinning child sends the watching
#: thread when the child's CPU crosses its budget (blocked there, so it is
#: only ever taken by sigtimedwait).
CROSSING_SIGNAL = signal.SIGRTMIN + 3
_F_SETSIG = 10
_F_SETOWN_EX = 15
_F_OWNER_TID = 0


def schedstat_ns(pid: int) -> int | None:
    """CPU time the kernel has charged to pid (first field of schedstat, ns)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class CpuWatch:
    """Polls /proc/PID/schedstat every ~0.2 ms from a thread until the process
    is gone (reaped), keeping the last value read. With a budget, polling
    starts only once the child's CPU crossed it: a perf counter of the bench's
    own on the child overflows there and the kernel signals this thread
    (without perf, it starts 2 ms before the budget can have been spent).
    Sampling while the child spins preempted it every ~0.25 ms for ~35 us
    (this thread is SCHED_FIFO, and a perf read of a running task interrupts
    its CPU): it stretched the very wall time measured.

    The polling thread asks for SCHED_FIFO (it sleeps 0.2 ms between reads, so
    it cannot hog a core): on 2 busy cores a normal thread can be kept off the
    CPU for a scheduler slice right when the child is killed, and its last
    sample is then a few ms short. Without the privilege it polls as it is.
    `exit_gap_ms` is the time between the last good read and the first failed
    one: the most CPU the child can have used unseen."""

    def __init__(self, pid: int, max_s: float = 15.0, budget_ms: float | None = None):
        self.pid = pid
        # The kernel's perf counter on the child, read with every sample: exact
        # (schedstat of a running task lags by up to a tick), so it tells when
        # the child's CPU crossed the budget, on CLOCK_MONOTONIC, which the
        # jailed dispatcher's time.monotonic() shares.
        self.perf = _perf_meter(pid)
        self.budget_ns = None if budget_ms is None else int(budget_ms * 1e6)
        self.crossed_at: float | None = None
        self.perf_used_ns: int | None = None
        self.baseline = schedstat_ns(pid)
        self.last = self.baseline
        self.samples = 0
        self.realtime = False
        self.exit_gap_ms: float | None = None
        self.max_interval_ms = 0.0
        self.steps_ns: list[int] = []  # increments between distinct readings
        self.gone = threading.Event()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._max_s = max_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_FIFO, os.sched_param(10))
            self.realtime = True
        except (OSError, AttributeError):
            pass
        end = time.monotonic() + self._max_s
        if self.budget_ns is not None:
            signalled = self._arm_crossing_signal()
            self._ready.set()
            if signalled:
                if signal.sigtimedwait([CROSSING_SIGNAL], self._max_s) is not None:
                    self.crossed_at = time.monotonic()
            else:
                # A single-threaded child cannot spend its budget in less wall
                # time than the budget itself: sleep through most of it.
                time.sleep(max(0.0, self.budget_ns / 1e9 - 0.002))
        self._ready.set()
        prev = time.perf_counter()
        while not self._stop.is_set() and time.monotonic() < end:
            v = schedstat_ns(self.pid)
            now = time.perf_counter()
            if self.perf is not None:
                try:
                    used = self.perf.read_ns()
                except OSError:
                    used = None
                if used is not None:
                    self.perf_used_ns = used
                    if self.crossed_at is None and self.budget_ns is not None and used >= self.budget_ns:
                        self.crossed_at = time.monotonic()
            if v is None:
                self.exit_gap_ms = (now - prev) * 1000.0
                self.gone.set()
                return
            self.max_interval_ms = max(self.max_interval_ms, (now - prev) * 1000.0)
            prev = now
            if v != self.last and len(self.steps_ns) < 10000:
                self.steps_ns.append(v - self.last)
            self.last = v
            self.samples += 1
            time.sleep(0.0002)

    def _arm_crossing_signal(self) -> bool:
        """Point the perf counter's overflow at this thread, due when the child
        has used ``budget_ns`` since the watch began (as the sampled
        crossing was). False: no perf counter, or the kernel refused."""
        if self.perf is None or self.budget_ns is None:
            return False
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, [CROSSING_SIGNAL])
            fcntl.fcntl(self.perf.fd, _F_SETSIG, CROSSING_SIGNAL)
            fcntl.fcntl(self.perf.fd, _F_SETOWN_EX,
                        struct.pack("ii", _F_OWNER_TID, threading.get_native_id()))
            left = self.budget_ns - self.perf.read_ns()
            if left <= 0:
                self.crossed_at = time.monotonic()
                return False
            self.perf.arm(left)
            return True
        except OSError:
            return False

    def start(self) -> CpuWatch:
        self._thread.start()
        self._ready.wait(5.0)
        return self

    def finish(self, wait_s: float) -> bool:
        """Wait up to wait_s for the process to disappear; True if it did."""
        gone = self.gone.wait(wait_s)
        self._stop.set()
        self._thread.join(2)
        if self.perf is not None:
            try:
                self.perf_used_ns = self.perf.read_ns()  # the final count, readable after the reap
            except OSError:
                pass
            self.perf.close()
        return gone

    @property
    def used_ms(self) -> float:
        return (self.last - self.baseline) / 1e6


# ------------------------------------------------------------------ setup

def setup(sysm: Corral, upstream_url: str) -> dict:
    admin = sysm.admin()
    try:
        admin.create_namespace(NS)
        disp = (TEMPLATES / "extras_dispatcher.py").read_text()
        if "\nOUTBOUND = None\n" not in disp:
            raise Unavailable("templates/extras_dispatcher.py lost its `OUTBOUND = None` line")
        admin.deploy_platform("egress", (TEMPLATES / "extras_egress.py").read_bytes(), [])
        admin.deploy_platform(
            "dispatch", disp.encode(),
            [{"type": "dispatch_namespace", "name": "dispatcher", "namespace": NS}])
        admin.add_route("*/*", "dispatch")
        admin.deploy_platform(
            "dispatch_out", disp.replace("\nOUTBOUND = None\n",
                                         f"\nOUTBOUND = {CUSTOMER!r}\n").encode(),
            [{"type": "dispatch_namespace", "name": "dispatcher", "namespace": NS,
              "outbound": {"worker": {"service": "egress"}, "params": [{"name": "customer"}]}}])
        admin.add_route("*.out.localhost/*", "dispatch_out")
        user = (TEMPLATES / "extras_user.py").read_text().replace("@UPSTREAM@", upstream_url)
        for name in ("fx", "spin"):
            admin.deploy_user(NS, name, user.encode())
    except (AdminError, OSError) as e:
        raise Unavailable(f"admin API: {e}") from e
    finally:
        admin.close()
    # end-to-end checks, and proof that the .out. path goes through `egress`:
    # one request there is one more invocation (dispatcher, fx, egress)
    c = httpclient.Conn(sysm.port, timeout=30)
    checks = {}
    try:
        for host, path in (("fx.localhost", "/plain"), ("fx.localhost", "/fetch"),
                           ("fx.out.localhost", "/fetch")):
            st, body, _ = c.request(host, path)
            if st != 200 or body != b"200":
                raise Unavailable(f"{host}{path} answered {st} {body[:200]!r}")
        for host in ("fx.localhost", "fx.out.localhost"):
            before = _invocations(sysm)
            c.request(host, "/fetch")
            after = _invocations(sysm)
            checks[host] = None if before is None or after is None else after - before
    except (httpclient.HTTPError, OSError) as e:
        raise Unavailable(f"request failed: {e}") from e
    finally:
        c.close()
    return {"invocations_per_fetch_request": checks}


def _invocations(sysm: Corral) -> float | None:
    admin = sysm.admin()
    try:
        series = [v for k, v in admin.metrics().items()
                  if k == "corral_invocations_total" or k.startswith("corral_invocations_total{")]
        return sum(series) if series else None  # labelled by namespace, outcome and handler
    except (AdminError, OSError):
        return None
    finally:
        admin.close()


# ------------------------------------------------------------------ brokered fetch

def measure_fetch(port: int, up_port: int, n: int, log) -> dict:
    """n rounds; each round one request of every kind, each kind on its own
    keep-alive connection, so drift and noise hit all kinds alike."""
    conns = {k: httpclient.Conn(up_port if host is None else port) for k, host, _ in FETCH_KINDS}
    expect = {k: (b"ok" if host is None else b"200") for k, host, _ in FETCH_KINDS}
    hosts = {k: (host or f"127.0.0.1:{up_port}", path) for k, host, path in FETCH_KINDS}
    times: dict[str, list[int]] = {k: [] for k in conns}
    errors: dict[str, int] = {k: 0 for k in conns}
    first_error: dict[str, str] = {}
    try:
        for rnd in range(n + 50):  # the first 50 rounds settle connections and code paths
            for k, conn in conns.items():
                h, p = hosts[k]
                try:
                    st, body, ns = conn.request(h, p)
                except (httpclient.HTTPError, OSError) as e:
                    conn.close()
                    errors[k] += 1
                    first_error.setdefault(k, f"{type(e).__name__}: {e}")
                    continue
                err = httpclient.check(st, body, expect[k])
                if err:
                    errors[k] += 1
                    first_error.setdefault(k, err)
                elif rnd >= 50:
                    times[k].append(ns)
    finally:
        for c in conns.values():
            c.close()
    out: dict = {"n": n}
    for k in conns:
        out[k] = httpclient.summarize_ms(times[k])
        out[k].update(errors=errors[k], first_error=first_error.get(k),
                      reconnects=conns[k].reconnects)
    for tag, with_fetch, without in (("adds", "fetch", "plain"), ("adds_out", "fetch_out",
                                                                  "plain_out")):
        out[tag] = {"p50": out[with_fetch]["p50"] - out[without]["p50"],
                    "p99": out[with_fetch]["p99"] - out[without]["p99"]}
        # the same, robust to drift: median of the per-round differences
        pairs = [(a - b) / 1e6 for a, b in zip(times[with_fetch], times[without], strict=False)]
        out[tag]["paired_median"] = statistics.median(pairs) if pairs else float("nan")
    d = out["direct"]
    log(f"  brokered fetch adds {out['adds']['p50']:.3f} ms p50 ({out['adds']['p99']:.3f} ms p99) "
        f"over a direct request of {d['p50']:.3f} ms (p99 {d['p99']:.3f})")
    log(f"  through the outbound worker: adds {out['adds_out']['p50']:.3f} ms p50 "
        f"({out['adds_out']['p99']:.3f} ms p99)")
    return out


# ------------------------------------------------------------------ CPU limits

def measure_cpu(sysm: Corral, budgets: list[float], runs: int, log) -> dict:
    port = sysm.port
    conn = httpclient.Conn(port, timeout=60)
    out: dict = {"runs": runs, "budgets": {}}
    try:
        for b in budgets:
            rows = []
            for _ in range(runs):
                rows.append(_cpu_run(sysm, conn, b))
            ok = [r for r in rows if r.get("error") == "exceededCpu" and r.get("consumed_ms")
                  is not None]
            summ: dict = {"rows": rows, "n_ok": len(ok)}
            if ok:
                cons = [r["consumed_ms"] for r in ok]
                wall = [r["dispatcher_ms"] for r in ok if r.get("dispatcher_ms") is not None]
                client = [r["client_ms"] for r in ok]
                summ.update(
                    consumed_mean=statistics.fmean(cons), consumed_max=max(cons),
                    consumed_min=min(cons),
                    overshoot_mean=statistics.fmean(cons) - b, overshoot_max=max(cons) - b,
                    dispatcher_mean=statistics.fmean(wall) if wall else float("nan"),
                    dispatcher_max=max(wall) if wall else float("nan"),
                    client_mean=statistics.fmean(client),
                    exit_gap_max=max((r["exit_gap_ms"] or 0.0) for r in ok),
                    step_ms=statistics.median(r["step_ms"] for r in ok
                                              if r.get("step_ms") is not None)
                    if any(r.get("step_ms") is not None for r in ok) else None,
                    poller_realtime=all(r["poller_realtime"] for r in ok))
                exact = [r["perf_consumed_ms"] - b for r in ok if r.get("perf_consumed_ms") is not None]
                report = [r["report_ms"] for r in ok if r.get("report_ms") is not None]
                if exact:
                    summ.update(perf_overshoot_mean=statistics.fmean(exact), perf_overshoot_max=max(exact))
                if report:
                    summ.update(report_mean=statistics.fmean(report), report_max=max(report))
                log(f"  cpuMs {b:g}: consumed mean {summ['consumed_mean']:.1f} ms, max "
                    f"{summ['consumed_max']:.1f} ms; dispatcher saw "
                    f"{summ['dispatcher_mean']:.1f} ms wall ({len(ok)}/{runs} runs killed)")
            bad = [r for r in rows if r not in ok]
            if bad:
                summ["first_problem"] = bad[0].get("problem") or json.dumps(bad[0])[:300]
                log(f"  cpuMs {b:g}: {len(bad)} run(s) not measured: {summ['first_problem']}")
            out["budgets"][f"{b:g}"] = summ
    finally:
        conn.close()
    return out


def _cpu_run(sysm: Corral, conn: httpclient.Conn, budget: float) -> dict:
    row: dict = {"budget_ms": budget}
    try:
        st, body, _ = conn.request("spin.localhost", "/pid")
        if st != 200:
            row["problem"] = f"/pid answered {st} {body[:200]!r}"
            return row
        pid = int(body)
        row["pid"] = pid
        if pid not in procs.process_tree(sysm.pid):
            row["problem"] = f"pid {pid} from /pid is not in the server's process tree"
            return row
        watch = CpuWatch(pid, budget_ms=budget)
        if watch.baseline is None:
            row["problem"] = f"cannot read /proc/{pid}/schedstat"
            return row
        watch.start()
        try:
            st, body, ns = conn.request("spin.localhost", "/spin", {"x-cpu-ms": f"{budget:g}"})
        finally:
            gone = watch.finish(5.0)
        row["client_ms"] = ns / 1e6
        row["status"] = st
        row["consumed_ms"] = watch.used_ms
        row["samples"] = watch.samples
        row["child_gone"] = gone
        row["poller_realtime"] = watch.realtime
        row["exit_gap_ms"] = watch.exit_gap_ms
        row["max_interval_ms"] = watch.max_interval_ms
        # how the reading advances while the child spins (the scheduler tick, if
        # the kernel only folds a running task's time in at ticks); the last
        # step is the one the exit flushed, if it did
        inner = watch.steps_ns[1:-1]
        row["step_ms"] = statistics.median(inner) / 1e6 if inner else None
        try:
            info = json.loads(body)
        except ValueError:
            info = {}
        row["error"] = info.get("error")
        row["dispatcher_ms"] = info.get("elapsed_ms")
        row["perf_consumed_ms"] = None if watch.perf_used_ns is None else watch.perf_used_ns / 1e6
        # From the budget running out (the perf count crossing it) to the
        # dispatcher holding its exceededCpu: kill, reap and report.
        caught = info.get("caught_at")
        row["report_ms"] = (caught - watch.crossed_at) * 1000.0 \
            if caught is not None and watch.crossed_at is not None else None
        if st != 503 or row["error"] != "exceededCpu":
            row["problem"] = f"/spin answered {st} {body[:200]!r}"
        elif not gone:
            row["problem"] = f"child {pid} still alive 5 s after the answer"
    except (httpclient.HTTPError, OSError, ValueError) as e:
        conn.close()
        row["problem"] = f"{type(e).__name__}: {e}"
    return row


# ------------------------------------------------------------------ entry

EGRESS_CONFIG = """\
# written by scripts/bench for its Corral extras: the bench's upstream is on
# 127.0.0.1, and Corral refuses loopback/private fetch targets unless allowed
[outbound]
allow_hosts = ["127.0.0.1"]
"""


def _launch(sysm: Corral, cmd_template: str | None, log) -> str:
    """Start the extras' Corral allowing fetches to 127.0.0.1 only (its egress
    policy blocks loopback by default). A Corral that does not know the
    [outbound] section refuses the file: it is then started without it."""
    if cmd_template and "--config" in cmd_template:
        sysm.launch()
        return "started with the --config of --corral-cmd (it must allow 127.0.0.1 as target)"
    cfg = BENCH_DIR / "corral-extras.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(EGRESS_CONFIG)
    try:
        sysm.launch(["--config", str(cfg)])
        return "[outbound] allow_hosts = [\"127.0.0.1\"] (Corral blocks loopback and private " \
               "fetch targets by default)"
    except Unavailable as e:
        if sysm.server is None or sysm.server.alive():
            raise
        log(f"  extras: corral refused {cfg.name} ({e}); starting it without")
        sysm.stop()
        sysm.launch()
        return f"started without an [outbound] config (refused: {str(e)[:200]})"

def run(args, log, cmd_template: str | None = None) -> dict:
    res: dict = {}
    up_port = free_port()
    upstream = Server("upstream", [sys.executable, str(Path(__file__).with_name("upstream.py")),
                                   str(up_port)])
    sysm = Corral(log)
    sysm.server_name = "corral-extras"
    if cmd_template:
        sysm.cmd_template = cmd_template
    try:
        try:
            upstream.wait_port(up_port, 20)
        except RuntimeError as e:
            raise Unavailable(f"upstream: {e}") from e
        upstream_url = f"http://127.0.0.1:{up_port}/"
        t = time.monotonic()
        res["egress"] = _launch(sysm, cmd_template, log)
        res["setup"] = setup(sysm, upstream_url)
        log(f"  extras: corral up on 127.0.0.1:{sysm.port} with dispatch, dispatch_out, egress, "
            f"fx, spin in {time.monotonic() - t:.1f}s; upstream {upstream_url}")
        res["upstream"] = upstream_url
        try:
            res["fetch"] = measure_fetch(sysm.port, up_port, args.extras_requests, log)
        except (httpclient.HTTPError, OSError) as e:
            res["fetch"] = {"unavailable": f"{type(e).__name__}: {e}"}
        try:
            if args.cpu_runs > 0:
                res["cpu"] = measure_cpu(sysm, args.cpu_budget_list, args.cpu_runs, log)
        except (httpclient.HTTPError, OSError) as e:
            res["cpu"] = {"unavailable": f"{type(e).__name__}: {e}"}
        if not sysm.server.alive():
            res["died"] = f"exited with status {sysm.server.proc.returncode}: " \
                          f"{sysm.server.log_tail()}"
    except Unavailable as e:
        res["unavailable"] = str(e)
        if sysm.server is not None and not sysm.server.alive():
            res["unavailable"] += f"; server exited: {sysm.server.log_tail()}"
        log(f"  extras: not available ({res['unavailable']})")
    finally:
        sysm.stop()
        upstream.stop()
    return res
