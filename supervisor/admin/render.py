"""How the admin API's answers look: Cloudflare's envelope and result shapes."""

from __future__ import annotations

from typing import Any

import msgspec

from supervisor.admin.errors import ErrorCode
from supervisor.model import PLATFORM, ScriptRecord, public_binding
from supervisor.store.records import DeploymentInfo, NamespaceInfo, RouteInfo, VersionInfo

Response = tuple[int, list[tuple[bytes, bytes]], bytes]

JSON_HEADERS = [(b"content-type", b"application/json")]
METRICS_HEADERS = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]


def script_json(record: ScriptRecord, *, with_modules: bool, nested: bool = False) -> dict[str, Any]:
    """A script as Cloudflare's API shows it (``ScriptUpdateResponse``'s
    fields), plus Corral's own (``version``, ``modules``). ``nested`` adds the
    ``script`` object that a namespace script's GET has on Cloudflare."""
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
        "version_id": record.version_id,
        # Cloudflare's upload answer names the new version so (wrangler
        # prints it as the "Current Version ID").
        "deployment_id": record.version_id,
        "has_assets": bool(record.assets),
        "has_modules": True,
        "handlers": handlers_of(record),
        "usage_model": "standard",
        "startup_time_ms": 0,
    }
    if record.requirements:
        out["requirements"] = list(record.requirements)
    if with_modules:
        out["modules"] = [{"name": k, "size": len(v)} for k, v in sorted(record.modules.items())]
    if nested:
        out["script"] = {k: v for k, v in out.items() if k not in ("modules", "bindings", "dispatch_namespace")}
    return out


def handlers_of(record: ScriptRecord) -> list[str]:
    """Cloudflare's ``handlers``: the handlers the script's code defines
    (``["fetch"]`` for a record stored before Corral kept them)."""
    return list(record.handlers) or ["fetch"]


def settings_json(record: ScriptRecord) -> dict[str, Any]:
    """``GET .../settings``: the configuration of the deployed version."""
    return {
        "bindings": [public_binding(b) for b in record.bindings],
        "compatibility_date": record.compatibility_date,
        "compatibility_flags": list(record.compatibility_flags),
        "tags": list(record.tags),
        "tail_consumers": msgspec.to_builtins(record.tail_consumers),
        "usage_model": "standard",
        "logpush": False,
        **({"limits": msgspec.to_builtins(record.limits)} if record.limits is not None else {}),
    }


#: The values of a version's ``metadata.source`` in Cloudflare's API (and its SDKs' models).
VERSION_SOURCES = frozenset({"unknown", "api", "wrangler", "terraform", "dash", "cf_cli", "dash_template",
                             "integration", "quick_editor", "playground", "workersci"})


def version_source(info: VersionInfo) -> str:
    """``metadata.source``: who made the version, one of Cloudflare's values.
    A version Corral made from the deployed one (a secret put, a settings
    edit, its schedules or queue consumers) came through the API; what made
    it is its ``workers/triggered_by`` annotation, as on Cloudflare."""
    return info.source if info.source in VERSION_SOURCES else "api"


def version_annotations(info: VersionInfo) -> dict[str, str]:
    """A version's ``annotations``: the change Corral made it for
    (``workers/triggered_by``: ``secret``, ``settings``...) when not an
    upload, and its tag and message, when it has them."""
    out = {} if info.source in VERSION_SOURCES else {"workers/triggered_by": info.source}
    if info.tag:
        out["workers/tag"] = info.tag
    if info.message:
        out["workers/message"] = info.message
    return out


def version_json(info: VersionInfo, record: ScriptRecord | None = None) -> dict[str, Any]:
    """A version as Cloudflare's versions API shows it."""
    out: dict[str, Any] = {
        "id": info.id,
        "number": info.number,
        "metadata": {"created_on": info.created_on, "modified_on": info.created_on, "source": version_source(info),
                     "author_email": "", "hasPreview": False},  # Cloudflare's spelling
        "annotations": version_annotations(info),
        "etag": info.content,
        "has_assets": info.has_assets,
    }
    if record is not None:
        out["resources"] = {
            "bindings": [public_binding(b) for b in record.bindings],
            "script": {"etag": record.version, "handlers": handlers_of(record),
                       "main_module": record.main_module},
            "script_runtime": {"compatibility_date": record.compatibility_date,
                               "compatibility_flags": list(record.compatibility_flags),
                               "usage_model": "standard"},
        }
    return out


def deployment_json(info: DeploymentInfo) -> dict[str, Any]:
    """A deployment as Cloudflare's API shows it: as a version's, its ``source``
    is one of Cloudflare's values and the change Corral made it for (a secret,
    settings...) its ``workers/triggered_by`` annotation (wrangler shows a
    secret's as "Secret Change", an unknown source as "Other (...)")."""
    annotations = {} if info.source in VERSION_SOURCES else {"workers/triggered_by": info.source}
    if info.message:
        annotations["workers/message"] = info.message
    return {
        "id": info.id,
        "created_on": info.created_on,
        "source": info.source if info.source in VERSION_SOURCES else "api",
        "strategy": "percentage",
        "versions": [{"version_id": s.version_id, "percentage": s.percentage} for s in info.versions],
        "annotations": annotations,
        "author_email": "",
    }


def namespace_json(info: NamespaceInfo) -> dict[str, Any]:
    return {
        "namespace_id": info.id,
        "namespace_name": info.name,
        "name": info.name,
        "created_on": info.created_on,
        # A namespace has nothing to change after it is made.
        "modified_on": info.created_on,
        "script_count": info.script_count,
        # Cloudflare's trusted namespaces see request.cf; Corral's tenants never do.
        "trusted_workers": False,
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


def transport_error(status: int, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The envelope of an error the HTTP layer answers before the API sees the
    request (a malformed request, a body past the socket's limit): SPEC
    section 2 has every answer of the admin API in it."""
    code = ErrorCode.TOO_LARGE if status == 413 else 10000 + status  # as admin.errors numbers them
    _, headers, body = envelope(status, errors=[{"code": code, "message": message}])
    return headers, body
