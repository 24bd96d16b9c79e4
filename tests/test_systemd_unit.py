"""scripts/corral.service: the unit a platform installs, run as systemd runs it.

The unit's ExecStart is started the way systemd starts it (its working
directory, ``$STATE_DIRECTORY`` from ``StateDirectory=``, ``$NOTIFY_SOCKET``
for ``Type=notify``), with only the install prefix and the port changed, and
must tell READY, RELOADING on its ExecReload signal and STOPPING on its
KillSignal, keeping its state in ``$STATE_DIRECTORY``.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.harness import free_port

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "scripts" / "corral.service"
PREFIX = "/opt/corral"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_is_a_notify_service_with_its_state_and_cgroup_delegated():
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["StateDirectory"] == "corral"
    assert service["WorkingDirectory"] == "/var/lib/corral"
    assert service["Delegate"] == "yes"  # the memory limits' cgroups (supervisor/limits/memory.py)
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert shlex.split(service["ExecStart"])[:2] == [f"{PREFIX}/.venv/bin/corral", "serve"]
    if shutil.which("systemd-analyze"):  # systemd's own reading of it, where systemd is installed
        local = UNIT.read_text().replace(PREFIX, str(REPO))
        copy = Path("/tmp") / f"corral-test-{os.getpid()}.service"
        copy.write_text(local)
        try:
            checked = subprocess.run(["systemd-analyze", "verify", str(copy)],
                                     capture_output=True, text=True, timeout=60)
        finally:
            copy.unlink()
        assert checked.returncode == 0, checked.stderr


@contextlib.contextmanager
def _notified_serve(argv: list[str], tmp_path: Path, **popen: Any) -> Iterator[tuple[subprocess.Popen, socket.socket]]:
    """``argv`` started with a ``NOTIFY_SOCKET`` of its own; the process and
    that socket, the first READY=1 already heard; killed if still running."""
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(60)
    env = {**os.environ, **popen.pop("env", {}), "NOTIFY_SOCKET": notify_path}
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"), **popen)
    try:
        assert notify.recv(4096) == b"READY=1", log.read_text()
        yield proc, notify
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


def test_execstart_run_as_systemd_runs_it(tmp_path):
    service = _unit()["Service"]
    state = tmp_path / "var-lib-corral"
    state.mkdir(mode=0o700)
    port = free_port()
    argv = shlex.split(service["ExecStart"])
    argv[0] = argv[0].replace(PREFIX, str(REPO))
    argv[argv.index("--http") + 1] = f"127.0.0.1:{port}"
    env = {"STATE_DIRECTORY": str(state), "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    with _notified_serve(argv, tmp_path, cwd=state, env=env) as (proc, notify):
        assert (state / "admin.sock").exists()  # $STATE_DIRECTORY is its state dir
        proc.send_signal(signal.SIGHUP)  # what ExecReload sends
        assert notify.recv(4096).startswith(b"RELOADING=1\n")
        assert notify.recv(4096) == b"READY=1"
        proc.send_signal(getattr(signal, service["KillSignal"]))
        assert notify.recv(4096) == b"STOPPING=1"
        assert proc.wait(30) == 0


def test_a_state_dir_named_by_flag_or_config_wins_over_systemds(tmp_path, monkeypatch):
    from supervisor import config

    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "systemd"))
    assert config.load(None).state_dir == str(tmp_path / "systemd")
    assert config.load(None, state_dir=str(tmp_path / "flag")).state_dir == str(tmp_path / "flag")
    named = tmp_path / "corral.toml"
    named.write_text(f'state_dir = "{tmp_path / "file"}"\n')
    assert config.load(str(named)).state_dir == str(tmp_path / "file")
    unnamed = tmp_path / "other.toml"
    unnamed.write_text("log_invocations = true\n")
    assert config.load(str(unnamed)).state_dir == str(tmp_path / "systemd")
    monkeypatch.delenv("STATE_DIRECTORY")
    assert config.load(None).state_dir == ".corral"


def test_serve_raises_its_open_file_limit_to_the_hard_limit(tmp_path):
    """One tenant's few thousand waiting fetches must not exhaust the usual
    soft limit of 1,024 descriptors for every tenant: ``serve`` takes its
    hard limit (the children set their own, far lower, in the jail)."""
    import resource

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 8192))

    argv = [sys.executable, "-m", "supervisor", "serve", "--http", f"127.0.0.1:{free_port()}",
            "--state-dir", str(tmp_path / "state")]
    with _notified_serve(argv, tmp_path, cwd=REPO, preexec_fn=low_soft_limit) as (proc, _notify):
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3:5] == ["8192", "8192"], line
        assert '"serve.fd_limit_raised"' in (tmp_path / "serve.log").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_a_sighup_as_soon_as_the_admin_socket_exists_does_not_end_the_server(tmp_path):
    """The admin socket's file is the sign scripts take for "started"
    (scripts/example waits on it), but the server took its signals later: a
    reload sent then met SIGHUP's default action, and the server died
    ("Hangup"). Sent at once, each time, for three servers."""
    import threading

    from tests.harness import Corral

    for attempt in range(3):
        server = Corral(tmp_path / f"state-{attempt}")
        socket_path = Path(server.socket_path)
        started = threading.Thread(target=server.start)
        started.start()
        try:
            while server.proc is None or not socket_path.exists():
                assert server.proc is None or server.proc.poll() is None, server.log()
                os.sched_yield()
            server.proc.send_signal(signal.SIGHUP)
            started.join(60)
            assert server.proc.poll() is None, f"the server ended: {server.log()[-2000:]}"
            assert server.admin("GET", "/accounts/local/workers/dispatch/namespaces").status == 200
        finally:
            started.join(60)
            server.stop()
