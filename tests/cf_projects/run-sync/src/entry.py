"""Synchronous code that awaits: run_sync suspends only the calling invocation."""
import asyncio

from pyodide.ffi import run_sync
from workers import Response, WorkerEntrypoint

GATE = asyncio.Event()


def blocking_wait():
    # Sync code: waits for another request to open the gate. If run_sync blocked
    # the child's loop, that request could never run.
    run_sync(asyncio.wait_for(GATE.wait(), 20))
    return "released"


def sync_sleep_sum(n):
    return sum(run_sync(asyncio.sleep(0, result=i)) for i in range(n))


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = request.url.split("/", 3)[-1]
        if path == "wait":
            return Response(blocking_wait())
        if path == "open":
            GATE.set()
            return Response("opened")
        if path == "error":
            async def boom():
                raise ValueError("from the awaitable")
            try:
                run_sync(boom())
            except ValueError as exc:
                return Response(f"caught {exc}")
        return Response(str(sync_sleep_sum(5)))
