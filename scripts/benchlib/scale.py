"""`scripts/bench --scale`: the management plane at scale (issue 17, point 4).

Builds a state directory with N scripts in one namespace (default 100,000)
and M namespaces (default 1,000) straight through the store, then starts a
real `corral serve` on it and measures over its admin socket and HTTP port:

* upload p50/p95 (the full API path: multipart, validation in a sandbox,
  commit; no dependencies to resolve);
* script GET, route lookup + dispatch to a warm worker, and a list page with
  a cursor, in the big namespace and in a namespace of 10 scripts (the
  figures should match: nothing on those paths scans the scripts);
* bulk delete of 10,000 tagged scripts, some of them warm (their processes
  are retired);
* the supervisor's resident memory with the big state, against a state of
  a few scripts.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from supervisor.model import ScriptRecord, content_version  # noqa: E402
from supervisor.store.store import Store  # noqa: E402
from tests.harness import Corral, multipart  # noqa: E402

CODE = b"from workers import Response, WorkerEntrypoint\n\nclass Default(WorkerEntrypoint):\n" \
       b"    async def fetch(self, request):\n        return Response('hi')\n"
BIG, SMALL = "big", "small"


def _record(ns: str, name: str, tags: list[str]) -> ScriptRecord:
    modules = {"worker.py": CODE + f"# {name}\n".encode()}
    return ScriptRecord(namespace=ns, name=name, version=content_version("worker.py", modules, [], ""),
                        main_module="worker.py", modules=modules, tags=tags)


def populate(state: Path, scripts: int, namespaces: int, tagged: int) -> float:
    started = time.perf_counter()
    with Store(state / "corral.db") as store:
        store.create_namespace(BIG)
        store.create_namespace(SMALL)
        for i in range(scripts):
            store.put_script(_record(BIG, f"s{i:06d}", ["bulk"] if i < tagged else ["keep"]))
            if i and i % 20000 == 0:
                print(f"  populated {i} scripts", file=sys.stderr)
        for i in range(10):
            store.put_script(_record(SMALL, f"s{i:06d}", []))
        for i in range(namespaces):
            store.create_namespace(f"ns{i:04d}")
            store.put_script(_record(f"ns{i:04d}", "app", []))
    return time.perf_counter() - started


def _ms(samples: list[float]) -> str:
    samples = sorted(samples)
    return f"p50 {statistics.median(samples) * 1000:.2f} ms, p95 {samples[int(len(samples) * 0.95) - 1] * 1000:.2f} ms"


def _time(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _metric(server: Corral, name: str) -> float:
    for line in server.admin("GET", "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def measure(state: Path, args: argparse.Namespace) -> dict[str, object]:
    results: dict[str, object] = {}
    server = Corral(state).start(timeout=120)
    try:
        rng = random.Random(7)
        results["supervisor_rss_mb_at_start"] = _rss_kb(server.proc.pid) / 1024
        for ns in (BIG, SMALL):
            server.deploy_dispatcher(namespace=ns, name=f"dispatch-{ns}", pattern=f"*.{ns}.test/*")
        # uploads (the full API path), into the big namespace
        body_meta = {"main_module": "worker.py", "tags": ["uploaded"]}
        uploads = []
        for i in range(args.uploads):
            body, ctype = multipart(body_meta, {"worker.py": CODE + f"# upload {i}\n".encode()})
            t = time.perf_counter()
            resp = server.admin("PUT", f"/accounts/local/workers/dispatch/namespaces/{BIG}/scripts/up{i:04d}",
                                body, ctype)
            uploads.append(time.perf_counter() - t)
            assert resp.status == 200, resp
        results["upload"] = _ms(uploads)
        for ns, count in ((BIG, args.scripts), (SMALL, 10)):
            names = [f"s{rng.randrange(min(count, 10)) if ns == SMALL else rng.randrange(args.tagged, count):06d}"
                     for _ in range(args.samples)]
            it = iter(names)
            base = f"/accounts/local/workers/dispatch/namespaces/{ns}/scripts"
            get = _time(lambda base=base, it=it: server.admin("GET", f"{base}/{next(it)}"), args.samples)
            results[f"get_script[{ns}]"] = _ms(get)
            warm = names[0]
            server.request(host=f"{warm}.{ns}.test")
            results[f"route+dispatch_warm[{ns}]"] = _ms(_time(
                lambda warm=warm, ns=ns: server.request(host=f"{warm}.{ns}.test"), args.samples))
            cold_names = iter(names[1:])
            results[f"route+dispatch_cold[{ns}]"] = _ms(_time(
                lambda names=cold_names, ns=ns: server.request(host=f"{next(names)}.{ns}.test"),
                min(50, args.samples - 1)))
        # list: the first page, and a page deep in, by cursor
        page = server.admin("GET", f"/accounts/local/workers/dispatch/namespaces/{BIG}/scripts?per_page=100").json()
        cursor = page["result_info"]["cursor"]
        results["list_page_100"] = _ms(_time(lambda: server.admin(
            "GET", f"/accounts/local/workers/dispatch/namespaces/{BIG}/scripts?per_page=100&cursor={cursor}"), 50))
        import base64
        deep = base64.urlsafe_b64encode(f"s{args.scripts - 500:06d}".encode()).decode().rstrip("=")
        results["list_page_100_deep_cursor"] = _ms(_time(lambda: server.admin(
            "GET", f"/accounts/local/workers/dispatch/namespaces/{BIG}/scripts?per_page=100&cursor={deep}"), 50))
        results[f"get_script[one of {args.namespaces} namespaces]"] = _ms(_time(lambda: server.admin(
            "GET", f"/accounts/local/workers/dispatch/namespaces/ns{rng.randrange(args.namespaces):04d}/scripts/app"),
            args.samples))
        results["supervisor_rss_mb_after_gets"] = _rss_kb(server.proc.pid) / 1024
        # bulk delete, with some of the tagged scripts warm
        for i in range(args.warm):
            server.request(host=f"s{i:06d}.{BIG}.test")
        warm_before = _metric(server, "corral_warm_scripts")
        t = time.perf_counter()
        resp = server.admin("DELETE", f"/accounts/local/workers/dispatch/namespaces/{BIG}/scripts?tags=bulk:yes")
        results["bulk_delete"] = f"{resp.json()['result']['count']} scripts in {time.perf_counter() - t:.2f} s"
        warm_after = _metric(server, "corral_warm_scripts")
        results["warm_workers_before_after_bulk_delete"] = (f"{warm_before:g} -> {warm_after:g} "
                                                            "(retired ones drain, then exit)")
        results["supervisor_rss_mb_end"] = _rss_kb(server.proc.pid) / 1024
    finally:
        server.stop()
    return results


def baseline_rss(base: Path) -> float:
    state = base / "small-state"
    populate(state, 10, 0, 0)
    server = Corral(state).start(timeout=60)
    try:
        return _rss_kb(server.proc.pid) / 1024
    finally:
        server.stop()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench --scale")
    ap.add_argument("--scripts", type=int, default=100_000)
    ap.add_argument("--namespaces", type=int, default=1000)
    ap.add_argument("--tagged", type=int, default=10_000, help="scripts tagged for the bulk delete")
    ap.add_argument("--uploads", type=int, default=200)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--warm", type=int, default=20, help="tagged scripts made warm before the bulk delete")
    ap.add_argument("--keep", help="build the state here and keep it (default: a temporary directory)")
    args = ap.parse_args(argv)
    base = Path(args.keep or tempfile.mkdtemp(prefix="corral-scale-"))
    state = base / "state"
    print(f"populating {args.scripts} scripts + {args.namespaces} namespaces in {state} ...", file=sys.stderr)
    took = populate(state, args.scripts, args.namespaces, args.tagged)
    results: dict[str, object] = {
        "populate": f"{args.scripts + args.namespaces + 10} scripts through Store.put_script in {took:.1f} s "
                    f"({took / (args.scripts + args.namespaces) * 1000:.2f} ms each)",
        "db_size_mb": round(os.path.getsize(state / "corral.db") / 2**20, 1),
    }
    results.update(measure(state, args))
    results["supervisor_rss_mb_with_10_scripts"] = baseline_rss(base)
    print(f"\nCorral management plane at scale: {args.scripts} scripts in one namespace, "
          f"{args.namespaces} namespaces")
    for key, value in results.items():
        print(f"  {key:45s} {value:.1f}" if isinstance(value, float) else f"  {key:45s} {value}")
    return 0
