"""``_redirects`` and ``_headers``: a static-asset site's own rules, as Cloudflare applies them.

Wrangler does not upload these two files of the assets directory as assets:
it sends their text in the script's metadata (``assets.config._redirects``
and ``_headers``), and Cloudflare's asset server applies them. So does
Corral's (:mod:`supervisor.edge.assets`), with the same grammar and order:

``_redirects``: one ``source destination [status]`` per line (``#``
comments; status 301, 302 (the default), 303, 307, 308, or 200 to serve
another asset at the same URL). Sources are paths; ``*`` (a splat) and
``:name`` (one path segment) capture what the destination names as
``:splat`` and ``:name`` (a whole segment here: see :func:`_whole_segments`).
Rules without either are matched first, by exact
path, among those above the first rule with one; then the others, in order;
the first match wins. Destinations may be paths or ``https://`` URLs. They
are followed before any asset is looked up, whether an asset exists there
or not. At most 2,000 exact and 100 pattern rules; lines of at most 2,000
characters.

``_headers``: a path line (which may hold ``*`` and ``:name``), then
``Name: value`` lines to set on every response the asset server gives for
matching paths, or ``! Name`` to remove one. Every matching rule applies,
in order: a header the file sets twice is sent with both values. At most
100 rules.

A line that breaks these is ignored, as Cloudflare ignores it, and reported
(:attr:`Rules.problems`), as Wrangler warns of it, so that an upload can say
what will not take effect.
"""

from __future__ import annotations

import functools
import posixpath
import re
from dataclasses import dataclass, field
from urllib.parse import quote, urljoin, urlsplit

REDIRECT_STATUSES = frozenset({200, 301, 302, 303, 307, 308})
MAX_LINE = 2000
MAX_STATIC_REDIRECTS = 2000
MAX_DYNAMIC_REDIRECTS = 100
MAX_HEADER_RULES = 100
#: Distinct header names one ``_headers`` rule sets (each request matching it
#: sets them all: a bound on the work, as the rules' count is).
MAX_HEADERS_PER_RULE = 100

_PLACEHOLDER = re.compile(r":([A-Za-z]\w*)")
_ABSOLUTE = re.compile(r"^https://+(?P<host>[^/]+)/?(?P<path>.*)")
_PORT = re.compile(r".*:\d+$")
_PATH_LINE = re.compile(r"^([^\s]+://|/)")
_INLINE_COMMENT = re.compile(r"\s+#.*$")
_SAFE = "/:*%@!$&'()+,;=-._~"
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9a-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_UNMATCHABLE = ("a :name must be a whole path segment (/users/:id/...) and a name, or *, "
                "may appear once")


@dataclass(frozen=True, slots=True)
class Redirect:
    """What a matched ``_redirects`` rule says: 200 serves ``to`` in place."""

    status: int
    to: str


@dataclass(frozen=True, slots=True)
class _Pattern:
    """A source path with ``*``/``:name`` (or an absolute ``https://host/path``) as a regex."""

    regex: re.Pattern[str]
    cross_host: bool

    def match(self, host: str, path: str) -> dict[str, str] | None:
        found = self.regex.fullmatch(f"https://{host}{path}" if self.cross_host else path)
        return None if found is None else found.groupdict()


@dataclass(frozen=True, slots=True)
class _HeaderRule:
    pattern: _Pattern
    set: tuple[tuple[str, str], ...]
    unset: tuple[str, ...]


@dataclass(frozen=True)
class Rules:
    """A site's parsed ``_redirects`` and ``_headers``."""

    static: dict[str, Redirect] = field(default_factory=dict)
    dynamic: tuple[tuple[_Pattern, Redirect], ...] = ()
    headers: tuple[_HeaderRule, ...] = ()
    #: The lines ignored, each with why (for the uploader).
    problems: tuple[str, ...] = ()

    def redirect(self, host: str, path: str) -> Redirect | None:
        """The rule ``path`` (as requested, still percent-encoded) meets, its destination filled in."""
        if self.static:
            hit = self.static.get(path)
            if hit is not None:
                return hit
        for pattern, rule in self.dynamic:
            groups = pattern.match(host, path)
            if groups is not None:
                to = _fill(rule.to, groups).strip()
                if not re.match(r"^\w+://", to):
                    to = re.sub(r"/+", "/", to)  # a relative destination: no empty segments
                return Redirect(rule.status, to)
        return None

    def apply_headers(self, host: str, path: str, headers: list[tuple[bytes, bytes]]) -> None:
        """Set and remove, in place, what every rule matching ``path`` says."""
        set_here: set[str] = set()
        for rule in self.headers:
            groups = rule.pattern.match(host, path)
            if groups is None:
                continue
            # One pass over the headers per rule, whatever its size: a rule of
            # thousands of names rebuilt the list once per name (seconds of the
            # event loop per request, every tenant's).
            drop = {name.lower().encode("latin-1") for name in rule.unset}
            drop.update(name.encode("latin-1") for name, _ in rule.set if name not in set_here)
            if drop:
                headers[:] = [h for h in headers if h[0].lower() not in drop]
            for name, value in rule.set:
                set_here.add(name)
                headers.append((name.encode("latin-1"), _fill(value, groups).encode("latin-1", "replace")))


