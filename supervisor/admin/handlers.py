"""The admin API's endpoints (SPEC section 2): namespaces, scripts, tags (routes: routes_api).

Each handler takes a :class:`~supervisor.admin.router.Request` and answers a
rendered envelope; failures are raised as domain errors and mapped to HTTP in
:mod:`supervisor.admin.errors`. Store calls run in worker threads so a slow
disk never stalls the supervisor's event loop.
"""

from __future__ import annotations

import functools
import logging
import posixpath
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import msgspec
import trio

from supervisor.admin import multipart, vendored_packages
from supervisor.admin.assets import AssetSessions
from supervisor.admin.decode import MAX_METADATA_BYTES, MAX_TAG_FILTERS, clip, decode_json
from supervisor.admin.errors import ErrorCode, LoadFailed
from supervisor.admin.project import module_content_type
from supervisor.admin.render import METRICS_HEADERS, Response, envelope, namespace_json, script_json
from supervisor.admin.router import Request, Router
from supervisor.cron import CronError, check_crons, parse_cron
from supervisor.edge import asset_rules
from supervisor.errors import Conflict, Forbidden, Invalid, NotSupported, TooLarge
from supervisor.model import (
    PLATFORM,
    AssetConfig,
    AssetEntry,
    AssetSet,
    Binding,
    DispatchNamespace,
    DurableObjectNamespace,
    LoadCheck,
    ScriptRecord,
    SecretText,
    Service,
    UploadMetadata,
    VersionAnnotations,
    check_name,
    check_upload_name,
    check_variables,
    decode_metadata,
    module_path_ok,
    record_version,
    resolve_bindings,
    undecodable_module,
)
from supervisor.packages import upload as packages_upload
from supervisor.store.assets import AssetBlobs
from supervisor.store.cursors import TagFilter, parse_tag_filters
from supervisor.store.store import Store, namespace_not_found, script_not_found
from supervisor.time_spec import parse_time

log = logging.getLogger("corral.admin")
_T = TypeVar("_T")

#: The code Cloudflare's API answers a delete without ``?force=true`` of a
#: Worker others still use (a service binding's conflict).
SCRIPT_IN_USE_CODE = 10142
#: Room for the metadata part and multipart framing on top of the code itself.
UPLOAD_OVERHEAD = 1 * 2**20
#: Static assets travel as parts named ``__asset__/<path>``, on top of the code.
_NS = "accounts/*/workers/dispatch/namespaces"
_PS = "accounts/*/workers/scripts"


def log_event(level: int, event: str, **fields: Any) -> None:
    """One JSON line per event: ``supervisor.log.JsonFormatter`` renders ``fields``."""
    if log.isEnabledFor(level):
        log.log(level, event, extra={"fields": fields})


class AdminHooks(Protocol):
    """What the API needs from the rest of the supervisor."""

    async def validate(self, record: ScriptRecord) -> LoadCheck:
        """Load the script in a sandbox: the error text, or the handlers it defines."""
        ...

    def script_changed(self, namespace: str, name: str) -> None:
        """Called after a script was stored, deleted, or had its tags changed."""
        ...

    def metrics_text(self) -> str:
        """Prometheus text exposition for ``GET /metrics``."""
        ...

    async def usage(self, namespace: str | None, script: str | None, tag: str | None,
                    since: int, until: int) -> list[dict[str, Any]]:
        """Per-minute usage rows (supervisor.observability.usage)."""
        ...

    async def resolve_requirements(self, requirements: list[str]) -> Any:
        """The package store's lock for ``requirements`` (resolving with pip if new)."""
        ...

    async def run_scheduled(self, namespace: str, name: str, cron: str) -> dict:
        """Run the script's ``scheduled()`` once; its trace event."""
        ...

    async def purge_script_data(self, namespace: str, name: str) -> None:
        """Delete the data private to a deleted script (its Cache API entries,
        its Durable Objects); raises if some of it could not be deleted."""
        ...

    async def migrate_durable_objects(self, namespace: str, name: str, migrations: Any,
                                      bound_classes: frozenset[str]) -> None:
        """Apply an upload's Durable Object class migrations; raises Invalid if they cannot be."""
        ...

    async def purge_bound_data(self, kind: str, bound_id: str) -> None:
        """Delete the data every namespace keeps under a KV namespace's or D1
        database's id; raises if some of it could not be deleted."""
        ...

    async def d1_info(self, namespace: str, database_id: str) -> dict[str, int]:
        """A D1 database's ``file_size`` and ``num_tables`` in ``namespace``."""
        ...


def _namespace_of(request: Request) -> str:
    """PLATFORM for /workers/scripts/..., else the validated {ns}."""
    ns = request.params.get("ns")
    return PLATFORM if ns is None else check_name("namespace", ns)


def namespace_in_query(request: Request) -> str:
    """The dispatch namespace ``?namespace=`` names (storage is per namespace);
    PLATFORM without it."""
    namespace = request.query.get("namespace") or PLATFORM
    return check_name("namespace", namespace) if namespace else namespace


def deploy_source(request: Request) -> str:
    """Where a version or deployment came from, as Cloudflare's API shows it
    (``metadata.source``, a service's ``last_deployed_from``): ``wrangler``
    when its User-Agent says so, else ``api``. Wrangler asks for confirmation
    before it overwrites a script last deployed by other means."""
    return "wrangler" if request.headers.get("user-agent", "").startswith("wrangler/") else "api"


