"""The spine: deploy, request round trips, streaming, failures, restarts."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time

import pytest

from tests.harness import Corral

ECHO = '''
from workers import WorkerEntrypoint, Response
import hashlib, os

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        h = hashlib.sha256()
        n = 0
        body = request.body
        if body is not None:
            async for chunk in body:
                h.update(chunk)
                n += len(chunk)
        return Response.json({"method": str(request.method), "url": request.url,
                              "agent": request.headers.get("User-Agent"),
                              "length": n, "sha256": h.hexdigest(), "pid": os.getpid(),
                              "greeting": getattr(self.env, "GREETING", None)})
'''

STREAM = '''
from workers import WorkerEntrypoint, Response

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        mb = int(request.url.rsplit("/", 1)[1])
        async def chunks():
            block = b"x" * 65536
            for _ in range(mb * 16):
                yield block
        return Response(chunks(), headers={"content-type": "application/octet-stream"})
'''


def test_round_trip_with_bindings(corral: Corral) -> None:
    corral.deploy("echo", ECHO, bindings=[{"type": "plain_text", "name": "GREETING", "text": "hi"},
                                          {"type": "secret_text", "name": "TOKEN", "text": "s3cret"}])
    resp = corral.request("/path?q=1", host="echo.localhost", headers={"User-Agent": "pytest"})
    assert resp.status == 200, resp
    data = resp.json()
    assert data["method"] == "GET"
    assert data["url"] == "http://echo.localhost/path?q=1"
    assert data["agent"] == "pytest"
    assert data["greeting"] == "hi"
    # The secret is in the script's env but never in the admin API's answers.
    meta = corral.admin("GET", "/accounts/local/workers/dispatch/namespaces/default/scripts/echo")
    assert meta.status == 200 and "s3cret" not in meta.text


def test_post_body_and_keep_alive(corral: Corral) -> None:
    corral.deploy("echo", ECHO)
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", corral.port, timeout=10)
    pids = set()
    for i in range(20):
        body = os.urandom(1000 * i)
        conn.request("POST", f"/{i}", body=body, headers={"host": "echo.localhost"})
        resp = conn.getresponse()
        data = __import__("json").loads(resp.read())
        assert resp.status == 200
        assert data["length"] == len(body)
        assert data["sha256"] == hashlib.sha256(body).hexdigest()
        pids.add(data["pid"])
    conn.close()
    assert len(pids) == 1, "a warm worker serves every request"


def test_request_body_streams_in(corral: Corral) -> None:
    corral.deploy("echo", ECHO)
    body = os.urandom(20 * 1024 * 1024)
    resp = corral.request("/big", host="echo.localhost", method="POST", body=body)
    assert resp.status == 200, resp
    assert resp.json()["length"] == len(body)
    assert resp.json()["sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_request_body(corral: Corral) -> None:
    corral.deploy("echo", ECHO)
    raw = (b"POST / HTTP/1.1\r\nHost: echo.localhost\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    answer = corral.raw(raw)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert hashlib.sha256(b"hello world").hexdigest().encode() in answer


def test_streamed_response_50mb(corral: Corral) -> None:
    corral.deploy("stream", STREAM)
    with socket.create_connection(("127.0.0.1", corral.port), timeout=30) as sock:
        sock.sendall(b"GET /50 HTTP/1.1\r\nHost: stream.localhost\r\nConnection: close\r\n\r\n")
        total = 0
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"chunked" in head.lower()
        total = len(rest)
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    # 50 MiB of payload plus chunk framing
    assert total >= 50 * 1024 * 1024
    assert corral.request("/1", host="stream.localhost").status == 200


def test_unknown_worker_is_404(corral: Corral) -> None:
    resp = corral.request("/", host="nobody-here.localhost")
    assert resp.status == 404
    assert "nobody-here" in resp.text


def test_no_route_is_404_from_corral(tmp_path) -> None:
    server = Corral(tmp_path).start()
    try:
        resp = server.request("/", host="anything.localhost")
        assert resp.status == 404
        assert "No worker is routed" in resp.text
    finally:
        server.stop()


def test_tenant_exception_is_500_without_stack(corral: Corral) -> None:
    corral.deploy("boom", '''
from workers import WorkerEntrypoint
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        raise ValueError("secret internals")
''')
    resp = corral.request("/", host="boom.localhost")
    assert resp.status == 500
    assert "secret internals" not in resp.text
    assert "Traceback" not in resp.text
    assert corral.alive()


def test_broken_script_is_refused_at_deploy(corral: Corral) -> None:
    resp = corral.deploy("broken", "def oops(:\n", check=False)
    assert resp.status == 400
    assert "SyntaxError" in resp.text
    resp = corral.deploy("noentry", "x = 1\n", check=False)
    assert resp.status == 400 and "fetch handler" in resp.text
    resp = corral.deploy("badimport", "import no_such_module\n", check=False)
    assert resp.status == 400 and "No module named 'no_such_module'" in resp.text
    resp = corral.deploy("spin", "while True: pass\n", check=False)
    assert resp.status == 400 and "CPU" in resp.text
    assert corral.alive()


def test_a_main_module_named_like_one_the_runtime_imported_is_refused_by_name(corral: Corral) -> None:
    """The main module is loaded from its file: one called ``json.py`` would
    otherwise replace the standard library's json for the runtime too."""
    resp = corral.deploy("shadow", ECHO, main_module="json.py", check=False)
    assert resp.status == 400, resp
    assert "main module 'json.py'" in resp.text and "rename it" in resp.text, resp.text
    assert corral.alive()


