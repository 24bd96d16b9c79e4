"""The life of a child and the end of an invocation, as names and rules.

Two vocabularies live here, and nothing else of the supervisor is imported:
the pool, the calls and the ingress all speak them, so they sit below all of
them (ARCHITECTURE.md).

**Child states.** A child moves along one path, and the supervisor's own
bookkeeping (which set a child is in, which frames it may send) follows from
where it is::

    STARTING --hello--> SPARE --assign--> LOADING --loaded--> SERVING
                                             |                   |
                                             +-----retire--------+--> RETIRING --(idle: killed)
    any state --died--> DEAD  (final)

The table :data:`TRANSITIONS` is the whole story, in the style of h11's
``_state.py``: :func:`transition` looks the pair up, and a pair that is not
in the table is a bug of the supervisor, raised as :class:`LifecycleError`
naming the state, the event and what the state allows. (Frames a *child*
sends out of turn are that child's protocol violation and are checked with
:func:`allows` before they reach the table.)

What is *not* a state, and why:

* **busy.** A child has invocations in flight while LOADING (they queue
  behind the script), while SERVING and while RETIRING; whether it has any
  is ``ChildProcess.idle``, derived from its open invocations and streams.
  Making it a state would double three states and cost a table lookup per
  request. The pool's ``busy`` set is something else again: the children
  whose CPU the watchdog must poll.
* **killed.** ``kill()`` asks the kernel; the child is DEAD only once its
  channel closed and its invocations were failed. Until then it is in
  whatever state it was, with a :class:`KillReason` on record.

**Outcomes** are Cloudflare's trace names (SPEC.md section 4) plus the
internal ``crashed``; :data:`OUTCOME_STATUS` and :data:`OUTCOME_MESSAGE` say
what a caller answers for each. **Kill reasons** are why the supervisor
ended a child; each one has a producer (``grep KillReason.``).

All three are ``StrEnum``s: their members *are* the strings the trace JSON,
the logs and the tenants' exception names always carried, byte for byte.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class LifecycleError(RuntimeError):
    """An event arrived in a state whose table has no entry for it: a bug."""

    def __init__(self, state: ChildState, event: ChildEvent, allowed: frozenset[ChildEvent],
                 who: str = "") -> None:
        self.state = state
        self.event = event
        self.allowed = allowed
        names = ", ".join(sorted(allowed)) or "nothing: it is final"
        subject = f"{who} in state {state}" if who else f"a child in state {state}"
        super().__init__(f"{subject} cannot take event {event!s}; that state allows {names}")


class ChildState(enum.StrEnum):
    #: Forked by the zygote; its jail and interpreter are still coming up (no Hello yet).
    STARTING = "starting"
    #: Jailed and idle, waiting for a script (``Pool.spares``).
    SPARE = "spare"
    #: Given a script (``Load`` sent); invocations may already queue behind it.
    LOADING = "loading"
    #: The script's child (``Pool.warm``): serves its invocations.
    SERVING = "serving"
    #: Out of service (a deploy, idleness, the process cap, a fault): finishes
    #: what it has in flight and is killed when idle.
    RETIRING = "retiring"
    #: Its channel closed and everything it held was failed or released.
    DEAD = "dead"


class ChildEvent(enum.StrEnum):
    HELLO = "hello"        # the child finished its jail and said so
    ASSIGN = "assign"      # the pool gave it a script
    LOADED = "loaded"      # the script's top-level code ran (or failed)
    RETIRE = "retire"      # the pool took it out of service
    DIED = "died"          # its channel closed: the process is gone


S, E = ChildState, ChildEvent

#: state -> {event: next state}. Anything missing is a bug (LifecycleError).
TRANSITIONS: Mapping[ChildState, Mapping[ChildEvent, ChildState]] = {
    S.STARTING: {E.HELLO: S.SPARE, E.DIED: S.DEAD},
    S.SPARE: {E.ASSIGN: S.LOADING, E.DIED: S.DEAD},
    S.LOADING: {E.LOADED: S.SERVING, E.RETIRE: S.RETIRING, E.DIED: S.DEAD},
    S.SERVING: {E.RETIRE: S.RETIRING, E.DIED: S.DEAD},
    # A child retired while loading still reports its load; retiring twice
    # (a deploy, then a fault while draining) changes nothing.
    S.RETIRING: {E.LOADED: S.RETIRING, E.RETIRE: S.RETIRING, E.DIED: S.DEAD},
    S.DEAD: {},
}

del S, E


def allows(state: ChildState, event: ChildEvent) -> bool:
    """Whether ``event`` is legal in ``state`` (for events a child causes)."""
    return event in TRANSITIONS[state]


def transition(state: ChildState, event: ChildEvent, who: str = "") -> ChildState:
    """The state after ``event``, or :class:`LifecycleError` if the table has none."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise LifecycleError(state, event, frozenset(TRANSITIONS[state]), who) from None


