"""The account around the scripts, as far as Cloudflare's tools ask about it.

Wrangler and other clients of Cloudflare's API ask who is calling and what
the account has before they deploy: ``/user/tokens/verify``, ``/user``,
``/memberships``, ``/accounts``, the account's workers.dev subdomain, a
script's ``workers/services/{name}`` view and its workers.dev route, and a
search of its scripts by name (``workers/scripts-search``). Corral
has one account (its label is free, but for the token check) and tokens
owned by it, so each answer is the one Cloudflare gives an *account-owned*
API token: the token is verified at ``/accounts/local/tokens/verify`` (another
account's id there is refused, 9109); user endpoints refuse it (code
1000 for the user token check, 9109 for user data), as Cloudflare does.
Corral serves scripts on its own routes, never on workers.dev: the
subdomain is answered as not registered (10007), and a script's workers.dev
route as disabled, which it stays. The account's Workers settings
(``workers/account-settings``) are Corral's one usage model.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from supervisor.admin.decode import body_as, clip, decode_json, page_of
from supervisor.admin.handlers import _NS, _PS, Handlers, log_event
from supervisor.admin.render import Response, envelope, handlers_of
from supervisor.admin.router import Request, Router
from supervisor.admin.script_config import NO_LOGPUSH, with_changes
from supervisor.errors import CorralError, Forbidden, Invalid, NotFound, NotSupported, Unauthorized
from supervisor.model import (
    PLATFORM,
    DispatchNamespace,
    DurableObjectNamespace,
    ScriptRecord,
    Service,
    check_name,
    decode_metadata,
)
from supervisor.store.store import normalize_tags

#: What Cloudflare answers an account-owned token on the user token check
#: (clients such as wrangler read the code as "this is an account token").
INVALID_USER_TOKEN = 1000
#: Cloudflare's "Unauthorized to access requested resource".
UNAUTHORIZED_RESOURCE = 9109
#: Cloudflare's code for a missing script, and for a missing workers.dev subdomain.
NOT_FOUND = 10007

#: The account Corral lists (any label reaches the same scripts).
ACCOUNT_ID = "local"


class Subdomain(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``POST .../scripts/{name}/subdomain``: Cloudflare's body."""

    enabled: bool | None = None
    previews_enabled: bool | None = None


class AccountSettings(msgspec.Struct, kw_only=True):
    """``PUT /workers/account-settings``: Cloudflare's body."""

    default_usage_model: str | None = None
    green_compute: bool | None = None


#: The account's Workers settings, as Corral has them: one usage model (a
#: request is charged what it uses, Cloudflare's "standard"), on this host.
ACCOUNT_SETTINGS = {"default_usage_model": "standard", "green_compute": False}


class ScriptSettings(msgspec.Struct, kw_only=True):
    """``PATCH .../script-settings``: the settings that are not versioned on Cloudflare."""

    tags: list[str] | None = None
    tail_consumers: list[dict[str, Any]] | None = None
    logpush: bool | None = None
    observability: dict[str, Any] | None = None


def _user_only(what: str) -> CorralError:
    return Forbidden(f"Unauthorized to access requested resource: {what} belongs to a user, and Corral's "
                     "API tokens are owned by its account (as Cloudflare's account API tokens are)",
                     code=UNAUTHORIZED_RESOURCE)


