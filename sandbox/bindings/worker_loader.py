"""``env.LOADER``: Dynamic Workers, as Cloudflare's Worker Loader binding has them.

``get(id, callback)`` and ``load(code)`` give a stub at once; its
``getEntrypoint().fetch(request)`` invokes the dynamic worker through the
supervisor (a ``loader`` call naming the binding and the id), where it runs
in a jailed child of its own like any script
(``supervisor/calls/dynamic_workers.py``). The code travels only when the
supervisor has none for that id: this child calls ``callback`` (sync or async,
as ``create_proxy`` wraps it) the first time it uses the id, hands the code
over (``put``), and again if the supervisor has since let it go.
"""

from __future__ import annotations

import inspect
import secrets
from typing import Any

from .. import workers
from . import JsException, call, kind, plain

#: (binding, id) whose code this child has handed over.
_handed_over: set[tuple[str, str]] = set()


@kind("worker_loader")
class WorkerLoader:
    """``env.LOADER``."""

    def __init__(self, name: str) -> None:
        self._name = name

    def get(self, worker_id: str, callback: Any) -> WorkerStub:
        """The dynamic worker ``worker_id``; ``callback()`` gives its code when needed."""
        if not isinstance(worker_id, str) or not worker_id:
            raise TypeError("LOADER.get() needs the worker's id, a non-empty string")
        if not callable(callback):
            raise TypeError("LOADER.get() needs a callback that returns the worker's code")
        return WorkerStub(self._name, worker_id, callback)

    def load(self, code: Any) -> WorkerStub:
        """A fresh dynamic worker from ``code``, cached under no id of the script's."""
        return WorkerStub(self._name, f"load:{secrets.token_hex(16)}", lambda: code)

    def __repr__(self) -> str:
        return f"<WorkerLoader {self._name}>"


class WorkerStub:
    """What ``get``/``load`` return: ``getEntrypoint()`` gives the worker's fetcher."""

    def __init__(self, binding: str, worker_id: str, callback: Any) -> None:
        self._binding = binding
        self._id = worker_id
        self._callback = callback

    def getEntrypoint(self, name: str | None = None, options: Any = None) -> Entrypoint:  # noqa: N802
        if name is not None:
            raise TypeError("named entrypoints of dynamic workers are not supported by Corral yet: "
                            "use getEntrypoint() for the worker's default export")
        return Entrypoint(self)

    get_entrypoint = getEntrypoint

    async def _hand_over(self) -> None:
        code = self._callback()
        if inspect.isawaitable(code):
            code = await code
        await call(self._binding, "put", [self._id, plain(code)])
        _handed_over.add((self._binding, self._id))

    def __repr__(self) -> str:
        return f"<WorkerStub {self._id!r}>"


class Entrypoint:
    """The dynamic worker's default entrypoint: ``await fetch(request)``."""

    def __init__(self, stub: WorkerStub) -> None:
        self._stub = stub

    async def fetch(self, resource: Any, *extra: Any, method: str | None = None, headers: Any = None,
                    body: Any = None, redirect: str | None = None, **init: Any) -> workers.Response:
        workers.one_positional(extra)
        request = workers.as_request(resource, method, headers, body, redirect)
        stub = self._stub
        if (stub._binding, stub._id) not in _handed_over:
            await stub._hand_over()
        sent = request._body
        try:
            return await workers._runtime.sub_request("loader", request, binding=stub._binding,
                                                      target=stub._id)
        except workers.PlatformError as exc:
            # The supervisor let the code go since: hand it over again and
            # retry, when the request can be sent twice.
            if exc.name != "CodeNeeded" or not (sent is None or isinstance(sent, bytes)):
                raise
        _handed_over.discard((stub._binding, stub._id))
        await stub._hand_over()
        request._body, request._body_used = sent, False
        return await workers._runtime.sub_request("loader", request, binding=stub._binding,
                                                  target=stub._id)

    def __getattr__(self, name: str) -> Any:
        """An RPC method: Cloudflare's entrypoint Fetcher calls it on the
        loaded worker; Corral has only its fetch. Said as such, rather than a
        bare AttributeError."""
        if name.startswith("_"):
            raise AttributeError(name)
        raise JsException("TypeError", f"RPC on a Dynamic Worker's entrypoint ({name}()) is not "
                                       "supported by Corral yet: call its fetch()")

    def __repr__(self) -> str:
        return f"<Entrypoint of {self._stub._id!r}>"

