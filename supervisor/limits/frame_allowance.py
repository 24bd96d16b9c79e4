"""How many frames a child may make the supervisor handle.

Why: every child's channel is read on the one event loop that every request
crosses, and a frame costs the reader far more than its writer. A hostile
child wrote 256 KiB blobs of one 18-byte frame (a ``Credit`` for a stream
that does not exist) in a loop: 64 ms of its own CPU made the supervisor
decode and dispatch 10 million frames, 3.9 s of its CPU, and another
tenant's median latency went from 0.8 ms to 51 ms meanwhile (audit, finding
F1). Its CPU limit did not help: under ``cpuMs: 10`` one request still cost
the supervisor 0.7 s, the writes being nearly free.

So each child has an allowance of frames, spent by what the supervisor reads
from it and earned two ways:

* **answering**: every frame the supervisor sends it grants
  :data:`PER_FRAME_SENT` (an invocation is answered in a few frames, plus its
  log lines; a streamed body's chunk is answered by a credit);
* **time**: :data:`RATE` frames a second, for what a child does on its own
  (a ``waitUntil`` task's logs, a Durable Object's WebSocket messages),

never more than :data:`BURST` in hand. A read that overdraws it is handled
(the frames are read already: at most one receive buffer's worth), and then
the child is not read again until time has paid the debt back. Meanwhile
its socket's buffer fills and its own writes block: the flood costs the
flooder. At ~0.4 us of the supervisor's CPU per frame (measured with that
flood), a child held to :data:`RATE` costs it at most ~7 ms a second.

A well-behaved child never comes near: the most a request makes a child
write is its answer and the 1,000 log lines an invocation may keep.

The fast path is one subtraction per read (:meth:`FrameAllowance.spend`);
the clock is read only when the allowance runs out.
"""

from __future__ import annotations

#: Frames granted for each frame the supervisor sends the child.
PER_FRAME_SENT = 256
#: Frames a second a child earns whatever it is sent.
RATE = 16_384
#: The most frames a child may hold: what it may send in one go unasked.
BURST = 65_536


class FrameAllowance:
    """One child's allowance (see the module docstring). ``sent`` is counted
    by the sender (an increment per frame); the reader calls :meth:`spend`."""

    __slots__ = ("balance", "sent", "_at")

    def __init__(self, now: float) -> None:
        self.balance = BURST
        #: Frames sent to the child since the allowance was last topped up.
        self.sent = 0
        self._at = now

    def spend(self, frames: int) -> bool:
        """``frames`` were read. True while the allowance is not overdrawn
        (no clock read); False means :meth:`overdrawn` decides."""
        self.balance -= frames
        return self.balance >= 0

    def overdrawn(self, now: float) -> float:
        """Top the allowance up with what answers and time have earned since
        the last top-up. Returns 0 if it is no longer overdrawn, else the
        seconds until time pays the debt back: the child is not to be read
        before then."""
        earned = self.sent * PER_FRAME_SENT + (now - self._at) * RATE
        self.sent = 0
        self._at = now
        self.balance = min(BURST, self.balance + int(earned))
        if self.balance >= 0:
            return 0.0
        return -self.balance / RATE
