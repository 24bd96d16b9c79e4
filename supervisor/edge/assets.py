"""Serving a script's static assets as Cloudflare's asset server does.

Used in three places: the ingress (a platform script with assets), a
dispatch to a user worker (assets answer before the worker, as in Workers
for Platforms) and ``env.ASSETS.fetch(request)`` (the worker asks). The
decision is :func:`resolve`, pure: path matching with ``html_handling``
(``auto-trailing-slash`` by default: ``/about`` serves ``about.html`` or
redirects to ``/about/`` for ``about/index.html``), ``not_found_handling``
(``single-page-application``, ``404-page``, or the worker),
``run_worker_first`` (a bool or patterns with ``!`` negations), and the
site's own ``_redirects`` and ``_headers`` (:mod:`supervisor.edge.asset_rules`:
redirects first, headers on every answer). Serving adds
content types as Cloudflare sets them (``text/*; charset=utf-8``,
``text/javascript`` for .js, ``image/vnd.microsoft.icon`` for .ico), a strong
ETag with ``If-None-Match``, HEAD, and single byte ranges.
"""

from __future__ import annotations

import mimetypes
import posixpath
import re
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import SplitResult, quote, unquote, urlsplit

import trio

from protocol.url_path import normalised
from supervisor import compat_flags
from supervisor.edge import asset_rules
from supervisor.edge.http_server import Connection, LengthMismatch
from supervisor.log import warn
from supervisor.model import AssetSet, ScriptRecord
from supervisor.pool.bodies import BytesBody, body_length
from supervisor.store.assets import AssetBlobs

#: Bodies up to this size are read at once; larger ones stream in chunks.
INLINE_BYTES = 256 * 1024
CHUNK = 64 * 1024

#: The types Cloudflare's asset server (the ``mime`` package's table) gives
#: where Python's own table has none or another.
_TYPES = {
    ".js": "text/javascript", ".mjs": "text/javascript", ".ico": "image/vnd.microsoft.icon",
    ".json": "application/json", ".wasm": "application/wasm", ".svg": "image/svg+xml",
    ".webp": "image/webp", ".woff2": "font/woff2", ".woff": "font/woff", ".txt": "text/plain",
    ".map": "application/json", ".webmanifest": "application/manifest+json",
    ".ts": "video/mp2t", ".yaml": "text/yaml", ".yml": "text/yaml", ".gz": "application/gzip",
    ".toml": "application/toml", ".md": "text/markdown", ".otf": "font/otf", ".ttf": "font/ttf",
    ".xml": "application/xml", ".wav": "audio/wav", ".m3u8": "application/vnd.apple.mpegurl",
    ".jsonld": "application/ld+json", ".rss": "application/rss+xml", ".atom": "application/atom+xml",
}
#: Python's built-in table only: the host's /etc/mime.types made a type differ
#: from host to host (``.ts`` was a Qt translation file on Debian).
_BUILT_IN = mimetypes.MimeTypes(filenames=())


def content_type(path: str) -> str | None:
    """The Content-Type Cloudflare's asset server sends for ``path``; None
    (no header, as there) for an extension it does not know."""
    ext = posixpath.splitext(path)[1].lower()
    kind = _TYPES.get(ext) or _BUILT_IN.guess_type(path)[0]
    if kind is not None and (kind.startswith("text/") or kind == "application/javascript"):
        kind += "; charset=utf-8"
    return kind


@dataclass(frozen=True)
class Decision:
    """What the asset server does with a path: serve, redirect, or not found."""

    kind: str  # "serve" | "redirect" | "not_found"
    path: str = ""
    status: int = 200
    location: str = ""


#: One step of html_handling: ``("serve", file)`` serves the file if it is
#: an asset; ``("move", file, url)`` redirects to ``url`` if that is where
#: the file is served (:func:`_moved`).
Step = tuple[str, ...]


