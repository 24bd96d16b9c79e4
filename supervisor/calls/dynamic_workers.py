"""Dynamic Workers: Python workers a script loads at run time (Worker Loader bindings).

``env.LOADER.get(id, callback)`` gives a stub for the worker ``id`` of that
binding; the first call through it finds no code here, the child runs the
callback and hands the code over (``put``), and from then on the worker is a
script like any other: a version (the hash of its code), a bundle on disk, a
jailed child from the pool, limits within its caller's, a trace among the
caller's children. ``env.LOADER.load(code)`` is the same with an id of its own.

The code is held here, in memory, least recently used first out: like
Cloudflare's isolate cache, nothing promises that a worker loaded once is still
there later, and a stub asks its callback again when it is not. Each script's
dynamic workers are its own: the key is (namespace, script, binding, id), so
two tenants naming the same id never share code.

What a script may hand over (Cloudflare's ``WorkerCode``): ``mainModule``, a
``.py`` module; ``modules``, by name, source text or ``{"py"|"text"|"json"|
"data": ...}``; ``compatibilityDate`` and ``compatibilityFlags``; ``env`` with
plain values (text or JSON bindings); ``globalOutbound: None`` for a worker
with no network (its subrequest limit is 0). JavaScript modules, binding stubs
in ``env`` and outbound stubs are refused with an error that names them.
"""

from __future__ import annotations

import json
import posixpath
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from supervisor.model import Binding, ScriptRecord, content_version, module_path_ok, var_binding

#: Dynamic workers kept at once on a host, and their code in bytes.
MAX_WORKERS = 1024
#: Dynamic workers one script (its namespace and name) keeps at once. Each
#: one runs in a child of its own with the tenant's memory limit, so this
#: bounds what one tenant holds (16 x 128 MB by default); a load beyond it
#: evicts that script's own least recently used worker, never another's.
MAX_WORKERS_PER_OWNER = 16
MAX_TOTAL_BYTES = 256 * 2**20
#: One worker's code, as a script's upload (the admin API's default).
MAX_CODE_BYTES = 10 * 2**20
MAX_MODULES = 1000
MAX_ID_LENGTH = 256

_Key = tuple[str, str, str, str]


class CodeError(ValueError):
    """The code a script handed over cannot run here; the message says why."""


class DynamicWorkers:
    """The host's dynamic workers, by (namespace, script, binding, id)."""

    def __init__(self, max_workers: int = MAX_WORKERS, max_bytes: int = MAX_TOTAL_BYTES,
                 max_per_owner: int = MAX_WORKERS_PER_OWNER) -> None:
        self.max_workers = max_workers
        self.max_bytes = max_bytes
        self.max_per_owner = max_per_owner
        self._records: OrderedDict[_Key, ScriptRecord] = OrderedDict()
        #: Each owner's (namespace, script) workers, least recently used first.
        self._owners: dict[tuple[str, str], OrderedDict[_Key, None]] = {}
        #: Told of every worker dropped (evicted, replaced or its owner
        #: deleted): the pool retires its child, which holds its memory.
        self.on_drop: Callable[[ScriptRecord], None] | None = None
        #: Versions of the workers whose network is cut (``globalOutbound: None``).
        self._offline: set[str] = set()
        self._bytes = 0

    @staticmethod
    def key(owner: ScriptRecord, binding: str, worker_id: str) -> _Key:
        return (owner.namespace, owner.name, binding, worker_id)

    def get(self, owner: ScriptRecord, binding: str, worker_id: str) -> ScriptRecord | None:
        """The worker's record, or None: then the caller's stub hands its code over."""
        key = self.key(owner, binding, worker_id)
        record = self._records.get(key)
        if record is not None:
            self._records.move_to_end(key)
            self._owners[key[:2]].move_to_end(key)
        return record

    def offline(self, record: ScriptRecord) -> bool:
        """The worker was loaded with ``globalOutbound: None``."""
        return record.version in self._offline

    def put(self, owner: ScriptRecord, binding: str, worker_id: str, code: Any) -> ScriptRecord:
        """Keep ``code`` as the worker ``worker_id`` of ``owner``'s ``binding``
        (replacing what was there); raises :class:`CodeError`."""
        if not isinstance(worker_id, str) or not worker_id or len(worker_id) > MAX_ID_LENGTH:
            raise CodeError(f"a dynamic worker's id is a non-empty string of at most "
                            f"{MAX_ID_LENGTH} characters")
        record, offline = _record(owner, binding, worker_id, code)
        key = self.key(owner, binding, worker_id)
        old = self._records.get(key)
        self._drop(key, notify=old is not None and old.version != record.version)
        self._records[key] = record
        owned = self._owners.setdefault(key[:2], OrderedDict())
        owned[key] = None
        self._bytes += _size(record)
        if offline:
            self._offline.add(record.version)
        while len(owned) > self.max_per_owner:
            self._drop(next(iter(owned)))
        while len(self._records) > self.max_workers or self._bytes > self.max_bytes:
            self._drop(next(iter(self._records)))
        return record

    def drop_owner(self, namespace: str, script: str) -> None:
        """Forget every dynamic worker of a deleted script: a script given
        its name later must not find the old one's code (or its env)."""
        for key in list(self._owners.get((namespace, script), ())):
            self._drop(key)

    def owned(self, namespace: str, script: str) -> int:
        """How many dynamic workers the script keeps."""
        return len(self._owners.get((namespace, script), ()))

    def _drop(self, key: _Key, notify: bool = True) -> None:
        old = self._records.pop(key, None)
        if old is not None:
            self._bytes -= _size(old)
            self._offline.discard(old.version)
            owned = self._owners.get(key[:2])
            if owned is not None:
                owned.pop(key, None)
                if not owned:
                    del self._owners[key[:2]]
            if notify and self.on_drop is not None:
                self.on_drop(old)

    def __len__(self) -> int:
        return len(self._records)


