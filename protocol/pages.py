"""Which mappings of a process hold pages a :class:`~protocol.messages.Trim` may name.

Both sides must agree: the zygote snapshots these mappings (sandbox.reshare)
and the supervisor picks a child's candidate pages from the same ones
(supervisor.pool.idle_trim). Private and writable (``rw-p`` in
``/proc/PID/maps``: the interpreter's heaps, arenas and data segments),
minus the stack, which moves with every call, and the kernel's own pages.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Iterator

PAGE = mmap.PAGESIZE

#: Flags in the top byte (bits 56-63) of a ``/proc/PID/pagemap`` entry.
PRESENT = 0x80  # bit 63: in memory
EXCLUSIVE = 0x01  # bit 56: mapped by this process alone

_RUN = re.compile(b"1+")
_TABLES: dict[int, bytes] = {}

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


def flagged_runs(entries: bytes, start: int, flags: int) -> Iterator[tuple[int, int]]:
    """``(first, end)`` of each run of pages with all of ``flags`` set.

    ``entries`` is ``/proc/PID/pagemap`` read for a range from ``start``. Each
    entry's top byte (byte 7: little-endian) is mapped to ``b"1"`` or ``b"0"``
    and the runs are found by a regular expression, so the scan runs at C
    speed: a child's writable mappings have some 20,000 entries.
    """
    table = _TABLES.get(flags)
    if table is None:
        table = _TABLES[flags] = bytes(
            ord("1") if top & flags == flags else ord("0") for top in range(256))
    for run in _RUN.finditer(entries[7::8].translate(table)):
        yield start + run.start() * PAGE, start + run.end() * PAGE
