"""SQLite-backed Durable Objects answer storage calls synchronously, as on
Cloudflare: ``ctx.storage.sql.exec(...)`` returns its cursor at once (the
Python Workers changelog's own example calls it from a plain ``def fetch``),
``ctx.storage.kv`` is the synchronous key-value API over the same keys as
``ctx.storage.get/put``, and both work in a ``blockConcurrencyWhile`` of the
constructor. Real jailed children; the object's invocation waits, not the loop."""

from __future__ import annotations

import time

import pytest

from tests import storage_helpers as h

SYNC_TENANT = h.EVAL_TENANT + r'''
import asyncio
from workers import DurableObject, Response


class Notes(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        ctx.blockConcurrencyWhile(self.migrate)

    async def migrate(self):
        self.ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")

    def fetch(self, request):
        # The changelog's example: a synchronous handler, a synchronous query.
        row = self.ctx.storage.sql.exec("SELECT 'Hello, World!' AS greeting").one()
        return Response(row.greeting)

    def add(self, body):
        cursor = self.ctx.storage.sql.exec("INSERT INTO notes (body) VALUES (?)", body)
        return cursor.rowsWritten

    def bodies(self):
        return [r.body for r in self.ctx.storage.sql.exec("SELECT body FROM notes ORDER BY id")]

    def fire_and_forget(self):
        # Not awaited, as JavaScript code leaves a promise: both still happen.
        import time
        self.ctx.storage.put("unawaited", 7)
        self.ctx.storage.setAlarm(time.time() * 1000 + 50)
        return "returned"

    async def alarm(self, info=None):
        await self.ctx.storage.put("alarmed", True)

    async def peek(self, key):
        return await self.ctx.storage.get(key)

    def size(self):
        return self.ctx.storage.sql.databaseSize

    async def awaited(self):
        # Code written for an awaitable exec() keeps working.
        return (await self.ctx.storage.sql.exec("SELECT count(*) AS n FROM notes")).one().n

    def kv(self):
        kv = self.ctx.storage.kv
        missing = kv.get("a")
        kv.put("a", {"n": 1})
        kv.put("b", [1, 2])
        kv.put("c", "three")
        listed = [[k, v] for k, v in kv.list(prefix="", start="b")]
        existed = kv.delete("b")
        again = kv.delete("b")
        return {"missing": missing, "a": kv.get("a"), "a_n": kv.get("a").n, "listed": listed,
                "existed": existed, "again": again}

    async def same_keys(self):
        # ctx.storage.kv and ctx.storage.get/put are one store.
        self.ctx.storage.kv.put("shared", 41)
        seen = await self.ctx.storage.get("shared")
        await self.ctx.storage.put("shared", seen + 1)
        return self.ctx.storage.kv.get("shared")

    async def from_a_task(self):
        async def query():
            return self.ctx.storage.sql.exec("SELECT 1 AS one").one().one
        return await asyncio.create_task(query())
'''

DO = {"type": "durable_object_namespace", "name": "NOTES", "class_name": "Notes"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = h.start(tmp_path_factory.mktemp("dobjects-sync"))
    srv.deploy("notes", SYNC_TENANT, bindings=[DO])
    yield srv
    srv.stop()


def test_sql_exec_answers_synchronously_in_a_synchronous_fetch(server):
    assert h.ok(server, "notes", """
resp = await env.NOTES.getByName("hello").fetch("https://do.example/")
return [resp.status, await resp.text()]
""") == [200, "Hello, World!"]


def test_sql_exec_in_rpc_methods_and_in_the_constructor(server):
    result = h.ok(server, "notes", """
stub = env.NOTES.getByName("notes")
written = [await stub.add("first"), await stub.add("second")]
return {"written": written, "bodies": await stub.bodies(), "count": await stub.awaited()}
""")
    # The table exists because the constructor's blockConcurrencyWhile made it.
    assert result == {"written": [1, 1], "bodies": ["first", "second"], "count": 2}
    size = h.ok(server, "notes", "return await env.NOTES.getByName('notes').size()")
    assert isinstance(size, int) and size >= 4096  # at least a page: the table is in it


def test_synchronous_kv_api(server):
    result = h.ok(server, "notes", "return await env.NOTES.getByName('kv').kv()")
    assert result == {"missing": None, "a": {"n": 1}, "a_n": 1,
                      "listed": [["b", [1, 2]], ["c", "three"]], "existed": True, "again": False}


def test_kv_and_the_asynchronous_api_share_their_keys(server):
    assert h.ok(server, "notes", "return await env.NOTES.getByName('shared').same_keys()") == 42


def test_synchronous_storage_works_in_a_task_the_object_started(server):
    """As on Cloudflare, where ``sql.exec()`` is synchronous wherever the object runs."""
    assert h.ok(server, "notes", "return await env.NOTES.getByName('task').from_a_task()") == 1


def test_storage_calls_nobody_awaits_still_happen(server):
    assert h.ok(server, "notes", "return await env.NOTES.getByName('forget').fire_and_forget()") == "returned"
    assert h.ok(server, "notes", "return await env.NOTES.getByName('forget').peek('unawaited')") == 7
    deadline = time.monotonic() + 30
    while not h.ok(server, "notes", "return await env.NOTES.getByName('forget').peek('alarmed')"):
        assert time.monotonic() < deadline, "the alarm set without await never ran"