def _script_of(request: Request) -> str:
    return check_name("script", request.params["name"])


def _upload_name_of(request: Request) -> str:
    """The name of a script an upload makes: Cloudflare's rule and its code
    (10016) for a name that breaks it, however (a 64-character or a Unicode
    name failed the path's own check first, with 10400)."""
    return check_upload_name(request.params["name"])


def _flag(request: Request, key: str) -> bool:
    """A boolean query parameter (``?force=true``), as Cloudflare's API reads them."""
    value = request.query.get(key, "").strip().lower()
    if value in ("", "false", "0"):
        return False
    if value in ("true", "1"):
        return True
    raise Invalid(f"?{key}= must be true or false, got {clip(value)!r}")


def dependents(record: ScriptRecord, ns: str, name: str) -> list[str]:
    """How ``record`` (another deployed script) depends on script ``name`` of
    ``ns``, one line each, as ``wrangler delete`` lists them: a service
    binding to it, an outbound worker, a tail consumer, a binding to a Durable
    Object class it defines. A script's use of itself does not count."""
    if (record.namespace, record.name) == (ns, name):
        return []
    who = f"Worker {record.name!r}" + (f" of dispatch namespace {record.namespace!r}"
                                       if record.namespace != PLATFORM else "")
    found: list[str] = []
    for b in record.bindings:
        if ns == PLATFORM and isinstance(b, Service) and b.service == name:
            found.append(f"{who} uses it as a service binding ({b.name})")
        elif ns == PLATFORM and isinstance(b, DispatchNamespace) and b.outbound is not None \
                and b.outbound.worker is not None and b.outbound.worker.service == name:
            found.append(f"{who} uses it as the outbound worker of dispatch namespace {b.namespace!r} "
                         f"({b.name})")
        elif isinstance(b, DurableObjectNamespace) and b.script_name == name and record.namespace == ns:
            found.append(f"{who} has a binding to the Durable Object class {b.class_name!r} it implements "
                         f"({b.name})")
    if any(c.service == name and (c.namespace or PLATFORM) == ns for c in record.tail_consumers):
        found.append(f"{who} uses it as a tail worker")
    return found


def _tag_filters(request: Request) -> list[TagFilter]:
    """``?tags=`` parsed, at most MAX_TAG_FILTERS of them (each one is an SQL clause)."""
    filters = parse_tag_filters(request.query.get("tags", ""))
    if len(filters) > MAX_TAG_FILTERS:
        raise Invalid(f"?tags= has {len(filters)} filters, more than the {MAX_TAG_FILTERS} accepted")
    return filters


def _check_module_path(path: str) -> None:
    """Part names become import paths: relative, no '..', no surprises."""
    if not module_path_ok(path):
        raise Invalid(f"invalid module name {clip(path)!r}: use a relative path like 'worker.py' "
                      "or 'src/lib/util.py'")


class _LockResolver:
    """The hooks' resolver, as supervisor.packages.upload wants it."""

    def __init__(self, hooks: AdminHooks) -> None:
        self.hooks = hooks

    async def resolve(self, requirements: list[str]) -> Any:
        return await self.hooks.resolve_requirements(requirements)


#: The one module of the draft Worker wrangler makes to hold secrets before
#: a first deploy, and what Corral stores in its place.
WRANGLER_DRAFT = b"export default { fetch() {} }"
DRAFT_MAIN = "draft.py"
DRAFT_SOURCE = b"""from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("This Worker has no code yet: wrangler made it to hold its secrets.", status=503)
"""
#: Cloudflare's code for a secret edit while the latest version is not deployed.
LATEST_NOT_DEPLOYED_CODE = 10215
#: Cloudflare's code for a settings edit while the latest version is not deployed.
SETTINGS_LATEST_NOT_DEPLOYED_CODE = 10214
#: Cloudflare's code for a Durable Object binding to a class the script does not export.
CLASS_NOT_EXPORTED_CODE = 10061


def _check_own_classes(record: ScriptRecord, check: LoadCheck) -> None:
    """Refuse a Durable Object binding to a class of the script's own that its
    main module does not export, as Cloudflare refuses the upload (10061):
    every request to such an object failed instead."""
    for binding in record.bindings:
        if isinstance(binding, DurableObjectNamespace) and binding.script_name in (None, record.name) \
                and binding.class_name not in check.classes:
            shown = ", ".join(check.classes[:20]) or "none"
            raise Invalid(f"Cannot create binding for class {binding.class_name!r} that is not exported by the "
                          f"script (binding {binding.name!r}; its classes: {shown})", code=CLASS_NOT_EXPORTED_CODE)


def _secrets_replaced(before: ScriptRecord | None, after: ScriptRecord) -> list[str]:
    """A binding of the new version that takes the name of a secret of the
    last one: the secret is gone, which wrangler asks about first (its
    secrets-override check); said, not silent."""
    secrets = {b.name for b in before.bindings if isinstance(b, SecretText)} if before else set()
    return [f"binding {b.name!r} ({type(b).__struct_config__.tag}) replaces the secret of that name, which "
            "is no longer set" for b in after.bindings if b.name in secrets and not isinstance(b, SecretText)]


