"""Progress on a terminal, plain output otherwise (issue 17, point 7).

The real ``corral`` CLI against a real supervisor: once with a pseudo-terminal
as its stdin/stdout/stderr (so ``isatty()`` is true, as in a person's shell)
and once with pipes (as in CI or a shell pipeline). A deploy with many assets
and a bulk delete by tag draw rich progress on the terminal; through pipes
the same commands print only their results, with no escape codes or bars.
"""

from __future__ import annotations

import errno
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import Corral

ROOT = Path(__file__).resolve().parent.parent
CODE = "from workers import Response, WorkerEntrypoint\n\nclass Default(WorkerEntrypoint):\n" \
       "    async def fetch(self, request):\n        return Response('ok')\n"
ASSETS = 40
ESC = "\x1b["
BAR = "\u2501"  # rich's bar glyph


def _env(server: Corral) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CORRAL_ADMIN_SOCKET": server.socket_path,
           "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40", "PYTHONIOENCODING": "utf-8"}
    # Whatever the outer environment says, let isatty() decide.
    for key in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CI", "JUPYTER_COLUMNS"):
        env.pop(key, None)
    return env


def cli_piped(server: Corral, *args: object, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "supervisor", *map(str, args)], capture_output=True,
                            text=True, env=_env(server), stdin=subprocess.DEVNULL, timeout=120)
    assert result.returncode == expect, (args, result.returncode, result.stdout, result.stderr)
    return result


def cli_tty(server: Corral, *args: object, expect: int = 0) -> str:
    """Run the CLI on a pseudo-terminal; everything it wrote there (stdout and stderr)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "supervisor", *map(str, args)], stdin=slave, stdout=slave,
                                stderr=slave, env=_env(server), start_new_session=True)
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    try:
        while True:  # until the child's side of the terminal is closed (EIO / EOF)
            remaining = deadline - time.monotonic()
            assert remaining > 0, ("the CLI did not finish on the terminal", b"".join(chunks))
            ready, _, _ = select.select([master], [], [], remaining)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError as exc:
                if exc.errno == errno.EIO:
                    break
                raise
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = b"".join(chunks).decode("utf-8", "replace")
    assert code == expect, (args, code, out)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    corral = Corral(tmp_path_factory.mktemp("cli-progress")).start()
    yield corral
    corral.stop()


def _site(root: Path, tag: str) -> Path:
    """A project with many distinct static assets (so every deploy uploads them all)."""
    project = root / f"site-{tag}"
    (project / "assets").mkdir(parents=True)
    (project / "worker.py").write_text(CODE)
    (project / "corral.toml").write_text('main = "worker.py"\n[assets]\ndirectory = "assets"\n')
    for i in range(ASSETS):
        (project / "assets" / f"page{i}.html").write_text(f"<p>{tag} page {i}</p>")
    return project


def test_deploy_assets_progress_bar_on_a_terminal(server, tmp_path):
    out = cli_tty(server, "deploy", "-n", "default", "tty-site", _site(tmp_path, "tty"))
    # rich's live display: the cursor hidden while it draws, then shown again
    assert f"{ESC}?25l" in out and f"{ESC}?25h" in out, out
    assert f"uploading {ASSETS} asset(s)" in out, out
    assert BAR in out and f"{ASSETS}/{ASSETS}" in out, out
    # and the command's own result
    assert f"assets: {ASSETS} file(s), {ASSETS} uploaded" in out, out
    assert "deployed tty-site to namespace default" in out, out
    got = server.admin("GET", "/accounts/local/workers/dispatch/namespaces/default/scripts/tty-site").json()
    assert got["result"]["has_assets"] is True


def test_deploy_assets_plain_through_a_pipe(server, tmp_path):
    result = cli_piped(server, "deploy", "-n", "default", "pipe-site", _site(tmp_path, "pipe"))
    for stream in (result.stdout, result.stderr):
        assert ESC not in stream and "\r" not in stream and BAR not in stream, stream
        assert "uploading" not in stream and "/40" not in stream, stream
    assert result.stderr.strip() == f"assets: {ASSETS} file(s), {ASSETS} uploaded", result.stderr
    assert result.stdout.startswith("deployed pipe-site to namespace default"), result.stdout
    got = server.admin("GET", "/accounts/local/workers/dispatch/namespaces/default/scripts/pipe-site").json()
    assert got["result"]["has_assets"] is True
    # --json stays pure JSON, on a pipe as always
    again = cli_piped(server, "deploy", "-n", "default", "pipe-site", _site(tmp_path, "pipe2"), "--json")
    assert ESC not in again.stdout + again.stderr and again.stdout.lstrip().startswith("{")


def _tagged_scripts(server: Corral, tmp_path: Path, tag: str, count: int) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(CODE)
    for i in range(count):
        cli_piped(server, "deploy", "-n", "default", f"{tag}-{i}", worker, "--tag", tag)


def test_bulk_delete_by_tag_spinner_on_a_terminal(server, tmp_path):
    _tagged_scripts(server, tmp_path, "bulktty", 3)
    out = cli_tty(server, "rm", "-n", "default", "--tag", "bulktty")
    assert f"{ESC}?25l" in out and "deleting scripts tagged bulktty" in out, out
    assert "deleted 3 script(s)" in out, out
    assert "bulktty-" not in cli_piped(server, "ls", "-n", "default").stdout


def test_bulk_delete_by_tag_plain_through_a_pipe(server, tmp_path):
    _tagged_scripts(server, tmp_path, "bulkpipe", 3)
    result = cli_piped(server, "rm", "-n", "default", "--tag", "bulkpipe")
    assert result.stdout == "deleted 3 script(s)\n", result.stdout
    assert result.stderr == "", result.stderr
    assert "bulkpipe-" not in cli_piped(server, "ls", "-n", "default").stdout


def _project_with_dependency(root: Path) -> Path:
    project = root / "deps"
    (project / "src").mkdir(parents=True)
    (project / "wrangler.toml").write_text('main = "src/entry.py"\n')
    (project / "src" / "entry.py").write_text(
        "import jinja2\nfrom workers import Response, WorkerEntrypoint\n\n"
        "class Default(WorkerEntrypoint):\n"
        "    async def fetch(self, request):\n"
        "        return Response(jinja2.Template('{{ x }}').render(x='resolved'))\n")
    (project / "pyproject.toml").write_text('[project]\nname = "w"\ndependencies = ["jinja2"]\n')
    return project


def test_dependency_resolution_spinner_on_a_terminal_only(server, tmp_path):
    project = _project_with_dependency(tmp_path)
    out = cli_tty(server, "deploy", "-n", "default", "deps-tty", project)
    assert f"{ESC}?25l" in out and "resolving 1 requirement(s) and uploading" in out, out
    assert "deployed deps-tty to namespace default" in out and "1 requirement(s)" in out, out
    got = server.admin("GET", "/accounts/local/workers/dispatch/namespaces/default/scripts/deps-tty").json()
    assert "jinja2" in got["result"]["requirements"], got
    piped = cli_piped(server, "deploy", "-n", "default", "deps-pipe", project)
    assert "resolving" not in piped.stdout + piped.stderr and ESC not in piped.stdout + piped.stderr
    assert "1 requirement(s)" in piped.stdout
