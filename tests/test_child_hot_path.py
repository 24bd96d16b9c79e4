"""The short cuts on a child's request path keep the behaviour of the long way.

Every request runs these in a tenant's (or the dispatcher's) child, so they
skip asyncio's and the SDK's general paths (sandbox.child.ChildLoop,
sandbox.workers.response_with, Headers._set_default). In-process: they are
plain Python, and the end-to-end tests run them in real jailed children.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import py_compile
import signal
import socket
import sys
from pathlib import Path

import pytest

from sandbox import loader, workers
from sandbox.channel import Channel
from sandbox.child import ChildLoop, Runtime
from sandbox.sdk_types import Blob
from sandbox.websockets import HandedOn
from supervisor.pool.bundles import compile_tree


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


def _give_up(signum: int, frame: object) -> None:
    raise TimeoutError("the loop never delivered what was ready")


@pytest.fixture
def looped():
    """A child loop and a socket pair (ours, theirs), and an alarm: a turn
    that drops a ready handle waits for ever, so the test gives up after 10 s."""
    previous = signal.signal(signal.SIGALRM, _give_up)
    signal.alarm(10)
    loop = ChildLoop()
    ours, theirs = socket.socketpair()
    try:
        yield loop, ours, theirs
    finally:
        ours.close()
        theirs.close()
        loop.close()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_the_child_loop_turn_delivers_readers_writers_and_timers(looped):
    loop, ours, theirs = looped
    ours.setblocking(False)
    theirs.setblocking(False)
    seen: list[object] = []
    done = loop.create_future()

    def readable() -> None:
        seen.append(theirs.recv(16))
        loop.remove_reader(theirs.fileno())
        loop.add_writer(theirs.fileno(), writable)

    def writable() -> None:
        loop.remove_writer(theirs.fileno())
        theirs.send(b"pong")
        loop.call_later(0.01, lambda: done.set_result(ours.recv(16)))

    loop.add_reader(theirs.fileno(), readable)
    ours.send(b"ping")
    # A reader, then a writer, then a timer (asyncio's own turn) in turn.
    assert loop.run_until_complete(done) == b"pong"
    assert seen == [b"ping"]
    # A reader removed while its descriptor is ready is not called.
    loop.add_reader(theirs.fileno(), lambda: seen.append("late"))
    ours.send(b"again")
    loop.remove_reader(theirs.fileno())
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == [b"ping"]


def _bundle(tmp_path: Path, source: str, mode: py_compile.PycInvalidationMode | None) -> Path:
    (tmp_path / "worker.py").write_text(source)
    if mode is not None:
        compile_tree(str(tmp_path), "/compiled/elsewhere")  # tracebacks still name the file
        if mode is not py_compile.PycInvalidationMode.UNCHECKED_HASH:
            py_compile.compile(str(tmp_path / "worker.py"), invalidation_mode=mode)
    return tmp_path


@pytest.mark.parametrize("mode", [py_compile.PycInvalidationMode.UNCHECKED_HASH,
                                  py_compile.PycInvalidationMode.TIMESTAMP, None])
def test_a_main_module_loads_from_its_bundles_pyc_or_else_the_import_system(tmp_path, mode):
    source = "import sys\nVALUE = 41 + 1\ndef fail():\n    raise ValueError('from the bundle')\n"
    bundle = _bundle(tmp_path, source, mode)
    used: list[bool] = []
    real = loader._exec_precompiled
    try:
        loader._exec_precompiled = lambda spec, module, data: used.append(real(spec, module, data)) or used[-1]
        module = loader.load(str(bundle), "worker.py")
    finally:
        loader._exec_precompiled = real
        loader.unload(str(bundle), "worker.py")
    # Only a pyc as the supervisor writes them is run directly.
    assert used == [mode is py_compile.PycInvalidationMode.UNCHECKED_HASH]
    assert module.VALUE == 42 and module.__file__ == str(bundle / "worker.py")
    assert module.__spec__.name == "worker"
    with pytest.raises(ValueError) as caught:
        module.fail()
    assert caught.traceback[-1].path == bundle / "worker.py"


def test_a_failing_main_module_is_a_load_error_either_way(tmp_path):
    bundle = _bundle(tmp_path, "raise RuntimeError('at import')\n",
                     py_compile.PycInvalidationMode.UNCHECKED_HASH)
    with pytest.raises(loader.ScriptLoadError, match="RuntimeError: at import"):
        loader.load(str(bundle), "worker.py")
    assert "worker" not in sys.modules
    loader.unload(str(bundle), "worker.py")


def test_a_childs_loop_ends_when_its_channel_closes(looped):
    loop, ours, theirs = looped
    # main() runs the loop until then, with no task to wait on (see there).
    theirs.setblocking(False)
    runtime = Runtime(loop)
    runtime.attach(Channel(theirs, loop, runtime.on_message, runtime.on_closed))
    ours.close()
    loop.run_forever()
    assert runtime.closed.is_set()


def test_the_main_modules_spec_is_the_import_systems(tmp_path):
    path = str(_bundle(tmp_path, "X = 1\n", None) / "worker.py")
    spec, module = loader._main_module("worker", path)
    expected = importlib.util.spec_from_file_location("worker", path)
    made = importlib.util.module_from_spec(expected)
    for field in ("name", "origin", "cached", "has_location", "parent",
                  "submodule_search_locations", "loader_state"):
        assert getattr(spec, field) == getattr(expected, field), field
    assert type(spec.loader) is type(expected.loader) and spec.loader.path == path
    assert sorted(vars(module)) == sorted(vars(made))
    for name in ("__name__", "__package__", "__file__", "__cached__"):
        assert getattr(module, name) == getattr(made, name), name
    assert module.__spec__ is spec and module.__loader__ is spec.loader


def test_headers_passed_on_unchanged_are_not_encoded_again_and_changes_always_show():
    raw = [(b"host", b"t0.localhost"), (b"x-caf\xe9", b"cr\xe8me")]
    headers = workers.Headers._from_raw(raw)
    assert headers._raw() == raw and headers._raw() is not raw  # a copy callers may extend
    extended = headers._raw()
    extended.append((b"content-length", b"3"))
    assert headers._raw() == raw
    copy = workers.Headers(headers)
    assert copy._raw() == raw
    for change in (lambda h: h.set("X-New", "1"), lambda h: h.append("x-more", "2"),
                   lambda h: h.delete("host"), lambda h: h._set_default("content-type", "a/b")):
        changed = workers.Headers(headers)
        change(changed)
        assert changed._raw() == [(n.encode("latin-1"), v.encode("latin-1"))
                                  for n, v in changed._items]
        assert changed._raw() != raw and headers._raw() == raw
    kept = workers.Headers(headers)
    kept._set_default("host", "other")  # already there: nothing changes
    assert kept._raw() == raw


def test_an_invocation_is_answered_in_the_turn_that_read_its_frame(tmp_path, looped):
    loop, ours, theirs = looped
    # A frame makes a task ready, its step the channel's flush: asyncio's
    # turn polled the epoll instance again before each (ChildLoop._run_once).
    from protocol.framing import FrameEncoder, supervisor_decoder
    from protocol.messages import Inline, Invoke, InvokeDone, InvokeFailed, Load, Loaded, ResponseStart, ScriptBundle

    (tmp_path / "worker.py").write_text(
        "from sandbox.workers import Response\n"
        "async def on_fetch(request, env):\n"
        "    return Response('hi ' + request.method)\n")
    saved_runtime = workers._runtime
    try:
        theirs.setblocking(False)
        runtime = Runtime(loop)
        workers._runtime = runtime
        channel = Channel(theirs, loop, runtime.on_message, runtime.on_closed)
        runtime.attach(channel)
        turns: list[int] = [0]
        read_in: list[int] = []
        flushed_in: list[int] = []
        turn, readable, flush = loop._run_once, channel._readable, channel._flush

        def counted_turn() -> None:
            turns[0] += 1
            turn()

        def counted_readable() -> None:
            read_in.append(turns[0])
            readable()

        def counted_flush() -> None:
            flushed_in.append(turns[0])
            flush()

        loop._run_once = counted_turn
        channel._flush = counted_flush
        loop.remove_reader(theirs.fileno())
        loop.add_reader(theirs.fileno(), counted_readable)
        encoder, decoder = FrameEncoder(), supervisor_decoder()
        ours.sendall(encoder.encode(Load(ScriptBundle("", "hot", "1", "worker.py", str(tmp_path), []))))
        ours.sendall(encoder.encode(Invoke(1, b"GET", "http://hot.invalid/", [], None)))
        got: list[object] = []
        done = loop.create_future()

        def answers() -> None:
            got.extend(decoder.feed(ours.recv(65536)))
            if any(isinstance(m, (InvokeDone, InvokeFailed)) for m in got) and not done.done():
                done.set_result(None)

        ours.setblocking(False)
        loop.add_reader(ours.fileno(), answers)
        loop.run_until_complete(done)
        assert [type(m) for m in got] == [Loaded, ResponseStart, InvokeDone]
        assert got[1].body == Inline(b"hi GET")
        # Load and Invoke came in one read; both answers left in that same turn.
        assert len(read_in) == 1 and flushed_in and set(flushed_in) == {read_in[0]}
    finally:
        workers._runtime = saved_runtime
        loader.unload(str(tmp_path), "worker.py")


def test_callbacks_that_keep_making_more_still_let_the_loop_read(looped):
    loop, ours, theirs = looped
    # The turn runs what its callbacks make ready, but only so many times
    # over: a tenant's endless chain must not keep the channel unread.
    theirs.setblocking(False)
    spins = [0]

    def spin() -> None:
        spins[0] += 1
        if spins[0] == 5:
            ours.send(b"cancel")  # arrives while the chain runs
        loop.call_soon(spin)

    heard = loop.create_future()
    loop.add_reader(theirs.fileno(), lambda: heard.done() or heard.set_result(theirs.recv(8)))
    loop.call_soon(spin)
    assert loop.run_until_complete(heard) == b"cancel"
    assert 5 <= spins[0] < 100
