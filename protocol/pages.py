"""Which mappings of a process hold pages a :class:`~protocol.messages.Trim` may name.

Both sides must agree: the zygote snapshots these mappings (sandbox.reshare)
and the supervisor picks a child's candidate pages from the same ones
(supervisor.pool.idle_trim). Private and writable (``rw-p`` in
``/proc/PID/maps``: the interpreter's heaps, arenas and data segments),
minus the stack, which moves with every call, and the kernel's own pages.
"""

from __future__ import annotations

import mmap

PAGE = mmap.PAGESIZE

_SKIPPED = frozenset({"[stack]", "[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]"})


def private_writable_regions(maps: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each such mapping in the text of ``/proc/PID/maps``."""
    regions = []
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[1] != "rw-p" or (len(fields) > 5 and fields[5] in _SKIPPED):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        regions.append((start, end))
    return regions
