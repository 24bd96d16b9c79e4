"""Durable Objects: the namespace binding (stubs) and an object's ``ctx.storage``.

``durable_object_namespace``: ``call`` (an RPC method) and ``fetch`` on the
object whose id the child names; the class and the script that defines it
come from the stored binding (``class_name``, ``script_name``, default the
calling script) and the object lives in the caller's dispatch namespace, so
two namespaces never reach each other's objects whatever ids they forge.

``durable_object_storage`` (binding :data:`protocol.messages.DO_STORAGE`):
the storage of the object the supervisor invoked, in a SQLite file per
object (supervisor.objects.storage). Alarms are indexed for the scheduler
(supervisor.objects.alarms) as they are set.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sqlite3
import time
from typing import Any

from protocol.messages import DurableObjectEvent
from supervisor import compat_flags
from supervisor.bindings import Services, do_backends, register, remove_tree
from supervisor.bindings.base import (
    MAX_DATE_MS,
    BindingError,
    Context,
    Reply,
    Scope,
    arg,
    integer,
    object_scope,
    string,
)
from supervisor.objects import storage as st
from supervisor.objects.alarms import MAX_RETRIES, Alarms
from supervisor.objects.host import ObjectHost, ObjectKey
from supervisor.pool import rpc_stubs

ID_RE = re.compile(r"[0-9a-f]{64}")
#: workerd's delete_all_deletes_alarm is on from this compatibility date.
DELETE_ALL_DELETES_ALARM_SINCE = "2026-02-24"
#: Reserved method names an RPC call may not use (they are not the object's methods).
NOT_RPC = frozenset({"fetch", "alarm", "constructor", "webSocketMessage", "webSocketClose",
                     "webSocketError"})


def host_of(services: Services) -> ObjectHost:
    """The one object host of this supervisor (made with the first handler)."""
    host = getattr(services, "objects", None)
    if host is None:
        host = services.objects = ObjectHost(  # type: ignore[attr-defined]
            services.config.durable_object_idle_s, services.config.durable_object_update_delay_s)
        host.load_kv_classes = functools.partial(_kv_classes, services)
    return host


async def _kv_classes(services: Services, namespace: str, script: str) -> frozenset[str]:
    return await services.databases.run(index_path(services), _index_setup, do_backends.kv_classes,
                                        namespace, script)


def alarms_of(services: Services) -> Alarms:
    alarms = getattr(services, "alarms", None)
    if alarms is None:
        alarms = services.alarms = Alarms(services.databases, services.root)  # type: ignore[attr-defined]
    return alarms


def object_path(services: Services, scope: Scope) -> str:
    return services.path("do", scope, "object.sqlite3")


def index_path(services: Services) -> str:
    """The index of every object that has storage, by the script that
    defines its class: object files are named by a hash, and deleting a
    script must find its objects (``purge_script``)."""
    return os.path.join(services.root, "do", "objects.sqlite3")


def _index_setup(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS objects (namespace TEXT, script TEXT, class_name TEXT, "
                 "object_id TEXT, PRIMARY KEY (namespace, script, class_name, object_id)) WITHOUT ROWID")
    # Each script's last applied class migration (supervisor.bindings.do_migrations).
    conn.execute("CREATE TABLE IF NOT EXISTS migration_tags (namespace TEXT, script TEXT, tag TEXT, "
                 "PRIMARY KEY (namespace, script)) WITHOUT ROWID")
    do_backends.setup(conn)  # each class's storage kind, as its migrations made it


def _index_add(conn: sqlite3.Connection, key: tuple[str, str, str, str]) -> None:
    conn.execute("INSERT OR IGNORE INTO objects VALUES (?, ?, ?, ?)", key)


def _index_of_script(conn: sqlite3.Connection, namespace: str, script: str) -> list[tuple[str, ...]]:
    return conn.execute("SELECT namespace, script, class_name, object_id FROM objects "
                        "WHERE namespace = ? AND script = ?", (namespace, script)).fetchall()


def _index_of_class(conn: sqlite3.Connection, namespace: str, script: str, class_name: str,
                    after: str, limit: int) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT object_id FROM objects WHERE namespace = ? AND script = ? AND class_name = ? "
        "AND object_id > ? ORDER BY object_id LIMIT ?", (namespace, script, class_name, after, limit))]


async def objects_of(services: Services, namespace: str, script: str, class_name: str, after: str,
                     limit: int) -> list[tuple[str, bool]]:
    """Up to ``limit`` objects of a class whose storage was opened, by id
    after ``after``, each with whether its storage file is there (Cloudflare's
    ``hasStoredData``; ``deleteAll`` empties the file and keeps it, so such
    an object still says True)."""
    ids = await services.databases.run(index_path(services), _index_setup, _index_of_class,
                                       namespace, script, class_name, after, limit)
    paths = [object_path(services, object_scope(namespace, script, class_name, i)) for i in ids]
    stored = await services.offload.run(lambda: [os.path.exists(path) for path in paths])
    return list(zip(ids, stored, strict=True))


def _forget_migrations(conn: sqlite3.Connection, namespace: str, script: str) -> None:
    conn.execute("DELETE FROM migration_tags WHERE namespace = ? AND script = ?", (namespace, script))
    do_backends.forget(conn, namespace, script)


def _index_drop(conn: sqlite3.Connection, keys: list[tuple[str, ...]]) -> None:
    conn.executemany("DELETE FROM objects WHERE namespace = ? AND script = ? AND class_name = ? "
                     "AND object_id = ?", keys)


async def purge_script(services: Services, namespace: str, script: str) -> int:
    """Delete the storage (and alarms) of every object whose class ``script``
    defines, after the script itself was deleted: a new script given that
    name later starts with no objects, as on Cloudflare, where deleting a
    Worker deletes its Durable Objects with it. The live instances are
    forgotten too. Raises on the first failure, leaving the index rows of
    what is not deleted yet, so a later purge finds them again. The number
    of objects deleted."""
    host_of(services).forget_script(namespace, script)
    alarms = alarms_of(services)
    # A script given the name later starts its class migrations afresh.
    await services.databases.run(index_path(services), _index_setup, _forget_migrations, namespace, script)
    keys = set(await services.databases.run(index_path(services), _index_setup, _index_of_script,
                                            namespace, script))
    keys.update(await alarms.of_script(namespace, script))  # objects older than the index
    for key in sorted(keys):
        path = object_path(services, object_scope(*key))
        await services.databases.forget(path)
        await services.offload.run(remove_tree, os.path.dirname(path))
        await alarms.set(key, None)
        await services.databases.run(index_path(services), _index_setup, _index_drop, [key])
    return len(keys)


def _object_id(value: Any) -> str:
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise BindingError("Invalid Durable Object ID. Durable Object IDs must be 64 hex digits.",
                           "TypeError")
    return value


@register("durable_object_namespace")
class DurableObjectNamespaceHandler:
    """Calls on stubs: ``call(id, name, method, args)`` and ``fetch(id, name, method, url, headers)``."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.host = host_of(services)

    def _key(self, ctx: Context, object_id: str) -> ObjectKey:
        binding = ctx.binding
        script = binding.script_name or ctx.record.name
        return ObjectKey(ctx.record.namespace, script, binding.class_name, object_id)

    async def call(self, ctx: Context, method: str, args: list[Any]) -> Reply:
        if ctx.after is not None:
            await ctx.after.wait()  # the caller's previous call on an object reached it first
        object_id = _object_id(arg(args, 0))
        name = arg(args, 1)
        if name is not None:
            name = string(name, "the object's name")
        key = self._key(ctx, object_id)
        if method == "call":
            rpc = string(arg(args, 2), "the method name")
            if rpc in NOT_RPC or rpc.startswith("_"):
                raise BindingError(f"{rpc!r} cannot be called over RPC", "TypeError")
            packed = arg(args, 3, b"")
            if not isinstance(packed, bytes):
                raise BindingError("RPC arguments must arrive encoded", "TypeError")
            share, handles = _lend(ctx, arg(args, 4, []))
            event = DurableObjectEvent(key.class_name, object_id, rpc, name, functions=handles)
            returned: list[int] = []
            try:
                result = await self.host.invoke(key, event, ctx.invocation, args=packed,
                                                delivered=ctx.delivered, rpc=share, returned=returned)
            except BaseException:
                if share is not None:
                    share.end()  # never delivered, or the call failed: its stubs are disposed
                raise
            # The functions the result carries: the handles the caller now holds.
            return Reply({"functions": returned} if returned else None, result)
        if method == "fetch":
            verb = string(arg(args, 2, "GET"), "the request method").encode()
            url = string(arg(args, 3, ""), "the request url")
            headers = _headers(arg(args, 4, []))
            body, ctx.body = ctx.body, None
            event = DurableObjectEvent(key.class_name, object_id, "fetch", name)
            inv = await self.host.invoke(key, event, ctx.invocation, http=(verb, url, headers, body),
                                         delivered=ctx.delivered)
            head = {"status": inv.status,
                    "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in inv.response_headers]}
            if inv.status_text:  # the object's own reason phrase, its stub's statusText
                head["status_text"] = inv.status_text
            return Reply(head, inv.body)
        raise BindingError(f"DurableObjectNamespace has no method {method!r}", "TypeError")

    def close(self) -> None:
        pass


@register("durable_object_storage")
class DurableObjectStorageHandler:
    """``ctx.storage`` of the invoked object (``ctx.binding`` is its event)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.alarms = alarms_of(services)
        #: Open transactions by object database: the invocation that opened
        #: them and how deep they are nested.
        self.transactions: dict[str, tuple[int, int]] = {}

    async def _run(self, ctx: Context, fn: Any, *args: Any) -> Any:
        path = object_path(self.services, ctx.scope)
        if not self.services.databases.is_open(path):
            # Indexed before its file exists, so no object file is ever
            # missing from the index (once per opening of the file).
            await self.services.databases.run(index_path(self.services), _index_setup, _index_add,
                                              _key(ctx))
        open_ = self.transactions.get(path)
        if open_ is not None and open_[0] != _caller(ctx):
            # Only one event runs in an object at a time: a transaction left
            # open by another invocation belongs to one that ended (or whose
            # child died) before closing it. Nothing of it is kept.
            del self.transactions[path]
            await self.services.databases.run(path, st.setup, st.txn_abandon)
        return await self.services.databases.run(path, st.setup, st.capped, ctx.quota.durable_object_bytes,
                                                 fn, *args)

    async def _transaction(self, ctx: Context, method: str) -> Reply:
        """``txBegin`` opens a (nested) transaction; ``txCommit`` / ``txRollback`` close the innermost."""
        path = object_path(self.services, ctx.scope)
        depth = self.transactions.get(path, (0, 0))[1]
        if method == "txBegin":
            await self._run(ctx, st.txn_begin, depth + 1)
            self.transactions[path] = (_caller(ctx), depth + 1)
            return Reply(depth + 1)
        if depth == 0 or self.transactions[path][0] != _caller(ctx):
            raise BindingError("no transaction is open in this call")
        if depth == 1:
            del self.transactions[path]
        else:
            self.transactions[path] = (_caller(ctx), depth - 1)
        await self.services.databases.run(path, st.setup, st.txn_end, depth, method == "txCommit")
        if method == "txRollback":
            # A setAlarm or deleteAlarm inside it wrote the scheduler's index at
            # once, outside the object's savepoint: put the index back to the
            # alarm the rollback left (it was lost, or fired early).
            await self.alarms.set(_key(ctx), await self._run(ctx, st.get_alarm))
        return Reply(None)

    async def call(self, ctx: Context, method: str, args: list[Any]) -> Reply:
        if method in ("txBegin", "txCommit", "txRollback"):
            return await self._transaction(ctx, method)
        if method == "get":
            keys = arg(args, 0)
            many = isinstance(keys, list)
            found = await self._run(ctx, st.get, st.check_keys(keys) if many else [st.check_key(keys)])
            return Reply([[k, v] for k, v in found])
        if method == "put":
            entries = arg(args, 0)
            if not isinstance(entries, list) or not entries:
                raise BindingError("put() needs a key and a value, or a dict of them", "TypeError")
            if len(entries) > st.MAX_KEYS_PER_CALL:
                raise BindingError(f"Maximum number of pairs exceeded: {st.MAX_KEYS_PER_CALL} per call.",
                                   "RangeError")
            checked = []
            kv_backed = _kv_backed(ctx)
            for entry in entries:
                if not isinstance(entry, list) or len(entry) != 2:
                    raise BindingError("put() entries are [key, value] pairs", "TypeError")
                checked.append((st.check_key(entry[0]), st.check_value(entry[1], kv_backed)))
            await self._run(ctx, st.put, checked)
            return Reply(None)
        if method == "delete":
            keys = arg(args, 0)
            many = isinstance(keys, list)
            count = await self._run(ctx, st.delete, st.check_keys(keys) if many else [st.check_key(keys)])
            return Reply(count if many else count > 0)
        if method == "deleteAll":
            record = ctx.record
            alarm_too = compat_flags.enabled(record.compatibility_date, record.compatibility_flags,
                                             "delete_all_deletes_alarm", "delete_all_preserves_alarm",
                                             DELETE_ALL_DELETES_ALARM_SINCE)
            await self._run(ctx, st.delete_all, alarm_too)
            if alarm_too:
                await self.alarms.set(_key(ctx), None)
            return Reply(None)
        if method == "list":
            opts = arg(args, 0) or {}
            if not isinstance(opts, dict):
                raise BindingError("list() options must be a dict", "TypeError")
            limit = opts.get("limit")
            if limit is not None:
                limit = integer(limit, "limit", 1, 2**31)
            found = await self._run(ctx, st.list_, _opt_str(opts, "prefix"), _opt_str(opts, "start"),
                                    _opt_str(opts, "startAfter"), _opt_str(opts, "end"), limit,
                                    bool(opts.get("reverse")))
            return Reply([[k, v] for k, v in found])
        if method in ("sql", "databaseSize") and _kv_backed(ctx):
            # The child refuses it first, in Cloudflare's words; this is for a child that does not.
            raise BindingError("this Durable Object's class is KV-backed (a new_classes migration "
                               "made it): it has no SQL storage", "Error")
        if method == "sql":
            query = string(arg(args, 0), "the SQL query")
            binds = arg(args, 1, [])
            if not isinstance(binds, list):
                raise BindingError("SQL bindings must be a list", "TypeError")
            return Reply(await self._run(ctx, st.sql_exec, query, binds,
                                         self.services.config.d1_query_ms / 1000.0))
        if method == "databaseSize":
            return Reply(await self._run(ctx, st.database_size))
        if method == "getAlarm":
            when = await self._run(ctx, st.get_alarm)
            event = ctx.binding
            if (when is not None and isinstance(event, DurableObjectEvent) and event.method == "alarm"
                    and when <= now_ms()):
                # The alarm firing now: Cloudflare's getAlarm() inside alarm() is null
                # unless the handler set another (the usual "re-arm if unset" check).
                when = None
            # Milliseconds since the epoch, a whole number as JavaScript's Date holds them.
            return Reply(None if when is None else int(when))
        if method == "setAlarm":
            when = arg(args, 0)
            if isinstance(when, bool) or not isinstance(when, (int, float)):
                raise BindingError("setAlarm() needs a time: ms since the epoch or a datetime",
                                   "TypeError")
            when = float(when)
            if not math.isfinite(when):
                # NaN reached SQLite as NULL (a NOT NULL failure, logged as
                # the platform's); an infinity is no time an alarm can fire at.
                raise BindingError(f"setAlarm() needs a finite time, got {when}", "TypeError")
            if abs(when) > MAX_DATE_MS:
                # 1e300 was stored, and getAlarm()'s int of it no frame could
                # carry: an internal error on every later read of the alarm.
                raise BindingError(f"setAlarm() needs a time a Date can hold (at most {MAX_DATE_MS:.0f} "
                                   f"ms from the epoch), got {when:g}", "RangeError")
            await self._run(ctx, st.set_alarm, when)
            name = ctx.binding.name if isinstance(ctx.binding, DurableObjectEvent) else None
            if name:
                await self._run(ctx, st.remember_name, name)
            await self.alarms.set(_key(ctx), when)
            return Reply(None)
        if method == "deleteAlarm":
            await self._run(ctx, st.set_alarm, None)
            await self.alarms.set(_key(ctx), None)
            return Reply(None)
        raise BindingError(f"DurableObjectStorage has no method {method!r}", "TypeError")

    def close(self) -> None:
        pass


def _headers(value: Any) -> list[tuple[bytes, bytes]]:
    """A stub fetch's headers, ``[[name, value], ...]`` of Latin-1 text (what
    the child's runtime sends): anything else was a TypeError or
    UnicodeEncodeError inside the binding, logged as the platform's failure."""
    if not isinstance(value, list):
        raise BindingError("fetch() headers must be a list of [name, value] pairs", "TypeError")
    out = []
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise BindingError("fetch() headers must be [name, value] pairs of strings", "TypeError")
        try:
            out.append((pair[0].encode("latin-1"), pair[1].encode("latin-1")))
        except UnicodeEncodeError:
            raise BindingError(f"header {pair[0][:80]!r} is not a ByteString", "TypeError") from None
    return out


def _lend(ctx: Context, functions: Any) -> tuple[rpc_stubs.Lent | None, list[int]]:
    """The stubs an RPC call's arguments hand the object (see supervisor.pool.rpc_stubs)."""
    if not functions:
        return None, []
    if ctx.invocation is None:
        raise BindingError("only a request can send functions over RPC", "TypeError")
    try:
        return rpc_stubs.lend(ctx.invocation, functions)
    except rpc_stubs.StubError as exc:
        raise BindingError(exc.message, exc.name) from None


def _kv_backed(ctx: Context) -> bool:
    """Whether the invoked object's class is KV-backed (the supervisor's own
    event says it: see ObjectHost.invoke)."""
    event = ctx.binding
    return isinstance(event, DurableObjectEvent) and event.kv_backed


def _caller(ctx: Context) -> int:
    """The invocation that makes a call (a transaction belongs to it)."""
    return ctx.invocation.id if ctx.invocation is not None else 0


def _key(ctx: Context) -> tuple[str, str, str, str]:
    event: DurableObjectEvent = ctx.binding
    return (ctx.record.namespace, ctx.record.name, event.class_name, event.object_id)


def _opt_str(opts: dict[str, Any], name: str) -> str | None:
    value = opts.get(name)
    return None if value is None else string(value, name)


async def run_alarm(services: Services, key: tuple[str, str, str, str], when: float,
                    retries: int) -> bool:
    """Fire one object's alarm (the scheduler's runner): True once it ran."""
    host = host_of(services)
    scope = object_scope(*key)
    path = object_path(services, scope)
    current = await services.databases.run(path, st.setup, st.get_alarm)
    if current is None:
        return True  # deleted meanwhile (deleteAlarm, deleteAll)
    if current > now_ms() + NOT_DUE_SLACK_MS:
        # The index said sooner than the object's alarm (set, then rolled
        # back): not due yet. Indexed again at its own time; this entry ends.
        await alarms_of(services).set(key, current)
        return True
    # Its name too (kept when the alarm was set), which an instance the
    # alarm constructs keeps in ctx.id.name for its life.
    name = await services.databases.run(path, st.setup, st.name_of)
    event = DurableObjectEvent(key[2], key[3], "alarm", name, retries, current)
    try:
        await host.invoke(ObjectKey(*key), event, None, trace=True)
    except BindingError:
        if retries >= MAX_RETRIES:
            # Given up on, as workerd abandons it: getAlarm() says so (None),
            # so that "set it again if none is set" sets it again.
            await services.databases.run(path, st.setup, st.clear_alarm_if, current)
        return False
    await services.databases.run(path, st.setup, st.clear_alarm_if, current)
    return True


#: How far ahead of now an alarm may be and still fire (the scheduler wakes
#: a little early or late; an alarm is never fired a whole step early).
NOT_DUE_SLACK_MS = 50.0


def now_ms() -> float:
    return time.time() * 1000