def _moved(assets: AssetSet, file: str, destination: str) -> Decision | None:
    """A redirect to ``destination`` when that is not an asset of its own
    and serves what ``file`` holds (the same content, with redirects left
    out), as Cloudflare's asset server redirects: never to a URL that would
    answer something else, nor in a loop."""
    manifest = assets.manifest
    if file not in manifest or destination in manifest:
        return None
    there = _html_handling(assets, destination, redirects=False) or _not_found(assets, destination)
    if there.kind == "serve" and manifest[there.path].hash == manifest[file].hash:
        return Decision("redirect", location=destination)
    return None


def _auto_steps(path: str) -> list[Step]:
    """``auto-trailing-slash`` (the default): ``/about`` serves ``about.html``,
    ``/docs/`` serves ``docs/index.html``; their other spellings redirect there."""
    stem, base = path.removesuffix(".html"), path.rstrip("/")
    if path.endswith("/index"):
        folder = path[: -len("index")]
        steps: list[Step] = [("serve", path), ("move", path + ".html", folder),
                             ("move", folder[:-1] + ".html", folder[:-1])]
    elif path.endswith("/index.html"):
        folder = path[: -len("index.html")]
        steps = [("move", path, folder), ("move", folder[:-1] + ".html", folder[:-1])]
    elif path.endswith("/"):
        steps = [("serve", path + "index.html"), ("move", base + ".html", base)]
    elif path.endswith(".html"):
        steps = [("move", path, stem), ("move", stem + "/index.html", stem + "/")]
    else:
        steps = []
    return [*steps, ("serve", path), ("serve", path + ".html"), ("move", path + "/index.html", path + "/")]


def _force_steps(path: str) -> list[Step]:
    """``force-trailing-slash``: every page's URL ends with ``/``."""
    stem, base = path.removesuffix(".html"), path.rstrip("/")
    if path.endswith("/index"):
        folder = path[: -len("index")]
        steps: list[Step] = [("serve", path), ("move", path + ".html", folder),
                             ("move", folder[:-1] + ".html", folder)]
    elif path.endswith("/index.html"):
        folder = path[: -len("index.html")]
        steps = [("move", path, folder), ("move", folder[:-1] + ".html", folder)]
    elif path.endswith("/"):
        steps = [("serve", path + "index.html"), ("serve", base + ".html")]
    elif path.endswith(".html"):
        steps = [("move", path, stem + "/"), ("serve", path), ("move", stem + "/index.html", stem + "/")]
    else:
        steps = []
    return [*steps, ("serve", path), ("move", path + ".html", path + "/"),
            ("move", path + "/index.html", path + "/")]


def _drop_steps(path: str) -> list[Step]:
    """``drop-trailing-slash``: no page's URL ends with ``/`` (but ``/``)."""
    stem, base = path.removesuffix(".html"), path.rstrip("/")
    if path == "/index":
        steps: list[Step] = [("serve", path), ("move", "/index.html", "/")]
    elif path.endswith("/index"):
        folder = path[: -len("/index")]
        steps = [("serve", path), ("move", folder + ".html", folder), ("move", path + ".html", folder)]
    elif path == "/index.html":
        steps = [("move", path, "/")]
    elif path.endswith("/index.html"):
        folder = path[: -len("/index.html")]
        steps = [("move", path, folder), ("serve", path), ("move", folder + ".html", folder)]
    elif path == "/":
        steps = [("serve", "/index.html")]
    elif path.endswith("/"):
        steps = [("move", base + ".html", base), ("move", base + "/index.html", base)]
    elif path.endswith(".html"):
        steps = [("move", path, stem), ("move", stem + "/index.html", stem)]
    else:
        steps = []
    return [*steps, ("serve", path), ("serve", path + ".html"), ("serve", path + "/index.html")]


_STEPS = {"auto-trailing-slash": _auto_steps, "force-trailing-slash": _force_steps,
          "drop-trailing-slash": _drop_steps}


def _html_handling(assets: AssetSet, path: str, redirects: bool = True) -> Decision | None:
    """The first step of the script's ``html_handling`` for ``path`` that
    answers (``none``: the exact file only); ``redirects=False`` skips the
    redirects, to see what a URL serves by itself."""
    steps = _STEPS.get(assets.config.html_handling, lambda p: [("serve", p)])(path)
    for kind, file, *destination in steps:
        if kind == "serve" and file in assets.manifest:
            return Decision("serve", file)
        if kind == "move" and redirects and (found := _moved(assets, file, destination[0])) is not None:
            return found
    return None


