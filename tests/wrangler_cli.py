"""The real wrangler, for the tests that drive Corral with it.

``scripts/test`` installs it (with npm, into ``.bench/wrangler``, as
``scripts/wrangler_check`` does) before the suite runs, so these tests run
on every checkout instead of being skipped where it is missing: a platform
drives Corral with Cloudflare's CLI, and a test that is skipped in CI proves
nothing. Run alone, a test installs it on first use.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WRANGLER_DIR = REPO / ".bench" / "wrangler"
WRANGLER = WRANGLER_DIR / "node_modules" / ".bin" / "wrangler"


def ensure_wrangler() -> Path:
    """wrangler's executable, installed with npm if it is not yet; an error
    saying what is missing otherwise (never a skip)."""
    if WRANGLER.exists() and shutil.which("node"):
        return WRANGLER
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("wrangler needs node and npm: run scripts/test (it installs them) or "
                           "apt-get install nodejs npm")
    WRANGLER_DIR.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(WRANGLER_DIR), "wrangler@4"],
                          capture_output=True, text=True, timeout=900)
    if not WRANGLER.exists():
        raise RuntimeError(f"npm install wrangler@4 failed: {(done.stderr or done.stdout)[-500:]}")
    return WRANGLER
