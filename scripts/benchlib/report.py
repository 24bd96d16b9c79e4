"""The printed table: each system's figures, then Corral/workerd and Corral/bare."""
from __future__ import annotations

import math
import statistics

ORDER = ("workerd", "bare", "corral")


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def _fmt(x: float) -> str:
    if x is None or math.isnan(x):
        return "-"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _ratio(a: float, b: float) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b <= 1e-6:
        return "-"  # every figure here is positive: a zero (or noise below it) has no ratio
    r = a / b
    return f"{r:.2f}x" if r < 100 else f"{r:.0f}x"


def _rows(results: dict) -> list[tuple[str, dict, str]]:
    """(row label, {system: tuple of values}, kind) for every row."""
    systems = results["systems"]
    ks = results["args"]["tenant_counts"]
    rows = []

    def get(fn):
        out = {}
        for key, r in systems.items():
            if "unavailable" in r:
                continue
            try:
                out[key] = tuple(_num(v) for v in fn(r))
            except (KeyError, TypeError):
                out[key] = (float("nan"),)
        return out

    rows.append(("req/s 1 tenant", get(lambda r: (r["rps"]["1"]["rps"],)), "rps"))
    for k in ks:
        rows.append((f"req/s {k} tenants", get(lambda r, k=k: (r["rps"][str(k)]["rps"],)), "rps"))
    for k in dict.fromkeys(["1", *map(str, ks)]):
        rows.append((f"CPU us/req {k} (server / all)", get(lambda r, k=k: _cpu_row(r, k)), "us"))
    # The host kernel's own threads (kdamond's page sampling above all), in no
    # figure of the server's: their work grows with how many processes map a page.
    rows.append((f"host kernel threads' CPU us/req {ks[-1]}",
                 get(lambda r: (sum(r["rps"][str(ks[-1])]["kernel_us_per_request"].values()),)), "us"))
    rows.append(("warm p50 / p99 / p99.9 ms",
                 get(lambda r: (r["warm_latency"]["p50"], r["warm_latency"]["p99"],
                                r["warm_latency"]["p999"])), "ms"))
    if results["args"].get("paced_gap_ms"):
        rows.append(("paced p50 / p99 ms",
                     get(lambda r: (r["paced_latency"]["p50"], r["paced_latency"]["p99"])), "ms"))
    if results["args"]["cold"]:
        rows.append(("cold p50 / p99 ms", get(lambda r: (r["cold"]["p50"], r["cold"]["p99"])), "ms"))
    if results["args"].get("storm"):
        rows.append(("storm p50 / p99 ms", get(lambda r: (r["storm"]["p50"], r["storm"]["p99"])), "ms"))
        # How saturated the storm left the machine, and what the server lost
        # waiting for a CPU: a storm bound by CPU is cut by less work per cold
        # start, not by ordering it differently.
        rows.append(("storm CPUs busy % / server waited ms",
                     get(lambda r: (r["storm"]["box_busy_pct"], r["storm"]["server_waited_ms"])), "n"))
        rows.append(("storm CPU ms / cold start (all)",
                     get(lambda r: (sum(ms for role, ms in r["storm"]["cpu_ms_per_cold_start"].items()
                                       if role != "keepers"),)), "ms"))
        rows.append(("storm host kernel threads' CPU ms / cold start",
                     get(lambda r: (sum(r["storm"]["kernel_ms_per_cold_start"].values()),)), "ms"))
        # The storm's cold starts that found no spare ready, and how long they
        # waited for one (Corral's corral_spare_wait_seconds): the wait before
        # any load began, where a storm's slowest requests spend their time.
        rows.append(("storm cold starts that waited for a spare / mean wait ms",
                     get(lambda r: (r["storm"]["spare_waited"], r["storm"]["spare_wait_mean_ms"])),
                     "ms"))
        # What each cold start took from the machine's memory, and what a new
        # page cost just after: in a VM the second can be ~8x once earlier
        # load used up the memory the host keeps backed (procs.new_page_us).
        rows.append(("storm MB taken / cold start; us per new page",
                     get(lambda r: (r["storm"]["mb_per_cold_start"], r["storm"]["new_page_us"])), "mb"))
        # How much memory the machine had in use as each storm began: where a
        # VM's host starts charging 5-10x for a new page (procs.new_page_us).
        rows.append(("storm GB in use before it",
                     get(lambda r: (r["storm"]["mem_in_use_gb"],)), "mb"))
    for k in ks:
        rows.append((f"PSS MB / tenant ({k})",
                     get(lambda r, k=k: (r["pss_per_tenant_mb"][str(k)],)), "mb"))
    kmax = ks[-1]
    rows.append((f"PSS MB / idle tenant ({kmax})",
                 get(lambda r: (r["pss_idle_per_tenant_mb"],)), "mb"))
    rows.append((f"PSS MB 1 / {kmax} warm",
                 get(lambda r: (r["pss"]["1"]["mb"], r["pss"][str(kmax)]["mb"])), "mb"))
    rows.append(("PSS MB after all load", get(lambda r: (r["pss"]["end"]["mb"],)), "mb"))
    rows.append((f"processes 1 / {kmax} warm",
                 get(lambda r: (r["pss"]["1"]["procs"], r["pss"][str(kmax)]["procs"])), "n"))
    return rows


