"""How the admin API's answers look: Cloudflare's envelope and result shapes."""

from __future__ import annotations

from typing import Any

import msgspec

from supervisor.model import PLATFORM, ScriptRecord, public_binding
from supervisor.store.records import NamespaceInfo, RouteInfo

Response = tuple[int, list[tuple[bytes, bytes]], bytes]

JSON_HEADERS = [(b"content-type", b"application/json")]
METRICS_HEADERS = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]


def script_json(record: ScriptRecord, *, with_modules: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": record.name,
        "name": record.name,
        "dispatch_namespace": record.namespace if record.namespace != PLATFORM else None,
        "etag": record.version,
        "version": record.version,
        "main_module": record.main_module,
        "bindings": [public_binding(b) for b in record.bindings],
        "tags": list(record.tags),
        "tail_consumers": msgspec.to_builtins(record.tail_consumers),
        "compatibility_date": record.compatibility_date,
        "compatibility_flags": list(record.compatibility_flags),
        "created_on": record.created_on,
        "modified_on": record.modified_on,
    }
    if record.requirements:
        out["requirements"] = list(record.requirements)
    if with_modules:
        out["modules"] = [{"name": k, "size": len(v)} for k, v in sorted(record.modules.items())]
    return out


def namespace_json(info: NamespaceInfo) -> dict[str, Any]:
    return {
        "namespace_id": info.id,
        "namespace_name": info.name,
        "name": info.name,
        "created_on": info.created_on,
        "script_count": info.script_count,
    }


def route_json(info: RouteInfo) -> dict[str, Any]:
    return {"id": info.id, "pattern": info.pattern, "script": info.script}


def envelope(status: int, result: Any = None, *, errors: list[dict[str, Any]] | None = None,
             result_info: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {
        "success": not errors,
        "errors": errors or [],
        "messages": [],
        "result": result,
    }
    if result_info is not None:
        body["result_info"] = result_info
    return status, list(JSON_HEADERS), msgspec.json.encode(body)
