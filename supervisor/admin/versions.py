"""Versions and deployments, as Cloudflare's Workers versions API has them.

Every upload is a new immutable version. ``POST .../versions`` uploads one
without deploying it; ``POST .../deployments`` sends traffic to one version
(100%) or splits it between two (a gradual deployment); a rollback is a
deployment of an older version. Both exist for platform scripts (as on
Cloudflare) and for a namespace's scripts (Corral's extension, same shapes).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from supervisor.admin.decode import clip, query_int
from supervisor.admin.handlers import (
    _NS,
    _PS,
    Handlers,
    _flag,
    _namespace_of,
    _script_of,
    _upload_name_of,
    deploy_source,
    log_event,
)
from supervisor.admin.render import Response, deployment_json, envelope, script_json, version_json
from supervisor.admin.router import Request, Router
from supervisor.errors import Conflict, Invalid, NotFound
from supervisor.model import SecretText, public_binding
from supervisor.store.records import Split


def parse_splits(body: Any) -> tuple[list[Split], str]:
    """``{"strategy": "percentage", "versions": [{"version_id", "percentage"}],
    "annotations": {"workers/message": ...}}`` as splits and a message."""
    if not isinstance(body, dict) or not isinstance(body.get("versions"), list) or not body["versions"]:
        raise Invalid('send {"strategy": "percentage", "versions": [{"version_id": "...", "percentage": 100}]}')
    strategy = body.get("strategy", "percentage")
    if strategy != "percentage":
        raise Invalid(f"deployment strategy {clip(str(strategy))!r} is not supported: use 'percentage'")
    splits = []
    for item in body["versions"]:
        if not isinstance(item, dict) or not isinstance(item.get("version_id"), str) \
                or isinstance(item.get("percentage"), bool) or not isinstance(item.get("percentage"), (int, float)):
            raise Invalid("each deployed version needs a version_id (string) and a percentage (number)")
        splits.append(Split(version_id=item["version_id"], percentage=float(item["percentage"])))
    annotations = body.get("annotations") or {}
    message = annotations.get("workers/message", "") if isinstance(annotations, dict) else ""
    if not isinstance(message, str) or len(message) > 1000:
        raise Invalid("annotations['workers/message'] must be a string of at most 1000 characters")
    return splits, message


class VersionHandlers:
    def __init__(self, core: Handlers) -> None:
        self.core = core
        self.store = core.store

    def register(self, router: Router) -> None:
        for prefix in (f"{_NS}/{{ns}}/scripts", _PS):
            router.add(f"{prefix}/{{name}}/versions", GET=self.list_versions, POST=self.create_version)
            router.add(f"{prefix}/{{name}}/versions/{{version}}", GET=self.get_version)
            router.add(f"{prefix}/{{name}}/deployments", GET=self.list_deployments, POST=self.create_deployment)
            router.add(f"{prefix}/{{name}}/deployments/{{deployment}}", GET=self.get_deployment,
                       DELETE=self.delete_deployment)

    async def list_versions(self, request: Request) -> Response:
        ns, name = _namespace_of(request), _script_of(request)
        page = query_int(request.query, "page", 1, 1_000_000)
        per_page = query_int(request.query, "per_page", 100, 1000)
        infos, total = await self.core._run(self.store.list_versions, ns, name, page, per_page)
        # Each item's bindings too, as Cloudflare lists them (wrangler's
        # `versions secret list --latest-version` reads items[0].resources.bindings).
        bindings = await self.core._run(self.store.versions_bindings, ns, name, [i.id for i in infos])
        items = [{**version_json(i), "resources": {"bindings": [public_binding(b) for b in bindings.get(i.id, [])]}}
                 for i in infos]
        return envelope(200, {"items": items},
                        result_info={"page": page, "per_page": per_page, "count": len(infos),
                                     "total_count": total})

    async def get_version(self, request: Request) -> Response:
        ns, name = _namespace_of(request), _script_of(request)
        version_id = request.params["version"]
        record = await self.core._run(self.store.get_version_record, ns, name, version_id)
        info = await self.core._run(self.store.version_info, ns, name, version_id)
        return envelope(200, version_json(info, record))

    async def create_version(self, request: Request) -> Response:
        """Upload a version without deploying it (``versions.create``)."""
        ns, name = _namespace_of(request), _upload_name_of(request)
        stored = await self.core.upload(request, ns, name, deploy=False)
        info = await self.core._run(self.store.version_info, ns, name, stored.version_id)
        result = version_json(info, stored)
        result["startup_time_ms"] = 0
        return envelope(200, result)

    async def list_deployments(self, request: Request) -> Response:
        ns, name = _namespace_of(request), _script_of(request)
        page = query_int(request.query, "page", 1, 1_000_000)
        infos = await self.core._run(self.store.list_deployments, ns, name) if page == 1 else []
        shown = [deployment_json(i) for i in infos]
        # Cloudflare answers {"deployments": [...]}; the SDK pages over "items".
        return envelope(200, {"deployments": shown, "items": [{"deployments": shown}] if shown else []},
                        result_info={"page": page, "per_page": len(shown), "count": len(shown)})

    async def get_deployment(self, request: Request) -> Response:
        ns, name = _namespace_of(request), _script_of(request)
        for info in await self.core._run(self.store.list_deployments, ns, name, 10_000):
            if info.id == request.params["deployment"]:
                return envelope(200, deployment_json(info))
        raise NotFound(f"script {name!r} has no deployment {clip(request.params['deployment'])!r}")

    async def delete_deployment(self, request: Request) -> Response:
        """``deployments.delete``: a past deployment leaves the history; the
        latest (what serves) cannot, as on Cloudflare."""
        ns, name = _namespace_of(request), _script_of(request)
        deployment = request.params["deployment"]
        await self.core._run(self.store.delete_deployment, ns, name, deployment)
        log_event(logging.INFO, "admin.deployment_deleted", namespace=ns, script=name, deployment=deployment)
        return envelope(200, None)

    async def create_deployment(self, request: Request) -> Response:
        ns, name = _namespace_of(request), _script_of(request)
        splits, message = parse_splits(request.json())
        if not _flag(request, "force"):
            await self.core._run(_check_rollback_secrets, self.store, ns, name, splits)
        info = await self.core._run(functools.partial(self.store.deploy, ns, name, splits, message=message,
                                                              source=deploy_source(request)))
        self.core._changed(ns, name)
        log_event(logging.INFO, "admin.deployed", namespace=ns, script=name,
                  versions=[[s.version_id, s.percentage] for s in splits])
        return envelope(200, deployment_json(info))


#: Cloudflare's code for a rollback to a version whose secrets differ from the deployed one's.
ROLLBACK_SECRETS_CODE = 10220


def _check_rollback_secrets(store: Any, ns: str, name: str, splits: list[Split]) -> None:
    """Refuse, unless ``?force=true``, a deployment of a version older than the
    deployed one whose secrets differ from its (wrangler rollback then names
    them and asks before it forces): a rollback silently dropped a secret
    set since, or brought an old value back. Blocking."""
    deployed = store.get_primary(ns, name)
    if deployed is None:
        return
    current = {b.name: b.text for b in deployed.bindings if isinstance(b, SecretText)}
    number = store.version_info(ns, name, deployed.version_id).number if deployed.version_id else None
    for split in splits:
        try:
            info = store.version_info(ns, name, split.version_id)
        except NotFound:
            continue  # the deployment itself says so, with its other checks
        if number is None or info.number >= number:
            continue  # not a rollback: a newer version brings its secrets as uploaded
        target = store.get_version_record(ns, name, split.version_id)
        theirs = {b.name: b.text for b in target.bindings if isinstance(b, SecretText)}
        changed = sorted(k for k in current.keys() | theirs.keys() if current.get(k) != theirs.get(k))
        if changed:
            raise Conflict(f"A rollback to version {split.version_id} would change the Worker's secrets, which "
                           "changed since it was deployed; deploy with force (?force=true; `corral rollback "
                           f"--force`) to roll back anyway. The following secrets have changed: "
                           f"{', '.join(changed)}", code=ROLLBACK_SECRETS_CODE)


__all__ = ["VersionHandlers", "parse_splits", "script_json"]
