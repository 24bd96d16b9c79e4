"""Keep-alive connections waiting for their next request, woken from one epoll set.

Every request on a keep-alive connection begins with its task waiting for
the socket to become readable. Through ``trio.lowlevel.wait_readable`` that
wait re-arms the socket's one-shot registration in trio's epoll set each
time: an ``epoll_ctl`` system call and trio's bookkeeping on the way in and
again on the way out, for every request.

Here each connection's socket is registered once, edge-triggered, in an
epoll set of our own, which trio watches as one descriptor (as
supervisor.pool.channel_hub does for the children's channels). An edge that
comes while the connection's task is busy is remembered, so its next wait
returns at once; otherwise the task parks and the edge reschedules it.
Edge-triggered, because a level-triggered socket would be reported again at
every look until its task has run and read it.

Only the wait for a request head goes through here; the rarer waits (for
the rest of a body, to send, for the client to leave during a slow answer)
use trio's own, which can coexist: they are another epoll set.

An edge is reported once, so what it announced must be read before the
next wait: a read that filled its buffer may have left bytes behind (the
rest of a pipelined burst), which the reader says with :meth:`more`; and
the peer's close, reported with its last bytes, makes every later wait
return at once (a half-closed client is answered, then its connection
closes, rather than waiting out the idle timeout).
"""

from __future__ import annotations

import select

import outcome
import trio

#: Connections woken in one step of the hub's task before it lets the loop go on.
MAX_EVENTS = 64
_EDGE = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
#: The peer closed (its write side, or all of it), or the socket failed: for good.
_GONE = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


class _Waiter:
    __slots__ = ("task", "ready", "gone")

    def __init__(self) -> None:
        #: The task parked in :meth:`IdleWaits.wait`, if any.
        self.task: trio.lowlevel.Task | None = None
        #: An edge came while no task was parked: the next wait returns at once.
        self.ready = False
        #: The peer has closed: every wait returns at once (the read sees the end).
        self.gone = False


class IdleWaits:
    """The waits; run :meth:`run` in the server's nursery before any :meth:`add`."""

    __slots__ = ("_epoll", "_waiters", "_running")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._waiters: dict[int, _Waiter] = {}
        self._running = False

    def add(self, fd: int) -> bool:
        """Watch ``fd`` from now on; False when the hub is not running (the
        caller then waits through trio)."""
        if not self._running:
            return False
        self._epoll.register(fd, _EDGE)  # reports the socket once if it is readable already
        self._waiters[fd] = _Waiter()
        return True

    def remove(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed, whose number may then be
        another socket's). A task still parked on it is told it was closed."""
        waiter = self._waiters.pop(fd, None)
        if waiter is None:
            return
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # closed already, or the hub has stopped
        if waiter.task is not None:
            task, waiter.task = waiter.task, None
            trio.lowlevel.reschedule(task, outcome.Error(trio.ClosedResourceError("connection closed")))

    def more(self, fd: int) -> None:
        """A read of ``fd`` filled its buffer: bytes may be left that no edge
        will announce, so the next wait returns at once."""
        waiter = self._waiters.get(fd)
        if waiter is not None:
            waiter.ready = True

    def notify_closing(self, fd: int) -> None:
        """As ``trio.lowlevel.notify_closing``: the wait on ``fd`` raises
        ``trio.ClosedResourceError`` (now, or when it next begins)."""
        self.remove(fd)

    async def wait(self, fd: int) -> None:
        """Return once ``fd`` may have something to read (it may not: an edge
        can be for bytes already read, or for the peer's close)."""
        waiter = self._waiters.get(fd)
        if waiter is None:
            raise trio.ClosedResourceError("connection closed")
        if waiter.ready or waiter.gone:
            waiter.ready = False
            await trio.lowlevel.checkpoint()  # a wait is a checkpoint, ready or not
            return
        waiter.task = trio.lowlevel.current_task()

        def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
            waiter.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Wake the waits until cancelled."""
        epoll = self._epoll
        waiters = self._waiters
        self._running = True
        task_status.started()
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, events in epoll.poll(0, MAX_EVENTS):
                    waiter = waiters.get(fd)
                    if waiter is None:
                        continue
                    if events & _GONE:
                        waiter.gone = True
                    task = waiter.task
                    if task is None:
                        waiter.ready = True
                    else:
                        waiter.task = None
                        trio.lowlevel.reschedule(task)
        finally:
            self._running = False
            for fd in list(waiters):
                self.remove(fd)
            epoll.close()