def _metadata_of(parts: list[multipart.Part]) -> dict[str, Any]:
    """An upload's ``metadata`` part, as JSON (wrangler's ``body_part`` read as ``main_module``)."""
    metadata_parts = [p for p in parts if p.name == "metadata"]
    if not metadata_parts:
        raise Invalid("the upload has no 'metadata' part (JSON with main_module, bindings, ...)")
    raw = decode_json(metadata_parts[0].data, "the 'metadata' part", MAX_METADATA_BYTES)
    if not isinstance(raw, dict):
        raise Invalid("the 'metadata' part must be a JSON object")
    if not raw.get("main_module") and isinstance(raw.get("body_part"), str):
        raw = {**raw, "main_module": raw["body_part"]}
    return raw


def _inherited_versions(raw: dict[str, Any]) -> list[str]:
    """The versions an upload's ``inherit`` bindings name by ``version_id``
    (read before the upload is built, which does not wait on the store)."""
    bindings = raw.get("bindings")
    return sorted({b["version_id"] for b in bindings if isinstance(b, dict) and b.get("type") == "inherit"
                   and isinstance(b.get("version_id"), str) and b["version_id"] != "latest"}
                  ) if isinstance(bindings, list) else []


def check_reach(record: ScriptRecord, namespaces: tuple[str, ...]) -> None:
    """Refuse a binding that reaches past the namespaces the caller's token
    is bound to (``namespaces``; empty: any): such a token reaches only
    paths inside them, and an upload's dispatch_namespace binding to another
    namespace would otherwise run, and read, the workers there. A service
    binding, a dispatch binding's outbound worker and a tail consumer name a
    platform script (outside every namespace): through them a tenant's
    worker ran the platform's internal services and read their answers, or
    was sent its own traces' neighbours."""
    if not namespaces:
        return
    bound = f"this API token is bound to namespace(s) {', '.join(namespaces)}"
    for binding in record.bindings:
        if isinstance(binding, DispatchNamespace) and binding.namespace not in namespaces:
            raise Forbidden(f"binding {binding.name!r} reaches dispatch namespace {binding.namespace!r}, and {bound}")
        if isinstance(binding, DispatchNamespace) and binding.outbound and binding.outbound.worker:
            # Its outbound worker is a platform script, run for every fetch of the namespace's workers.
            raise Forbidden(f"binding {binding.name!r} names the platform script "
                            f"{binding.outbound.worker.service!r} as its outbound worker, and {bound}")
        if isinstance(binding, Service):
            raise Forbidden(f"binding {binding.name!r} reaches the platform script {binding.service!r} (a service "
                            f"binding names a platform script), and {bound}")
    if record.tail_consumers:
        raise Forbidden(f"tail consumer {record.tail_consumers[0].service!r} is a platform script, and {bound}")


def check_own_tags(tags: Any, before: Any, namespaces: tuple[str, ...]) -> None:
    """Refuse a change of a script's tags by a token bound to namespaces:
    tags are the platform's (``plan:free``, its ``[limits.tag]``, usage and
    bulk deletes by tag), and a tenant tagging its own script ``plan:pro``
    gave itself that plan's limits."""
    if namespaces and sorted(tags or []) != sorted(before or []):
        raise Forbidden("a script's tags are the platform's (its plans' limits, usage, bulk deletes): a token "
                        f"bound to namespace(s) {', '.join(namespaces)} cannot change them")


def _own_bound_classes(record: ScriptRecord) -> frozenset[str]:
    """The classes of the script's own that its Durable Object bindings name."""
    return frozenset(b.class_name for b in record.bindings
                     if isinstance(b, DurableObjectNamespace) and b.script_name in (None, record.name))


def wants_code(accept: str) -> bool:
    """Whether an ``Accept`` header asks for a script's code (JavaScript or
    Python source, or the multipart of its modules) and not for JSON."""
    kinds = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    return "application/json" not in kinds and bool(
        kinds & {"application/javascript", "text/javascript", "multipart/form-data", "text/x-python"})


def code_response(record: ScriptRecord) -> Response:
    """The deployed code as multipart/form-data, one part per module, the
    main module first (as Cloudflare answers it; not a JSON envelope)."""
    order = [record.main_module, *sorted(p for p in record.modules if p != record.main_module)]
    parts = [multipart.Part(name=path, filename=path, data=record.modules[path],
                            content_type=module_content_type(path)) for path in order]
    content_type, body = multipart.encode(parts)
    return 200, [(b"content-type", content_type.encode()),
                 (b"cf-entrypoint", record.main_module.encode())], body


