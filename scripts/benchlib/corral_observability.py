"""Observability overhead: req/s with a tail worker and OTLP export on, as a
ratio to both off (issue 16).

Two Corrals, one after the other, same load (one warm tenant behind the
dispatcher, the main run's load generator): "off" has no tail consumer, no
OTLP endpoint and usage off, so no trace event is built at all; "on" has a
tail worker on the dispatcher (it receives every request's event with the
user worker's nested), OTLP/HTTP export to a local sink that accepts and
drops, and usage rollups. Metrics are on in both (they always are).
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import httpclient
from .corral_admin import Admin, AdminError, multipart
from .procs import BENCH_DIR
from .systems import TEMPLATES, Corral, Unavailable

TAIL_WORKER = b'''
from workers import WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def tail(self, events):
        self.seen = len(events)
'''

OFF = "[observability]\nusage = false\n"
ON = ("[observability]\nusage = true\n[observability.otlp]\nendpoint = \"{otlp}\"\n"
      "schedule_delay_ms = 500\n")


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.server.bytes += len(self.rfile.read(int(self.headers.get("content-length") or 0)))
        self.server.posts += 1
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()


def _deploy(admin: Admin, path: str, source: bytes, bindings: list, tail_consumers: list | None) -> None:
    meta: dict = {"main_module": "worker.py", "bindings": bindings}
    if tail_consumers:
        meta["tail_consumers"] = [{"service": c} for c in tail_consumers]
    body, ctype = multipart([("metadata", "", json.dumps(meta).encode(), "application/json"),
                             ("worker.py", "worker.py", source, "text/x-python")])
    st, data = admin.call("PUT", path, body, ctype)
    if st != 200:
        raise AdminError(st, admin.message(data))


def _one(runner, log, label: str, config: str, tail: bool) -> dict:
    sysm = Corral(log)
    sysm.server_name = f"corral-obs-{label}"
    cfg = BENCH_DIR / f"corral-observability-{label}.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(config)
    try:
        sysm.launch(["--config", str(cfg)])
        admin = sysm.admin()
        try:
            admin.create_namespace("default")
            base = admin.base
            if tail:
                _deploy(admin, f"{base}/scripts/tailer", TAIL_WORKER, [], None)
            _deploy(admin, f"{base}/scripts/dispatch", (TEMPLATES / "corral_dispatcher.py").read_bytes(),
                    [{"type": "dispatch_namespace", "name": "dispatcher", "namespace": "default"}],
                    ["tailer"] if tail else None)
            admin.add_route("*/*", "dispatch")
            admin.deploy_user("default", "t0", (TEMPLATES / "tenant_worker.py").read_bytes()
                              .replace(b"@NAME@", b"t0"))
        finally:
            admin.close()
        host = "t0.localhost"
        httpclient.touch_all(sysm.port, [(host, None)] * 20)
        result = runner.throughput(sysm, [host])
        metrics = sysm.admin().metrics()
        result["tail_events"] = {k: v for k, v in metrics.items() if k.startswith("corral_tail_events_total")}
        result["otel_dropped"] = metrics.get("corral_otel_events_dropped_total")
        if not sysm.server.alive():
            result["died"] = sysm.server.log_tail()
        return result
    finally:
        sysm.stop()


def run(runner, log) -> dict:
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    sink.bytes = 0
    sink.posts = 0
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    otlp = f"http://127.0.0.1:{sink.server_address[1]}"
    res: dict = {}
    try:
        log("  observability off")
        res["off"] = _one(runner, log, "off", OFF, tail=False)
        log("  observability on: tail worker on the dispatcher, OTLP export, usage")
        res["on"] = _one(runner, log, "on", ON.replace("{otlp}", otlp), tail=True)
        time.sleep(1.0)  # the last OTLP batch
        res["otlp_posts"] = sink.posts
        res["otlp_bytes"] = sink.bytes
        off, on = res["off"].get("rps") or 0, res["on"].get("rps") or 0
        res["ratio"] = on / off if off else None
        log(f"  observability on/off: {on:.0f} / {off:.0f} req/s = "
            + (f"{res['ratio']:.2f}" if res["ratio"] else "?")
            + f"; OTLP sink got {sink.posts} posts, {sink.bytes / 1e6:.1f} MB")
    except (Unavailable, AdminError, OSError, httpclient.HTTPError) as e:
        res["unavailable"] = f"{type(e).__name__}: {e}"
        log(f"  observability: not available ({res['unavailable']})")
    finally:
        sink.shutdown()
    return res


def render(x: dict) -> list[str]:
    out = ["", "observability overhead (1 warm tenant behind the dispatcher; on = tail worker on the "
               "dispatcher + OTLP/HTTP export + usage rollups; off = none of them)"]
    if "unavailable" in x:
        return out + [f"  not available: {x['unavailable']}"]
    off, on = x["off"].get("rps") or 0, x["on"].get("rps") or 0
    out.append(f"  req/s off {off:.0f}, on {on:.0f}, ratio on/off "
               + (f"{x['ratio']:.2f}" if x.get("ratio") else "?"))
    delivered = {k.split("result=")[-1].strip('"}'): v for k, v in (x["on"].get("tail_events") or {}).items()}
    if delivered:
        out.append(f"  tail events: {', '.join(f'{k} {v:.0f}' for k, v in sorted(delivered.items()))}; "
                   f"OTLP sink: {x.get('otlp_posts', 0)} posts, {x.get('otlp_bytes', 0) / 1e6:.1f} MB; "
                   f"OTLP queue drops {x['on'].get('otel_dropped') or 0:.0f}")
    return out
