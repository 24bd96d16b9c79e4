"""The short cuts on a child's request path keep the behaviour of the long way.

Every request runs these in a tenant's (or the dispatcher's) child, so they
skip asyncio's and the SDK's general paths (sandbox.child.ChildLoop,
sandbox.workers.response_with, Headers._set_default). In-process: they are
plain Python, and the end-to-end tests run them in real jailed children.
"""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from sandbox import workers
from sandbox.child import ChildLoop
from sandbox.sdk_types import Blob
from sandbox.websockets import HandedOn


def test_a_str_body_gets_a_text_type_unless_the_response_names_one():
    assert workers.Response("hi").headers._items == [("content-type", "text/plain;charset=UTF-8")]
    named = workers.Response("{}", headers={"Content-Type": "application/json", "X-A": "1"})
    assert named.headers._items == [("content-type", "application/json"), ("x-a", "1")]
    assert workers.Response(b"raw").headers._items == []
    typed = workers.Response(Blob([b"<p>"], type="text/html"))
    assert typed.headers.get("content-type") == "text/html"
    kept = workers.Response(Blob([b"<p>"], type="text/html"), headers=[("content-type", "x/y")])
    assert kept.headers.get_all("content-type") == ["x/y"]


def test_a_delivered_response_is_a_whole_response():
    headers = workers.Headers._from_raw([(b"Content-Type", b"text/plain"), (b"X-Up", b"1")])
    assert headers.get("x-up") == "1" and "content-type" in headers
    response = workers.response_with(404, b"gone", headers)
    assert (response.status, response.status_text, response.ok) == (404, "Not Found", False)
    assert response.headers is headers
    assert (response.url, response.redirected, response.web_socket, response.bodyUsed) == (
        "", False, None, False)
    assert asyncio.run(response.text()) == "gone"
    assert response.bodyUsed
    bare = workers.response_with(204, None)
    assert bare.headers._items == [] and bare.status_text == "No Content"
    socket = HandedOn(7)
    upgraded = workers.response_with(101, socket, headers)
    assert upgraded.status == 101 and upgraded.web_socket is socket and upgraded.headers is headers


def test_the_child_loop_schedules_as_asyncio_does():
    loop = ChildLoop()
    try:
        seen: list[object] = []
        var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="none")
        context = contextvars.copy_context()
        context.run(var.set, "theirs")
        loop.call_soon(seen.append, 1)
        handle = loop.call_soon(seen.append, 2)
        loop.call_soon(lambda: seen.append(var.get()), context=context)
        handle.cancel()
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen == [1, "theirs"]

        async def answer() -> int:
            return 42

        task = loop.create_task(answer())
        assert loop.run_until_complete(task) == 42
        named = loop.create_task(answer(), name="mine")
        assert named.get_name() == "mine"
        loop.run_until_complete(named)
        made = []
        loop.set_task_factory(lambda lp, coro, **kw: made.append(1) or asyncio.Task(coro, loop=lp, **kw))
        assert loop.run_until_complete(loop.create_task(answer())) == 42
        assert made == [1]
    finally:
        loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(print)
    coro = answer()
    with pytest.raises(RuntimeError, match="closed"):
        loop.create_task(coro)
    coro.close()
