"""A ``fetch()`` whose streamed request body raises fails with that error.

The request body and the call share an id on the channel; the body's
failure (an Abort of that id) was taken for the tenant giving up on the
call, which was cancelled and never answered: a generator raising after
its first chunk hung ``fetch()`` until the wall-time limit, and one
raising before it came back as the platform's "internal error", logged as
the platform's fault. In workerd a request body stream's error rejects
``fetch()``. Cancelling a fetch mid-body still cancels the call.
"""

from __future__ import annotations

import pytest

from tests.harness import Corral

WORKER = '''import asyncio
from workers import Response, WorkerEntrypoint, fetch

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        target = request.headers.get("x-target")
        mode = request.url.rsplit("/", 1)[1]

        async def body():
            if mode == "late":
                yield b"first chunk"
                await asyncio.sleep(0)
            raise ValueError("the tenant's own " + mode + " failure")

        if mode == "cancelled":
            async def forever():
                yield b"a"
                await asyncio.sleep(3600)
                yield b"b"
            task = asyncio.ensure_future(fetch(target, method="POST", body=forever()))
            await asyncio.sleep(0.2)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                return Response("cancelled")
        try:
            await fetch(target, method="POST", body=body())
        except Exception as exc:
            return Response(f"{type(exc).__name__}: {exc}")
        return Response("no error", status=500)
'''


@pytest.mark.parametrize("mode", ["late", "early"])
def test_a_request_body_that_raises_fails_the_fetch_with_its_error(corral: Corral, upstream, mode: str) -> None:
    corral.deploy("bodyerr", WORKER)
    r = corral.request(f"/{mode}", host="bodyerr.localhost", headers={"x-target": upstream.url("/echo/x")},
                       timeout=20)
    assert r.status == 200, r
    assert f"ValueError: the tenant's own {mode} failure" in r.text, r.text
    assert "internal error" not in r.text
    assert "call.failed" not in corral.log()


def test_a_fetch_cancelled_mid_body_is_still_cancelled(corral: Corral, upstream) -> None:
    corral.deploy("bodyerr", WORKER)
    r = corral.request("/cancelled", host="bodyerr.localhost", headers={"x-target": upstream.url("/echo/x")},
                       timeout=20)
    assert (r.status, r.text) == (200, "cancelled"), r
