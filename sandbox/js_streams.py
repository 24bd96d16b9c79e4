"""``js.ReadableStream``, ``js.TransformStream`` and ``js.WritableStream``,
as a Python Worker reaches them through Pyodide.

Cloudflare's Streams API docs: "The worker can create a Response object
using a ReadableStream as the body", and the common way to stream a
response a worker produces as it goes is a TransformStream:

    ts = js.TransformStream.new()
    writer = ts.writable.getWriter()
    ctx.waitUntil(produce(writer))   # writer.write(...), then writer.close()
    return Response(ts.readable)

Both readable sides are :class:`sandbox.web_streams.ReadableStream`, the
body stream the runtime already sends and reads (``async for``,
``getReader()``), so they go anywhere a body goes. Chunks are bytes
(``Uint8Array``, ``bytes``, ``str`` as UTF-8): these streams carry bodies.

What is simplified: no backpressure. A write is queued at once and its
promise is already resolved (JavaScript's would wait for a reader), so
code that writes before anyone reads never waits for ever; what it queues
is in its own child's memory, under its own limit.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

from .pyodide_shim import JsException
from .web_streams import ReadableStream


def _member(obj: Any, name: str) -> Any:
    """A member of an underlying source, sink or transformer: a dict (what
    ``to_js`` of one makes, here) or an object with the method."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


