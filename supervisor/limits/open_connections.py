"""Six open connections per invocation, the rest in line (Cloudflare's rule).

Cloudflare lets one invocation hold six outbound connections at once. A
seventh ``fetch()`` is not refused: it waits until one of the six closes.
A connection is open from the request until its response body has been read
to the end or cancelled. That also bounds what a tenant can make the host
hold: without it, one invocation could keep 1,000 upstream connections open
(its subrequest limit), each a descriptor and a socket buffer of the
supervisor's, and a few such invocations fill the host's descriptor table
for every tenant.

A worker that keeps six responses unread and starts a seventh fetch would
wait forever. Cloudflare breaks that deadlock by cancelling the least
recently used open connection when none of them is being read or written;
reading that body later fails. The same rule applies here. A connection
counts as idle while the worker does not pull its body: the body is not
being read, or it waits for the worker's credit. A connection still waiting
for its response head, or whose body is being read from upstream, is in use.
A body passed on by reference (returned as the worker's own response) stops
counting: it belongs to the response now, not to the worker's fetches.

Beside the invocation's six, a tenant's network connections together are
at most its *share* (``limits.script_open_connections``; by default a sixteenth of
the supervisor's open-file limit, at least 64): a fetch past it waits for
one of theirs to close. Without it, one tenant's clients (120 connections,
each an invocation holding six upstream sockets that never answer) filled
the supervisor's descriptor table, and every tenant's requests and cold
starts failed to accept or open until they went away (red team 5).

Why not a ``trio.Semaphore``: the line has to see its holders, to tell a
deadlock from a slow upstream, and cancel one of them. The check is driven
by events, not a timer per waiting fetch: only the first in line looks, and
only once every open connection has gone idle (a line of a thousand fetches
behind six slow ones costs nothing while it waits).
"""

from __future__ import annotations

import resource
from typing import Protocol

import trio


class BodySource(Protocol):
    """A response body (supervisor.pool.bodies.BodySource, which the limits do not import)."""

    async def receive(self) -> bytes: ...

    def close(self) -> None: ...


#: Cloudflare's figure (Workers limits: "Simultaneous open connections").
OPEN_CONNECTIONS = 6
#: A script's share by default: this part of the open-file limit, and at least so many.
SHARE_OF_FILES = 16
MIN_SHARE = 64


