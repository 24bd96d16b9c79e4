"""Everyday standard-library calls that touch the system, inside the jail.

An audit of the calls tenants commonly make found some that failed badly in
the jail (a ``KeyError`` from ``getpass.getuser()``, ``io.UnsupportedOperation``
from ``faulthandler.enable()``, no ``C.UTF-8`` locale, stack garbage from
``os.sysconf("SC_PHYS_PAGES")``, an ``os.system()`` that reported a command
that never ran, the host's name in ``platform.node()``). What the tenant may
know about itself, or is pure computation, works; the rest fails with a
clear ``OSError`` and the child lives on.

Real server, real jailed children; each tenant makes the calls itself and
reports what it got (see tests.test_jail's prelude).
"""

from __future__ import annotations

import json
import os
import platform
import time

import pytest

from tests.harness import Corral
from tests.test_jail import (
    EPERM,
    EROFS,
    assert_healthy,
    call,
    corral_with_control,
    denied,
    pid_of,
    worker,
)

EINVAL = 22
EAI_FAIL = -4


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory):
    with corral_with_control(tmp_path_factory.mktemp("stdlib_calls"), config="log_invocations = true") as server:
        yield server


def trace_logs(server: Corral, script: str, timeout: float = 10.0) -> list[dict]:
    """The log lines of ``script``'s latest invocation (the dispatcher's child trace)."""
    deadline = time.monotonic() + timeout
    while True:
        found = None
        for line in server.log_path.read_text().splitlines():
            if '"event":"invocation"' not in line:
                continue
            for child in json.loads(line)["trace"].get("children", []):
                if child.get("scriptName") == script:
                    found = child
        if found is not None or time.monotonic() > deadline:
            assert found is not None, server.log()
            return found["logs"]
        time.sleep(0.05)


# ---------------------------------------------------------------------------
# 1. the child's own user: a fixed sandbox account, nothing of the host's
# ---------------------------------------------------------------------------

ACCOUNTS = worker('''
    import getpass, grp, pathlib, pwd, site

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            me = pwd.getpwuid(os.getuid())
            return Response.json({
                "getuser": attempt(getpass.getuser),
                "passwd": [me.pw_name, me.pw_uid == os.getuid(), me.pw_gid == os.getgid(), me.pw_dir],
                "by_name": attempt(lambda: pwd.getpwnam("worker") == me),
                "all": attempt(lambda: [e.pw_name for e in pwd.getpwall()]),
                "group": attempt(lambda: tuple(grp.getgrgid(os.getgid()))[::2]),
                "group_by_name": attempt(lambda: grp.getgrnam("worker").gr_gid == os.getgid()),
                "groups": attempt(lambda: [g.gr_name for g in grp.getgrall()]),
                "root": attempt(pwd.getpwnam, "root"),
                "uid0": attempt(pwd.getpwuid, 0),
                "root_group": attempt(grp.getgrnam, "root"),
                "bad_type": attempt(pwd.getpwuid, "x"),
                "expanduser": attempt(os.path.expanduser, "~/notes.txt"),
                "home": attempt(lambda: str(pathlib.Path.home())),
                "write_home": attempt(lambda: open(os.path.expanduser("~/notes.txt"), "w")),
                "user_site": attempt(site.getusersitepackages),
            })
''')


def test_the_child_is_a_fixed_sandbox_user(c: Corral) -> None:
    c.deploy("accounts", ACCOUNTS)
    out = call(c, "accounts")
    assert out["getuser"] == {"ok": True, "value": "'worker'"}, out["getuser"]
    assert out["passwd"] == ["worker", True, True, "/"], out["passwd"]
    assert out["by_name"] == {"ok": True, "value": "True"}, out["by_name"]
    assert out["all"] == {"ok": True, "value": "['worker']"}, out["all"]
    assert out["group"]["ok"] is True and out["group"]["value"].startswith("('worker', "), out["group"]
    assert out["group_by_name"] == {"ok": True, "value": "True"}, out["group_by_name"]
    assert out["groups"] == {"ok": True, "value": "['worker']"}, out["groups"]
    # Nothing of the host's accounts.
    for key in ("root", "uid0", "root_group"):
        denied(out[key], "KeyError", errno=None)
    denied(out["bad_type"], "TypeError", errno=None)
    # Home is the read-only root: it resolves, and a write there fails.
    assert out["expanduser"] == {"ok": True, "value": "'/notes.txt'"}, out["expanduser"]
    assert out["home"] == {"ok": True, "value": "'/'"}, out["home"]
    denied(out["write_home"], "OSError", errno=EROFS)
    # site's per-user paths are the sandbox user's, not those of the zygote's user.
    assert out["user_site"]["ok"] is True, out["user_site"]
    assert out["user_site"]["value"].startswith("'/.local/lib/python"), out["user_site"]
    assert_healthy(c)


