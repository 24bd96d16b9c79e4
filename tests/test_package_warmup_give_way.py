"""A spare's replay (sandbox.package_warmup) gives way to a Load.

The replay saves the process's global state (sys.path, sys.meta_path,
logging...) and puts it back when it ends. If a script was loaded meanwhile,
putting it back would drop the tenant's import hooks and paths; and a replay
still running takes CPU from the cold start. So a Load cancels it, and it
leaves the global state alone. In-process: the replay's requests are
replaced by one that waits until cancelled.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from sandbox import package_warmup


def test_a_load_cancels_the_replay_and_the_tenants_state_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    started = asyncio.Event()

    async def never_done(app: object, kind: str) -> list[int]:
        started.set()
        await asyncio.Event().wait()
        return []

    monkeypatch.setattr(package_warmup, "FRAMEWORKS", {"fake": (lambda: object(), "asgi")})
    monkeypatch.setattr(package_warmup, "_REHEARSED", ["fake"])
    monkeypatch.setattr(package_warmup, "_KEPT", [])
    monkeypatch.setattr(package_warmup, "_requests", never_done)
    monkeypatch.setattr(package_warmup, "_loading", False)
    tenant_path = "/tenant/bundle"

    async def main() -> None:
        package_warmup.replay()
        (task,) = package_warmup._replays
        await started.wait()
        sys.path.insert(0, tenant_path)  # the Load's own changes
        package_warmup.give_way()
        await asyncio.wait_for(task, 5)  # cancelled at its await: it ends (an optimisation only)
        assert not package_warmup._replays
        assert sys.path[0] == tenant_path, "the replay put its saved sys.path back over the tenant's"

    try:
        asyncio.run(main())
    finally:
        if tenant_path in sys.path:
            sys.path.remove(tenant_path)


def test_without_a_load_the_replay_restores_what_it_saved(monkeypatch: pytest.MonkeyPatch) -> None:
    async def touches_path(app: object, kind: str) -> list[int]:
        sys.path.insert(0, "/rehearsal/leftover")
        return [200]

    monkeypatch.setattr(package_warmup, "FRAMEWORKS", {"fake": (lambda: object(), "asgi")})
    monkeypatch.setattr(package_warmup, "_REHEARSED", ["fake"])
    monkeypatch.setattr(package_warmup, "_KEPT", [])
    monkeypatch.setattr(package_warmup, "_requests", touches_path)
    monkeypatch.setattr(package_warmup, "_loading", False)

    async def main() -> None:
        package_warmup.replay()
        (task,) = package_warmup._replays
        await task
        assert "/rehearsal/leftover" not in sys.path
        assert len(package_warmup._KEPT) == 1, "the app it built stays alive"

    asyncio.run(main())
