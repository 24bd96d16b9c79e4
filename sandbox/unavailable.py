"""Clear errors for what a worker cannot do, raised where the tenant asks for it.

Every standard-library module imports in the jail; some cannot work there:
a worker cannot start processes or threads, cannot open sockets (its
network is ``fetch()``, made by the supervisor) nor resolve names, and has
one event loop. Without help, those fail deep inside the library with a bare ``PermissionError`` from the seccomp
filter or an opaque ``can't start new thread``. This module patches the
entry points, in the child, just before the script is imported, so the
tenant reads what is not available in Corral's sandbox and why, as on
Cloudflare.

A refused process or socket is a ``PermissionError`` (EPERM, what the
seccomp filter itself answers), so that the standard library's fallbacks for
a missing program run: ``platform.platform()`` and ``uname()`` (``uname
-p``), ``ctypes.util.find_library()`` (``ldconfig``), ``uuid``'s ``ip``
catch ``OSError``, and a ``RuntimeError`` went through them. A refused
thread stays a ``RuntimeError``, as CPython's own "can't start new thread".

It is a courtesy, not a boundary: code that goes around these patches
(``_posixsubprocess``, ``_socket``, ``ctypes``) meets the seccomp filter and
the namespaces, which refuse the same things.

Modules already imported (``subprocess``, ``threading``, ``socket``: the
runtime's asyncio imports them) are patched at once; the others
(``multiprocessing``, ``socketserver``, ...) when first imported, by a
meta-path hook, so that they cost nothing until a script wants them.

The zygote installs the patches (:func:`install`) and a child switches them
on (:func:`activate`) just before its script is imported: until then each
patched entry point does what it always did, which the zygote itself needs
(it forks; a package zygote's framework rehearsal may start threads).
Patching a class in every child instead cost each one ~120 of the zygote's
pages (the type's caches and the specialised bytecode that depended on it),
measured: more than any other step of a cold start.
"""

from __future__ import annotations

import errno
import sys
import types
from collections.abc import Callable
from typing import Any

from . import import_patches

PROCESSES = "workers cannot start processes (each worker is one sandboxed process)"
THREADS = "workers cannot start threads; use asyncio tasks (ctx.waitUntil for background work)"
SOCKETS = "workers cannot open sockets; use fetch() for outbound HTTP"
LOOPS = ("a worker has one event loop, already running its handlers; await instead "
         "(pyodide.ffi.run_sync from synchronous code)")


def _message(what: str, why: str) -> str:
    return f"{what} is not available in Corral's sandbox: {why}"


#: Switched on in a child by :func:`activate`; the zygote never is.
_active = False


def _refuse(original: Callable[..., Any], what: str, why: str,
            error: type[Exception] = RuntimeError) -> Callable[..., Any]:
    """``original`` until :func:`activate`, then a clear error."""
    def refused(*args: Any, **kwargs: Any) -> Any:
        if not _active:
            return original(*args, **kwargs)
        if issubclass(error, OSError):
            raise error(errno.EPERM, _message(what, why))
        raise error(_message(what, why))

    refused.__name__ = what.rpartition(".")[2].rstrip("()") or "refused"
    refused.__doc__ = _message(what, why)
    return refused


def _patch_os(os: types.ModuleType) -> None:
    # os.system() would not raise: glibc's system() answers a refused
    # process with the shell's "command not found", exit status 127, as if
    # a program had run. The exec family would replace the worker itself
    # (os.execl, execlp, execvp... all end in execv or execve).
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv", "execve"):
        if hasattr(os, name):
            setattr(os, name, _refuse(getattr(os, name), f"os.{name}()", PROCESSES, PermissionError))


def _patch_subprocess(subprocess: types.ModuleType) -> None:
    original = subprocess.Popen.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        if not _active:
            return original(self, *args, **kwargs)
        self._child_created = False  # what Popen.__del__ looks at
        raise PermissionError(errno.EPERM, _message("subprocess", PROCESSES))

    subprocess.Popen.__init__ = __init__


def _patch_threading(threading: types.ModuleType) -> None:
    threading.Thread.start = _refuse(threading.Thread.start, "threading.Thread.start()", THREADS)
    thread = sys.modules.get("_thread")
    if thread is not None:
        thread.start_new_thread = _refuse(thread.start_new_thread, "_thread.start_new_thread()",
                                          THREADS)
        thread.start_new = thread.start_new_thread


