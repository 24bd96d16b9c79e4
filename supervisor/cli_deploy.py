"""What ``corral deploy`` adds to a plain upload: ``--dry-run`` (what would
change, compared with what is deployed) and the project's static assets,
uploaded as Cloudflare's API takes them (a session, the missing files only,
a completion token in the script's metadata)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from supervisor import model
from supervisor.admin import multipart
from supervisor.cli_client import ACCOUNT, AdminClient, ApiCallError, _scripts_path
from supervisor.cli_output import progress


def _get(client: AdminClient, path: str) -> Any:
    try:
        return client.call("GET", path)[0]
    except ApiCallError as exc:
        if "not found" in str(exc):
            return None
        raise


def _deployed_modules(client: AdminClient, base: str) -> dict[str, bytes]:
    """The deployed code, from GET .../content (multipart, not JSON)."""
    from supervisor.cli_client import UnixHTTPConnection

    conn = UnixHTTPConnection(client.socket_path)
    try:
        conn.request("GET", f"{base}/content")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return {}
        parts = multipart.parse(response.getheader("content-type", ""), body, max_part_bytes=len(body) + 1)
    finally:
        conn.close()
    return {p.filename or p.name: p.data for p in parts}


def plan(client: AdminClient, namespace: str | None, name: str, main_module: str, modules: dict[str, bytes],
         metadata: model.UploadMetadata) -> list[str]:
    """Lines saying what a deploy would change; secrets by name only."""
    base = _scripts_path(namespace, name)
    settings = _get(client, f"{base}/settings")
    if settings is None:
        lines = [f"+ new script {name}: {len(modules)} module(s), main {main_module}"]
        lines += [f"+ binding {b.name} ({type(b).__struct_config__.tag})" for b in metadata.bindings]
        lines += [f"+ tag {t}" for t in metadata.tags or []]
        return lines
    lines: list[str] = []
    old = _deployed_modules(client, base)
    for path in sorted(set(old) | set(modules)):
        if path not in old:
            lines.append(f"+ module {path} ({len(modules[path])} bytes)")
        elif path not in modules:
            lines.append(f"- module {path}")
        elif old[path] != modules[path]:
            lines.append(f"~ module {path} ({len(old[path])} -> {len(modules[path])} bytes)")
    old_bindings = {b["name"]: b for b in settings.get("bindings") or []}
    new_bindings = {b.name: model.public_binding(b) for b in metadata.bindings}
    kept = set(metadata.keep_bindings)
    for key in sorted(set(old_bindings) | set(new_bindings)):
        if key not in new_bindings:
            if old_bindings[key]["type"] not in kept:
                lines.append(f"- binding {key} ({old_bindings[key]['type']})")
        elif key not in old_bindings:
            lines.append(f"+ binding {key} ({new_bindings[key]['type']})")
        elif new_bindings[key]["type"] == "secret_text" or json.dumps(old_bindings[key], sort_keys=True) != \
                json.dumps(new_bindings[key], sort_keys=True):
            lines.append(f"~ binding {key} ({new_bindings[key]['type']})")
    if metadata.tags is not None and list(metadata.tags) != list(settings.get("tags") or []):
        old_tags = ','.join(settings.get('tags') or []) or '(none)'
        lines.append(f"~ tags {old_tags} -> {','.join(metadata.tags) or '(none)'}")
    if metadata.compatibility_date and metadata.compatibility_date != settings.get("compatibility_date"):
        lines.append(f"~ compatibility_date {settings.get('compatibility_date') or '(none)'} -> "
                     f"{metadata.compatibility_date}")
    return lines or ["no changes: the deployed version has this code and configuration"]


def asset_hash(path: str, data: bytes) -> str:
    """Wrangler's manifest hash: sha256 of the base64 content and the extension, 32 hex digits."""
    extension = path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ""
    return hashlib.sha256(base64.b64encode(data) + extension.encode()).hexdigest()[:32]


def upload_assets(client: AdminClient, namespace: str | None, name: str, files: dict[str, bytes],
                  show_progress: bool) -> tuple[str, int, int]:
    """Upload what the store lacks of ``files`` (``{"/path": bytes}``);
    ``(completion token, files, uploaded)``."""
    manifest = {path: {"hash": asset_hash(path, data), "size": len(data)} for path, data in files.items()}
    session = client.json("POST", f"{_scripts_path(namespace, name)}/assets-upload-session", {"manifest": manifest})
    buckets = session.get("buckets") or []
    token = session["jwt"]
    if not buckets:
        return token, len(files), 0
    by_hash = {manifest[p]["hash"]: data for p, data in files.items()}
    missing = sum(len(b) for b in buckets)
    with progress(f"uploading {missing} asset(s)", missing, enabled=show_progress) as advance:
        for bucket in buckets:
            parts = [multipart.Part(name=h, data=base64.b64encode(by_hash[h]), filename=h) for h in bucket]
            content_type, body = multipart.encode(parts)
            result, _ = client.call("POST", f"/accounts/{ACCOUNT}/workers/assets/upload?base64=true", body,
                                    content_type, headers={"authorization": f"Bearer {session['jwt']}"})
            token = (result or {}).get("jwt") or token
            advance(len(bucket))
    return token, len(files), missing
