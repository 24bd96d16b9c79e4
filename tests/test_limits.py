"""Custom limits per invocation, set by the dispatcher in ``options["limits"]``.

A real ``corral serve``: the dispatcher reads the limits to apply from the
``x-limits`` request header (JSON), calls the user worker named by the first
label of the Host header, times the call with ``time.perf_counter()`` and
answers what it caught as JSON (status 502, ``x-dispatch-error: 1``).

CPU figures (budget, wall time the dispatcher measured, CPU the child used as
the kernel's schedstat saw it) are printed; run with ``pytest -s`` to see
them. Tests assert outcomes, never wall-clock figures: those are scripts/bench's
(the machines running tests are shared and noisy).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time

import pytest

from tests.harness import Corral

DISPATCHER = r'''
import json, time
from workers import PlatformError, Response, WorkerEntrypoint


def failure(e, started):
    return {"error": getattr(e, "name", type(e).__name__), "message": str(e),
            "type": type(e).__name__, "platform_error": isinstance(e, PlatformError),
            "elapsed_ms": (time.perf_counter() - started) * 1000.0}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        host = request.headers.get("host", "")
        name = host.split(":")[0].split(".")[0]
        limits = json.loads(request.headers.get("x-limits") or "null")
        options = {"limits": limits} if limits else None
        sequence = request.headers.get("x-sequence")
        if sequence:
            # Retry on a new child after a failure: one stub call per path.
            results = []
            for path in sequence.split(","):
                started = time.perf_counter()
                try:
                    r = await self.env.dispatcher.get(name, options=options).fetch(
                        "http://" + host + path)
                    results.append({"path": path, "status": r.status, "body": await r.text(),
                                    "elapsed_ms": (time.perf_counter() - started) * 1000.0})
                except Exception as e:
                    results.append({"path": path, **failure(e, started)})
            return Response.json({"results": results})
        started = time.perf_counter()
        try:
            response = await self.env.dispatcher.get(name, options=options).fetch(request)
        except Exception as e:
            return Response.json(failure(e, started), status=502, headers={"x-dispatch-error": "1"})
        response.headers.set("x-elapsed-ms", "%.3f" % ((time.perf_counter() - started) * 1000.0))
        return response
'''

TENANT = r'''
import asyncio, json, os, time
from urllib.parse import parse_qs, urlsplit
from workers import PlatformError, Response, WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlsplit(request.url)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path == "/pid":
            return Response.json({"pid": os.getpid()})
        if path == "/spin":
            # A tight loop that tries to survive its own end: it cannot catch SIGKILL.
            try:
                while True:
                    pass
            except BaseException:
                while True:
                    pass
        if path == "/printspin":
            print("before the await")
            await asyncio.sleep(0)
            print("spinning now")  # the trace keeps it, though nothing after it ever returns
            while True:
                pass
        if path == "/block":
            import select
            select.select([], [], [], 120)  # blocks in C: no Cancel reaches it
            return Response("unblocked")
        if path == "/sleep":
            started = time.process_time()
            await asyncio.sleep(float(q.get("ms", "100")) / 1000.0)
            return Response.json({"slept": True, "cpu_ms": (time.process_time() - started) * 1000})
        if path == "/fetch":
            n = int(q["n"])
            target = q["target"]

            async def one(i):
                try:
                    r = await fetch(f"{target}-{i}")
                    await r.text()
                    return {"i": i, "status": r.status}
                except Exception as e:
                    return {"i": i, "error": getattr(e, "name", type(e).__name__), "message": str(e),
                            "platform_error": isinstance(e, PlatformError)}

            if q.get("concurrent"):
                results = list(await asyncio.gather(*(one(i) for i in range(n))))
            else:
                results = [await one(i) for i in range(n)]
            return Response.json({"results": results})
        if path == "/alloc":
            mb = int(q["mb"])
            chunks = [bytearray(b"\x01") * (1 << 20) for _ in range(mb)]
            return Response.json({"allocated_mb": len(chunks)})
        if path == "/bomb":
            chunks = []
            while True:
                chunks.append(bytearray(b"\x01") * (1 << 20))
        return Response("neighbour ok\n")
'''


@pytest.fixture(scope="module")
def corral(tmp_path_factory):
    server = Corral(tmp_path_factory.mktemp("corral-limits")).start()
    try:
        server.deploy_dispatcher(DISPATCHER)
        for name in ("spin", "retry", "neighbour", "bystander", "memhog", "memcap", "subreq",
                     "sleeper"):
            server.deploy(name, TENANT)
        yield server
    finally:
        server.stop()


def call(corral: Corral, worker: str, path: str, limits: dict | None = None,
         headers: dict | None = None, timeout: float = 30):
    all_headers = dict(headers or {})
    if limits is not None:
        all_headers["x-limits"] = json.dumps(limits)
    return corral.request(path, host=f"{worker}.localhost", headers=all_headers, timeout=timeout)


def pid_of(corral: Corral, worker: str) -> int:
    resp = call(corral, worker, "/pid")
    assert resp.status == 200, (resp, corral.log())
    return resp.json()["pid"]


def schedstat_ns(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class CpuWatch:
    """Polls a child's CPU time (ns, from the kernel) until it disappears."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = schedstat_ns(pid)
        self.last = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = schedstat_ns(self.pid)
            if value is None:
                return
            self.last = value
            time.sleep(0.0002)

    def __enter__(self) -> CpuWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)

    @property
    def used_ms(self) -> float:
        assert self.baseline is not None and self.last is not None
        return (self.last - self.baseline) / 1e6


