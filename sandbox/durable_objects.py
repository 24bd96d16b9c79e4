"""Durable Objects inside a child: the live instances and their ``ctx``.

The supervisor sends a :class:`protocol.messages.DurableObjectEvent` per call,
in arrival order; each passes the object's :class:`InputGate` here, which
keeps new events out while the object is constructed and while it waits for
its storage, as Cloudflare's does. The first event for an
id constructs ``cls(ctx, env)`` (the class named by the binding, from the
script's main module); later events reuse the instance until ``#evict`` (idle)
or the child goes. ``ctx.storage`` calls name :data:`DO_STORAGE`: the
supervisor knows which object's storage from the invocation that makes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import inspect
from collections.abc import Callable, Coroutine, Generator, Iterator
from typing import Any, NoReturn

import msgspec

from protocol.messages import DO_STORAGE, DurableObjectEvent, WebSocketEvent

from . import events, websockets, workers
from .bindings import AttrDict, AttrList, call, js_double, js_key, js_keys, options, webidl_int
from .bindings.durable_objects import (
    DurableObjectId,
    decode,
    decode_args,
    encode,
    encode_rpc,
    rpc_response,
)
from .pyodide_shim import JsException
from .run_sync import can_suspend, run_sync

#: put()'s value when none was given (JavaScript's undefined), apart from None.
_UNSET: Any = object()

#: What the SQLite-only APIs raise in an object of a KV-backed class (made by a
#: ``new_classes`` migration): Cloudflare's words, workerd's actor-state.c++
#: (getSqliteDb(), getSqliteKv() and transactionSync() where the object is not
#: SQLite-backed). The attributes are there; using them raises, as there.
NO_SQL = ("This Durable Object is not backed by SQLite storage, so the SQL API is not available. SQL can be "
          "enabled on a new Durable Object class by using the `new_sqlite_classes` instead of `new_classes` "
          "under `[[migrations]]` in your wrangler.toml, but an already-deployed class cannot be converted "
          "to SQLite (except by deleting the existing data).")
NO_SYNC_KV = ("The storage.kv (synchronous KV) API is only available for SQLite-backed Durable Objects, but "
              "this object's namespace is not declared to use SQLite. You can use the older, asyncronous "
              "interface via methods of `storage` itself (e.g. `storage.get()`). SQLite can be enabled on a "
              "new Durable Object class by using the `new_sqlite_classes` instead of `new_classes` under "
              "`migrations` in your wrangler.jsonc or wrangler.toml, but an already-deployed class cannot be "
              "converted to SQLite (except by deleting the existing data).")
NO_SYNC_TRANSACTION = "Durable Object is not backed by SQL."
#: How long a blockConcurrencyWhile() callback may run before the object is
#: reset (workerd's io-context.h, Cloudflare's documented 30 seconds).
BLOCK_CONCURRENCY_TIMEOUT_S = 30.0
BLOCK_CONCURRENCY_TIMEOUT = ("A call to blockConcurrencyWhile() in a Durable Object waited for too long. "
                             "The call was canceled and the Durable Object was reset.")


def _values(pairs: list[list[Any]]) -> dict[str, Any]:
    return {k: decode(v) for k, v in pairs}


class InputGate:
    """An object's input gate, as Cloudflare keeps it: a new event for the
    object waits while the gate is closed, which it is while the object is
    constructed, while a ``blockConcurrencyWhile`` callback or a
    ``transaction()`` runs, and while a storage call is under way. While the
    object awaits anything else (a fetch, an RPC call to another object, a
    timer), events come in: two objects calling each other back go on rather
    than wait for each other until their wall-time limit."""

    __slots__ = ("_closers", "_opened")

    def __init__(self) -> None:
        self._closers = 0
        self._opened: asyncio.Event | None = None

    def close(self) -> None:
        self._closers += 1

    def reopen(self) -> None:
        self._closers -= 1
        if self._closers == 0 and self._opened is not None:
            self._opened.set()
            self._opened = None

    async def enter(self) -> None:
        """Wait until the gate is open (at once, when it is)."""
        while self._closers:
            if self._opened is None:
                self._opened = asyncio.Event()
            await self._opened.wait()

    @contextlib.contextmanager
    def closed(self) -> Iterator[None]:
        self.close()
        try:
            yield
        finally:
            self.reopen()


def eager(method: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., asyncio.Future]:
    """A storage call starts when it is made, as a JavaScript promise does, so
    one nobody awaits still happens (``ctx.storage.setAlarm(t)`` without
    ``await``, as workerd's own Python Durable Object test arms its alarm), and
    the invocation that made it waits for it before it ends. Awaiting it gives
    its result as before."""

    @functools.wraps(method)
    def start(self: DurableObjectStorage, *args: Any, **keywords: Any) -> asyncio.Future:
        gate = self._gate
        gate.close()  # from the call on, as workerd's input lock is taken
        task = asyncio.ensure_future(method(self, *args, **keywords))
        # Reopened by the first of the task's callbacks: an event waiting at
        # the gate is woken after the caller's own continuation, which runs
        # first, as workerd delivers a storage result before any new event (a
        # read-modify-write of get() then put() is not interleaved).
        task.add_done_callback(lambda _: gate.reopen())
        if workers._runtime is not None:
            # Made before the invocation ends, so it is made as part of it.
            workers._runtime.hold(task)
        return task

    return start


def _now(gate: InputGate, awaitable: Any, what: str) -> Any:
    """Wait for a storage call from synchronous code, as Cloudflare's SQLite-backed
    storage answers ``sql.exec()`` and ``storage.kv`` calls at once: the
    invocation's greenlet waits (:func:`run_sync`), the child's other work goes
    on, but no new event reaches the object (its input gate is closed)."""
    if not can_suspend():
        awaitable.close()
        raise RuntimeError(
            f"{what} is synchronous and works while the object runs (its constructor, "
            "fetch, alarm, RPC methods, blockConcurrencyWhile, waitUntil work and the tasks "
            "they start), not at import time")
    with gate.closed():
        return run_sync(awaitable)


class SqlCursor:
    """``ctx.storage.sql.exec(...)``'s result: rows, column names, counts."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.columnNames = AttrList(raw["columns"])  # noqa: N815 - Workers API name
        # workerd hands every number to JavaScript as a double (sql.c++: an
        # int64 "will become BigInt ... We will coerce to a double here"), and
        # Pyodide gives a Number back as int when it is a safe integer, else
        # as float: REAL 2.0 is 2, INTEGER 2**53 + 1 is 9007199254740992.0.
        self._rows = [[js_double(v) for v in row] for row in raw["rows"]]
        self.rowsRead = raw["rowsRead"]  # noqa: N815
        self.rowsWritten = raw["rowsWritten"]  # noqa: N815
        self._next = 0
        self.column_names, self.rows_read, self.rows_written = (self.columnNames, self.rowsRead,
                                                                self.rowsWritten)

    def _row(self, row: list[Any]) -> AttrDict:
        return AttrDict(zip(self.columnNames, row, strict=True))

    def toArray(self) -> AttrList:  # noqa: N802 - Workers API name
        rows, self._next = self._rows[self._next:], len(self._rows)
        return AttrList(self._row(r) for r in rows)

    to_array = toArray

    def one(self) -> AttrDict:
        rest = self._rows[self._next:]
        if not rest:
            raise JsException("Error", "Expected exactly one result from SQL query, but got no results.")
        if len(rest) > 1:
            raise JsException("Error", "Expected exactly one result from SQL query, but got multiple results.")
        self._next = len(self._rows)
        return self._row(rest[0])

    def raw(self) -> RawRows:
        """The rows as lists, an iterator over the same rows as the cursor."""
        return RawRows(self)

    def next(self) -> AttrDict:
        if self._next >= len(self._rows):
            return AttrDict(done=True, value=None)
        self._next += 1
        return AttrDict(done=False, value=self._row(self._rows[self._next - 1]))

    def __iter__(self) -> Any:
        while self._next < len(self._rows):
            self._next += 1
            yield self._row(self._rows[self._next - 1])

    def __await__(self) -> Generator[Any, None, SqlCursor]:
        """``await sql.exec(...)`` (code written for an asynchronous exec) gets the cursor too."""
        return _itself(self).__await__()


class RawRows:
    """``cursor.raw()``: an iterator of rows as lists, and, as a JavaScript
    iterator is (ES2025's iterator helpers), one with ``toArray()``: django-cf's
    Durable Object backend reads every query as ``exec(...).raw().toArray().to_py()``.
    ``next()`` answers as JavaScript's does (``done``, ``value``)."""

    def __init__(self, cursor: SqlCursor) -> None:
        self._cursor = cursor

    def __iter__(self) -> RawRows:
        return self

    def __next__(self) -> AttrList:
        cursor = self._cursor
        if cursor._next >= len(cursor._rows):
            raise StopIteration
        cursor._next += 1
        return AttrList(cursor._rows[cursor._next - 1])

    def next(self) -> AttrDict:
        try:
            return AttrDict(done=False, value=self.__next__())
        except StopIteration:
            return AttrDict(done=True, value=None)

    def toArray(self) -> AttrList:  # noqa: N802 - JavaScript's name
        return AttrList(self)

    to_array = toArray


async def _itself(cursor: SqlCursor) -> SqlCursor:
    return cursor


def _sql_binding(value: Any) -> Any:
    """One ``sql.exec()`` binding as workerd takes it: its type is
    ``OneOf<ArrayBuffer, String, double>`` (sql.h ``BindingValue``), and Web
    IDL's union conversion (jsg/value.h) turns a boolean, which matches none
    of them, into a string: True binds the TEXT ``'true'``, not 1."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


class SqlStorage:
    """``ctx.storage.sql``: SQLite on the object's own database, synchronous as on Cloudflare."""

    def __init__(self, gate: InputGate, sqlite: bool = True) -> None:
        self._gate = gate
        self._sqlite = sqlite

    def _check(self) -> None:
        if not self._sqlite:
            raise JsException("Error", NO_SQL)

    def exec(self, query: str, *bindings: Any) -> SqlCursor:
        self._check()
        if not isinstance(query, str):
            raise TypeError("sql.exec() takes the SQL text first")
        binds = [_sql_binding(b) for b in bindings]
        value, _ = _now(self._gate, call(DO_STORAGE, "sql", [query, binds]), "sql.exec()")
        return SqlCursor(value)

    @property
    def databaseSize(self) -> int:  # noqa: N802 - Workers API name
        """Bytes the object's SQLite database takes."""
        self._check()
        value, _ = _now(self._gate, call(DO_STORAGE, "databaseSize", []), "sql.databaseSize")
        return value

    database_size = databaseSize

    def __repr__(self) -> str:
        return "<SqlStorage>"


def _ms(when: Any) -> float:
    if isinstance(when, datetime.datetime):
        return when.timestamp() * 1000
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        raise TypeError("setAlarm() takes ms since the epoch or a datetime")
    return float(when)


class SyncKv:
    """``ctx.storage.kv``: the synchronous key-value API of SQLite-backed objects.

    The same keys and values as ``ctx.storage.get/put`` (Cloudflare keeps both
    in the object's hidden ``__cf_kv`` table)."""

    def __init__(self, gate: InputGate, sqlite: bool = True) -> None:
        self._gate = gate
        self._sqlite = sqlite

    def _check(self) -> None:
        if not self._sqlite:
            raise JsException("Error", NO_SYNC_KV)

    def get(self, key: str) -> Any:
        self._check()
        value, _ = _now(self._gate, call(DO_STORAGE, "get", [js_key(key)]), "storage.kv.get()")
        return decode(value[0][1]) if value else None

    def put(self, key: str, value: Any) -> None:
        self._check()
        _now(self._gate, call(DO_STORAGE, "put", [[[js_key(key), encode(value, "kv.put()")]]]),
             "storage.kv.put()")

    def delete(self, key: str) -> bool:
        self._check()
        value, _ = _now(self._gate, call(DO_STORAGE, "delete", [js_key(key)]), "storage.kv.delete()")
        return bool(value)

    def list(self, options_: Any = None, **keywords: Any) -> Iterator[AttrList]:
        """``[key, value]`` pairs in key order (``prefix``, ``start``, ``end``, ``limit``, ``reverse``)."""
        self._check()
        value, _ = _now(self._gate, call(DO_STORAGE, "list", [_list_options(options_, keywords, "kv.list()")]),
                        "storage.kv.list()")
        return iter([AttrList([k, decode(v)]) for k, v in value])

    def __repr__(self) -> str:
        return "<SyncKvStorage>"


def _list_options(options_: Any, keywords: dict[str, Any], where: str) -> dict[str, Any]:
    opts = options(options_, keywords, where)
    if "limit" in opts:
        opts["limit"] = webidl_int(opts["limit"])
    limit = opts.get("limit")
    if limit is not None and not isinstance(limit, bool) and isinstance(limit, (int, float)) \
            and limit <= 0:
        # workerd's own check and words (actor-state.c++), before the call goes out.
        raise JsException("TypeError", "List limit must be positive.")
    if opts.get("start") is not None and opts.get("startAfter") is not None:
        # workerd's words (actor-state.c++ list()): the two name the same bound.
        raise JsException("TypeError", "list() cannot be called with both start and startAfter values.")
    return {k: opts[k] for k in ("prefix", "start", "startAfter", "end", "limit", "reverse")
            if opts.get(k) is not None}


class DurableObjectStorage:
    """``ctx.storage``: Cloudflare's key-value API (asynchronous, and synchronous
    as ``kv``), SQL and alarms."""

    def __init__(self, gate: InputGate, sqlite: bool = True) -> None:
        self._gate = gate
        self._sqlite = sqlite
        self.sql = SqlStorage(gate, sqlite)
        self.kv = SyncKv(gate, sqlite)

    @eager
    async def get(self, keys: Any, options_: Any = None, **keywords: Any) -> Any:
        keys = js_keys(keys)
        if isinstance(keys, list):
            value, _ = await call(DO_STORAGE, "get", [keys])
            return _values(value)
        value, _ = await call(DO_STORAGE, "get", [keys])
        return decode(value[0][1]) if value else None

    def put(self, key: Any, value: Any = _UNSET, options_: Any = None, **keywords: Any) -> asyncio.Future:
        """Its keys and values are checked and serialized at the call, as
        workerd does: one that cannot be stored raises here, awaited or not
        (in the started call, a put nobody awaited failed without a word)."""
        if isinstance(key, dict):
            entries = [[js_key(k), encode(v, "put()")] for k, v in key.items()]
        elif value is _UNSET:
            # put(key) with no value: JavaScript's undefined, which workerd refuses.
            raise JsException("TypeError", "put() called with undefined value.")
        else:
            entries = [[js_key(key), encode(value, "put()")]]
        return self._put(entries)

    @eager
    async def _put(self, entries: list[list[Any]]) -> None:
        await call(DO_STORAGE, "put", [entries])

    @eager
    async def delete(self, keys: Any, options_: Any = None, **keywords: Any) -> Any:
        value, _ = await call(DO_STORAGE, "delete", [js_keys(keys)])
        return value

    @eager
    async def deleteAll(self, options_: Any = None, **keywords: Any) -> None:  # noqa: N802
        await call(DO_STORAGE, "deleteAll", [])

    delete_all = deleteAll

    @eager
    async def list(self, options_: Any = None, **keywords: Any) -> dict[str, Any]:
        value, _ = await call(DO_STORAGE, "list", [_list_options(options_, keywords, "storage.list()")])
        return _values(value)

    @eager
    async def getAlarm(self, options_: Any = None, **keywords: Any) -> float | None:  # noqa: N802
        value, _ = await call(DO_STORAGE, "getAlarm", [])
        return value

    @eager
    async def setAlarm(self, scheduled_time: Any, options_: Any = None, **keywords: Any) -> None:  # noqa: N802
        when = _ms(scheduled_time)
        if when <= 0:
            # workerd refuses the epoch and before it, in these words (actor-state.c++).
            raise JsException("TypeError", "setAlarm() cannot be called with an alarm time <= 0")
        await call(DO_STORAGE, "setAlarm", [when])

    @eager
    async def deleteAlarm(self, options_: Any = None, **keywords: Any) -> None:  # noqa: N802
        await call(DO_STORAGE, "deleteAlarm", [])

    get_alarm, set_alarm, delete_alarm = getAlarm, setAlarm, deleteAlarm

    async def transaction(self, closure: Any) -> Any:
        """``closure(txn)`` all or nothing: what it writes is kept only if it
        returns without raising and without ``txn.rollback()``. Nests. No new
        event reaches the object meanwhile: its writes would join the
        transaction."""
        with self._gate.closed():
            return await self._transaction(closure)

    async def _transaction(self, closure: Any) -> Any:
        await call(DO_STORAGE, "txBegin", [])
        txn = Transaction(self)
        try:
            result = closure(txn)
            if inspect.isawaitable(result):
                result = await result
        except BaseException:
            # If the supervisor cannot hear it (the invocation is over), it
            # abandons the transaction itself at the object's next call.
            with contextlib.suppress(Exception):
                await asyncio.shield(call(DO_STORAGE, "txRollback", []))
            raise
        await call(DO_STORAGE, "txRollback" if txn.rolled_back else "txCommit", [])
        return result

    def transactionSync(self, callback: Any) -> Any:  # noqa: N802 - Workers API name
        """``callback()`` all or nothing, synchronously (its storage calls are
        the synchronous ones: ``sql.exec``, ``kv``)."""
        if not self._sqlite:
            raise JsException("Error", NO_SYNC_TRANSACTION)
        with self._gate.closed():
            return self._transaction_sync(callback)

    def _transaction_sync(self, callback: Any) -> Any:
        run_sync(call(DO_STORAGE, "txBegin", []))
        try:
            result = callback()
        except BaseException:
            run_sync(call(DO_STORAGE, "txRollback", []))
            raise
        run_sync(call(DO_STORAGE, "txCommit", []))
        return result

    transaction_sync = transactionSync

    async def sync(self) -> None:
        """Every write is durable when its call returns."""

    def __repr__(self) -> str:
        return "<DurableObjectStorage>"


class Transaction:
    """``txn`` of ``storage.transaction(closure)``: the storage's own methods
    (they run inside the transaction), plus ``rollback()``."""

    def __init__(self, storage: DurableObjectStorage) -> None:
        self._storage = storage
        self.rolled_back = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def deleteAll(self, options_: Any = None, **keywords: Any) -> NoReturn:  # noqa: N802
        """Refused, as workerd's DurableObjectTransaction refuses it: deleteAll
        is not transactional."""
        raise JsException("Error", "Cannot call deleteAll() within a transaction")

    delete_all = deleteAll

    def rollback(self) -> None:
        """Nothing the transaction wrote is kept, whatever the closure does next."""
        self.rolled_back = True


class DurableObjectAborted(BaseException):
    """``ctx.abort(reason)``: the object is reset and the call that aborted it
    fails. As on Cloudflare, where abort unwinds the isolate, the handler's
    own ``except Exception`` cannot catch it."""


class AutoResponse:
    """An object's ``setWebSocketAutoResponse`` pair, and when each socket was last answered by it."""

    __slots__ = ("pair", "answered", "event_timeout")

    def __init__(self) -> None:
        self.pair: Any = None
        #: setHibernatableWebSocketEventTimeout's value (ms), kept with the sockets.
        self.event_timeout: int | None = None
        self.answered: dict[int, datetime.datetime] = {}


def _tags(tags: Any) -> Iterator[str]:
    """acceptWebSocket's tags, checked as workerd checks them (at most 10
    distinct, each at most 256 characters), in its words."""
    seen: set[str] = set()
    for tag in tags or []:
        if not isinstance(tag, str):
            raise JsException("TypeError", "acceptWebSocket() tags must be strings")
        if tag in seen:
            continue
        if len(seen) >= 10:
            raise JsException("Error", "a Hibernatable WebSocket cannot have more than 10 tags")
        if len(tag) > 256:
            raise JsException("Error", f'"{tag}" is longer than the max tag length (256 characters).')
        seen.add(tag)
        yield tag


class DurableObjectState(workers.Context):
    """``self.ctx`` of a Durable Object: ``id``, ``storage``, ``waitUntil``,
    ``blockConcurrencyWhile``, ``abort``."""

    def __init__(self, invocation: int, object_id: str, name: str | None, gate: InputGate,
                 kv_backed: bool = False) -> None:
        super().__init__(invocation)
        self.id = DurableObjectId(object_id, name)
        self._gate = gate
        self.storage = DurableObjectStorage(gate, sqlite=not kv_backed)
        #: The constructor's blockConcurrencyWhile work (None once it is built).
        self._blocking: list[Any] | None = []
        #: Drops this object's instance (set once it exists; see Objects.serve).
        self._evict: Callable[[], None] | None = None
        #: This object's hibernatable WebSockets: id -> (socket, tags) (see Objects).
        self._websockets: dict[int, tuple[Any, list[str]]] = {}
        #: Its auto-response, kept across its instances as the sockets are (see Objects).
        self._auto: AutoResponse = AutoResponse()

    # -- WebSockets (the hibernation API) ------------------------------------------------
    def acceptWebSocket(self, ws: Any, tags: Any = None) -> None:  # noqa: N802 - Workers API name
        """Accept ``ws`` (a WebSocketPair's server end) for this object: the
        client's messages come to ``webSocketMessage(ws, message)`` and its
        close to ``webSocketClose(ws, code, reason, wasClean)``, even after
        the instance was evicted and built again."""
        tags = list(dict.fromkeys(_tags(tags)))  # duplicates are ignored, as workerd ignores them
        workers._runtime.sockets.accept(ws, hibernate=True)
        self._websockets[ws.id] = (ws, tags)

    def setHibernatableWebSocketEventTimeout(self, timeoutMs: Any = None) -> None:  # noqa: N802, N803
        """How long a hibernatable socket's event may run (ms; None or 0 unsets it).
        Kept and answered back; at most 7 days, as workerd checks."""
        if timeoutMs is not None and (isinstance(timeoutMs, bool) or not isinstance(timeoutMs, (int, float))
                                      or timeoutMs < 0):
            raise JsException("TypeError", "setHibernatableWebSocketEventTimeout() takes a number of "
                                           "milliseconds")
        if timeoutMs and timeoutMs > 604800 * 1000:
            raise JsException("Error", "Event timeout should not exceed 604800000 ms.")
        self._auto.event_timeout = int(timeoutMs) if timeoutMs else None

    def getHibernatableWebSocketEventTimeout(self) -> int | None:  # noqa: N802 - Workers API name
        return self._auto.event_timeout

    set_hibernatable_web_socket_event_timeout = setHibernatableWebSocketEventTimeout
    get_hibernatable_web_socket_event_timeout = getHibernatableWebSocketEventTimeout

    def setWebSocketAutoResponse(self, pair: Any = None) -> None:  # noqa: N802 - Workers API name
        """Answer a hibernatable socket's text message equal to ``pair.request``
        with ``pair.response``, without ``webSocketMessage`` running; None stops it."""
        if pair is not None and not isinstance(pair, websockets.WebSocketRequestResponsePair):
            raise TypeError("setWebSocketAutoResponse() takes a WebSocketRequestResponsePair or None")
        if pair is not None:
            limit = websockets.MAX_AUTO_RESPONSE_BYTES
            for what, text in (("request", pair.request), ("response", pair.response)):
                size = len(text.encode())
                if size > limit:  # workerd's check and words (a RangeError, here, not at construction)
                    raise JsException("RangeError", f"{what.capitalize()} cannot be larger than {limit} "
                                                    f"bytes. A {what} of size {size} was provided.")
        self._auto.pair = pair

    def getWebSocketAutoResponse(self) -> Any:  # noqa: N802 - Workers API name
        return self._auto.pair

    def getWebSocketAutoResponseTimestamp(self, ws: Any) -> datetime.datetime | None:  # noqa: N802
        """When ``ws`` was last answered by the auto-response (None: never)."""
        return self._auto.answered.get(getattr(ws, "id", 0))

    def getWebSockets(self, tag: str | None = None) -> list[Any]:  # noqa: N802 - Workers API name
        return [ws for ws, tags in self._websockets.values()
                if ws.readyState == websockets.OPEN and (tag is None or tag in tags)]

    def getTags(self, ws: Any) -> list[str]:  # noqa: N802 - Workers API name
        entry = self._websockets.get(getattr(ws, "id", 0))
        if entry is None:
            raise JsException("Error", "you must call 'acceptWebSocket()' before attempting to access "
                                       "the tags of a WebSocket.")  # workerd's words (web-socket.c++)
        return list(entry[1])

    def abort(self, reason: str | None = None) -> NoReturn:
        """Reset the object: its instance (and every value it holds in memory)
        is dropped, the next event builds a new one over the same storage, and
        the current call fails with ``reason``."""
        if self._evict is not None:
            self._evict()
        raise DurableObjectAborted(reason or "the Durable Object was aborted")

    def waitUntil(self, awaitable: Any) -> None:  # noqa: N802 - Workers API name
        workers._runtime.wait_until(workers.current_invocation.get(), awaitable)

    wait_until = waitUntil

    def blockConcurrencyWhile(self, callback: Any) -> Any:  # noqa: N802 - Workers API name
        """Run ``callback()``; no new event reaches the object until it is done
        (in the constructor: before the first one). A callback that raises, or
        runs past :data:`BLOCK_CONCURRENCY_TIMEOUT_S`, resets the object, as
        Cloudflare does: its instance is dropped (the next event constructs it
        afresh from storage) and the call awaiting it fails, whatever it
        catches (the input gate is broken: nothing may go on with the state
        the callback left half made)."""
        try:
            result = callback()
        except Exception as exc:
            self._reset(exc)
        future = asyncio.ensure_future(self._critical(result)) if inspect.isawaitable(result) else None
        if future is not None:
            self._gate.close()
            future.add_done_callback(lambda _: self._gate.reopen())
            if self._blocking is not None:  # in the constructor: the first event waits for it
                self._blocking.append(future)
            return future
        done = asyncio.get_running_loop().create_future()
        done.set_result(result)
        return done

    block_concurrency_while = blockConcurrencyWhile

    async def _critical(self, work: Any) -> Any:
        """``blockConcurrencyWhile``'s awaited callback, cut and reset at its time limit."""
        try:
            return await asyncio.wait_for(work, BLOCK_CONCURRENCY_TIMEOUT_S)
        except TimeoutError:
            self._reset(JsException("Error", BLOCK_CONCURRENCY_TIMEOUT))
        except Exception as exc:
            self._reset(exc)

    def _reset(self, exc: BaseException) -> NoReturn:
        """Drop the instance, and fail the caller with ``exc`` (uncatchable, as ``abort``)."""
        if self._evict is not None:
            self._evict()
        name = exc.name if isinstance(exc, JsException) else type(exc).__name__
        raise DurableObjectAborted(f"{name}: {exc}") from exc


class Objects:
    """The live Durable Object instances of this child."""

    def __init__(self) -> None:
        self.instances: dict[tuple[str, str], Any] = {}
        #: Each object's input gate, kept across its instances.
        self.gates: dict[tuple[str, str], InputGate] = {}
        #: Instances being constructed: the events that come meanwhile wait for them.
        self.constructing: dict[tuple[str, str], asyncio.Future] = {}
        #: Each object's accepted WebSockets, kept across its instances (hibernation).
        self.websockets: dict[tuple[str, str], dict[int, tuple[Any, list[str]]]] = {}
        #: Each object's auto-response, kept across its instances as its sockets are.
        self.auto_responses: dict[tuple[str, str], AutoResponse] = {}

    def _drop(self, key: tuple[str, str], instance: Any) -> None:
        """Forget ``instance`` (an aborted object), unless a newer one took its place."""
        if self.instances.get(key) is instance:
            del self.instances[key]

    async def serve(self, module: Any, event: DurableObjectEvent, inv: int, env: Any,
                    request: workers.Request) -> workers.Response:
        key = (event.class_name, event.object_id)
        if event.method == "#evict":
            self.instances.pop(key, None)
            return workers.Response(status=204)
        socket_event = None
        if event.method == "#webSocket":
            socket_event = msgspec.msgpack.decode(await request.bytes())
            if self._auto_answered(key, socket_event):
                return workers.Response(status=204)  # the object is not woken (nor constructed)
        while True:
            instance = self.instances.get(key)
            if instance is None:
                instance = await self._instance(module, event, key, inv, env)
            await self.gates[key].enter()
            if self.instances.get(key) is instance:
                break
            # Reset while this event waited at its gate (a blockConcurrencyWhile
            # that failed, an abort): it goes to a new instance, as on Cloudflare.
        if event.method == "fetch":
            handler = getattr(instance, "fetch", None)
            if not callable(handler):
                raise TypeError(f"Durable Object class {event.class_name} has no fetch handler")
            response = await _call(handler, request)
            while inspect.isawaitable(response):  # ``return fetch(...)`` un-awaited, as a Worker's fetch may
                response = await response
            if not isinstance(response, workers.Response):
                raise TypeError(f"the Durable Object's fetch returned {type(response).__name__}, "
                                "not a Response")
            return response
        if socket_event is not None:
            await self._websocket_event(key, instance, socket_event)
            return workers.Response(status=204)
        if event.method == "alarm":
            handler = getattr(instance, "alarm", None)
            if not callable(handler):
                raise TypeError(f"Durable Object class {event.class_name} has no alarm handler")
            info = AttrDict(retryCount=event.retry_count, isRetry=event.retry_count > 0)
            await _call(handler, info)
            return workers.Response(status=204)
        method = getattr(type(instance), event.method, None)
        if event.method.startswith("_") or not callable(method):
            raise JsException("TypeError", f'The RPC receiver does not implement the method '
                                           f'"{event.method}".')
        result = await _call(getattr(instance, event.method),
                             *decode_args(await request.bytes(), event.functions))
        return rpc_response(*await encode_rpc(result, f"{event.method}() result"))


    async def _instance(self, module: Any, event: DurableObjectEvent, key: tuple[str, str], inv: int,
                        env: Any) -> Any:
        """The object's instance, constructed once: events that come while it
        is (its constructor's blockConcurrencyWhile work may await) wait for
        it, and fail with it if it fails."""
        pending = self.constructing.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        cls = getattr(module, event.class_name, None)
        if not isinstance(cls, type):
            raise TypeError(f"the script defines no Durable Object class {event.class_name!r} "
                            f"(the binding's class_name): define `class {event.class_name}"
                            "(DurableObject)` in its main module")
        gate = self.gates.setdefault(key, InputGate())
        built = self.constructing[key] = asyncio.get_running_loop().create_future()
        try:
            with gate.closed():
                state = DurableObjectState(inv, event.object_id, event.name, gate, event.kv_backed)
                state._websockets = self.websockets.setdefault(key, {})
                state._auto = self.auto_responses.setdefault(key, AutoResponse())
                instance = cls(state, env)
                state._evict = functools.partial(self._drop, key, instance)
                blocking, state._blocking = state._blocking or [], None
                for work in blocking:
                    await work
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                built.cancel()
            else:
                built.set_exception(exc)
                built.exception()  # retrieved: the events waiting raise it themselves
            raise
        finally:
            del self.constructing[key]
        self.instances[key] = instance
        built.set_result(instance)
        return instance

    def _auto_answered(self, key: tuple[str, str], args: list[Any]) -> bool:
        """Answer a hibernatable socket's message that is the object's
        auto-response request, as Cloudflare does: "without waking" the object
        (no constructor run, no handler, no input gate)."""
        ws_id, kind, data, text = args[:4]
        auto = self.auto_responses.get(key)
        entry = self.websockets.get(key, {}).get(ws_id)
        if entry is None or kind != "message" or not text or auto is None or auto.pair is None \
                or websockets.message_of(data, text) != auto.pair.request:
            return False
        entry[0].send(auto.pair.response)
        auto.answered[ws_id] = datetime.datetime.now(datetime.UTC)
        return True

    async def _websocket_event(self, key: tuple[str, str], instance: Any, args: list[Any]) -> None:
        """A hibernatable socket's message, close or error, to the object's handler of it."""
        ws_id, kind, data, text, code, reason, clean = args
        sockets = self.websockets.get(key, {})
        entry = sockets.get(ws_id)
        if entry is None:
            # One the object opened to a server (js.WebSocket.new): its
            # listeners run here, in the object's invocation (its storage).
            await workers._runtime.sockets.deliver(WebSocketEvent(ws_id, kind, data, text, code, reason, clean))
            return
        ws = entry[0]
        if kind == "message":
            handler = getattr(instance, "webSocketMessage", None)
            if callable(handler):
                await _call(handler, ws, websockets.message_of(data, text))
        elif kind == "close":
            del sockets[ws_id]
            workers._runtime.sockets.closed(ws)
            handler = getattr(instance, "webSocketClose", None)
            if callable(handler):
                await _call(handler, ws, code, reason, clean)
        elif kind == "error":
            # The connection failed otherwise than by its client going away (a
            # message over the limit, a protocol error): as workerd's hibernation
            # manager, webSocketError(ws, error), and no webSocketClose after it.
            del sockets[ws_id]
            workers._runtime.sockets.closed(ws)
            handler = getattr(instance, "webSocketError", None)
            if callable(handler):
                await _call(handler, ws, JsException("Error", reason))


async def _call(fn: Any, *args: Any) -> Any:
    if getattr(fn, "__name__", "") == "alarm":
        count = events.positional_arity(fn)  # alarm() may or may not take alarmInfo
        if count is not None:
            args = args[:count]
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result
