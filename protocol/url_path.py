"""A request path as the WHATWG URL parser leaves it: no dot segments.

workerd parses every request's URL with the WHATWG parser, which resolves
``.`` and ``..`` segments, spelt out or percent-encoded (``%2e``), and reads
a backslash as a slash (http and https are "special" schemes). So on
Cloudflare ``/x/%2e%2e/admin/secret`` *is* ``/admin/secret``: to the worker's
``request.url``, to routes, to ``run_worker_first`` and to ``_headers``.
Anything that matched the raw path instead could be walked around (a
``run_worker_first`` gate guarding ``/admin/*`` answered ``/./admin/x``
from the assets, without the worker). Empty segments stay, as they do there.

Both sides use it: the supervisor on every request's target, the sandbox on
a Cache API key given as a string (workerd parses it as a URL too).
"""

from __future__ import annotations

_SINGLE = frozenset({".", "%2e"})
_DOUBLE = frozenset({"..", ".%2e", "%2e.", "%2e%2e"})


def needs_normalising(target: bytes) -> bool:
    """A cheap test that ``target`` may hold a dot segment or a backslash:
    on every request, so three substring checks, allowed false positives."""
    return b"/." in target or b"%2" in target or b"\\" in target


def normalised(target: str) -> str:
    """``target`` (a path, with its query) with dot segments resolved and
    backslashes read as slashes in the path; the query is left as it is."""
    path, mark, query = target.partition("?")
    path = path.replace("\\", "/")
    segments = path.split("/")[1:]
    if not any(s.lower() in _SINGLE or s.lower() in _DOUBLE for s in segments):
        return path + mark + query
    out: list[str] = []
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        lowered = segment.lower()
        if lowered in _DOUBLE:
            if out:
                out.pop()
            if i == last:
                out.append("")
        elif lowered in _SINGLE:
            if i == last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out) + mark + query