def canonical_path(path: str) -> str:
    """``path`` as Cloudflare's asset worker spells it: each segment decoded
    and encoded again as ``encodeURIComponent`` does, runs of slashes one."""
    return encode_path(re.sub(r"/+", "/", "/".join(unquote(segment) for segment in path.split("/"))))


def encode_path(decoded: str) -> str:
    """A decoded path as a URL carries it (each segment as ``encodeURIComponent``
    writes it): what a Location says, whatever the file's name (a name with
    ``?``, ``#``, a space or a non-Latin-1 letter went out raw, or failed)."""
    return "/".join(quote(segment, safe="!'()*") for segment in decoded.split("/"))


def resolve(assets: AssetSet, path: str, misses_are_assets: bool = True) -> Decision:
    """Where ``path`` (decoded, absolute) leads among the assets;
    ``misses_are_assets``: ``not_found_handling`` answers a path with none."""
    path = posixpath.normpath(path) + ("/" if path.endswith("/") and path != "/" else "")
    path = "/" + path.lstrip("/")  # runs of slashes are one, as Cloudflare's decodePath has them
    found = _html_handling(assets, path)
    if found is not None:
        return found
    return _not_found(assets, path) if misses_are_assets else Decision("not_found")


def _misses_are_assets(record: ScriptRecord, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether ``not_found_handling`` answers a request no asset matches in
    place of the worker (the asset worker's ``canFetch``): under
    ``run_worker_first``'s route list (static routing), for a script with
    no fetch handler, or for a browser's navigation from the 2025-04-01
    compatibility date (``assets_navigation_prefers_asset_serving``)."""
    assets = record.assets
    if assets is None or isinstance(assets.config.run_worker_first, list) or "fetch" not in record.handlers:
        return True
    return _header(headers, b"sec-fetch-mode") == "navigate" and compat_flags.enabled(
        record.compatibility_date, record.compatibility_flags, "assets_navigation_prefers_asset_serving",
        "assets_navigation_has_no_effect", "2025-04-01")


def _not_found(assets: AssetSet, path: str) -> Decision:
    """What answers a path no asset is at: ``not_found_handling``'s page, or nothing."""
    handling = assets.config.not_found_handling
    if handling == "single-page-application" and "/index.html" in assets.manifest:
        return Decision("serve", "/index.html")
    if handling == "404-page":
        folder = path if path.endswith("/") else posixpath.dirname(path) + "/"
        while True:
            candidate = folder.rstrip("/") + "/404.html"
            if candidate in assets.manifest:
                return Decision("serve", candidate, status=404)
            if folder in ("/", ""):
                break
            folder = posixpath.dirname(folder.rstrip("/")) + "/"
    return Decision("not_found")


def _rules(assets: AssetSet) -> asset_rules.Rules:
    config = assets.config
    return asset_rules.parse(config.redirects, config.headers, config.html_handling)


def static_route(assets: AssetSet, path: str, raw: str = "") -> str | None:
    """``run_worker_first``'s say on ``path`` (decoded; ``raw``: as the URL
    spells it, which Cloudflare's router matches, so a rule written encoded,
    ``/a%20b/*``, gates too): ``"worker"``, ``"assets"`` (an exclusion
    ``!/...`` matched: the assets answer it, their 404 included, as
    Cloudflare's router worker sends an excluded path to the assets), or
    None (no rule: an asset if there is one, else the worker)."""
    rule = assets.config.run_worker_first
    if isinstance(rule, bool):
        return "worker" if rule else None
    spellings = (path, raw) if raw and raw != path else (path,)
    if any(glob_match(p[1:], s) for p in rule if p.startswith("!") for s in spellings):
        return "assets"
    if any(glob_match(p, s) for p in rule if not p.startswith("!") for s in spellings):
        return "worker"
    return None


def glob_match(pattern: str, text: str) -> bool:
    """A rule as Cloudflare matches it: ``*`` any run of characters, every
    other character itself (``[``, ``?`` were fnmatch's wildcards here).
    Greedy with one point to go back to: linear in practice, and never the
    backtracking a regular expression of many ``.*`` does on a long path."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return pattern == text
    first, last = parts[0], parts[-1]
    if not text.startswith(first) or not text.endswith(last) or len(first) + len(last) > len(text):
        return False
    at, end = len(first), len(text) - len(last)
    for middle in parts[1:-1]:  # each as early as it fits: what it leaves is the most for the rest
        found = text.find(middle, at, end)
        if found < 0:
            return False
        at = found + len(middle)
    return True


class FileBody:
    """A large asset streamed from its blob in chunks (reads in a worker thread)."""

    def __init__(self, file: BinaryIO, start: int, length: int) -> None:
        self._file = file
        self._left = length
        #: Known in advance: the client gets a Content-Length (see body_length).
        self.length = length
        file.seek(start)

    async def receive(self) -> bytes:
        if self._left <= 0 or self._file.closed:
            self.close()
            return b""
        chunk = await trio.to_thread.run_sync(self._file.read, min(CHUNK, self._left))
        self._left -= len(chunk)
        if not chunk:
            self.close()
        return chunk

    def close(self) -> None:
        self._file.close()


class Answer:
    """An asset response: status, headers, body (None for HEAD and 304)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: object) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _range(spec: str, size: int) -> tuple[int, int] | None | bool:
    """``(start, end)`` of a single ``bytes=`` range; None: ignore; False: unsatisfiable."""
    if not spec.startswith("bytes=") or "," in spec:
        return None
    first, _, last = spec[6:].strip().partition("-")
    try:
        if first == "":
            length = int(last)
            if length <= 0:
                return False
            return max(0, size - length), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return False
    return start, min(end, size - 1)


class AssetServer:
    def __init__(self, store: AssetBlobs) -> None:
        self.store = store

    def wants(self, record: ScriptRecord, method: bytes, url: str, headers: list[tuple[bytes, bytes]],
              *, from_worker: bool) -> bool:
        """Whether assets answer this request before (or instead of) the
        worker, as Cloudflare's asset worker's ``canFetch`` decides: a
        ``_redirects`` rule for its path is always followed; a path with an
        asset is the assets' whatever the method (405 but for GET and HEAD);
        ``not_found_handling`` takes a miss from the worker only for a
        browser's navigation (``Sec-Fetch-Mode: navigate``, from the
        2025-04-01 compatibility date) or under ``run_worker_first``'s
        route list; an ``ASSETS`` binding's fetch is always theirs."""
        assets = record.assets
        if assets is None or not (assets.manifest or assets.config.redirects):
            return False
        parts = urlsplit(url)
        raw = normalised(parts.path or "/")
        path = unquote(raw)
        route = None if from_worker else static_route(assets, path, raw)
        if route == "worker":
            return False
        if route == "assets":
            return True
        if _rules(assets).redirect(parts.netloc, raw) is not None:
            return True
        if from_worker:
            return True
        return resolve(assets, path, _misses_are_assets(record, headers)).kind != "not_found"

    async def answer(self, record: ScriptRecord, method: bytes, url: str,
                     headers: list[tuple[bytes, bytes]]) -> Answer:
        """The asset server's response, with the site's ``_headers`` rules
        applied (on every answer, as Cloudflare's asset server applies them)."""
        assets = record.assets or AssetSet()
        parts = urlsplit(url)
        parts = parts._replace(path=normalised(parts.path or "/"))
        url = parts.geturl()
        rules = _rules(assets)
        answer = await self._answer(record, assets, rules, method, url, parts, headers)
        if rules.headers:
            rules.apply_headers(parts.netloc, parts.path, answer.headers)
        return answer

    async def _answer(self, record: ScriptRecord, assets: AssetSet, rules: asset_rules.Rules,
                      method: bytes, url: str, parts: SplitResult,
                      headers: list[tuple[bytes, bytes]]) -> Answer:
        path = parts.path
        rule = rules.redirect(parts.netloc, path)
        if rule is not None:
            if rule.status != 200:
                target = asset_rules.location(rule, url)
                return Answer(rule.status, [(b"location", target.encode("latin-1", "replace"))], None)
            path = asset_rules.rewritten_path(rule, url)  # served in place of the one asked for
        if method not in (b"GET", b"HEAD"):
            return Answer(405, [(b"allow", b"GET, HEAD")], None)
        decision = resolve(assets, unquote(path))
        if decision.kind == "serve" and rule is None:
            canonical = canonical_path(path)
            if canonical != path:
                # Served at its one spelling only (Cloudflare's asset worker's 307): a
                # %-encoded letter, an encoded slash or a doubled one reached the file
                # past the _headers rules of its path (a CSP, X-Frame-Options).
                location = canonical + (f"?{parts.query}" if parts.query else "")
                return Answer(307, [(b"location", location.encode("latin-1"))], None)
        if decision.kind == "redirect":  # html_handling's, after a 200 rule too (as Cloudflare's)
            location = encode_path(decision.location) + (f"?{parts.query}" if parts.query else "")
            return Answer(307, [(b"location", location.encode("latin-1"))], None)
        if decision.kind == "not_found":
            return Answer(404, [], None)
        entry = assets.manifest[decision.path]
        etag = f'"{entry.hash}"'
        kind = content_type(decision.path)
        base = [(b"etag", etag.encode()), (b"accept-ranges", b"bytes")]
        if not _header(headers, b"authorization") and not _header(headers, b"range"):
            # As Cloudflare's asset worker (isCacheable): a request with credentials
            # or a range gets no Cache-Control of the asset's.
            base.insert(1, (b"cache-control", b"public, max-age=0, must-revalidate"))
        if kind is not None:
            base.append((b"content-type", kind.encode()))
        match = _header(headers, b"if-none-match")
        if decision.status == 200 and match and (match.strip() == "*" or etag in
                                                 [m.strip().removeprefix("W/") for m in match.split(",")]):
            return Answer(304, [h for h in base if h[0] != b"content-type"], None)
        status, start, length = decision.status, 0, entry.size
        wanted = _header(headers, b"range") if decision.status == 200 else ""
        if wanted and _header(headers, b"if-range") and _header(headers, b"if-range").strip() != etag:
            # RFC 9110 13.1.5: the range only of the version the client has (a
            # date cannot say so: assets have no Last-Modified); else the whole
            # file, not its bytes spliced onto an older one's.
            wanted = ""
        if wanted:
            span = _range(wanted, entry.size)
            if span is False:
                return Answer(416, [(b"content-range", f"bytes */{entry.size}".encode())], None)
            if span is not None:
                start, end = span  # type: ignore[misc]
                length = end - start + 1
                status = 206
                base.append((b"content-range", f"bytes {start}-{end}/{entry.size}".encode()))
        if method == b"HEAD":  # what GET would send, its length too
            return Answer(status, [*base, (b"content-length", str(length).encode())], None)
        file = await trio.to_thread.run_sync(self.store.open, record.namespace, record.name, entry.hash)
        if length <= INLINE_BYTES:
            try:
                file.seek(start)
                data = await trio.to_thread.run_sync(file.read, length)
            finally:
                file.close()
            return Answer(status, base, BytesBody(data))
        return Answer(status, base, FileBody(file, start, length))


async def send_answer(conn: Connection, answer: Answer, head_only: bool) -> None:
    """Write an asset answer to an ingress connection (streams large files)."""
    body = answer.body
    if body is None or isinstance(body, BytesBody):
        data = await body.receive() if body is not None else b""
        await conn.respond(answer.status, answer.headers, data, head_only)
        return
    try:
        await conn.start(answer.status, answer.headers, head_only, length=body_length(body))  # type: ignore[arg-type]
        if not head_only:
            while chunk := await body.receive():  # type: ignore[attr-defined]
                await conn.send_data(chunk)
        await conn.end()
    except LengthMismatch as exc:  # the blob changed size under us: the connection closes
        warn("assets.body_length_mismatch", declared=exc.declared, received=exc.received)
        raise
    finally:
        body.close()  # type: ignore[attr-defined]