# ---------------------------------------------------------------------------
# 2. faulthandler: the trace's stderr has no fd, and it is no error
# ---------------------------------------------------------------------------

FAULTHANDLER = worker('''
    import faulthandler, io, signal

    def dumper():
        faulthandler.dump_traceback()
        faulthandler.dump_traceback(sys.stderr, all_threads=False)

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            def enable():
                faulthandler.enable()
                try:
                    return faulthandler.is_enabled()
                finally:
                    faulthandler.disable()

            def register():
                faulthandler.register(signal.SIGUSR1)
                return faulthandler.unregister(signal.SIGUSR1)

            return Response.json({
                "enable": attempt(enable),
                "enable_stderr": attempt(faulthandler.enable, sys.stderr),
                "disable": attempt(faulthandler.disable),
                "register": attempt(register),
                "dump": attempt(dumper),
                "later": attempt(faulthandler.dump_traceback_later, 5),
                # Not the trace's stream: CPython's own behaviour, unchanged.
                "stringio": attempt(faulthandler.dump_traceback, io.StringIO()),
                "pid": os.getpid(),
            })
''')


def test_faulthandler_works_with_the_log_stream_for_stderr(c: Corral) -> None:
    c.deploy("faulthandler", FAULTHANDLER)
    before = pid_of(c, "faulthandler")
    out = call(c, "faulthandler")
    assert out["enable"] == {"ok": True, "value": "True"}, out["enable"]
    for key in ("enable_stderr", "dump"):
        assert out[key] == {"ok": True, "value": "None"}, (key, out[key])
    for key in ("disable", "register"):  # each undid what was enabled
        assert out[key] == {"ok": True, "value": "True"}, (key, out[key])
    # A watchdog thread is a thread: refused, saying so.
    denied(out["later"], "RuntimeError", errno=None)
    assert "not available in Corral's sandbox" in out["later"]["error"], out["later"]
    denied(out["stringio"], "UnsupportedOperation", errno=None)
    # The dumps are in the invocation's logs, as faulthandler writes them.
    lines = [(log["level"], log["message"][0]) for log in trace_logs(c, "faulthandler")]
    errors = [text for level, text in lines if level == "error"]
    assert any(t.startswith("Current thread 0x") and t.endswith("(most recent call first):")
               for t in errors), lines
    assert "Stack (most recent call first):" in errors, lines
    frames = [t for t in errors if t.startswith("  File ")]
    assert any(t.endswith(" in dumper") for t in frames), lines
    assert any(t.endswith(" in fetch") for t in frames), lines
    assert out["pid"] == before and pid_of(c, "faulthandler") == before
    assert_healthy(c)


# ---------------------------------------------------------------------------
# 3. locales: C, POSIX and the C library's C.UTF-8; none of the host's own
# ---------------------------------------------------------------------------