def gone(pid: int, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except OSError:
            return True
        time.sleep(0.01)
    return False


def assert_platform_failure(out: dict, name: str, words: str) -> None:
    assert out.get("error") == name, out
    assert out["platform_error"] is True and out["type"] == "PlatformError", out
    assert words.lower() in out["message"].lower(), out


# ---------------------------------------------------------------------------
# CPU
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("budget_ms", [10, 50, 200])
def test_cpu_limit_stops_tight_loop(corral, budget_ms):
    pid = pid_of(corral, "spin")
    with CpuWatch(pid) as watch:
        started = time.perf_counter()
        resp = call(corral, "spin", "/spin", {"cpuMs": budget_ms})
        client_ms = (time.perf_counter() - started) * 1000.0
        assert gone(pid), f"child {pid} still alive after exceeding its CPU budget"
    out = resp.json()
    print(f"\ncpuMs={budget_ms:>4}: dispatcher saw the call end after {out.get('elapsed_ms', 0):7.1f} ms "
          f"wall, client {client_ms:7.1f} ms; child CPU (schedstat, last sample) {watch.used_ms:7.1f} ms")
    assert resp.status == 502 and resp.headers.get("x-dispatch-error") == "1", resp
    assert_platform_failure(out, "exceededCpu", "CPU")
    assert watch.used_ms < budget_ms + 100
    # The next request to the same worker runs on a fresh child.
    new_pid = pid_of(corral, "spin")
    assert new_pid != pid


def test_cpu_limit_snake_case_key(corral):
    resp = call(corral, "spin", "/spin", {"cpu_ms": 30})
    out = resp.json()
    assert_platform_failure(out, "exceededCpu", "CPU")


def test_cpu_limit_counts_cpu_not_wall_time(corral):
    """Waiting costs no CPU: 400 ms asleep under a 20 ms CPU budget is fine."""
    resp = call(corral, "sleeper", "/sleep?ms=400", {"cpuMs": 20})
    assert resp.status == 200, resp
    assert resp.json()["slept"] is True
    assert float(resp.headers["x-elapsed-ms"]) >= 400


def test_dispatcher_catches_and_retries_on_new_child(corral):
    """The tenant's own ``except BaseException`` cannot outlive SIGKILL; the
    dispatcher catches each failure and its retry runs on a new child."""
    resp = call(corral, "retry", "/", {"cpuMs": 30},
                headers={"x-sequence": "/pid,/spin,/pid,/spin,/pid"})
    assert resp.status == 200, resp
    results = resp.json()["results"]
    print("\nretry sequence: " + ", ".join(
        f"{r['path']}->{r.get('error') or r.get('status')} ({r['elapsed_ms']:.1f} ms)" for r in results))
    pids = [json.loads(r["body"])["pid"] for r in results[0::2]]
    for spun in results[1::2]:
        assert_platform_failure(spun, "exceededCpu", "CPU")
    assert all(r.get("status") == 200 for r in results[0::2]), results
    assert len(set(pids)) == 3, f"expected a fresh child after each kill, got pids {pids}"


def test_neighbour_latency_while_tenant_burns_cpu(corral):
    call(corral, "neighbour", "/")  # warm
    baseline = []
    for _ in range(30):
        started = time.perf_counter()
        assert call(corral, "neighbour", "/").status == 200
        baseline.append((time.perf_counter() - started) * 1000.0)

    burn: dict = {}

    def burner() -> None:
        burn["resp"] = call(corral, "spin", "/spin", {"cpuMs": 1500})

    thread = threading.Thread(target=burner)
    thread.start()
    time.sleep(0.1)
    during, statuses = [], []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and thread.is_alive():
        started = time.perf_counter()
        resp = call(corral, "neighbour", "/")
        during.append((time.perf_counter() - started) * 1000.0)
        statuses.append(resp.status)
    thread.join(10)
    print(f"\nneighbour p50 latency: {statistics.median(baseline):.2f} ms idle, "
          f"{statistics.median(during):.2f} ms while another tenant burns CPU "
          f"({len(during)} requests, max {max(during):.1f} ms)")
    assert statuses and all(s == 200 for s in statuses), statuses
    assert_platform_failure(burn["resp"].json(), "exceededCpu", "CPU")


def test_inflight_neighbour_survives_a_cpu_kill(corral):
    """A request of another tenant in flight when one is killed still succeeds."""
    pid_of(corral, "bystander")
    result: dict = {}

    def slow_neighbour() -> None:
        result["resp"] = call(corral, "bystander", "/sleep?ms=600")

    thread = threading.Thread(target=slow_neighbour)
    thread.start()
    time.sleep(0.1)
    killed = call(corral, "spin", "/spin", {"cpuMs": 50})
    thread.join(10)
    assert_platform_failure(killed.json(), "exceededCpu", "CPU")
    assert result["resp"].status == 200, result["resp"]
    assert result["resp"].json()["slept"] is True


# ---------------------------------------------------------------------------
# wall time
# ---------------------------------------------------------------------------


def test_wall_time_limit(corral):
    resp = call(corral, "sleeper", "/sleep?ms=5000", {"wallMs": 300})
    out = resp.json()
    assert out.get("error") == "exceededWallTime", out
    assert out["platform_error"] is True
    # The worker is still usable.
    assert call(corral, "sleeper", "/sleep?ms=1").status == 200


def test_a_child_stuck_past_its_wall_time_is_not_given_the_next_request(tmp_path):
    """A handler blocked in C (select) hears no Cancel: the script's next
    request waited behind it for the waitUntil deadline (30 s) and then got
    a 502 as the stuck child was killed; and the stuck child outlived the
    supervisor. The next request goes to a fresh child now, and a stop ends
    the stuck one."""
    server = Corral(tmp_path / "state").start()
    try:
        server.deploy_dispatcher(DISPATCHER)
        server.deploy("stuck", TENANT)
        assert call(server, "stuck", "/block", {"wallMs": 300}).json().get("error") == "exceededWallTime"
        after = call(server, "stuck", "/sleep?ms=1", timeout=15)
        assert after.status == 200, (after, server.log()[-3000:])
        deadline = time.monotonic() + 15
        while not (stuck := [e["pid"] for e in server.log_events() if e.get("event") == "child.stuck_after_cancel"]):
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.05)  # the watchdog's grace for the Cancel (1 s)
    finally:
        server.stop()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{stuck[0]}"):
        assert time.monotonic() < deadline, f"the stuck child {stuck[0]} outlived the supervisor"
        time.sleep(0.05)


