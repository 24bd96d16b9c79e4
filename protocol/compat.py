"""Whether a compatibility flag is on for a script, as workerd reads them.

The one rule both sides follow: the supervisor for what it does (queues'
content type, assets' navigation), the sandbox for what the runtime does
(brotli, a body's byte-order mark), from the date and flags a script was
uploaded with.
"""

from __future__ import annotations

from collections.abc import Iterable


def enabled(date: str | None, flags: Iterable[str], flag: str, disable: str, since: str) -> bool:
    """Whether ``flag`` is on for a script of compatibility ``date`` and
    ``flags``: named, or its default ``since`` date reached, unless its
    ``disable`` flag is named (as workerd's compatibility-date.capnp reads
    them). A script with no date (Corral takes one) gets the newest behaviour."""
    if flag in flags:
        return True
    if disable in flags:
        return False
    return not date or date >= since
