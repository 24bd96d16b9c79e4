"""The compatibility date and flags of the script this child runs (one
script a child: set once, as it is loaded), for the runtime's behaviours
that follow them (protocol.compat reads a flag as workerd does)."""

from __future__ import annotations

from collections.abc import Iterable

from protocol.compat import enabled

_date = ""
_flags: frozenset[str] = frozenset()


def configure(compatibility_date: str, compatibility_flags: Iterable[str]) -> None:
    global _date, _flags
    _date, _flags = compatibility_date, frozenset(compatibility_flags)


def on(flag: str, disable: str, since: str) -> bool:
    """Whether ``flag`` is on for the loaded script."""
    return enabled(_date, _flags, flag, disable, since)
