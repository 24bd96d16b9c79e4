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

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from protocol.flow import CreditExceeded, Inbound, Outbound, StreamFailed
from protocol.messages import Abort, BodyChunk, Credit


class BodyError(Exception):
    """A body ended abnormally (its producer failed or went away)."""


class BodyTooLarge(BodyError):
    """A body past the limit its reader set (:func:`read_all`; a client's
    request body past the server's, supervisor.edge.http_server)."""


class ProtocolViolation(Exception):
    """A child broke the stream rules (sent beyond its credit, ...)."""


class BodySource(Protocol):
    async def receive(self) -> bytes:
        """The next chunk; ``b""`` once the body is complete."""

    def close(self) -> None:
        """The consumer is gone; release the producer. Idempotent."""


def body_length(source: BodySource) -> int | None:
    """How many bytes ``source`` will give, when known before it is read.

    A source that knows (a file, an upstream response with a Content-Length,
    a child's stream whose head declared one) has a ``length`` attribute;
    the rest are of unknown length. Whoever frames the bytes with it must
    still count them: a child's or an upstream's figure is only a claim.
    """
    return getattr(source, "length", None)


def hand_on(source: BodySource) -> None:
    """``source`` is passed on by reference, unread (a fetch's response body
    returned as the worker's own response): a source that counts against
    its reader (supervisor.limits.open_connections) stops counting."""
    handed_on = getattr(source, "handed_on", None)
    if handed_on is not None:
        handed_on()


def declare_length(body: ChildBody, length: int) -> None:
    """Note the length a child declared for a body it streams (a response's,
    a subrequest's).

    Framing trusts it only as far as the bytes bear it out (the edge counts
    them, see supervisor.edge.http_server; the HTTP client's writer holds an
    upload to it); a negative one is no length."""
    if length < 0:
        raise ProtocolViolation(f"a body of length {length}")
    body.length = length


class ChildLink(Protocol):
    """What a body or an invocation needs of the child it belongs to.

    ``ChildProcess`` is the one implementation; naming only this much keeps
    bodies and invocations below it (no import loop) and says what they touch.
    """

    #: Bodies the child streams to the supervisor, by stream id.
    incoming: dict[int, ChildBody]
    #: Bodies the supervisor streams to the child, by stream id.
    sinks: dict[int, ChildSink]

    def send(self, message: Any) -> None:
        """Queue a frame to the child (dropped once it is dead)."""

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run a task that must not outlive the child."""

    def cpu_budget_shrank(self, inv: Any) -> None:
        """``inv``'s CPU budget was cut (its callees spent some): enforce what is left."""

    def later(self, fn: Callable[[Any], None], arg: Any) -> None:
        """Call ``fn(arg)`` once the frames of this turn of the loop have left."""

    def response_ended(self, stream: int) -> None:
        """The body on ``stream`` is over (read to its end, failed, or given up)."""


class BytesBody:
    """A body already in memory."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def length(self) -> int:
        """What is left to receive (all of it, before the first receive)."""
        return len(self._data)

    async def receive(self) -> bytes:
        data, self._data = self._data, b""
        return data

    def close(self) -> None:
        self._data = b""




async def read_all(source: BodySource, limit: int, count: Callable[[int], None] | None = None) -> bytes:
    """Buffer a whole body, refusing more than ``limit`` bytes. ``count``
    is told each chunk's size as it is kept: what it raises ends the read
    (the source closed), as a bound on what the reader may hold."""
    parts: list[bytes] = []
    size = 0
    while chunk := await source.receive():
        size += len(chunk)
        if size > limit:
            source.close()
            raise BodyTooLarge(f"body larger than {limit} bytes")
        if count is not None:
            try:
                count(len(chunk))
            except BaseException:
                source.close()
                raise
        parts.append(chunk)
    return b"".join(parts)


class ChildBody:
    """Bytes a child streams to the supervisor on stream ``stream_id``: a trio
    adapter over :class:`protocol.flow.Inbound` (which holds the rules)."""

    __slots__ = ("_child", "stream_id", "_state", "_event", "length")

    def __init__(self, child: ChildLink, stream_id: int) -> None:
        self._child = child
        self.stream_id = stream_id
        self._state = Inbound()
        self._event: trio.Event | None = None
        #: The length the child declared for it (see :func:`body_length`).
        self.length: int | None = None

    # -- fed by the child's reader (synchronous) --------------------------
    def feed(self, data: bytes, end: bool) -> None:
        try:
            self._state.feed(data, end)
        except CreditExceeded as exc:
            raise ProtocolViolation(f"stream {self.stream_id}: {exc}") from None
        self._wake()

    def fail(self, reason: str) -> None:
        self._state.fail(reason or "the worker aborted the body")
        self._wake()

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    # -- read by whoever consumes it --------------------------------------
    async def receive(self) -> bytes:
        state = self._state
        while True:
            try:
                chunk = state.next()
            except StreamFailed as exc:
                raise BodyError(str(exc)) from None
            if chunk is not None:
                return chunk
            grant = state.credit()
            if grant:
                self._child.send(Credit(self.stream_id, grant))
            self._event = event = trio.Event()
            await event.wait()

    def close(self) -> None:
        """Given up unread (the client left, a HEAD request): the child stops
        sending, and an invocation whose response this was is over as far as
        its body goes, so its trace goes out once the child is done (it never
        did: the trace waited for a body end that could not come)."""
        if self._state.close():
            self._child.send(Abort(self.stream_id, "consumer gone"))
        if self._child.incoming.pop(self.stream_id, None) is not None:
            self._child.response_ended(self.stream_id)


class ChildSink:
    """Streams ``source`` to a child on stream ``stream_id``, within its credit:
    a trio adapter over :class:`protocol.flow.Outbound`.

    The pump task starts at the first credit; before that the sink can be
    taken back with :meth:`take` (the child passed the body on by reference).
    """

    __slots__ = ("_child", "stream_id", "source", "_state", "_event", "started", "_cancel")

    def __init__(self, child: ChildLink, stream_id: int, source: BodySource) -> None:
        self._child = child
        self.stream_id = stream_id
        self.source = source
        self._state = Outbound()
        self._event: trio.Event | None = None
        self.started = False
        self._cancel: trio.CancelScope | None = None

    def grant(self, nbytes: int) -> None:
        try:
            self._state.grant(nbytes)
        except CreditExceeded as exc:
            raise ProtocolViolation(f"stream {self.stream_id}: {exc}") from None
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
        hand_on(self.source)
        return self.source

    def abort(self) -> None:
        """The child does not want the rest."""
        self._child.sinks.pop(self.stream_id, None)
        if self._cancel is not None:
            self._cancel.cancel()
        self.source.close()

    async def _pump(self) -> None:
        child = self._child
        state = self._state
        with trio.CancelScope() as self._cancel:
            try:
                while True:
                    chunk = await self.source.receive()
                    if not chunk:
                        child.send(BodyChunk(self.stream_id, b"", True))
                        return
                    view = memoryview(chunk)
                    while view:
                        size = state.take(len(view))
                        if not size:
                            self._event = event = trio.Event()
                            await event.wait()
                            continue
                        child.send(BodyChunk(self.stream_id, bytes(view[:size])))
                        view = view[size:]
            except Exception as exc:  # noqa: BLE001 - any source failure ends only this body
                child.send(Abort(self.stream_id, str(exc) or type(exc).__name__))
            finally:
                child.sinks.pop(self.stream_id, None)
                self.source.close()
