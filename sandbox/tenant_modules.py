"""Installs the module names tenant code imports from the runtime.

``workers`` is the SDK (:mod:`sandbox.workers`) with ``workers.asgi`` and
``workers.wsgi``, plus the top-level ``asgi`` some projects import; ``js``
and ``pyodide`` are the JavaScript-flavoured companions Cloudflare's Python
Workers reach through Pyodide (:mod:`sandbox.js_shim`,
:mod:`sandbox.pyodide_shim`), so that code written for Cloudflare imports
here unchanged. ``requests``, ``urllib3``, ``httpx`` and ``anyio`` get
patched when a tenant imports them (:mod:`sandbox.http_shims`).
"""

from __future__ import annotations

import sys
import types

from . import (
    durable_objects,
    http_shims,
    js_shim,
    pyodide_shim,
    stdlib_shims,
    thread_shims,
    unavailable,
    workers,
    workers_asgi,
    workers_wsgi,
)
from .bindings.cache import caches


class NonRetryableError(Exception):
    """``workers.workflows.NonRetryableError``: a Workflow step that must not be
    retried raises it. Corral has no Workflows binding; the name is here so
    that a module defining a workflow imports (and its other handlers run)."""


#: The JavaScript types a Response takes as its body as the SDK names them
#: (``workers.utils.RESPONSE_ACCEPTED_TYPES``): its BufferSource views and the
#: other BodyInit types.
RESPONSE_ACCEPTED_TYPES = frozenset({
    "Blob", "ArrayBuffer", "TypedArray", "DataView", "Uint8Array", "Uint8ClampedArray", "Int8Array",
    "Uint16Array", "Int16Array", "Uint32Array", "Int32Array", "Float16Array", "Float32Array",
    "Float64Array", "BigInt64Array", "BigUint64Array", "FormData", "ReadableStream", "URLSearchParams",
    "Response"})

#: The SDK's submodules (``from workers.workflows import NonRetryableError``,
#: ``from workers.types import FetchKwargs``, ...) and the names each holds.
SUBMODULES = {
    "workflows": {"NonRetryableError": NonRetryableError},
    "types": ("Context", "FetchKwargs", "RequestInitCfProperties", "Headers", "Body", "JSBody"),
    "utils": {"import_from_javascript": workers.import_from_javascript, "patch_env": workers.patch_env,
              "RESPONSE_ACCEPTED_TYPES": RESPONSE_ACCEPTED_TYPES},
    "blob": ("Blob", "File", "BlobEnding", "BlobValue"),
    "formdata": ("FormData", "FormDataValue"),
    "request": ("Request",),
    "response": ("Response", "FetchResponse"),
    "fetch": ("fetch",),
    "entrypoints": {"WorkerEntrypoint": workers.WorkerEntrypoint, "DurableObject": workers.DurableObject,
                    "WorkflowEntrypoint": workers.WorkflowEntrypoint, "handler": workers.handler,
                    # ctx.abort()'s exception, and the class of a Durable Object's ctx
                    "DurableObjectAbort": durable_objects.DurableObjectAborted,
                    "DurableObjectContext": durable_objects.DurableObjectState},
    "rpc": ("python_from_rpc", "python_to_rpc", "JsDict"),
}


def _submodule(name: str, names: dict[str, object] | tuple[str, ...]) -> types.ModuleType:
    module = types.ModuleType(f"workers.{name}", f"The SDK's workers.{name}, over Corral's workers")
    values = names if isinstance(names, dict) else {n: getattr(workers, n) for n in names}
    module.__dict__.update(values)
    return module


def install() -> None:
    pyodide_shim.install()
    sys.modules["workers"] = workers
    for name, names in SUBMODULES.items():
        sys.modules[f"workers.{name}"] = _submodule(name, names)
    workers.workflows = sys.modules["workers.workflows"]  # type: ignore[attr-defined]
    workers.asgi = workers_asgi  # type: ignore[attr-defined]
    workers.wsgi = workers_wsgi  # type: ignore[attr-defined]
    sys.modules["workers.asgi"] = workers_asgi
    sys.modules["workers.wsgi"] = workers_wsgi
    sys.modules["asgi"] = workers_asgi
    js_shim.install()
    sys.modules["js"].caches = caches  # type: ignore[attr-defined]  # the Cache API's global
    http_shims.install()
    thread_shims.install()
    unavailable.install()  # inactive until a child's Load (see there)
    stdlib_shims.install()  # likewise
