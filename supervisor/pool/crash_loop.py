"""Crash-loop back-off: a script version whose child dies on every request.

Each request to a script whose child keeps dying (``os._exit`` in the
handler, a segfault, a crash at load) used to take a fresh spare, a load and
a jail: ~9 ms of host CPU a time, charged to nobody, at whatever rate one
client drives it. Now, after :data:`CRASH_LOOP_DEATHS` deaths of its
children with no invocation completed in between, the version is **backed
off**: for :data:`FIRST_BACKOFF_S`, doubling with each further death up to
:data:`MAX_BACKOFF_S`, its requests get the answer a crashed worker gets
(``WorkerCrashed``, 502, outcome ``exception`` in the trace) at once, with no
fork. When the back-off is over, the next request tries a child again; if
that one dies too, the version backs off again, for twice as long. An
invocation a child completes, or a new deploy of the script, ends it all.

Only deaths that are the script's doing count (its process ended on its own
or broke the protocol): not a retirement, an idle or surplus kill, a zygote
rotation, nor a CPU or memory limit (those are answered by name, and the CPU
is the tenant's).

The rules are pure functions of a :class:`Streak` and the time, tested
without a process (tests/test_crash_loop.py); :class:`CrashLoops` keeps one
streak per version for the pool.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

#: Deaths in a row (no completed invocation between them) that start a back-off.
CRASH_LOOP_DEATHS = 3
#: The first back-off; each further death in a row doubles it, up to the most.
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
#: (namespace, script, version): one streak per version of a script.
Key = tuple[str, str, str]
#: Versions whose streak is kept at once (the oldest streak is forgotten first).
MAX_TRACKED = 4096


@dataclass(frozen=True)
class Streak:
    """One version's deaths in a row and its back-off."""

    #: Children that died since the last completed invocation.
    deaths: int = 0
    #: Back-offs since then (the next one lasts ``FIRST_BACKOFF_S * 2**backoffs``).
    backoffs: int = 0
    #: Until when (the pool's clock) requests are answered without a child.
    until: float = 0.0


def backoff_s(backoffs: int) -> float:
    """How long the back-off after ``backoffs`` earlier ones lasts."""
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** min(backoffs, 16))


def died(streak: Streak, now: float) -> Streak:
    """A child of the version died: one more in the streak, and a back-off
    once there are enough (at once, when it already backed off before)."""
    deaths = streak.deaths + 1
    if deaths < CRASH_LOOP_DEATHS and not streak.backoffs:
        return Streak(deaths)
    return Streak(deaths, streak.backoffs + 1, now + backoff_s(streak.backoffs))


def backing_off(streak: Streak | None, now: float) -> bool:
    return streak is not None and now < streak.until


class CrashLoops:
    """The streak of every version whose children died lately."""

    def __init__(self, max_tracked: int = MAX_TRACKED) -> None:
        self.max_tracked = max_tracked
        self._streaks: OrderedDict[Key, Streak] = OrderedDict()

    def died(self, key: Key, now: float) -> float | None:
        """Count a death; the back-off it starts, in seconds, if it starts one."""
        before = self._streaks.pop(key, None) or Streak()
        after = self._streaks[key] = died(before, now)
        while len(self._streaks) > self.max_tracked:
            self._streaks.popitem(last=False)
        return after.until - now if after.backoffs > before.backoffs else None

    def succeeded(self, key: Key) -> None:
        """A child of the version completed an invocation: the streak is over."""
        if self._streaks:
            self._streaks.pop(key, None)

    def forget(self, namespace: str, name: str) -> None:
        """A new deploy (or a deletion): the script's streaks are over."""
        for key in [k for k in self._streaks if k[0] == namespace and k[1] == name]:
            del self._streaks[key]

    def backing_off(self, key: Key, now: float) -> bool:
        return bool(self._streaks) and backing_off(self._streaks.get(key), now)

    def __len__(self) -> int:
        return len(self._streaks)
