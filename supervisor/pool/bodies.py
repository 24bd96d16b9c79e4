"""Bodies as the supervisor moves them: sources, and streams to and from children.

A body is a :class:`BodySource`: something to ``receive()`` chunks from. The
supervisor never needs more than that, whether the bytes come from an HTTP
client, a child, or an upstream server, and it never holds more than one
credit window of any body (see the flow-control notes in
:mod:`protocol.messages`).

* :class:`ChildBody`: a body a child streams to us. Reading it grants the
  child credit; not reading it leaves the bytes in the child.
* :class:`ChildSink`: a body we stream to a child. Nothing is read from its
  source until the child grants credit, and until then the source can be
  taken back (``body_ref``) and handed to someone else.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Awaitable, Callable, Protocol

import trio

from protocol.flow import CreditExceeded, ReceiveWindow
from protocol.messages import MAX_CHUNK, STREAM_WINDOW, Abort, BodyChunk, Credit


class BodyError(Exception):
    """A body ended abnormally (its producer failed or went away)."""


class ProtocolViolation(Exception):
    """A child broke the stream rules (sent beyond its credit, ...)."""


class BodySource(Protocol):
    async def receive(self) -> bytes:
        """The next chunk; ``b""`` once the body is complete."""

    def close(self) -> None:
        """The consumer is gone; release the producer. Idempotent."""


class ChildLink(Protocol):
    """What a body or an invocation needs of the child it belongs to.

    ``ChildProcess`` is the one implementation; naming only this much keeps
    bodies and invocations below it (no import loop) and says what they touch.
    """

    #: Bodies the child streams to the supervisor, by stream id.
    incoming: dict[int, "ChildBody"]
    #: Bodies the supervisor streams to the child, by stream id.
    sinks: dict[int, "ChildSink"]

    def send(self, message: Any) -> None:
        """Queue a frame to the child (dropped once it is dead)."""

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run a task that must not outlive the child."""


class BytesBody:
    """A body already in memory."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def receive(self) -> bytes:
        data, self._data = self._data, b""
        return data

    def close(self) -> None:
        self._data = b""


EMPTY = b""


async def read_all(source: BodySource, limit: int) -> bytes:
    """Buffer a whole body, refusing more than ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    while chunk := await source.receive():
        size += len(chunk)
        if size > limit:
            source.close()
            raise BodyError(f"body larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


class ChildBody:
    """Bytes a child streams to the supervisor on stream ``stream_id``."""

    __slots__ = ("_child", "stream_id", "_chunks", "_window", "_ended", "_error", "_event",
                 "_closed")

    def __init__(self, child: ChildLink, stream_id: int) -> None:
        self._child = child
        self.stream_id = stream_id
        self._chunks: deque[bytes] = deque()
        self._window = ReceiveWindow()
        self._ended = False
        self._error: str | None = None
        self._event: trio.Event | None = None
        self._closed = False

    # -- fed by the child's reader (synchronous) --------------------------
    def feed(self, data: bytes, end: bool) -> None:
        if data:
            try:
                self._window.received(len(data))
            except CreditExceeded as exc:
                raise ProtocolViolation(f"stream {self.stream_id}: {exc}") from None
            if not self._closed:
                self._chunks.append(data)
        if end:
            self._ended = True
        self._wake()

    def fail(self, reason: str) -> None:
        self._error = reason or "the worker aborted the body"
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    # -- read by whoever consumes it --------------------------------------
    async def receive(self) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise BodyError(self._error)
            if self._ended:
                return b""
            grant = self._window.top_up()
            if grant:
                self._child.send(Credit(self.stream_id, grant))
            self._event = event = trio.Event()
            await event.wait()
        return self._chunks.popleft()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._chunks.clear()
        if not self._ended:
            self._ended = True
            self._child.send(Abort(self.stream_id, "consumer gone"))
        self._child.incoming.pop(self.stream_id, None)


class ChildSink:
    """Streams ``source`` to a child on stream ``stream_id``, within its credit.

    The pump task starts at the first credit; before that the sink can be
    taken back with :meth:`take` (the child passed the body on by reference).
    """

    __slots__ = ("_child", "stream_id", "source", "_credit", "_event", "started", "_cancel")

    def __init__(self, child: ChildLink, stream_id: int, source: BodySource) -> None:
        self._child = child
        self.stream_id = stream_id
        self.source = source
        self._credit = 0
        self._event: trio.Event | None = None
        self.started = False
        self._cancel: trio.CancelScope | None = None

    def grant(self, nbytes: int) -> None:
        if nbytes <= 0 or nbytes > 64 * STREAM_WINDOW:
            raise ProtocolViolation(f"stream {self.stream_id}: credit of {nbytes} bytes")
        self._credit += nbytes
        if not self.started:
            self.started = True
            self._child.spawn(self._pump)
        elif self._event is not None:
            self._event.set()
            self._event = None

    def take(self) -> BodySource:
        """Hand the unread source to another consumer."""
        if self.started:
            raise ProtocolViolation(f"stream {self.stream_id} was read before being passed on")
        self._child.sinks.pop(self.stream_id, None)
        return self.source

    def abort(self) -> None:
        """The child does not want the rest."""
        self._child.sinks.pop(self.stream_id, None)
        if self._cancel is not None:
            self._cancel.cancel()
        self.source.close()

    async def _pump(self) -> None:
        child = self._child
        with trio.CancelScope() as self._cancel:
            try:
                while True:
                    chunk = await self.source.receive()
                    if not chunk:
                        child.send(BodyChunk(self.stream_id, b"", True))
                        return
                    view = memoryview(chunk)
                    while view:
                        while self._credit <= 0:
                            self._event = event = trio.Event()
                            await event.wait()
                        size = min(len(view), self._credit, MAX_CHUNK)
                        child.send(BodyChunk(self.stream_id, bytes(view[:size])))
                        self._credit -= size
                        view = view[size:]
            except Exception as exc:  # noqa: BLE001 - any source failure ends only this body
                child.send(Abort(self.stream_id, str(exc) or type(exc).__name__))
            finally:
                child.sinks.pop(self.stream_id, None)
                self.source.close()
