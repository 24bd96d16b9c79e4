"""Body streams inside the child, with the protocol's credit rules.

An :class:`IncomingBody` is a body the supervisor streams to us (a request
body, a subrequest's response body). It asks for data only when read: the
first read grants a window of credit, and each consumed chunk is credited
back. An unread body therefore never crosses the channel, which is what lets
a dispatcher hand a body on by reference.

An :class:`OutgoingBody` sends a body to the supervisor, never more than the
supervisor has granted.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, AsyncIterator

from protocol.flow import ReceiveWindow
from protocol.messages import MAX_CHUNK, Abort, BodyChunk, Credit

if TYPE_CHECKING:
    from .channel import Channel


class StreamAborted(Exception):
    """The other side ended the stream before its end."""


class IncomingBody:
    """A pull-based body arriving in chunks on stream ``stream_id``."""

    def __init__(self, channel: "Channel", stream_id: int) -> None:
        self._channel = channel
        self.stream_id = stream_id
        self._chunks: deque[bytes] = deque()
        self._ended = False
        self._error: str | None = None
        self._window = ReceiveWindow()
        self._waiter: asyncio.Future | None = None
        self.started = False  # has anyone pulled (so it can no longer be passed on)

    # -- fed by the runtime ------------------------------------------------
    def feed(self, data: bytes, end: bool) -> None:
        if data:
            self._window.received(len(data))  # the supervisor is trusted: a bug raises
            self._chunks.append(data)
        if end:
            self._ended = True
        self._wake()

    def abort(self, reason: str) -> None:
        self._error = reason or "stream aborted"
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- read by tenant code ----------------------------------------------
    async def read_chunk(self) -> bytes:
        """Next chunk, ``b""`` at the end."""
        self.started = True
        while not self._chunks:
            if self._error is not None:
                raise StreamAborted(self._error)
            if self._ended:
                return b""
            grant = self._window.top_up()
            if grant:
                self._channel.send(Credit(self.stream_id, grant))
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._chunks.popleft()

    async def read_all(self, limit: int | None = None) -> bytes:
        parts = []
        size = 0
        while chunk := await self.read_chunk():
            size += len(chunk)
            if limit is not None and size > limit:
                raise ValueError(f"body larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def __aiter__(self) -> AsyncIterator[bytes]:  # type: ignore[override]
        while chunk := await self.read_chunk():
            yield chunk

    def cancel(self) -> None:
        """We will not read further: tell the producer to stop."""
        if not self._ended:
            self._ended = True
            self._channel.send(Abort(self.stream_id, "consumer gone"))


class OutgoingBody:
    """Credit-limited sending of one body on stream ``stream_id``."""

    def __init__(self, channel: "Channel", stream_id: int) -> None:
        self._channel = channel
        self.stream_id = stream_id
        self._credit = 0
        self._waiter: asyncio.Future | None = None
        self.aborted: str | None = None

    def grant(self, nbytes: int) -> None:
        self._credit += nbytes
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def abort(self, reason: str) -> None:
        self.aborted = reason or "stream aborted"
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            while self._credit <= 0:
                if self.aborted is not None:
                    raise StreamAborted(self.aborted)
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            if self.aborted is not None:
                raise StreamAborted(self.aborted)
            size = min(len(view), self._credit, MAX_CHUNK)
            self._channel.send(BodyChunk(self.stream_id, bytes(view[:size])))
            self._credit -= size
            view = view[size:]

    def end(self) -> None:
        if self.aborted is None:
            self._channel.send(BodyChunk(self.stream_id, b"", True))

    def fail(self, reason: str) -> None:
        if self.aborted is None:
            self._channel.send(Abort(self.stream_id, reason))