def test_on_fetch_and_module_imports(corral: Corral) -> None:
    corral.deploy("multi", modules={
        "src/entry.py": "from helpers.text import shout\n"
                        "from workers import Response\n"
                        "async def on_fetch(request, env):\n"
                        "    return Response(shout('hi'))\n",
        "src/helpers/__init__.py": "",
        "src/helpers/text.py": "def shout(s):\n    return s.upper() + '!'\n",
    }, main_module="src/entry.py")
    resp = corral.request("/", host="multi.localhost")
    assert resp.status == 200 and resp.text == "HI!"


def test_redeploy_is_atomic(corral: Corral) -> None:
    source = '''
from workers import WorkerEntrypoint, Response
import asyncio
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/slow"):
            await asyncio.sleep(1.0)
        return Response("VERSION")
'''
    corral.deploy("atomic", source.replace("VERSION", "v1"))
    import threading

    results = {}

    def slow() -> None:
        results["slow"] = corral.request("/slow", host="atomic.localhost").text

    def in_flight() -> float:
        for line in corral.admin("GET", "/metrics").text.splitlines():
            if line.startswith("corral_http_in_flight "):
                return float(line.split()[1])
        raise AssertionError("no corral_http_in_flight gauge")

    thread = threading.Thread(target=slow)
    thread.start()
    # In flight means the ingress has taken its record (no await lies between).
    deadline = time.monotonic() + 5
    while in_flight() < 1:
        assert time.monotonic() < deadline, "the slow request never arrived"
    corral.deploy("atomic", source.replace("VERSION", "v2"))
    assert corral.request("/", host="atomic.localhost").text == "v2"
    thread.join()
    assert results["slow"] == "v1", "the in-flight request finished on the old version"


