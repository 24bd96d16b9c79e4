"""Body streams inside the child, with the protocol's credit rules.

An :class:`IncomingBody` is a body the supervisor streams to us (a request
body, a subrequest's response body). It asks for data only when read: the
first read grants a window of credit, and each consumed chunk is credited
back. An unread body therefore never crosses the channel, which is what lets
a dispatcher hand a body on by reference.

An :class:`OutgoingBody` sends a body to the supervisor, never more than the
supervisor has granted. Both are asyncio adapters over :mod:`protocol.flow`,
which holds the rules and the state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from protocol.flow import Inbound, Outbound, StreamFailed
from protocol.messages import MAX_CHUNK, Abort, BodyChunk, Credit

from .pyodide_shim import JsException

if TYPE_CHECKING:
    from .channel import Channel


class _Waiter:
    """One asyncio future at a time, set when the stream may have moved on."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future | None = None

    def wake(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> None:
        self._future = asyncio.get_running_loop().create_future()
        try:
            await self._future
        finally:
            self._future = None


class ConnectionLost(JsException, StreamFailed):
    """A body whose sender went away part-way (a client that dropped its
    upload, an upstream that reset): workerd's ``Network connection lost.``,
    a JavaScript Error to the worker (it read ``protocol.flow.StreamFailed``
    and Corral's own source in its stack); a StreamFailed still to the
    runtime's own handling."""

    def __init__(self, reason: str) -> None:
        super().__init__("Error", f"Network connection lost. ({reason})")


class IncomingBody:
    """A pull-based body arriving in chunks on stream ``stream_id``."""

    def __init__(self, channel: Channel, stream_id: int) -> None:
        self._channel = channel
        self.stream_id = stream_id
        self._state = Inbound()
        self._waiter = _Waiter()

    @property
    def started(self) -> bool:
        """Has anyone pulled (so it can no longer be passed on)?"""
        return self._state.started

    # -- fed by the runtime (the supervisor is trusted: a bug raises) -------
    def feed(self, data: bytes, end: bool) -> None:
        self._state.feed(data, end)
        self._waiter.wake()

    def abort(self, reason: str) -> None:
        self._state.fail(reason)
        self._waiter.wake()

    # -- read by tenant code ----------------------------------------------
    async def read_chunk(self) -> bytes:
        """Next chunk, ``b""`` at the end; :class:`ConnectionLost` if its
        sender went away."""
        while (chunk := self._next()) is None:
            grant = self._state.credit()
            if grant:
                self._channel.send(Credit(self.stream_id, grant))
            await self._waiter.wait()
        return chunk

    def _next(self) -> bytes | None:
        try:
            return self._state.next()
        except StreamFailed as exc:
            raise ConnectionLost(str(exc)) from None

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
        if self._state.close():
            self._channel.send(Abort(self.stream_id, "consumer gone"))


class OutgoingBody:
    """Credit-limited sending of one body on stream ``stream_id``."""

    def __init__(self, channel: Channel, stream_id: int) -> None:
        self._channel = channel
        self.stream_id = stream_id
        self._state = Outbound()
        self._waiter = _Waiter()

    @property
    def aborted(self) -> str | None:
        return self._state.aborted

    def grant(self, nbytes: int) -> None:
        self._state.grant(nbytes)
        self._waiter.wake()

    def abort(self, reason: str) -> None:
        self._state.abort(reason)
        self._waiter.wake()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            size = self._state.take(len(view))
            if not size:
                await self._waiter.wait()
                continue
            self._channel.send(BodyChunk(self.stream_id, bytes(view[:size])))
            view = view[size:]

    def end(self) -> None:
        if self._state.aborted is None:
            self._channel.send(BodyChunk(self.stream_id, b"", True))

    def fail(self, reason: str) -> None:
        if self._state.aborted is None:
            self._channel.send(Abort(self.stream_id, reason[:4096]))  # a tenant's exception, maybe huge


async def pump(body: Any, out: OutgoingBody) -> None:
    """Send ``body`` (bytes, an IncomingBody or an async iterator) on ``out``,
    then end the stream (or fail it with what went wrong). A stream its
    reader gave up on (a HEAD request, a client gone) just stops: that is
    not the worker's error, which the trace reported as its exception
    (``StreamFailed: consumer gone``, from the runtime's own frames)."""
    try:
        if isinstance(body, bytes):
            for start in range(0, len(body), MAX_CHUNK):
                await out.write(body[start : start + MAX_CHUNK])
        else:
            async for chunk in body:
                if isinstance(chunk, str):
                    chunk = chunk.encode()
                await out.write(bytes(chunk))
    except BaseException as exc:
        out.fail(f"{type(exc).__name__}: {exc}")
        await _close_source(body)
        if isinstance(exc, StreamFailed) and out.aborted is not None:
            return
        raise
    out.end()


async def _close_source(body: Any) -> None:
    """A body that will not be read to its end is closed here, in the task
    that sent it: an async generator's ``finally`` (a WSGI app's ``close()``,
    see sandbox.workers_wsgi) runs in its invocation, where its code can
    still fetch and wait (``run_sync``). Left to the garbage collector, it
    ran later in a task of its own, once the invocation was over. What the
    producer raises while closing is dropped: the stream has already failed
    with the error that stopped it, and that error is the one reported."""
    aclose = getattr(body, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:  # noqa: BLE001 - see above
        pass
