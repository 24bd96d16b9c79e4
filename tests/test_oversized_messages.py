"""A value a tenant makes too large for one message to the supervisor
(a channel frame from a child is at most 1 MiB, protocol.framing) fails the
call that made it with an error naming what was too large, and the child
goes on serving: before, the frame reached the supervisor, which killed
the child for a protocol violation (the client saw a 502, and every other
request the child was serving failed with it). Real server, real jailed
children; the child's pid shows it is the same one afterwards."""

from __future__ import annotations

import pytest

from tests import storage_helpers as h

BIG = r'''
import os
from workers import Response, WorkerEntrypoint, fetch

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = "/" + request.url.split("/", 3)[3]
        if path == "/status":
            return Response("x", status_text="x" * 2_000_000)
        if path == "/header":
            return Response("x", headers={"x-big": "y" * 2_000_000})
        if path == "/log":
            print("\U0001F600" * 300_000)  # 1.2 MB of UTF-8 in one line
            print("after")
            return Response(str(os.getpid()))
        if path == "/raise":
            raise ValueError("z" * 2_000_000)
        if path == "/fetch":
            try:
                await fetch("http://example.com/", headers={"x-big": "a" * 2_000_000})
            except Exception as e:
                return Response(f"{type(e).__name__}: {e}")
            return Response("sent")
        return Response(str(os.getpid()))
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = h.start(tmp_path_factory.mktemp("oversized"))
    try:
        srv.deploy("big", BIG)  # behind the dispatcher: big.localhost
        srv.deploy("platbig", BIG, namespace=None)
        srv.route("big.test/*", "platbig")  # a platform script serving its route itself
        yield srv
    finally:
        srv.stop()


def pid(server) -> str:
    resp = server.request("/", host="big.localhost")
    assert resp.status == 200, (resp.status, resp.body[:500], server.log())
    return resp.text


def dispatch_error(server, path: str) -> str:
    """What the dispatcher's stub raised for the tenant's failed invocation."""
    resp = server.request(path, host="big.localhost")
    assert resp.status == 502, (resp.status, resp.body[:500], server.log())
    return resp.json()["dispatch_error"]


def test_a_huge_status_text_fails_the_invocation_not_the_child(server):
    before = pid(server)
    error = dispatch_error(server, "/status")
    assert "status_text" in error and "1048576" in error, error
    assert len(error) < 4096, len(error)
    assert pid(server) == before


def test_a_huge_header_value_fails_the_invocation_not_the_child(server):
    before = pid(server)
    error = dispatch_error(server, "/header")
    assert "headers" in error and "1048576" in error, error
    assert pid(server) == before


def test_a_huge_header_in_a_fetch_is_the_callers_exception(server):
    before = pid(server)
    resp = server.request("/fetch", host="big.localhost")
    assert resp.status == 200, (resp.status, resp.body[:500], server.log())
    assert resp.text.startswith("MessageTooLarge: the request is too large") and "headers" in resp.text, resp.text[:500]
    assert "1048576" in resp.text and len(resp.text) < 4096
    assert pid(server) == before


def test_a_huge_exception_message_is_cut_not_fatal(server):
    before = pid(server)
    error = dispatch_error(server, "/raise")
    assert error.startswith("zzz") and error.endswith(" characters cut]"), error[:200]
    assert len(error) < 100_000, len(error)
    assert pid(server) == before


def test_a_huge_log_line_is_cut_and_the_child_serves_on(server):
    before = pid(server)
    resp = server.request("/log", host="big.localhost")
    assert (resp.status, resp.text) == (200, before), (resp.status, resp.body[:500])
    assert pid(server) == before


def test_a_routed_script_answers_500_for_a_response_too_large_and_serves_on(server):
    before = server.request("/", host="big.test").text
    for path in ("/status", "/header"):
        resp = server.request(path, host="big.test")
        assert resp.status == 500, (path, resp.status, resp.body[:500], server.log())
    assert server.request("/", host="big.test").text == before
    assert "protocol violation" not in server.log()