LOCALES = worker('''
    import locale, time

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            def under(name, fn):
                def run():
                    locale.setlocale(locale.LC_ALL, name)
                    try:
                        return fn()
                    finally:
                        locale.setlocale(locale.LC_ALL, "C")
                return run

            return Response.json({
                "c_utf8": attempt(locale.setlocale, locale.LC_ALL, "C.UTF-8"),
                "c_utf8_short": attempt(locale.setlocale, locale.LC_ALL, "C.utf8"),
                "c": attempt(locale.setlocale, locale.LC_ALL, "C"),
                "posix": attempt(locale.setlocale, locale.LC_ALL, "POSIX"),
                "codeset": attempt(under("C.UTF-8", lambda: locale.nl_langinfo(locale.CODESET))),
                "getlocale": attempt(under("C.UTF-8", lambda: locale.getlocale()[1])),
                "localeconv": attempt(under("C.UTF-8", lambda: locale.localeconv()["decimal_point"])),
                "format_n": attempt(under("C.UTF-8", lambda: f"{1234567.5:n} {1234567:n}")),
                "locale_str": attempt(under("C.UTF-8", lambda: locale.format_string("%.2f", 1234.5, grouping=True))),
                "strxfrm": attempt(under("C.UTF-8", lambda: locale.strxfrm("é") != "")),
                "strftime": attempt(under("C.UTF-8", lambda: time.strftime("%A", time.gmtime(0)))),
                "ctype_only": attempt(under("C.UTF-8", lambda: locale.setlocale(locale.LC_CTYPE, "C.UTF-8"))),
                "host_locale": attempt(locale.setlocale, locale.LC_ALL, "en_US.UTF-8"),
                "archive": os.path.exists("/usr/lib/locale/locale-archive"),
                "after": attempt(locale.setlocale, locale.LC_ALL),
            })
''')


@pytest.mark.skipif(not os.path.isdir("/usr/lib/locale/C.utf8"), reason="the host's glibc has no C.UTF-8")
def test_the_c_utf8_locale_works_and_the_hosts_locales_do_not_exist(c: Corral) -> None:
    c.deploy("locales", LOCALES)
    out = call(c, "locales")
    assert out["c_utf8"] == {"ok": True, "value": "'C.UTF-8'"}, out["c_utf8"]
    assert out["c_utf8_short"] == {"ok": True, "value": "'C.utf8'"}, out["c_utf8_short"]
    assert out["c"] == {"ok": True, "value": "'C'"}, out["c"]
    assert out["posix"] == {"ok": True, "value": "'C'"}, out["posix"]
    assert out["codeset"] == {"ok": True, "value": "'UTF-8'"}, out["codeset"]
    assert out["getlocale"] == {"ok": True, "value": "'UTF-8'"}, out["getlocale"]
    assert out["localeconv"] == {"ok": True, "value": "'.'"}, out["localeconv"]
    assert out["format_n"] == {"ok": True, "value": "'1.23457e+06 1234567'"}, out["format_n"]
    assert out["locale_str"] == {"ok": True, "value": "'1234.50'"}, out["locale_str"]
    assert out["strxfrm"] == {"ok": True, "value": "True"}, out["strxfrm"]
    assert out["strftime"] == {"ok": True, "value": "'Thursday'"}, out["strftime"]
    assert out["ctype_only"] == {"ok": True, "value": "'C.UTF-8'"}, out["ctype_only"]
    # The locales the host generated are its configuration: not in the view.
    denied(out["host_locale"], "Error", errno=None)
    assert out["archive"] is False
    assert out["after"] == {"ok": True, "value": "'C'"}, out["after"]
    assert_healthy(c)


# ---------------------------------------------------------------------------
# 4. the host stays hidden: its name, and its memory
# ---------------------------------------------------------------------------

HOST = worker('''
    import platform, socket

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return Response.json({
                "node": platform.node(),
                "uname_node": platform.uname().node,
                "os_uname": os.uname().nodename,
                "hostname": socket.gethostname(),
                "phys_pages": attempt(os.sysconf, "SC_PHYS_PAGES"),
                "avphys_pages": attempt(os.sysconf, "SC_AVPHYS_PAGES"),
                "by_number": attempt(os.sysconf, os.sysconf_names["SC_PHYS_PAGES"]),
                "page_size": attempt(os.sysconf, "SC_PAGE_SIZE"),
                "unknown": attempt(os.sysconf, "SC_NO_SUCH_THING"),
            })
''')


