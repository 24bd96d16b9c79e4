"""Telling a tail call apart: ``return await stub.fetch(request)`` in a fetch handler.

A dispatch worker nearly always ends with that line: it hands the user
worker's response back untouched. Without knowing so, the supervisor sends
the user worker's response head to the dispatcher's child, waits for that
child to wake, build a ``Response``, return it and send the same head back,
and only then answers the client: a whole process round trip (the wake-up
and ~25 us of the child's Python) on the path of every request, for
nothing. workerd pays no such hop, as both workers run in one thread.

So when the call is a tail call, the child says so (``SubRequest.tail``),
and the supervisor answers the caller's own invocation with the callee's
response the moment it comes (``SubResponse.answered``); the child's
coroutine still runs to its end, with a ``Response`` of the status alone
(no headers, no body) that nothing can look at.

"Nothing can look at it" is what the bytecode proves: the frame awaiting
the call is the handler's own coroutine (the one the runtime awaits and
whose result it sends as the response), and the instruction its ``await``
continues with is ``RETURN_VALUE``: no ``finally``, no ``with`` exit, no
statement runs between the call's result and the handler's return. (An
``except`` clause around it runs only when the call raises, and then the
call was never answered for it.) Anything else (a helper coroutine, a
``wait_for``, a header set on the way out) is an ordinary call.

The check costs a dictionary lookup per call site after its first.
"""

from __future__ import annotations

import contextvars
import dis
import types

#: The coroutine frame of the fetch handler of the invocation running in
#: this context (each invocation is its own task, with its own context).
ROOT_FRAME: contextvars.ContextVar[types.FrameType | None] = contextvars.ContextVar(
    "corral_root_frame", default=None)

#: (-1 where the opcode does not exist: no call is then a tail call.)
_SEND = dis.opmap.get("SEND", -1)
_RETURN_VALUE = dis.opmap["RETURN_VALUE"]
_EXTENDED_ARG = dis.opmap["EXTENDED_ARG"]

#: (code, offset of its SEND) -> whether the await there is the code's last act.
_RETURNS_AT: dict[tuple[types.CodeType, int], bool] = {}


def mark_root(coroutine: object) -> None:
    """``coroutine`` is this invocation's fetch handler, about to be awaited."""
    if type(coroutine) is types.CoroutineType:
        ROOT_FRAME.set(coroutine.cr_frame)


def is_tail(frame: types.FrameType | None) -> bool:
    """Whether ``frame`` (the frame awaiting a call) is the invocation's
    fetch handler, suspended in an ``await`` whose result it returns at once."""
    if frame is None or frame is not ROOT_FRAME.get():
        return False
    key = (frame.f_code, frame.f_lasti)
    known = _RETURNS_AT.get(key)
    if known is None:
        known = _RETURNS_AT[key] = _returns_at(*key)
    return known


def _returns_at(code: types.CodeType, offset: int) -> bool:
    """Whether the ``SEND`` at ``offset`` continues, once its awaitable is
    done, with ``RETURN_VALUE`` (CPython 3.11's ``await``: ``SEND`` jumps
    forward by its argument when the awaitable returns)."""
    raw = code.co_code
    if offset < 0 or offset + 1 >= len(raw) or raw[offset] != _SEND:
        return False
    if offset >= 2 and raw[offset - 2] == _EXTENDED_ARG:
        return False  # a jump this long is no plain return: not worth decoding
    target = offset + 2 + 2 * raw[offset + 1]
    return target < len(raw) and raw[target] == _RETURN_VALUE
