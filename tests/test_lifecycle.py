"""The child state machine and the outcome vocabulary (supervisor.lifecycle)."""

from __future__ import annotations

import json

import msgspec
import pytest

from supervisor.lifecycle import (
    LIMIT_OUTCOMES,
    OUTCOME_MESSAGE,
    OUTCOME_STATUS,
    TRANSITIONS,
    ChildEvent,
    ChildState,
    KillReason,
    LifecycleError,
    Outcome,
    allows,
    transition,
)

S, E = ChildState, ChildEvent

#: Every legal move, written out independently of the table it checks.
LEGAL = {
    (S.STARTING, E.HELLO): S.SPARE,
    (S.STARTING, E.DIED): S.DEAD,
    (S.SPARE, E.ASSIGN): S.LOADING,
    (S.SPARE, E.DIED): S.DEAD,
    (S.LOADING, E.LOADED): S.SERVING,
    (S.LOADING, E.RETIRE): S.RETIRING,
    (S.LOADING, E.DIED): S.DEAD,
    (S.SERVING, E.RETIRE): S.RETIRING,
    (S.SERVING, E.DIED): S.DEAD,
    (S.RETIRING, E.LOADED): S.RETIRING,
    (S.RETIRING, E.RETIRE): S.RETIRING,
    (S.RETIRING, E.DIED): S.DEAD,
}


@pytest.mark.parametrize(("state", "event"), sorted(LEGAL))
def test_every_legal_transition(state: ChildState, event: ChildEvent) -> None:
    assert allows(state, event)
    assert transition(state, event) is LEGAL[(state, event)]


@pytest.mark.parametrize(("state", "event"),
                         [(s, e) for s in ChildState for e in ChildEvent if (s, e) not in LEGAL])
def test_every_other_pair_is_a_bug_that_says_so(state: ChildState, event: ChildEvent) -> None:
    assert not allows(state, event)
    with pytest.raises(LifecycleError) as caught:
        transition(state, event, "child 1234")
    error = caught.value
    assert (error.state, error.event) == (state, event)
    assert error.allowed == frozenset(TRANSITIONS[state])
    text = str(error)
    assert "child 1234" in text and f"state {state.value}" in text and f"event {event.value}" in text
    for allowed in TRANSITIONS[state]:
        assert allowed.value in text


def test_the_error_names_what_was_allowed() -> None:
    with pytest.raises(LifecycleError,
                       match=r"^a child in state spare cannot take event retire; "
                             r"that state allows assign, died$"):
        transition(S.SPARE, E.RETIRE)
    with pytest.raises(LifecycleError, match="allows nothing: it is final"):
        transition(S.DEAD, E.DIED)


def test_every_state_can_die_and_dead_is_final() -> None:
    for state in ChildState:
        if state is not S.DEAD:
            assert transition(state, E.DIED) is S.DEAD
    assert TRANSITIONS[S.DEAD] == {}


def test_every_state_is_reachable_from_starting() -> None:
    seen, frontier = {S.STARTING}, [S.STARTING]
    while frontier:
        for target in TRANSITIONS[frontier.pop()].values():
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(ChildState)


def test_outcomes_are_the_strings_on_the_wire() -> None:
    # StrEnum: trace JSON, logs and msgspec frames carry the bare value.
    assert msgspec.json.encode({"outcome": Outcome.EXCEEDED_CPU}) == b'{"outcome":"exceededCpu"}'
    assert json.dumps([Outcome.OK, KillReason.ZYGOTE_REPLACED]) == '["ok", "zygote replaced"]'
    assert f"{Outcome.CANCELED}" == "canceled" and str(KillReason.IDLE) == "idle"
    assert {o.value for o in Outcome} == {
        "ok", "exception", "exceededCpu", "exceededMemory", "exceededWallTime",
        "exceededSubrequests", "canceled", "scriptNotFound", "crashed"}


def test_statuses_and_messages_cover_the_failures() -> None:
    assert set(OUTCOME_STATUS) == set(Outcome) - {Outcome.OK}
    assert OUTCOME_STATUS["exceededCpu"] == 503  # plain strings (a callee's error name) work too
    assert set(OUTCOME_MESSAGE) == LIMIT_OUTCOMES | {Outcome.CANCELED, Outcome.CRASHED}
    assert KillReason.EXCEEDED_MEMORY == Outcome.EXCEEDED_MEMORY
