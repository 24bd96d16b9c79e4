"""What every binding handler shares: its errors, its call context, its reply.

A handler (one per binding type, in its own module) answers ``method(args)``
calls for one script's binding. It never sees the child: it gets a
:class:`Context` the supervisor built from the *stored* binding (the data
:class:`Scope` is the script's dispatch namespace plus the id the platform
wrote in the metadata), and returns a :class:`Reply`. Whatever it raises as
:class:`BindingError` reaches the tenant as ``pyodide.ffi.JsException`` with
that message; anything else is a bug, logged, and reported to the tenant as
an internal error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Protocol

from supervisor.config import QuotaLimits
from supervisor.model import ScriptRecord
from supervisor.pool.bodies import BodySource

#: The furthest time from the epoch a JavaScript Date holds, in ms (ECMA-262
#: 21.4.1.1): the bound of every time a binding stores for a tenant (KV
#: expirations, Durable Object alarms). Past it a value no longer fits the
#: stores' 64-bit integers, and it is no time a tenant can mean.
MAX_DATE_MS = 8_640_000_000_000_000


class BindingError(Exception):
    """A failed binding call, as the tenant will see it (``name``: the JS
    error class, ``Error`` or ``TypeError`` as Cloudflare raises them)."""

    def __init__(self, message: str, name: str = "Error") -> None:
        super().__init__(message)
        self.name = name
        self.message = message


class Scope:
    """Where a binding's data lives: (dispatch namespace, id).

    Two namespaces naming the same id never share data; two scripts of one
    namespace naming the same id do (the platform decides by the id it
    writes). ``key`` is a fixed-length, filesystem-safe name for the pair:
    ids are free text and never become paths themselves.
    """

    __slots__ = ("namespace", "id", "key")

    def __init__(self, namespace: str, id: str) -> None:
        self.namespace = namespace
        self.id = id
        self.key = hashlib.sha256(f"{namespace}\0{id}".encode()).hexdigest()[:40]

    def __repr__(self) -> str:
        return f"Scope({self.namespace!r}, {self.id!r})"


def object_scope(namespace: str, script: str, class_name: str, object_id: str) -> Scope:
    """The data scope of one Durable Object: its dispatch namespace, the script
    that defines its class, the class and the id (objects of one namespace are
    never visible from another)."""
    return Scope(namespace, f"{script}\0{class_name}\0{object_id}")


class Context:
    """One call: who calls, on what data, with which caps, and its body."""

    __slots__ = ("record", "binding", "scope", "quota", "body", "invocation", "after", "delivered", "hold")

    def __init__(self, record: ScriptRecord, binding: Any, scope: Scope, quota: QuotaLimits,
                 body: BodySource | bytes | None, invocation: Any = None) -> None:
        #: The calling invocation (Durable Object calls are its children in traces).
        self.invocation = invocation
        #: A Durable Object call's place in its caller's order (E-order): set
        #: once the caller's previous such call reached its object (None: first),
        #: and this call's own, set when it has (supervisor.bindings.Bindings.handle).
        self.after: Any = None
        self.delivered: Any = None
        #: Counts bytes the supervisor keeps for this call against the calling
        #: child's bound (supervisor.limits.held_calls); the refusal, or "".
        self.hold: Callable[[int], str] = _no_bound
        self.record = record
        self.binding = binding
        self.scope = scope
        self.quota = quota
        self.body = body

    async def read_body_within(self, limit: int, what: str) -> bytes | None:
        """The whole request body, or None (read no further) past ``limit``."""
        from supervisor.pool.bodies import BodyError, BodyTooLarge, read_all

        body, self.body = self.body, None
        if body is None:
            return b""
        if isinstance(body, bytes):
            return body if len(body) <= limit else None

        def count(size: int) -> None:
            # Each chunk against the child's bound as it comes: thirty 24 MiB
            # KV puts at once from one small child held 1.5 GB of the supervisor.
            refused = self.hold(size)
            if refused:
                raise BindingError(refused, "RangeError")

        try:
            return await read_all(body, limit, count)
        except BodyTooLarge:
            return None
        except BodyError as exc:
            raise BindingError(f"{what}: {exc}") from None


def _no_bound(_size: int) -> str:
    return ""


class Reply:
    """A handler's answer: plain data, plus bytes for calls that return a body."""

    __slots__ = ("value", "body")

    def __init__(self, value: Any = None, body: BodySource | bytes | None = None) -> None:
        self.value = value
        self.body = body


class Handler(Protocol):
    """Serves one binding type. ``call`` runs on the trio thread; storage I/O
    goes to threads (supervisor.bindings.io)."""

    async def call(self, ctx: Context, method: str, args: list[Any]) -> Reply:
        ...

    def close(self) -> None:
        ...


# -- argument checking shared by the handlers -----------------------------------
# The SDK shapes the arguments; the supervisor still checks them, because a
# child is not trusted to have run the SDK.


def arg(args: list[Any], index: int, default: Any = None) -> Any:
    return args[index] if len(args) > index else default


def options(args: list[Any], index: int) -> dict[str, Any]:
    value = arg(args, index)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BindingError(f"options must be an object, got {type(value).__name__}", "TypeError")
    return value


def string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BindingError(f"{what} must be a string, got {type(value).__name__}", "TypeError")
    return value


def integer(value: Any, what: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BindingError(f"{what} must be an integer, got {value!r}", "TypeError")
    if (low is not None and value < low) or (high is not None and value > high):
        raise BindingError(f"{what} must be between {low} and {high}, got {value}", "RangeError")
    return value
