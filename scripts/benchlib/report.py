"""The printed table: each system's figures, then Corral/workerd and Corral/bare."""
from __future__ import annotations

import math

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
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return "-"
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
    rows.append(("warm p50 / p99 ms",
                 get(lambda r: (r["warm_latency"]["p50"], r["warm_latency"]["p99"])), "ms"))
    if results["args"]["cold"]:
        rows.append(("cold p50 / p99 ms", get(lambda r: (r["cold"]["p50"], r["cold"]["p99"])), "ms"))
    for k in ks:
        rows.append((f"PSS MB / tenant ({k})",
                     get(lambda r, k=k: (r["pss_per_tenant_mb"][str(k)],)), "mb"))
    kmax = ks[-1]
    rows.append((f"PSS MB 1 / {kmax} warm",
                 get(lambda r: (r["pss"]["1"]["mb"], r["pss"][str(kmax)]["mb"])), "mb"))
    rows.append(("PSS MB after all load", get(lambda r: (r["pss"]["end"]["mb"],)), "mb"))
    rows.append((f"processes 1 / {kmax} warm",
                 get(lambda r: (r["pss"]["1"]["procs"], r["pss"][str(kmax)]["procs"])), "n"))
    return rows


def _bad_run(r: dict, label: str) -> bool:
    k = label.split()[1]  # "req/s 300 tenants" -> "300"
    run = r.get("rps", {}).get(k, {})
    bad = run.get("non2xx", 0) + run.get("socket_errors", 0)
    return bool(run.get("error")) or bad > 0.001 * max(run.get("requests", 0), 1)


def render(results: dict) -> str:
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
                line.append(" / ".join(_ratio(x, y) for x, y in zip(a, b)))
        table.append(line)
    width0 = max(len(r[0]) for r in table + [[""]]) + 2
    widths = [max(len(h), *(len(r[i + 1]) for r in table)) + 3 for i, h in enumerate(headers)]
    out = ["", " " * width0 + "".join(h.rjust(w) for h, w in zip(headers, widths))]
    for r in table:
        out.append(r[0].ljust(width0) + "".join(c.rjust(w) for c, w in zip(r[1:], widths)))

    a = results["args"]
    out.append("")
    out.append("notes:")
    out.append(f"  {results['cores']} cores; systems run one at a time on 127.0.0.1; "
               f"{results['loadgen']}; each throughput run after a warm-up pass touching every "
               f"tenant once and {a['warmup']:g}s of unrecorded load.")
    out.append(f"  warm latency: {a['latency_requests']} sequential GETs to t0 on one keep-alive "
               f"connection (raw socket, perf_counter_ns).")
    if a["cold"]:
        out.append(f"  cold start: first-ever request to each of {a['cold']} fresh tenants, "
                   f"sequential, on one keep-alive connection, {a['cold_pause_ms']:g} ms pause "
                   f"before each.")
    out.append("  PSS MB / tenant (K): (PSS with K tenants warm - PSS with 1 warm) / (K-1), "
               "summed over the server's process tree (/proc/PID/smaps_rollup); 'warm' = one "
               "request each, taken before any multi-tenant load (the 1-tenant baseline is "
               "taken after the 1-tenant load); 'after all load' is at the very end.")
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
                       f"p99 {_fmt(d['p99'])} ms per script ({d['n']} scripts)")
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
    return "\n".join(out)