class AccountHandlers:
    def __init__(self, core: Handlers) -> None:
        self.core = core
        self.store = core.store

    def register(self, router: Router) -> None:
        router.add("user/tokens/verify", GET=self.verify_user_token)
        router.add("user", GET=self.user)
        router.add("memberships", GET=self.memberships)
        router.add("accounts", GET=self.accounts)
        router.add("accounts/{account}/tokens/verify", GET=self.verify_token)
        router.add("accounts/*/workers/subdomain", GET=self.account_subdomain)
        router.add("accounts/*/workers/account-settings", GET=self.account_settings,
                   PUT=self.put_account_settings)
        router.add("accounts/*/workers/services/{name}", GET=self.get_service, DELETE=self.delete_service)
        router.add(f"{_PS}/{{name}}/references", GET=self.references)
        router.add("accounts/*/workers/tails/by-consumer/{name}", GET=self.tails_by_consumer)
        router.add("accounts/*/workers/scripts-search", GET=self.search_scripts)
        for prefix in (f"{_NS}/{{ns}}/scripts", _PS):
            router.add(f"{prefix}/{{name}}/subdomain", GET=self.get_subdomain, POST=self.set_subdomain,
                       DELETE=self.delete_subdomain)
        router.add(f"{_PS}/{{name}}/script-settings", GET=self.get_script_settings,
                   PATCH=self.edit_script_settings)

    # -- who is calling -------------------------------------------------------

    async def verify_user_token(self, request: Request) -> Response:
        raise Unauthorized("Invalid API Token: Corral's API tokens are account tokens; verify one at "
                           f"/accounts/{ACCOUNT_ID}/tokens/verify", code=INVALID_USER_TOKEN)

    async def user(self, request: Request) -> Response:
        raise _user_only("/user")

    async def memberships(self, request: Request) -> Response:
        raise _user_only("/memberships")

    async def accounts(self, request: Request) -> Response:
        account = {"id": ACCOUNT_ID, "name": "Corral", "type": "standard", "settings": {}}
        return envelope(200, [account], result_info={"page": 1, "per_page": 20, "count": 1, "total_count": 1,
                                                     "total_pages": 1})

    async def verify_token(self, request: Request) -> Response:
        """An account token is verified under its account's id: another
        account's path is refused, as Cloudflare refuses a token the account
        it names does not own (9109), so a client with a wrong account id
        learns it here and not at its first deploy."""
        label = request.params["account"]
        if label != ACCOUNT_ID:
            raise Forbidden(f"Unauthorized to access requested resource: Corral's account id is {ACCOUNT_ID!r}, "
                            f"not {clip(label)!r} (set account_id / CLOUDFLARE_ACCOUNT_ID to {ACCOUNT_ID!r})",
                            code=UNAUTHORIZED_RESOURCE)
        if not request.token_id:
            raise Invalid("this call came over the admin unix socket, which takes no token: there is none "
                          "to verify (the TCP listener's calls carry one)")
        return envelope(200, {"id": request.token_id, "status": "active"})

    # -- workers.dev ----------------------------------------------------------

    async def account_subdomain(self, request: Request) -> Response:
        raise NotFound("no workers.dev subdomain: Corral serves platform scripts on its own routes "
                       "(/accounts/{a}/workers/routes) and user workers through a dispatcher", code=NOT_FOUND)

    async def account_settings(self, request: Request) -> Response:
        return envelope(200, ACCOUNT_SETTINGS)

    async def put_account_settings(self, request: Request) -> Response:
        """The settings are Corral's own: putting them as they are is a no-op
        (as a tool that writes back what it read does); another value is a
        400 saying why it cannot be had."""
        body = body_as(request.body, AccountSettings, '{"default_usage_model": "standard"}',
                       "change the account's Workers settings")
        if body.default_usage_model not in (None, "standard"):
            raise Invalid(f"default_usage_model {clip(body.default_usage_model)!r}: Corral has one usage model, "
                          "'standard' (each request is charged the CPU it uses, under its limits)")
        if body.green_compute:
            raise Invalid("green_compute: Corral runs on the hosts it is installed on; it has no other "
                          "placement to choose")
        return envelope(200, ACCOUNT_SETTINGS)

    async def _script(self, request: Request) -> ScriptRecord:
        return (await self.core.deployed(request))[2]

    async def get_subdomain(self, request: Request) -> Response:
        await self._script(request)
        return envelope(200, {"enabled": False, "previews_enabled": False})

    async def set_subdomain(self, request: Request) -> Response:
        await self._script(request)
        try:
            body = msgspec.convert(decode_json(request.body or b"{}", "the request body"), type=Subdomain)
        except msgspec.ValidationError as exc:
            raise Invalid(f'send {{"enabled": false, "previews_enabled": false}}: {exc}') from None
        if body.enabled or body.previews_enabled:
            raise NotSupported("Corral has no workers.dev: route the script with /accounts/{a}/workers/routes "
                               "instead (in wrangler's config: workers_dev = false, preview_urls = false)")
        return envelope(200, {"enabled": False, "previews_enabled": False})

    async def delete_subdomain(self, request: Request) -> Response:
        await self._script(request)
        return envelope(200, {"enabled": False, "previews_enabled": False})

    # -- services -------------------------------------------------------------

    async def get_service(self, request: Request) -> Response:
        """A platform script as Cloudflare's services API shows it: one
        ``production`` environment, whose script says how it was last deployed."""
        record = await self._script(request)
        deployments = await self.core._run(self.store.list_deployments, PLATFORM, record.name, 1)
        script = {
            "id": record.name,
            "tag": record.name,
            "etag": record.version,
            "handlers": handlers_of(record),
            "created_on": record.created_on,
            "modified_on": record.modified_on,
            "usage_model": "standard",
            "compatibility_date": record.compatibility_date,
            "compatibility_flags": list(record.compatibility_flags),
            "tags": list(record.tags),
            "last_deployed_from": deployments[0].source if deployments else "api",
        }
        environment = {"environment": "production", "created_on": record.created_on,
                       "modified_on": record.modified_on}
        return envelope(200, {
            "id": record.name,
            "default_environment": {**environment, "script": script},
            "environments": [environment],
            "created_on": record.created_on,
            "modified_on": record.modified_on,
            "usage_model": "standard",
        })

    async def delete_service(self, request: Request) -> Response:
        """``DELETE .../services/{name}`` (how ``wrangler delete`` deletes): the platform script."""
        return await self.core.delete_script(request)

    # -- what refers to a platform script (wrangler delete asks first) ---------

    async def references(self, request: Request) -> Response:
        """Which scripts would break without this platform script, as
        Cloudflare's ``references`` answer has them: service bindings to it
        (``services.incoming``; its own are ``outgoing``), Durable Object
        bindings of other platform scripts to classes it defines, and dispatch
        namespace bindings with it as their outbound worker."""
        record = await self._script(request)
        name = record.name
        incoming: list[dict[str, Any]] = []
        durable_objects: list[dict[str, Any]] = []
        outbounds: list[dict[str, Any]] = []
        for other in await self.core._run(self.store.scripts_naming, name):
            if other.namespace != PLATFORM or other.name == name:
                continue
            for b in other.bindings:
                ref = {"name": b.name, "service": other.name, "environment": "production"}
                if isinstance(b, Service) and b.service == name:
                    incoming.append(ref)
                elif isinstance(b, DurableObjectNamespace) and b.script_name == name:
                    durable_objects.append({**ref, "durable_object_namespace_id": f"{name}:{b.class_name}",
                                            "durable_object_namespace_name": f"{name}_{b.class_name}"})
                elif isinstance(b, DispatchNamespace) and b.outbound is not None \
                        and b.outbound.worker is not None and b.outbound.worker.service == name:
                    outbounds.append({**ref, "namespace": b.namespace,
                                      "params": [{"name": p.name} for p in b.outbound.params]})
        outgoing = [{"name": b.name, "service": b.service, "environment": "production"}
                    for b in record.bindings if isinstance(b, Service)]
        return envelope(200, {"services": {"incoming": incoming, "outgoing": outgoing, "pages_function": False},
                              "durable_objects": durable_objects, "dispatch_outbounds": outbounds})

    async def tails_by_consumer(self, request: Request) -> Response:
        """The scripts, of any namespace, whose trace events go to the platform
        script ``name`` (their ``tail_consumers`` name it)."""
        name = check_name("script", request.params["name"])
        tails = []
        for other in await self.core._run(self.store.scripts_naming, name):
            if any(c.service == name for c in other.tail_consumers):
                producer = {"service": other.name, "environment": "production"} if other.namespace == PLATFORM \
                    else {"script": other.name}
                tails.append({"tag": other.name, "producer": producer, "consumer": {"service": name},
                              "log_push": False, "created_on": other.created_on,
                              "modified_on": other.modified_on})
        return envelope(200, tails)

    async def search_scripts(self, request: Request) -> Response:
        """``GET .../workers/scripts-search``: the platform's scripts whose name
        holds ``name`` (or is ``id``: a script's id is its name), by
        ``order_by``, a ``page`` of ``per_page`` at a time."""
        part, wanted = request.query.get("name", ""), request.query.get("id")
        order = request.query.get("order_by", "name")
        if order not in ("created_on", "modified_on", "name"):
            raise Invalid(f"order_by must be created_on, modified_on or name, got {clip(order)!r}")
        found = [r for r in await self.core.every_script(PLATFORM) if part in r.name and wanted in (None, r.name)]
        found.sort(key=lambda r: getattr(r, order))
        shown, info = page_of(request.query, found, 100, 1000)
        return envelope(200, [{"id": r.name, "script_name": r.name, "service_name": r.name,
                               "environment_name": "production", "environment_is_default": True,
                               "created_on": r.created_on, "modified_on": r.modified_on} for r in shown],
                        result_info=info)

    # -- script-settings ------------------------------------------------------

    def _script_settings(self, record: ScriptRecord) -> dict[str, Any]:
        return {"tags": list(record.tags), "tail_consumers": msgspec.to_builtins(record.tail_consumers),
                "logpush": False}

    async def get_script_settings(self, request: Request) -> Response:
        return envelope(200, self._script_settings(await self._script(request)))

    async def edit_script_settings(self, request: Request) -> Response:
        """Tags and tail consumers change; ``observability`` is accepted and
        has no effect (Corral's trace events always flow: tail, usage, OTLP);
        ``logpush`` cannot be turned on."""
        try:
            body = msgspec.convert(decode_json(request.body or b"{}", "script settings"), type=ScriptSettings)
        except msgspec.ValidationError as exc:
            raise Invalid(f"script settings: {exc}") from None
        if body.logpush:
            raise NotSupported(NO_LOGPUSH)
        record = await self._script(request)
        # The tags are checked before the tail consumers are written: a PATCH
        # refused for a bad tag must not have made a new version already.
        tags = normalize_tags(body.tags) if body.tags is not None else None
        if body.tail_consumers is not None:
            consumers = decode_metadata({"main_module": record.main_module,
                                         "tail_consumers": body.tail_consumers}).tail_consumers
            if consumers != record.tail_consumers:
                record = await self.core._run(
                    lambda: self.store.put_script(with_changes(record, tail_consumers=consumers), source="settings"))
                self.core._changed(PLATFORM, record.name)
        if tags is not None:
            tags = await self.core._run(self.store.put_tags, PLATFORM, record.name, tags)
            record = msgspec.structs.replace(record, tags=tags)
            self.core._changed(PLATFORM, record.name)
        log_event(logging.INFO, "admin.script_settings", script=clip(record.name))
        return envelope(200, self._script_settings(record))
