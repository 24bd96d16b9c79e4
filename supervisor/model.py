"""What a deployed script is, as the request path sees it.

The store persists :class:`ScriptRecord`; the pool turns one into the
:class:`protocol.messages.ScriptBundle` a child loads. ``version`` is a content
hash that changes on every deploy: warm children are keyed by it, which is
what makes a deploy atomic (the next request runs the new version while
in-flight requests finish on the old child).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from protocol import messages

#: Namespace name under which platform scripts (dispatcher, outbound, tail) live.
PLATFORM = ""


class ScriptRecord(msgspec.Struct, kw_only=True):
    namespace: str  # PLATFORM ("") for platform scripts
    name: str
    version: str
    main_module: str
    modules: dict[str, bytes]
    bindings: list[dict[str, Any]] = []
    tags: list[str] = []
    compatibility_date: str = ""
    tail_consumers: list[dict[str, Any]] = []
    created_on: str = ""
    modified_on: str = ""


def content_version(main_module: str, modules: dict[str, bytes], metadata: dict[str, Any]) -> str:
    """A stable hash of everything that changes behaviour (code and bindings)."""
    digest = hashlib.sha256()
    digest.update(main_module.encode())
    for path in sorted(modules):
        digest.update(b"\0" + path.encode() + b"\0")
        digest.update(modules[path])
    digest.update(msgspec.json.encode({k: metadata.get(k) for k in ("bindings", "compatibility_date")}))
    return digest.hexdigest()[:32]


def to_bundle(record: ScriptRecord, bundle_dir: str,
              package_dirs: list[str] | None = None) -> messages.ScriptBundle:
    """The child's view of a script: where its files are, plus the bindings a child can hold.

    ``bundle_dir`` holds the record's modules as files (supervisor.pool.bundles).

    Secrets become text bindings only inside the script's own child; the
    outbound configuration of a dispatch-namespace binding stays in the
    supervisor (the child only needs the namespace to name its calls).
    """
    bindings: list[messages.Binding] = []
    for raw in record.bindings:
        kind = raw.get("type")
        name = raw.get("name", "")
        if kind in ("plain_text", "secret_text"):
            bindings.append(messages.TextBinding(name, str(raw.get("text", ""))))
        elif kind == "json":
            bindings.append(messages.JsonBinding(name, raw.get("json")))
        elif kind == "dispatch_namespace":
            bindings.append(messages.DispatchNamespaceBinding(name, raw.get("namespace", "")))
        elif kind == "service":
            bindings.append(messages.ServiceBinding(name, raw.get("service", "")))
        elif kind == "param":
            bindings.append(messages.ParamBinding(name))
    return messages.ScriptBundle(
        namespace=record.namespace,
        name=record.name,
        version=record.version,
        main_module=record.main_module,
        bundle=bundle_dir,
        bindings=bindings,
        compatibility_date=record.compatibility_date,
        package_dirs=list(package_dirs or []),
    )
