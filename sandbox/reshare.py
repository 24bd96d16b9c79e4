"""Idle children give the pages they copied, but did not change, back.

Under CPython 3.11 every object a child so much as looks at has its
reference count written, so the first request copies a few hundred of the
zygote's pages into the child, and most of those copies end up byte for byte
what they were: the count went up and came down again. They stay private to
the child for its life, ~1 MB of every warm tenant.

The zygote therefore keeps a *snapshot*: its writable memory as it stands
after its preparation, in a sealed memfd. When a child has been idle for a
while, the supervisor (which can read the child's page map) sends it the
addresses of the pages only it holds (:class:`protocol.messages.Trim`), and
the child maps the snapshot's page over each one that is still equal to it
(``sandbox/native/reshare.c``): the same bytes, now one page cache page
shared by every child. A page the child wrote since the snapshot differs
and is left alone, so this is correct whatever the child did. The next
request copies again what it touches, once: this is for tenants that sit
idle, which on a multi-tenant host is most of them.

The snapshot is sealed against writes, shrinking and growing, so a tenant
holding its descriptor can read it (the same bytes it already has) but can
change nothing another child maps. It is charged to the zygote: ~20 MB once
per host, mapped read-only so that it shows in the zygote's PSS.

Everything here is optional: without the compiled helper (``scripts/setup``
builds it; it needs a C compiler) the zygote reports why and children keep
their copies.
"""

from __future__ import annotations

import _signal
import array
import ctypes
import fcntl
import importlib.machinery
import mmap
import os
import time
import types
from dataclasses import dataclass

from protocol.pages import PAGE, PRESENT, flagged_runs, private_writable_regions

#: The compiled helper (``sandbox/native/reshare.c``), a CPython extension
#: built by ``scripts/setup``.
LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "_reshare" + importlib.machinery.EXTENSION_SUFFIXES[0])

_F_ADD_SEALS = 1033
_F_SEAL_SEAL, _F_SEAL_SHRINK, _F_SEAL_GROW, _F_SEAL_WRITE = 1, 2, 4, 8


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The zygote's writable memory, sealed, and where each part came from."""

    fd: int
    view: int  # address of a read-only shared mapping of the whole file
    size: int
    runs: array.array  # (start, end, offset) triples, ascending


_library: types.ModuleType | None = None
_snapshot: Snapshot | None = None


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    return libc


def load_library() -> str | None:
    """Load the helper now (before the file view hides it); returns a problem, or None."""
    global _library
    if not os.path.exists(LIBRARY):
        return f"{LIBRARY} is not built (scripts/setup builds it; it needs a C compiler)"
    try:
        from . import _reshare  # type: ignore[attr-defined]
    except ImportError as exc:
        return f"cannot load {LIBRARY}: {exc}"
    _library = _reshare
    return None


def open_proc() -> tuple[int, int]:
    """This process's maps and pagemap, opened while /proc is still visible."""
    return os.open("/proc/self/maps", os.O_RDONLY), os.open("/proc/self/pagemap", os.O_RDONLY)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def take(maps_fd: int, pagemap_fd: int) -> dict:
    """In the zygote, last thing before it forks: snapshot and seal its writable memory.

    The bytes are copied while this code runs, so a page it is changing may
    be caught mid-change; that costs nothing but a page no child can give
    back, because children compare before they map.
    """
    global _snapshot
    if _library is None:
        return {}
    started = time.perf_counter()
    os.lseek(maps_fd, 0, os.SEEK_SET)
    regions = private_writable_regions(_read_all(maps_fd).decode())
    fd = os.memfd_create("corral-zygote-snapshot", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    runs = array.array("Q")
    offset = 0
    for start, end in regions:
        entries = os.pread(pagemap_fd, (end - start) // PAGE * 8, start // PAGE * 8)
        for run_start, run_end in flagged_runs(entries, start, PRESENT):
            length = run_end - run_start
            os.pwrite(fd, memoryview((ctypes.c_char * length).from_address(run_start)).cast("B"),
                      offset)
            runs.extend((run_start, run_end, offset))
            offset += length
    fcntl.fcntl(fd, _F_ADD_SEALS, _F_SEAL_SHRINK | _F_SEAL_GROW | _F_SEAL_WRITE | _F_SEAL_SEAL)
    view = _libc().mmap(None, offset, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if view in (None, ctypes.c_void_p(-1).value):
        os.close(fd)
        return {"problem": f"cannot map the snapshot: errno {ctypes.get_errno()}"}
    _snapshot = Snapshot(fd, view, offset, runs)
    return {"pages": offset // PAGE, "runs": len(runs) // 3,
            "ms": round((time.perf_counter() - started) * 1000, 1)}


def snapshot_fd() -> int | None:
    """The descriptor children keep through the jail's closing of fds."""
    return _snapshot.fd if _snapshot is not None else None


def give_back(pages: bytes) -> int:
    """In an idle child: map the snapshot over each listed page still equal to it.

    ``pages`` are ascending page addresses (native u64), the pages
    the supervisor saw this child alone holding. Returns how many were given
    back; 0 without a snapshot.
    """
    if _snapshot is None or _library is None or not pages:
        return 0
    snap = _snapshot
    # No signal handler may write to a page between its comparison and its
    # mapping (the write would be undone): none runs until this is done.
    # (_signal: the signal module's Enum wrappers would copy pages themselves.)
    blocked = _signal.pthread_sigmask(_signal.SIG_BLOCK, _signal.valid_signals())
    try:
        return _library.reshare(pages, snap.runs, snap.fd, snap.view, snap.size, PAGE)
    except OSError as exc:
        raise OSError(exc.errno, f"giving pages back: {os.strerror(exc.errno or 0)}") from None
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, blocked)
