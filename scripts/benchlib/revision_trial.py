"""One trial of ``scripts/bench_revisions``: one tree's Corral under wrk, as a JSON line.

Run as a script inside the measured tree's own worktree::

    python revision_trial.py [--serve] TREE TENANTS DURATION CONNECTIONS WRK [CONFIG]

``--serve`` (``bench_revisions --together``): start and warm the server, print
``{"ready": PID}``, then run one measured trial per line read on stdin (each
after unrecorded load), each printed as it ends, and stop the server at the
end of stdin.

Why a separate process per trial: each revision must be started and deployed
the way its own ``scripts/benchlib`` did at that commit (an old tree knows
nothing of today's admin API), so this file puts ``TREE/scripts`` first on
``sys.path`` and imports *that* ``benchlib``. The CPU readers come from the
current tree's ``procs`` module, loaded by path under another name so the two
``benchlib`` packages never meet.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

#: Unrecorded load before each ``--serve`` trial (see :func:`main`).
WARMUP_S = 2


def _current_procs():
    """This tree's benchlib.procs, loaded by path (the measured tree's
    benchlib owns the name ``benchlib`` in this process)."""
    path = Path(__file__).resolve().parent / "procs.py"
    spec = importlib.util.spec_from_file_location("_current_bench_procs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    serve = bool(argv) and argv[0] == "--serve"
    if serve:
        argv = argv[1:]
    tree, tenants, duration, connections, wrk, *config = argv
    procs = _current_procs()
    sys.path[:0] = [str(Path(tree) / "scripts"), tree]
    from benchlib.loadgen import run_wrk
    from benchlib.systems import Corral

    corral = Corral(lambda *a: print(*a, file=sys.stderr))
    if config:  # the server's --config, given the way each tree's bench passed extra words
        launch = corral.launch
        corral.launch = lambda extra_args=None: launch([*(extra_args or []), "--config", config[0]])
    names = [f"t{i}" for i in range(int(tenants))]

    def measured() -> dict:
        before = procs.cpu_by_pid(pid)
        res = run_wrk(wrk, corral.port, hosts, int(connections), float(duration), 1)
        after = procs.cpu_by_pid(pid)
        n = max(1, res["requests"])
        per_req = {role: round(1e6 * seconds / n, 1)
                   for role, seconds in procs.role_delta(before, after).items()}
        return {"rps": res["rps"], "p99_ms": res.get("lat_p99_ms"), "requests": res["requests"],
                "non2xx": res.get("non2xx", 0), "error": res.get("error"),
                "cpu_us_per_request": per_req}

    try:
        corral.start(names)
        hosts = [corral.host(n) for n in names]
        pid = corral.server.proc.pid
        run_wrk(wrk, corral.port, hosts, int(connections), 3, 1)  # every tenant warm
        if not serve:
            print(json.dumps(measured()))
            return 0
        print(json.dumps({"ready": pid}), flush=True)
        for _ in sys.stdin:
            # The other servers ran meanwhile: this one's children sat idle
            # for a trial or more, and past pool.reshare_after_s (5 s) they
            # gave their copied pages back. Unrecorded load first, as
            # scripts/bench does before each run, so the trial does not pay
            # for copying them again (a round's order decided its ratio by up
            # to +-30%: 0.70-1.47 in one run of ten pairs without it).
            run_wrk(wrk, corral.port, hosts, int(connections), WARMUP_S, 1)
            print(json.dumps(measured()), flush=True)
    finally:
        corral.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