def _cpu_row(r: dict, k: str) -> tuple[float, float]:
    """The server process's CPU per request and the whole tree's (server,
    zygotes, children) over a throughput figure's runs."""
    cpu = r["rps"][k]["cpu_us_per_request"]
    return cpu["server"], cpu["server"] + cpu.get("direct", 0.0) + cpu.get("others", 0.0)


def _bad_run(r: dict, label: str) -> bool:
    k = label.split()[1]  # "req/s 300 tenants" -> "300"
    run = r.get("rps", {}).get(k, {})
    bad = run.get("non2xx", 0) + run.get("socket_errors", 0)
    return bool(run.get("error")) or bad > 0.001 * max(run.get("requests", 0), 1)


def render(results: dict) -> str:
    systems = results["systems"]
    out = []
    if any(not r.get("main_skipped") for r in systems.values()):
        out += _render_main({**results, "systems": {k: r for k, r in systems.items()
                                                    if not r.get("main_skipped")}})
    corral = systems.get("corral", {})
    if "extras" in corral:
        out += _render_extras(corral["extras"], results["args"])
    if "observability" in corral:
        from .corral_observability import render as render_observability
        out += render_observability(corral["observability"])
    return "\n".join(out)


#: The figures taken turn about: (label, how to read a system's per-run values).
_PAIRED = (
    ("req/s {k}", lambda r, k: r["rps"][k]["runs_rps"]),
    ("warm p50", lambda r, k: [run["p50"] for run in r["warm_latency"]["runs"]]),
    ("warm p99", lambda r, k: [run["p99"] for run in r["warm_latency"]["runs"]]),
    ("paced p50", lambda r, k: [run["p50"] for run in r["paced_latency"]["runs"]]),
    ("paced p99", lambda r, k: [run["p99"] for run in r["paced_latency"]["runs"]]),
)


def _pair_lines(results: dict) -> list[str]:
    """Corral / workerd for each pair of runs taken side by side (the n-th
    run of each system, one right after the other), and their median: the
    ratio the host's drift over the whole bench moves least."""
    systems = results["systems"]
    corral, workerd = systems.get("corral", {}), systems.get("workerd", {})
    if not corral or not workerd or "unavailable" in corral or "unavailable" in workerd:
        return []
    cells = []
    ks = ["1", *(str(k) for k in results["args"]["tenant_counts"])]
    for label, values in _PAIRED:
        for k in (ks if "{k}" in label else ks[:1]):
            try:
                ratios = [c / w for c, w in zip(values(corral, k), values(workerd, k), strict=True)
                          if w > 0]
            except (KeyError, TypeError, ValueError):
                continue
            if len(ratios) > 1:
                cells.append(f"{label.format(k=k)} {statistics.median(ratios):.2f}x ("
                             + " ".join(f"{x:.2f}" for x in ratios) + ")")
    if not cells:
        return []
    return ["  pairs, corral / workerd: the median of the ratios of runs taken side by side "
            "(each repetition, one system right after the other, the order switched each time), "
            "each pair's in brackets: " + "; ".join(cells)]


