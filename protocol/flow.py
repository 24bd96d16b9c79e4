"""Credit-based flow control for body streams, sans I/O.

The rules of :mod:`protocol.messages` in one place, for both the asyncio
child and the trio supervisor. The receiver of a stream grants credit as its
consumer asks for data; the sender may never have more unacknowledged bytes
in flight than it was granted. A receiver that sees more than it granted
knows its peer is broken (or hostile).
"""

from __future__ import annotations

from .messages import STREAM_WINDOW


class CreditExceeded(Exception):
    """The sender sent more bytes than it was granted."""


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
