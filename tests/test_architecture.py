"""The layering rules of ARCHITECTURE.md, checked on the source with ``ast``.

Every import counts, wherever it is written: at the top, inside a function,
and under ``if TYPE_CHECKING:``. An annotation that needs a higher layer is
a dependency all the same, and a ``typing.Protocol`` in the lower module
says what it needs instead (``ChildOwner``, ``ChildLink``, ``Charged``,
``SubrequestHandler``, ``ScriptSource``).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("supervisor", "sandbox", "protocol")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ours an imported name lives in (longest match), if any."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> set[str]:
    """Our modules that ``module`` imports, anywhere in its source."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from a import b`` may import the module a.b itself.
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _violations(source_prefix: str, target_prefixes: tuple[str, ...]) -> list[str]:
    return sorted(f"{module} imports {target}"
                  for module, targets in GRAPH.items() if _within(module, source_prefix)
                  for target in targets if any(_within(target, p) for p in target_prefixes))


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_import_graph_sees_the_packages() -> None:
    # Guard against a checker that silently checks nothing.
    assert "supervisor.pool.pool" in GRAPH and "sandbox.child" in GRAPH
    assert "supervisor.pool.child_process" in GRAPH["supervisor.pool.pool"]


def test_sandbox_and_supervisor_never_import_each_other() -> None:
    assert _violations("sandbox", ("supervisor",)) == []
    assert _violations("supervisor", ("sandbox",)) == []


def test_protocol_imports_neither_side() -> None:
    assert _violations("protocol", ("supervisor", "sandbox")) == []


def test_pool_does_not_import_calls() -> None:
    assert _violations("supervisor.pool", ("supervisor.calls",)) == []


def test_limits_do_not_import_the_pool_or_the_calls() -> None:
    assert _violations("supervisor.limits", ("supervisor.pool", "supervisor.calls")) == []


#: Leaves the bottom of the tree may use: the domain errors, and the names of
#: Cloudflare's compatibility flags (data).
LEAVES = ("supervisor.errors", "supervisor.compat_flags")


def test_lifecycle_and_model_import_nothing_of_the_supervisor() -> None:
    """The bottom of the tree: nothing but the leaves."""
    for leaf in LEAVES:
        assert _violations(leaf, ("supervisor",)) == []
    for module in ("supervisor.lifecycle", "supervisor.model"):
        assert [v for v in _violations(module, ("supervisor",))
                if not v.endswith(tuple(f" imports {leaf}" for leaf in LEAVES))] == []


def test_no_import_cycle_among_supervisor_modules() -> None:
    graph = {m: {t for t in targets if _within(t, "supervisor")}
             for m, targets in GRAPH.items() if _within(m, "supervisor")}
    # Tarjan-free: a depth-first search that reports the first cycle it closes.
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
