"""The three systems under test. Each: start(names) / host(name) / expect(name) / stop()."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import httpclient
from .corral_admin import Admin, AdminError
from .procs import BENCH_DIR, REPO, Server, free_port, pids_with_arg

TEMPLATES = Path(__file__).resolve().parent / "templates"
COMPAT_DATE = "2025-06-01"


class Unavailable(Exception):
    """The system could not be started or set up; the message says why."""


class System:
    key = "?"
    label = "?"

    def __init__(self, log):
        self.log = log
        self.port = 0
        self.server: Server | None = None
        self.notes: list[str] = []

    @property
    def pid(self) -> int:
        return self.server.pid

    def host(self, name: str) -> str:
        return f"{name}.localhost"

    def expect(self, name: str) -> bytes | None:
        return f"hello from {name}".encode()

    def start(self, names: list[str]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def verify(self, name: str) -> None:
        c = httpclient.Conn(self.port, timeout=30)
        try:
            status, body, _ = c.request(self.host(name))
        except (httpclient.HTTPError, OSError) as e:
            raise Unavailable(f"request to {self.host(name)} failed: {e}") from e
        finally:
            c.close()
        err = httpclient.check(status, body, self.expect(name))
        if err:
            raise Unavailable(f"{self.host(name)} answered {err}")


# ------------------------------------------------------------------ bare

class BareH11(System):
    key = "bare"
    label = "bare-h11"

    def expect(self, name: str) -> bytes | None:
        return b"hello"

    def start(self, names: list[str]) -> None:
        self.port = free_port()
        script = Path(__file__).resolve().parent / "bare_h11.py"
        self.server = Server("bare-h11", [sys.executable, str(script), str(self.port)])
        try:
            self.server.wait_port(self.port, 20)
        except RuntimeError as e:
            raise Unavailable(str(e)) from e
        self.verify(names[0])
        self.notes.append("answers 'hello' to every Host: per-tenant figures are a floor, not tenants")


# ------------------------------------------------------------------ workerd

WORKERD_DIR = BENCH_DIR / "workerd"


def find_workerd() -> Path | None:
    nm = WORKERD_DIR / "node_modules"
    for cand in (nm / "@cloudflare" / "workerd-linux-64" / "bin" / "workerd",
                 nm / "@cloudflare" / "workerd-linux-arm64" / "bin" / "workerd",
                 nm / ".bin" / "workerd"):
        if cand.exists() and os.access(cand, os.X_OK):
            return cand
    return None


def ensure_workerd(log) -> Path:
    path = find_workerd()
    if path:
        return path
    npm = shutil.which("npm")
    if not npm:
        raise Unavailable("workerd is not installed and npm is missing")
    log(f"installing workerd: npm install --prefix {WORKERD_DIR.relative_to(REPO)} workerd")
    WORKERD_DIR.mkdir(parents=True, exist_ok=True)
    try:
        p = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix",
                            str(WORKERD_DIR), "workerd"],
                           capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        raise Unavailable("npm install workerd timed out") from e
    path = find_workerd()
    if not path:
        raise Unavailable(f"npm install workerd failed: {(p.stderr or p.stdout)[-300:]}")
    return path


class Workerd(System):
    key = "workerd"
    label = "workerd"

    def start(self, names: list[str]) -> None:
        binary = ensure_workerd(self.log)
        try:
            version = subprocess.run([str(binary), "--version"], capture_output=True,
                                     text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            version = "?"
        self.notes.append(f"{version}; dispatcher + Dynamic Worker Loader (env.LOADER), "
                          f"`workerd serve --experimental`")
        run = WORKERD_DIR / "run"
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        self.port = free_port()
        tenant_src = (TEMPLATES / "tenant_worker.js").read_text()
        tenants = {n: tenant_src.replace("@NAME@", n) for n in names}
        (run / "tenants.json").write_text(json.dumps(tenants))
        (run / "dispatcher.js").write_text(
            (TEMPLATES / "dispatcher.js").read_text().replace("@COMPAT_DATE@", COMPAT_DATE))
        (run / "workerd.capnp").write_text(
            (TEMPLATES / "workerd.capnp.in").read_text()
            .replace("@PORT@", str(self.port)).replace("@COMPAT_DATE@", COMPAT_DATE))
        self.server = Server("workerd", [str(binary), "serve", "--experimental", "workerd.capnp"],
                             cwd=run)
        try:
            self.server.wait_port(self.port, 60)
        except RuntimeError as e:
            raise Unavailable(str(e)) from e
        self.verify(names[0])


# ------------------------------------------------------------------ corral

class Corral(System):
    key = "corral"
    label = "corral"
    NS = "default"

    server_name = "corral"

    def __init__(self, log, deploy_budget_s: float = 900.0, deploy_threads: int = 4):
        super().__init__(log)
        self.mode = None
        self.deploy_threads = deploy_threads
        self.sock_path = ""
        self.argv: list[str] = []
        self.deploy_budget_s = deploy_budget_s
        self.deploy_stats: dict = {}
        self.cmd_template: str | None = None
        self.route_id: str | None = None

    def stop(self) -> None:
        super().stop()
        state = getattr(self, "state_dir", None)
        if state is not None and BENCH_DIR not in state.parents:
            shutil.rmtree(state, ignore_errors=True)

    def _python(self) -> str:
        venv = REPO / ".venv" / "bin" / "python"
        return str(venv) if venv.exists() else sys.executable

    def launch(self, extra_args: list[str] | None = None) -> None:
        """Start `corral serve` on a free port with a fresh state dir and wait for
        its HTTP port and admin socket; nothing deployed yet. extra_args go at
        the end of the command line."""
        state = BENCH_DIR / "corral-state"
        if len(str(state / "admin.sock")) > 100:  # AF_UNIX paths are limited to 108 bytes
            state = Path(tempfile.gettempdir()) / f"corral-bench-{os.getpid()}"
            self.notes.append(f"state dir {state} (the repo path is too long for a unix socket)")
        if state.exists():
            shutil.rmtree(state)
        state.mkdir(parents=True)
        self.state_dir = state
        sock = state / "admin.sock"
        self.sock_path = str(sock)
        self.port = free_port()
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        if self.cmd_template:
            argv = [a.format(port=self.port, state=state)
                    for a in shlex.split(self.cmd_template)]
        else:
            argv = [self._python(), "-m", "supervisor", "serve", "--http",
                    f"127.0.0.1:{self.port}", "--state-dir", str(state)]
        argv += list(extra_args or ())
        self.argv = argv
        self.server = Server(self.server_name, argv, cwd=REPO, env=env)
        try:
            self.server.wait_port(self.port, 60)
            deadline = time.monotonic() + 30
            while not _unix_ok(sock):
                if not self.server.alive():
                    raise RuntimeError(f"corral exited: {self.server.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"admin socket {sock} did not come up")
                time.sleep(0.05)
        except RuntimeError as e:
            raise Unavailable(str(e)) from e

    def admin(self) -> Admin:
        return Admin(self.sock_path)

    def member_pids(self) -> set[int]:
        """Its zygotes and children, including those of a replaced zygote
        (reparented to init): their command line names the state dir."""
        return pids_with_arg(str(self.state_dir)) if getattr(self, "state_dir", None) else set()

    def start(self, names: list[str]) -> None:
        self.launch()
        sock = self.sock_path
        admin = Admin(str(sock))
        try:
            self._setup(admin, names)
            try:
                self.verify(names[0])
            except Unavailable as e:
                if self.mode != "dispatch" or not self.route_id:
                    raise
                # dispatch API there but not working end to end: try Host-label mode
                admin.delete_route(self.route_id)
                self.verify(names[0])
                self.mode = "host-label"
                self.notes[:] = [f"mode: Host-label routing, no dispatcher hop (through the "
                                 f"dispatcher, {e}; route removed)"]
        except (AdminError, OSError) as e:
            raise Unavailable(f"admin API: {e}") from e
        finally:
            admin.close()

    def _setup(self, admin: Admin, names: list[str]) -> None:
        admin.create_namespace(self.NS)
        # dispatcher + route if Corral has dispatch namespaces, else Host-label mode
        try:
            admin.deploy_platform(
                "dispatch", (TEMPLATES / "corral_dispatcher.py").read_bytes(),
                [{"type": "dispatch_namespace", "name": "dispatcher", "namespace": self.NS}])
            self.route_id = admin.add_route("*/*", "dispatch")
            self.mode = "dispatch"
            self.notes.append("mode: dispatcher platform script + route */* -> "
                              "env.dispatcher.get(host label)")
        except AdminError as e:
            if e.status not in (400, 404, 405, 501):
                raise
            self.mode = "host-label"
            self.notes.append(f"mode: Host-label routing, no dispatcher hop (the dispatcher/route "
                              f"API answered {e})")
        src = (TEMPLATES / "tenant_worker.py").read_text()
        self.deploy_many([(n, src.replace("@NAME@", n).encode()) for n in names])

    #: below this many scripts, upload from one thread (see deploy_many)
    CONCURRENT_DEPLOY_MIN = 600

    def deploy_many(self, scripts: list[tuple[str, bytes]]) -> None:
        """Upload user workers into NS over the admin API, from `deploy_threads`
        threads (each on its own admin connection) when there are at least
        CONCURRENT_DEPLOY_MIN of them, else from one. Fills deploy_stats.

        Each upload is validated by loading it in a spare sandbox, so concurrent
        uploads make the pool fork spares for every waiting upload, and the pool
        keeps that surplus until cold starts use it up; the surplus would then
        sit in the 1-tenant PSS baseline. For a few hundred scripts one thread
        is as fast (about 6 ms per upload on 2 cores) and leaves no surplus."""
        t0 = time.monotonic()
        times: list[int] = []
        lock = threading.Lock()
        todo = iter(scripts)
        failure: list[BaseException] = []

        def worker() -> None:
            admin = self.admin()
            try:
                while not failure:
                    with lock:
                        item = next(todo, None)
                        done = len(times)
                    if item is None:
                        return
                    if time.monotonic() - t0 > self.deploy_budget_s:
                        raise Unavailable(f"deploying {len(scripts)} scripts took over "
                                          f"{self.deploy_budget_s:.0f}s ({done} done)")
                    a = time.perf_counter_ns()
                    admin.deploy_user(self.NS, item[0], item[1])
                    with lock:
                        times.append(time.perf_counter_ns() - a)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                failure.append(e)
            finally:
                admin.close()

        nthreads = max(1, min(self.deploy_threads, len(scripts)))
        if len(scripts) < self.CONCURRENT_DEPLOY_MIN:
            nthreads = 1
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(nthreads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failure:
            raise failure[0]
        wall = time.monotonic() - t0
        self.deploy_stats = httpclient.summarize_ms(times)
        self.deploy_stats.update(threads=nthreads, wall_s=wall)
        plural = "s" if nthreads > 1 else ""
        self.log(f"  deployed {len(scripts)} scripts in {wall:.1f}s from {nthreads} thread{plural} "
                 f"(p50 {self.deploy_stats['p50']:.1f} ms per upload)")

    # -- pool settings -------------------------------------------------------

    def configured_spares(self) -> tuple[int | None, str]:
        """The pool's `spares` setting this server runs with, and where it came from."""
        config_path = None
        words = [w for a in self.argv for w in (shlex.split(a) if " " in a else [a])]
        for i, a in enumerate(words):
            if a == "--config" and i + 1 < len(words):
                config_path = words[i + 1]
            elif a.startswith("--config="):
                config_path = a.split("=", 1)[1]
        default = None
        try:
            sys.path.insert(0, str(REPO))
            from supervisor.config import PoolConfig  # the server's own default
            default = PoolConfig().spares
        except Exception:  # noqa: BLE001 - fall back to reading the file only
            pass
        finally:
            if sys.path and sys.path[0] == str(REPO):
                sys.path.pop(0)
        if config_path:
            try:
                import tomllib
                with open(Path(REPO, config_path), "rb") as f:
                    pool = tomllib.load(f).get("pool", {})
                if "spares" in pool:
                    return int(pool["spares"]), f"[pool] spares in {config_path}"
            except (OSError, ValueError) as e:
                return default, f"default (could not read {config_path}: {e})"
        return default, "default"

    def _metrics(self) -> dict[str, float]:
        """GET /metrics as {sample: value}; empty if it cannot be read."""
        admin = self.admin()
        try:
            return admin.metrics()
        except (AdminError, OSError):
            return {}
        finally:
            admin.close()

    def invocation_cpu_s(self) -> dict[str, float]:
        """CPU seconds Corral's invocations used so far, by namespace (from
        corral_invocation_cpu_seconds_sum): the dispatcher's ("" ->
        "dispatcher invocations") and the user workers' ("user invocations")."""
        m = self._metrics()
        if not m:
            return {}
        out = {"dispatcher invocations": 0.0, "user invocations": 0.0}
        for name, value in m.items():
            if name.startswith("corral_invocation_cpu_seconds_sum{"):
                key = ("dispatcher invocations" if 'namespace=""' in name
                       else "user invocations")
                out[key] += value
        return out

    def spare_timing(self) -> dict[str, float]:
        """Cumulative spare readiness from GET /metrics: how many children said
        Hello, their seconds from fork announcement to Hello, and the
        supervisor's cgroup + CPU meter part of it (empty if unreadable)."""
        m = self._metrics()
        if not m:
            return {}
        return {"n": m.get("corral_spare_ready_seconds_count") or 0.0,
                "ready_s": m.get("corral_spare_ready_seconds_sum") or 0.0,
                "limits_s": m.get("corral_child_limits_seconds_sum") or 0.0}

    def spare_waits(self) -> dict:
        """How long cold starts waited for a base spare so far (/metrics'
        ``corral_spare_wait_seconds``): ``count``, ``sum`` (s) and ``buckets``
        ({upper bound in s: cumulative count})."""
        out: dict = {"count": 0.0, "sum": 0.0, "buckets": {}}
        admin = self.admin()
        try:
            metrics = admin.metrics()
        except (AdminError, OSError):
            return out
        finally:
            admin.close()
        for key, value in metrics.items():
            if not key.startswith("corral_spare_wait_seconds") or 'zygote="base"' not in key:
                continue
            if key.startswith("corral_spare_wait_seconds_count"):
                out["count"] = value
            elif key.startswith("corral_spare_wait_seconds_sum"):
                out["sum"] = value
            elif (le := re.search(r'le="([^"]+)"', key)) is not None:
                out["buckets"][float(le.group(1))] = value
        return out

    def hub_core_held(self) -> bool | None:
        """Whether the supervisor's loop has a core to itself now (None: unknown)."""
        admin = self.admin()
        try:
            value = admin.metrics().get("corral_hub_core_held")
        except (AdminError, OSError):
            return None
        finally:
            admin.close()
        return None if value is None else bool(value)

    def pool_info(self) -> dict:
        """Spare setting in effect plus the live gauges from GET /metrics."""
        spares, source = self.configured_spares()
        info: dict = {"spares_setting": spares, "spares_source": source}
        admin = self.admin()
        try:
            m = admin.metrics()
            info.update(spares_ready=m.get('corral_pool_children{state="spare"}'),
                        children=m.get("corral_children"),
                        cold_starts_total=m.get("corral_cold_starts_total"))
            setups = m.get("corral_children_set_up_total") or 0
            prefix = 'corral_child_setup_cpu_seconds_total{step="'
            faults = 'corral_child_setup_page_faults_total{step="'
            if setups:
                info["setups"] = setups
                info["setup_us_mean"] = {key[len(prefix):-2]: value * 1e6 / setups
                                         for key, value in m.items() if key.startswith(prefix)}
                info["setup_faults_mean"] = {key[len(faults):-2]: value / setups
                                             for key, value in m.items() if key.startswith(faults)}
        except (AdminError, OSError) as e:
            info["metrics_error"] = str(e)
        finally:
            admin.close()
        return info


def _unix_ok(path: Path) -> bool:
    if not path.exists():
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


SYSTEMS = {"workerd": Workerd, "bare": BareH11, "corral": Corral}
