"""fetch()'s redirect rules (WHATWG Fetch, "HTTP-redirect fetch"), without I/O.

A tenant's ``fetch`` reaches the network one of two ways: directly, through
the supervisor's HTTP client, or through the platform's outbound worker, one
invocation per hop. Both must follow redirects the same way, so the rules
live here once and each path only does the I/O:

    policy = RedirectPolicy(url, method, headers, mode=..., streamed_body=...)
    while True:
        status, location = <send policy.method, policy.url, policy.headers>
        hop = policy.next_hop(status, location)
        if hop is None:
            break               # the final response: policy.url, policy.redirected
        if hop.drop_body:
            body = None         # and send again

Headers are raw ``(name, value)`` byte pairs (as on the wire and in the
IPC messages); names are compared case-insensitively.

Where both paths used to differ, this follows the spec: a 303 keeps HEAD
as HEAD, a 303 answered to a GET keeps its headers, ``proxy-authorization``
is dropped across origins along with ``authorization`` and ``cookie``,
origins compare scheme, host and port (default ports included), and a
redirect to a non-http(s) URL is refused. Deliberately *not* as in the
spec: a streamed body is refused only when it would really be sent again
(a 301/302 POST or a 303 drops it, so those hops still work), as both
paths always did.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from supervisor.calls.fetch_errors import FetchError

__all__ = [
    "MAX_REDIRECTS",
    "MODES",
    "REDIRECT_STATUSES",
    "Hop",
    "RedirectError",
    "RedirectPolicy",
    "TooManyRedirects",
]

Header = tuple[bytes, bytes]

#: fetch()'s redirect limit, as in browsers and workerd.
MAX_REDIRECTS = 20
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MODES = ("follow", "manual", "error")

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Credentials that must not follow a redirect to another origin.
_CROSS_ORIGIN_STRIP = frozenset({b"authorization", b"cookie", b"proxy-authorization"})
# The spec's request-body header names, plus the framing headers that would
# describe a body that is no longer sent.
_REQUEST_BODY_HEADERS = frozenset(
    {b"content-encoding", b"content-language", b"content-location", b"content-type",
     b"content-length", b"transfer-encoding"}
)


class RedirectError(FetchError):
    """A redirect that fetch() refuses to follow (a network error in the spec)."""


class TooManyRedirects(RedirectError):
    """More than the allowed number of redirects."""


@dataclass(frozen=True, slots=True)
class Hop:
    """The request to send next; ``drop_body`` says the body goes (a GET now)."""

    url: str
    method: str
    headers: list[Header]
    drop_body: bool


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def decode_location(value: bytes | str) -> str:
    """A Location header as text: servers send UTF-8 in practice, and a value
    that is not UTF-8 is taken byte for byte (latin-1), never refused."""
    raw = value.encode("latin-1") if isinstance(value, str) else value
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return raw.decode("latin-1").strip()


class RedirectPolicy:
    """One fetch's redirect state: the current request, and the next one.

    ``mode`` is the request's redirect mode: ``"follow"`` (up to
    ``max_redirects`` hops), ``"manual"`` (every response is final) or
    ``"error"`` (a redirect status is a network error). ``streamed_body``
    says the body is a one-shot stream that cannot be sent twice.
    """

    __slots__ = ("url", "method", "headers", "mode", "count", "_first_url", "_streamed",
                 "_max")

    def __init__(self, url: str, method: str, headers: list[Header], *, mode: str = "follow",
                 streamed_body: bool = False, max_redirects: int = MAX_REDIRECTS) -> None:
        if mode not in MODES:
            raise ValueError(f"redirect must be 'follow', 'manual' or 'error', not {mode!r}")
        self.url = url
        self.method = method
        self.headers = headers
        self.mode = mode
        self.count = 0
        self._first_url = url
        self._streamed = streamed_body
        self._max = max_redirects

    @property
    def redirected(self) -> bool:
        """Whether the current request is the result of following a redirect."""
        return self.count > 0

    def next_hop(self, status: int, location: bytes | str | None) -> Hop | None:
        """What to send after a response with ``status`` and ``location``.

        None means the response is final (not a redirect, manual mode, or a
        redirect without a Location, which fetch returns as is). Otherwise the
        policy moves on to the returned hop. Raises :class:`RedirectError`
        for a redirect fetch refuses, with a message fit for tenants.
        """
        if status not in REDIRECT_STATUSES or self.mode == "manual":
            return None
        host = origin(self.url)[1]
        if self.mode == "error":
            raise RedirectError(f"{host} answered {status} (redirect) and redirect mode is 'error'")
        if location is None:
            return None
        target = urljoin(self.url, decode_location(location))
        scheme = urlsplit(target).scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise RedirectError(
                f"cannot follow {status} redirect from {host} to {target!r}: unsupported URL "
                f"scheme {scheme!r}, only http and https are allowed")
        if self.count >= self._max:
            raise TooManyRedirects(
                f"too many redirects (more than {self._max}) fetching {self._first_url}")
        method, headers = self.method, self.headers
        drop_body = (status in (301, 302) and method == "POST") or (
            status == 303 and method not in ("GET", "HEAD"))
        if drop_body:
            method = "GET"
            headers = [(n, v) for n, v in headers if n.lower() not in _REQUEST_BODY_HEADERS]
        elif self._streamed:
            raise RedirectError(
                f"cannot follow {status} redirect from {host}: "
                "a streamed request body cannot be sent again")
        if origin(target) != origin(self.url):
            headers = [(n, v) for n, v in headers if n.lower() not in _CROSS_ORIGIN_STRIP]
        if drop_body:
            self._streamed = False  # nothing left to replay
        self.url, self.method, self.headers = target, method, headers
        self.count += 1
        return Hop(target, method, headers, drop_body)
