"""Which shared libraries an ELF object needs (``DT_NEEDED``), without ``ldd``.

The file view must contain the libraries that the standard library's
extension modules load lazily (``_sqlite3`` needs ``libsqlite3``, ``_ctypes``
``libffi``, ...). Running ``ldd`` would exec once per module; reading the
dynamic section is a few reads of 64-bit little-endian ELF, which is all the
host Python can be.
"""

from __future__ import annotations

import mmap
import os
import struct

_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 15, 29
_PT_LOAD, _PT_DYNAMIC = 1, 2


def needed(path: str) -> tuple[list[str], list[str]]:
    """``(DT_NEEDED names, RUNPATH/RPATH dirs)`` of ``path``; empty if not a 64-bit ELF."""
    try:
        with open(path, "rb") as f:
            # Mapped, not read: libraries are megabytes and only headers matter.
            data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    except (OSError, ValueError):
        return [], []
    with data:
        return _parse(data, path)


def _parse(data: mmap.mmap, path: str) -> tuple[list[str], list[str]]:
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return [], []
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic = None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return [], []
    entries: list[tuple[int, int]] = []
    for off in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, off)
        if tag == _DT_NULL:
            break
        entries.append((tag, value))
    strtab_vaddr = next((v for t, v in entries if t == _DT_STRTAB), None)
    if strtab_vaddr is None:
        return [], []
    strtab = next((off + strtab_vaddr - vaddr for vaddr, off, size in loads
                   if vaddr <= strtab_vaddr < vaddr + size), None)
    if strtab is None:
        return [], []

    def string(offset: int) -> str:
        start = strtab + offset
        return data[start:data.find(b"\0", start)].decode("utf-8", "replace")

    names = [string(v) for t, v in entries if t == _DT_NEEDED]
    origin = os.path.dirname(path)
    dirs = [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
            for t, v in entries if t in (_DT_RPATH, _DT_RUNPATH) for d in string(v).split(":") if d]
    return names, dirs
