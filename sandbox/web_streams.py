"""A body as both languages read it: ``async for chunk in response.body`` and
JavaScript's ``response.body.getReader()`` / ``await reader.read()``.

Cloudflare's Python SDK hands Python code a JavaScript ``ReadableStream``, so
code written for it (SSE clients, the SDK's own tests) reads chunks with a
reader; code written for Corral iterates. One object does both, over the same
chunks: what one way reads the other does not see again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from .pyodide_shim import Uint8Array
from .sdk_types import JsDict


class ReadableStream:
    """``Response.body`` / ``Request.body``: an async iterator of bytes with
    ``getReader()``, ``locked`` and ``cancel()``."""

    __slots__ = ("_chunks", "_owner", "_reader", "coding", "source")

    def __init__(self, chunks: AsyncIterator[bytes], source: Any = None, owner: Any = None,
                 coding: str | None = None) -> None:
        self._chunks = chunks
        #: The content coding its ``source`` is in (its chunks are decoded).
        self.coding = coding
        #: The Request or Response whose body this is: its ``bodyUsed`` turns
        #: true at the first read, as JavaScript's does.
        self._owner = owner
        self._reader: ReadableStreamDefaultReader | None = None
        #: What it reads, whole, when known (bytes, or an ``IncomingBody``):
        #: handed on unread, it is sent as that, so that its length stays
        #: known (see workers._encode_body); dropped at the first read.
        self.source = source

    def __aiter__(self) -> ReadableStream:
        return self

    async def __anext__(self) -> Uint8Array:
        """The next chunk, a ``Uint8Array`` as in Pyodide (bytes with
        ``to_bytes()``: the SDK's own ASGI loop calls it)."""
        self.source = None  # part of it read: no longer the whole of its source
        if self._owner is not None:
            self._owner._body_used = True
            self._owner = None
        chunk = await self._chunks.__anext__()
        return chunk if type(chunk) is Uint8Array else Uint8Array(chunk)

    @property
    def locked(self) -> bool:
        return self._reader is not None

    def getReader(self, options: Any = None) -> ReadableStreamDefaultReader:  # noqa: N802
        if self._reader is not None:
            raise TypeError("ReadableStream is locked to a reader")
        self._reader = ReadableStreamDefaultReader(self)
        return self._reader

    get_reader = getReader

    async def cancel(self, reason: Any = None) -> None:
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()

    aclose = cancel


class ReadableStreamDefaultReader:
    """``read()`` gives ``{done, value}`` with the chunk as a ``Uint8Array``."""

    __slots__ = ("_stream",)

    def __init__(self, stream: ReadableStream) -> None:
        self._stream: ReadableStream | None = stream

    async def read(self) -> JsDict:
        if self._stream is None:
            raise TypeError("this reader has released its lock")
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            return JsDict(done=True, value=None)
        return JsDict(done=False, value=chunk)

    def releaseLock(self) -> None:  # noqa: N802
        if self._stream is not None:
            self._stream._reader = None
            self._stream = None

    release_lock = releaseLock

    async def cancel(self, reason: Any = None) -> None:
        if self._stream is not None:
            await self._stream.cancel(reason)