class Handlers:
    """Endpoints over one store; :meth:`register` puts them on a router."""

    def __init__(self, store: Store, hooks: AdminHooks, max_script_bytes: int,
                 blobs: AssetBlobs | None = None, sessions: AssetSessions | None = None) -> None:
        self.store = store
        self.hooks = hooks
        self.max_script_bytes = max_script_bytes
        self.blobs = blobs
        self.sessions = sessions if sessions is not None else AssetSessions()

    def register(self, router: Router) -> None:
        """The core endpoints (the other groups are registered by admin.api)."""
        router.add("metrics", GET=self.metrics)
        router.add("tail", GET=self.tail)
        router.add("accounts/*/workers/usage", GET=self.usage)
        router.add(_NS, GET=self.list_namespaces, POST=self.create_namespace)
        router.add(f"{_NS}/{{ns}}", GET=self.get_namespace, DELETE=self.delete_namespace)
        router.add(f"{_NS}/{{ns}}/scripts", GET=self.list_scripts, DELETE=self.bulk_delete)
        for prefix in (f"{_NS}/{{ns}}/scripts", _PS):
            router.add(f"{prefix}/{{name}}", PUT=self.put_script, GET=self.get_script,
                       DELETE=self.delete_script)
            router.add(f"{prefix}/{{name}}/tags", GET=self.get_tags, PUT=self.put_tags)
            router.add(f"{prefix}/{{name}}/tags/{{tag}}", PUT=self.add_tag, DELETE=self.remove_tag)
            router.add(f"{prefix}/{{name}}/schedules/trigger", POST=self.trigger_scheduled)
        router.add(_PS, GET=self.list_scripts)

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a store call in a worker thread (SQLite may touch the disk)."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args))

    def _changed(self, namespace: str, name: str) -> None:
        try:
            self.hooks.script_changed(namespace, name)
        except Exception:  # noqa: BLE001 - the write is done; report, don't fail it
            log_event(logging.ERROR, "admin.script_changed_hook_failed", namespace=namespace, script=name,
                      traceback=traceback.format_exc())

    async def every_script(self, namespace: str) -> list[ScriptRecord]:
        """Every deployed script of ``namespace``, without its code, by name."""
        records: list[ScriptRecord] = []
        cursor: str | None = None
        while True:
            page, cursor = await self._run(self.store.list_scripts, namespace, None, cursor, 1000)
            records += page
            if cursor is None:
                return records

    async def set_unversioned(self, namespace: str, name: str, **settings: Any) -> ScriptRecord:
        """Change a script's crons or queue consumers, which are the script's
        and not a version's on Cloudflare: no new version, and tell the pool."""
        record = await self._run(functools.partial(self.store.set_unversioned, namespace, name, **settings))
        self._changed(namespace, name)
        return record

    async def store_version(self, record: ScriptRecord, source: str) -> ScriptRecord:
        """Store and deploy ``record``, a new version made from the deployed
        one (a secret, settings, schedules), and tell the pool."""
        check_variables(record.bindings)
        stored = await self._run(functools.partial(self.store.put_script, record, source=source))
        self._changed(record.namespace, record.name)
        return stored

    async def _drop_assets(self, ns: str, names: list[str]) -> None:
        """Blobs of deleted scripts go after the commit (a crash in between
        leaves unreferenced files, never a manifest without its blobs)."""
        blobs = self.blobs
        if blobs is not None and names:
            await self._run(lambda: [blobs.drop_script(ns, n) for n in names])

    async def _purge_data(self, ns: str, names: list[str]) -> None:
        """The data private to deleted scripts goes after the delete was
        committed and the scripts retired, never before: a failure halfway
        leaves data of a script that no longer exists (logged, for the
        operator to delete), never a served script without its data."""
        purge = getattr(self.hooks, "purge_script_data", None)
        if purge is None:
            return
        for name in names:
            try:
                await purge(ns, name)
            except Exception:  # noqa: BLE001 - the delete is done; report, don't fail it
                log_event(logging.ERROR, "admin.script_data_purge_failed", namespace=ns, script=name,
                          hint="the script is deleted but some of its cache or Durable Object "
                               "storage is left on disk; a script given this name could read it",
                          traceback=traceback.format_exc())

    # -- metrics and tail -----------------------------------------------------

    async def metrics(self, request: Request) -> Response:
        return 200, list(METRICS_HEADERS), self.hooks.metrics_text().encode()

    async def tail(self, request: Request) -> Response:
        # The server streams GET /tail itself (supervisor.observability.live);
        # this sans-I/O API answers whole responses only.
        raise NotSupported("GET /tail is a stream: it is served on the supervisor's admin socket")

    async def usage(self, request: Request) -> Response:
        hook = getattr(self.hooks, "usage", None)
        if hook is None:
            raise NotSupported("usage is not available")
        q = request.query
        now = int(time.time())
        until = parse_time(q.get("until"), "until", now)
        since = parse_time(q.get("since"), "since", now - 86400)
        if since > until:
            raise Invalid("since must not be after until")
        namespace = check_name("namespace", q["namespace"]) if q.get("namespace") else None
        script = check_name("script", q["script"]) if q.get("script") else None
        tag = q.get("tag") or None
        if tag is not None and script is not None:
            raise Invalid("give script= or tag=, not both: rows are per script or per tag")
        rows = await hook(namespace, script, tag, since // 60 * 60, until)
        return envelope(200, rows, result_info={"count": len(rows), "since": since, "until": until})

    # -- namespaces -----------------------------------------------------------

    async def list_namespaces(self, request: Request) -> Response:
        infos = await self._run(self.store.list_namespaces)
        return envelope(200, [namespace_json(i) for i in infos])

    async def create_namespace(self, request: Request) -> Response:
        body = request.json()
        name = body.get("name") if isinstance(body, dict) else None
        if name is None and isinstance(body, dict):
            name = body.get("namespace_name")
        if name is None:
            raise Invalid('send {"name": "NAMESPACE"} to create a dispatch namespace')
        info = await self._run(self.store.create_namespace, name)
        log_event(logging.INFO, "admin.namespace_created", namespace=info.name)
        return envelope(200, namespace_json(info))

    async def get_namespace(self, request: Request) -> Response:
        ns = _namespace_of(request)
        info = await self._run(self.store.get_namespace, ns)
        if info is None:
            raise namespace_not_found(ns)
        return envelope(200, namespace_json(info))

    async def delete_namespace(self, request: Request) -> Response:
        ns = _namespace_of(request)
        names = await self._run(self.store.delete_namespace, ns)
        for name in names:
            self._changed(ns, name)
        await self._drop_assets(ns, names)
        await self._purge_data(ns, names)
        log_event(logging.INFO, "admin.namespace_deleted", namespace=ns, scripts=len(names))
        return envelope(200, {"name": ns, "scripts_deleted": len(names)})

    # -- scripts --------------------------------------------------------------

    async def list_scripts(self, request: Request) -> Response:
        ns = _namespace_of(request)
        filters = _tag_filters(request)
        raw_per_page = request.query.get("per_page", "100")
        try:
            per_page = int(raw_per_page)
        except ValueError:
            raise Invalid(f"per_page must be an integer, got {clip(raw_per_page)!r}") from None
        cursor = request.query.get("cursor") or None
        records, next_cursor = await self._run(self.store.list_scripts, ns, filters, cursor, per_page)
        return envelope(
            200,
            [script_json(r, with_modules=False) for r in records],
            result_info={"count": len(records), "per_page": per_page, "cursor": next_cursor or ""},
        )

    async def bulk_delete(self, request: Request) -> Response:
        ns = _namespace_of(request)
        filters = _tag_filters(request)
        if not filters:
            raise Invalid("bulk delete needs ?tags=TAG:yes|no[,...]; to delete the namespace, DELETE it")
        if not _flag(request, "force"):
            await self._refuse_if_in_use(ns, await self._run(self.store.names_by_tags, ns, filters))
        names = await self._run(self.store.delete_scripts_by_tags, ns, filters)
        for name in names:
            self._changed(ns, name)
        await self._drop_assets(ns, names)
        await self._purge_data(ns, names)
        log_event(logging.INFO, "admin.scripts_bulk_deleted", namespace=ns, count=len(names))
        return envelope(200, {"count": len(names)})

    async def deployed(self, request: Request) -> tuple[str, str, ScriptRecord]:
        """The namespace, name and deployed version of the script the path
        names, or a 404 naming it (for every group of script endpoints)."""
        ns, name = _namespace_of(request), _script_of(request)
        record = await self._run(self.store.get_primary, ns, name)
        if record is None:
            raise script_not_found(ns, name)
        return ns, name, record

    async def deployed_latest(self, request: Request) -> tuple[str, str, ScriptRecord]:
        """As :meth:`deployed`, for an edit that makes a new version of the
        deployed one and deploys it (a secret put or delete): refused, with
        Cloudflare's 10215, while a newer version is uploaded but not
        deployed. Made from the deployed version, the edit would deploy over
        the newer one, older code going live (``wrangler versions secret
        put`` is the edit for that case)."""
        ns, name, record = await self.deployed(request)
        await self.check_latest_deployed(ns, name, record, secrets=True)
        return ns, name, record

    async def check_latest_deployed(self, ns: str, name: str, record: ScriptRecord, *, secrets: bool) -> None:
        """Refuse an edit that makes a new version from the deployed ``record``
        while a newer one is uploaded and not deployed, in Cloudflare's words
        and code: 10215 for a secret, 10214 for settings."""
        latest = await self._run(self.store.latest_version_id, ns, name)
        if latest is None or not record.version_id or latest == record.version_id:
            return
        if secrets:
            raise Invalid("Secret edit failed. You attempted to modify a secret, but the latest version of your "
                          "Worker isn't currently deployed. Please ensure that the latest version of your Worker "
                          "is fully deployed (wrangler versions deploy) before modifying secrets, or use "
                          "wrangler versions secret put", code=LATEST_NOT_DEPLOYED_CODE)
        raise Invalid("You attempted to deploy the latest version with modified settings, but the latest version "
                      "isn't currently deployed. Please ensure that the latest version of your Worker is fully "
                      "deployed (wrangler versions deploy) before modifying settings",
                      code=SETTINGS_LATEST_NOT_DEPLOYED_CODE)

    async def get_script(self, request: Request) -> Response:
        """The script's metadata as JSON; its code, as Cloudflare's "Download
        Worker" answers, to a client that asks for code rather than JSON
        (the official SDK's ``scripts.get`` sends ``Accept: application/javascript``)."""
        _, _, record = await self.deployed(request)
        if wants_code(request.headers.get("accept", "")):
            return code_response(record)
        return envelope(200, script_json(record, with_modules=True, nested=True))

    async def delete_script(self, request: Request) -> Response:
        """Delete a script, unless other scripts still use it and the caller
        did not say ``?force=true``: Cloudflare refuses that delete too, and
        ``wrangler delete`` lists the dependents and asks before forcing it.
        A platform script's custom domains go with it, as a Custom Domain is
        the Worker's own (its routes stay: a route names a script, and serves
        it again when a script of that name is deployed)."""
        ns, name = _namespace_of(request), _script_of(request)
        force = _flag(request, "force")
        if not force:
            if await self._run(self.store.get_script, ns, name) is None:
                raise script_not_found(ns, name)  # a 404, whatever still names it
            await self._refuse_if_in_use(ns, [name])
        if not await self._run(self.store.delete_script, ns, name):
            raise script_not_found(ns, name)
        self._changed(ns, name)
        await self._drop_assets(ns, [name])
        await self._purge_data(ns, [name])
        log_event(logging.INFO, "admin.script_deleted", namespace=ns, script=name, force=force)
        return envelope(200, {"id": name})

    async def _refuse_if_in_use(self, ns: str, names: list[str]) -> None:
        """A 409 naming who would break if scripts ``names`` of ``ns`` went,
        unless only scripts deleted with them use them (a bulk delete by tag
        takes a Durable Object's host and its users together)."""
        going = set(names)
        others = [other for other in await self._run(self.store.scripts_naming_any, names)
                  if not (other.namespace == ns and other.name in going)]
        used: list[str] = []
        uses: list[str] = []
        for name in names:
            lines = [line for other in others for line in dependents(other, ns, name)]
            used += [name] if lines else []
            uses += lines
        if uses:
            shown = "; ".join(uses[:10]) + (f"; and {len(uses) - 10} more" if len(uses) > 10 else "")
            what = (f"script {used[0]!r} is" if len(used) == 1
                    else f"scripts {', '.join(map(repr, used[:10]))}{' and more' if len(used) > 10 else ''} are")
            raise Conflict(f"{what} in use by other Workers: {shown}. Deleting would break "
                           "them; delete with ?force=true to delete anyway", code=SCRIPT_IN_USE_CODE)

    async def put_script(self, request: Request) -> Response:
        ns, name = _namespace_of(request), _upload_name_of(request)
        warnings: list[str] = []
        stored = await self.upload(request, ns, name, deploy=True, warnings=warnings)
        result = script_json(stored, with_modules=True)
        if warnings:
            result["warnings"] = warnings
        return envelope(200, result)

    async def upload(self, request: Request, ns: str, name: str, *, deploy: bool,
                     code_only: bool = False, warnings: list[str] | None = None) -> ScriptRecord:
        """Decode, validate in a sandbox and store one upload as a new version
        (deployed at 100% when ``deploy``). ``code_only``: a content update,
        which keeps every setting of the deployed version. What the operator
        should know (e.g. an unmet requires-python) is added to ``warnings``."""
        check_upload_name(name)
        self._check_body_size(len(request.body), vendored_packages.MAX_VENDORED_BYTES)
        if ns != PLATFORM and await self._run(self.store.get_namespace, ns) is None:
            raise namespace_not_found(ns)
        try:
            parts = multipart.parse(request.headers.get("content-type", ""), request.body,
                                    max_part_bytes=self.max_script_bytes, max_parts=vendored_packages.MAX_UPLOAD_PARTS)
        except multipart.MultipartError:
            self._check_body_size(len(request.body))  # too big for code, with no python_modules to say otherwise
            raise
        # pywrangler's python_modules/ (Pyodide builds) become pins of native
        # builds from the package store; the files themselves are not kept.
        parts, vendored = vendored_packages.split(parts)
        # Cloudflare counts python_modules in a Worker's size, but Corral does
        # not store them: the script size limit is about what it keeps.
        self._check_body_size(len(request.body) - vendored.size)
        previous = await self._run(self.store.get_primary, ns, name)
        if code_only and previous is None:
            raise script_not_found(ns, name)
        # Packages first: validating the script imports it, with them.
        packages = await packages_upload.resolve_parts(parts, _LockResolver(self.hooks), vendored)
        if warnings is not None:
            warnings.extend(packages.warnings)
        # inherit and keep_bindings take the newest version's bindings, deployed or
        # not (wrangler versions secret put on top of an undeployed upload).
        latest = await self._run(self.store.get_latest, ns, name) if previous is not None else None
        raw = _metadata_of(parts)
        wanted = _inherited_versions(raw) if previous is not None else []
        versions = await self._run(self.store.versions_bindings, ns, name, wanted) if wanted else {}
        record, metadata = self._build_record(ns, name, raw, parts, previous, packages, code_only=code_only,
                                              bindings_from=latest or previous, versions=versions,
                                              strict=request.query.get("bindings_inherit") == "strict")
        check_variables(record.bindings)
        check_reach(record, request.namespaces)
        check_own_tags(record.tags, previous.tags if previous else [], request.namespaces)
        if warnings is not None:
            warnings.extend(_secrets_replaced(latest or previous, record))
        await self.check_services(record)
        await self.check_queue_consumers(record)
        if warnings is not None and record.assets is not None:
            config = record.assets.config  # lines Cloudflare would ignore, as Wrangler warns of them
            warnings.extend(asset_rules.parse(config.redirects, config.headers, config.html_handling).problems)
        check = await self.hooks.validate(record)
        if check.error is not None:
            raise LoadFailed(f"script {name!r} failed to load: {check.error}")
        _check_own_classes(record, check)
        record = msgspec.structs.replace(record, handlers=list(check.handlers))
        migrate = getattr(self.hooks, "migrate_durable_objects", None)
        if deploy and metadata.migrations and migrate is not None:
            # Before the version serves: its objects find their data under their new class.
            await migrate(ns, name, metadata.migrations, _own_bound_classes(record))
        stored = await self._run(functools.partial(self.store.put_script, record, deploy=deploy,
                                                    source=deploy_source(request)))
        if deploy:
            self._changed(ns, name)
        log_event(logging.INFO, "admin.script_uploaded", namespace=ns, script=name, version=stored.version,
                  version_id=stored.version_id, deployed=deploy,
                  assets=len(stored.assets.manifest) if stored.assets else 0)
        if vendored.present:
            log_event(logging.INFO, "admin.python_modules_replaced", namespace=ns, script=name,
                      version_id=stored.version_id, dropped_files=vendored.files, dropped_bytes=vendored.size,
                      pins=[p.requirement for p in vendored.pins], runtime=vendored.provided,
                      requirements=stored.requirements)
        return stored

    def _check_body_size(self, size: int, allowance: int = 0) -> None:
        """Refuse an upload body past the script size limit (plus framing, plus
        ``allowance``: room for python_modules, which are weighed apart)."""
        if size > self.max_script_bytes + UPLOAD_OVERHEAD + allowance:
            raise TooLarge(f"upload of {size} bytes exceeds the {self.max_script_bytes}-byte "
                           "script size limit")

    async def check_services(self, record: ScriptRecord) -> None:
        """Refuse a service binding to no platform script, as Cloudflare
        refuses it at upload (code 10143): a service binding reaches the
        account's scripts, never another user worker of the namespace, so one
        naming a sibling would only fail at run time ("Worker not found"). A
        platform script may bind itself (its own named entrypoints)."""
        for binding in record.bindings:
            if not isinstance(binding, Service):
                continue
            if record.namespace == PLATFORM and binding.service == record.name:
                continue
            if await self._run(self.store.get_script, PLATFORM, binding.service) is not None:
                continue
            sibling = await self._run(self.store.get_script, record.namespace, binding.service) is not None
            why = (f"{binding.service!r} is a user worker of dispatch namespace {record.namespace!r}, and a "
                   "service binding reaches the platform's scripts only (a platform script's "
                   "dispatch_namespace binding invokes user workers)") if sibling else \
                f"no platform script {binding.service!r} is deployed (deploy it first)"
            raise Invalid(f"could not resolve binding {binding.name!r}: script {binding.service!r} not found: "
                          f"{why}", code=ErrorCode.SERVICE_BINDING_ERROR)

    async def check_queue_consumers(self, record: ScriptRecord) -> None:
        """Refuse a consumer of a queue another script of the namespace
        consumes, as Cloudflare refuses it (``consumer_exists``, 11004): a
        queue has one consumer, and the upload would otherwise take the queue
        from the other script without a word (the queues API refuses it too)."""
        for consumer in record.queue_consumers:
            others = [n for n in await self._run(self.store.queue_consumers, record.namespace, consumer.queue)
                      if n != record.name]
            if others:
                raise Conflict(f"queue {consumer.queue!r} already has a consumer, script {others[0]!r}: a "
                               "queue has one consumer (remove it from that script first)",
                               code=ErrorCode.QUEUE_CONSUMER_EXISTS)

    def _build_record(self, ns: str, name: str, raw: dict[str, Any], parts: list[multipart.Part],
                      previous: ScriptRecord | None,
                      packages: packages_upload.Resolved | None = None, *,
                      code_only: bool = False, bindings_from: ScriptRecord | None = None,
                      versions: dict[str, list[Binding]] | None = None, strict: bool = True,
                      ) -> tuple[ScriptRecord, UploadMetadata]:
        """The version an upload makes (``raw``: its metadata part, as
        :func:`_metadata_of` reads it), and its metadata as decoded;
        ``versions`` and ``strict`` as :func:`resolve_bindings` takes them."""
        metadata: UploadMetadata = decode_metadata(raw)
        modules = self._modules(parts)
        if previous is None and modules == {metadata.main_module: WRANGLER_DRAFT}:
            # wrangler secret put/bulk on a Worker that does not exist yet
            # makes this draft first (its createDraftWorker), then puts the
            # secrets on it: a Python stand-in, which the first deploy replaces.
            modules = {DRAFT_MAIN: DRAFT_SOURCE}
            metadata = msgspec.structs.replace(metadata, main_module=DRAFT_MAIN)
        notes = metadata.annotations or VersionAnnotations()
        if code_only and previous is not None:
            updated = msgspec.structs.replace(previous, modules=modules,
                                              main_module=self._main_module(metadata, modules),
                                              version_tag=notes.tag or "", version_message=notes.message or "")
            if packages is not None and packages.declared:  # new code, new python_modules or requirements
                packages_upload.check_bundle_size(modules, packages.lock)
                updated = msgspec.structs.replace(updated, requirements=packages.requirements,
                                                  packages_lock=packages.lock_id)
            return msgspec.structs.replace(updated, version=record_version(updated)), metadata
        assets = self._assets(ns, name, metadata, raw, previous)
        main_module = self._main_module(metadata, modules)
        bindings = resolve_bindings(metadata, bindings_from or previous, strict=strict, versions=versions,
                                    keep_secrets=True)
        # No 'tags' key keeps the deployed tags (a code update should not untag);
        # an explicit list, even empty, replaces them.
        if metadata.tags is not None:
            tags = metadata.tags
        else:
            tags = list(previous.tags) if previous and "tags" not in raw else []
        # No 'crons' key keeps the deployed crons, as Cloudflare keeps a
        # script's schedules (PUT .../schedules) across uploads; `corral
        # deploy` always sends its project's, even none.
        if "crons" in raw:
            crons = check_crons(metadata.crons)
        else:
            crons = list(previous.crons) if previous else []
        # The same for queue consumers, which Cloudflare sets through its queues API
        # (supervisor.admin.queues_api); `corral deploy` sends its project's.
        if "queue_consumers" in raw:
            consumers = list(metadata.queue_consumers)
        else:
            consumers = list(previous.queue_consumers) if previous else []
        lock = packages.lock if packages is not None else None
        packages_upload.check_bundle_size(modules, lock)
        record = ScriptRecord(
            namespace=ns,
            name=name,
            version="",
            crons=crons,
            queue_consumers=consumers,
            main_module=main_module,
            modules=modules,
            bindings=bindings,
            tags=tags,
            compatibility_date=metadata.compatibility_date,
            compatibility_flags=metadata.compatibility_flags,
            tail_consumers=metadata.tail_consumers,
            assets=assets,
            requirements=packages.requirements if packages is not None else [],
            packages_lock=lock.id if lock else "",
            version_tag=notes.tag or "",
            version_message=notes.message or "",
            limits=metadata.limits,
        )
        return msgspec.structs.replace(record, version=record_version(record)), metadata

    @staticmethod
    def _main_module(metadata: UploadMetadata, modules: dict[str, bytes]) -> str:
        main_module = metadata.main_module
        if not main_module:
            raise Invalid(f"metadata needs 'main_module', one of: {', '.join(sorted(modules))}")
        if main_module not in modules:
            raise Invalid(f"main_module {clip(main_module)!r} is not among the uploaded parts: "
                          f"{', '.join(sorted(modules))}")
        if posixpath.splitext(main_module)[1] != ".py":
            raise Invalid(f"main_module {clip(main_module)!r} must be a .py file")
        return main_module

    def _assets(self, ns: str, name: str, metadata: UploadMetadata, raw: dict[str, Any],
                previous: ScriptRecord | None) -> AssetSet | None:
        """The version's assets: the manifest of the upload session named by
        ``metadata.assets.jwt``, else the deployed version's when
        ``keep_assets`` is true, else none; served as ``metadata.assets.config`` says."""
        config = metadata.assets.config if metadata.assets is not None else None
        if metadata.assets is not None and metadata.assets.jwt:
            manifest = self.sessions.complete(metadata.assets.jwt, ns, name)
            return AssetSet(config=config or AssetConfig(),
                            manifest={path: AssetEntry(e.hash, e.size) for path, e in manifest.items()})
        if raw.get("keep_assets") is True and previous is not None and previous.assets is not None:
            return AssetSet(config=config or previous.assets.config, manifest=previous.assets.manifest)
        return None

    def _modules(self, parts: list[multipart.Part]) -> dict[str, bytes]:
        """The code parts, by path. Cloudflare's SDKs name each part ``files``
        with the path as its filename; others name the part after the file."""
        modules: dict[str, bytes] = {}
        for part in parts:
            if part.name == "metadata" or packages_upload.is_requirement(part):
                continue
            path = vendored_packages.part_path(part)
            if path in modules:
                raise Invalid(f"the upload has two modules named {clip(path)!r}")
            _check_module_path(path)
            modules[path] = part.data
        if not modules:
            raise Invalid("the upload has no modules: add one part per file, named by its path")
        if (problem := undecodable_module(modules)) is not None:
            raise Invalid(f"module {problem}")
        total = sum(len(v) for v in modules.values())
        if total > self.max_script_bytes:
            raise TooLarge(f"script is {total} bytes, over the {self.max_script_bytes}-byte limit")
        return modules

    async def trigger_scheduled(self, request: Request) -> Response:
        ns, name = _namespace_of(request), _script_of(request)
        body = request.json() if request.body else {}
        cron = body.get("cron") if isinstance(body, dict) else None
        if not isinstance(cron, str) or not cron.strip():
            raise Invalid('send {"cron": "*/5 * * * *"} to run the script\'s scheduled() handler')
        try:
            parse_cron(cron)
        except CronError as exc:
            raise Invalid(str(exc)) from None
        trace = await self.hooks.run_scheduled(ns, name, cron)
        log_event(logging.INFO, "admin.scheduled_triggered", namespace=ns, script=name, cron=cron,
                  outcome=trace.get("outcome"))
        return envelope(200, trace)

    # -- tags -----------------------------------------------------------------

    async def get_tags(self, request: Request) -> Response:
        ns, name = _namespace_of(request), _script_of(request)
        return envelope(200, await self._run(self.store.get_tags, ns, name))

    async def put_tags(self, request: Request) -> Response:
        ns, name = _namespace_of(request), _script_of(request)
        # No body or ``null`` (the SDK's tags.update(body=None)) clears them.
        body = decode_json(request.body, "the tags") if request.body.strip() else None
        tags = body.get("tags") if isinstance(body, dict) else body
        tags = [] if tags is None else tags
        if not isinstance(tags, list):
            raise Invalid('send the tags as a JSON list, e.g. ["plan:free", "user:42"]')
        result = await self._run(self.store.put_tags, ns, name, tags)
        self._changed(ns, name)
        return envelope(200, result)

    async def add_tag(self, request: Request) -> Response:
        ns, name = _namespace_of(request), _script_of(request)
        result = await self._run(self.store.add_tag, ns, name, request.params["tag"])
        self._changed(ns, name)
        return envelope(200, result)

    async def remove_tag(self, request: Request) -> Response:
        ns, name = _namespace_of(request), _script_of(request)
        result = await self._run(self.store.remove_tag, ns, name, request.params["tag"])
        self._changed(ns, name)
        return envelope(200, result)
