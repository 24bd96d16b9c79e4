"""Which limits an invocation runs under.

The platform sets defaults and ceilings (``[limits]``), may set defaults per
dispatch namespace (``[limits.namespace.NAME]``) and per script tag
(``[limits.tag."plan:free"]``), and the dispatcher may set limits per call
(``options["limits"]``). For each limit, the first of these that says
something wins:

1. the dispatcher's value for this call;
2. the most restrictive value among the script's tags;
3. its namespace's value;
4. the platform default;

and the result never exceeds the platform's own value, so neither a tag nor
a dispatcher can grant more than the platform allows. A script's own limits
(its upload's ``limits``: ``cpu_ms``, ``subrequests``) only lower the result.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.messages import Limits
from supervisor.config import LimitsConfig
from supervisor.model import ScriptLimits, ScriptRecord

_FIELDS = ("cpu_ms", "sub_requests", "wall_ms", "memory_mb")


def _given(value: Any) -> bool:
    return value is not None and value > 0


class LimitPolicy:
    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
        self.platform = Limits(cpu_ms=config.cpu_ms, sub_requests=config.sub_requests,
                               wall_ms=config.wall_ms, memory_mb=config.memory_mb)
        self._defaults: dict[tuple[str, tuple[str, ...]], Limits] = {}

    def defaults_for(self, record: ScriptRecord) -> Limits:
        """Tag, then namespace, then platform defaults (cached per namespace
        and tags), under the script's own limits."""
        key = (record.namespace, tuple(record.tags))
        cached = self._defaults.get(key)
        if cached is None:
            cached = self._defaults[key] = self._tiered(record)
        return cached if record.limits is None else _own(cached, record.limits)

    def _tiered(self, record: ScriptRecord) -> Limits:
        namespace = self.config.namespace.get(record.namespace)
        tags = [self.config.tag[t] for t in record.tags if t in self.config.tag]
        values = {}
        for field in _FIELDS:
            tagged = [getattr(t, field) for t in tags if _given(getattr(t, field))]
            if tagged:
                value = min(tagged)
            elif namespace is not None and _given(getattr(namespace, field)):
                value = getattr(namespace, field)
            else:
                value = getattr(self.platform, field)
            values[field] = min(value, getattr(self.platform, field))
        return Limits(**values)

    def for_call(self, record: ScriptRecord, requested: Limits | None) -> Limits:
        """The limits of one invocation of ``record``, with the dispatcher's request."""
        defaults = self.defaults_for(record)
        if requested is None:
            return defaults
        values = {}
        for field in _FIELDS:
            value = getattr(requested, field)
            ceiling = getattr(self.platform, field)
            values[field] = min(value, ceiling) if _given(value) else getattr(defaults, field)
        limits = Limits(**values)
        return limits if record.limits is None else _own(limits, record.limits)


def _own(limits: Limits, own: ScriptLimits) -> Limits:
    """``limits`` lowered to the script's own, where it sets one."""
    cpu, subrequests = limits.cpu_ms, limits.sub_requests
    if own.cpu_ms is not None:
        cpu = own.cpu_ms if cpu is None or cpu <= 0 else min(cpu, own.cpu_ms)
    if own.subrequests is not None:
        subrequests = own.subrequests if subrequests is None or subrequests <= 0 else min(subrequests, own.subrequests)
    return msgspec.structs.replace(limits, cpu_ms=cpu, sub_requests=subrequests)
