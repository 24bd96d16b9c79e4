"""How deep decoded data nests, measured without recursion.

Data a child or a client sends can nest as deep as its bytes allow. Whoever
walks it later by recursion (a tail worker building its trace items, a queue
consumer decoding its batch, a JSON encoder) runs out of stack where the
check that let it in did not: a depth limit with a wide margin, checked here
once at the edge, is what keeps one tenant's message from failing the
batches, traces and answers of others.
"""

from __future__ import annotations

from typing import Any


def deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` (lists, tuples and dicts, as msgspec and json decode
    them) holds containers nested more than ``limit`` levels deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))
    return False
