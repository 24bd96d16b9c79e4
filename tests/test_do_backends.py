"""Durable Objects as Cloudflare makes them, through real jailed children:

* a class made by a ``new_classes`` migration is KV-backed: ``ctx.storage.sql``,
  the synchronous ``ctx.storage.kv`` and ``transactionSync`` raise Cloudflare's
  errors, and a value may be at most 128 KiB; ``new_sqlite_classes`` and a
  class no migration names keep all of it (SQLite-backed, as before);
* ``blockConcurrencyWhile(callback)`` whose callback raises resets the
  object (the next event builds a new instance) and fails the call, whatever
  the handler catches;
* a hibernatable WebSocket whose connection fails (a message over the limit,
  a frame no client may send) reaches ``webSocketError``, not ``webSocketClose``,
  as workerd's hibernation manager delivers it.

(The 30-second limit of a blockConcurrencyWhile callback is not exercised:
no test waits 30 seconds, and the limit is a constant in the child.)
"""

from __future__ import annotations

import time

import pytest
from wsproto.events import CloseConnection

from tests import storage_helpers as h
from tests.test_websockets import Client

TENANT = h.EVAL_TENANT.replace("class Default(WorkerEntrypoint):\n    async def fetch(self, request):\n", '''
from workers import DurableObject
from js import WebSocketPair


def _err(e):
    return [getattr(e, "name", type(e).__name__), str(e)]


class Store(DurableObject):
    async def probe(self):
        out = {}
        storage = self.ctx.storage
        for name, attempt in (
                ("sql", lambda: storage.sql.exec("SELECT 7 AS x").one()["x"]),
                ("size", lambda: storage.sql.databaseSize > 0),
                ("kv", lambda: (storage.kv.put("k", 1), storage.kv.get("k"))[1]),
                ("sync_txn", lambda: storage.transactionSync(lambda: "done"))):
            try:
                out[name] = attempt()
            except Exception as e:
                out[name] = _err(e)
        for name, size in (("big", 128 * 1024 + 100), ("fits", 128 * 1024 - 100)):
            try:
                await storage.put(name, "x" * size)
                out[name] = len(await storage.get(name))
            except Exception as e:
                out[name] = _err(e)
        return out

    async def mark(self, value):
        self.marked = value
        await self.ctx.storage.put("kept", value)

    async def marks(self):
        return [getattr(self, "marked", None), await self.ctx.storage.get("kept")]

    async def bcw_raise(self):
        async def callback():
            await self.ctx.storage.put("inside", True)
            raise ValueError("the callback failed on purpose")
        try:
            await self.ctx.blockConcurrencyWhile(callback)
        except Exception as e:
            return "caught " + str(e)
        return "no error"


class Room(DurableObject):
    async def fetch(self, request):
        client, server = WebSocketPair.new().object_values()
        self.ctx.acceptWebSocket(server)
        return Response(None, status=101, web_socket=client)

    async def _log(self, entry):
        await self.ctx.storage.put("events", ((await self.ctx.storage.get("events")) or []) + [entry])

    async def webSocketClose(self, ws, code, reason, wasClean):
        await self._log(["close", code])

    async def webSocketError(self, ws, error):
        await self._log(["error", getattr(error, "name", None), str(error)])

    async def events(self):
        return (await self.ctx.storage.get("events")) or []


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.headers.get("upgrade") == "websocket":
            return await self.env.ROOM.getByName(request.url.rsplit("/", 1)[-1]).fetch(request)
''')
BINDINGS = [{"type": "durable_object_namespace", "name": name, "class_name": class_name}
            for name, class_name in (("SQL", "Sql"), ("KVB", "Kv"), ("PLAIN", "Plain"), ("ROOM", "Room"))]