def _render_main(results: dict) -> list[str]:
    systems = results["systems"]
    keys = [k for k in ORDER if k in systems]
    ratio_cols = []
    if "corral" in systems and "unavailable" not in systems["corral"]:
        for other in ("workerd", "bare"):
            if other in systems and "unavailable" not in systems[other]:
                ratio_cols.append(other)
    headers = [systems[k]["label"] for k in keys] + [f"corral/{systems[o]['label']}"
                                                     for o in ratio_cols]
    table = []
    flagged = False
    for label, vals, kind in _rows(results):
        line = [label]
        fmt = (lambda x: "-" if math.isnan(x) else f"{x:.0f}") if kind == "n" else _fmt
        for k in keys:
            v = vals.get(k)
            cell = "n/a" if v is None else " / ".join(fmt(x) for x in v)
            if v is not None and kind == "rps" and _bad_run(systems[k], label):
                cell += " !"
                flagged = True
            line.append(cell)
        for o in ratio_cols:
            a, b = vals.get("corral"), vals.get(o)
            if a is None or b is None or kind == "n":
                line.append("-")
            else:
                line.append(" / ".join(_ratio(x, y) for x, y in zip(a, b, strict=False)))
        table.append(line)
    width0 = max(len(r[0]) for r in table + [[""]]) + 2
    widths = [max(len(h), *(len(r[i + 1]) for r in table)) + 3 for i, h in enumerate(headers)]
    out = ["", " " * width0 + "".join(h.rjust(w) for h, w in zip(headers, widths, strict=False))]
    for r in table:
        out.append(r[0].ljust(width0) + "".join(c.rjust(w) for c, w in zip(r[1:], widths, strict=False)))

    a = results["args"]
    out.append("")
    out.append("notes:")
    out.append(f"  {results['cores']} cores; one system measured at a time on 127.0.0.1 (the "
               f"latency and throughput runs turn about, every server up: see 'pairs' below; "
               f"the rest one system after another, each alone on a fresh server); "
               f"{results['loadgen']}; each throughput run after a pass touching every "
               f"tenant once and {a['warmup']:g}s of unrecorded load"
               + (f"; req/s is the median of {a['repeat']} runs, each listed in the log"
                  if a.get("repeat", 1) > 1 else "") + ".")
    spreads = []
    for r in results.get("systems", {}).values():
        for k, fig in sorted((r.get("rps") or {}).items(), key=lambda kv: int(kv[0])):
            runs = fig.get("runs_rps") if isinstance(fig, dict) else None
            if runs and len(runs) > 1:
                spreads.append(f"{r.get('label', '?')} {k}: {min(runs):,.0f}-{max(runs):,.0f}")
    if spreads:
        out.append("  req/s spread (min-max of the runs): " + "; ".join(spreads))
    for figure, label in (("warm_latency", "warm"), ("paced_latency", "paced"), ("cold", "cold"),
                          ("storm", "storm")):
        spreads = [f"{r.get('label', '?')} p50 {_fmt(sp['p50'][0])}-{_fmt(sp['p50'][1])}, "
                   f"p99 {_fmt(sp['p99'][0])}-{_fmt(sp['p99'][1])}"
                   for r in results.get("systems", {}).values()
                   if (sp := (r.get(figure) or {}).get("spread"))]
        if spreads:
            out.append(f"  {label} latency ms, median of {a.get('repeat', 1)} runs; spread (min-max "
                       f"of the runs): " + "; ".join(spreads))
    out += _pair_lines(results)
    out.append("  CPU us/req K: CPU the kernel charged (each thread's schedstat; the server's "
               "whole process from /proc/PID/stat) over the K-tenant throughput runs / their "
               "requests; server = the server process, all = its whole tree (Corral: "
               "supervisor + zygotes + sandboxed children); the log splits it by role and gives "
               "Corral's dispatcher and user invocations' own CPU. While requests are in "
               "flight Corral keeps the host's cores from halting (keep_cores_awake_us): by "
               "default with a 0 us CPU latency request on /dev/cpu_dma_latency, so every core "
               "polls in the kernel's idle loop (idle time, in no figure; it speeds every "
               "process's wake-ups, the load generator's too, and is dropped 2 ms after Corral's "
               "last request, before the other system's run), else with spinning keeper threads, "
               "in the log as 'keepers' and in neither figure.")
    out.append(f"  warm latency: {a['latency_requests']} sequential GETs to t0 on one keep-alive "
               f"connection (raw socket, perf_counter_ns)"
               + (f", {a['repeat']} times." if a.get("repeat", 1) > 1 else "."))
    if a.get("paced_gap_ms"):
        out.append(f"  paced latency: the same with {a['latency_requests'] // 2} GETs and a "
                   f"{a['paced_gap_ms']:g} ms pause after each answer: a lightly used tenant, "
                   f"every process on the path woken from sleep.")
    if a["cold"]:
        out.append(f"  cold start: first-ever request to each of {a['cold']} fresh tenants, "
                   f"sequential, on one keep-alive connection, {a['cold_pause_ms']:g} ms pause "
                   f"before each" + (f"; {a['repeat']} runs, each with tenants of its own."
                                     if a.get("repeat", 1) > 1 else "."))
    if a.get("storm"):
        out.append(f"  storm: first-ever requests to {a['storm']} more fresh tenants back to back, "
                   f"no pause, from {a['storm_connections']} keep-alive connections at once (each "
                   f"sends its next as soon as its answer is in); p99.9 and the total in the log"
                   + (f"; {a['repeat']} storms, 1 s apart, each with tenants of its own."
                      if a.get("repeat", 1) > 1 else "."))
        out.append("  storm CPUs busy: share of all CPUs' time not idle during a storm (/proc/stat, "
                   "whoever used it); server waited: the time the server process's threads were "
                   "runnable but waited for a CPU (schedstat run delay) during a storm; medians "
                   "of the storms.")
        out.append("  storm cold starts that waited for a spare: Corral's corral_spare_wait_seconds "
                   "over each storm (the rest found one ready); the mean is of those that waited, "
                   "before their load began; medians of the storms, the log has bounds for half "
                   "and 99% of the waits.")
        out.append("  storm CPU / cold start: every process of the server's (schedstat) over the "
                   "storms / their cold starts; the log splits it by role.")
        out.append("  host kernel threads' CPU (per request at the most tenants, per storm cold "
                   "start): the schedstat of the kernel's own threads (children of kthreadd) over "
                   "the same runs, in no other figure; the log names the largest. The throughput "
                   "runs take turns with every server up, so their figure is the host's while that "
                   "system ran, the other's idle processes included; the storms run one system "
                   "alone. On a host that "
                   "runs DAMON's physical-address monitoring (kdamond, for proactive reclaim), "
                   "each page it samples costs one page-table walk per process mapping it: a "
                   "zygote's page shared by hundreds of children costs hundreds, the same page "
                   "of a one-process server one.")
        out.append("  storm MB taken: the drop of the machine's MemAvailable over a storm per cold "
                   "start (the kernel's memory too); us per new page: a 16 MB anonymous mapping "
                   "written a page at a time right after each storm; GB in use: MemTotal - "
                   "MemFree as the storm began (page cache included). In a VM whose host backs only "
                   "so much guest memory cheaply (here ~3 us a page until ~2.4-4 GB were in use, "
                   "the step moving with the host's own load, then 15-40 us), a storm that starts "
                   "or ends past the step pays the second price for every page it takes, so its "
                   "CPU per cold start follows its MB per cold start.")
    out.append("  PSS MB / tenant (K): (PSS with K tenants warm - PSS with 1 warm) / (K-1), "
               "summed over the server's process tree (/proc/PID/smaps_rollup); 'warm' = one "
               "request each, on a server that has had no load yet (the 1-tenant baseline: "
               "20 requests to t0); 'after all load' is after the cold starts and storms. 'idle "
               "tenant': the same, once the K tenants sat idle 12 s (Corral's children give "
               "unchanged copied pages back after pool.reshare_after_s, 5 s).")
    if flagged:
        out.append("  ! = that run had errors or non-2xx answers (see PROBLEM lines): "
                   "its req/s is not a valid figure.")
    if ratio_cols:
        out.append("  ratios are corral / other: above 1x is more req/s, or more ms / MB.")
    for k in keys:
        r = systems[k]
        if "unavailable" in r:
            out.append(f"{r['label']}: not available ({r['unavailable']})")
            continue
        for n in r.get("notes", []):
            out.append(f"  {r['label']}: {n}")
        if k == "corral" and r.get("deploy_ms", {}).get("n"):
            d = r["deploy_ms"]
            out.append(f"  corral: deploy over the admin API p50 {_fmt(d['p50'])} ms, "
                       f"p99 {_fmt(d['p99'])} ms per upload ({d['n']} scripts"
                       + (f", {d['threads']} uploader thread(s), {_fmt(d['wall_s'])} s in all"
                          if d.get("threads") else "") + "; each upload is validated by "
                       "loading it in a sandbox)")
        pb = r.get("pool_at_baseline") or {}
        if k == "corral" and pb.get("spares_ready") is not None and pb.get("spares_setting") \
                and pb["spares_ready"] > pb["spares_setting"] + 1:
            out.append(f"  corral: {pb['spares_ready']:.0f} spare children (setting "
                       f"{pb['spares_setting']}) were alive at the 1-tenant PSS baseline: the pool "
                       f"refills to spares + requests waiting for one and keeps any surplus (here "
                       f"left by the uploads, each validated in a spare); the first cold starts use "
                       f"it up, which biases PSS MB / tenant low by about its PSS / (K-1).")
        if k == "corral" and r.get("pool"):
            p = r["pool"]
            ready = p.get("spares_ready")
            out.append(f"  corral: cold start ran with the pool's spares setting = "
                       f"{p.get('spares_setting', '?')} ({p.get('spares_source', '?')}; "
                       f"`[pool] spares` in a --config file; Corral's default is 8), "
                       f"{'?' if ready is None else f'{ready:.0f}'} spare children ready when "
                       f"it began. A cold request takes a pre-forked, jailed spare and loads "
                       f"the script into it (no fork/exec on the request path); the zygote "
                       f"refills spares in the {a['cold_pause_ms']:g} ms pauses, so a burst of "
                       f"more than {p.get('spares_setting', '?')} back-to-back cold starts "
                       f"would also wait for forks, which this figure does not show.")
        probs = []
        for kk, rr in r.get("rps", {}).items():
            if rr.get("non2xx") or rr.get("socket_errors") or rr.get("error"):
                probs.append(f"req/s {kk}: {rr.get('non2xx', 0)} non-2xx, "
                             f"{rr.get('socket_errors', 0)} socket errors"
                             + (f", {rr['error']}" if rr.get("error") else ""))
        for kk, t in r.get("touch", {}).items():
            if t.get("nerrors"):
                probs.append(f"pass over {kk} tenants: {t['nerrors']} errors, e.g. "
                             f"{t['errors'][0]}")
        if r.get("warm_latency", {}).get("errors"):
            probs.append(f"warm latency: {r['warm_latency']['errors']} bad answers, e.g. "
                         f"{r['warm_latency']['first_error']}")
        if r.get("cold", {}).get("errors"):
            probs.append(f"cold: {r['cold']['errors']} failed, e.g. {r['cold']['first_error']}")
        if r.get("died"):
            probs.append(r["died"])
        for p in probs:
            out.append(f"  {r['label']} PROBLEM: {p}")
    return out


