"""A finished call chain is freed by reference counting, not by the collector.

Under load the supervisor makes two invocations per dispatched request. When
caller and callee kept pointing at each other after both were over, every
request left a dozen objects of cyclic garbage, and the collector's passes
over them were ~10% of the supervisor's CPU and tens of milliseconds of
pause. This pins the life cycle that breaks the cycle.
"""

from __future__ import annotations

import gc

import trio

from protocol.messages import Limits
from supervisor.model import ScriptRecord
from supervisor.pool.bodies import BytesBody
from supervisor.pool.invocation import Invocation


class _Link:
    """The two things an invocation may ask of its child here."""

    def __init__(self) -> None:
        self.incoming: dict = {}
        self.sinks: dict = {}
        self.sent: list = []

    def send(self, message: object) -> None:
        self.sent.append(message)

    def spawn(self, fn, *args) -> None:  # pragma: no cover - not reached
        raise AssertionError("no task expected")

    def later(self, fn, arg) -> None:
        fn(arg)  # no loop turn here: at once, as a batch not installed does


def _record(name: str) -> ScriptRecord:
    return ScriptRecord(namespace="", name=name, version="v1", main_module="worker.py",
                        modules={"worker.py": b""})


def _chain(link: _Link, traced: list[str]) -> None:
    caller = Invocation(1, link, _record("dispatch"), b"GET", "http://t/", [], Limits())
    callee = Invocation(2, link, _record("tenant"), b"GET", "http://t/", [], Limits(), parent=caller)
    caller.on_done = lambda inv: traced.append(f"{inv.record.name}:{[c.record.name for c in inv.children]}")
    callee.respond(200, [], BytesBody(b"hello"))
    callee.finish()
    caller.respond(200, [], BytesBody(b"hello"))
    caller.finish()


def _leftover_invocations() -> int:
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sum(1 for obj in gc.garbage if isinstance(obj, Invocation))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_a_finished_call_chain_leaves_no_cyclic_garbage() -> None:
    async def main() -> None:
        gc.collect()
        link, traced = _Link(), []
        _chain(link, traced)
        assert traced == ["dispatch:['tenant']"], "the caller's trace saw its callee"
        assert _leftover_invocations() == 0

    trio.run(main)


def test_an_unfinished_callee_keeps_its_caller_waiting() -> None:
    """The link is dropped only once the callee can no longer change the caller."""
    async def main() -> None:
        link, traced = _Link(), []
        caller = Invocation(1, link, _record("dispatch"), b"GET", "http://t/", [], Limits())
        callee = Invocation(2, link, _record("tenant"), b"GET", "http://t/", [], Limits(), parent=caller)
        caller.on_done = lambda inv: traced.append("caller")
        callee.respond(200, [], BytesBody(b"streamed"), streaming=True)
        callee.finish()
        caller.respond(200, [], BytesBody(b"x"))
        caller.finish()
        assert traced == [] and callee.parent is caller, "the callee's body still streams"
        callee.response_finished()
        assert traced == ["caller"] and callee.parent is None

    trio.run(main)
