"""``_redirects`` and ``_headers`` parsed and matched as Cloudflare's asset server does.

The grammar, the order and the limits are those of Cloudflare's documentation
(developers.cloudflare.com/workers/static-assets/redirects/ and .../headers/);
served end to end in tests/test_cf_projects.py.
"""

from __future__ import annotations

import pytest

from supervisor.edge.asset_rules import Redirect, location, parse, rewritten_path


def redirect(text: str, path: str, html_handling: str = "auto-trailing-slash") -> Redirect | None:
    return parse(text, "", html_handling).redirect("example.com", path)


def test_exact_rules_above_the_first_pattern_win_by_path_then_patterns_in_order():
    text = "/a /exact-a\n/blog/* /posts/:splat 301\n/blog/pinned /too-late\n/b/:x /first\n/b/* /second"
    assert redirect(text, "/a") == Redirect(302, "/exact-a")
    assert redirect(text, "/blog/2024/x") == Redirect(301, "/posts/2024/x")
    # Below a pattern, an exact rule is one more pattern, and the pattern above it wins.
    assert redirect(text, "/blog/pinned") == Redirect(301, "/posts/pinned")
    assert redirect(text, "/b/one") == Redirect(302, "/first")
    assert redirect(text, "/b/one/two") == Redirect(302, "/second")  # :x is one segment
    assert redirect(text, "/c") is None


def test_placeholders_fill_the_destination_and_empty_segments_collapse():
    text = "/news/:year/:slug /archive/:year/:slug.html\n/files/* /store//:splat"
    assert redirect(text, "/news/2024/hello") == Redirect(302, "/archive/2024/hello.html")
    assert redirect(text, "/files/a/b") == Redirect(302, "/store/a/b")


@pytest.mark.parametrize("line, problem", [
    ("/only-one", "expected 2 or 3 whitespace-separated tokens, got 1"),
    ("/a /b 302 extra", "got 4"),
    ("/a /b 404", "valid statuses are 200, 301, 302"),
    ("https://example.com/a /b", "only paths are allowed here"),
    ("/a ftp://example.com/b", "expected a path (beginning with /) or an https:// URL"),
    ("/a https://example.com/b 200", "a 200 (serve in place) rule must point at a path"),
    ("/* /index.html 200", "would redirect forever"),
    ("/ /index", "would redirect forever"),
    ("/a " + "b" * 2000, "longer than 2000 characters"),
])
def test_a_broken_line_is_ignored_and_reported(line, problem):
    rules = parse(f"/kept /here\n{line}", "", "auto-trailing-slash")
    assert rules.redirect("example.com", "/kept") == Redirect(302, "/here")
    assert len(rules.problems) == 1 and problem in rules.problems[0], rules.problems
    assert rules.problems[0].startswith("_redirects line 2: ")


def test_a_root_to_index_rule_is_fine_without_html_handling():
    assert redirect("/ /index 301", "/", html_handling="none") == Redirect(301, "/index")


def test_comments_duplicates_and_limits():
    rules = parse("# a comment\n/a /b # why\n/a /c\n", "", "auto-trailing-slash")
    assert rules.redirect("h", "/a") == Redirect(302, "/b")
    assert rules.problems == ("_redirects line 3: a second rule for /a; ignored",)
    many = "\n".join(f"/p{i}/* /q" for i in range(101))
    capped = parse(many, "", "none")
    assert capped.redirect("h", "/p99/x") is not None and capped.redirect("h", "/p100/x") is None
    assert "more than 100 rules with * or :name" in capped.problems[0]


def test_locations_keep_the_query_unless_the_destination_has_its_own():
    url = "https://site.test/old?ref=1"
    assert location(Redirect(301, "/new"), url) == "/new?ref=1"
    assert location(Redirect(301, "/new?v=2#top"), url) == "/new?v=2#top"
    assert location(Redirect(308, "https://other.test/x"), url) == "https://other.test/x?ref=1"
    assert rewritten_path(Redirect(200, "/profiles/7.html"), url) == "/profiles/7.html"