def test_platform_and_sysconf_show_nothing_of_the_host(c: Corral) -> None:
    c.deploy("host", HOST)
    out = call(c, "host")
    # platform's uname() cache was the host's, filled before the zygote's UTS namespace.
    assert out["node"] == out["uname_node"] == out["os_uname"] == out["hostname"], out
    # The host's memory: an OSError, not sysinfo()'s unchecked garbage.
    for key in ("phys_pages", "avphys_pages", "by_number"):
        denied(out[key], "OSError", errno=EINVAL)
        assert "not available in Corral's sandbox" in out[key]["error"], out[key]
    assert out["page_size"] == {"ok": True, "value": str(os.sysconf("SC_PAGE_SIZE"))}, out["page_size"]
    denied(out["unknown"], "ValueError", errno=None)
    assert_healthy(c)


# ---------------------------------------------------------------------------
# 5. processes and writes: a clear OSError at once, the child lives on
# ---------------------------------------------------------------------------

REFUSED = worker('''
    import logging, logging.handlers, subprocess, tempfile, time

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            def timed(fn, *args, **kwargs):
                start = time.monotonic()
                out = attempt(fn, *args, **kwargs)
                out["seconds"] = time.monotonic() - start
                return out

            def spooled():
                with tempfile.SpooledTemporaryFile() as f:
                    f.write(b"in memory")
                    f.seek(0)
                    return f.read()

            return Response.json({
                "system": attempt(os.system, "true"),
                "execv": attempt(os.execv, "/bin/true", ["true"]),
                "execvp": attempt(os.execvp, "true", ["true"]),
                "execle": attempt(os.execle, "/bin/true", "true", {}),
                "run_timeout": timed(subprocess.run, ["sleep", "10"], timeout=1),
                "file_handler": attempt(logging.FileHandler, "/tmp/app.log"),
                "rotating": attempt(logging.handlers.RotatingFileHandler, "/tmp/app.log"),
                "temporary_file": attempt(tempfile.TemporaryFile),
                "mkstemp": attempt(tempfile.mkstemp),
                "mkdtemp": attempt(tempfile.mkdtemp),
                "spooled": attempt(spooled),
                "pid": os.getpid(),
            })
''')


def test_processes_and_writes_fail_at_once_with_a_clear_oserror(c: Corral) -> None:
    c.deploy("refused", REFUSED)
    before = pid_of(c, "refused")
    out = call(c, "refused")
    # os.system() used to return 127 << 8: "the shell found no such command".
    for key in ("system", "execv", "execvp", "execle", "run_timeout"):
        denied(out[key], errno=EPERM)
        assert "not available in Corral's sandbox" in out[key]["error"], out[key]
        assert "cannot start processes" in out[key]["error"], out[key]
    assert out["run_timeout"]["seconds"] < 0.5, out["run_timeout"]
    for key in ("file_handler", "rotating", "temporary_file", "mkstemp"):
        denied(out[key], "OSError", errno=EROFS)
        assert "Read-only file system" in out[key]["error"], out[key]
    denied(out["mkdtemp"], errno=EPERM)
    assert out["spooled"] == {"ok": True, "value": "b'in memory'"}, out["spooled"]
    assert out["pid"] == before and pid_of(c, "refused") == before
    assert_healthy(c)


# ---------------------------------------------------------------------------
# 6. what is computation, or the child's own, answers
# ---------------------------------------------------------------------------

