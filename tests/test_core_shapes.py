"""Issue 12 ("reshape the core"): the shapes the core must keep.

* :mod:`protocol.flow`, the sans-I/O body-stream core both sides share: its
  windows and buffers, driven directly (no I/O, no mocks).
* :mod:`supervisor.lifecycle`: every ``KillReason`` and ``Outcome`` has a
  producer, and its strings are not spelled out again across modules.
* Narrow ownership: nothing in ``supervisor/`` rebinds module globals at run
  time or sets another module's class attributes.
"""

from __future__ import annotations

import ast
import enum
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from protocol.flow import (
    MAX_GRANT,
    CreditExceeded,
    Inbound,
    Outbound,
    ReceiveWindow,
    SendWindow,
    StreamFailed,
)
from protocol.messages import MAX_CHUNK, STREAM_WINDOW
from supervisor.lifecycle import ChildState, KillReason, Outcome

ROOT = Path(__file__).resolve().parent.parent
LIFECYCLE = ROOT / "supervisor" / "lifecycle.py"


# -- protocol.flow: the receive window --------------------------------------

def test_receive_window_grants_a_full_window_first_then_only_past_half() -> None:
    window = ReceiveWindow()
    assert window.top_up() == STREAM_WINDOW
    assert window.granted == STREAM_WINDOW
    assert window.top_up() == 0  # nothing used: no new grant
    window.received(STREAM_WINDOW // 2)
    assert window.top_up() == 0  # half the window still granted: no grant yet
    window.received(1)
    # Less than half left: top the window back up to a full one in one grant.
    assert window.top_up() == STREAM_WINDOW // 2 + 1
    assert window.granted == STREAM_WINDOW


def test_receive_window_accepts_exactly_its_credit() -> None:
    window = ReceiveWindow()
    window.top_up()
    window.received(STREAM_WINDOW)
    assert window.granted == 0


def test_data_beyond_the_credit_is_a_violation_that_says_so() -> None:
    window = ReceiveWindow()
    with pytest.raises(CreditExceeded, match=r"^5 bytes sent beyond the granted credit$"):
        window.received(5)  # nothing was granted
    window = ReceiveWindow()
    window.top_up()
    window.received(STREAM_WINDOW - 1)
    with pytest.raises(CreditExceeded, match="2 bytes sent beyond the granted credit"):
        window.received(2)


# -- protocol.flow: the send window -----------------------------------------

def test_a_sender_without_credit_is_blocked() -> None:
    window = SendWindow()
    assert window.take(100) == 0
    out = Outbound()
    assert out.take(100) == 0  # 0: wait for credit


def test_send_window_credits_are_consumed_and_never_exceeded() -> None:
    window = SendWindow()
    window.grant(100)
    window.grant(50)
    assert window.credit == 150
    assert window.take(120) == 120
    assert window.take(120) == 30  # only what is left
    assert window.take(120) == 0  # blocked at zero window
    assert window.credit == 0


def test_send_window_cuts_at_one_chunk() -> None:
    window = SendWindow()
    window.grant(3 * MAX_CHUNK)
    assert window.take(10 * MAX_CHUNK) == MAX_CHUNK
    assert window.credit == 2 * MAX_CHUNK


@pytest.mark.parametrize("nbytes", [0, -1, MAX_GRANT + 1])
def test_an_absurd_grant_is_a_violation_that_names_it(nbytes: int) -> None:
    out = Outbound()
    with pytest.raises(CreditExceeded, match=rf"^a credit of {nbytes} bytes$"):
        out.grant(nbytes)
    assert out.window.credit == 0


def test_the_largest_grant_is_accepted() -> None:
    window = SendWindow()
    window.grant(MAX_GRANT)
    assert window.credit == MAX_GRANT


def test_an_aborted_outbound_refuses_to_send_with_the_reason() -> None:
    out = Outbound()
    out.grant(10)
    out.abort("consumer gone")
    with pytest.raises(StreamFailed, match="^consumer gone$"):
        out.take(5)
    other = Outbound()
    other.abort("")
    with pytest.raises(StreamFailed, match="the stream was aborted"):
        other.take(5)


# -- protocol.flow: the inbound buffer --------------------------------------

def test_inbound_asks_for_credit_then_waits() -> None:
    inbound = Inbound()
    assert not inbound.started
    assert inbound.next() is None  # nothing yet: wait ...
    assert inbound.started
    assert inbound.credit() == STREAM_WINDOW  # ... after granting a window
    assert inbound.credit() == 0


def test_inbound_buffers_in_order_then_ends() -> None:
    inbound = Inbound()
    inbound.credit()
    inbound.feed(b"ab", False)
    inbound.feed(b"cd", True)
    assert inbound.ended
    assert inbound.next() == b"ab"
    assert inbound.next() == b"cd"
    assert inbound.next() == b""  # the end, and it stays the end
    assert inbound.next() == b""


def test_an_empty_end_frame_uses_no_credit() -> None:
    inbound = Inbound()
    inbound.feed(b"", True)  # no credit granted, none needed
    assert inbound.next() == b""


def test_inbound_data_beyond_the_credit_is_refused() -> None:
    inbound = Inbound()
    with pytest.raises(CreditExceeded, match="beyond the granted credit"):
        inbound.feed(b"x", False)
    assert inbound.next() is None  # nothing was buffered


def test_inbound_failure_comes_after_the_buffered_data() -> None:
    inbound = Inbound()
    inbound.credit()
    inbound.feed(b"kept", False)
    inbound.fail("the worker aborted the body")
    assert inbound.next() == b"kept"
    with pytest.raises(StreamFailed, match="^the worker aborted the body$"):
        inbound.next()
    other = Inbound()
    other.fail("")
    with pytest.raises(StreamFailed, match="^the stream was aborted$"):
        other.next()


def test_closing_inbound_drops_data_and_tells_the_producer_once() -> None:
    inbound = Inbound()
    inbound.credit()
    inbound.feed(b"unread", False)
    assert inbound.close() is True  # not done: the producer must be told
    assert inbound.close() is False  # idempotent
    assert inbound.next() == b""
    # Chunks already in flight still count against the credit, and are dropped.
    inbound.feed(b"late", True)
    assert inbound.next() == b""
    assert inbound.window.granted == STREAM_WINDOW - len(b"unread") - len(b"late")


def test_closing_an_ended_inbound_needs_no_abort() -> None:
    inbound = Inbound()
    inbound.feed(b"", True)
    assert inbound.close() is False


def test_data_after_the_end_is_a_violation() -> None:
    inbound = Inbound()
    inbound.credit()
    inbound.feed(b"a", True)
    assert inbound.next() == b"a"
    assert inbound.next() == b""
    with pytest.raises((CreditExceeded, StreamFailed), match="end"):
        inbound.feed(b"b", False)


# -- lifecycle: every member has a producer ---------------------------------

def _modules(*roots: str) -> list[Path]:
    return sorted(p for root in roots for p in (ROOT / root).rglob("*.py") if p != LIFECYCLE)


def _enum_aliases(tree: ast.Module, name: str) -> set[str]:
    """Names ``name`` is bound to in a module (``import X as Y`` included)."""
    aliases = {name}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("lifecycle"):
            aliases |= {a.asname or a.name for a in node.names if a.name == name}
    return aliases


def _produced(cls: type[enum.Enum]) -> dict[str, list[str]]:
    """Member name -> where ``cls.MEMBER`` is used other than in a comparison."""
    uses: dict[str, list[str]] = defaultdict(list)
    for path in _modules("supervisor", "sandbox"):
        tree = ast.parse(path.read_text(), str(path))
        aliases = _enum_aliases(tree, cls.__name__)
        compared: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                compared |= {id(n) for n in [node.left, *node.comparators]}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr in cls.__members__
                    and id(node) not in compared):
                uses[node.attr].append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return uses