def _patch_socket(socket: types.ModuleType) -> None:
    original = socket.socket.__init__

    def __init__(self: Any, family: int = -1, type: int = -1, proto: int = -1,  # noqa: A002, N807
                 fileno: int | None = None) -> None:
        if fileno is None and _active:  # a new socket; wrapping an existing fd is harmless
            raise PermissionError(errno.EPERM, _message("socket.socket()", SOCKETS))
        original(self, family, type, proto, fileno)

    socket.socket.__init__ = __init__
    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        setattr(socket, name, _resolver(socket, getattr(socket, name)))


def _resolver(socket: types.ModuleType, original: Callable[..., Any]) -> Callable[..., Any]:
    """``original`` (a name lookup), whose failure in a child says why.

    Without a network, glibc's resolver answers every name with EAI_AGAIN,
    "Temporary failure in name resolution": a retry's invitation, and the
    first error ``socket.create_connection()``, ``smtplib``, ``asyncio``'s
    ``open_connection()`` and ``logging``'s ``SysLogHandler`` met, before the
    socket they would open is refused. A child's failed lookup is
    EAI_FAIL, "non-recoverable", saying that workers cannot open sockets.
    Numeric addresses still resolve, as they need no resolver."""
    hopeless = {getattr(socket, n) for n in ("EAI_AGAIN", "EAI_NONAME", "EAI_FAIL", "EAI_NODATA")
                if hasattr(socket, n)}

    def resolve(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except socket.gaierror as exc:
            if not _active or exc.errno not in hopeless:
                raise
            host = args[0] if args else kwargs.get("host")
            raise socket.gaierror(socket.EAI_FAIL, _message(
                f"name resolution (socket.{original.__name__}({host!r}))", SOCKETS)) from None

    resolve.__name__ = original.__name__
    resolve.__doc__ = original.__doc__
    return resolve


def _patch_socketserver(socketserver: types.ModuleType) -> None:
    server = socketserver.BaseServer
    server.__init__ = _refuse(server.__init__, "socketserver", SOCKETS, PermissionError)


def _patch_multiprocessing_process(process: types.ModuleType) -> None:
    base = process.BaseProcess
    base.start = _refuse(base.start, "multiprocessing process start", PROCESSES, PermissionError)


def _patch_multiprocessing_synchronize(synchronize: types.ModuleType) -> None:
    # Its locks, semaphores and events are POSIX semaphores in /dev/shm: a
    # write the view refuses ("Read-only file system"), and no use without
    # another process.
    semlock = synchronize.SemLock
    semlock.__init__ = _refuse(semlock.__init__, "a multiprocessing lock or semaphore",
                               PROCESSES, PermissionError)


def _patch_multiprocessing_connection(connection: types.ModuleType) -> None:
    # Queue, Manager and Pipe itself start with a pipe or a socket pair.
    connection.Pipe = _refuse(connection.Pipe, "multiprocessing.Pipe()", PROCESSES, PermissionError)


def _patch_asyncio_events(events: types.ModuleType) -> None:
    # A new loop needs an epoll instance and a socket pair, both refused:
    # a bare "Operation not permitted" otherwise.
    events.new_event_loop = _refuse(events.new_event_loop, "asyncio.new_event_loop()", LOOPS,
                                    PermissionError)
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        asyncio.new_event_loop = events.new_event_loop


def _patch_asyncio(asyncio: types.ModuleType) -> None:
    asyncio.new_event_loop = asyncio.events.new_event_loop


def _patch_multiprocessing_pool(pool: types.ModuleType) -> None:
    pool.Pool.__init__ = _refuse(pool.Pool.__init__, "multiprocessing.Pool", PROCESSES,
                                 PermissionError)


def _patch_process_pool(process: types.ModuleType) -> None:
    executor = process.ProcessPoolExecutor
    executor.__init__ = _refuse(executor.__init__, "concurrent.futures.ProcessPoolExecutor",
                                PROCESSES, PermissionError)


PATCHES: dict[str, Callable[[types.ModuleType], None]] = {
    "os": _patch_os,
    "subprocess": _patch_subprocess,
    "threading": _patch_threading,
    "socket": _patch_socket,
    "socketserver": _patch_socketserver,
    "asyncio.events": _patch_asyncio_events,
    "asyncio": _patch_asyncio,
    "multiprocessing.process": _patch_multiprocessing_process,
    "multiprocessing.synchronize": _patch_multiprocessing_synchronize,
    "multiprocessing.connection": _patch_multiprocessing_connection,
    "multiprocessing.pool": _patch_multiprocessing_pool,
    "concurrent.futures.process": _patch_process_pool,
}


def install() -> None:
    """In the zygote: patch what is imported, hook what is not (all inactive)."""
    import_patches.install(PATCHES)


def activate() -> None:
    """In a child, before its script runs: the patched entry points refuse from now on."""
    global _active
    _active = True
