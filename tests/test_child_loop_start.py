"""A jailed child's event loop finalizes a tenant's async generators as asyncio does.

A generator dropped unfinished (a ``break`` out of ``async for``, a client
gone mid-stream) is closed by the running loop's finalizer hook, which
schedules its ``aclose()``: its ``finally`` may then await (release a lock,
flush a stream). Without the hooks CPython closes it synchronously, and an
await in that ``finally`` fails ("async generator ignored GeneratorExit").
The children's loop is prepared in the zygote and turned by its own
``_run_once``; these run real scripts in real children to check that it is
still a running asyncio loop with its hooks in place.
"""

from __future__ import annotations

from tests.harness import Corral

ABANDONED = '''
import asyncio
import sys
from workers import Response, WorkerEntrypoint

closed = []

async def numbers():
    try:
        for n in range(10):
            yield n
    finally:
        await asyncio.sleep(0)  # only a loop's finalizer can run this to its end
        closed.append("closed")

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/abandon"):
            async for n in numbers():
                break  # the generator is dropped unfinished
            return Response("abandoned")
        if request.url.endswith("/hooks"):
            loop = asyncio.get_running_loop()
            hooks = sys.get_asyncgen_hooks()
            return Response.json({
                "running": loop.is_running(),
                "firstiter": getattr(hooks.firstiter, "__self__", None) is loop,
                "finalizer": getattr(hooks.finalizer, "__self__", None) is loop,
            })
        for _ in range(100):  # aclose() takes a few turns of the loop, if it was scheduled
            if closed:
                break
            await asyncio.sleep(0)
        return Response(",".join(closed) or "open")
'''


def test_an_abandoned_async_generator_is_closed_by_the_childs_loop(corral: Corral) -> None:
    corral.deploy("agen", ABANDONED)
    assert corral.request("/abandon", host="agen.localhost").text == "abandoned"
    assert corral.request("/state", host="agen.localhost").text == "closed"


def test_the_childs_loop_is_running_with_its_own_generator_hooks(corral: Corral) -> None:
    corral.deploy("agen-hooks", ABANDONED)
    resp = corral.request("/hooks", host="agen-hooks.localhost")
    assert resp.status == 200, resp
    assert resp.json() == {"running": True, "firstiter": True, "finalizer": True}