async def _call(fn: Any, *args: Any) -> Any:
    """Call a source's or transformer's method; await what it returns if it
    is awaitable (a JavaScript method may return a promise or not)."""
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _chunk(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise JsException("TypeError", "This ReadableStream did not return bytes: a body stream's chunks "
                                   f"are Uint8Array, bytes or str, not {type(value).__name__}")


def _retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _resolved() -> asyncio.Future:
    future = asyncio.get_event_loop().create_future()
    future.set_result(None)
    return future


class _Chunks:
    """The queue between a stream's producer (a controller, a writer) and its reader."""

    __slots__ = ("queue", "closed", "error", "_wake")

    def __init__(self) -> None:
        self.queue: collections.deque[bytes] = collections.deque()
        self.closed = False
        self.error: BaseException | None = None
        self._wake: asyncio.Event | None = None

    def put(self, value: Any) -> None:
        if self.closed or self.error is not None:
            raise JsException("TypeError", "Cannot enqueue to a closed or errored stream")
        self.queue.append(_chunk(value))
        self._signal()

    def close(self) -> None:
        self.closed = True
        self._signal()

    def fail(self, reason: Any) -> None:
        if self.error is None:
            self.error = reason if isinstance(reason, BaseException) else JsException("Error", str(reason))
        self._signal()

    def _signal(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def wait(self) -> None:
        self._wake = asyncio.Event()
        await self._wake.wait()
        self._wake = None


class ReadableStreamDefaultController:
    """``controller.enqueue(chunk)``, ``close()``, ``error(e)``, ``desiredSize``."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: _Chunks) -> None:
        self._chunks = chunks

    def enqueue(self, chunk: Any) -> None:
        self._chunks.put(chunk)

    def close(self) -> None:
        self._chunks.close()

    def error(self, reason: Any = None) -> None:
        self._chunks.fail(reason)

    @property
    def desiredSize(self) -> int:  # noqa: N802 - JavaScript's name
        return 1 - len(self._chunks.queue)

    # A TransformStream's controller has these names too.
    def terminate(self) -> None:
        self._chunks.close()


async def _read(chunks: _Chunks, pull: Any = None, controller: Any = None) -> AsyncIterator[bytes]:
    """The chunks as they come; ``pull(controller)`` asked for more whenever
    the queue is empty (a source with no ``pull`` pushes them)."""
    while True:
        if chunks.queue:
            yield chunks.queue.popleft()
            continue
        if chunks.error is not None:
            raise chunks.error
        if chunks.closed:
            return
        if pull is not None:
            await _call(pull, controller)
            if chunks.queue or chunks.closed or chunks.error is not None:
                continue
        await chunks.wait()


class _ReadableStreamClass:
    """``js.ReadableStream.new(underlyingSource)``: ``start``, ``pull`` and
    ``cancel`` of the source, called as JavaScript calls them."""

    @staticmethod
    def new(source: Any = None, strategy: Any = None) -> ReadableStream:
        chunks = _Chunks()
        controller = ReadableStreamDefaultController(chunks)
        start, pull, cancel = (_member(source, n) for n in ("start", "pull", "cancel"))

        async def produced() -> AsyncIterator[bytes]:
            try:
                if start is not None:
                    await _call(start, controller)
                async for chunk in _read(chunks, pull, controller):
                    yield chunk
            except GeneratorExit:
                if cancel is not None:
                    result = cancel(None)
                    if inspect.isawaitable(result):
                        asyncio.ensure_future(result)
                raise

        return ReadableStream(produced())


class WritableStreamDefaultWriter:
    """``writer.write(chunk)``, ``close()``, ``abort(reason)``, ``releaseLock()``,
    ``ready``, ``closed`` and ``desiredSize``, each promise already resolved
    (see the module docstring)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: WritableStream) -> None:
        self._stream: WritableStream | None = stream

    def _own(self) -> WritableStream:
        if self._stream is None:
            raise JsException("TypeError", "This writer has released its lock")
        return self._stream

    def write(self, chunk: Any = None) -> Any:
        return self._own()._write(chunk)

    def close(self) -> Any:
        return self._own()._close()

    def abort(self, reason: Any = None) -> Any:
        return self._own()._abort(reason)

    def releaseLock(self) -> None:  # noqa: N802 - JavaScript's name
        if self._stream is not None:
            self._stream._writer = None
            self._stream = None

    release_lock = releaseLock

    @property
    def ready(self) -> asyncio.Future:
        return _resolved()

    @property
    def closed(self) -> Any:
        return self._own()._closed_future()

    @property
    def desiredSize(self) -> int:  # noqa: N802
        return 1


class WritableStream:
    """The writable side: a transform's (``TransformStream().writable``) or
    one over an underlying sink (``js.WritableStream.new({write, close})``)."""

    __slots__ = ("_sink", "_writer", "_done", "_steps", "_on_error")

    def __init__(self, sink: Any, on_error: Callable[[BaseException], None] | None = None) -> None:
        self._sink = sink
        self._writer: WritableStreamDefaultWriter | None = None
        self._done: asyncio.Future | None = None
        #: The sink's calls, one after another in the order made.
        self._steps: asyncio.Future | None = None
        #: Told of a sink call that failed (a transform's: its readable side fails too).
        self._on_error = on_error

    @property
    def locked(self) -> bool:
        return self._writer is not None

    def getWriter(self) -> WritableStreamDefaultWriter:  # noqa: N802
        if self._writer is not None:
            raise JsException("TypeError", "WritableStream is locked to a writer")
        self._writer = WritableStreamDefaultWriter(self)
        return self._writer

    get_writer = getWriter

    def _then(self, fn: Any, *args: Any) -> Any:
        """Run a sink call after those before it: a promise of its end."""
        before = self._steps

        async def step() -> None:
            if before is not None:
                await before  # a failed one fails every call after it, as JavaScript's stream errors
            try:
                await _call(fn, *args)
            except BaseException as exc:
                if self._on_error is not None:
                    self._on_error(exc)
                raise

        self._steps = asyncio.ensure_future(step())
        # A write nobody awaited that failed: its error is the stream's (the
        # readable side has it), not "never retrieved" noise in the logs.
        self._steps.add_done_callback(_retrieved)
        return self._steps

    def _write(self, chunk: Any) -> Any:
        write = _member(self._sink, "write")
        return self._then(write, chunk) if write is not None else _resolved()

    def _close(self) -> Any:
        close = _member(self._sink, "close")
        done = self._then(close) if close is not None else (self._steps or _resolved())
        self._done = done
        return done

    def _abort(self, reason: Any) -> Any:
        abort = _member(self._sink, "abort")
        return self._then(abort, reason) if abort is not None else _resolved()

    def _closed_future(self) -> Any:
        return self._done if self._done is not None else asyncio.get_event_loop().create_future()

    async def close(self) -> None:
        await self._close()


class _Transform:
    """A TransformStream's sink: its writes go through ``transform`` (the
    identity by default) to the readable side, and ``close`` ends it after
    ``flush``."""

    __slots__ = ("_chunks", "_controller", "_transform", "_flush")

    def __init__(self, transformer: Any, chunks: _Chunks) -> None:
        self._chunks = chunks
        self._controller = ReadableStreamDefaultController(chunks)
        self._transform = _member(transformer, "transform")
        self._flush = _member(transformer, "flush")

    async def write(self, chunk: Any) -> None:
        if self._transform is None:
            self._chunks.put(chunk)
        else:
            await _call(self._transform, chunk, self._controller)

    async def close(self) -> None:
        if self._flush is not None:
            await _call(self._flush, self._controller)
        self._chunks.close()

    async def abort(self, reason: Any) -> None:
        self._chunks.fail(reason)


class TransformStream:
    """``js.TransformStream.new(transformer)``: ``readable`` and ``writable``."""

    __slots__ = ("readable", "writable")

    def __init__(self, transformer: Any = None) -> None:
        chunks = _Chunks()
        # A transform that raises fails the readable side too, as JavaScript's does.
        self.writable = WritableStream(_Transform(transformer, chunks), on_error=chunks.fail)
        self.readable = ReadableStream(_read(chunks))


class _TransformStreamClass:
    @staticmethod
    def new(transformer: Any = None, *strategies: Any) -> TransformStream:
        return TransformStream(transformer)


class _WritableStreamClass:
    @staticmethod
    def new(sink: Any = None, strategy: Any = None) -> WritableStream:
        return WritableStream(sink)


JS_NAMES = {"ReadableStream": _ReadableStreamClass(), "TransformStream": _TransformStreamClass(),
            "WritableStream": _WritableStreamClass()}
