"""Fill the zygote's partly used pymalloc pools before it forks.

Every child allocates objects from the moment it is born. CPython's small
object allocator serves a new object from the first *partly used* pool of
its size class, and after the zygote's imports those pools are scattered
over ~11 MB of arenas, a few free blocks in each. A child that writes one
object into each of them copies a 4 KiB page per block: hundreds of pages
of the zygote's heap become private to every child for a few KB of data.

Taking every free block of those pools here, once, in the zygote, leaves
the children nothing to reuse there: their first objects go to pools of
their own, packed densely. The blocks taken are never used or freed; they
are the zygote's (shared) memory, a few hundred KB in all.

The counts come from ``sys._debugmallocstats()``, CPython's own report of
blocks in use and available per size class (it writes to the C stderr).

The same holds one level down, for C's ``malloc`` (everything over 512
bytes: dict tables, long lists, buffers, and C libraries' own memory): the
zygote's imports leave ~1 MB of freed chunks scattered through glibc's heap,
and a child's ``malloc`` would reuse them first. :func:`fill_malloc_bins`
takes them too; it cut a spare's private memory by 70-130 KB, measured
with smaps. glibc's ``mallinfo2`` says how much sits in its bins.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: Filled blocks are kept here so nothing ever frees them.
_held: list[int] = []


def available_blocks() -> dict[int, int]:
    """Free blocks in partly used pools, by block size (bytes)."""
    with open(os.memfd_create("mallocstats"), "rb") as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        text = os.pread(out.fileno(), 1 << 20, 0).decode("ascii", "replace")
    blocks: dict[int, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 5 and all(f.isdigit() for f in fields):
            size, avail = int(fields[1]), int(fields[4])
            if avail:
                blocks[size] = avail
    return blocks


def fill_partial_pools(rounds: int = 3) -> int:
    """Allocate every free block of every partly used pool; returns how many.

    Holding the pointers itself allocates (the list grows), so a round or
    two more takes what that used.
    """
    malloc = ctypes.pythonapi.PyObject_Malloc
    malloc.restype = ctypes.c_void_p
    malloc.argtypes = [ctypes.c_size_t]
    taken = 0
    for _ in range(rounds):
        blocks = available_blocks()
        if not blocks:
            break
        for size, count in blocks.items():
            _held.extend(malloc(size) for _ in range(count))
            taken += count
    return taken


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc 2.33 and later)."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


#: Requests from 64 KiB down to 16 bytes: each takes a free chunk at least
#: that large (splitting bigger ones), until only the heap's top is left.
_REQUESTS = tuple(1 << k for k in range(16, 3, -1))
#: A bound on the chunks taken (a few thousand are typical).
_MOST_CHUNKS = 200_000
#: glibc's per-thread cache: chunks up to this size, this many of each.
_TCACHE_MAX, _TCACHE_COUNT = 1032, 7


def fill_malloc_bins() -> dict[str, object]:
    """Take glibc's free chunks below the top of its heap; returns what was
    free before and after (bytes), or the problem that stopped it.

    A request served from a bin lowers the free bytes ``mallinfo2`` reports
    (``fordblks``, less the top chunk's ``keepcost``); one served from the
    top does not, and is given back: nothing of that size is left to take.
    glibc's per-thread cache (up to 7 chunks of each size up to 1,032 bytes)
    counts as in use there, so a small request may not lower the figure
    either: those are kept too, and only the eighth such in a row ends the size.
    """
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError) as exc:  # not glibc, or older than 2.33
        return {"problem": f"no mallinfo2: {exc}"}
    mallinfo2.restype = _MallInfo2
    malloc, free = libc.malloc, libc.free
    malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    free.restype, free.argtypes = None, [ctypes.c_void_p]

    def in_bins() -> int:
        info = mallinfo2()
        return info.fordblks - info.keepcost

    before = left = in_bins()
    taken = 0
    for size in _REQUESTS:
        misses = 0
        while left >= size and taken < _MOST_CHUNKS:
            block = malloc(size)
            if not block:
                break
            now = in_bins()
            if now < left:  # out of a bin
                misses = 0
            elif size <= _TCACHE_MAX and misses < _TCACHE_COUNT:
                misses += 1  # out of the per-thread cache, or the top: kept either way
            else:  # from the top: no free chunk of this size is left
                free(block)
                break
            _held.append(block)
            taken += 1
            left = now
    return {"free_before": before, "free_after": in_bins(), "chunks": taken}

