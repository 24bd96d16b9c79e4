"""Body streams, sans I/O: credit windows and stream state for both sides.

The rules of :mod:`protocol.messages` in one place, for both the asyncio
child (:mod:`sandbox.streams`) and the trio supervisor
(:mod:`supervisor.pool.bodies`), which only add waiting and sending on top.

* The **receiver** of a stream grants credit as its consumer asks for data
  (:class:`ReceiveWindow`); it buffers what arrives and tells the consumer
  what to do next (:class:`Inbound`). A peer that sends more than it was
  granted is broken (or hostile): :class:`CreditExceeded`.
* The **sender** never has more unacknowledged bytes in flight than it was
  granted (:class:`SendWindow`); :class:`Outbound` cuts what it may send
  now into chunks of at most :data:`~protocol.messages.MAX_CHUNK`.
"""

from __future__ import annotations

from collections import deque

from .messages import MAX_CHUNK, STREAM_WINDOW

#: Largest credit one grant may carry: a grant beyond it is a broken peer.
MAX_GRANT = 64 * STREAM_WINDOW


class CreditExceeded(Exception):
    """The sender sent more bytes than it was granted (or granted absurdly, or
    sent after the stream's end)."""


class StreamFailed(Exception):
    """The stream ended abnormally; the message says why."""


class ReceiveWindow:
    """The receiving side's view of one stream's credit."""

    __slots__ = ("granted",)

    def __init__(self) -> None:
        self.granted = 0  # granted and not yet used

    def received(self, nbytes: int) -> None:
        """Account for ``nbytes`` that arrived; raises if beyond the credit."""
        self.granted -= nbytes
        if self.granted < 0:
            raise CreditExceeded(f"{nbytes} bytes sent beyond the granted credit")

    def top_up(self) -> int:
        """Credit to grant now that the consumer waits for data (0: none yet).

        Tops the window up once it is half used, so a steady stream costs
        one Credit message per half window, not one per chunk.
        """
        if self.granted >= STREAM_WINDOW // 2:
            return 0
        grant = STREAM_WINDOW - self.granted
        self.granted = STREAM_WINDOW
        return grant


class SendWindow:
    """The sending side's view of one stream's credit."""

    __slots__ = ("credit",)

    def __init__(self) -> None:
        self.credit = 0

    def grant(self, nbytes: int) -> None:
        if nbytes <= 0 or nbytes > MAX_GRANT:
            raise CreditExceeded(f"a credit of {nbytes} bytes")
        self.credit += nbytes

    def take(self, wanted: int) -> int:
        """How much of ``wanted`` may be sent now (at most one chunk); used up."""
        size = min(wanted, self.credit, MAX_CHUNK)
        self.credit -= size
        return size


class Inbound:
    """A stream being received: what arrived, and whether it is over.

    The adapter feeds it from frames and asks :meth:`next` when its consumer
    wants data: a chunk, ``b""`` at the end, :class:`StreamFailed`, or None
    (wait; first grant :meth:`credit` if it is not 0).
    """

    __slots__ = ("window", "chunks", "ended", "error", "closed", "started")

    def __init__(self) -> None:
        self.window = ReceiveWindow()
        self.chunks: deque[bytes] = deque()
        self.ended = False
        self.error: str | None = None
        self.closed = False  # the consumer left: what still arrives is dropped
        self.started = False  # a consumer pulled: the body can no longer be passed on

    def feed(self, data: bytes, end: bool) -> None:
        if self.ended and not self.closed and self.error is None:
            # (After close() or fail(), frames already in flight still arrive.)
            raise CreditExceeded("a frame after the end of the stream")
        if data:
            self.window.received(len(data))
            if not self.closed:
                self.chunks.append(data)
        if end:
            self.ended = True

    def fail(self, reason: str) -> None:
        self.error = reason or "the stream was aborted"
        self.ended = True

    def next(self) -> bytes | None:
        self.started = True
        if self.chunks:
            return self.chunks.popleft()
        if self.error is not None:
            raise StreamFailed(self.error)
        if self.ended:
            return b""
        return None

    def credit(self) -> int:
        """Credit to grant before waiting (0: enough is granted already)."""
        return self.window.top_up()

    def close(self) -> bool:
        """The consumer leaves; True if the producer must be told (it is not done)."""
        if self.closed:
            return False
        self.closed = True
        self.chunks.clear()
        was_open = not self.ended
        self.ended = True
        return was_open


class Outbound:
    """A stream being sent: credit, and whether the receiver aborted it."""

    __slots__ = ("window", "aborted")

    def __init__(self) -> None:
        self.window = SendWindow()
        self.aborted: str | None = None

    def grant(self, nbytes: int) -> None:
        self.window.grant(nbytes)

    def abort(self, reason: str) -> None:
        self.aborted = reason or "the stream was aborted"

    def take(self, wanted: int) -> int:
        """Bytes of ``wanted`` to send now (0: wait for credit); raises once aborted."""
        if self.aborted is not None:
            raise StreamFailed(self.aborted)
        return self.window.take(wanted)
