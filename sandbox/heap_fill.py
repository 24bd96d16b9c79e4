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
