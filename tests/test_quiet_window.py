"""The refill's quiet window holds while a cold start, and the client request
that called it, run (supervisor.pool.quiet_window). Pure rules, as
tests/test_pool_plan.py tests the pool's plan; the sequential cold-start
figures in scripts/bench are the effect."""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.pool.quiet_window import QuietWindow


@dataclass(eq=False)
class Inv:
    parent: Inv | None = None
    is_done: bool = False


def test_a_cold_start_nobody_called_closes_the_window_when_its_first_invocation_is_done():
    window = QuietWindow(0.03)
    window.opened(10.0)
    window.started("child")
    assert window.until == 10.03
    assert window.over(10.01, "child") is True
    assert window.until == 10.01


def test_a_called_cold_start_holds_the_window_until_the_client_request_is_done():
    window = QuietWindow(0.03)
    window.opened(10.0)
    window.started("child")
    client = Inv()                     # the dispatcher's invocation
    caller = Inv(parent=client)        # a worker between them
    assert window.over(10.005, "child", caller) is False, "the dispatcher has not answered yet"
    assert window.awaits_callers
    caller.is_done = True
    assert window.check(10.006) is False, "the root of the chain is what the client waits for"
    client.is_done = True
    assert window.check(10.008) is True
    assert window.until == 10.008 and not window.awaits_callers


def test_the_window_never_outlasts_its_delay_and_then_forgets_its_callers():
    window = QuietWindow(0.03)
    window.opened(10.0)
    window.started("child")
    client = Inv()
    assert window.over(10.01, "child", Inv(parent=client)) is False
    assert window.check(10.05) is False and not window.awaits_callers
    assert window.until == 10.03, "it ran out by itself"


def test_every_cold_start_in_the_window_holds_it_and_an_open_window_is_not_extended():
    window = QuietWindow(0.03)
    window.opened(10.0)
    window.started("a")
    window.opened(10.02)
    window.started("b")
    assert window.until == 10.03
    assert window.over(10.021, "a") is False, "b is still loading"
    assert window.over(10.022, "unknown") is False
    assert window.over(10.023, "b", Inv(is_done=True)) is True
