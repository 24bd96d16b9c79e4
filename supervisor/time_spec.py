"""A time as the usage API and ``corral usage`` take it (``since``, ``until``).

One reading for both, so that the CLI refuses what the server would refuse
as bad usage (exit status 2), before any request, rather than as an API
error (1).
"""

from __future__ import annotations

import datetime
import time

from supervisor.admin.decode import clip
from supervisor.errors import Invalid

#: The latest time ``?since=``/``?until=`` may name (9999-12-31, as ISO 8601
#: goes): the usage store keeps times as SQLite integers, which a larger
#: number (``?until=1`` and 30 zeros, ``-1e20d``) overflows into a 500.
MAX_EPOCH = 253402300799


def parse_time(value: str | None, what: str, default: int) -> int:
    """Epoch seconds from ``?since=``/``?until=``: epoch seconds or milliseconds,
    an ISO 8601 time (UTC unless it says otherwise), relative (``-1h``, ``30m``
    ago: a number and s, m, h or d), or ``now``. A time before 1970 is 0 (no usage is
    older); one after :data:`MAX_EPOCH` is refused."""
    if not value:
        return default
    seconds = _epoch_of(value, what)
    if seconds > MAX_EPOCH:
        raise Invalid(f"{what} must be a time before the year 10000, got {clip(value)!r}")
    return max(seconds, 0)


def _epoch_of(value: str, what: str) -> int:
    """:func:`parse_time`'s reading of ``value``, unbounded."""
    text = value.strip()
    if text.lower() == "now":
        return int(time.time())
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units and text[:-1].lstrip("-").replace(".", "", 1).isdigit():
            return int(time.time() - abs(float(text[:-1])) * units[text[-1]])
        if text.replace(".", "", 1).isdigit():
            number = float(text)
            return int(number / 1000 if number > 1e11 else number)
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        return int(moment.timestamp())
    except (ValueError, OverflowError):
        raise Invalid(f"{what} must be epoch seconds, an ISO 8601 time, now or like -1h, "
                      f"got {clip(value)!r}") from None
