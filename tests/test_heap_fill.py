"""The zygote takes the free memory a child's allocations would land in
(sandbox.heap_fill), so that children write to pages of their own instead of
copying the zygote's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HOLES = '''
import ctypes, json
from sandbox import heap_fill
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
blocks = [libc.malloc(3000) for _ in range(400)]
holes = set(blocks[::2])
for block in holes:   # 200 free chunks between chunks in use: they cannot merge
    libc.free(block)
out = heap_fill.fill_malloc_bins()
fresh = [libc.malloc(3000) for _ in range(20)]
out["reused"] = sum(block in holes for block in fresh)
print(json.dumps(out))
'''


def test_the_malloc_fill_takes_the_free_chunks_a_child_would_reuse() -> None:
    done = subprocess.run([sys.executable, "-c", HOLES], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert "problem" not in out, out
    assert out["free_before"] >= 200 * 3000, out
    assert out["free_after"] < 64 * 1024, out      # what is left: smaller than any request tried
    assert out["chunks"] >= 1, out
    # The next allocations of that size come from fresh memory, not the holes.
    assert out["reused"] == 0, out
