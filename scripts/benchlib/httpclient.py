"""A minimal raw-socket HTTP/1.1 keep-alive client, timed with perf_counter_ns.

Raw sockets keep client-side overhead small and identical for every system.
"""
from __future__ import annotations

import socket
import statistics
import time


class HTTPError(Exception):
    pass


class Conn:
    def __init__(self, port: int, timeout: float = 30.0):
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""
        self.reconnects = 0

    def connect(self) -> None:
        self.close()
        s = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def _recv(self) -> bytes:
        d = self.sock.recv(65536)
        if not d:
            raise ConnectionResetError("server closed the connection")
        return d

    def _read_response(self) -> tuple[int, bytes, bool]:
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise HTTPError(f"bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        clen = None
        chunked = False
        close = parts[0] == b"HTTP/1.0"
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            v = v.strip()
            if k == b"content-length":
                clen = int(v)
            elif k == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
            elif k == b"connection":
                close = v.lower() == b"close"
        if chunked:
            body = b""
            self.buf = rest
            while True:
                while b"\r\n" not in self.buf:
                    self.buf += self._recv()
                size_line, _, self.buf = self.buf.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    self.buf += self._recv()
                body += self.buf[:size]
                self.buf = self.buf[size + 2:]
                if size == 0:
                    # (trailers are not used by any system here)
                    break
        elif clen is not None:
            while len(rest) < clen:
                rest += self._recv()
            body, self.buf = rest[:clen], rest[clen:]
        elif status in (204, 304) or 100 <= status < 200:
            body, self.buf = b"", rest
        else:  # read to close
            body = rest
            try:
                while True:
                    body += self._recv()
            except ConnectionResetError:
                pass
            close = True
            self.buf = b""
        return status, body, close

    def request(self, host: str, path: str = "/",
                headers: dict[str, str] | None = None) -> tuple[int, bytes, int]:
        """One GET; returns (status, body, elapsed ns). The elapsed time covers
        send to the last body byte (plus a reconnect if the server had closed
        the idle keep-alive connection)."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        req = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
               f"User-Agent: corral-bench\r\nAccept: */*\r\n{extra}\r\n").encode()
        for attempt in range(2):
            t0 = time.perf_counter_ns()
            try:
                if self.sock is None:
                    self.connect()
                self.sock.sendall(req)
                status, body, close = self._read_response()
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as e:
                self.close()
                self.reconnects += 1
                if attempt == 1:
                    raise HTTPError(f"connection failed: {e}") from e
                continue
            t1 = time.perf_counter_ns()
            if close:
                self.close()
            return status, body, t1 - t0
        raise AssertionError("unreachable")


def percentile(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def summarize_ms(ns: list[int]) -> dict:
    v = sorted(x / 1e6 for x in ns)
    return {"n": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99),
            "p999": percentile(v, 99.9), "min": v[0] if v else float("nan"), "max": v[-1] if v else float("nan"),
            "mean": sum(v) / len(v) if v else float("nan")}


#: The latency figures a run has and :func:`repeated` takes the median of.
LATENCY_FIGURES = ("p50", "p99", "p999", "mean")


def repeated(runs: list[dict]) -> dict:
    """Several runs of one latency measurement as one figure: each percentile
    is the median of the runs' (this box moves by tens of percent between
    runs), ``spread`` its min and max, ``runs`` every run's own figures."""
    if len(runs) == 1:
        return dict(runs[0], runs=[{k: runs[0][k] for k in LATENCY_FIGURES}])
    out: dict = {}
    for key in LATENCY_FIGURES:
        values = sorted(r[key] for r in runs)
        out[key] = statistics.median(values)
        out.setdefault("spread", {})[key] = [values[0], values[-1]]
    out["n"] = sum(r["n"] for r in runs)
    out["min"] = min(r["min"] for r in runs)
    out["max"] = max(r["max"] for r in runs)
    out["errors"] = sum(r.get("errors", 0) for r in runs)
    out["first_error"] = next((r["first_error"] for r in runs if r.get("first_error")), None)
    out["runs"] = [{k: r[k] for k in LATENCY_FIGURES} for r in runs]
    for key in ("seconds", "connections", "reconnects", "box_busy_pct", "server_waited_ms",
                "mb_per_cold_start", "new_page_us", "mem_in_use_gb", "spare_waited",
                "spare_wait_mean_ms"):
        if key in runs[0]:
            out[key] = statistics.median(r[key] for r in runs)
    return out


def check(status: int, body: bytes, expect: bytes | None) -> str | None:
    if status != 200:
        return f"status {status}: {body[:120]!r}"
    if expect is not None and body != expect:
        return f"unexpected body {body[:120]!r} (wanted {expect!r})"
    return None


