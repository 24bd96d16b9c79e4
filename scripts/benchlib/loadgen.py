"""Throughput load generators: wrk (preferred) or a Python fallback."""
from __future__ import annotations

import multiprocessing as mp
import re
import selectors
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .procs import BENCH_DIR

TEMPLATES = Path(__file__).resolve().parent / "templates"


def ensure_wrk(log) -> str | None:
    """Path of wrk, installing Debian's package if missing; None if impossible."""
    path = shutil.which("wrk")
    if path:
        return path
    apt = shutil.which("apt-get")
    if apt:
        log("wrk not found: trying apt-get install -y wrk")
        for cmd in ([apt, "install", "-y", "wrk"], [apt, "update"], [apt, "install", "-y", "wrk"]):
            try:
                subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=300, check=False)
            except (OSError, subprocess.TimeoutExpired):
                break
            path = shutil.which("wrk")
            if path:
                return path
    return None


def _lua_for(hosts: list[str]) -> Path:
    d = BENCH_DIR / "wrk"
    d.mkdir(parents=True, exist_ok=True)
    body = (TEMPLATES / "rotate_hosts.lua").read_text()
    quoted = ", ".join(f'"{h}"' for h in hosts)
    path = d / f"rotate_{len(hosts)}.lua"
    path.write_text(body.replace("@HOSTS@", quoted))
    return path


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")


def run_wrk(wrk: str, port: int, hosts: list[str], connections: int, duration: float,
            threads: int) -> dict:
    lua = _lua_for(hosts)
    threads = max(1, min(threads, connections))
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
           "--timeout", "10s", "--latency", "-s", str(lua), f"http://127.0.0.1:{port}/"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    out = p.stdout
    res: dict = {"tool": "wrk", "cmd": " ".join(cmd), "raw": out + p.stderr}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else float("nan")
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"^\s+Latency\s+(\S+)", out, re.M)
    res["lat_avg_ms"] = _ms(m.group(1)) if m else float("nan")
    m = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    res["lat_p99_ms"] = _ms(m.group(1)) if m else float("nan")
    if p.returncode != 0 or not res["requests"]:
        res["error"] = f"wrk exit {p.returncode}: {(p.stderr or out).strip()[-300:]}"
    return res


# ---------------------------------------------------------------- fallback

def _py_worker(port: int, hosts: list[str], nconn: int, duration: float, offset: int, q) -> None:
    reqs = [(f"GET / HTTP/1.1\r\nHost: {h}\r\nUser-Agent: corral-bench\r\n\r\n").encode()
            for h in hosts]
    sel = selectors.DefaultSelector()
    state = {}
    idx = offset
    done = 0
    bad = 0
    errors = 0

    def open_conn():
        nonlocal idx
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        idx = (idx + 1) % len(reqs)
        s.send(reqs[idx])
        state[s] = b""
        sel.register(s, selectors.EVENT_READ)

    for _ in range(nconn):
        open_conn()
    end = time.monotonic() + duration
    while time.monotonic() < end and state:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            try:
                d = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                d = b""
            if not d:
                sel.unregister(s)
                s.close()
                del state[s]
                errors += 1
                if time.monotonic() < end:
                    open_conn()
                continue
            buf = state[s] + d
            while True:
                he = buf.find(b"\r\n\r\n")
                if he < 0:
                    break
                head = buf[:he].lower()
                m = re.search(rb"content-length:\s*(\d+)", head)
                clen = int(m.group(1)) if m else 0
                if len(buf) < he + 4 + clen:
                    break
                if not head.startswith(b"http/1.1 200"):
                    bad += 1
                buf = buf[he + 4 + clen:]
                done += 1
                idx = (idx + 1) % len(reqs)
                try:
                    s.send(reqs[idx])
                except OSError:
                    errors += 1
            state[s] = buf
    for s in list(state):
        s.close()
    q.put((done, bad, errors))


def run_python(port: int, hosts: list[str], connections: int, duration: float,
               procs: int = 2) -> dict:
    procs = max(1, min(procs, connections))
    q = mp.Queue()
    ps = []
    per = [connections // procs + (1 if i < connections % procs else 0) for i in range(procs)]
    t0 = time.monotonic()
    for i in range(procs):
        p = mp.Process(target=_py_worker,
                       args=(port, hosts, per[i], duration, i * 7919 % len(hosts), q))
        p.start()
        ps.append(p)
    results = []
    for _ in ps:
        try:
            results.append(q.get(timeout=duration + 30))
        except Exception:  # noqa: BLE001
            break
    elapsed = time.monotonic() - t0
    for p in ps:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    done = sum(r[0] for r in results)
    return {"tool": f"python ({procs} processes)", "rps": done / max(duration, 1e-9),
            "requests": done, "non2xx": sum(r[1] for r in results),
            "socket_errors": sum(r[2] for r in results), "lat_avg_ms": float("nan"),
            "lat_p99_ms": float("nan"), "elapsed": elapsed}
