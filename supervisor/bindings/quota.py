"""Which storage caps apply to a script: platform, namespace, tag, script.

Caps protect the host from one tenant, so where several apply the tightest
wins (a ``plan:free`` tag cannot be escaped by a generous namespace default).
The cap is the calling script's, checked against the data it writes to: a
KV namespace shared by two scripts of one namespace is held to each writer's
own cap.
"""

from __future__ import annotations

from supervisor.config import QuotaConfig, QuotaLimits
from supervisor.model import ScriptRecord

FIELDS = tuple(QuotaLimits.__struct_fields__)


def quota_for(config: QuotaConfig, record: ScriptRecord) -> QuotaLimits:
    """The caps in force for ``record``'s binding calls."""
    layers: list[QuotaLimits] = [config]
    if record.namespace in config.namespace:
        layers.append(config.namespace[record.namespace])
    layers.extend(config.tag[tag] for tag in record.tags if tag in config.tag)
    name = f"{record.namespace}/{record.name}" if record.namespace else record.name
    if name in config.script:
        layers.append(config.script[name])
    values: dict[str, int] = {}
    for field in FIELDS:
        caps = [getattr(layer, field) for layer in layers if getattr(layer, field) is not None]
        if caps:
            values[field] = min(caps)
    return QuotaLimits(**values)


def quota_error(what: str, used: int, cap: int, field: str) -> str:
    """The tenant's words for a cap reached (the operator's knob is named)."""
    return (f"{what}: storage quota exceeded ({used} of {cap} allowed; "
            f"the platform's storage.quota {field})")


__all__ = ["FIELDS", "quota_error", "quota_for"]
