"""``PATCH .../scripts/{name}/secrets-bulk``: many secrets in one version.

Cloudflare's SDKs (``client.workers.scripts.secrets.bulk_update`` and the
dispatch namespace's) send a JSON Merge Patch (RFC 7396) of the script's
secrets: a secret object sets one, ``null`` deletes one, a name left out is
kept. Changing them one ``PUT`` at a time would make a version per secret and
serve the script half-changed in between; here the whole patch is checked
first, then stored as one new version, deployed, as Cloudflare does it.
``version_tags`` (``workers/tag``, ``workers/message``) label that version.
The answer is every secret the script now has, by name, without its text.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from supervisor.admin.decode import clip
from supervisor.admin.handlers import _NS, _PS, Handlers, log_event
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.admin.script_config import with_changes
from supervisor.errors import Invalid
from supervisor.model import Binding, ScriptRecord, SecretText, VersionAnnotations

_SHAPE = '{"secrets": {"NAME": {"name": "NAME", "type": "secret_text", "text": "VALUE"} or null}}'


class BulkSecrets(msgspec.Struct, forbid_unknown_fields=True):
    """The request body: the merge patch, and the new version's labels."""

    secrets: dict[str, dict[str, Any] | None] = {}
    version_tags: VersionAnnotations | None = None


def _secret(key: str, value: dict[str, Any]) -> SecretText:
    """One patch entry that sets a secret: a ``secret_text`` with its text
    (Corral has no ``secret_key`` bindings); the entry's ``name``, if given,
    must be its key, as the patch is keyed by name."""
    kind = value.get("type", "secret_text")
    if kind != "secret_text":
        raise Invalid(f"secrets[{clip(key)!r}]: type {clip(str(kind))!r} is not supported; use 'secret_text'")
    if value.get("name", key) != key:
        raise Invalid(f"secrets[{clip(key)!r}] names {clip(str(value.get('name')))!r}: an entry's name is its key")
    if not isinstance(value.get("text"), str):
        raise Invalid(f"secrets[{clip(key)!r}] has no 'text' (the secret's value, a string)")
    return SecretText(name=key, text=value["text"])  # validates the name


def patched(record: ScriptRecord, patch: dict[str, dict[str, Any] | None]) -> list[Binding]:
    """``record``'s bindings with ``patch`` applied, or Invalid naming the
    first entry that cannot be: a secret that would replace another kind of
    binding (a variable, a KV namespace) is refused, as a single PUT is."""
    bindings: list[Binding] = list(record.bindings)
    for key, value in patch.items():
        clash = next((b for b in bindings if b.name == key and not isinstance(b, SecretText)), None)
        if clash is not None:
            raise Invalid(f"script {record.name!r} already has a {type(clash).__struct_config__.tag} binding named "
                          f"{clip(key)!r}; a secret cannot replace it")
        if value is not None and not isinstance(value, dict):
            raise Invalid(f"secrets[{clip(key)!r}] must be a secret object or null (to delete it)")
        bindings = [b for b in bindings if b.name != key]
        if value is not None:
            bindings.append(_secret(key, value))
    return bindings


class SecretsBulkHandlers:
    def __init__(self, core: Handlers) -> None:
        self.core = core

    def register(self, router: Router) -> None:
        for prefix in (f"{_NS}/{{ns}}/scripts", _PS):
            router.add(f"{prefix}/{{name}}/secrets-bulk", PATCH=self.bulk_update)

    async def bulk_update(self, request: Request) -> Response:
        try:
            body = msgspec.json.decode(request.body or b"{}", type=BulkSecrets)
        except msgspec.DecodeError as exc:
            raise Invalid(f"the secrets patch is not {_SHAPE}: {exc}") from None
        ns, name, record = await self.core.deployed_latest(request)
        bindings = patched(record, body.secrets)
        if body.secrets or body.version_tags is not None:
            tags = body.version_tags or VersionAnnotations()
            record = await self.core.store_version(
                with_changes(record, bindings=bindings, version_tag=tags.tag or "",
                             version_message=tags.message or ""), "secret")
            log_event(logging.INFO, "admin.secrets_bulk", namespace=ns, script=name,
                      set=sorted(k for k, v in body.secrets.items() if v is not None),
                      deleted=sorted(k for k, v in body.secrets.items() if v is None))
        return envelope(200, {b.name: {"name": b.name, "type": "secret_text"}
                              for b in record.bindings if isinstance(b, SecretText)})


__all__ = ["SecretsBulkHandlers"]
