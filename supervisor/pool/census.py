"""How many of the pool's children are live, starting, and serving each package set, kept as they change.

The pool plans from these counts on every convergence (supervisor.pool.plan),
and a storm of first requests converges a few times per cold start. Counting
them by walking every child cost ~0.4 ms per convergence with 1,100 children,
about a third of the supervisor's CPU per cold start in a storm. Here each
child's life moves it in and out of a few sets instead, so a count is a
``len`` or a dict lookup.

The events, in the order a child lives them:

- ``adopted``: forked and registered; it is starting (and live).
- ``ready``: it said Hello; it no longer starts.
- ``assigned``: it was given a script; a child of a package zygote now
  counts as that set's in use (a package zygote is not evicted while any is).
- ``condemned``: it was given its kill reason; it is no longer live, though
  its process and channel may last a little longer.
- ``gone``: its channel closed and the pool forgot it.

Every event is idempotent and any may be skipped (a child can die before its
Hello, or be condemned only as it dies), so the counts cannot drift.
"""

from __future__ import annotations

from collections.abc import Hashable


class ChildCensus:
    """``live``, ``starting`` and :meth:`in_use` among the children the pool registered."""

    __slots__ = ("_registered", "_condemned", "_starting", "_sets", "_in_use")

    def __init__(self) -> None:
        self._registered: set[Hashable] = set()
        self._condemned: set[Hashable] = set()
        self._starting: set[Hashable] = set()
        #: The package set of each live child assigned a script, and how many each set has.
        self._sets: dict[Hashable, Hashable] = {}
        self._in_use: dict[Hashable, int] = {}

    def adopted(self, child: Hashable) -> None:
        self._registered.add(child)
        self._starting.add(child)

    def ready(self, child: Hashable) -> None:
        self._starting.discard(child)

    def assigned(self, child: Hashable, package_set: Hashable | None) -> None:
        """``package_set``: the key of the package zygote that forked it (None: the base zygote)."""
        if package_set is None or child in self._sets or child in self._condemned \
                or child not in self._registered:
            return
        self._sets[child] = package_set
        self._in_use[package_set] = self._in_use.get(package_set, 0) + 1

    def condemned(self, child: Hashable) -> None:
        self._starting.discard(child)
        if child in self._registered:
            self._condemned.add(child)
        self._unassign(child)

    def gone(self, child: Hashable) -> None:
        self._registered.discard(child)
        self._condemned.discard(child)
        self._starting.discard(child)
        self._unassign(child)

    def _unassign(self, child: Hashable) -> None:
        package_set = self._sets.pop(child, None)
        if package_set is not None:
            left = self._in_use[package_set] - 1
            if left:
                self._in_use[package_set] = left
            else:
                del self._in_use[package_set]

    def in_use(self, package_set: Hashable) -> int:
        """Live children of that package set's zygote that were given a script."""
        return self._in_use.get(package_set, 0)

    @property
    def live(self) -> int:
        """Registered and not condemned."""
        return len(self._registered) - len(self._condemned)

    @property
    def starting(self) -> int:
        """Live and not yet said Hello."""
        return len(self._starting)
