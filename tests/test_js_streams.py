"""``js.ReadableStream``, ``js.TransformStream`` and ``js.WritableStream``
(sandbox.js_streams), over a real ``corral serve``.

Cloudflare's Streams API docs make a response body from a ReadableStream,
and stream one a worker writes as it goes through a TransformStream's
writer; both constructors were refused ("needs Pyodide's JavaScript host").
"""

from __future__ import annotations

import pytest

from tests.test_cf_gaps import deploy

WORKER = r'''
import asyncio
import js
from pyodide.ffi import to_js
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = request.url.split("/", 3)[3]
        if path == "ts":
            ts = js.TransformStream.new()
            writer = ts.writable.getWriter()
            async def produce():
                enc = js.TextEncoder.new()
                for i in range(3):
                    await writer.write(enc.encode(f"chunk {i}\n"))
                    await asyncio.sleep(0)
                await writer.close()
            self.ctx.waitUntil(produce())
            return Response(ts.readable, headers={"content-type": "text/plain"})
        if path == "upper":
            def transform(chunk, controller):
                controller.enqueue(chunk.upper())
            def flush(controller):
                controller.enqueue(b"[end]")
            ts = js.TransformStream.new(to_js({"transform": transform, "flush": flush}))
            writer = ts.writable.getWriter()
            writer.write(b"abc ")
            writer.write("def ")
            writer.close()
            return Response(ts.readable)
        if path == "rs":
            state = {"n": 0}
            def pull(controller):
                if state["n"] == 3:
                    controller.close()
                else:
                    controller.enqueue(f"pulled {state['n']}\n")
                    state["n"] += 1
            return Response(js.ReadableStream.new(to_js({"pull": pull})))
        if path == "start":
            async def start(controller):
                controller.enqueue(b"one ")
                controller.enqueue(b"two")
                controller.close()
            stream = js.ReadableStream.new({"start": start})
            reader = stream.getReader()
            got = []
            while True:
                part = await reader.read()
                if part.done:
                    break
                got.append(part.value.to_bytes().decode())
            return Response("".join(got))
        if path == "error":
            def start(controller):
                controller.error(js.Error.new("the source failed"))
            stream = js.ReadableStream.new({"start": start})
            try:
                async for _ in stream:
                    pass
            except Exception as exc:
                return Response(f"{type(exc).__name__}: {exc}")
            return Response("no error")
        if path == "throws":
            def transform(chunk, controller):
                raise ValueError("the transform failed")
            ts = js.TransformStream.new({"transform": transform})
            writer = ts.writable.getWriter()
            writer.write(b"x")
            writer.close()
            try:
                async for _ in ts.readable:
                    pass
            except Exception as exc:
                return Response(f"{type(exc).__name__}: {exc}")
            return Response("no error")
        return Response("?", status=404)
'''


@pytest.fixture(scope="module")
def streams(corral):
    deploy(corral, "streams", WORKER)
    return corral


@pytest.mark.parametrize("path, body", [
    ("ts", "chunk 0\nchunk 1\nchunk 2\n"),       # a writer fed from waitUntil, the readable returned
    ("upper", "ABC DEF [end]"),                  # a transformer's transform and flush
    ("rs", "pulled 0\npulled 1\npulled 2\n"),    # an underlying source's pull
    ("start", "one two"),                        # its start, read with getReader()
    ("error", "JsException: the source failed"),  # controller.error() fails the reader
    ("throws", "ValueError: the transform failed"),  # a transform that raises fails the readable side
])
def test_streams_made_in_a_worker_are_bodies(streams, path: str, body: str) -> None:
    r = streams.request(f"/{path}", host="streams.localhost")
    assert (r.status, r.text) == (200, body), r