def touch_all(port: int, hosts: list[tuple[str, bytes | None]], budget_s: float = 900.0) -> dict:
    """One request to each host, in order, on one keep-alive connection.
    Returns timings and the first errors seen."""
    c = Conn(port)
    times: list[int] = []
    errors: list[str] = []
    deadline = time.monotonic() + budget_s
    try:
        for host, expect in hosts:
            if time.monotonic() > deadline:
                errors.append(f"warm-up budget of {budget_s:.0f}s exhausted")
                break
            try:
                status, body, ns = c.request(host)
            except (HTTPError, OSError) as e:
                errors.append(f"{host}: {e}")
                c.close()
                continue
            times.append(ns)
            err = check(status, body, expect)
            if err:
                errors.append(f"{host}: {err}")
    finally:
        c.close()
    return {"times_ns": times, "errors": errors, "ok": len(times) - len(errors)}


def warm_latency(port: int, host: str, expect: bytes | None, n: int, gap_s: float = 0.0) -> dict:
    """``n`` sequential requests to ``host`` on one keep-alive connection;
    ``gap_s``: a pause after each answer (not part of any request's time)."""
    c = Conn(port)
    times: list[int] = []
    errors = 0
    first_err = None
    try:
        for _ in range(min(50, n)):  # settle the connection first
            c.request(host)
        for _ in range(n):
            status, body, ns = c.request(host)
            err = check(status, body, expect)
            if err:
                errors += 1
                first_err = first_err or err
            times.append(ns)
            if gap_s:
                time.sleep(gap_s)
    finally:
        c.close()
    out = summarize_ms(times)
    out.update(errors=errors, first_error=first_err, reconnects=c.reconnects)
    return out


def _timed_request(c: Conn, host: str, expect: bytes | None) -> tuple[int, str | None]:
    """One request on ``c``: its time in ns, or the error that names the host
    (the connection is closed after a transport error, to reopen on the next)."""
    try:
        status, body, ns = c.request(host)
    except (HTTPError, OSError) as e:
        c.close()
        return 0, f"{host}: {e}"
    err = check(status, body, expect)
    return ns, (f"{host}: {err}" if err else None)


class _Timings:
    """Timed first requests: each one's ns, or the error that names its host."""

    #: The slowest requests kept, with when they ended (to find them in the server's log).
    SLOWEST = 3

    def __init__(self) -> None:
        self.times: list[int] = []
        self.errors: list[str] = []
        self.ended: list[tuple[int, float, str]] = []  # (ns, time.time() at the end, host)

    def request(self, c: Conn, host: str, expect: bytes | None) -> None:
        ns, err = _timed_request(c, host, expect)
        if err:
            self.errors.append(err)
        else:
            self.times.append(ns)
            self.ended.append((ns, time.time(), host))

    def summary(self) -> dict:
        out = summarize_ms(self.times)
        out.update(errors=len(self.errors), first_error=self.errors[0] if self.errors else None)
        out["slowest"] = [{"ms": ns / 1e6, "ended_at": at, "host": host}
                          for ns, at, host in sorted(self.ended, reverse=True)[:self.SLOWEST]]
        return out


def cold_starts(port: int, hosts: list[tuple[str, bytes | None]], pause_s: float,
                warm_host: str) -> dict:
    """First-ever request to each host, sequentially on one keep-alive
    connection, sleeping pause_s between requests (lets a pool refill).
    The connection is opened beforehand with a request to warm_host."""
    c = Conn(port)
    timings = _Timings()
    try:
        c.request(warm_host)
    except (HTTPError, OSError):
        c.close()
    try:
        for host, expect in hosts:
            time.sleep(pause_s)
            timings.request(c, host, expect)
    finally:
        c.close()
    out = timings.summary()
    out["reconnects"] = c.reconnects
    return out


def storm(port: int, hosts: list[tuple[str, bytes | None]], connections: int) -> dict:
    """A cold-start storm: the first-ever request to each host, back to back
    with no pause, from ``connections`` keep-alive connections at once (each
    takes the next host as soon as its previous answer is in). Latencies are
    per request; ``seconds`` is the whole storm."""
    import threading

    todo = iter(hosts)
    lock = threading.Lock()
    timings = _Timings()

    def worker() -> None:
        c = Conn(port)
        try:
            while True:
                with lock:
                    item = next(todo, None)
                if item is None:
                    return
                timings.request(c, *item)  # list.append is atomic: no lock needed
        finally:
            c.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(max(1, connections))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = timings.summary()
    out.update(seconds=time.perf_counter() - started, connections=connections)
    return out
