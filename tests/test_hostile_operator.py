"""A careless or hostile operator at the command line (SPEC section 1).

``corral serve`` with a bad configuration must stop at once with exit 2 and
a message naming the setting (a state directory or address it cannot use:
exit 1), and harm nothing on the way; a SIGHUP with the file made bad keeps
the running configuration and says why. ``corral deploy`` of a broken
project folder says which file and key, with exit 2, and uploads nothing.
Every client command's bad usage is exit 2, an API error exit 1, never a
traceback, and ``--json`` never puts anything but JSON on stdout.

Real processes throughout: each CLI call is a subprocess, and one server
(module scoped) answers the calls that need one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Corral, free_port

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ENV.pop("CORRAL_ADMIN_SOCKET", None)
ENTRY = ("from workers import WorkerEntrypoint, Response\n\n"
         "class Default(WorkerEntrypoint):\n"
         "    async def fetch(self, request):\n"
         "        return Response('still here')\n")


def corral(*args: Any, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor", *map(str, args)], capture_output=True,
                          text=True, env=ENV, input=stdin, cwd=cwd or ROOT, timeout=120)


def serve(*args: Any, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``corral serve`` that is expected to stop by itself; one that starts
    instead is killed (with its children) at ``timeout`` and fails the test."""
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "serve", *map(str, args)], env=ENV,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"corral serve {args} started instead of refusing: {err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def refused(result: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    """Exit ``status``, each of ``words`` in the message, no traceback, and
    stdout empty or JSON (``--json`` output stays machine-readable)."""
    text = f"exit {result.returncode}\nstdout: {result.stdout[-1500:]}\nstderr: {result.stderr[-3000:]}"
    assert result.returncode == status, text
    assert "Traceback" not in result.stderr + result.stdout, text
    for word in words:
        assert word in result.stderr, (word, text)
    if result.stdout.strip():
        json.loads(result.stdout)


def project(root: Path, files: dict[str, str | bytes | Path | None]) -> Path:
    """A project folder: text or bytes files, a Path is a symlink to it, None a folder."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        elif isinstance(content, Path):
            path.symlink_to(content)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


# -- the one server -------------------------------------------------------------


@pytest.fixture(scope="module")
def notify(tmp_path_factory: pytest.TempPathFactory) -> Iterator[socket.socket]:
    """A NOTIFY_SOCKET of our own: the server says RELOADING=1 once it has
    handled a SIGHUP, so a test waits on that, not on a clock."""
    path = tmp_path_factory.mktemp("notify") / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, notify: socket.socket) -> Iterator[Corral]:
    state = tmp_path_factory.mktemp("hostile-operator") / "state"
    corral_ = Corral(state, config="[pool]\nspares = 1\n",
                     env={"NOTIFY_SOCKET": notify.getsockname()}).start()
    yield corral_
    corral_.stop()


