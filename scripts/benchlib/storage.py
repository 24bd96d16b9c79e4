"""Storage figures: a binding call through the channel vs SQLite in one process.

A real ``corral serve`` (tests/harness.py) with a tenant that times, with
``time.perf_counter()``, each of N sequential ``await env.KV.get``,
``env.KV.put`` and D1 point queries (``SELECT ... WHERE id = ?`` on a 10,000
row table); next to it, the same statements done directly on SQLite (WAL,
synchronous=NORMAL, as the embedded backends use) in this process. The gap
is the price of brokering: a frame to the supervisor, a trio task, a worker
thread, a frame back. Durable Object RPC (``do_rpc``: a stub call that
returns its argument; ``do_rpc_storage``: one that reads and writes its
storage) is a call from the tenant's child to the supervisor, through the
object's input gate, an invocation of the object's child, and back.
"""
from __future__ import annotations

import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.storage_helpers import ALL, EVAL_TENANT, deploy, ok, start  # noqa: E402

ROWS = 10_000

TENANT_CODE = """
import time, random
ops = {ops}
out = {{}}
value = "v" * 100
await env.KV.put("bench", value)
stmt = env.DB.prepare("SELECT id, name, score FROM users WHERE id = ?")
for op in ["kv_get", "kv_put", "d1_point"]:
    times = []
    for i in range(ops):
        t = time.perf_counter()
        if op == "kv_get":
            await env.KV.get("bench")
        elif op == "kv_put":
            await env.KV.put("bench", value)
        else:
            await stmt.bind(random.randint(1, {rows})).first()
        times.append((time.perf_counter() - t) * 1000.0)
    out[op] = times
return out
"""


#: A Durable Object whose RPC methods the bench calls: ``ping`` (no storage)
#: and ``bump`` (one storage read and one write).
DO_TENANT = EVAL_TENANT + """
from workers import DurableObject

class Bench(DurableObject):
    async def ping(self, x):
        return x

    async def bump(self):
        n = (await self.ctx.storage.get("n")) or 0
        await self.ctx.storage.put("n", n + 1)
        return n + 1
"""

DO_CODE = """
import time
ops = {ops}
out = {{}}
stub = env.BENCH.getByName("bench")
for op in ["do_rpc", "do_rpc_storage"]:
    times = []
    for i in range(ops):
        t = time.perf_counter()
        if op == "do_rpc":
            await stub.ping(i)
        else:
            await stub.bump()
        times.append((time.perf_counter() - t) * 1000.0)
    out[op] = times
return out
"""


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(times: list[float]) -> dict:
    return {"p50_ms": round(_pct(times, 0.50), 4), "p99_ms": round(_pct(times, 0.99), 4),
            "mean_ms": round(statistics.fmean(times), 4), "n": len(times)}


def direct(ops: int, folder: Path) -> dict:
    """The same operations on SQLite, in this process, no channel."""
    def connect(name: str) -> sqlite3.Connection:
        conn = sqlite3.connect(folder / name, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    kv = connect("kv.sqlite3")
    kv.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expiration INTEGER, "
               "metadata BLOB)")
    value = b"v" * 100
    kv.execute("INSERT INTO kv VALUES ('bench', ?, NULL, NULL)", (value,))
    db = connect("d1.sqlite3")
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, score REAL)")
    db.executemany("INSERT INTO users VALUES (?, ?, ?)",
                   ((i, f"user{i}", i * 0.5) for i in range(1, ROWS + 1)))
    out: dict[str, list[float]] = {"kv_get": [], "kv_put": [], "d1_point": []}
    now = int(time.time())
    for _ in range(ops):
        t = time.perf_counter()
        kv.execute("SELECT value, expiration, metadata FROM kv WHERE key = ? AND "
                   "(expiration IS NULL OR expiration > ?)", ("bench", now)).fetchone()
        out["kv_get"].append((time.perf_counter() - t) * 1000.0)
    for _ in range(ops):
        t = time.perf_counter()
        kv.execute("BEGIN IMMEDIATE")
        kv.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, NULL, NULL)", ("bench", value))
        kv.execute("COMMIT")
        out["kv_put"].append((time.perf_counter() - t) * 1000.0)
    for _ in range(ops):
        t = time.perf_counter()
        db.execute("SELECT id, name, score FROM users WHERE id = ?",
                   (random.randint(1, ROWS),)).fetchone()
        out["d1_point"].append((time.perf_counter() - t) * 1000.0)
    return {op: _summary(times) for op, times in out.items()}


def run(ops: int = 2000) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="corral-bench-storage-"))
    server = start(folder / "state")
    try:
        deploy(server, "bench", ALL)
        ok(server, "bench", f"""
await env.DB.exec("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, score REAL)")
await env.DB.exec("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {ROWS}) "
                  "INSERT INTO users SELECT i, 'user' || i, i * 0.5 FROM c")""")
        ok(server, "bench", TENANT_CODE.format(ops=50, rows=ROWS))  # warm-up
        # An invocation may make 1000 subrequests (binding calls count): batches.
        channel: dict[str, list[float]] = {}
        left = ops
        while left > 0:
            batch = min(left, 300)
            for op, times in ok(server, "bench", TENANT_CODE.format(ops=batch, rows=ROWS)).items():
                channel.setdefault(op, []).extend(times)
            left -= batch
        server.deploy("bench-do", DO_TENANT, bindings=[
            {"type": "durable_object_namespace", "name": "BENCH", "class_name": "Bench"}])
        ok(server, "bench-do", DO_CODE.format(ops=50))  # warm-up
        left = ops
        while left > 0:
            batch = min(left, 300)
            for op, times in ok(server, "bench-do", DO_CODE.format(ops=batch)).items():
                channel.setdefault(op, []).extend(times)
            left -= batch
    finally:
        server.stop()
    local = direct(ops, folder)
    return {"ops": ops, "channel": {op: _summary(t) for op, t in channel.items()}, "direct": local}


def render(result: dict) -> str:
    lines = [f"storage: {result['ops']} sequential operations each, one tenant, "
             f"{os.cpu_count()} cores",
             f"{'operation':<14} {'channel p50':>12} {'p99':>9} {'direct p50':>12} {'p99':>9}  (ms)"]
    for op in ("kv_get", "kv_put", "d1_point"):
        c, d = result["channel"][op], result["direct"][op]
        lines.append(f"{op:<14} {c['p50_ms']:>12.3f} {c['p99_ms']:>9.3f} {d['p50_ms']:>12.3f} "
                     f"{d['p99_ms']:>9.3f}")
    for op in ("do_rpc", "do_rpc_storage"):
        c = result["channel"][op]
        lines.append(f"{op:<14} {c['p50_ms']:>12.3f} {c['p99_ms']:>9.3f} {'-':>12} {'-':>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="scripts/bench-storage", description=__doc__.split("\n")[0])
    ap.add_argument("--ops", type=int, default=2000, help="operations per kind (default 2000)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    result = run(args.ops)
    print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
