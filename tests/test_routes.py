"""Route patterns: syntax, normalisation and the documented precedence."""

import pytest

from supervisor.edge.routes import RouteError, RouteTable, compile_routes, match, normalize_pattern, split_host


def test_normalize_strips_scheme_and_lowercases_host():
    assert normalize_pattern("https://API.Example.com/V1/*") == "api.example.com/V1/*"
    assert normalize_pattern("  *.example.com/*  ") == "*.example.com/*"


@pytest.mark.parametrize(
    "pattern, fragment",
    [
        ("", "non-empty"),
        ("example.com", "no path"),
        ("/x", "no host"),
        ("example.com:8080/*", "port"),
        ("exa mple.com/*", "invalid host"),
        ("example.com/a?b=1", "invalid path"),
        ("example.com/a b", "invalid path"),
        ("x" * 2000 + "/", "longer"),
    ],
)
def test_invalid_patterns_explain_themselves(pattern, fragment):
    with pytest.raises(RouteError, match=fragment):
        normalize_pattern(pattern)


def test_split_host():
    assert split_host("Example.COM:8080") == "example.com"
    assert split_host("example.com.") == "example.com"
    assert split_host("[::1]:8080") == "[::1]"
    assert split_host("localhost") == "localhost"


ROUTES = [
    ("*/*", "catch-all"),
    ("example.com/*", "site"),
    ("example.com/api/*", "api"),
    ("example.com/api/v1/*", "api-v1"),
    ("example.com/exact", "exact"),
    ("*.example.com/*", "subdomains"),
    ("*.eu.example.com/*", "eu"),
    ("*example.org/*", "org"),
    ("*/health", "health"),
]


@pytest.mark.parametrize(
    "host, path, script",
    [
        ("example.com", "/", "site"),
        ("example.com:8080", "/about?x=1", "site"),
        ("EXAMPLE.com", "/api/users", "api"),
        ("example.com", "/api/v1/users", "api-v1"),
        ("example.com", "/exact", "exact"),
        ("example.com", "/exact/more", "site"),
        # exact host beats wildcard host even when the wildcard's path is exact
        ("example.com", "/health", "site"),
        ("a.example.com", "/health", "subdomains"),
        ("a.eu.example.com", "/", "eu"),
        ("b.a.example.com", "/", "subdomains"),
        ("example.org", "/", "org"),
        ("www.example.org", "/", "org"),
        ("other.net", "/health", "health"),
        ("other.net", "/", "catch-all"),
        ("", "/", "catch-all"),
    ],
)
def test_precedence(host, path, script):
    assert match(ROUTES, host, path) == script


def test_wildcard_subdomain_does_not_match_apex():
    table = compile_routes([("*.example.com/*", "sub")])
    assert table.match("example.com", "/") is None
    assert table.match("x.example.com", "/") == "sub"


def test_no_match_and_empty_table():
    assert RouteTable().match("example.com", "/") is None
    assert match([("example.com/api/*", "api")], "example.com", "/") is None


def test_longer_literal_wildcard_host_wins():
    table = compile_routes([("*.a.com/*", "short"), ("x*.a.com/*", "long")])
    assert table.match("x1.a.com", "/") == "long"
    assert table.match("y1.a.com", "/") == "short"


def test_ties_go_to_the_first_route():
    table = compile_routes([("a.com/x*", "first"), ("a.com/*x", "second")])
    assert table.match("a.com", "/xx") == "first"
    table = compile_routes([("a.com/*x", "second"), ("a.com/x*", "first")])
    assert table.match("a.com", "/xx") == "second"


def test_accepts_objects_with_pattern_and_script():
    class R:
        def __init__(self, pattern, script):
            self.pattern, self.script = pattern, script

    assert match([R("example.com/*", "s")], "example.com", "/x") == "s"


def test_invalid_pattern_in_table_raises():
    with pytest.raises(RouteError):
        compile_routes([("nope", "s")])


def test_regex_metacharacters_are_literal():
    table = compile_routes([("example.com/a.b/*", "dot"), ("example.com/(x)+", "paren")])
    assert table.match("example.com", "/a.b/c") == "dot"
    assert table.match("example.com", "/axb/c") is None
    assert table.match("example.com", "/(x)+") == "paren"
