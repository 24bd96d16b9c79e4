"""Cold starts of tenants with packages (FastAPI, Django) next to a bare hello,
and the memory (PSS) of each warm tenant. `scripts/bench --only-packages`.

* **warm zygote**: the set's package zygote is up (a deploy's validation
  starts it); each of N fresh tenants of that set gets its first request.
* **first ever**: the supervisor was restarted (same state dir: packages are
  in the store, no package zygote exists), and a tenant of the set gets its
  first request: a base spare imports the set itself while the set's zygote
  starts for the next ones.

Times are client-side, request sent to response read, over 127.0.0.1.
The tenants are the ones tests/test_package_tenants.py runs.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from .procs import BENCH_DIR

REPO = Path(__file__).resolve().parents[2]
HELLO = '''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("hello")
'''


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _timed(c, host: str) -> float:
    started = time.perf_counter()
    resp = c.request("/", host=host)
    elapsed = (time.perf_counter() - started) * 1000
    if resp.status != 200:
        raise RuntimeError(f"{host}: {resp.status} {resp.body[:300]!r}")
    return elapsed


def _summary(values: list[float]) -> dict:
    values = sorted(values)
    return {"n": len(values), "p50_ms": round(statistics.median(values), 2),
            "p90_ms": round(values[int(0.9 * (len(values) - 1))], 2), "max_ms": round(values[-1], 2)}


def run(log, tenants: int = 15, restarts: int = 3) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.harness import Corral, _children_of
    from tests.test_jail import _wait_admin
    from tests.test_package_tenants import DJANGO, FASTAPI, deploy

    state = BENCH_DIR / "packages-state"
    if state.exists():
        import shutil
        shutil.rmtree(state)
    sets = {"fastapi": (FASTAPI, ["fastapi"]), "django": (DJANGO, ["django"]), "hello": (HELLO, [])}
    c = Corral(state).start()
    out: dict = {"tenants_per_set": tenants}
    try:
        _wait_admin(c)
        c.deploy_dispatcher()
        for label, (source, requirements) in sets.items():
            log(f"packages: deploying {tenants} {label} tenants")
            for i in range(tenants):
                deploy(c, f"{label}{i}", f"{source}\n# tenant {i}\n", requirements)
        for label in sets:
            time.sleep(0.5)
            before = set(_all_children(c, _children_of))
            times = []
            for i in range(tenants):
                time.sleep(0.05)  # the set's spare is forked again
                times.append(_timed(c, f"{label}{i}.localhost"))
            warm = [p for p in _all_children(c, _children_of) if p not in before]
            pss = [_pss_kb(p) for p in warm]
            out[label] = {"cold_warm_zygote": _summary(times),
                          "pss_per_tenant_kb": round(statistics.median(pss)) if pss else None}
            log(f"packages: {label} cold (zygote warm) {out[label]['cold_warm_zygote']}, "
                f"PSS/tenant {out[label]['pss_per_tenant_kb']} KB")
        first: dict[str, list[float]] = {"fastapi": [], "django": [], "hello": []}
        for r in range(restarts):
            c.stop()
            c = Corral(state).start()
            _wait_admin(c)
            time.sleep(1.0)  # the base zygote's spares are up
            for label in first:
                first[label].append(_timed(c, f"{label}{r % tenants}.localhost"))
        for label, values in first.items():
            out[label]["cold_first_ever"] = _summary(values)
            log(f"packages: {label} first-ever cold start {out[label]['cold_first_ever']}")
    finally:
        c.stop()
    (BENCH_DIR / "results").mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / "results" / "packages.json").write_text(json.dumps(out, indent=2))
    return out


def _all_children(c, children_of) -> list[int]:
    """Every sandboxed child: the base zygote's and its package zygotes'."""
    base = c.zygote()
    found = []
    for pid in children_of(base) if base else []:
        grandchildren = children_of(pid)
        found += grandchildren if grandchildren else [pid]
    return found
