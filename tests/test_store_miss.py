"""A store miss is read in a worker thread: other tenants are served meanwhile.

An in-process ``Supervisor`` (real zygote, real jailed children, real HTTP),
whose store read of one script blocks on a ``threading.Event`` until the test
lets it go. If that read ran on the event loop, nothing else could be served
until then; the test shows a request to a warm script is answered while the
read is held, through both paths that read scripts: the ingress (a route to a
platform script) and a dispatcher's call (a script in a dispatch namespace).
No sleeps, no timing assertions: only the order of events.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from supervisor.config import OutboundConfig, PoolConfig, ServeConfig
from supervisor.model import PLATFORM, Binding, ScriptRecord, content_version
from supervisor.server import Supervisor
from supervisor.store.store import NOT_CACHED

HELLO = '''
from workers import Response
async def on_fetch(request, env):
    return Response("NAME")
'''

DISPATCHER = '''
from workers import WorkerEntrypoint
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await self.env.dispatcher.get(request.headers.get("host").split(".")[0]).fetch(request)
'''

#: How long the held read waits before giving up (a safety net, not a timing
#: assertion: the test fails on *that it expired*, not on how long anything took).
HOLD_S = 30.0


def _record(namespace: str, name: str, source: str, bindings: list | None = None) -> ScriptRecord:
    modules = {"worker.py": source.replace("NAME", name).encode()}
    typed = msgspec.convert(bindings or [], list[Binding])
    return ScriptRecord(namespace=namespace, name=name, main_module="worker.py", modules=modules,
                        bindings=typed, version=content_version("worker.py", modules, typed, ""))


async def _get(port: int, host: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("path", ["ingress", "dispatch"])
def test_a_store_miss_does_not_block_the_event_loop(tmp_path: Path, path: str) -> None:
    config = ServeConfig(http="127.0.0.1:0", state_dir=str(tmp_path / "state"),
                         pool=PoolConfig(spares=2), outbound=OutboundConfig(allow_private_networks=True))
    supervisor = Supervisor(config)
    store = supervisor.store
    if path == "ingress":
        # Each host routes to a platform script of its own.
        for name in ("warm", "cold"):
            store.put_script(_record(PLATFORM, name, HELLO))
            store.add_route(f"{name}.test/*", name)
    else:
        # One dispatcher, warm all along; the user scripts live in a namespace.
        binding = {"type": "dispatch_namespace", "name": "dispatcher", "namespace": "default"}
        store.put_script(_record(PLATFORM, "dispatcher", DISPATCHER, [binding]))
        store.add_route("*/*", "dispatcher")
        for name in ("warm", "cold"):
            store.put_script(_record("default", name, HELLO))

    read = store.get_script
    entered, release = threading.Event(), threading.Event()
    expired: list[str] = []

    def held_read(namespace: str, name: str) -> ScriptRecord | None:
        if name == "cold":
            entered.set()
            if not release.wait(HOLD_S):
                expired.append(f"the read of {namespace}/{name} was never released")
        return read(namespace, name)

    store.get_script = held_read  # type: ignore[method-assign]

    # Startup reads every script in the background (the record cache's
    # warm-up, cron schedules, queue consumers): "cold" may be cached before
    # its request comes, or one of those reads may be the one held. So the
    # request path is made to miss "cold" until the read is let go, and the
    # test waits for that request's own load before it checks anything.
    lookup = supervisor.scripts
    cached, load = lookup.cached, lookup.load
    cold_loading = trio.Event()

    def missing_cold(namespace: str, name: str) -> Any:
        return NOT_CACHED if name == "cold" and not release.is_set() else cached(namespace, name)

    async def noted_load(namespace: str, name: str) -> ScriptRecord | None:
        if name == "cold":
            cold_loading.set()
        return await load(namespace, name)

    lookup.cached = missing_cold  # type: ignore[method-assign]
    lookup.load = noted_load  # type: ignore[method-assign]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(supervisor.run)
            assert await _get(port, "warm.test") == (200, b"warm")  # now warm (and cached)

            cold_answered = trio.Event()
            answers: dict[str, tuple[int, bytes]] = {}

            async def cold() -> None:
                answers["cold"] = await _get(port, "cold.test")
                cold_answered.set()

            nursery.start_soon(cold)
            # The cold request misses and loads its script; that read is
            # now held in a worker thread ...
            await cold_loading.wait()
            assert await trio.to_thread.run_sync(entered.wait, HOLD_S)
            # ... and a warm tenant is served all the same.
            assert await _get(port, "warm.test") == (200, b"warm")
            assert not cold_answered.is_set()
            release.set()
            await cold_answered.wait()
            assert answers["cold"] == (200, b"cold")
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        release.set()
    assert expired == [], "the store miss blocked the event loop"
