"""Pagination cursors and tag filters of script listings."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable

from supervisor.errors import Invalid
from supervisor.model import NAME_RE, check_tag

#: ``(tag, wanted)``: the script must have ``tag`` (True) or must not (False).
TagFilter = tuple[str, bool]


def encode_cursor(name: str) -> str:
    """The cursor of a page is the last name on it: pages stay consistent
    while scripts are added or removed."""
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        name = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        name = ""
    if not NAME_RE.fullmatch(name):
        raise Invalid(f"invalid cursor {cursor[:80]!r}: pass back the cursor of a previous page unchanged")
    return name


def parse_tag_filters(text: str) -> list[TagFilter]:
    """Parse ``t1,t2:yes,t3:no`` as in the list and bulk-delete query strings.

    A bare tag means ``yes``. The suffix is only read as a filter when it is
    exactly ``yes`` or ``no``, so ``plan:free`` is the tag ``plan:free``.
    """
    filters: list[TagFilter] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        head, sep, tail = item.rpartition(":")
        if sep and tail.lower() in ("yes", "no"):
            filters.append((check_tag(head), tail.lower() == "yes"))
        else:
            filters.append((check_tag(item), True))
    return filters


def coerce_filters(tags: Iterable[str | TagFilter] | None) -> list[TagFilter]:
    filters: list[TagFilter] = []
    for item in tags or ():
        if isinstance(item, str):
            filters.append((check_tag(item), True))
        else:
            tag, wanted = item
            filters.append((check_tag(tag), bool(wanted)))
    return filters