def script_share(configured: int) -> int:
    """Outbound connections one script's invocations may hold together:
    ``configured``, or (0) a sixteenth of this process's open-file limit as
    it stands (read after ``serve`` raised it), at least :data:`MIN_SHARE`."""
    if configured:
        return configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(MIN_SHARE, soft // SHARE_OF_FILES)
#: How long every open connection must have sat unread before a waiting
#: fetch cancels one: the time a worker takes between receiving a response
#: head and asking for its body is no deadlock.
IDLE_S = 0.01

CANCELLED = ("this response's connection was cancelled before its body was read to the end: the request "
             "had {limit} connections open, none of them being read, and was waiting to open "
             "another (at most {limit} may be open at once; read or cancel a response's body "
             "to let the next fetch start)")


class Connection:
    """One open connection of an invocation, from its request to its body's end."""

    __slots__ = ("_line", "idle_since", "closed", "_body", "_share")

    def __init__(self, line: OpenConnections) -> None:
        self._line = line
        #: trio time since which the worker has not pulled its body; None while in use.
        self.idle_since: float | None = None
        self.closed = False
        self._body: ConnectionBody | None = None
        #: The script's share it holds a place of, once it has one.
        self._share: trio.CapacityLimiter | None = None

    def carry(self, body: BodySource) -> ConnectionBody:
        """The response head is in: the connection lives on in ``body``, a
        stream, until it is read to its end or closed."""
        self._body = ConnectionBody(body, self)
        self.idle()
        return self._body

    def busy(self) -> None:
        self.idle_since = None

    def idle(self) -> None:
        if not self.closed:
            self.idle_since = trio.current_time()
            if self._line.waiting:
                self._line.went_idle()

    def close(self) -> None:
        """The connection is over: the next in line may open one. Idempotent."""
        if not self.closed:
            self.closed = True
            self.idle_since = None
            if self._share is not None:
                self._share.release_on_behalf_of(self)
                self._share = None
            self._line.closed(self)

    async def take_share(self, share: trio.CapacityLimiter) -> None:
        """A place in the script's share, waiting for one; closed if cancelled."""
        try:
            await share.acquire_on_behalf_of(self)
        except BaseException:
            self.close()
            raise
        self._share = share

    def cancel(self, reason: str) -> None:
        """The deadlock breaker's: end it now; a later read of its body fails."""
        if self._body is not None:
            self._body.fail(reason)
        self.close()


class ConnectionBody:
    """A response body whose connection stays open until it is read or closed."""

    __slots__ = ("_source", "_connection", "_failure")

    def __init__(self, source: BodySource, connection: Connection) -> None:
        self._source = source
        self._connection = connection
        self._failure: str | None = None

    @property
    def length(self) -> int | None:
        """The source's, when it knows (see supervisor.pool.bodies.body_length)."""
        return getattr(self._source, "length", None)

    async def receive(self) -> bytes:
        if self._failure is not None:
            raise ConnectionCancelled(self._failure)
        connection = self._connection
        connection.busy()
        try:
            chunk = await self._source.receive()
        except BaseException:
            connection.close()
            raise
        if chunk:
            connection.idle()
        else:
            connection.close()
        return chunk

    def handed_on(self) -> None:
        """Passed on by reference (supervisor.pool.bodies.ChildSink.take):
        the body is the worker's response now, no fetch of its own."""
        self._connection.close()

    def fail(self, reason: str) -> None:
        self._failure = reason
        self._source.close()

    def close(self) -> None:
        self._source.close()
        self._connection.close()


class ConnectionCancelled(Exception):
    """Reading a body whose connection the deadlock breaker cancelled."""


class _Turn:
    """A fetch waiting in line: its connection is made for it as it is woken."""

    __slots__ = ("event", "connection")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.connection: Connection | None = None

    def wake(self) -> None:
        self.event.set()


class OpenConnections:
    """An invocation's open connections: at most ``limit``, the rest in line,
    first come first served; each also holds a place of its script's
    ``share`` (if any) while open."""

    __slots__ = ("limit", "_open", "_line")

    def __init__(self, limit: int = OPEN_CONNECTIONS) -> None:
        self.limit = limit
        self._open: list[Connection] = []  # oldest first
        self._line: list[_Turn] = []

    @property
    def waiting(self) -> bool:
        return bool(self._line)

    async def open(self, share: trio.CapacityLimiter | None = None) -> Connection:
        """A connection slot, waiting in line for one when ``limit`` are
        open, then (a connection to the network) for a place in its tenant's
        ``share`` when that is full."""
        connection = await self._slot()
        if share is not None:
            await connection.take_share(share)
        return connection

    async def _slot(self) -> Connection:
        if len(self._open) < self.limit and not self._line:
            return self._take()
        turn = _Turn()
        self._line.append(turn)
        try:
            while turn.connection is None:
                if self._line[0] is turn and self._all_idle():
                    # Maybe a deadlock: look again once they have all sat idle IDLE_S.
                    with trio.move_on_after(IDLE_S):
                        await turn.event.wait()
                    if turn.connection is None:
                        self._break_deadlock()
                else:
                    await turn.event.wait()
                if turn.connection is None:
                    turn.event = trio.Event()
        except BaseException:
            if turn.connection is not None:
                turn.connection.close()  # given as we were cancelled: the next one's now
            else:
                first = self._line[0] is turn
                self._line.remove(turn)
                if first and self._line:
                    self._line[0].wake()  # the next is first now: it looks for deadlocks
            raise
        return turn.connection

    def _take(self) -> Connection:
        connection = Connection(self)
        self._open.append(connection)
        return connection

    def closed(self, connection: Connection) -> None:
        self._open.remove(connection)
        while self._line and len(self._open) < self.limit:
            turn = self._line.pop(0)
            turn.connection = self._take()
            turn.wake()
        if self._line:
            self._line[0].wake()  # first in line now, or still: it looks again

    def went_idle(self) -> None:
        """An open connection went idle while fetches wait: if they all are,
        the first in line starts watching for a deadlock."""
        if self._all_idle():
            self._line[0].wake()

    def _all_idle(self) -> bool:
        return len(self._open) >= self.limit and all(c.idle_since is not None for c in self._open)

    def _break_deadlock(self) -> None:
        """Every open connection has sat unread for IDLE_S: cancel the one
        unread the longest (Cloudflare: the least recently used)."""
        if not self._all_idle():
            return
        since = [c.idle_since or 0.0 for c in self._open]
        if trio.current_time() - max(since) >= IDLE_S:
            self._open[since.index(min(since))].cancel(CANCELLED.format(limit=self.limit))
