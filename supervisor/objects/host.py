"""Live Durable Objects: one instance per id on this host.

An object lives in the child that runs its class's script version, and
its events go on to that child while it lives, retired or not (the pool
keeps one warm child per script, and a gradual deployment's versions take
turns at it); a new version or a dead child starts the object afresh from
its storage. Every event for an object (an RPC call, a ``fetch``, its alarm) is
sent in arrival order, and passes the object's **input gate** in the child
(:class:`sandbox.durable_objects.InputGate`): as on Cloudflare, no new event
gets in while the object is constructed or waits for its storage, and
events do get in while it awaits anything else, so objects that call each
other back (A calls B, which calls A) go on instead of waiting for their
wall-time limit.

An object idle for ``idle_s`` is **evicted**: its instance is dropped in the
child (``#evict``); its storage stays, and the next call constructs it again.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import msgspec
import trio

from protocol.messages import DurableObjectEvent, ExceptionInfo
from supervisor.bindings.base import BindingError
from supervisor.log import log, warn

#: Largest RPC result an object may return (msgpack-encoded).
MAX_RESULT_BYTES = 32 * 1024 * 1024


class ObjectKey(NamedTuple):
    namespace: str
    script: str
    class_name: str
    object_id: str


class LiveObject:
    """What the supervisor knows of one live object."""

    __slots__ = ("last_used", "child", "waiting", "placing", "stale_since", "drained", "draining")

    def __init__(self) -> None:
        self.last_used = trio.current_time()
        self.child: Any = None  # the child that holds its instance (see _holding)
        self.waiting = 0
        #: Set while an event finds the object a child: the events beside it
        #: wait for that child rather than each starting one.
        self.placing: trio.Event | None = None
        #: Since when its events have been of a newer version than its child's.
        self.stale_since: float | None = None
        #: Set once only events waiting for it are left (see ObjectHost._deliver).
        self.drained: trio.Event | None = None
        self.draining = 0


class Runtime:
    """What the host needs of the supervisor, handed in once it exists."""

    def __init__(self, pool: Any, scripts: Any, limits: Any, on_trace: Callable[[Any], None]) -> None:
        self.pool = pool
        self.scripts = scripts
        self.limits = limits
        self.on_trace = on_trace


class ObjectHost:
    """The live objects of this supervisor."""

    def __init__(self, idle_s: float, update_delay_s: float = 300.0) -> None:
        self.idle_s = idle_s
        self.update_delay_s = update_delay_s
        self.runtime: Runtime | None = None
        self.live: dict[ObjectKey, LiveObject] = {}
        #: Reads a script's KV-backed classes (supervisor.bindings.do_backends);
        #: None (no storage behind the host): every class is SQLite-backed.
        self.load_kv_classes: Callable[[str, str], Awaitable[frozenset[str]]] | None = None
        #: Its answers, by (namespace, script), until the script's migrations change them.
        self.kv_classes: dict[tuple[str, str], frozenset[str]] = {}

    def attach(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def record_of(self, namespace: str, script: str, sticky: str = "") -> Any:
        """The class script's record; an object's (``sticky``: its class and
        id) is the same version for as long as a gradual deployment lasts:
        Cloudflare runs one version of each object at a time (a random pick
        per event ran it in both at once, and its writes were lost)."""
        assert self.runtime is not None, "ObjectHost used before attach()"
        record = await self.runtime.scripts.load(namespace, script, sticky)
        if record is None:
            raise BindingError(f"Durable Object class script {script!r} does not exist "
                               f"(the binding's script_name)")
        return record

    async def invoke(self, key: ObjectKey, event: DurableObjectEvent, parent: Any,
                     http: tuple[bytes, str, list, Any] | None = None, args: bytes = b"",
                     trace: bool = False, delivered: trio.Event | None = None, rpc: Any = None,
                     returned: list[int] | None = None) -> Any:
        """Deliver ``event`` to the object (its input gate is in the child).

        Returns the finished-head invocation (a ``fetch``: the response; its
        body streams after the gate opens) or, for an RPC call, the decoded
        result bytes as ``bytes``. The object's failure is a BindingError
        with the tenant's exception name and message.
        """
        assert self.runtime is not None
        record = await self.record_of(key.namespace, key.script, f"{key.class_name}\0{key.object_id}")
        if key.class_name in await self._kv_classes_of(key.namespace, key.script):
            event = msgspec.structs.replace(event, kv_backed=True)
        obj = self.live.get(key)
        if obj is None:
            obj = self.live[key] = LiveObject()
        obj.waiting += 1  # not evictable while an event is on its way or under way
        try:
            return await self._deliver(key, obj, record, event, parent, http, args, trace, delivered,
                                       rpc, returned)
        finally:
            obj.waiting -= 1
            obj.last_used = trio.current_time()
            if obj.drained is not None and obj.waiting <= obj.draining:
                drained, obj.drained = obj.drained, None
                drained.set()  # only events waiting for the old instance's end are left

    async def _deliver(self, key: ObjectKey, obj: LiveObject, record: Any, event: DurableObjectEvent,
                       parent: Any, http: tuple[bytes, str, list, Any] | None, args: bytes,
                       trace: bool, delivered: trio.Event | None, rpc: Any = None,
                       returned: list[int] | None = None) -> Any:

        rt = self.runtime
        assert rt is not None
        method, url, headers, body = http or (b"POST", f"https://{key.object_id}.do/{event.method}",
                                              [], args or None)
        limits = rt.limits.defaults_for(record)
        while True:
            busy = obj.waiting - obj.draining > 1
            if self._outdated(obj, record) and busy:
                # Kept busy past update_delay_s on its old code: the next events
                # wait for those under way, then start it in the new version
                # (one instance at a time, and a deploy does take effect).
                obj.draining += 1
                try:
                    if obj.drained is None:
                        obj.drained = trio.Event()
                    await obj.drained.wait()
                finally:
                    obj.draining -= 1
                continue
            holder = _holding(obj.child, record, busy=busy)
            if holder is not None:  # where the instance lives, retired or not: one instance per id
                inv = rt.pool.start(holder, record, method, url, headers, body, limits, parent=parent,
                                    event=event, rpc=rpc)
                break
            if obj.placing is not None:  # another event is finding the object a child: that one
                await obj.placing.wait()
                continue
            placing = obj.placing = trio.Event()
            try:
                inv = await rt.pool.invoke(record, method, url, headers, body, limits, parent=parent,
                                           event=event, rpc=rpc)
                obj.child = inv.child
            finally:
                obj.placing = None
                placing.set()
            break
        if delivered is not None:
            delivered.set()  # with the object's child now: the caller's next call may follow
        if trace:
            inv.on_done = rt.on_trace
        await inv.wait_head()
        if inv.error is not None:
            raise _failure(inv.error)
        if http is not None:
            return inv
        if returned is not None and inv.rpc is not None:
            returned.extend(inv.rpc.returned)
        from supervisor.pool.bodies import BodyError, read_all
        if inv.body is None:
            return b""
        try:
            return await read_all(inv.body, MAX_RESULT_BYTES)
        except BodyError as exc:
            raise BindingError(f"the Durable Object's result could not be read: {exc}") from None

    async def _kv_classes_of(self, namespace: str, script: str) -> frozenset[str]:
        """The KV-backed classes of ``script``: every event of one of their
        objects says so, and the object's storage refuses what such a class has not."""
        known = self.kv_classes.get((namespace, script))
        if known is None:
            known = await self.load_kv_classes(namespace, script) if self.load_kv_classes else frozenset()
            self.kv_classes[(namespace, script)] = known
        return known

    def forget_kv_classes(self, namespace: str, script: str) -> None:
        """``script``'s migrations changed its classes' kinds: read them again."""
        self.kv_classes.pop((namespace, script), None)

    def _outdated(self, obj: LiveObject, record: Any) -> bool:
        """Whether ``obj`` has run an older version than ``record``'s for
        longer than ``update_delay_s`` (Cloudflare's max_delay)."""
        held = obj.child.record if obj.child is not None else None
        if held is None or held.version == record.version or not obj.child.alive:
            obj.stale_since = None
            return False
        now = trio.current_time()
        if obj.stale_since is None:
            obj.stale_since = now
        return now - obj.stale_since >= self.update_delay_s

    def forget_script(self, namespace: str, script: str) -> None:
        """``script`` was deleted: its objects' instances are not kept (its
        children are retired; a call under way finishes on its own)."""
        self.forget_kv_classes(namespace, script)
        for key in [k for k in self.live if k.namespace == namespace and k.script == script]:
            del self.live[key]

    # -- eviction ---------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Evict idle objects, forever."""
        task_status.started()
        period = max(0.05, min(self.idle_s / 2, 5.0)) if math.isfinite(self.idle_s) else 5.0
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for key, obj in list(self.live.items()):
                if obj.waiting or now - obj.last_used < self.idle_s:
                    continue
                del self.live[key]
                self._evict(key, obj)
                log("dobject.evicted", namespace=key.namespace, script=key.script,
                    class_name=key.class_name, object_id=key.object_id)

    def _evict(self, key: ObjectKey, obj: LiveObject) -> None:
        """Drop the instance in its child (if that child still runs and is the
        script's current one); a child already gone took the instance with it."""
        rt = self.runtime
        child = obj.child
        if rt is None or child is None or not child.alive or child.retired:
            return
        record = child.record if hasattr(child, "record") else None
        if record is None:
            return
        try:
            rt.pool.start(child, record, b"POST", f"https://{key.object_id}.do/", [], None,
                          rt.limits.defaults_for(record),
                          event=DurableObjectEvent(key.class_name, key.object_id, "#evict"))
        except Exception as exc:  # noqa: BLE001 - eviction is best effort
            warn("dobject.evict_failed", reason=str(exc))


def _holding(child: Any, record: Any, busy: bool = False) -> Any:
    """The child that holds the object's instance, if it may take its next
    event: alive, not being killed, and running the version the event
    picked, or any version while the object is ``busy`` (another of its
    events on its way or under way).

    Retired children count: the pool keeps one warm child per script, so
    requests alternating between a gradual deployment's versions retire the
    object's child while its calls are under way, and a fresh child of the
    same version would construct the object a second time beside it. And an
    object busy when a new version is deployed runs on in its code, as on
    Cloudflare ("an active Durable Object can continue running its current
    code"): a new-version event built a second instance beside it, and the
    old one's late write won. Once idle, its next event starts it anew."""
    if child is None or not child.alive or child.kill_reason is not None:
        return None
    held = child.record
    return child if held is not None and (busy or held.version == record.version) else None


def _failure(error: ExceptionInfo) -> BindingError:
    return BindingError(error.message, error.name or "Error")
