"""A script's configuration apart from its code: secrets, settings, bindings,
and its code back (``content``), as Cloudflare's API has them.

A secret or settings change makes a new version from the deployed one and
deploys it, as on Cloudflare; a change of tags only is not a new version.
Secret values go in and never come out: lists show names and types.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from supervisor.admin import multipart
from supervisor.admin.decode import MAX_METADATA_BYTES, clip, decode_json
from supervisor.admin.handlers import (
    _NS,
    _PS,
    Handlers,
    _namespace_of,
    _script_of,
    check_own_tags,
    check_reach,
    code_response,
    log_event,
)
from supervisor.admin.render import Response, envelope, settings_json
from supervisor.admin.router import Request, Router
from supervisor.errors import Invalid, NotFound, NotSupported
from supervisor.model import (
    ScriptRecord,
    SecretText,
    UploadMetadata,
    check_variables,
    decode_metadata,
    record_version,
    resolve_bindings,
)
from supervisor.store.store import normalize_tags

#: A settings edit that turns Logpush on is refused in these words.
NO_LOGPUSH = "Corral has no Logpush: trace events go to tail workers, /tail and OTLP"


def with_changes(record: ScriptRecord, **changes: Any) -> ScriptRecord:
    """A new version's record: the deployed one with ``changes``, re-hashed;
    the deployed version's tag and message are that version's, not its."""
    new = msgspec.structs.replace(record, **{"version_tag": "", "version_message": "", **changes})
    return msgspec.structs.replace(new, version=record_version(new))


def _secret_json(binding: SecretText) -> dict[str, str]:
    return {"name": binding.name, "type": "secret_text"}



def _kept(binding: Any, record: ScriptRecord) -> Any:
    """A binding of a settings ``PATCH`` that means "keep the deployed one":
    a secret as ``GET .../settings`` shows it (no text), or any binding given
    by its type and name only, as wrangler 4 sends every binding it leaves
    alone (``secret bulk``), when the deployed script has one of that type
    and name. Anything else is decoded as it is."""
    if not isinstance(binding, dict) or binding.get("type") == "inherit":
        return binding
    name, kind = binding.get("name"), binding.get("type")
    if kind == "secret_text" and "text" not in binding:
        return {"type": "inherit", "name": name}
    if set(binding) <= {"type", "name"} and any(
            b.name == name and type(b).__struct_config__.tag == kind for b in record.bindings):
        return {"type": "inherit", "name": name}
    return binding


def _settings_tags(raw: dict[str, Any]) -> list[str] | None:
    """A settings ``PATCH``'s ``tags``, validated (None: leave them), so a bad
    tag is refused before anything else of the ``PATCH`` is written."""
    tags = raw.get("tags")
    if tags is None:
        return None
    if not isinstance(tags, list):
        raise Invalid("settings.tags must be a list of strings")
    return normalize_tags(tags)


class ScriptConfigHandlers:
    def __init__(self, core: Handlers) -> None:
        self.core = core
        self.store = core.store

    def register(self, router: Router) -> None:
        for prefix in (f"{_NS}/{{ns}}/scripts", _PS):
            router.add(f"{prefix}/{{name}}/secrets", GET=self.list_secrets, PUT=self.put_secret)
            router.add(f"{prefix}/{{name}}/secrets/{{key}}", GET=self.get_secret, DELETE=self.delete_secret)
            router.add(f"{prefix}/{{name}}/settings", GET=self.get_settings, PATCH=self.edit_settings)
            router.add(f"{prefix}/{{name}}/bindings", GET=self.get_bindings)
            router.add(f"{prefix}/{{name}}/content", GET=self.get_content, PUT=self.put_content)
            router.add(f"{prefix}/{{name}}/content/v2", GET=self.get_content)

    # -- secrets --------------------------------------------------------------

    async def list_secrets(self, request: Request) -> Response:
        _, _, record = await self.core.deployed(request)
        return envelope(200, [_secret_json(b) for b in record.bindings if isinstance(b, SecretText)])

    async def get_secret(self, request: Request) -> Response:
        _, name, record = await self.core.deployed(request)
        key = request.params["key"]
        for binding in record.bindings:
            if isinstance(binding, SecretText) and binding.name == key:
                return envelope(200, _secret_json(binding))
        raise NotFound(f"script {name!r} has no secret {clip(key)!r}", code=10056)

    async def put_secret(self, request: Request) -> Response:
        body = request.json()
        kind = body.get("type", "secret_text") if isinstance(body, dict) else None
        if kind == "secret_key":
            raise Invalid("secret type 'secret_key' (a WebCrypto key) is not supported by Corral yet: store the "
                          "key's bytes as a 'secret_text' (base64, say) and import it with crypto.subtle.importKey")
        if kind is not None and kind != "secret_text":
            raise Invalid(f"secret type {clip(str(kind))!r} is not supported: use 'secret_text'")
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not isinstance(body.get("text"), str):
            raise Invalid('send {"name": "KEY", "text": "VALUE", "type": "secret_text"}')
        secret = SecretText(name=body["name"], text=body["text"])  # validates the name
        ns, name, record = await self.core.deployed_latest(request)
        bindings = [b for b in record.bindings if b.name != secret.name]
        clash = next((b for b in record.bindings if b.name == secret.name and not isinstance(b, SecretText)), None)
        if clash is not None:
            raise Invalid(f"script {name!r} already has a {type(clash).__struct_config__.tag} binding named "
                          f"{secret.name!r}; a secret cannot replace it")
        await self.core.store_version(with_changes(record, bindings=[*bindings, secret]), "secret")
        log_event(logging.INFO, "admin.secret_put", namespace=ns, script=name, secret=secret.name)
        return envelope(200, _secret_json(secret))

    async def delete_secret(self, request: Request) -> Response:
        ns, name, record = await self.core.deployed_latest(request)
        key = request.params["key"]
        if not any(isinstance(b, SecretText) and b.name == key for b in record.bindings):
            raise NotFound(f"script {name!r} has no secret {clip(key)!r}", code=10056)
        await self.core.store_version(with_changes(record, bindings=[b for b in record.bindings if b.name != key]),
                                  "secret")
        log_event(logging.INFO, "admin.secret_deleted", namespace=ns, script=name, secret=key)
        return envelope(200, None)

    # -- settings and bindings ---------------------------------------------------

    async def get_settings(self, request: Request) -> Response:
        _, _, record = await self.core.deployed(request)
        return envelope(200, settings_json(record))

    async def get_bindings(self, request: Request) -> Response:
        _, _, record = await self.core.deployed(request)
        return envelope(200, settings_json(record)["bindings"])

    async def edit_settings(self, request: Request) -> Response:
        """``PATCH .../settings``: a ``settings`` part (multipart, as the SDK
        sends it) or a JSON body. Only the fields given change; ``limits``
        (``null`` clears them) as an upload's. As the account's
        script-settings edit: ``logpush`` cannot be turned on, and
        ``observability``, ``placement`` and ``usage_model`` are accepted
        with no effect (trace events always flow; one host; one model)."""
        raw = self._settings_body(request)
        if raw.get("logpush"):
            raise NotSupported(NO_LOGPUSH)
        ns, name, record = await self.core.deployed(request)
        changes: dict[str, Any] = {}
        known = {k: raw[k] for k in ("bindings", "compatibility_date", "compatibility_flags", "tail_consumers",
                                     "limits")
                 if k in raw and raw[k] is not None}
        if isinstance(known.get("bindings"), list):
            known["bindings"] = [_kept(b, record) for b in known["bindings"]]
        if known:
            metadata: UploadMetadata = decode_metadata({"main_module": record.main_module, **known})
            if "bindings" in known:
                changes["bindings"] = resolve_bindings(metadata, record)
            for field in ("compatibility_date", "compatibility_flags", "tail_consumers", "limits"):
                if field in known:
                    changes[field] = getattr(metadata, field)
        if "limits" in raw and raw["limits"] is None and record.limits is not None:
            changes["limits"] = None
        tags = _settings_tags(raw)
        if tags is not None:
            check_own_tags(tags, record.tags, request.namespaces)
        # Everything is checked before the first write: a PATCH refused for
        # its bindings must not have changed the script's tags already.
        if changes:
            # A new version, made from the deployed one: not over a newer upload.
            await self.core.check_latest_deployed(ns, name, record, secrets=False)
            check_variables(with_changes(record, **changes).bindings)
            check_reach(with_changes(record, **changes), request.namespaces)
            await self.core.check_services(with_changes(record, **changes))
        if tags is not None:
            tags = await self.core._run(self.store.put_tags, ns, name, tags)
            record = msgspec.structs.replace(record, tags=tags)
            self.core._changed(ns, name)
        if changes:
            record = await self.core.store_version(with_changes(record, **changes), "settings")
        return envelope(200, settings_json(record))

    @staticmethod
    def _settings_body(request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        if content_type.lower().startswith("multipart/"):
            parts = multipart.parse(content_type, request.body, max_part_bytes=MAX_METADATA_BYTES)
            found = [p for p in parts if p.name == "settings"]
            if not found:
                raise Invalid("the settings upload has no 'settings' part (JSON)")
            raw = decode_json(found[0].data, "the 'settings' part", MAX_METADATA_BYTES)
        else:
            raw = request.json()
            if isinstance(raw, dict) and isinstance(raw.get("settings"), dict):
                raw = raw["settings"]
        if not isinstance(raw, dict):
            raise Invalid("settings must be a JSON object, e.g. {\"compatibility_date\": \"2025-06-01\"}")
        return raw

    # -- content ------------------------------------------------------------------

    async def get_content(self, request: Request) -> Response:
        """The deployed code as multipart/form-data, one part per module, the
        main module first (as Cloudflare answers it; not a JSON envelope);
        with ``?version=ID``, that version's, deployed or not. wrangler's
        ``versions secret put`` copies a version's code from there: the
        deployed code was answered, and the new version served old code."""
        version = request.query.get("version")
        if not version:
            _, _, record = await self.core.deployed(request)
            return code_response(record)
        ns, name = _namespace_of(request), _script_of(request)
        return code_response(await self.core._run(self.store.get_version_record, ns, name, version))

    async def put_content(self, request: Request) -> Response:
        """New code, every other setting kept: a new version, deployed."""
        ns, name = _namespace_of(request), _script_of(request)
        stored = await self.core.upload(request, ns, name, deploy=True, code_only=True)
        from supervisor.admin.render import script_json

        return envelope(200, script_json(stored, with_modules=True))