# ---------------------------------------------------------------------------
# subrequests
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sequential", "concurrent"])
@pytest.mark.parametrize("key", ["subRequests", "sub_requests"])
def test_subrequest_limit(corral, upstream, mode, key):
    prefix = f"/echo/sub-{mode}-{key}"
    query = f"n=4&target={upstream.url(prefix)}" + ("&concurrent=1" if mode == "concurrent" else "")
    resp = call(corral, "subreq", f"/fetch?{query}", {key: 3})
    assert resp.status == 200, resp
    results = resp.json()["results"]
    ok = [r for r in results if r.get("status") == 200]
    failed = [r for r in results if "error" in r]
    assert len(ok) == 3 and len(failed) == 1, results
    if mode == "sequential":
        assert "error" in results[3], results
    assert failed[0]["platform_error"] is True
    assert "subrequest" in failed[0]["message"].lower(), failed
    assert len(upstream.seen(prefix)) == 3


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------


def test_memory_bomb_default_cap(corral):
    """Growing past the default 128 MB ends the invocation with exceededMemory."""
    started = time.perf_counter()
    resp = call(corral, "memhog", "/bomb")
    elapsed = (time.perf_counter() - started) * 1000.0
    out = resp.json()
    print(f"\nmemory bomb under the default cap: {out.get('error')} after {elapsed:.0f} ms")
    assert_platform_failure(out, "exceededMemory", "memory")


