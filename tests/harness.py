"""A real Corral for tests: the ``corral serve`` process, its admin socket, HTTP.

Nothing is mocked: the server is the CLI entry point in a subprocess, the
sandboxes are real jailed children, and every request crosses real sockets.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_tcp_admin(state_dir: Path, config: str = "") -> Corral:
    """A Corral whose admin API also listens on TCP, at ``corral.tcp_port``
    (with an API token), as wrangler and remote SDK clients reach it."""
    port = free_port()
    corral = Corral(state_dir, config=f'[admin]\ntcp = "127.0.0.1:{port}"\n{config}')
    corral.tcp_port = port  # type: ignore[attr-defined]
    return corral


def sdk_fixtures(label: str) -> tuple[Any, Any]:
    """A test module's ``server`` (a fresh Corral, for the module) and ``cf``
    (:func:`cloudflare_sdk` on it) fixtures: ``server, cf = sdk_fixtures("x")``."""
    import pytest

    @pytest.fixture(scope="module")
    def server(tmp_path_factory: Any) -> Any:
        corral = Corral(tmp_path_factory.mktemp(label)).start()
        yield corral
        corral.stop()

    @pytest.fixture(scope="module")
    def cf(server: Corral) -> Any:
        client = cloudflare_sdk(server)
        yield client
        client.close()

    return server, cf


def cloudflare_sdk(corral: Corral) -> Any:
    """Cloudflare's official Python SDK, pointed at ``corral``'s admin socket
    as a platform's back end points it (no retries: every answer is seen)."""
    import httpx
    from cloudflare import Cloudflare

    http = httpx.Client(transport=httpx.HTTPTransport(uds=corral.socket_path), timeout=60)
    return Cloudflare(api_token="unused-on-the-socket", base_url="http://corral/client/v4", http_client=http,
                      max_retries=0)


def tcp_admin_client(corral: Corral, token_name: str, base: str = "") -> Any:
    """An httpx client of ``corral``'s TCP admin listener (``with_tcp_admin``)
    holding a new admin token named ``token_name``; ``base`` goes before
    every path (``/client/v4`` as Cloudflare's clients have it). Close it."""
    import httpx

    token = corral.admin("POST", "/accounts/local/corral/tokens", {"name": token_name, "scope": "admin"})
    assert token.status == 200, token
    return httpx.Client(base_url=f"http://127.0.0.1:{corral.tcp_port}{base}", timeout=30, headers={
        "authorization": f"Bearer {token.json()['result']['value']}"})


