"""README's "Using it", run as written: the front door must open.

Each command of its shell block runs against a real server that holds what
``scripts/example`` deploys (the bundled dispatcher on ``*/*``); a ``curl``
line is sent to the server, and the comment line after it is the answer it
must get. ``corral tail`` streams until stopped, so it is left out.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from tests.harness import REPO, Corral


def _walkthrough() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Using it"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README's 'Using it' has no shell block"
    return block.group(1).splitlines()


def test_the_readmes_walkthrough_runs_as_written(tmp_path):
    server = Corral(tmp_path / "state").start()
    try:
        server.deploy_dispatcher()
        env = {**os.environ, "PYTHONPATH": str(REPO), "CORRAL_ADMIN_SOCKET": server.socket_path}
        lines = _walkthrough()
        ran = 0
        for i, line in enumerate(lines):
            command = line.split("  #", 1)[0].strip()
            if not command or command.startswith(("#", "export ")) or " tail " in command:
                continue
            if command.startswith("curl "):
                args = shlex.split(command)
                host = args[args.index("-H") + 1].split(":", 1)[1].strip()
                path = "/" + args[-1].split("/", 1)[1] if "/" in args[-1] else "/"
                answer = server.request(path, host=host)
                expected = lines[i + 1].removeprefix("# ")
                assert (answer.status, answer.text) == (200, expected), (line, answer)
                ran += 1
                continue
            stdin = None
            if command.startswith("echo -n "):
                echoed, command = command.split("|", 1)
                stdin = shlex.split(echoed)[2]
                command = command.strip()
            args = shlex.split(command)
            assert args[0] == ".venv/bin/corral", line
            result = subprocess.run([sys.executable, "-m", "supervisor", *args[1:]], input=stdin, text=True,
                                    capture_output=True, env=env, cwd=REPO, timeout=120)
            assert result.returncode == 0, (line, result.stdout, result.stderr)
            ran += 1
        assert ran >= 12, ran
    finally:
        server.stop()
