"""One rehearsal request in the zygote, so children inherit a warmed interpreter.

CPython creates a lot of state lazily on first use: method and attribute
caches, interned strings, asyncio's and msgspec's internal tables. Whatever
a child creates on its first request is private to that child, and every
object it touches for the first time copies a 4 KiB page from the zygote.
Running one complete invocation through the real runtime here, before
``gc.freeze()``, moves that first-use work into the zygote, where it is done
once and shared by every child: less private memory per tenant and a faster
first request.

The rehearsal uses a socketpair instead of the supervisor and leaves nothing
behind: the script's modules, the import hook and the replaced streams are
all removed again.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

from protocol.framing import FrameEncoder, supervisor_decoder
from protocol.messages import Inline, Invoke, InvokeDone, Load, ScriptBundle, TextBinding

#: The rehearsal script's bundle: a directory of the runtime, inside the file view.
REHEARSAL_BUNDLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rehearsal")
REHEARSAL_MAIN = "worker.py"

#: How many rehearsals the zygote runs. CPython 3.11 quickens a function
#: (rewrites its bytecode in place) on its 8th call and counts the calls
#: before that in the code object: a function a child runs that the zygote
#: ran fewer times writes to (so copies) the page of its code object. Ten
#: rehearsals cost ~10 ms once and took ~150 KB off every child (measured
#: with smaps_rollup, spare and served children alike).
REHEARSALS = 10


def rehearse() -> None:
    """Serve one request in-process; raises if the runtime is broken."""
    from . import child, loader, logs, workers

    saved = (sys.stdout, sys.stderr, list(sys.meta_path))
    ours, theirs = socket.socketpair()
    loop = asyncio.new_event_loop()
    try:
        theirs.setblocking(False)
        runtime = child.Runtime(loop)
        workers._runtime = runtime
        logs.set_sink(runtime.log)
        sys.stdout, sys.stderr = logs.LineWriter("log"), logs.LineWriter("error")
        channel = child.Channel(theirs, loop, runtime.on_message, runtime.on_closed)
        runtime.attach(channel)
        encoder = FrameEncoder()
        bundle = ScriptBundle("", "warmup", "0", REHEARSAL_MAIN, REHEARSAL_BUNDLE,
                              [TextBinding("WARM", "1")])
        ours.sendall(encoder.encode(Load(bundle)))
        ours.sendall(encoder.encode(Invoke(1, b"POST", "http://warmup.invalid/",
                                           [(b"user-agent", b"corral")], Inline(b"{}"))))
        decoder = supervisor_decoder()
        ours.setblocking(False)
        done = False

        async def pump() -> None:
            nonlocal done
            while not done:
                await asyncio.sleep(0)
                try:
                    data = ours.recv(65536)
                except BlockingIOError:
                    continue
                for message in decoder.feed(data):
                    done = done or isinstance(message, InvokeDone)

        loop.run_until_complete(asyncio.wait_for(pump(), 5))
    finally:
        loop.close()
        ours.close()
        theirs.close()
        workers._runtime = None
        logs.set_sink(lambda *line: None)
        sys.stdout, sys.stderr = saved[0], saved[1]
        sys.meta_path[:] = saved[2]
        loader.unload(REHEARSAL_BUNDLE, REHEARSAL_MAIN)  # the rehearsal script; stdlib modules stay
        asyncio.set_event_loop(None)


def prefault() -> None:
    """Run in a package zygote's spare while it waits, before any Load is read.

    A forked child pays a copy-on-write page fault for every page it first
    writes. Here the spare loads (and drops) a dummy script, then replays its
    framework rehearsals (:func:`sandbox.package_warmup.replay`): a FastAPI
    tenant's cold start is mostly those faults, and this takes ~1,500 of them
    off it (7 ms instead of ~10 ms with the replay alone).

    A base spare does nothing here. The dummy load cost it 1-2 ms of CPU and
    ~0.2 MB of private memory for ~1 ms off a paced cold start; in a storm of
    first requests, where spares are taken as fast as they are born, it made
    the storm longer and its p99 worse (139-171 ms without it, 242 ms with,
    300 tenants from 8 connections).
    """
    package_warmup = sys.modules.get(f"{__package__}.package_warmup")
    if package_warmup is None:
        return
    from . import loader

    saved = list(sys.meta_path)
    try:
        loader.load(REHEARSAL_BUNDLE, REHEARSAL_MAIN)
    finally:
        sys.meta_path[:] = saved
        loader.unload(REHEARSAL_BUNDLE, REHEARSAL_MAIN)
    package_warmup.replay()


def give_way() -> None:
    """A Load arrived: warm-up still running in this spare stops (see
    :func:`sandbox.package_warmup.give_way`)."""
    package_warmup = sys.modules.get(f"{__package__}.package_warmup")
    if package_warmup is not None:
        package_warmup.give_way()
