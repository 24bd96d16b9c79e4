"""End to end: `python -m supervisor serve` driven by the `corral` subcommands.

One supervisor serves the whole module (starting the pool costs a second or
two); each CLI call is a real subprocess talking to the real admin socket,
and the deployed workers are then requested over HTTP with a ``Host`` header.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SERVER_EXISTS = (ROOT / "supervisor" / "server.py").exists()
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ENV.pop("CORRAL_ADMIN_SOCKET", None)


def corral(*args, env=None, cwd=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "supervisor", *map(str, args)], capture_output=True,
                          text=True, env=env or ENV, cwd=cwd, timeout=timeout)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_socket(path, proc, deadline):
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"corral serve exited with {proc.returncode}: {proc.stderr.read()}")
        if path.exists():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(path))
                    return
                except OSError:
                    pass
        time.sleep(0.05)
    raise RuntimeError("the admin socket did not appear within 30 s")


class Server:
    def __init__(self, state, port):
        self.state, self.port = state, port
        self.socket = state / "admin.sock"

    def cli(self, *args, expect=0):
        result = corral(*args, "--socket", self.socket)
        assert result.returncode == expect, (args, result.returncode, result.stdout, result.stderr)
        return result

    def get(self, host, path="/"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path, headers={"Host": host})
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not SERVER_EXISTS:
        pytest.skip("supervisor/server.py is not written yet")
    state = tmp_path_factory.mktemp("state")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "serve", "--http", f"127.0.0.1:{port}", "--state-dir", str(state)],
        env=ENV, cwd=state, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(state / "admin.sock", proc, time.monotonic() + 30)
        yield Server(state, port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def dispatcher_project(tmp_path):
    (tmp_path / "src").mkdir()
    # The bundled dispatcher's code, in a Wrangler-style project of our own (namespace 'customers').
    source = next(p for p in (EXAMPLES / "dispatcher" / "worker.py", EXAMPLES / "dispatcher.py") if p.exists())
    (tmp_path / "src" / "entry.py").write_text(source.read_text())
    (tmp_path / "wrangler.jsonc").write_text("""{
  // the bundled dispatcher, Wrangler style
  "main": "src/entry.py",
  "compatibility_date": "2025-06-01",
  "dispatch_namespaces": [{"binding": "dispatcher", "namespace": "customers"},],
}""")
    return tmp_path


def test_deploy_route_request_and_cleanup(server, dispatcher_project):
    out = server.cli("ns", "create", "customers").stdout
    assert "created namespace customers" in out
    server.cli("ns", "create", "customers", expect=1)
    assert "customers" in server.cli("ns", "ls").stdout

    out = server.cli("deploy", "dispatcher", dispatcher_project).stdout
    assert "deployed dispatcher to platform scripts" in out and "main src/entry.py" in out
    route = json.loads(server.cli("routes", "add", "*.localhost/*", "dispatcher", "--json").stdout)
    assert route["pattern"] == "*.localhost/*"
    assert route["id"] in server.cli("routes", "ls").stdout

    # options between positionals, repeated flags
    out = server.cli("deploy", "hello", "--namespace", "customers", EXAMPLES / "hello.py",
                     "--var", "GREETING=Howdy", "--tag", "plan:free", "--tag", "user:42").stdout
    assert "deployed hello to namespace customers" in out
    status, body = server.get("hello.localhost:8080", "/some/path?q=1")
    assert status == 200 and body.startswith("Howdy from Corral!"), body
    assert "GET http://hello.localhost:8080/some/path?q=1" in body
    status, body = server.get("nobody.localhost", "/")
    assert status == 404 and "No worker named 'nobody'" in body
    status, _ = server.get("example.com", "/")
    assert status == 404  # no route

    # redeploy: the next request runs the new version
    server.cli("deploy", "hello", "-n", "customers", EXAMPLES / "hello.py", "--var", "GREETING=Bonjour")
    assert server.get("hello.localhost")[1].startswith("Bonjour from Corral!")

    listing = server.cli("ls", "-n", "customers").stdout
    assert listing.splitlines()[0].split() == ["NAME", "VERSION", "TAGS", "MODIFIED"]
    assert "hello" in listing
    shown = next(line.split()[1] for line in listing.splitlines() if line.startswith("hello"))
    assert shown in server.cli("versions", "hello", "-n", "customers").stdout  # the id rollback takes
    scripts = json.loads(server.cli("--json", "ls", "-n", "customers", "--tag", "plan:free").stdout)
    assert [s["name"] for s in scripts] == ["hello"]
    assert json.loads(server.cli("ls", "-n", "customers", "--tag", "plan:pro", "--json").stdout) == []
    assert [s["name"] for s in json.loads(server.cli("ls", "--json").stdout)] == ["dispatcher"]

    assert server.cli("tags", "hello", "-n", "customers").stdout.split() == ["plan:free", "user:42"]
    assert server.cli("tags", "hello", "-n", "customers", "add", "beta").stdout.split() == [
        "plan:free", "user:42", "beta"]
    assert server.cli("tags", "hello", "-n", "customers", "rm", "user:42").stdout.split() == ["plan:free", "beta"]
    tags = json.loads(server.cli("tags", "hello", "-n", "customers", "set", "a", "b", "--json").stdout)
    assert tags == ["a", "b"]
    server.cli("tags", "missing", "-n", "customers", expect=1)

    assert "deleted hello" in server.cli("rm", "-n", "customers", "hello").stdout
    result = server.cli("rm", "-n", "customers", "hello", expect=1)
    assert "not found" in result.stderr
    status, body = server.get("hello.localhost")
    assert status == 404 and "No worker named 'hello'" in body

    server.cli("deploy", "gone", "-n", "customers", EXAMPLES / "hello.py", "--tag", "old")
    assert "deleted 1 script(s)" in server.cli("rm", "-n", "customers", "--tag", "old:yes").stdout

    server.cli("routes", "rm", route["id"])
    server.cli("routes", "rm", route["id"], expect=1)
    assert server.get("x.localhost")[0] == 404
    assert "deleted namespace customers" in server.cli("ns", "rm", "customers").stdout


def test_api_errors_exit_1_with_message(server, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    result = server.cli("deploy", "bad", bad, expect=1)
    assert "failed to load" in result.stderr and "SyntaxError" in result.stderr
    result = server.cli("deploy", "x", "-n", "no-such-ns", EXAMPLES / "hello.py", expect=1)
    assert "no-such-ns" in result.stderr
    result = server.cli("routes", "add", "example.com", "x", expect=1)
    assert "no path" in result.stderr


def test_socket_from_environment(server):
    result = corral("ns", "ls", "--json", env={**ENV, "CORRAL_ADMIN_SOCKET": str(server.socket)})
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), list)


def test_metrics_over_the_admin_socket(server):
    from supervisor.cli import UnixHTTPConnection

    conn = UnixHTTPConnection(str(server.socket))
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 200 and b"corral_" in response.read()
    conn.close()


# -- no server needed ------------------------------------------------------------------


def test_unreachable_socket_is_exit_1(tmp_path):
    result = corral("ls", "--socket", tmp_path / "none.sock")
    assert result.returncode == 1 and "cannot reach the supervisor" in result.stderr


def test_default_socket_is_relative_to_cwd(tmp_path):
    result = corral("ns", "ls", cwd=tmp_path)
    assert result.returncode == 1 and "./.corral/admin.sock" in result.stderr


def test_bad_usage_is_exit_2(tmp_path):
    assert corral().returncode == 2
    assert corral("bogus").returncode == 2
    assert corral("deploy", "only-name").returncode == 2
    assert corral("tags", "x", "bogus").returncode == 2
    assert corral("routes", "add", "pattern-only").returncode == 2
    result = corral("deploy", "x", tmp_path / "missing", "--socket", tmp_path / "s")
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = corral("deploy", "x", EXAMPLES / "hello.py", "--var", "NOEQUALS", "--socket", tmp_path / "s")
    assert result.returncode == 2 and "KEY=VALUE" in result.stderr
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "wrangler.toml").write_text('main = "w.py"\n[env.staging]\n')
    (tmp_path / "proj" / "w.py").write_text("")
    result = corral("deploy", "--env", "qa", "x", tmp_path / "proj", "--socket", tmp_path / "s")
    assert result.returncode == 2 and "no environment 'qa'" in result.stderr and "staging" in result.stderr
    result = corral("serve", "--config", tmp_path / "missing.toml")
    assert result.returncode == 2 and "bad configuration" in result.stderr
    (tmp_path / "c.toml").write_text("htttp = 1\n")
    result = corral("serve", "--config", tmp_path / "c.toml")
    assert result.returncode == 2 and "htttp" in result.stderr
    result = corral("serve", "--http", "nonsense")
    assert result.returncode == 2 and "HOST:PORT" in result.stderr and "'nonsense'" in result.stderr
    result = corral("serve", "--http", "127.0.0.1:70000")
    assert result.returncode == 2 and "a port from 0 to 65535" in result.stderr


@pytest.mark.parametrize("text, words", [
    ("[limits]\ncpu_ms = -5\n", "`float` > 0.0 - at `$.limits.cpu_ms`"),
    ("[pool]\nspares = -1\n", "`int` >= 0 - at `$.pool.spares`"),
    ("[pool]\nmax_children = 0\n", "`int` >= 1 - at `$.pool.max_children`"),
    ("[limits.namespace.free]\nwall_ms = 0\n", "`float` > 0.0 - at `$.limits.namespace[...].wall_ms`"),
    ("[storage.quota]\nkv_keys = -3\n", "at `$.storage.quota.kv_keys`"),
])
def test_a_negative_or_zero_setting_is_refused_naming_it(tmp_path, text, words):
    """Checked as the file is read, not found out later as odd behaviour."""
    (tmp_path / "c.toml").write_text(text)
    result = corral("serve", "--config", tmp_path / "c.toml", "--state-dir", tmp_path / "state")
    assert result.returncode == 2 and words in result.stderr, result.stderr


def test_a_second_server_on_a_state_dir_in_use_stops_and_harms_nothing(server, tmp_path):
    """Same state dir: refused at once (exit 1, a log line, a message with the
    holder's pid); the running server keeps its admin socket and its data."""
    server.cli("ns", "create", "still-here")
    result = corral("serve", "--http", f"127.0.0.1:{free_port()}", "--state-dir", server.state, timeout=30)
    assert result.returncode == 1, result.stderr
    assert f"the state directory {server.state} is in use by another corral serve (pid " in result.stderr
    assert '"event":"serve.cannot_start"' in result.stderr
    # Its own state dir but the running server's admin socket: refused too.
    result = corral("serve", "--http", f"127.0.0.1:{free_port()}", "--state-dir", tmp_path / "other",
                    "--admin-socket", server.socket, timeout=30)
    assert result.returncode == 1 and f"the admin socket {server.socket} is in use" in result.stderr
    # The HTTP port in use: refused before anything starts.
    result = corral("serve", "--http", f"127.0.0.1:{server.port}", "--state-dir", tmp_path / "third",
                    timeout=30)
    assert result.returncode == 1, result.stderr
    assert f"cannot listen for HTTP on 127.0.0.1:{server.port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert "still-here" in server.cli("ns", "ls").stdout
    # serve.lock deleted as "stale": the directory itself is what is locked.
    os.unlink(os.path.join(server.state, "serve.lock"))
    result = corral("serve", "--http", f"127.0.0.1:{free_port()}", "--state-dir", server.state,
                    "--admin-socket", tmp_path / "fourth.sock", timeout=30)
    assert result.returncode == 1 and "is in use by another corral serve" in result.stderr, result.stderr


def test_a_state_dir_serve_makes_is_private(server, tmp_path):
    """It holds tenants' secrets and data: made 0700, as systemd's
    StateDirectoryMode=0700 makes it (it was 0755, its database 0644, and any
    local user could read every secret binding in it). The HTTP port is in
    use, so serve stops once it has made it."""
    state = tmp_path / "fresh"
    result = corral("serve", "--http", f"127.0.0.1:{server.port}", "--state-dir", state,
                    "--admin-socket", tmp_path / "fresh.sock", timeout=30)
    assert result.returncode == 1 and state.is_dir(), result.stderr
    assert state.stat().st_mode & 0o777 == 0o700, oct(state.stat().st_mode)


def test_tail_without_a_supervisor_is_an_api_error(tmp_path):
    result = corral("tail", "x", "--socket", tmp_path / "s")
    assert result.returncode == 1 and "cannot reach the supervisor" in result.stderr


def test_a_corrupt_state_database_is_a_startup_error_naming_it(tmp_path):
    """A truncated or corrupt corral.db: exit 1, a log line and a message
    naming the file, never a bare traceback, and the file left as it was."""
    state = tmp_path / "state"
    state.mkdir()
    garbage = b"this is no SQLite database " * 400
    (state / "corral.db").write_bytes(garbage)
    result = corral("serve", "--http", f"127.0.0.1:{free_port()}", "--state-dir", state, timeout=30)
    assert result.returncode == 1, result.stderr
    assert f"{state / 'corral.db'} cannot be read as Corral's database" in result.stderr
    assert '"event":"serve.cannot_start"' in result.stderr and "Traceback" not in result.stderr
    assert (state / "corral.db").read_bytes() == garbage


def test_a_state_database_of_a_newer_corral_is_a_startup_error(tmp_path):
    """A later Corral's corral.db: a message naming it and what to do, not a traceback."""
    import sqlite3 as sqlite

    state = tmp_path / "state"
    state.mkdir()
    db = sqlite.connect(state / "corral.db")
    db.execute("PRAGMA user_version = 999")
    db.close()
    result = corral("serve", "--http", f"127.0.0.1:{free_port()}", "--state-dir", state, timeout=30)
    assert result.returncode == 1, result.stderr
    assert "was written by a newer Corral (schema 999" in result.stderr and "Traceback" not in result.stderr


def test_a_control_plane_lost_with_its_wal_is_not_started_empty(tmp_path):
    """corral.db's recent writes live in corral.db-wal until a checkpoint: a
    backup or a crash that lost the WAL left a database with no schema, and
    serve started a new, empty control plane on it and collected every
    bundle as no script's. Refused, naming the files; the bundles stay."""
    import sqlite3 as sqlite

    from tests.harness import Corral

    state = tmp_path / "state"
    server = Corral(state).start()
    try:
        server.deploy("kept", "from workers import Response, WorkerEntrypoint\n"
                              "class Default(WorkerEntrypoint):\n"
                              "    async def fetch(self, request):\n        return Response('x')\n")
    finally:
        server.stop()
    bundles = sorted(p.name for p in (state / "bundles").iterdir())
    assert bundles
    for name in ("corral.db", "corral.db-wal", "corral.db-shm"):
        (state / name).unlink(missing_ok=True)
    sqlite.connect(state / "corral.db").close()  # an empty database: what survives of a lost WAL
    result = corral("serve", "--http", f"127.0.0.1:{free_port()}", "--state-dir", state, timeout=30)
    assert result.returncode == 1, result.stderr
    assert "holds no Corral data" in result.stderr and "corral.db-wal" in result.stderr, result.stderr
    assert sorted(p.name for p in (state / "bundles").iterdir()) == bundles
