"""Idle children give their unchanged copied pages back (see :mod:`sandbox.reshare`).

A child cannot tell which of its pages are its own copies; its page map,
which only the supervisor can read, says so page by page (``pagemap`` bit
56, "exclusively mapped"). When a warm child has been idle for a while, this
reads that list and sends it in a :class:`~protocol.messages.Trim`; the
child compares each page with the zygote's snapshot and maps back those
still equal. A new base spare is asked too (its own set-up copied pages):
when it is ready, and on the pool's calm scans until an ask was sent (see
``Pool.on_ready`` and ``Pool._converge``).

The read takes ~2 ms per child, nearly all of it the kernel walking the
page tables inside ``pread`` (which releases the GIL); it is done in a
worker thread, one child at a time, so that a round of hundreds of tenants
falling idle at once never stalls the event loop.

A round must not slow the tenants still serving either. Asked back to back,
children gave back faster than one could finish (~10 us a page, ~2.5 ms a
child): a scheduler trace showed seven of them at once on one core and the
dispatcher waiting 3-8 ms behind them, runnable; over 300 tenants' round, a
request every 2 ms had a p99 of 9-13.5 ms against ~2 ms with trimming off.
So the trimmer waits after each ask for about twice what that child's
give-back takes (:data:`PACE_S_PER_PAGE`), and the child gives back in
pieces with a yield of its core between them (``sandbox/native/reshare.c``,
every 16 pages): p99 4.6-6.1 ms over the same round. (Reading the page map
in pieces too, with yields, gained nothing measurable, and every piece was
a handoff of the GIL that the event loop could wait on.)
"""

from __future__ import annotations

import array
import os
from collections.abc import Callable
from typing import Protocol

import trio

from protocol.messages import Trim
from protocol.pages import EXCLUSIVE, PAGE, PRESENT, flagged_runs, private_writable_regions
from supervisor.log import error

#: Pending trims beyond this are dropped: the next idle period asks again.
QUEUE = 4096

#: Seconds the trimmer waits per page it asked a child to give back: about
#: twice the child's own work per page here, so give-backs do not overlap.
PACE_S_PER_PAGE = 20e-6


class Trimmable(Protocol):
    pid: int
    last_used: float
    reshared_at: float

    @property
    def idle(self) -> bool: ...

    @property
    def alive(self) -> bool: ...

    def send(self, message: Trim) -> None: ...


def own_pages(pid: int) -> bytes:
    """Addresses (native u64, ascending) of the pages only process ``pid`` maps
    in its private writable mappings; empty if it is gone."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            maps = f.read().decode("ascii", "replace")
        pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    except OSError:
        return b""
    pages = array.array("Q")
    try:
        for start, end in private_writable_regions(maps):
            entries = os.pread(pagemap, (end - start) // PAGE * 8, start // PAGE * 8)
            for first, last in flagged_runs(entries, start, PRESENT | EXCLUSIVE):
                pages.extend(range(first, last, PAGE))
    except OSError:
        return b""
    finally:
        os.close(pagemap)
    return pages.tobytes()


class IdleTrimmer:
    """One task that asks the children handed to :meth:`ask`, one at a time.

    A child is asked once per idle period, and the next one only once its
    give-back has had time to end: the page map is read, and if the
    child was not used meanwhile it gets its :class:`Trim` and counts as
    ``reshared_at`` its ``last_used`` (so the plan does not ask again until
    it has served and fallen idle again).
    """

    def __init__(self, read_pages: Callable[[int], bytes] = own_pages,
                 calm: Callable[[], bool] = lambda: True) -> None:
        self._send, self._receive = trio.open_memory_channel[Trimmable](QUEUE)
        self._read_pages = read_pages
        #: False while cold starts are busy (supervisor.pool.plan.calm): the
        #: queued asks are dropped then, and the next idle scan asks again.
        self._calm = calm
        self._pending: set[int] = set()
        #: Trims sent so far (the pool's snapshot shows it).
        self.sent = 0

    def ask(self, child: Trimmable) -> None:
        if child.pid in self._pending:
            return
        try:
            self._send.send_nowait(child)
        except trio.WouldBlock:
            return
        self._pending.add(child.pid)

    async def run(self) -> None:
        """Ask each child handed in, one at a time, for as long as the pool runs.
        A give-back is an optimisation: one that fails is logged and skipped,
        and the task, which lives in the pool's nursery, goes on (an exception
        escaping it would end the supervisor)."""
        async for child in self._receive:
            self._pending.discard(child.pid)
            try:
                await self._trim(child)
            except Exception as exc:  # noqa: BLE001 - see the docstring
                error("idle_trim.failed", exc_info=exc, pid=child.pid)

    async def _trim(self, child: Trimmable) -> None:
        used = child.last_used
        if not (child.alive and child.idle and self._calm()):
            return
        pages = await trio.to_thread.run_sync(self._read_pages, child.pid)
        if not (child.alive and child.idle and child.last_used == used):
            return  # it served meanwhile: the next idle period asks again
        child.reshared_at = used
        if pages:
            child.send(Trim(pages))
            self.sent += 1
            await trio.sleep(len(pages) // 8 * PACE_S_PER_PAGE)  # see the module docstring