def test_malformed_http(corral: Corral) -> None:
    assert corral.raw(b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400")
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert corral.raw(huge).startswith(b"HTTP/1.1 431")
    bad_chunk = (b"POST / HTTP/1.1\r\nHost: echo.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"zz\r\nhello\r\n")
    answer = corral.raw(bad_chunk)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400") or answer.startswith(b"HTTP/1.1 5")
    assert corral.request("/", host="nobody.localhost").status == 404
    assert corral.alive()


def test_body_too_large(tmp_path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text("[http_limits]\nmax_body_bytes = 1000\n")
    server = Corral(tmp_path / "state", extra_args=["--config", str(config)]).start()
    try:
        server.deploy_dispatcher()
        server.deploy("echo", ECHO)
        assert server.request("/", host="echo.localhost", method="POST", body=b"x" * 999).status == 200
        assert server.request("/", host="echo.localhost", method="POST", body=b"x" * 1001).status == 413
        raw = (b"POST / HTTP/1.1\r\nHost: echo.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"100\r\n" + b"y" * 256 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n")
        assert server.raw(raw).startswith(b"HTTP/1.1 413")
    finally:
        server.stop()


def test_child_killed_mid_request(fresh_corral: Corral) -> None:
    c = fresh_corral
    c.deploy("sleepy", '''
from workers import WorkerEntrypoint, Response
import asyncio, os
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/pid"):
            return Response(str(os.getpid()))
        await asyncio.sleep(30)
        return Response("late")
''')
    pid = int(c.request("/pid", host="sleepy.localhost").text)
    import threading

    result = {}
    thread = threading.Thread(target=lambda: result.update(r=c.request("/", host="sleepy.localhost")))
    thread.start()
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    thread.join(10)
    assert not thread.is_alive()
    assert result["r"].status in (500, 502, 503)
    # The next request gets a fresh child.
    new_pid = int(c.request("/pid", host="sleepy.localhost").text)
    assert new_pid != pid
    assert c.alive()


def test_zygote_killed(fresh_corral: Corral) -> None:
    c = fresh_corral
    c.deploy("echo", ECHO)
    assert c.request("/", host="echo.localhost").status == 200
    zygote = c.zygote()
    assert zygote
    os.kill(zygote, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and c.zygote() in (None, zygote):
        time.sleep(0.05)
    assert c.zygote() not in (None, zygote), "the zygote was restarted"
    assert c.request("/", host="echo.localhost").status == 200
    c.deploy("fresh", ECHO)  # needs a new sandbox from the new zygote
    assert c.request("/", host="fresh.localhost").status == 200
    assert c.alive()


def test_restart_keeps_scripts(tmp_path) -> None:
    server = Corral(tmp_path).start()
    server.deploy_dispatcher()
    server.deploy("echo", ECHO)
    assert server.stop() == 0
    again = Corral(tmp_path).start()
    try:
        resp = again.request("/", host="echo.localhost")
        assert resp.status == 200 and resp.json()["method"] == "GET"
    finally:
        again.stop()


@pytest.mark.parametrize("payload", [
    b"\xff\xff\xff\xff" + b"junk",  # length prefix far over the limit
    b"\x00\x00\x00\x03\xc1\xc1\xc1",  # not msgpack
    # a well-formed ResponseStart for an invocation this child was never given
    b"\x00\x00\x00\x11\x94\xa7respond\xce\x05\xf5\xe1\x00\xcc\xc8\x90",
], ids=["oversized", "garbage", "out-of-order"])
def test_malformed_frames_kill_only_that_child(corral: Corral, payload: bytes) -> None:
    """A hostile child writes raw bytes on its channel (it can: write() is allowed)."""
    corral.deploy("framer", f'''
from workers import WorkerEntrypoint, Response
import os, asyncio, stat
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        for fd in range(3, 64):  # every descriptor the jail leaves (RLIMIT_NOFILE bounds them)
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.write(fd, {payload!r})
            except OSError:
                pass
        await asyncio.sleep(5)
        return Response("survived")
''')
    corral.deploy("echo", ECHO)
    resp = corral.request("/", host="framer.localhost")
    # Killed at once: left to finish, it would have answered "survived" (200).
    assert resp.status in (500, 502), resp
    assert "protocol violation" in corral.log() or "protocol" in corral.log()
    assert corral.request("/", host="echo.localhost").status == 200
    assert corral.alive()


PID_WORKER = '''
from workers import WorkerEntrypoint, Response
import asyncio, os
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/sleep"):
            await asyncio.sleep(4)
        return Response(str(os.getpid()))
'''


def _server_with(tmp_path, toml: str) -> Corral:
    config = tmp_path / "corral.toml"
    config.write_text(toml)
    server = Corral(tmp_path / "state", extra_args=["--config", str(config)]).start()
    server.deploy_dispatcher()
    return server


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_idle_children_scale_to_zero(tmp_path) -> None:
    server = _server_with(tmp_path, "[pool]\nidle_timeout_s = 1.0\nspares = 2\n")
    try:
        server.deploy("idler", PID_WORKER)
        pid = int(server.request("/", host="idler.localhost").text)
        assert _gone(pid, 6), "an idle child is killed after the idle timeout"
        again = int(server.request("/", host="idler.localhost").text)
        assert again != pid
    finally:
        server.stop()


def test_process_cap_evicts_least_recently_used(tmp_path) -> None:
    # At most 4 processes: the dispatcher and three tenants use them all, so
    # a fourth tenant finds no spare and the least recently used idle one goes.
    server = _server_with(tmp_path, "[pool]\nmax_children = 4\nspares = 1\n")
    try:
        names = ("one", "two", "three", "four")
        for name in names:
            server.deploy(name, PID_WORKER)
        pids = [int(server.request("/", host=f"{name}.localhost").text) for name in names]
        assert len(set(pids)) == 4
        assert _gone(pids[0]), "the least recently used idle child made room"
        deadline = time.monotonic() + 5
        while len(server.children()) > 4 and time.monotonic() < deadline:
            time.sleep(0.05)  # a child killed a moment ago may still be exiting
        assert len(server.children()) <= 4
    finally:
        server.stop()


def test_all_sandboxes_busy_is_503(tmp_path) -> None:
    server = _server_with(tmp_path, "[pool]\nmax_children = 3\nspares = 1\n")
    try:
        for name in ("busy1", "busy2", "busy3"):
            server.deploy(name, PID_WORKER)
        import threading

        threads = [threading.Thread(target=lambda n=n: server.request("/sleep", host=f"{n}.localhost"))
                   for n in ("busy1", "busy2")]
        for thread in threads:
            thread.start()
            time.sleep(1.0)  # each sleeper holds its process before the next starts
        # The dispatcher and two sleeping tenants hold all three processes,
        # and none is idle: a third tenant cannot be started.
        resp = server.request("/", host="busy3.localhost")
        assert resp.status in (500, 503), resp
        for thread in threads:
            thread.join()
        assert server.alive()
        assert server.request("/", host="busy3.localhost").status == 200, "capacity came back"
    finally:
        server.stop()


def test_header_timeout(tmp_path) -> None:
    server = _server_with(tmp_path, "[http_limits]\nheader_timeout_s = 0.5\nidle_timeout_s = 1.0\n")
    try:
        answer = server.raw(b"GET / HTTP/1.1\r\nHost: slow", timeout=5)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            # EOF from the server, not our own 5 s timeout (which would raise).
            assert sock.recv(1) == b"", "an idle connection closes quietly"
    finally:
        server.stop()


def test_a_client_that_stalls_mid_body_is_answered_408(tmp_path) -> None:
    """A request body that stops coming held the connection and the worker
    until the wall-time limit, answered 503 and charged to the tenant as
    exceededWallTime; past body_timeout_s the client is answered 408."""
    server = _server_with(tmp_path, "[http_limits]\nbody_timeout_s = 0.5\n")
    try:
        server.deploy("echo", ECHO)
        answer = server.raw(b"POST / HTTP/1.1\r\nHost: echo.localhost\r\nContent-Length: 100\r\n\r\n"
                            b"ten bytes.", timeout=10)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"Request body timeout" in answer, answer
        ok = server.request("/", host="echo.localhost", method="POST", body=b"x" * 100)
        assert ok.status == 200, ok
    finally:
        server.stop()


def test_idle_keep_alive_connections_close_after_a_request_and_a_partial_next_head_is_408(tmp_path) -> None:
    """The idle timeout is kept by a sweeper, not a cancel scope per request:
    it must still end the wait between requests on a keep-alive connection
    and close quietly when nothing came; a partial head that came pipelined
    behind a request is under the header timeout (408), not the idle one."""
    server = _server_with(tmp_path, "[http_limits]\nheader_timeout_s = 0.5\nidle_timeout_s = 1.0\n")
    try:
        server.deploy("echo", ECHO)
        request = b"GET / HTTP/1.1\r\nHost: echo.localhost\r\n\r\n"
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as quiet, \
                socket.create_connection(("127.0.0.1", server.port), timeout=10) as partial:
            quiet.sendall(request)
            partial.sendall(request + b"GET / HTTP/1.1\r\nHost: echo")
            for sock in (quiet, partial):
                first = sock.recv(65536)
                assert first.startswith(b"HTTP/1.1 200"), first
            # EOF from the server (not our own 10 s timeout, which would raise).
            assert quiet.recv(65536) == b"", "an idle keep-alive connection closes quietly"
            rest = b""
            while chunk := partial.recv(65536):
                rest += chunk
            assert rest.startswith(b"HTTP/1.1 408"), rest
        assert server.request("/", host="echo.localhost").status == 200
    finally:
        server.stop()


def test_zygote_rotates_and_new_tenants_get_a_new_hash_seed(tmp_path) -> None:
    server = _server_with(tmp_path, "[pool]\nzygote_max_age_s = 2.0\nspares = 1\n")
    try:
        source = '''
from workers import Response
async def on_fetch(request, env):
    return Response(str(hash("corral")))
'''
        server.deploy("before", source)
        first_zygote = server.zygote()
        seed_before = server.request("/", host="before.localhost").text
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and server.zygote() in (None, first_zygote):
            time.sleep(0.1)
        assert server.zygote() not in (None, first_zygote), "the zygote was replaced"
        server.deploy("after", source)
        seed_after = server.request("/", host="after.localhost").text
        assert seed_after != seed_before
        assert server.request("/", host="before.localhost").text == seed_before, \
            "a warm tenant keeps serving across the rotation"
    finally:
        server.stop()


def test_systemd_notify_and_signals(tmp_path) -> None:
    """READY=1 when serving, RELOADING=1 (then READY=1) on SIGHUP, STOPPING=1 on SIGTERM."""
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(10)
    server = Corral(tmp_path / "state", env={"NOTIFY_SOCKET": notify_path}).start()
    try:
        assert notify.recv(4096) == b"READY=1"
        server.deploy_dispatcher()
        server.deploy("echo", ECHO)
        server.proc.send_signal(signal.SIGHUP)
        reloading = notify.recv(4096)
        assert reloading.startswith(b"RELOADING=1\nMONOTONIC_USEC="), reloading
        assert notify.recv(4096) == b"READY=1"
        assert server.alive() and server.request("/", host="echo.localhost").status == 200
        server.proc.send_signal(signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
        assert server.proc.wait(15) == 0
    finally:
        server.stop()
        notify.close()


def test_sigterm_drains_in_flight_requests(tmp_path) -> None:
    server = Corral(tmp_path / "state").start()
    try:
        server.deploy_dispatcher()
        server.deploy("pid", PID_WORKER)
        import http.client
        import threading

        idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        idle.request("GET", "/", headers={"host": "pid.localhost"})
        assert idle.getresponse().read()  # an idle keep-alive connection stays open
        result = {}
        thread = threading.Thread(
            target=lambda: result.update(r=server.request("/sleep", host="pid.localhost")))
        thread.start()
        time.sleep(0.5)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        thread.join(15)
        assert result["r"].status == 200, "the in-flight request finished"
        assert server.proc.wait(15) == 0
        assert time.monotonic() - started < 8, "idle keep-alive connections did not hold shutdown"
    finally:
        server.stop()
