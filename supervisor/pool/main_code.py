"""The compiled main modules of script versions, kept in memory for cold starts.

A child imports its script from its bundle's files (:mod:`.bundles`). On a
host whose page cache has dropped a bundle since it was written (memory
reclaim, a proactive reclaimer such as DAMON's ``pageout``), every cold
start then waits on the disk: the import root's listing and the main
module's ``.pyc``, two or three random reads. In a storm of first requests
those reads queue behind each other, and a traced storm showed children
blocked ~40 ms at a time in exactly those two calls. Workerd's loader has
its code in memory; so does this.

The supervisor keeps, per version, the exact ``.pyc`` it wrote for the main
module and the names in the import root (a :class:`~protocol.messages.MainCode`)
and sends them with ``Load``. The files stay the truth: the child still
finds every other module, data file and ``__file__`` in the bundle, and a
version not held here is read from disk as before.

Held: versions this process wrote (their files were just compiled) and,
at start, the deployed versions an earlier run wrote, read once in a worker
thread. Bounded by bytes, least recently used first out; a collected
bundle's entry goes with it.
"""

from __future__ import annotations

import importlib.util
import os
import posixpath
from collections import OrderedDict
from collections.abc import Iterable

from protocol.framing import MAX_FRAME_TO_CHILD
from protocol.messages import PYC_HEADER, MainCode
from supervisor.model import BUNDLE_MARKER

#: What the cache may hold, in bytes of code and names (~2 KB for a small worker).
BUDGET_BYTES = 64 << 20
#: The most one version may hold: its ``Load`` must stay far within a frame
#: to the child (protocol.framing); a bigger main module is read from disk.
MAX_ENTRY_BYTES = MAX_FRAME_TO_CHILD // 8
#: Bookkeeping per entry beyond its bytes (key, tuple, list), roughly.
_ENTRY_OVERHEAD = 256


def read_main_code(bundle_dir: str, main_module: str) -> MainCode | None:
    """The main module's pyc and its import root's names, from disk (blocking).

    None when there is nothing a child could use instead of the files: no
    pyc (the module does not compile: importing it reports why), or a pyc
    of another Python or kind.
    """
    root, base = posixpath.split(main_module.strip("/"))
    if not base.endswith(".py"):
        return None
    import_root = os.path.join(bundle_dir, root) if root else bundle_dir
    try:
        # Where compile_tree wrote it, and where the child's import looks.
        pyc_path = importlib.util.cache_from_source(os.path.join(import_root, base))
    except NotImplementedError:  # an implementation without a pyc cache
        return None
    try:
        entries = sorted(e for e in os.listdir(import_root) if e != BUNDLE_MARKER)  # platform's
        with open(pyc_path, "rb") as f:
            pyc = f.read()
    except OSError:
        return None
    if not pyc.startswith(PYC_HEADER):
        return None
    return MainCode(pyc, entries)


def _cost(code: MainCode) -> int:
    return len(code.pyc) + sum(len(name) for name in code.root_entries) + _ENTRY_OVERHEAD


class MainCodeCache:
    """Version -> :class:`MainCode`, bounded by bytes, least recently used out."""

    def __init__(self, budget_bytes: int = BUDGET_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, MainCode] = OrderedDict()
        self._bytes = 0

    def get(self, version: str) -> MainCode | None:
        code = self._entries.get(version)
        if code is not None:
            self._entries.move_to_end(version)
        return code

    def put(self, version: str, code: MainCode) -> bool:
        """Hold ``code`` for ``version``; False if it alone is over the budget or :data:`MAX_ENTRY_BYTES`."""
        cost = _cost(code)
        if cost > min(self.budget_bytes, MAX_ENTRY_BYTES):
            return False
        self._drop(version)
        self._entries[version] = code
        self._bytes += cost
        while self._bytes > self.budget_bytes:
            self._drop(next(iter(self._entries)))
        return True

    def keep_only(self, versions: Iterable[str]) -> None:
        """Forget every version outside ``versions`` (their bundles were collected)."""
        kept = set(versions)
        for version in [v for v in self._entries if v not in kept]:
            self._drop(version)

    def _drop(self, version: str) -> None:
        code = self._entries.pop(version, None)
        if code is not None:
            self._bytes -= _cost(code)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, version: object) -> bool:
        return version in self._entries