@pytest.mark.parametrize("cls", [KillReason, Outcome])
def test_every_member_has_a_producer(cls: type[enum.Enum]) -> None:
    uses = _produced(cls)
    unproduced = [name for name in cls.__members__ if not uses.get(name)]
    assert not unproduced, f"{cls.__name__} members nothing in supervisor/ or sandbox/ produces: {unproduced}"


# -- lifecycle: its strings are spelled in one place ------------------------

#: The vocabulary lifecycle.py owns (plus "busy", the pool's set of children
#: on CPU watch, which the issue names too).
VOCABULARY = {m.value for cls in (Outcome, KillReason, ChildState) for m in cls} | {"busy"}

#: (module, literal) pairs that are the same word but not the lifecycle's.
FALSE_HITS = {
    ("supervisor/log.py", "exception"): "a JSON log field name",
    ("supervisor/observability/otel.py", "exception"): "OpenTelemetry's span event name",
    ("supervisor/observability/metrics.py", "ok"): "cold-start metric label (not an outcome)",
    ("sandbox/rehearsal/worker.py", "ok"): "a JSON key of a rehearsal worker's answer",
    ("supervisor/limits/cpu_account.py", "loading"): "a __slots__ attribute name",
}

#: Known violations, (module, literal) -> why it is still spelled there. A
#: module listed here for a literal is not counted; anything new fails the test.
KNOWN = {
    ("supervisor/pool/pool.py", "retired"): "a key of Pool.snapshot(), read back by the "
    "corral_pool_children gauge (metrics.POOL_STATES); a typed snapshot would end it",
}