def _size(record: ScriptRecord) -> int:
    return sum(len(v) for v in record.modules.values())


def _record(owner: ScriptRecord, binding: str, worker_id: str, code: Any) -> tuple[ScriptRecord, bool]:
    if not isinstance(code, dict):
        raise CodeError("the loader's callback must return the worker's code: a dict with "
                        "mainModule and modules")
    unknown = sorted(set(code) - {"compatibilityDate", "compatibilityFlags", "mainModule", "modules",
                                  "env", "globalOutbound", "allowExperimental", "tails"})
    if unknown:
        raise CodeError(f"unknown WorkerCode field {unknown[0]!r}")
    main = code.get("mainModule")
    modules = _modules(code.get("modules"))
    if not isinstance(main, str) or main not in modules:
        raise CodeError(f"mainModule must name one of the modules ({', '.join(sorted(modules))})")
    if not main.endswith(".py"):
        raise CodeError(f"mainModule {main!r} must be a Python module (.py): Corral runs Python workers")
    date = code.get("compatibilityDate") or ""
    flags = code.get("compatibilityFlags") or []
    if not isinstance(date, str) or not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise CodeError("compatibilityDate is a string and compatibilityFlags a list of strings")
    if code.get("tails"):
        raise CodeError("tails of dynamic workers are not supported by Corral yet")
    offline = False
    if "globalOutbound" in code:
        if code["globalOutbound"] is not None:
            raise CodeError("globalOutbound takes None (no network); outbound stubs are not "
                            "supported by Corral yet")
        offline = True
    bindings = _env(code.get("env"))
    version = content_version(main, modules, bindings, date, flags,
                              extra={"dynamic": [owner.namespace, owner.name, binding, worker_id, offline]})
    return ScriptRecord(
        namespace=owner.namespace, name=f"{owner.name}:{binding}:{worker_id}", version=version,
        version_id=version, main_module=main, modules=modules, bindings=bindings,
        tags=list(owner.tags), compatibility_date=date, compatibility_flags=list(flags),
    ), offline


def _modules(raw: Any) -> dict[str, bytes]:
    if not isinstance(raw, dict) or not raw:
        raise CodeError("modules must be a non-empty dict of module name to source")
    if len(raw) > MAX_MODULES:
        raise CodeError(f"a dynamic worker has at most {MAX_MODULES} modules")
    out: dict[str, bytes] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not module_path_ok(name):
            raise CodeError(f"invalid module name {name!r}: use a relative path like 'entry.py'")
        out[name] = _content(name, value)
    total = sum(len(v) for v in out.values())
    if total > MAX_CODE_BYTES:
        raise CodeError(f"the worker's code is {total} bytes, over the {MAX_CODE_BYTES}-byte limit")
    return out


def _content(name: str, value: Any) -> bytes:
    """A module's bytes: its source, or ``{"py"|"text"|"json"|"data": ...}``."""
    if isinstance(value, dict) and len(value) == 1:
        (kind, inner), = value.items()
        if kind in ("js", "cjs", "wasm"):
            raise CodeError(f"module {name!r} is JavaScript or WebAssembly ({kind}); Corral runs "
                            "Python workers")
        if kind in ("py", "text") and isinstance(inner, str):
            return inner.encode()
        if kind == "data" and isinstance(inner, (bytes, bytearray, memoryview)):
            return bytes(inner)
        if kind == "json":
            return json.dumps(inner).encode()
    elif isinstance(value, str):
        if posixpath.splitext(name)[1] in (".js", ".mjs", ".cjs"):
            raise CodeError(f"module {name!r} is JavaScript; Corral runs Python workers")
        return value.encode()
    raise CodeError(f"module {name!r} must be source text or one of {{py, text, json, data}}")


def _env(raw: Any) -> list[Binding]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise CodeError("env must be a dict of binding name to value")
    bindings: list[Binding] = []
    for name, value in raw.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise CodeError(f"env name {name!r} must be an identifier")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise CodeError(f"env value {name!r} must be plain data (text, numbers, lists, dicts); "
                            "binding stubs are not supported by Corral yet") from None
        bindings.append(var_binding(name, value))
    return bindings