class Outcome(enum.StrEnum):
    """How an invocation ended: the trace event's ``outcome``."""

    OK = "ok"
    EXCEPTION = "exception"
    EXCEEDED_CPU = "exceededCpu"
    EXCEEDED_MEMORY = "exceededMemory"
    EXCEEDED_WALL_TIME = "exceededWallTime"
    EXCEEDED_SUBREQUESTS = "exceededSubrequests"
    CANCELED = "canceled"
    #: In SPEC.md's list (a tail filter may name it); Corral answers a missing
    #: script before any invocation exists, so no invocation ends this way yet.
    SCRIPT_NOT_FOUND = "scriptNotFound"
    #: Internal: the child's process ended under the invocation.
    CRASHED = "crashed"


#: Outcomes that are a platform limit: they win over an earlier outcome.
LIMIT_OUTCOMES = frozenset({Outcome.EXCEEDED_CPU, Outcome.EXCEEDED_MEMORY,
                            Outcome.EXCEEDED_WALL_TIME, Outcome.EXCEEDED_SUBREQUESTS})

#: Outcomes a caller sees by name (the platform stopped the callee) rather
#: than as the callee's own exception.
PLATFORM_OUTCOMES = LIMIT_OUTCOMES | {Outcome.CANCELED, Outcome.CRASHED}

#: HTTP status the caller answers for each failed outcome.
OUTCOME_STATUS: Mapping[str, int] = {
    Outcome.EXCEPTION: 500,
    Outcome.EXCEEDED_CPU: 503,
    Outcome.EXCEEDED_MEMORY: 503,
    Outcome.EXCEEDED_WALL_TIME: 503,
    Outcome.EXCEEDED_SUBREQUESTS: 503,
    Outcome.CANCELED: 499,
    Outcome.SCRIPT_NOT_FOUND: 404,
    Outcome.CRASHED: 502,
}

#: Messages tenants and dispatchers see for platform-imposed failures.
OUTCOME_MESSAGE: Mapping[str, str] = {
    Outcome.EXCEEDED_CPU: "Worker exceeded CPU time limit.",
    Outcome.EXCEEDED_MEMORY: "Worker exceeded memory limit.",
    Outcome.EXCEEDED_WALL_TIME: "Worker exceeded wall time limit.",
    Outcome.EXCEEDED_SUBREQUESTS: "Worker exceeded subrequest limit.",
    Outcome.CANCELED: "The invocation was canceled.",
    Outcome.CRASHED: "The worker's process ended unexpectedly.",
}


class KillReason(enum.StrEnum):
    """Why the supervisor ended a child (the ``reason`` of ``child.ended``)."""

    #: Its zygote was rotated: an old hash seed never reaches a new tenant.
    ZYGOTE_REPLACED = "zygote replaced"
    #: Retired (deploy, cap, fault) and now idle.
    RETIRED = "retired"
    #: Idle past ``pool.idle_timeout_s``, or evicted at the process cap, while idle.
    IDLE = "idle"
    #: More spares than wanted, left over from a burst.
    SURPLUS_SPARE = "surplus spare"
    #: A throw-away sandbox that checked a deploy.
    VALIDATED = "validated"
    #: Its ``waitUntil`` work ignored the end of its deadline.
    WAIT_UNTIL_OVERRUN = "waitUntil work ignored its deadline"
    #: The memory backend refused to limit it.
    MEMORY_LIMIT_FAILED = "its memory limit could not be set"
    #: Its channel broke (a send failed, or it died on its own).
    CHANNEL_CLOSED = "channel closed"
    #: It broke the protocol (the detail says how).
    PROTOCOL_VIOLATION = "protocol violation"
    #: A coarse CPU budget the watchdog enforces.
    EXCEEDED_CPU = Outcome.EXCEEDED_CPU.value
    #: Over its memory limit (the backend, the kernel's OOM killer, or MemoryError).
    EXCEEDED_MEMORY = Outcome.EXCEEDED_MEMORY.value