CLASSES = "\n\nclass Sql(Store):\n    pass\n\n\nclass Kv(Store):\n    pass\n\n\nclass Plain(Store):\n    pass\n"
MIGRATIONS = [{"tag": "v1", "new_sqlite_classes": ["Sql", "Room"], "new_classes": ["Kv"]}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = h.start(tmp_path_factory.mktemp("do-backends"))
    srv.deploy("backends", TENANT + CLASSES, bindings=BINDINGS, extra_metadata={"migrations": MIGRATIONS})
    yield srv
    srv.stop()


NO_SQL = "This Durable Object is not backed by SQLite storage, so the SQL API is not available."
NO_SYNC_KV = "The storage.kv (synchronous KV) API is only available for SQLite-backed Durable Objects"


def test_a_new_classes_class_is_kv_backed_as_on_cloudflare(server):
    """It had SQL, the synchronous KV API and 2 MiB values, as a SQLite-backed class has."""
    got = h.ok(server, "backends", "return await env.KVB.getByName('a').probe()")
    assert got["sql"][0] == "Error" and got["sql"][1].startswith(NO_SQL), got
    assert got["size"][0] == "Error" and got["size"][1].startswith(NO_SQL), got
    assert got["kv"][0] == "Error" and got["kv"][1].startswith(NO_SYNC_KV), got
    assert got["sync_txn"] == ["Error", "Durable Object is not backed by SQL."], got
    assert got["big"][0] == "RangeError", got  # workerd's words (actor-storage.c++)
    assert got["big"][1].startswith("Values cannot be larger than 131072 bytes. A value of size "), got
    assert got["fits"] == 128 * 1024 - 100, got
    # new_sqlite_classes, and a class no migration names (deployed without
    # migrations, as many are), keep all of it.
    for binding in ("SQL", "PLAIN"):
        got = h.ok(server, "backends", f"return await env.{binding}.getByName('a').probe()")
        assert got == {"sql": 7, "size": True, "kv": 1, "sync_txn": "done", "big": 128 * 1024 + 100,
                       "fits": 128 * 1024 - 100}, (binding, got)


def test_a_kv_backed_class_stays_so_after_a_deploy_with_nothing_new_to_migrate(server):
    """The kind is kept with the class, not read from the version's upload."""
    server.deploy("backends", TENANT + CLASSES + "\n# v2\n", bindings=BINDINGS,
                  extra_metadata={"migrations": {"old_tag": "v1", "new_tag": "v1"}})
    got = h.ok(server, "backends", "return await env.KVB.getByName('b').probe()")
    assert got["sql"][0] == "Error" and got["sql"][1].startswith(NO_SQL), got


def test_a_block_concurrency_while_callback_that_raises_resets_the_object(server):
    """Cloudflare: "If the callback throws an exception, the object will be
    terminated and reset". The call failed (its own except did not catch it)
    and the next call found a new instance over the same storage."""
    result = h.ok(server, "backends", """
stub = env.SQL.getByName("bcw")
await stub.mark("A")
before = await stub.marks()
try:
    failed = await stub.bcw_raise()
except Exception as e:
    failed = ["failed", str(e)]
return [before, failed, await stub.marks()]
""")
    before, failed, after = result
    assert before == ["A", "A"], result
    assert failed[0] == "failed" and "the callback failed on purpose" in failed[1], result
    assert after == [None, "A"], result  # memory reset, storage kept


def _events(server, room: str, count: int) -> list:
    """The room's recorded socket events, once there are ``count`` of them."""
    deadline = time.monotonic() + 15
    while True:
        events = h.ok(server, "backends", f"return await env.ROOM.getByName({room!r}).events()")
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


@pytest.mark.parametrize("room, code, description", [
    ("oversize", 1009, "Message is too large: "),
    ("unmasked", 1002, "unmasked"),
])
def test_a_hibernatable_socket_that_fails_reaches_web_socket_error(server, room, code, description):
    """workerd's hibernation manager dispatches an error event, and no close
    event, for a connection that fails otherwise than by its client leaving."""
    client = Client(server.port, "backends.localhost", f"/ws/{room}")
    if room == "oversize":
        client.send("x" * (1024 * 1024 + 10))
    else:
        client.sock.sendall(b"\x81\x02hi")  # a text frame a client did not mask
    close = client.next()
    client.drop()
    assert isinstance(close, CloseConnection) and close.code == code, close
    events = _events(server, room, 1)
    assert len(events) == 1 and events[0][:2] == ["error", "Error"], events
    assert events[0][2].startswith(f"WebSocket protocol error; protocolError.statusCode = {code}; "
                                   "protocolError.description = "), events
    assert description in events[0][2], events
    # A client that leaves is still a close (1006), not an error.
    leaver = Client(server.port, "backends.localhost", f"/ws/{room}-leaver")
    leaver.drop()
    assert _events(server, f"{room}-leaver", 1) == [["close", 1006]]