EVERYDAY = worker('''
    import atexit, concurrent.futures, ctypes.util, getpass, hashlib, importlib.metadata
    import mimetypes, multiprocessing, platform, random, resource, secrets, signal, sqlite3
    import ssl, sysconfig, uuid, zoneinfo

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            def sqlite():
                con = sqlite3.connect(":memory:")
                con.execute("create table t (a)")
                con.execute("insert into t values (42)")
                return con.execute("select a from t").fetchone()[0]

            def handler():
                old = signal.signal(signal.SIGUSR1, lambda *a: None)
                signal.signal(signal.SIGUSR1, old)
                return True

            def pool():
                with concurrent.futures.ThreadPoolExecutor() as ex:
                    return ex.submit(abs, -3).result()

            async def to_thread():
                return await asyncio.to_thread(abs, -4)

            async def executor():
                return await asyncio.get_running_loop().run_in_executor(None, abs, -5)

            return Response.json({
                "python_version": attempt(platform.python_version),
                "cpu_count": attempt(lambda: os.cpu_count() >= 1),
                "mp_cpu_count": attempt(lambda: multiprocessing.cpu_count() >= 1),
                "rusage": attempt(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_utime >= 0),
                "times": attempt(lambda: os.times().user >= 0),
                "uuid4": attempt(lambda: uuid.uuid4().version),
                "secrets": attempt(lambda: len(secrets.token_bytes(16))),
                "system_random": attempt(lambda: 0 <= random.SystemRandom().random() < 1),
                "md5": attempt(lambda: hashlib.md5(b"", usedforsecurity=False).hexdigest()),
                "sqlite": attempt(sqlite),
                "signal": attempt(handler),
                "atexit": attempt(lambda: atexit.register(print) is print),
                "json_type": attempt(lambda: mimetypes.guess_type("a.json")[0]),
                "stdlib_path": attempt(lambda: sysconfig.get_paths()["stdlib"] == os.path.dirname(os.__file__)),
                "metadata": attempt(importlib.metadata.version, "no-such-package"),
                "find_library": attempt(ctypes.util.find_library, "c"),
                "utc": attempt(lambda: str(zoneinfo.ZoneInfo("UTC"))),
                "ssl": attempt(lambda: ssl.create_default_context().verify_mode == ssl.CERT_REQUIRED),
                "curses": attempt(lambda: __import__("curses").__name__),
                "readline": attempt(lambda: __import__("readline").__name__),
                "pool": attempt(pool),
                "to_thread": await attempt_async(to_thread),
                "executor": await attempt_async(executor),
                "getloadavg": attempt(os.getloadavg),
            })
''')


def test_everyday_calls_answer_in_the_jail(c: Corral) -> None:
    c.deploy("everyday", EVERYDAY)
    out = call(c, "everyday")
    ok_true = ("cpu_count", "mp_cpu_count", "rusage", "times", "system_random", "signal", "atexit",
               "stdlib_path", "ssl")
    for key in ok_true:
        assert out[key] == {"ok": True, "value": "True"}, (key, out[key])
    assert out["python_version"]["ok"] is True, out["python_version"]
    assert out["uuid4"] == {"ok": True, "value": "4"}, out["uuid4"]
    assert out["secrets"] == {"ok": True, "value": "16"}, out["secrets"]
    assert out["md5"] == {"ok": True, "value": "'d41d8cd98f00b204e9800998ecf8427e'"}, out["md5"]
    assert out["sqlite"] == {"ok": True, "value": "42"}, out["sqlite"]
    assert out["json_type"] == {"ok": True, "value": "'application/json'"}, out["json_type"]
    denied(out["metadata"], "PackageNotFoundError", errno=None)
    assert out["find_library"]["ok"] is True, out["find_library"]
    assert out["utc"] == {"ok": True, "value": "'UTC'"}, out["utc"]
    assert out["curses"] == {"ok": True, "value": "'curses'"}, out["curses"]
    assert out["readline"] == {"ok": True, "value": "'readline'"}, out["readline"]
    # No threads: a pool's thread is refused, saying so; asyncio's executor runs inline.
    denied(out["pool"], "RuntimeError", errno=None)
    assert "cannot start threads" in out["pool"]["error"], out["pool"]
    assert out["to_thread"] == {"ok": True, "value": "4"}, out["to_thread"]
    assert out["executor"] == {"ok": True, "value": "5"}, out["executor"]
    # The host's load: not the worker's to know (no /proc).
    denied(out["getloadavg"], "OSError", errno=None)
    assert_healthy(c)


# ---------------------------------------------------------------------------
# 7. names, second loops, multiprocessing: refused at once, saying why
# ---------------------------------------------------------------------------

