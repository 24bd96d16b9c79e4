"""fetch()'s redirect rules (supervisor.calls.redirects): pure, no I/O."""

from __future__ import annotations

import pytest

from supervisor.calls.fetch_errors import FetchError
from supervisor.calls.redirects import (
    MAX_REDIRECTS,
    RedirectError,
    RedirectPolicy,
    TooManyRedirects,
    decode_location,
    origin,
)

BODY_HEADERS = [(b"Content-Type", b"text/plain"), (b"content-length", b"7"),
                (b"Content-Language", b"en"), (b"X-Keep", b"1")]
SECRETS = [(b"Authorization", b"Bearer t"), (b"cookie", b"s=1"),
           (b"Proxy-Authorization", b"Basic x"), (b"X-Other", b"ok")]


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [n.lower() for n, _ in headers]


def test_non_redirects_and_missing_location_are_final() -> None:
    policy = RedirectPolicy("http://a.test/x", "GET", [])
    for status in (200, 204, 300, 304, 404, 500):
        assert policy.next_hop(status, b"/elsewhere") is None
    assert policy.next_hop(302, None) is None  # fetch returns it as is
    assert (policy.url, policy.redirected) == ("http://a.test/x", False)


def test_follow_resolves_relative_and_absolute_locations() -> None:
    policy = RedirectPolicy("http://a.test/dir/page?q=1", "GET", [(b"x-keep", b"1")])
    hop = policy.next_hop(302, b"other?from=1")
    assert hop is not None and hop.url == "http://a.test/dir/other?from=1"
    assert (hop.method, hop.drop_body, hop.headers) == ("GET", False, [(b"x-keep", b"1")])
    hop = policy.next_hop(301, b"/root")
    assert hop is not None and hop.url == "http://a.test/root"
    hop = policy.next_hop(308, b"https://b.test/abs")
    assert hop is not None and hop.url == "https://b.test/abs"
    assert policy.url == "https://b.test/abs" and policy.count == 3 and policy.redirected


def test_location_is_decoded_as_utf8_else_latin1() -> None:
    assert decode_location("caf\u00c3\u00a9") == "caf\u00e9"  # UTF-8 bytes seen as latin-1 text
    assert decode_location(b"/caf\xc3\xa9 ") == "/caf\u00e9"
    assert decode_location(b"/caf\xe9") == "/caf\u00e9"  # not UTF-8: byte for byte
    policy = RedirectPolicy("http://a.test/", "GET", [])
    hop = policy.next_hop(302, b"/caf\xc3\xa9")
    assert hop is not None and hop.url == "http://a.test/caf\u00e9"


@pytest.mark.parametrize(
    ("status", "method", "expect_method", "dropped"),
    [
        (303, "POST", "GET", True),
        (303, "PUT", "GET", True),
        (303, "DELETE", "GET", True),
        (303, "GET", "GET", False),
        (303, "HEAD", "HEAD", False),  # WHATWG: HEAD stays HEAD
        (302, "POST", "GET", True),
        (301, "POST", "GET", True),
        (302, "PUT", "PUT", False),
        (301, "PATCH", "PATCH", False),
        (307, "POST", "POST", False),
        (308, "PUT", "PUT", False),
    ],
)
def test_method_rewrite_drops_body_and_body_headers(status: int, method: str, expect_method: str,
                                                    dropped: bool) -> None:
    policy = RedirectPolicy("http://a.test/", method, list(BODY_HEADERS))
    hop = policy.next_hop(status, b"/next")
    assert hop is not None
    assert (hop.method, hop.drop_body) == (expect_method, dropped)
    if dropped:
        assert names(hop.headers) == [b"x-keep"]
    else:
        assert hop.headers == BODY_HEADERS


def test_streamed_body_is_never_replayed() -> None:
    for status in (307, 308, 302):
        policy = RedirectPolicy("http://a.test/", "PUT", [], streamed_body=True)
        with pytest.raises(RedirectError, match="streamed request body cannot be sent again"):
            policy.next_hop(status, b"/next")
    # A hop that drops the body anyway works, and later hops may replay "nothing".
    policy = RedirectPolicy("http://a.test/", "POST", [], streamed_body=True)
    hop = policy.next_hop(303, b"/next")
    assert hop is not None and hop.drop_body and hop.method == "GET"
    assert policy.next_hop(307, b"/again") is not None


def test_credentials_stripped_only_across_origins() -> None:
    policy = RedirectPolicy("http://a.test/", "GET", list(SECRETS))
    hop = policy.next_hop(302, b"http://A.test:80/same")  # same origin, spelled differently
    assert hop is not None and hop.headers == SECRETS
    for other in (b"https://a.test/", b"http://a.test:8080/", b"http://b.test/"):
        policy = RedirectPolicy("http://a.test/", "GET", list(SECRETS))
        hop = policy.next_hop(307, other)
        assert hop is not None and names(hop.headers) == [b"x-other"], other
    assert origin("HTTPS://Example.COM/x") == ("https", "example.com", 443)


def test_redirect_limit() -> None:
    policy = RedirectPolicy("http://a.test/start", "GET", [])
    for _ in range(MAX_REDIRECTS):
        assert policy.next_hop(302, b"/loop") is not None
    with pytest.raises(TooManyRedirects, match=r"more than 20\) fetching http://a.test/start"):
        policy.next_hop(302, b"/loop")
    small = RedirectPolicy("http://a.test/", "GET", [], max_redirects=1)
    assert small.next_hop(302, b"/1") is not None
    with pytest.raises(TooManyRedirects):
        small.next_hop(302, b"/2")


def test_modes() -> None:
    manual = RedirectPolicy("http://a.test/", "GET", [], mode="manual")
    assert manual.next_hop(302, b"/next") is None and not manual.redirected
    error = RedirectPolicy("http://a.test/", "GET", [], mode="error")
    assert error.next_hop(200, None) is None
    with pytest.raises(RedirectError, match="a.test answered 302 \\(redirect\\) and redirect mode is 'error'"):
        error.next_hop(302, b"/next")
    with pytest.raises(RedirectError):  # with or without a Location
        error.next_hop(301, None)
    with pytest.raises(ValueError):
        RedirectPolicy("http://a.test/", "GET", [], mode="bogus")


def test_non_http_targets_are_refused() -> None:
    for location in (b"file:///etc/passwd", b"javascript:alert(1)", b"ftp://a.test/"):
        policy = RedirectPolicy("http://a.test/", "GET", [])
        with pytest.raises(RedirectError, match="only http and https"):
            policy.next_hop(302, location)
    assert issubclass(RedirectError, FetchError)
