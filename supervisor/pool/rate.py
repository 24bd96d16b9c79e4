"""How often something happened lately: an exponentially decayed event rate.

The pool sizes its spares to the recent cold-start rate: enough to cover the
cold starts that arrive while a taken spare's replacement is on its way
(:data:`supervisor.pool.plan.REFILL_S`). A fixed count is either too small
for a storm or memory spent for nothing when the platform is quiet. One float
and a timestamp per counter, O(1) per event, no timers: the rate decays by
itself between events, so a quiet pool falls back to its floor.
"""

from __future__ import annotations

import math


class EventRate:
    """Events per second over roughly the last ``half_life_s`` seconds.

    Each event adds ``1 / tau`` to a level that decays as ``exp(-dt / tau)``;
    for events at a steady rate ``r`` the level settles at ``r``.
    """

    __slots__ = ("_level", "_at", "_tau")

    def __init__(self, half_life_s: float = 1.0) -> None:
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be positive, not {half_life_s!r}")
        self._tau = half_life_s / math.log(2)
        self._level = 0.0
        self._at = 0.0

    def record(self, now: float) -> None:
        """One event at ``now`` (seconds, monotonic)."""
        self._level = self.per_second(now) + 1.0 / self._tau
        self._at = now

    def per_second(self, now: float) -> float:
        """The decayed rate at ``now``."""
        if self._level == 0.0:
            return 0.0
        return self._level * math.exp(-max(0.0, now - self._at) / self._tau)
