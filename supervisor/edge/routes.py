"""Cloudflare-style route patterns: which platform script serves a request.

A route is ``host/path`` with ``*`` wildcards, e.g. ``*.example.com/*``,
``example.com/api/*`` or ``*/*``. An optional ``http://`` / ``https://``
prefix is accepted and ignored (TLS, if any, ends in front of Corral), and a
query string never takes part in matching. ``*`` matches any run of
characters, including none, so ``*.example.com`` needs a subdomain (it does
not match ``example.com`` itself) while ``*example.com`` matches both, as on
Cloudflare. Hosts compare case-insensitively and without their port; paths
compare case-sensitively.

Precedence, when several routes match (most specific wins):

1. a host without ``*`` beats any wildcard host; between wildcard hosts the
   one with more literal characters wins (``*.api.example.com`` beats
   ``*.example.com`` beats ``*``);
2. then a path without ``*`` beats any wildcard path; between wildcard paths
   the one with more literal characters wins (``/api/v1/*`` beats ``/api/*``
   beats ``/*``);
3. then the route listed first wins, so the order is always deterministic.

A route whose script is empty is an *exclusion*, as on Cloudflare: the
requests it matches (being the most specific route) are served by no script,
so ``example.com/static/*`` with no script carves a hole in ``example.com/*``.

Host specificity dominates path specificity because a host names an
application: ``example.com/*`` should keep serving ``example.com/api/x`` even
if someone adds a catch-all ``*/api/*`` for other tenants.

Everything is compiled once into a :class:`RouteTable`; a lookup is a dict
probe for exact hosts plus a walk over pre-sorted, pre-compiled wildcard
routes, which stays fast for the handful of routes a platform has.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

__all__ = ["RouteError", "RouteTable", "check_wildcards", "compile_routes", "match", "normalize_hostname",
           "normalize_pattern", "split_host"]

# Characters a host pattern may hold: DNS labels, dots, '*' and '_' (seen in
# internal names). A port is not part of a pattern: the request's is dropped.
_HOST_RE = re.compile(r"^[a-z0-9*._-]+$")
_MAX_PATTERN = 1024
#: A custom domain's host name: dot-separated labels, no wildcard.
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9_-]+(\.[a-z0-9_-]+)*$")


class RouteError(ValueError):
    """A route pattern that cannot be used, with the reason in the message."""


class _Compiled(msgspec.Struct, frozen=True):
    """One route, ready to test: host and path as literal text or regex."""

    pattern: str
    script: str
    host: str
    host_re: re.Pattern[str] | None  # None: exact host
    path: str
    path_re: re.Pattern[str] | None  # None: exact path
    key: tuple[int, int, int, int, int]  # sort key, smallest = most specific

    def path_matches(self, path: str) -> bool:
        if self.path_re is None:
            return path == self.path
        return self.path_re.fullmatch(path) is not None


def normalize_pattern(pattern: str) -> str:
    """Return the canonical form of ``pattern`` or raise :class:`RouteError`.

    Canonical means: no scheme, host lowercased. The store keeps this form,
    so two spellings of one route are recognised as a duplicate.
    """
    if not isinstance(pattern, str) or not pattern.strip():
        raise RouteError("route pattern must be a non-empty string like 'example.com/*'")
    text = pattern.strip()
    if len(text) > _MAX_PATTERN:
        raise RouteError(f"route pattern is longer than {_MAX_PATTERN} characters")
    lowered = text.lower()
    for scheme in ("http://", "https://"):
        if lowered.startswith(scheme):
            text = text[len(scheme):]
            break
    host, slash, path = text.partition("/")
    if not slash:
        raise RouteError(
            f"route pattern {pattern!r} has no path: write it as host/path, e.g. "
            f"'{host or 'example.com'}/*' for every path"
        )
    host = host.lower()
    if not host:
        raise RouteError(f"route pattern {pattern!r} has no host: use '*/...' to match any host")
    if ":" in host:
        raise RouteError(f"route pattern {pattern!r} has a port: patterns match hosts without ports")
    if not _HOST_RE.match(host):
        raise RouteError(
            f"route pattern {pattern!r} has an invalid host: use letters, digits, '.', '-', '_' and '*'"
        )
    if any(c in path for c in "?#") or any(ord(c) < 0x21 or c == "\x7f" for c in path):
        raise RouteError(
            f"route pattern {pattern!r} has an invalid path: no query, fragment, spaces or control characters"
        )
    return f"{host}/{path}"


def check_wildcards(canonical: str) -> str:
    """A new route's canonical pattern, or :class:`RouteError` if it has a
    wildcard where Cloudflare refuses one: "route patterns may not contain
    infix wildcards", so ``*`` may only begin the host (``*.example.com``,
    ``*example.com``, ``*``) and end the path (``example.com/api/*``). Routes
    stored before this check still compile and match as globs."""
    host, _, path = canonical.partition("/")
    if "*" in host.lstrip("*") or host.startswith("**"):
        raise RouteError(f"route pattern {canonical[:200]!r} has a '*' inside its host: a host may only "
                         "begin with one, as in '*.example.com/*' or '*example.com/*'")
    if "*" in path[:-1]:
        raise RouteError(f"route pattern {canonical[:200]!r} has a '*' inside its path: a path may only end "
                         "with one, as in 'example.com/images/*' (no infix wildcards, e.g. "
                         "'example.com/*.jpg')")
    return canonical


def normalize_hostname(hostname: str) -> str:
    """A custom domain's host name, lowercased, or :class:`RouteError` saying
    why it is not one (a custom domain takes a whole host: no wildcard, no
    path, as wrangler checks before it sends one)."""
    if not isinstance(hostname, str) or not hostname.strip():
        raise RouteError("a custom domain must be a host name like 'api.example.com'")
    host = hostname.strip().lower().rstrip(".")
    if "*" in host:
        raise RouteError(f"custom domain {hostname[:200]!r} has a wildcard: a custom domain is one host "
                         "name (use a route for a pattern)")
    if "/" in host:
        raise RouteError(f"custom domain {hostname[:200]!r} has a path: a custom domain takes every path "
                         "of its host (use a route for a path)")
    if not _HOSTNAME_RE.match(host):
        raise RouteError(f"custom domain {hostname[:200]!r} is not a host name: use letters, digits, '-' "
                         "and '_' in labels separated by '.'")
    return host


def _glob(text: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(piece) for piece in text.split("*")), re.DOTALL)


def _compile_one(pattern: str, script: str, index: int) -> _Compiled:
    canonical = normalize_pattern(pattern)
    host, _, rest = canonical.partition("/")
    path = "/" + rest
    host_wild = "*" in host
    path_wild = "*" in path
    key = (
        int(host_wild),
        -len(host.replace("*", "")),
        int(path_wild),
        -len(path.replace("*", "")),
        index,
    )
    return _Compiled(
        pattern=canonical,
        script=script,
        host=host,
        host_re=_glob(host) if host_wild else None,
        path=path,
        path_re=_glob(path) if path_wild else None,
        key=key,
    )


def split_host(host: str) -> str:
    """The request's host without port or trailing dot, lowercased."""
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal, maybe with a port
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


class RouteTable:
    """Compiled routes; :meth:`match` answers the script for a host and path."""

    __slots__ = ("_domains", "_exact", "_wild", "routes")

    def __init__(self, routes: Iterable[Any] = (), domains: Iterable[Any] = ()) -> None:
        """``routes``: ``(pattern, script)`` pairs or objects with ``.pattern`` and ``.script``.
        ``domains``: custom domains, objects with ``.hostname`` and ``.service``:
        every path of the host goes to that script, ahead of any route, as a
        Custom Domain takes precedence over routes on Cloudflare.

        Raises :class:`RouteError` on the first invalid pattern.
        """
        self._domains = {normalize_hostname(d.hostname): d.service for d in domains}
        compiled: list[_Compiled] = []
        for index, route in enumerate(routes):
            if isinstance(route, tuple):
                pattern, script = route
            else:
                pattern, script = route.pattern, route.script
            compiled.append(_compile_one(pattern, script, index))
        compiled.sort(key=lambda r: r.key)
        self.routes: tuple[_Compiled, ...] = tuple(compiled)
        exact: dict[str, list[_Compiled]] = {}
        for route in compiled:
            if route.host_re is None:
                exact.setdefault(route.host, []).append(route)
        self._exact = {host: tuple(rs) for host, rs in exact.items()}
        self._wild = tuple(r for r in compiled if r.host_re is not None)

    def __len__(self) -> int:
        return len(self.routes)

    def match(self, host: str, path: str) -> str | None:
        """The script of the most specific route matching, or None (also when
        that route is an exclusion: its script is empty).

        ``host`` may carry a port (``Host`` header as sent); ``path`` may carry
        a query string, which is ignored.
        """
        host = split_host(host)
        if self._domains:
            script = self._domains.get(host)
            if script is not None:
                return script
        path = path.partition("?")[0] or "/"
        for route in self._exact.get(host, ()):
            if route.path_matches(path):
                return route.script or None
        for route in self._wild:
            assert route.host_re is not None
            if route.host_re.fullmatch(host) is not None and route.path_matches(path):
                return route.script or None
        return None


def compile_routes(routes: Iterable[Any]) -> RouteTable:
    """Compile routes once; keep the table and rebuild it when routes change."""
    return RouteTable(routes)


def match(routes: RouteTable | Iterable[Any], host: str, path: str) -> str | None:
    """Which script serves ``host`` + ``path``; None when no route matches.

    Pass a :class:`RouteTable` on the request path; anything else is compiled
    on the spot (convenient in tests, wasteful per request).
    """
    table = routes if isinstance(routes, RouteTable) else RouteTable(routes)
    return table.match(host, path)