def refused(resp: Any, status: int, *words: str) -> str:
    """``resp`` (the harness's or httpx's) is Cloudflare's error envelope with
    ``status`` and a numeric code, its message naming each of ``words``; the message."""
    code = resp.status if hasattr(resp, "status") else resp.status_code
    body = json.loads(resp.body if hasattr(resp, "body") else resp.content)
    assert code == status, (code, body)
    assert body["success"] is False and isinstance(body["errors"][0]["code"], int), body
    message = body["errors"][0]["message"]
    assert all(word in message for word in words), message
    return message


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def multipart(metadata: dict[str, Any], modules: dict[str, bytes | str]) -> tuple[bytes, str]:
    boundary = "corral-" + uuid.uuid4().hex
    parts = [(b"metadata", b"metadata.json", "application/json", json.dumps(metadata).encode())]
    for name, content in modules.items():
        data = content.encode() if isinstance(content, str) else content
        parts.append((name.encode(), name.encode(), "text/x-python", data))
    out = bytearray()
    for name, filename, ctype, data in parts:
        out += f"--{boundary}\r\n".encode()
        out += b'Content-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"\r\n'
        out += f"Content-Type: {ctype}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, reason: str = "") -> None:
        self.status = status
        self.headers = headers
        self.body = body
        #: The status line's reason phrase (http.client reads it as Latin-1).
        self.reason = reason

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """The head and body of the next response on a raw keep-alive connection
    (one with a Content-Length), leaving the connection where it ends."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed with no answer after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed mid-body"
        body += chunk
    return head, body


class Corral:
    """One ``corral serve`` process in ``state_dir``."""

    def __init__(self, state_dir: Path, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, allow_private_egress: bool = True,
                 uid: int | None = None, python: str | None = None, config: str = "") -> None:
        """``config``: TOML the server gets with ``--config`` (merged with a
        ``--config`` file in ``extra_args``, if there is one)."""
        self.state_dir = Path(state_dir)
        #: Run ``corral serve`` under this (unprivileged) uid and gid; the state
        #: dir must be writable by it.
        self.uid = uid
        #: The interpreter (another uid may not reach the virtualenv's own).
        self.python = python or sys.executable
        self.port = free_port()
        self.socket_path = str(self.state_dir / "admin.sock")
        self.log_path = self.state_dir / "serve.log"
        self.extra_args = list(extra_args or [])
        if allow_private_egress or config:
            # Tests talk to upstreams on 127.0.0.1, which production blocks.
            self._write_config(config, allow_private_egress)
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    def _write_config(self, text: str, allow_private_egress: bool) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if "--config" in self.extra_args:
            index = self.extra_args.index("--config") + 1
            text = f"{text}\n{Path(self.extra_args[index]).read_text()}"
            del self.extra_args[index - 1 : index + 1]
        config = self.state_dir / "test-corral.toml"
        if "allow_private_networks" in text or not allow_private_egress:
            pass  # the test decides
        elif "[outbound]" in text:
            text = text.replace("[outbound]", "[outbound]\nallow_private_networks = true", 1)
        else:
            text += "\n[outbound]\nallow_private_networks = true\n"
        config.write_text(text)
        self.extra_args += ["--config", str(config)]

    # -- process -----------------------------------------------------------------
    def start(self, timeout: float = 20) -> Corral:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        path = [str(REPO)]
        if self.python != sys.executable:  # the same packages, from another interpreter
            path.append(sysconfig.get_paths()["purelib"])
        env = {**os.environ, **self.env, "PYTHONPATH": os.pathsep.join(path)}
        self.proc = subprocess.Popen(
            [self.python, "-m", "supervisor", "serve", "--http", f"127.0.0.1:{self.port}",
             "--state-dir", str(self.state_dir), *self.extra_args],
            stdout=log, stderr=log, env=env, cwd=str(REPO), start_new_session=True,
            **({"user": self.uid, "group": self.uid, "extra_groups": []} if self.uid is not None else {}),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corral serve exited: {self.log()}")
            # The admin socket accepting, not its file existing: a server
            # killed with -9 leaves its file behind for the next one to replace.
            if self._admin_up() and self._http_up():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"corral serve did not start: {self.log()}")

    def _http_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def _admin_up(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.2)
                sock.connect(str(self.socket_path))
                return True
        except OSError:
            return False

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:  # children are in the supervisor's session; make sure none survive
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def log_events(self) -> list[dict[str, Any]]:
        """Every JSON line of the server's log so far, parsed (a line still
        being written is left for the next call)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        events = []
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
        return events

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- admin API -------------------------------------------------------------------
    def admin(self, method: str, path: str, body: Any = None, content_type: str | None = None) -> Response:
        conn = UnixHTTPConnection(self.socket_path)
        headers = {}
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            headers["content-type"] = "application/json"
        if content_type:
            headers["content-type"] = content_type
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        result = Response(resp.status, dict(resp.getheaders()), resp.read())
        conn.close()
        return result

    def deploy(self, name: str, source: str | None = None, *, namespace: str | None = "default",
               modules: dict[str, str | bytes] | None = None, main_module: str = "worker.py",
               bindings: list[dict] | None = None, tags: list[str] | None = None,
               check: bool = True, extra_metadata: dict[str, Any] | None = None) -> Response:
        modules = dict(modules or {})
        if source is not None:
            modules[main_module] = source
        metadata: dict[str, Any] = {"main_module": main_module, "bindings": bindings or [],
                                    **(extra_metadata or {})}
        if tags:
            metadata["tags"] = tags
        body, ctype = multipart(metadata, modules)
        if namespace is None:
            path = f"/accounts/local/workers/scripts/{name}"
        else:
            path = f"/accounts/local/workers/dispatch/namespaces/{namespace}/scripts/{name}"
        resp = self.admin("PUT", path, body, ctype)
        if check and resp.status != 200:
            raise AssertionError(f"deploy {name} failed: {resp.status} {resp.text}")
        return resp

    def namespace(self, name: str) -> Response:
        return self.admin("POST", "/accounts/local/workers/dispatch/namespaces", {"name": name})

    def route(self, pattern: str, script: str) -> Response:
        resp = self.admin("POST", "/accounts/local/workers/routes", {"pattern": pattern, "script": script})
        assert resp.status == 200, resp.text
        return resp

    def deploy_dispatcher(self, source: str | None = None, namespace: str = "default",
                          name: str = "dispatch", pattern: str | None = "*/*",
                          outbound: dict | None = None, extra_bindings: list[dict] | None = None) -> None:
        if source is None:
            source = (REPO / "examples" / "dispatcher" / "worker.py").read_text()
        binding: dict[str, Any] = {"type": "dispatch_namespace", "name": "dispatcher",
                                   "namespace": namespace}
        if outbound:
            binding["outbound"] = outbound
        self.deploy(name, source, namespace=None, bindings=[binding, *(extra_bindings or [])])
        if pattern:
            existing = self.admin("GET", "/accounts/local/workers/routes").json()["result"]
            if not any(r["pattern"] == pattern for r in existing):
                self.route(pattern, name)

    # -- HTTP ----------------------------------------------------------------------------
    def request(self, path: str = "/", host: str = "hello.localhost", method: str = "GET",
                body: bytes | str | None = None, headers: dict[str, str] | None = None,
                timeout: float = 30) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        all_headers = {"host": host, **(headers or {})}
        conn.request(method, path, body=body, headers=all_headers)
        resp = conn.getresponse()
        result = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read(),
                          resp.reason)
        conn.close()
        return result

    def raw(self, data: bytes, timeout: float = 5) -> bytes:
        """Send raw bytes, return everything the server answers until it closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data)
            chunks = []
            try:
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except TimeoutError:
                pass
            return b"".join(chunks)

    def zygote(self) -> int | None:
        """Pid of this server's zygote (its direct child running sandbox.zygote)."""
        found = self.zygotes()
        return found[0] if found else None

    def zygotes(self) -> list[int]:
        """Pids of every base zygote this server runs now (two while a successor stands by)."""
        return [pid for pid in _children_of(self.proc.pid)  # type: ignore[union-attr]
                if b"sandbox.zygote" in _cmdline(pid)]

    def children(self) -> list[int]:
        """Pids of the sandboxed children (the zygote's children)."""
        zygote = self.zygote()
        return _children_of(zygote) if zygote else []


def read_each(pids: Iterable[int], read: Callable[[int], T]) -> dict[int, T]:
    """``read(pid)`` of each pid, leaving out those that ended meanwhile
    (a surplus spare, a replaced zygote): what a test reads of live children."""
    found = {}
    for pid in pids:
        try:
            found[pid] = read(pid)
        except OSError:
            pass
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (the state) on, split: [1] is the parent,
    [2] the process group, [3] the session, [38] the scheduling policy.
    Raises OSError once the process is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def status_field(pid: int, name: str) -> int:
    """A number of /proc/PID/status, e.g. ``VmHWM`` (kB) or
    ``voluntary_ctxt_switches``. Raises OSError once the process is gone."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def _children_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = stat_fields(int(entry))
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(entry))
    return found


def default_sigint() -> None:
    """In the CLI's process before it starts: Ctrl-C interrupts it. (A test
    run started in the background by a non-interactive shell ignores SIGINT,
    and an ignored signal stays ignored across exec: Python then never
    raises KeyboardInterrupt, as it should not for a command run that way.)"""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
