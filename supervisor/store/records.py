"""Rows and the typed values they hold: scripts, namespaces, routes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from supervisor.model import AssetSet, Binding, QueueConsumer, ScriptLimits, ScriptRecord, TailConsumer


class NamespaceInfo(msgspec.Struct, kw_only=True):
    id: str
    name: str
    created_on: str
    script_count: int = 0


class RouteInfo(msgspec.Struct, kw_only=True):
    id: str
    pattern: str
    script: str


class DomainInfo(msgspec.Struct, kw_only=True):
    """A custom domain: every request for ``hostname`` goes to platform
    script ``service``, ahead of any route (as on Cloudflare)."""

    id: str
    hostname: str
    service: str
    zone_name: str


class ResourceInfo(msgspec.Struct, kw_only=True):
    """A KV namespace or D1 database made through the API (its id, and its
    title or name); one that is only named by bindings has no row."""

    kind: str
    id: str
    name: str
    created_on: str
    #: JSON of what a kind keeps beside its name (an HTTP pull consumer's settings), or "".
    settings: str = ""


class VersionInfo(msgspec.Struct, kw_only=True):
    """One immutable version of a script."""

    id: str
    number: int
    content: str  # ScriptRecord.version: the content hash
    created_on: str
    source: str = "api"
    message: str = ""
    has_assets: bool = False
    tag: str = ""


class Split(msgspec.Struct, kw_only=True):
    version_id: str
    percentage: float


class DeploymentInfo(msgspec.Struct, kw_only=True):
    """Which versions serve a script's traffic, and in what shares."""

    id: str
    created_on: str
    versions: list[Split]
    source: str = "api"
    message: str = ""


class TokenInfo(msgspec.Struct, kw_only=True):
    """An API token of the TCP admin listener (its secret is never stored)."""

    id: str
    name: str
    scope: str  # read, deploy or admin
    namespaces: list[str]
    created_on: str


class _Metadata(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the ``metadata`` JSON column holds.

    Each field has the name of the :class:`ScriptRecord` field it stores,
    so reading and writing the column copy fields by name.
    """

    bindings: list[Binding] = []
    compatibility_date: str = ""
    compatibility_flags: list[str] = []
    tail_consumers: list[TailConsumer] = []
    requirements: list[str] = []
    packages_lock: str = ""
    crons: list[str] = []
    queue_consumers: list[QueueConsumer] = []
    handlers: list[str] = []
    limits: ScriptLimits | None = None


_modules_decoder = msgspec.msgpack.Decoder(dict[str, bytes])
_metadata_decoder = msgspec.json.Decoder(_Metadata)
tags_decoder = msgspec.json.Decoder(list[str])

#: The columns :func:`record_from_row` reads, in order (``modules`` may follow).
LIST_COLUMNS = "namespace, name, version, main_module, metadata, tags, created_on, modified_on, version_id"
splits_decoder = msgspec.json.Decoder(list[Split])
#: The versions table's ``assets`` column: a version's manifest and serving config.
assets_decoder = msgspec.json.Decoder(AssetSet)


def record_from_row(row: Sequence[Any], modules: bytes | None, assets: str = "") -> ScriptRecord:
    namespace, name, version, main_module, metadata, tags, created_on, modified_on, version_id = row
    meta = _metadata_decoder.decode(metadata)
    return ScriptRecord(
        namespace=namespace,
        name=name,
        version=version,
        main_module=main_module,
        modules=_modules_decoder.decode(modules) if modules is not None else {},
        tags=tags_decoder.decode(tags),
        **msgspec.structs.asdict(meta),
        created_on=created_on,
        modified_on=modified_on,
        version_id=version_id,
        assets=assets_decoder.decode(assets) if assets else None,
    )


def bindings_of(metadata: str | bytes) -> list[Binding]:
    """The bindings a stored ``metadata`` column holds."""
    return _metadata_decoder.decode(metadata).bindings


def packages_lock_of(metadata: str | bytes) -> str:
    """The package lock a stored ``metadata`` column names ("" for none)."""
    return _metadata_decoder.decode(metadata).packages_lock


#: What Cloudflare keeps per script, not per version: its cron triggers
#: (``.../schedules``) and its queue consumers (the queues API). Setting them
#: makes no version, and a deployment of any version (``wrangler rollback``,
#: ``wrangler versions deploy``) leaves them as they are. An upload records them
#: with its version too, but what serves takes the scripts row's ``metadata``
#: (:meth:`Store.set_unversioned` changes only that).
UNVERSIONED = ("crons", "queue_consumers")


def unversioned_of(deployed: str) -> dict[str, Any]:
    """The unversioned settings that a scripts row's ``metadata`` column holds, by field."""
    meta = _metadata_decoder.decode(deployed)
    return {field: getattr(meta, field) for field in UNVERSIONED}


def with_unversioned(metadata: str, settings: dict[str, Any]) -> str:
    """A ``metadata`` column with these unversioned ``settings`` (by field) instead of its own."""
    unknown = set(settings) - set(UNVERSIONED)
    assert not unknown, f"{unknown} are a version's, not the script's"  # the caller's constants
    return msgspec.json.encode(msgspec.structs.replace(_metadata_decoder.decode(metadata), **settings)).decode()


def keep_unversioned(metadata: str, deployed: str) -> str:
    """A version's ``metadata`` column with the unversioned settings of ``deployed`` (the script's now)."""
    return with_unversioned(metadata, unversioned_of(deployed))


def encode_metadata(record: ScriptRecord) -> str:
    fields = {name: getattr(record, name) for name in _Metadata.__struct_fields__}
    return msgspec.json.encode(_Metadata(**fields)).decode()


def encode_modules(record: ScriptRecord) -> bytes:
    return msgspec.msgpack.encode(record.modules)


def record_size(record: ScriptRecord) -> int:
    """What a cached record costs, roughly: its code plus a fixed overhead."""
    return sum(len(v) + len(k) for k, v in record.modules.items()) + 512