def _docstrings(tree: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _vocabulary_literals() -> dict[str, set[str]]:
    """Literal -> modules (outside lifecycle.py and protocol/) spelling it exactly."""
    where: dict[str, set[str]] = defaultdict(set)
    for path in _modules("supervisor", "sandbox"):
        tree = ast.parse(path.read_text(), str(path))
        docs = _docstrings(tree)
        module = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and node.value in VOCABULARY and id(node) not in docs):
                where[node.value].add(module)
    return where


def test_no_lifecycle_string_is_spelled_in_two_modules() -> None:
    offenders = {}
    for literal, modules in _vocabulary_literals().items():
        left = {m for m in modules if (m, literal) not in FALSE_HITS and (m, literal) not in KNOWN}
        if len(left) > 1:
            offenders[literal] = sorted(left)
    assert not offenders, (
        "lifecycle strings spelled as bare literals in more than one module "
        f"(use the supervisor.lifecycle member): {offenders}")


def test_the_allow_lists_name_real_files() -> None:
    for module, _ in [*FALSE_HITS, *KNOWN]:
        assert (ROOT / module).is_file(), module


def test_the_allow_lists_are_still_needed() -> None:
    """An entry whose literal left its module is stale and must go."""
    where = _vocabulary_literals()
    stale = [pair for pair in [*FALSE_HITS, *KNOWN] if pair[0] not in where.get(pair[1], ())]
    assert not stale, f"allow-list entries no longer spelled there: {stale}"


def test_the_spelling_check_sees_a_new_duplicate(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second module spelling a lifecycle string fails the check (guards the checker)."""
    where = _vocabulary_literals()
    assert where[Outcome.EXCEEDED_CPU.value] == set(), where[Outcome.EXCEEDED_CPU.value]
    real = _vocabulary_literals
    monkeypatch.setattr(sys.modules[__name__], "_vocabulary_literals", lambda: {
        **real(), Outcome.EXCEEDED_CPU.value: {"supervisor/a.py", "supervisor/b.py"}})
    with pytest.raises(AssertionError, match="exceededCpu"):
        test_no_lifecycle_string_is_spelled_in_two_modules()


def test_every_kill_reason_has_a_metrics_label() -> None:
    from supervisor.observability.metrics import KILL_REASONS, kill_reason

    for reason in KillReason:
        assert reason.value in KILL_REASONS, reason
        assert kill_reason(reason) == reason.value
        assert kill_reason(f"{reason}: some detail") == reason.value
        assert type(kill_reason(reason)) is str  # a plain label, not the enum member
    assert kill_reason("something else") == "other"


# -- narrow ownership --------------------------------------------------------

#: Legitimate exceptions, each with its reason. None so far.
OWNERSHIP_ALLOWED: set[tuple[str, str]] = set()


def _ownership_offenders() -> list[str]:
    offenders = []
    for path in _modules("supervisor"):
        module = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(), str(path))
        local_classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        imported = set()
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Global):
                for name in node.names:
                    if (module, f"global {name}") not in OWNERSHIP_ALLOWED:
                        offenders.append(f"{module}:{node.lineno}: global {name}")
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            elif isinstance(node, ast.Delete):
                targets = node.targets
            for target in targets:
                for sub in ast.walk(target):
                    # X.attr = ... where X is an imported name (another module's
                    # class or module), or a capitalised name not defined here.
                    if (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
                            and (sub.value.id in imported
                                 or (sub.value.id[:1].isupper()
                                     and sub.value.id not in local_classes))):
                        spelled = ast.unparse(sub)
                        if (module, spelled) not in OWNERSHIP_ALLOWED:
                            offenders.append(f"{module}:{node.lineno}: {spelled} assigned")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("setattr", "delattr") and node.args
                    and isinstance(node.args[0], ast.Name)
                    and (node.args[0].id in imported or node.args[0].id[:1].isupper())):
                spelled = f"{node.func.id}({node.args[0].id}, ...)"
                if (module, spelled) not in OWNERSHIP_ALLOWED:
                    offenders.append(f"{module}:{node.lineno}: {spelled}")
    return offenders


def test_supervisor_modules_own_their_state_narrowly() -> None:
    offenders = _ownership_offenders()
    assert not offenders, "run-time writes to globals or to other modules' classes: " + "; ".join(offenders)


def test_the_ownership_check_sees_what_it_forbids(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker above catches the shapes it names (guards the checker)."""
    fake = tmp_path / "supervisor"
    fake.mkdir()
    (fake / "bad.py").write_text(
        "import trio\nfrom x import Pool\n"
        "def f():\n    global COUNT\n    COUNT = 1\n"
        "Pool.size = 3\ntrio.thing = 1\nsetattr(Pool, 'a', 1)\n"
        "class Own:\n    pass\nOwn.fine = 1\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = _ownership_offenders()
    assert sorted(f.split(": ", 1)[1] for f in found) == [
        "Pool.size assigned", "global COUNT", "setattr(Pool, ...)", "trio.thing assigned"], found