def test_memory_bomb_child_is_replaced(corral):
    pid = pid_of(corral, "memhog")
    out = call(corral, "memhog", "/bomb").json()
    assert out.get("platform_error") is True, out
    assert gone(pid)
    assert pid_of(corral, "memhog") != pid
    # What fits in the default 128 MB still works on the fresh child.
    ok = call(corral, "memhog", "/alloc?mb=64")
    assert ok.status == 200 and ok.json()["allocated_mb"] == 64, ok


def test_memory_limit_per_invocation(corral):
    """``memoryMb`` (a Corral extension): 64 MB fits the default cap, not 32 MB."""
    resp = call(corral, "memcap", "/alloc?mb=64", {"memoryMb": 32})
    out = resp.json()
    assert_platform_failure(out, "exceededMemory", "memory")


# ---------------------------------------------------------------------------
# the platform's limits cap the dispatcher's
# ---------------------------------------------------------------------------


def test_platform_limits_cap_dispatcher_limits(tmp_path, upstream):
    """A dispatcher may lower limits, never raise them above the platform's
    (``[limits]`` in the config); without its own limits the platform's apply."""
    config = tmp_path / "corral.toml"
    config.write_text("[limits]\ncpu_ms = 100.0\nsub_requests = 2\n")
    server = Corral(tmp_path / "state", extra_args=["--config", str(config)]).start()
    try:
        server.deploy_dispatcher(DISPATCHER)
        server.deploy("capped", TENANT)
        raised = call(server, "capped", "/spin", {"cpuMs": 100_000})
        default = call(server, "capped", "/spin")
        for resp in (raised, default):
            out = resp.json()
            assert_platform_failure(out, "exceededCpu", "CPU")
        subs = call(server, "capped", f"/fetch?n=3&target={upstream.url('/echo/capped')}",
                    {"subRequests": 50}).json()["results"]
        assert [("status" in r) for r in subs] == [True, True, False], subs
    finally:
        server.stop()