def _cnt(x) -> str:
    return "?" if x is None else f"{x:.0f}"


def _ms(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _ms1(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


FETCH_LABELS = (
    ("direct", "direct GET to the upstream (no Corral)"),
    ("plain", "dispatcher -> user worker, no fetch"),
    ("fetch", "dispatcher -> user worker, await fetch(upstream)"),
    ("plain_out", "same, dispatcher with outbound worker, no fetch"),
    ("fetch_out", "same, fetch via the outbound worker `egress`"),
)


def _render_extras(x: dict, args: dict) -> list[str]:
    out = ["", "corral extras (a Corral of their own: dispatcher on */*, a second one with an "
               "outbound worker on *.out.localhost/*; upstream answering 'ok' on 127.0.0.1)"]
    if "unavailable" in x:
        out.append(f"  not available: {x['unavailable']}")
        return out
    if x.get("egress"):
        out.append(f"  egress: {x['egress']}")
    f = x.get("fetch", {})
    if "unavailable" in f:
        out.append(f"  brokered fetch: not available ({f['unavailable']})")
    elif f:
        d, a, ao = f["direct"], f["adds"], f["adds_out"]
        out.append(f"  brokered fetch adds {_ms(a['p50'])} ms p50 ({_ms(a['p99'])} ms p99) over a "
                   f"direct request of {_ms(d['p50'])} ms (p99 {_ms(d['p99'])} ms)")
        out.append(f"  through the outbound worker, fetch adds {_ms(ao['p50'])} ms p50 "
                   f"({_ms(ao['p99'])} ms p99) over a direct request of {_ms(d['p50'])} ms")
        w = max(len(label) for _, label in FETCH_LABELS) + 4
        out.append("    " + "".ljust(w) + "p50 ms".rjust(9) + "p99 ms".rjust(9)
                   + "mean ms".rjust(9) + "errors".rjust(8))
        for k, label in FETCH_LABELS:
            r = f.get(k, {})
            out.append("    " + label.ljust(w) + _ms(r.get("p50")).rjust(9)
                       + _ms(r.get("p99")).rjust(9) + _ms(r.get("mean")).rjust(9)
                       + str(r.get("errors", "-")).rjust(8))
        out.append(f"    (median of per-round differences: fetch {_ms(a.get('paired_median'))} ms, "
                   f"via outbound worker {_ms(ao.get('paired_median'))} ms)")
        inv = x.get("setup", {}).get("invocations_per_fetch_request", {})
        out.append(f"    {f['n']} rounds after 50 unrecorded, one request of each kind per round "
                   f"(interleaved), each kind on its own keep-alive connection; 'adds' = p50 (p99) "
                   f"with fetch - p50 (p99) without. The worker reads the 2-byte body "
                   f"(`await r.text()`) and answers the status. Invocations per request (from "
                   f"/metrics): {_cnt(inv.get('fx.localhost'))} without, "
                   f"{_cnt(inv.get('fx.out.localhost'))} with the outbound worker.")
        for k, _ in FETCH_LABELS:
            r = f.get(k, {})
            if r.get("errors"):
                out.append(f"  corral extras PROBLEM: {k}: {r['errors']} bad answers, e.g. "
                           f"{r.get('first_error')}")
    c = x.get("cpu", {})
    if "unavailable" in c:
        out.append(f"  CPU-limit precision: not available ({c['unavailable']})")
    elif c.get("budgets"):
        out.append(f"  CPU-limit precision: tight loop under limits.cpuMs = B, {c['runs']} runs "
                   f"each; CPU the killed child used (/proc/PID/schedstat, sampled every ~0.2 ms "
                   f"from the budget's crossing until the process is gone) and the wall time "
                   f"the dispatcher saw")
        hdr = ("budget ms", "consumed mean / max", "overshoot mean / max",
               "perf overshoot mean / max", "reported after mean / max",
               "dispatcher wall mean / max", "client ms", "killed")
        rows = []
        for b, r in c["budgets"].items():
            if r.get("n_ok"):
                perf = (f"{_ms(r['perf_overshoot_mean'])} / {_ms(r['perf_overshoot_max'])}"
                        if "perf_overshoot_mean" in r else "-")
                report = (f"{_ms(r['report_mean'])} / {_ms(r['report_max'])}"
                          if "report_mean" in r else "-")
                rows.append((b, f"{_ms1(r['consumed_mean'])} / {_ms1(r['consumed_max'])}",
                             f"{_ms1(r['overshoot_mean'])} / {_ms1(r['overshoot_max'])}", perf, report,
                             f"{_ms1(r['dispatcher_mean'])} / {_ms1(r['dispatcher_max'])}",
                             _ms1(r["client_mean"]), f"{r['n_ok']}/{c['runs']}"))
            else:
                rows.append((b, "-", "-", "-", "-", "-", "-", f"0/{c['runs']}"))
        widths = [max(len(h), *(len(row[i]) for row in rows)) + 3 for i, h in enumerate(hdr)]
        out.append("    " + "".join(h.rjust(wd) for h, wd in zip(hdr, widths, strict=False)))
        for row in rows:
            out.append("    " + "".join(v.rjust(wd) for v, wd in zip(row, widths, strict=False)))
        oks = [r for r in c["budgets"].values() if r.get("n_ok")]
        gap = max((r["exit_gap_max"] for r in oks), default=float("nan"))
        rt = all(r["poller_realtime"] for r in oks)
        out.append("    overshoot = consumed - budget (CPU ms; negative = killed before the budget "
                   "was seen used). The baseline is read just before the request, so consumed "
                   "includes the child's handling of the request before the loop. The dispatcher "
                   "catches e.name == 'exceededCpu' and answers 503 with its perf_counter timing; "
                   "client ms is the bench's own round trip.")
        out.append("    perf overshoot = the child's perf task-clock count at its end - budget (exact, "
                   "exit included). reported after = from that count crossing the budget (a perf "
                   "counter of the bench's own overflows there and signals a waiting thread: "
                   "nothing samples the child before) to the dispatcher holding exceededCpu "
                   "(both CLOCK_MONOTONIC): kill, reap and report.")
        out.append(f"    sampler: {'SCHED_FIFO' if rt else 'normal-priority (SCHED_FIFO refused)'} "
                   f"thread; at most {_ms(gap)} ms between the last sample and the process being "
                   f"gone (the most CPU that can have gone unseen).")
        steps = [r["step_ms"] for r in oks if r.get("step_ms") is not None]
        if steps:
            st = max(steps)
            out.append(f"    schedstat of the spinning child advanced in steps of up to ~{st:.1f} ms "
                       f"(median per run; the kernel adds a running task's time at scheduler ticks "
                       f"and context switches, 4 ms apart at HZ=250): the exit usually flushes the "
                       f"exact total, but a run can read short by up to one step, which shows as a "
                       f"negative overshoot.")
        for b, r in c["budgets"].items():
            if r.get("first_problem"):
                out.append(f"  corral extras PROBLEM: cpuMs {b}: "
                           f"{len(r['rows']) - r['n_ok']} run(s) not measured: "
                           f"{r['first_problem']}")
    if x.get("died"):
        out.append(f"  corral extras PROBLEM: server {x['died']}")
    return out