def _fill(template: str, groups: dict[str, str]) -> str:
    for name, value in groups.items():
        if value is not None:
            template = template.replace(f":{name}", value)
    return template


def _whole_segments(source: str) -> bool:
    """Each ``:name`` of the path is a whole segment (``/users/:id/...``), and
    each of the host a whole label. The supervisor matches these rules for
    every request to the site, on its event loop: with placeholders bounded
    by ``/`` (or ``.``) and one splat, a backtracking match stays linear in
    the path, where ``/:a-:b`` against a crafted URL would take quadratic
    time (Cloudflare's asset server, a JavaScript regex per site, takes any)."""
    host_end = 0  # where the host ends: a relative source has none
    if source.startswith("https://"):
        host_end = source.find("/", len("https://"))
        host_end = len(source) if host_end < 0 else host_end
    for found in _PLACEHOLDER.finditer(source):
        start, end = found.span()
        bounds = "./" if start < host_end else "/"
        before = source[start - 1] if start else ""
        after = source[end] if end < len(source) else ""
        if before not in bounds or (after and after not in bounds):
            return False
    return True


def _pattern(source: str) -> _Pattern | None:
    """``*`` -> ``(?P<splat>.*)``, ``:name`` -> one segment (one label in a host)."""
    if not _whole_segments(source):
        return None
    text = "(?P<splat>.*)".join(re.escape(part) for part in source.split("*"))
    cross_host = source.startswith("https://")
    if cross_host:
        host_end = text.find("/", len(re.escape("https://")))
        host_end = len(text) if host_end < 0 else host_end
        host = _PLACEHOLDER.sub(r"(?P<\1>[^/.]+)", text[:host_end])
        text = host + text[host_end:]
    text = _PLACEHOLDER.sub(r"(?P<\1>[^/]+)", text)
    try:
        return _Pattern(re.compile(text), cross_host)
    except re.error:  # a name used twice (two splats): Cloudflare drops such a rule too
        return None