def test_trace_records_cpu_wall_and_subrequests(tmp_path, upstream):
    """Per invocation the supervisor records cpuTime, wallTime and subrequests (kernel-measured)."""
    config = tmp_path / "corral.toml"
    config.write_text("log_invocations = true\n")
    server = Corral(tmp_path / "state", extra_args=["--config", str(config)]).start()
    try:
        server.deploy_dispatcher(DISPATCHER)
        server.deploy("tracer", TENANT)
        target = upstream.url("/echo")
        assert call(server, "tracer", f"/fetch?n=2&target={target}", {"subRequests": 5}).status == 200
        call(server, "tracer", "/spin", {"cpuMs": 30})
        deadline = time.monotonic() + 5
        traces = []
        while time.monotonic() < deadline and len(traces) < 2:
            traces = [json.loads(line)["trace"] for line in server.log().splitlines()
                      if '"event":"invocation"' in line]
            time.sleep(0.05)
        fetch_trace, spin_trace = traces[-2], traces[-1]
        assert fetch_trace["scriptName"] == "dispatch" and fetch_trace["outcome"] == "ok"
        [child] = fetch_trace["children"]
        assert child["scriptName"] == "tracer" and child["dispatchNamespace"] == "default"
        assert child["subrequests"] == 2 and child["outcome"] == "ok"
        assert child["wallTime"] > 0 and child["cpuTime"] >= 0
        [spun] = spin_trace["children"]
        assert spun["outcome"] == "exceededCpu"
        assert 25 <= spun["cpuTime"] <= 80, spun["cpuTime"]
        print(f"\ntrace: budget 30 ms, cpuTime {spun['cpuTime']} ms, wallTime {spun['wallTime']} ms")
        # What a killed invocation printed last is in its trace: the line an operator needs most.
        call(server, "tracer", "/printspin", {"cpuMs": 30})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(traces) < 3:
            traces = [json.loads(line)["trace"] for line in server.log().splitlines()
                      if '"event":"invocation"' in line]
            time.sleep(0.05)
        [printed] = traces[-1]["children"]
        assert printed["outcome"] == "exceededCpu"
        assert [line["message"] for line in printed["logs"]] == [["before the await"], ["spinning now"]]
    finally:
        server.stop()


def test_defaults_per_namespace_and_per_tag(tmp_path, upstream):
    """Without dispatcher limits, a tag's default beats the namespace's, which
    beats the platform's; the dispatcher's own limits still win over both."""
    config = tmp_path / "corral.toml"
    config.write_text(
        "[limits.namespace.default]\ncpu_ms = 60.0\nsub_requests = 3\n"
        '[limits.tag."plan:free"]\nsub_requests = 1\n'
    )
    server = Corral(tmp_path / "state", extra_args=["--config", str(config)]).start()
    try:
        server.deploy_dispatcher(DISPATCHER)
        server.deploy("paid", TENANT, tags=["plan:paid"])
        server.deploy("free", TENANT, tags=["plan:free"])
        target = upstream.url("/echo/defaults")

        def allowed(worker: str, limits: dict | None = None) -> int:
            results = call(server, worker, f"/fetch?n=4&target={target}", limits).json()["results"]
            return sum("status" in r for r in results)

        assert allowed("paid") == 3, "the namespace default"
        assert allowed("free") == 1, "the tag default beats the namespace's"
        assert allowed("free", {"subRequests": 2}) == 2, "the dispatcher's limit wins"
        spun = call(server, "paid", "/spin").json()
        assert_platform_failure(spun, "exceededCpu", "CPU")
        # A dispatcher that lets the limit error escape: the client gets a 503.
        server.deploy_dispatcher(name="plain", pattern="*.plain.test/*")
        uncaught = server.request("/spin", host="paid.plain.test")
        assert uncaught.status == 503 and "CPU" in uncaught.text, uncaught
    finally:
        server.stop()