@pytest.fixture(scope="module")
def deployed(server: Corral, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A platform script every failed command must leave as it was; its version."""
    folder = project(tmp_path_factory.mktemp("keep"), {
        "wrangler.jsonc": '{"main": "src/entry.py", "vars": {"A": "1"}}', "src/entry.py": ENTRY})
    result = corral("deploy", "--socket", server.socket_path, "--json", "keep", folder)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["version"]


def still_deployed(server: Corral, version: str) -> None:
    result = corral("ls", "--socket", server.socket_path, "--json")
    assert result.returncode == 0, result.stderr
    assert [(s["name"], s["version"]) for s in json.loads(result.stdout)] == [("keep", version)]


# -- corral serve: a bad configuration ------------------------------------------------

LONG_SOCKET = "/tmp/" + "s" * 110 + ".sock"


@pytest.mark.parametrize("config, args, words", [
    ("this is { not toml", [], ["bad configuration", "Expected '=' after a key"]),
    (b"\xff\xfe\x00junk", [], ["bad configuration"]),
    ("[poool]\nspares = 1\n", [], ["unknown field `poool`"]),
    ("[pool]\nsparez = 1\n", [], ["unknown field `sparez`"]),
    ("[pool]\nspares = 'eight'\n", [], ["`$.pool.spares`"]),
    ("pool = [1, 2]\n", [], ["got `array` - at `$.pool`"]),
    ("http = 8080\n", [], ["at `$.http`"]),
    ("[http_limits]\nmax_body_bytes = -1\n", [], ["`$.http_limits.max_body_bytes`"]),
    ("[http_limits]\nheader_timeout_s = nan\n", [], ["`$.http_limits.header_timeout_s`"]),
    ("[http_limits]\nheader_timeout_s = inf\n", [], ["http_limits.header_timeout_s must be a finite"]),
    ("[observability]\nusage_retention_days = inf\n", [],
     ["observability.usage_retention_days must be a finite number, got inf"]),
    ("[limits.namespace.free]\ncpu_ms = inf\n", [], ["limits.namespace.free.cpu_ms must be a finite"]),
    ("[pool]\nspares = 1.5\n", [], ["Expected `int`, got `float` - at `$.pool.spares`"]),
    ("busy_poll_us = 1000000\n", [], ["`$.busy_poll_us`"]),
    ("[observability]\ntrusted_proxies = ['not an ip']\n", [],
     ["observability.trusted_proxies: 'not an ip' is not an IP address"]),
    ("[observability.otlp]\nendpoint = 'collector:4318'\n", [], ["observability.otlp.endpoint must be an http"]),
    ("[admin]\nsocket_access = 'group'\nsocket_group = 'no-such-group-here'\n", [],
     ["admin.socket_group: no group named 'no-such-group-here'"]),
    ("[admin]\ntcp = '127.0.0.1:0'\ntls_cert = '/etc/hostname'\n", [],
     ["admin.tls_cert and admin.tls_key go together"]),
    ("[admin]\ntcp = '127.0.0.1:0'\ntls_cert = '/no/cert.pem'\ntls_key = '/no/key.pem'\n", [],
     ["admin.tls_cert '/no/cert.pem'", "cannot be loaded"]),
    ("[admin]\ntcp = '127.0.0.1:99999'\n", [], ["admin.tcp must be HOST:PORT"]),
    (None, ["--http", ":99999"], ["HOST:PORT", "':99999'"]),
    (None, ["--http", "host:"], ["HOST:PORT", "'host:'"]),
    (None, ["--http", "[::1"], ["'[::1'", "balanced brackets"]),
    (None, ["--http", "[::1:8080"], ["'[::1:8080'", "balanced brackets"]),
    (None, ["--http", "::1:8080"], ["put an IPv6 host in brackets, as [::1]:8080"]),
    (None, ["--http", "127.0.0.1:\u0668\u0660"], ["HOST:PORT"]),
    (None, ["--http", "/run/corral/http.sock"], ["HOST:PORT", "'/run/corral/http.sock'"]),
    (None, ["--http", ""], ["HOST:PORT"]),
    (None, ["--admin-socket", "/no/such/folder/admin.sock"], ["its folder /no/such/folder does not exist"]),
    (None, ["--admin-socket", LONG_SOCKET], ["is too long: a unix socket path has at most 107 bytes"]),
    (None, ["--admin-socket", "/tmp"], ["'/tmp' exists and is not a socket"]),
    (None, ["--config", "/no/such/corral.toml"], ["bad configuration", "/no/such/corral.toml"]),
    (None, ["--config", "/tmp"], ["bad configuration", "Is a directory"]),
], ids=lambda v: None)
def test_serve_refuses_a_bad_configuration_naming_it(tmp_path: Path, config: str | bytes | None,
                                                    args: list[str], words: list[str]) -> None:
    flags = ["--state-dir", tmp_path / "state", *(() if "--http" in args else ("--http", "127.0.0.1:0")), *args]
    if config is not None:
        path = tmp_path / "corral.toml"
        path.write_bytes(config if isinstance(config, bytes) else config.encode())
        flags += ["--config", path]
    refused(serve(*flags), 2, *words)


def test_an_admin_socket_over_a_file_leaves_the_file_alone(tmp_path: Path) -> None:
    """The listener replaces what is at its path: a regular file there (a
    typo in --admin-socket) was destroyed, and unlinked again on the way out."""
    precious = tmp_path / "precious.db"
    precious.write_bytes(b"the operator's data")
    result = serve("--state-dir", tmp_path / "state", "--http", "127.0.0.1:0", "--admin-socket", precious)
    refused(result, 2, f"'{precious}' exists and is not a socket")
    assert precious.read_bytes() == b"the operator's data"


@pytest.mark.parametrize("layout, words", [
    ("state-is-a-file", ["state_dir (--state-dir)", "is not a folder"]),
    ("state-under-a-file", ["cannot use the state directory", "Not a directory"]),
    ("state-in-proc", ["cannot use the state directory /proc/self/no-such/state"]),
    ("packages-is-a-file", ["cannot set up the state directory", "packages"]),
    ("corrupt-database", ["cannot be read as Corral's database", "left as it is"]),
    ("corrupt-usage", ["usage.db cannot be read as Corral's usage database", "left as it is"]),
])
def test_serve_refuses_a_state_dir_it_cannot_use(tmp_path: Path, layout: str, words: list[str]) -> None:
    """A state directory that is a file, cannot be made, or holds a file
    where a folder goes: a message naming it (exit 2 if the configuration
    says so, 1 if start-up finds it), and nothing in it rewritten."""
    state = tmp_path / "state"
    status = 1
    if layout == "state-is-a-file":
        state.write_text("not a folder")
        status = 2
    elif layout == "state-under-a-file":
        (tmp_path / "file").write_text("x")
        state = tmp_path / "file" / "state"
    elif layout == "state-in-proc":
        state = Path("/proc/self/no-such/state")
    else:
        state.mkdir()
        name = {"packages-is-a-file": "packages", "corrupt-usage": "usage.db"}.get(layout, "corral.db")
        (state / name).write_bytes(b"\x00garbage\xff" * 7)
    result = serve("--state-dir", state, "--http", "127.0.0.1:0")
    refused(result, status, *words)
    if layout in ("packages-is-a-file", "corrupt-database", "corrupt-usage"):
        assert (state / name).read_bytes() == b"\x00garbage\xff" * 7


def test_serve_beside_a_running_server_refuses_and_harms_nothing(server: Corral, deployed: str,
                                                                  tmp_path: Path) -> None:
    """Its state dir, its admin socket, its HTTP port, a port in use for
    admin.tcp: each refused with exit 1 and a message, the server untouched."""
    refused(serve("--state-dir", server.state_dir, "--http", "127.0.0.1:0",
                  "--admin-socket", tmp_path / "other.sock"), 1, "is in use by another corral serve")
    refused(serve("--state-dir", tmp_path / "b", "--http", "127.0.0.1:0", "--admin-socket", server.socket_path),
            1, f"the admin socket {server.socket_path} is in use")
    refused(serve("--state-dir", tmp_path / "c", "--http", f"127.0.0.1:{server.port}"),
            1, "cannot listen for HTTP", "Address already in use")
    (tmp_path / "tcp.toml").write_text(f"[admin]\ntcp = '127.0.0.1:{server.port}'\n")
    refused(serve("--state-dir", tmp_path / "d", "--http", f"127.0.0.1:{free_port()}",
                  "--config", tmp_path / "tcp.toml"),
            1, f"cannot listen for the admin API on admin.tcp 127.0.0.1:{server.port}", "Address already in use")
    assert not (tmp_path / "d" / "admin.sock").exists()
    still_deployed(server, deployed)


def _reload(server: Corral, notify: socket.socket) -> list[dict[str, Any]]:
    """SIGHUP, then wait for the server's RELOADING=1; the events logged since."""
    before = len(server.log_events())
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    while not notify.recv(4096).startswith(b"RELOADING=1"):
        pass
    return server.log_events()[before:]


def test_sighup_with_a_config_made_bad_keeps_the_running_one_and_says_why(
        server: Corral, deployed: str, notify: socket.socket) -> None:
    config = Path(server.extra_args[server.extra_args.index("--config") + 1])
    good = config.read_text()
    try:
        config.write_text(good.replace("spares = 1", "spares = 'one'"))
        events = _reload(server, notify)
        bad = [e for e in events if e["event"] == "serve.reload_config_invalid"]
        assert bad and "`$.pool.spares`" in bad[0]["reason"], events
        assert "running configuration" in bad[0]["kept"]
        config.write_text("this is { not toml")
        bad = [e for e in _reload(server, notify) if e["event"] == "serve.reload_config_invalid"]
        assert bad and "Expected '='" in bad[0]["reason"]
        config.write_text(good.replace("spares = 1", "spares = 2"))
        changed = [e for e in _reload(server, notify) if e["event"] == "serve.reload_config_changed"]
        assert changed and changed[0]["changed"] == ["pool"] and "next restart" in changed[0]["kept"]
        config.write_text(good)
        assert not [e for e in _reload(server, notify) if e["event"].startswith("serve.reload_config")]
    finally:
        config.write_text(good)
    assert server.alive()
    still_deployed(server, deployed)


# -- corral deploy: a broken project folder ---------------------------------------------

W = 'src/entry.py'


def _wrangler(body: str, **more: str | bytes | Path | None) -> dict[str, str | bytes | Path | None]:
    return {"wrangler.jsonc": body, W: ENTRY, **more}


DEPLOY_REFUSALS: dict[str, tuple[dict[str, str | bytes | Path | None], list[str]]] = {
    "jsonc-syntax": (_wrangler('{"main": "src/entry.py",,}'), ["wrangler.jsonc: JSON is malformed"]),
    "jsonc-open-comment": (_wrangler('{"main": "src/entry.py"} /* '), ["unterminated /* comment"]),
    "jsonc-empty": (_wrangler(""), ["wrangler.jsonc"]),
    "jsonc-a-list": (_wrangler("[1, 2]"), ["wrangler.jsonc: Expected `object`, got `array`"]),
    "jsonc-deep": (_wrangler("[" * 100_000), ["nested too deeply"]),
    "toml-syntax": ({"wrangler.toml": 'main = "src/entry.py', W: ENTRY}, ["wrangler.toml: Unterminated string"]),
    "corral-unknown-key": ({"corral.toml": 'main = "src/entry.py"\nbogus = 1\n', W: ENTRY},
                           ["corral.toml: Object contains unknown field `bogus`"]),
    "config-not-utf8": (_wrangler(b'{"main": "src/entry.py", "vars": {"A": "\xff"}}'), ["not UTF-8"]),
    "main-int": (_wrangler('{"main": 5}'), ["at `$.main`"]),
    "main-list": (_wrangler('{"main": ["src/entry.py"]}'), ["at `$.main`"]),
    "main-empty": (_wrangler('{"main": ""}'), ["does not name the main module"]),
    "main-folder": (_wrangler('{"main": "src"}'), ["main 'src' must be a .py file"]),
    "main-outside": (_wrangler('{"main": "../../etc/x.py"}'), ["must be a path inside"]),
    "main-absolute": (_wrangler('{"main": "/etc/x.py"}'), ["must be a path inside"]),
    "main-missing": (_wrangler('{"main": "src/nope.py"}'), ["main 'src/nope.py' not found"]),
    "vars-list": (_wrangler('{"main": "src/entry.py", "vars": [1]}'), ["at `$.vars`"]),
    "vars-bad-name": (_wrangler('{"main": "src/entry.py", "vars": {"a-b": "x"}}'), ["'a-b' must be a valid"]),
    "kv-string": (_wrangler('{"main": "src/entry.py", "kv_namespaces": "K"}'), ["at `$.kv_namespaces`"]),
    "kv-no-id": (_wrangler('{"main": "src/entry.py", "kv_namespaces": [{"binding": "K"}]}'),
                 ["missing required field `id`"]),
    "d1-object": (_wrangler('{"main": "src/entry.py", "d1_databases": {"binding": "D"}}'), ["`$.d1_databases`"]),
    "d1-no-id": (_wrangler('{"main": "src/entry.py", "d1_databases": [{"binding": "D"}]}'),
                 ["missing required field `database_id`"]),
    "r2-int": (_wrangler('{"main": "src/entry.py", "r2_buckets": [1]}'), ["at `$.r2_buckets[0]`"]),
    "do-string": (_wrangler('{"main": "src/entry.py", "durable_objects": "x"}'), ["at `$.durable_objects`"]),
    "queues-list": (_wrangler('{"main": "src/entry.py", "queues": [1]}'), ["at `$.queues`"]),
    "queue-batch-negative": (_wrangler('{"main": "src/entry.py", "queues": {"consumers": '
                                       '[{"queue": "q", "max_batch_size": -1}]}}'), ["max_batch_size"]),
    "crons-string": (_wrangler('{"main": "src/entry.py", "triggers": {"crons": "* * * * *"}}'),
                     ["at `$.triggers.crons`"]),
    "cron-garbage": (_wrangler('{"main": "src/entry.py", "triggers": {"crons": ["not a cron"]}}'),
                     ["triggers.crons: cron 'not a cron' must have five fields"]),
    "cron-minute-61": (_wrangler('{"main": "src/entry.py", "triggers": {"crons": ["61 * * * *"]}}'),
                       ["minute 61 is outside 0-59"]),
    "cron-step-0": (_wrangler('{"main": "src/entry.py", "triggers": {"crons": ["*/0 * * * *"]}}'),
                    ["step '0' in the minute"]),
    "cron-empty": (_wrangler('{"main": "src/entry.py", "triggers": {"crons": [""]}}'), ["non-empty string"]),
    "assets-missing": (_wrangler('{"main": "src/entry.py", "assets": {"directory": "public"}}'),
                       ["assets.directory 'public' is not a folder"]),
    "assets-a-file": (_wrangler('{"main": "src/entry.py", "assets": {"directory": "public"}}', public="x"),
                      ["assets.directory 'public' is not a folder"]),
    "assets-symlink-loop": (_wrangler('{"main": "src/entry.py", "assets": {"directory": "public"}}',
                                      **{"public/a": Path("b"), "public/b": Path("a")}),
                            ["Too many levels of symbolic links"]),
    "assets-link-outside": (_wrangler('{"main": "src/entry.py", "assets": {"directory": "public"}}',
                                      **{"public/passwd": Path("/etc/passwd")}),
                            ["is outside the project", "--allow-outside"]),
    "assets-dir-outside": (_wrangler('{"main": "src/entry.py", "assets": {"directory": "/etc"}}'),
                           ["assets.directory /etc is outside the project"]),
    "module-link-outside": (_wrangler('{"main": "src/entry.py"}', **{"src/evil.py": Path("/etc/passwd")}),
                            ["module file", "is outside the project"]),
    "module-not-utf8": (_wrangler('{"main": "src/entry.py"}', **{"src/latin.py": b"NAME = '\xe9t\xe9'\n"}),
                        ["src/latin.py is not utf-8 text (byte 8)"]),
    "module-bad-coding": (_wrangler('{"main": "src/entry.py"}', **{"src/odd.py": b"# coding: nope\nx = 1\n"}),
                          ["src/odd.py: unknown encoding"]),
    "pyproject-not-toml": (_wrangler('{"main": "src/entry.py"}', **{"pyproject.toml": "[project\ndependencies"}),
                           ["pyproject.toml", "not valid TOML"]),
    "pyproject-deps-string": (_wrangler('{"main": "src/entry.py"}', **{
        "pyproject.toml": "[project]\nname = 'x'\ndependencies = 'requests'\n"}), ["must be a list of strings"]),
    "pyproject-bad-dep": (_wrangler('{"main": "src/entry.py"}', **{
        "pyproject.toml": "[project]\nname = 'x'\ndependencies = ['requests >>> 1']\n"}),
                          ["invalid requirement 'requests >>> 1'"]),
    "requirements-garbage": (_wrangler('{"main": "src/entry.py"}', **{"requirements.txt": "requests\n!!!\n"}),
                             ["invalid requirement '!!!'"]),
    "requirements-index": (_wrangler('{"main": "src/entry.py"}', **{
        "requirements.txt": "--index-url http://evil.example/\n"}), ["'--index-url' is not supported"]),
    "requirements-not-utf8": (_wrangler('{"main": "src/entry.py"}', **{"requirements.txt": b"\xff\xfe"}),
                              ["requirements.txt"]),
    "no-config": ({"wrangler.jsonc": None, W: ENTRY}, ["has no corral.toml"]),
}


@pytest.mark.parametrize("case", list(DEPLOY_REFUSALS))
def test_deploy_refuses_a_broken_project_naming_the_problem(tmp_path: Path, case: str) -> None:
    """Read before anything is sent: exit 2 with the file and the key, with
    or without a supervisor (the socket here leads nowhere)."""
    files, words = DEPLOY_REFUSALS[case]
    folder = project(tmp_path / "p", files)
    refused(corral("deploy", "--socket", tmp_path / "none.sock", "--json", "w", folder), 2, *words)


@pytest.mark.parametrize("flags, words", [
    (["--var", "NOEQUALS"], ["--var wants KEY=VALUE, got 'NOEQUALS'"]),
    (["--var", "=value"], ["--var wants KEY=VALUE"]),
    (["--var", "a-b=1"], ["--var a-b: binding name 'a-b' must be a valid identifier"]),
    (["--tag", ""], ["--tag: invalid tag '': tags are non-empty strings"]),
    (["--tag", "a,b"], ["--tag: invalid tag 'a,b': tags cannot contain ','"]),
    (["--tag", "x" * 300], ["--tag: tag 'xxxx", "is longer than 256 characters"]),
])
def test_deploy_refuses_bad_flags(tmp_path: Path, flags: list[str], words: list[str]) -> None:
    (tmp_path / "w.py").write_text(ENTRY)
    refused(corral("deploy", "--socket", tmp_path / "none.sock", "--json", *flags, "w", tmp_path / "w.py"),
            2, *words)


def test_a_deploy_the_server_refuses_leaves_the_deployed_script(server: Corral, deployed: str,
                                                                  tmp_path: Path) -> None:
    """A cron that never fires was accepted, then dropped without a word;
    a namespace that does not exist; a module that fails to load: exit 1,
    the reason, and the deployed version still serving."""
    never = project(tmp_path / "never", _wrangler('{"main": "src/entry.py", "triggers": {"crons": ["0 0 30 2 *"]}}'))
    refused(corral("deploy", "--socket", server.socket_path, "--json", "keep", never), 1,
            "cron '0 0 30 2 *' never fires")
    broken = project(tmp_path / "broken", {"wrangler.jsonc": '{"main": "src/entry.py"}', W: "import nope_zz\n"})
    refused(corral("deploy", "--socket", server.socket_path, "--json", "keep", broken), 1, "nope_zz")
    refused(corral("deploy", "--socket", server.socket_path, "-n", "no-such-ns", "keep", broken), 1,
            "dispatch namespace 'no-such-ns' does not exist")
    still_deployed(server, deployed)


# -- every client command: bad usage ------------------------------------------------------------

USAGE = [
    ([], ["the following arguments are required: COMMAND"]),
    (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    (["ls", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["deploy"], ["required: NAME, PATH"]),
    (["deploy", "", "w.py"], ["deploy: NAME must not be empty"]),
    (["rm", ""], ["rm: NAME must not be empty"]),
    (["tags", "keep", "frob"], ["invalid choice: 'frob'"]),
    (["tags", "keep", "add", "a", "b"], ["`add` takes exactly one tag"]),
    (["tags", "keep", "add", ""], ["invalid tag ''"]),
    (["tags", "keep", "rm", "a,b"], ["invalid tag 'a,b'"]),
    (["versions", "--limit", "x", "keep"], ["invalid int value: 'x'"]),
    (["rollback"], ["required: NAME"]),
    (["rollback", "keep", ""], ["rollback: VERSION must not be empty"]),
    (["secret", "put", "keep"], ["required: KEY"]),
    (["secret", "put", "keep", ""], ["secret: KEY must not be empty"]),
    (["secret", "bogus"], ["invalid choice: 'bogus'"]),
    (["trigger", "keep"], ["required: --cron"]),
    (["d1", "execute", "DB", "--file", "x.sql", "--command", "SELECT 1"], ["not allowed with argument"]),
    (["d1", "execute", "DB"], ["one of the arguments --command --file is required"]),
    (["d1", "execute", "", "--command", "SELECT 1"], ["d1: DB must not be empty"]),
    (["d1", "migrations"], ["the following arguments are required: apply"]),
    (["tail", "--format", "xml"], ["invalid choice: 'xml'"]),
    (["token", "create", "ci"], ["required: --scope"]),
    (["token", "rm", ""], ["token: ID must not be empty"]),
    (["ns", "rm", ""], ["ns: NAME must not be empty"]),
    (["routes", "add", "only-pattern"], ["required: SCRIPT"]),
    (["routes", "add", "*.x.test/*", ""], ["routes: SCRIPT must not be empty"]),
    (["routes", "rm", ""], ["routes: ID must not be empty"]),
    (["usage", "--since", "garbage"], ["--since: must be epoch seconds"]),
]


@pytest.mark.parametrize("args, words", USAGE, ids=lambda v: None)
def test_bad_usage_is_exit_2_naming_it(tmp_path: Path, args: list[str], words: list[str]) -> None:
    """Nothing is sent: a socket that leads nowhere is never reached."""
    flags = ["--socket", str(tmp_path / "none.sock"), "--json"] if args else []
    refused(corral(*args[:1], *flags, *args[1:], cwd=tmp_path), 2, *words)


API_ERRORS = [
    (["rm", "no-such"], ["script 'no-such' not found"]),
    (["versions", "no-such"], ["script 'no-such' not found"]),
    (["versions", "--limit", "-5", "keep"], ["per_page must be from 1 to 1000"]),
    (["rollback", "keep", "deadbeef"], ["has no version 'deadbeef'"]),
    (["rollback", "keep", "999"], ["keep has no version #999"]),
    (["rollback", "keep"], ["has no earlier deployment"]),
    (["rollback", "no-such"], ["script 'no-such' not found"]),
    (["trigger", "--cron", "garbage", "keep"], ["cron 'garbage' must have five fields"]),
    (["trigger", "--cron", "61 * * * *", "keep"], ["minute 61 is outside 0-59"]),
    (["trigger", "--cron", "* * * * *", "no-such"], ["script 'no-such' not found among platform scripts"]),
    (["secret", "list", "no-such"], ["script 'no-such' not found"]),
    (["secret", "delete", "keep", "NOPE"], ["has no secret 'NOPE'"]),
    (["d1", "execute", "no-such-db", "--command", "SELECT 1"], ["no database 'no-such-db'"]),
    (["token", "rm", "no-such"], ["no token with id 'no-such'"]),
    (["ns", "create", "bad/ns"], ["invalid namespace name 'bad/ns'"]),
    (["ns", "rm", "no-such"], ["dispatch namespace 'no-such' does not exist"]),
    (["routes", "rm", "no-such"], ["route 'no-such' does not exist"]),
    (["ls", "-n", "no-such"], ["dispatch namespace 'no-such' does not exist"]),
]


@pytest.mark.parametrize("args, words", API_ERRORS, ids=lambda v: None)
def test_api_errors_are_exit_1_and_lose_nothing(server: Corral, deployed: str, tmp_path: Path,
                                                args: list[str], words: list[str]) -> None:
    refused(corral(args[0], "--socket", server.socket_path, "--json", *args[1:], cwd=tmp_path), 1, *words)
    still_deployed(server, deployed)


@pytest.mark.parametrize("stdin", ["", "\n"])
def test_secret_put_with_nothing_on_stdin_sets_nothing(server: Corral, deployed: str, stdin: str) -> None:
    result = corral("secret", "put", "--socket", server.socket_path, "--json", "keep", "TOKEN", stdin=stdin)
    refused(result, 2, "the value is empty: pipe it on stdin")
    listed = corral("secret", "list", "--socket", server.socket_path, "--json", "keep")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    still_deployed(server, deployed)


def test_d1_with_an_unreadable_config_is_bad_usage(tmp_path: Path) -> None:
    """As deploy: a project config that cannot be read is exit 2, naming it."""
    folder = project(tmp_path / "p", _wrangler('{"main": "src/entry.py",,}'))
    refused(corral("d1", "execute", "--socket", tmp_path / "none.sock", "DB", "--command", "SELECT 1",
                   "--config", folder), 2, "wrangler.jsonc: JSON is malformed")


@pytest.mark.parametrize("target", ["missing", "regular-file", "folder", "dead-socket", "too-long"])
def test_a_socket_that_leads_nowhere_is_exit_1_naming_it(tmp_path: Path, target: str) -> None:
    path = {"missing": tmp_path / "none.sock", "regular-file": tmp_path / "file",
            "folder": tmp_path, "dead-socket": tmp_path / "dead.sock",
            "too-long": tmp_path / ("x" * 120)}[target]
    if target == "regular-file":
        path.write_text("not a socket")
    elif target == "dead-socket":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))  # closed: nothing listens
    words = [str(path)]
    if target in ("regular-file", "folder"):
        words.append("it is not a socket")
    for args in (["ls"], ["deploy", "w", str(Path(__file__))], ["secret", "list", "w"]):
        refused(corral(args[0], "--socket", path, "--json", *args[1:]), 1, *words)
    if target == "regular-file":
        assert path.read_text() == "not a socket"
