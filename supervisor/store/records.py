"""Rows and the typed values they hold: scripts, namespaces, routes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from supervisor.model import AssetSet, Binding, ScriptRecord, TailConsumer


class NamespaceInfo(msgspec.Struct, kw_only=True):
    id: str
    name: str
    created_on: str
    script_count: int = 0


class RouteInfo(msgspec.Struct, kw_only=True):
    id: str
    pattern: str
    script: str


class _Metadata(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the ``metadata`` JSON column holds."""

    bindings: list[Binding] = []
    compatibility_date: str = ""
    compatibility_flags: list[str] = []
    tail_consumers: list[TailConsumer] = []
    crons: list[str] = []
    assets: AssetSet | None = None


_modules_decoder = msgspec.msgpack.Decoder(dict[str, bytes])
_metadata_decoder = msgspec.json.Decoder(_Metadata)
tags_decoder = msgspec.json.Decoder(list[str])

#: The columns :func:`record_from_row` reads, in order (``modules`` may follow).
LIST_COLUMNS = "namespace, name, version, main_module, metadata, tags, created_on, modified_on"


def record_from_row(row: Sequence[Any], modules: bytes | None) -> ScriptRecord:
    namespace, name, version, main_module, metadata, tags, created_on, modified_on = row
    meta = _metadata_decoder.decode(metadata)
    return ScriptRecord(
        namespace=namespace,
        name=name,
        version=version,
        main_module=main_module,
        modules=_modules_decoder.decode(modules) if modules is not None else {},
        bindings=meta.bindings,
        tags=tags_decoder.decode(tags),
        compatibility_date=meta.compatibility_date,
        compatibility_flags=meta.compatibility_flags,
        tail_consumers=meta.tail_consumers,
        crons=meta.crons,
        assets=meta.assets,
        created_on=created_on,
        modified_on=modified_on,
    )


def encode_metadata(record: ScriptRecord) -> str:
    return msgspec.json.encode(_Metadata(
        bindings=record.bindings,
        compatibility_date=record.compatibility_date,
        compatibility_flags=record.compatibility_flags,
        tail_consumers=record.tail_consumers,
        crons=record.crons,
        assets=record.assets,
    )).decode()


def encode_modules(record: ScriptRecord) -> bytes:
    return msgspec.msgpack.encode(record.modules)


def record_size(record: ScriptRecord) -> int:
    """What a cached record costs, roughly: its code plus a fixed overhead."""
    return sum(len(v) + len(k) for k, v in record.modules.items()) + 512
