"""Functions over Workers RPC, this child's side.

A function sent as an RPC argument or result (a closure, sync or async) is
*exported*: kept here under an id, which the frame's ``functions`` list
names; the value itself carries only its place in that list. The
receiving side gets a :class:`RemoteFunction`: awaiting a call of it runs
the function here, with the arguments and result crossing as any RPC
value. The supervisor decides who may call what (supervisor.pool.rpc_stubs)
and tells this child when a function is no longer reachable (``Release``).

A stub is valid in the invocation that received it, until that invocation
ends: Cloudflare disposes stubs at the end of the request that received
them, and calling one later is workerd's "RPC stub used after being
disposed." error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .. import workers
from ..pyodide_shim import JsException

#: workerd's words (worker-rpc.c++).
DISPOSED = "RPC stub used after being disposed."

_functions: dict[int, Callable[..., Any]] = {}
_next_id = 1


def export(fn: Callable[..., Any]) -> int:
    """Keep ``fn`` for calls from elsewhere; the id the supervisor knows it by."""
    global _next_id
    fn_id = _next_id
    _next_id += 1
    _functions[fn_id] = fn
    return fn_id


def release(ids: list[int]) -> None:
    """No stub of these functions is left anywhere (the supervisor's word)."""
    for fn_id in ids:
        _functions.pop(fn_id, None)


def exported(fn_id: int) -> Callable[..., Any]:
    fn = _functions.get(fn_id)
    if fn is None:
        raise JsException("Error", DISPOSED)
    return fn


def entry(value: Callable[..., Any]) -> int:
    """What a ``functions`` list says of ``value``: an export of this
    child's (> 0), or ``-handle`` for a stub received and passed on."""
    if isinstance(value, RemoteFunction):
        return -value._usable()
    return export(value)


def forget(entries: list[int]) -> None:
    """Exports made for a value that was never sent (its encoding failed)."""
    release([e for e in entries if e > 0])


class RemoteFunction:
    """A function that lives elsewhere: ``await fn(*args)`` calls it there
    (keywords travel as one trailing object, as for any RPC call)."""

    __slots__ = ("_handle", "_invocation")

    def __init__(self, handle: int) -> None:
        self._handle = handle
        #: The invocation it was received in: only there is its handle valid.
        self._invocation = workers.current_invocation.get()

    def _usable(self) -> int:
        runtime = workers._runtime
        if workers.current_invocation.get() != self._invocation or runtime is None \
                or self._invocation not in runtime.invocations:
            raise JsException("Error", DISPOSED)
        return self._handle

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .durable_objects import decode_result, encode_rpc

        handle = self._usable()
        body, functions = await encode_rpc([*args, kwargs] if kwargs else list(args), "stub()")
        request = workers.Request("https://rpc.invalid/", method="POST", body=body)
        response = await workers._runtime.sub_request(  # type: ignore[union-attr]
            "stub", request, target=str(handle), rpc="call", functions=functions)
        return decode_result(await response.bytes(), getattr(response, "_rpc_functions", ()))

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<RPC stub {self._handle}>"


async def call_exported(fn_id: int, args: list[Any]) -> Any:
    """Run exported function ``fn_id`` (a stub of it was called): its result, awaited."""
    result = exported(fn_id)(*args)
    if inspect.isawaitable(result):
        result = await result
    return result
