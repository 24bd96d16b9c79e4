"""Functions crossing Workers RPC: what each invocation may call back.

On Cloudflare a function passed as an RPC argument, or returned as a
result, reaches the other side as a stub; calling the stub runs the
function where it was made. Here the child that sends a function keeps it
under an id of its own (an *export*) and names it in the frame's
``functions`` list; the encoded value only says "the i-th function of that
list". The supervisor, the trusted party, turns each entry into a
:class:`Target` and hands the receiving invocation *handles*: small
numbers valid in that invocation's own table (:attr:`Lent.stubs`) and
nowhere else. A child can only name invocations it runs, so no id it
guesses reaches a function of another invocation, script or tenant.

A stub is usable until the invocation holding it ends (Cloudflare
disposes stubs at the end of the request that received them). A child's
exported function is kept until the invocation that sent it has ended and
no holder is left; then the child is told to let it go (:class:`Release`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocol.messages import Release

if TYPE_CHECKING:
    from supervisor.model import ScriptRecord
    from supervisor.pool.invocation import Invocation

#: workerd's words for a call on a stub that is no longer valid (worker-rpc.c++).
DISPOSED = "RPC stub used after being disposed."
#: Functions one frame may name, and stubs one invocation may hold: a
#: hostile child must not grow the supervisor's tables without end.
MAX_PER_FRAME = 256
MAX_PER_INVOCATION = 4096


class StubError(Exception):
    """A ``functions`` list the supervisor refuses (the call fails with it)."""

    def __init__(self, message: str, name: str = "Error") -> None:
        super().__init__(message)
        self.name = name
        self.message = message


class Target:
    """A function exported by a child: where it runs, as which invocation's
    (its outbound worker and parameters: a tenant's function is vetted as
    the tenant's fetches are), and who still holds it."""

    __slots__ = ("child", "record", "fn", "refs", "outbound", "params")

    def __init__(self, child: Any, record: ScriptRecord, fn: int, outbound: Any = None,
                 params: Any = None) -> None:
        self.child = child
        self.record = record
        self.fn = fn
        self.outbound = outbound
        self.params = params
        #: The exporting invocation (until it ends) and every grant of it.
        self.refs = 1

    def drop(self) -> None:
        self.refs -= 1
        if self.refs == 0 and self.child.alive:
            self.child.send(Release([self.fn]))


class Lent:
    """An invocation's share of RPC functions: what it exported, what it may call."""

    __slots__ = ("exports", "stubs", "returned", "next_handle", "params")

    def __init__(self) -> None:
        self.exports: list[Target] = []
        #: handle -> target: the stubs this invocation may call.
        self.stubs: dict[int, Target] = {}
        #: The handles its RPC call's arguments gave it: disposed when the
        #: call returns, as Cloudflare disposes stubs received as parameters.
        self.params: list[int] = []
        #: The handles its caller got for the functions its RPC result names
        #: (granted as its ResponseStart arrives, in the order the value names them).
        self.returned: list[int] = []
        self.next_handle = 1

    def returned_from_call(self) -> None:
        """The RPC call it serves has its result: the stubs its arguments
        carried are disposed (a callee calling them back in waitUntil ran the
        caller's code after its request was over)."""
        for handle in self.params:
            target = self.stubs.pop(handle, None)
            if target is not None:
                target.drop()
        self.params = []

    def end(self) -> None:
        """The invocation is over: its stubs are disposed, its exports let go."""
        for target in self.exports:
            target.drop()
        for target in self.stubs.values():
            target.drop()
        self.exports, self.stubs = [], {}


def lent(inv: Invocation) -> Lent:
    if inv.rpc is None:
        inv.rpc = Lent()
    return inv.rpc


def lend(sender: Invocation, entries: Any) -> tuple[Lent | None, list[int]]:
    """The share an RPC call's callee gets of the functions its arguments
    carry (``entries``, the call's ``functions`` list), and their handles
    there; disposed when the call returns (:meth:`Lent.returned_from_call`).
    None and no handles, at no cost, when no function crosses."""
    if not entries:
        return None, []
    targets = resolve(sender, entries)
    share = Lent()
    share.params = handles = grant(share, targets)
    return share, handles


def return_functions(callee: Invocation, entries: Any) -> None:
    """The functions an RPC callee's result carries become stubs its caller
    holds (their handles go back with the result, ``Lent.returned``)."""
    lent(callee).returned = grant(callee.parent, resolve(callee, entries))


def resolve(sender: Invocation, entries: Any) -> list[Target]:
    """The targets of the ``functions`` list ``sender`` sent: an entry > 0 is
    a function of its own child, < 0 a stub it holds (``-handle``) passed on."""
    if not isinstance(entries, list) or len(entries) > MAX_PER_FRAME:
        raise StubError(f"at most {MAX_PER_FRAME} functions can be sent in one RPC call", "TypeError")
    if sender.is_done:
        raise StubError(DISPOSED)
    share = lent(sender)
    targets: list[Target] = []
    try:
        for entry in entries:
            if type(entry) is not int or entry == 0:
                raise StubError("an RPC value names a function it does not carry", "TypeError")
            if entry > 0:
                if len(share.exports) >= MAX_PER_INVOCATION:
                    raise StubError(f"at most {MAX_PER_INVOCATION} functions can be sent over RPC "
                                    "in one request", "TypeError")
                target = Target(sender.child, sender.record, entry, sender.outbound, sender.params)
                share.exports.append(target)  # the exporter's own reference
            else:
                target = share.stubs.get(-entry)  # type: ignore[assignment]
                if target is None:
                    raise StubError(DISPOSED)
            target.refs += 1  # the caller's reference, until granted or dropped
            targets.append(target)
    except StubError:
        for target in targets:
            target.drop()
        raise
    return targets


def grant(holder: Invocation | Lent | None, targets: list[Target]) -> list[int]:
    """Hand ``targets`` to ``holder`` (an invocation, or the share of one not
    started yet): the handles it calls them by. Takes over the references
    :func:`resolve` made."""
    if not targets:
        return []
    if holder is None:
        release(targets)
        raise StubError("only an RPC call's result can return a function", "TypeError")
    done = not isinstance(holder, Lent) and holder.is_done
    share = holder if isinstance(holder, Lent) else lent(holder)
    if done or len(share.stubs) + len(targets) > MAX_PER_INVOCATION:
        for target in targets:
            target.drop()
        raise StubError(DISPOSED if done else
                        f"at most {MAX_PER_INVOCATION} RPC stubs can be held in one request")
    handles = []
    for target in targets:
        handle = share.next_handle
        share.next_handle += 1
        share.stubs[handle] = target
        handles.append(handle)
    return handles


def release(targets: list[Target]) -> None:
    """References :func:`resolve` made that no grant took (the call failed)."""
    for target in targets:
        target.drop()


def lookup(caller: Invocation, handle: Any) -> Target:
    """The function stub ``handle`` of ``caller`` reaches, if it still may."""
    share = caller.rpc
    target = share.stubs.get(handle) if share is not None and type(handle) is int else None
    if target is None or not target.child.alive:
        raise StubError(DISPOSED)
    return target