def _clean_path(path: str, keep_query: bool) -> str:
    """A path as a URL parser gives it back: dot segments resolved, unsafe
    characters percent-encoded; the query and fragment kept if asked."""
    parts = urlsplit("http://x" + ("" if path.startswith("/") else "/") + path)
    clean = posixpath.normpath(parts.path) if parts.path not in ("", "/") else "/"
    if parts.path.endswith("/") and clean != "/":
        clean += "/"
    clean = quote(clean.replace("//", "/"), safe=_SAFE)
    if keep_query:
        clean += (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")
    return clean


def _url(token: str, *, relative_only: bool, ports: bool, keep_query: bool) -> tuple[str | None, str]:
    """A rule's path or URL, normalised; or None and why not."""
    absolute = _ABSOLUTE.match(token)
    if absolute is not None:
        if relative_only:
            return None, f"only paths are allowed here, not the absolute URL {token}"
        if not ports and _PORT.match(absolute["host"]):
            return None, f"ports are not supported, in {token}"
        return f"https://{absolute['host']}{_clean_path(absolute['path'], keep_query)}", ""
    if relative_only and not token.startswith("/"):
        token = "/" + token
    if token.startswith("/"):
        return _clean_path(token, keep_query), ""
    return None, ("a path must begin with /" if relative_only else
                  f"expected a path (beginning with /) or an https:// URL, got {token}")


def _lines(text: str) -> list[tuple[int, str]]:
    return [(number, line.strip()) for number, line in enumerate(text.split("\n"), 1)
            if line.strip() and not line.strip().startswith("#")]


def _parse_redirects(text: str, html_handling: str, problems: list[str]
                     ) -> tuple[dict[str, Redirect], list[tuple[_Pattern, Redirect]]]:
    static: dict[str, Redirect] = {}
    dynamic: list[tuple[_Pattern, Redirect]] = []
    seen: set[str] = set()
    exact_allowed = True
    for number, line in _lines(text):
        where = f"_redirects line {number}"
        if len(line) > MAX_LINE:
            problems.append(f"{where}: longer than {MAX_LINE} characters; ignored")
            continue
        tokens = _INLINE_COMMENT.sub("", line).split()
        if len(tokens) not in (2, 3):
            problems.append(f"{where}: expected 2 or 3 whitespace-separated tokens, got {len(tokens)}")
            continue
        source, why = _url(tokens[0], relative_only=True, ports=False, keep_query=False)
        if source is None:
            problems.append(f"{where}: {why}")
            continue
        exact = "*" not in source and not _PLACEHOLDER.search(source)
        if exact and exact_allowed:
            if len(static) >= MAX_STATIC_REDIRECTS:
                problems.append(f"{where}: more than {MAX_STATIC_REDIRECTS} static rules; ignored")
                continue
        else:
            exact_allowed = False
            if len(dynamic) >= MAX_DYNAMIC_REDIRECTS:
                problems.append(f"{where}: more than {MAX_DYNAMIC_REDIRECTS} rules with * or :name; "
                                "this and the lines after it are ignored")
                break
        to, why = _url(tokens[1], relative_only=False, ports=True, keep_query=True)
        if to is None:
            problems.append(f"{where}: {why}")
            continue
        status_text = tokens[2] if len(tokens) == 3 else "302"
        if not status_text.isdigit() or int(status_text) not in REDIRECT_STATUSES:
            problems.append(f"{where}: valid statuses are 200, 301, 302 (the default), 303, 307 "
                            f"and 308, got {status_text}")
            continue
        status = int(status_text)
        relative = not to.startswith("https://")
        loops = relative and ((source.endswith("/*") and re.search(r"/index(\.html)?$", to)) or (
            source.endswith("/") and re.search(r"/index(\.html)?$", to) and html_handling != "none"))
        if loops:
            problems.append(f"{where}: would redirect forever (the asset server drops /index and "
                            ".html from a URL, which meets this rule again); ignored")
            continue
        if source in seen:
            problems.append(f"{where}: a second rule for {source}; ignored")
            continue
        seen.add(source)
        if status == 200 and not relative:
            problems.append(f"{where}: a 200 (serve in place) rule must point at a path, got {to}")
            continue
        if exact and exact_allowed:
            static[source] = Redirect(status, to)
            continue
        pattern = _pattern(source)
        if pattern is None:
            problems.append(f"{where}: {_UNMATCHABLE} in {source}; ignored")
            continue
        dynamic.append((pattern, Redirect(status, to)))
    return static, dynamic


def _parse_headers(text: str, problems: list[str]) -> list[_HeaderRule]:
    rules: list[_HeaderRule] = []
    current: tuple[_Pattern, dict[str, list[str]], list[str]] | None = None
    skipping = False

    def close() -> None:
        if current is not None:
            pattern, values, unset = current
            if values or unset:
                rules.append(_HeaderRule(pattern, tuple((name, ", ".join(parts)) for name, parts in values.items()),
                                         tuple(unset)))

    for number, line in _lines(text):
        where = f"_headers line {number}"
        if len(line) > MAX_LINE:
            problems.append(f"{where}: longer than {MAX_LINE} characters; ignored")
            continue
        if _PATH_LINE.match(line):
            close()
            current, skipping = None, False
            if len(rules) >= MAX_HEADER_RULES:
                problems.append(f"{where}: more than {MAX_HEADER_RULES} rules; this and the lines "
                                "after it are ignored")
                break
            path, why = _url(line, relative_only=False, ports=False, keep_query=False)
            if path is None or line.count("*") > 1 or ("*" in line and re.search(r":splat(?!\w)", line)):
                problems.append(f"{where}: {why or 'only one * per rule (name the others :like_this)'}")
                skipping = True
                continue
            pattern = _pattern(path)
            if pattern is None:
                problems.append(f"{where}: {_UNMATCHABLE} in {path}")
                skipping = True
                continue
            current = (pattern, {}, [])
            continue
        if skipping:
            continue
        if current is None:
            problems.append(f"{where}: a path (beginning with /) must come before headers")
            continue
        if ":" not in line:
            if line.startswith("! "):
                current[2].append(line[2:].strip())
            else:
                problems.append(f"{where}: expected 'Name: value' or '! Name'")
            continue
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if not _TOKEN.fullmatch(name) or not value or _CONTROL.search(value):
            problems.append(f"{where}: expected 'Name: value' (a name of letters, digits and "
                            "-_.!#$%&'*+^`|~, and a value without control characters)")
            continue
        values = current[1]
        if name not in values and len(values) >= MAX_HEADERS_PER_RULE:
            problems.append(f"{where}: more than {MAX_HEADERS_PER_RULE} headers in one rule; ignored")
            continue
        values.setdefault(name, []).append(value)
    close()
    return rules


@functools.lru_cache(maxsize=512)
def parse(redirects: str, headers: str, html_handling: str = "auto-trailing-slash") -> Rules:
    """The rules of a site (cached: every request of a version asks for the same texts)."""
    if not redirects and not headers:
        return Rules()
    problems: list[str] = []
    static, dynamic = _parse_redirects(redirects, html_handling, problems) if redirects else ({}, [])
    header_rules = _parse_headers(headers, problems) if headers else []
    return Rules(static, tuple(dynamic), tuple(header_rules), tuple(problems))


def location(redirect: Redirect, url: str) -> str:
    """The Location of a 3xx rule: same-site destinations as a path, the
    request's query kept unless the destination has its own."""
    request = urlsplit(url)
    target = urlsplit(urljoin(url, redirect.to))
    query = target.query or request.query
    tail = (f"?{query}" if query else "") + (f"#{target.fragment}" if target.fragment else "")
    if (target.scheme, target.netloc) == (request.scheme, request.netloc):
        return (target.path or "/") + tail
    return f"{target.scheme}://{target.netloc}{target.path}" + tail


def rewritten_path(redirect: Redirect, url: str) -> str:
    """The path a 200 rule serves in place of the requested one."""
    return urlsplit(urljoin(url, redirect.to)).path or "/"
