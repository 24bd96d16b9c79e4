"""The child's end of its channel to the supervisor, on asyncio.

Deliberately low level: ``loop.add_reader`` on the socket and ``recv_into``
a buffer allocated once, because asyncio's stream readers allocate 256 KiB
per read (an mmap/munmap pair per request, measured here). Sends go out
immediately when the socket takes them; only a short write is buffered and
finished by a writer callback, so one request costs one syscall per frame
or fewer.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import msgspec

from protocol.framing import HEADER_SIZE, MAX_FRAME_FROM_CHILD, FrameDecoder, FrameEncoder, child_decoder
from protocol.messages import ToChild

RECV_SIZE = 64 * 1024

#: The receive buffer, made (and zeroed) once in the zygote at import, so a
#: child shares its pages and copies only those its reads write: one page
#: for the usual small frame. A buffer per Channel cost every warm tenant
#: 64 KiB of private memory, zeroed at birth. Reading is synchronous from
#: ``recv_into`` to the last message handled, so one buffer serves any
#: number of channels in a process.
_RECEIVED = bytearray(RECV_SIZE)
_RECEIVED_VIEW = memoryview(_RECEIVED)


#: What a tenant made, per message, in the words of its error.
_MADE = {
    "ResponseStart": "the response",
    "SubRequest": "the request",
    "BindingCall": "the binding call",
    "WsConnect": "the WebSocket connection",
    "WsSend": "the WebSocket message",
    "WsClose": "the WebSocket close",
    "Abort": "the stream's abort reason",
    "Log": "the log line",
}


class MessageTooLarge(ValueError):
    """A value the tenant made would not fit in one message to the supervisor.

    Raised at the call that made it (returning a Response, ``fetch()``, a
    binding's call), so it fails like any other exception; the frame is
    never sent (the supervisor would end the child for it: see
    :data:`protocol.framing.MAX_FRAME_FROM_CHILD`)."""


def _too_large(message: object, size: int) -> MessageTooLarge:
    """The error for ``message``, naming its largest field: the culprit."""
    name = type(message).__name__
    largest, largest_size = "", 0
    for field in getattr(message, "__struct_fields__", ()):
        try:
            field_size = len(msgspec.msgpack.encode(getattr(message, field)))
        except Exception:  # noqa: BLE001, S112 - only a guess at which field to name
            continue
        if field_size > largest_size:
            largest, largest_size = field, field_size
    what = _MADE.get(name, f"a {name} message")
    culprit = f" ({largest}: {largest_size} bytes)" if largest else ""
    return MessageTooLarge(
        f"{what} is too large to send: {size} bytes{culprit}, over the "
        f"{MAX_FRAME_FROM_CHILD}-byte limit of one message from a worker to the runtime")


class Channel:
    """Frames in, frames out; ``on_message`` runs synchronously per frame."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[ToChild], None],
        on_closed: Callable[[], None],
    ) -> None:
        # The socket must already be non-blocking: FIONBIO is an ioctl, and
        # the jail refuses ioctl.
        self._sock = sock
        self._loop = loop
        self._on_message = on_message
        self._on_closed = on_closed
        self._decoder: FrameDecoder[ToChild] = child_decoder()
        self._encoder = FrameEncoder()
        self._out = bytearray()
        self._writing = False
        self._flush_scheduled = False
        self._buffer = _RECEIVED
        self._view = _RECEIVED_VIEW
        self._drained: asyncio.Event | None = None
        self.closed = False
        loop.add_reader(sock.fileno(), self._readable)

    @property
    def backlog(self) -> int:
        """Bytes queued and not yet written."""
        return len(self._out)

    def send(self, message: object) -> None:
        """Queue a frame; all frames queued in one loop turn leave in one write.

        A response is typically ``ResponseStart`` then ``InvokeDone`` from the
        same task step: deferring the write to the end of the turn sends both
        with one syscall and wakes the supervisor once.

        A frame over :data:`MAX_FRAME_FROM_CHILD` is not queued: it raises
        :class:`MessageTooLarge` in the code that sent it.
        """
        if self.closed:
            return
        out = self._out
        start = len(out)
        self._encoder.encode_into(message, out)
        if len(out) - start > MAX_FRAME_FROM_CHILD + HEADER_SIZE:
            size = len(out) - start - HEADER_SIZE
            del out[start:]
            raise _too_large(message, size)
        if not self._writing and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def push(self) -> None:
        """Write what is queued now, without blocking, not at the end of the
        loop turn: for a log line, which must reach the supervisor even if
        the code that printed it then spins until the kernel kills it for
        CPU (the turn never ends, and a SIGKILL loses the queue)."""
        if not self._writing and not self.closed:
            self._flush()

    def flush_now(self) -> None:
        """Write everything queued, blocking if need be (last words before exit).

        What arrives meanwhile is read and dropped: the supervisor stops
        reading a child that has more than a few MB waiting to be sent to it
        (``OUT_HIGH_WATER``) until the child takes some, so a child out of
        memory with that much coming, and its own sends backed up, waited
        here for its wall limit. Nothing here handles a frame: the process
        exits next."""
        if self.closed:
            return
        import select

        poller = select.poll()  # not setblocking(): FIONBIO is an ioctl the jail refuses
        poller.register(self._sock.fileno(), select.POLLOUT | select.POLLIN)
        try:
            while self._out:
                try:
                    del self._out[: self._sock.send(self._out)]
                except BlockingIOError:
                    for _, events in poller.poll(1000):
                        if events & select.POLLIN and not self._drop_incoming():
                            return  # the supervisor is gone: nobody to tell
        except OSError:
            pass

    def _drop_incoming(self) -> bool:
        """Read what the socket holds and drop it; False once it is closed."""
        while True:
            try:
                if not self._sock.recv_into(_RECEIVED):
                    return False
            except BlockingIOError:
                return True

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        if not self._writing and not self.closed:
            self._flush()

    async def drain(self, high_water: int = 1 << 20) -> None:
        """Wait while more than ``high_water`` bytes are queued."""
        while len(self._out) > high_water and not self.closed:
            if self._drained is None:
                self._drained = asyncio.Event()
            await self._drained.wait()

    def _flush(self) -> None:
        try:
            sent = self._sock.send(self._out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close()
            return
        del self._out[:sent]
        if self._out:
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self._sock.fileno(), self._flush)
        else:
            if self._writing:
                self._writing = False
                self._loop.remove_writer(self._sock.fileno())
            if self._drained is not None:
                self._drained.set()
                self._drained = None

    def _readable(self) -> None:
        try:
            count = self._sock.recv_into(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            count = 0
        if count == 0:
            self._close()
            return
        # A protocol error from the trusted supervisor is a bug: let it
        # propagate and end the child rather than guess.
        for message in self._decoder.feed(self._view[:count]):
            self._on_message(message)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._sock.fileno())
        if self._writing:
            self._loop.remove_writer(self._sock.fileno())
        self._on_closed()