HEADERS = """
/*
  X-Frame-Options: DENY
  Link: </a.css>; rel=preload
/secure/*
  ! X-Frame-Options
  Link: </b.css>; rel=preload
  Cache-Control: no-store
https://:sub.example.com/*
  X-Tenant: :sub
/users/:id
  X-User: :id
"""


def headers_for(path: str, host: str = "site.test", start: list | None = None) -> list:
    out = list(start or [(b"content-type", b"text/html"), (b"x-frame-options", b"SAMEORIGIN")])
    parse("", HEADERS).apply_headers(host, path, out)
    return out


def test_every_matching_header_rule_applies_in_order():
    assert headers_for("/index.html") == [(b"content-type", b"text/html"), (b"x-frame-options", b"DENY"),
                                          (b"link", b"</a.css>; rel=preload")]
    # The second rule removes what the first set, and appends to a header both set.
    assert headers_for("/secure/page") == [(b"content-type", b"text/html"),
                                           (b"link", b"</a.css>; rel=preload"),
                                           (b"link", b"</b.css>; rel=preload"),
                                           (b"cache-control", b"no-store")]
    assert (b"x-user", b"42") in headers_for("/users/42")
    assert (b"x-tenant", b"acme") in headers_for("/", host="acme.example.com")
    assert not any(name == b"x-tenant" for name, _ in headers_for("/", host="example.com"))


def test_a_rule_of_many_headers_is_bounded_and_a_repeated_name_joined():
    """A rule of 20,000 names cost the supervisor ~10 s per request (every
    tenant waited): applying it rebuilt the header list once per name. A rule
    sets at most 100 names now, each applied in one pass; a name given on many
    lines is one value, joined (it was rebuilt line by line)."""
    text = "/*\n" + "".join(f"  X-H{i}: v\n" for i in range(150)) + "".join("  X-Same: a\n" for _ in range(3))
    rules = parse("", text)
    (rule,) = rules.headers
    assert len(rule.set) == 100 and ("x-same", "a") not in rule.set
    assert sum("more than 100 headers in one rule" in p for p in rules.problems) == 53
    rules = parse("", "/*\n  X-Same: a\n  X-Same: b\n  X-Other: c\n! X-Old\n")
    headers = [(b"x-old", b"1"), (b"x-same", b"stale")]
    rules.apply_headers("h", "/x", headers)
    assert headers == [(b"x-same", b"a, b"), (b"x-other", b"c")]


def test_header_file_problems():
    rules = parse("", "X-Early: 1\n/a\n  no colon here\n/*/x/*\n  X-A: 1\n/b\n  Bad Name: 1\n")
    assert [p.split(":", 1)[0] for p in rules.problems] == [
        "_headers line 1", "_headers line 3", "_headers line 4", "_headers line 7"]
    assert "only one * per rule" in rules.problems[2]
    assert rules.headers == ()  # /a and /b were left with no header at all


@pytest.mark.parametrize("source", ["/:a-:b", "/files/:name.html", "/*/x/*", "/:a:b"])
def test_placeholders_must_be_whole_segments(source):
    """The supervisor matches these on its event loop for every request to the
    site: `/:a-:b` against a crafted URL would backtrack for seconds."""
    rules = parse(f"{source} /target", "", "none")
    assert rules.redirect("h", "/x-y") is None and rules.dynamic == ()
    assert "a :name must be a whole path segment" in rules.problems[0], rules.problems


def test_a_long_crafted_path_meets_only_linear_rules():
    rules = parse("/:a/:b/x /t\n/*/:id/end /u\n/docs/*.html /v", "", "none")
    path = "/" + "a-" * 4000 + "/" + "b/" * 2000
    assert rules.redirect("h", path) is None  # each placeholder stops at a /
    assert rules.redirect("h", "/p/q/x") == Redirect(302, "/t")
    assert rules.redirect("h", "/docs/a/b.html") == Redirect(302, "/v")


def test_a_header_that_could_split_the_response_is_refused():
    rules = parse("", "/*\n  X-Evil: a\rSet-Cookie: b\n  X-Ok: fine\n  Bad(Name): x\n")
    assert rules.headers[0].set == (("x-ok", "fine"),)
    assert len(rules.problems) == 2 and all("control characters" in p for p in rules.problems)
