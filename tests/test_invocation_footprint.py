"""scripts/invocation_footprint drives the child's real runtime; its figures are not asserted.

What is checked is that the harness still serves real invocations through
``sandbox.child`` (a change to the runtime's wiring breaks it here, not in
the middle of a measurement) and that its count of what an invocation runs
sees the runtime's code, the SDK's and the tenant's own handler.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_footprint_script_serves_invocations_and_counts_whose_code_they_run() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "invocation_footprint"),
         "--invocations", "2", "--rounds", "1", "--json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["times"]) == {"hot", "caches cold", "TLB cold"}
    for row in report["times"].values():
        assert row["invocation_us"] > 0
    python = report["runs"]["python"]
    assert python["tenant"]["calls"] == 1  # the bench tenant's fetch, once
    assert python["runtime (sandbox/, protocol/)"]["functions"] > 0
    assert python["SDK (sandbox/workers*)"]["functions"] > 0  # its Response
    assert report["runs"]["c_calls"] > 0


def test_the_footprint_script_refuses_a_count_below_one() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "invocation_footprint"), "--rounds", "0"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--invocations and --rounds must be at least 1" in done.stderr