NO_NETWORK = worker('''
    import multiprocessing, smtplib, socket

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            loop = asyncio.get_running_loop()
            return Response.json({
                "getaddrinfo": attempt(socket.getaddrinfo, "example.com", 443),
                "localhost": attempt(socket.gethostbyname, "localhost"),
                "numeric": attempt(lambda: socket.getaddrinfo("127.0.0.1", 80)[0][4]),
                "create_connection": attempt(socket.create_connection, ("example.com", 80), 1),
                "smtp": attempt(smtplib.SMTP, "mail.example.com", 25, timeout=1),
                "loop_getaddrinfo": await attempt_async(loop.getaddrinfo, "example.com", 80),
                "open_connection": await attempt_async(asyncio.open_connection, "example.com", 80),
                "new_event_loop": attempt(asyncio.new_event_loop),
                "asyncio_run": attempt(lambda: asyncio.Runner().get_loop()),
                "mp_lock": attempt(multiprocessing.Lock),
                "mp_event": attempt(multiprocessing.Event),
                "mp_queue": attempt(multiprocessing.Queue),
                "mp_pipe": attempt(multiprocessing.Pipe),
                "mp_manager": attempt(multiprocessing.Manager),
                "pid": os.getpid(),
            })
''')


def test_names_loops_and_multiprocessing_are_refused_saying_why(c: Corral) -> None:
    c.deploy("nonetwork", NO_NETWORK)
    before = pid_of(c, "nonetwork")
    out = call(c, "nonetwork")
    # Every lookup failed with "Temporary failure in name resolution" (EAI_AGAIN), a
    # retry's invitation; now a non-recoverable EAI_FAIL, saying why.
    for key in ("getaddrinfo", "localhost", "create_connection", "smtp", "loop_getaddrinfo",
                "open_connection"):
        denied(out[key], "gaierror", errno=EAI_FAIL)
        assert "name resolution" in out[key]["error"], out[key]
        assert "not available in Corral's sandbox" in out[key]["error"], out[key]
        assert "use fetch()" in out[key]["error"], out[key]
    assert out["numeric"] == {"ok": True, "value": "('127.0.0.1', 80)"}, out["numeric"]
    # A bare "Operation not permitted" (epoll, socket pair) before.
    for key in ("new_event_loop", "asyncio_run"):
        denied(out[key], errno=EPERM)
        assert "one event loop" in out[key]["error"], out[key]
    # "Read-only file system" (a semaphore in /dev/shm) or a bare EPERM (a pipe) before.
    for key in ("mp_lock", "mp_event", "mp_queue", "mp_pipe", "mp_manager"):
        denied(out[key], errno=EPERM)
        assert "not available in Corral's sandbox" in out[key]["error"], out[key]
        assert "cannot start processes" in out[key]["error"], out[key]
    assert out["pid"] == before and pid_of(c, "nonetwork") == before
    assert_healthy(c)


# ---------------------------------------------------------------------------
# 8. ctypes.util.find_library: the libraries the view shows, without ldconfig
# ---------------------------------------------------------------------------

LIBRARIES = worker('''
    import ctypes, ctypes.util

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            def load(name):
                found = ctypes.util.find_library(name)
                ctypes.CDLL(found)
                return found

            return Response.json({
                "c": attempt(load, "c"),
                "m": attempt(load, "m"),
                "sqlite3": attempt(load, "sqlite3"),
                "missing": attempt(ctypes.util.find_library, "no-such-library"),
                # Only what the view shows: not every library the host has.
                "host_only": attempt(ctypes.util.find_library, "systemd"),
            })
''')


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's sonames")
def test_find_library_finds_the_libraries_the_view_shows(c: Corral) -> None:
    c.deploy("libraries", LIBRARIES)
    out = call(c, "libraries")
    assert out["c"] == {"ok": True, "value": "'libc.so.6'"}, out["c"]
    assert out["m"] == {"ok": True, "value": "'libm.so.6'"}, out["m"]
    assert out["sqlite3"]["ok"] is True and out["sqlite3"]["value"].startswith("'libsqlite3.so."), out
    assert out["missing"] == {"ok": True, "value": "None"}, out["missing"]
    assert out["host_only"] == {"ok": True, "value": "None"}, out["host_only"]
    assert_healthy(c)
