"""Stateful bindings where Corral differed from Cloudflare, against one real
``corral serve`` for the module:

* Queues' HTTP pull consumers: the settings a consumer is made with
  (``batch_size``, ``max_retries``, ``visibility_timeout_ms``,
  ``retry_delay``, ``dead_letter_queue``) are kept, shown and applied; a
  pull from a queue with no pull consumer is refused; a pulled message
  retried past ``max_retries`` (explicitly, or by letting its lease run out)
  goes to the dead-letter queue, or is dropped with a log line without one.
* D1: a float that is not finite binds as NULL (D1's binding sends
  parameters as JSON, where ``Infinity`` and ``NaN`` are ``null``), and the
  ``_cf_`` prefix is Cloudflare's (``not authorized: SQLITE_AUTH``) through
  the binding, the REST query API and ``corral d1 execute``.
* Durable Objects: an alarm stored out of a Date's range by older code
  reads as no alarm instead of breaking ``getAlarm()``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cloudflare
import pytest

from tests import storage_helpers as h
from tests.harness import cloudflare_sdk

A = "local"
#: The tenant's database, in the dispatch namespace it runs in.
QUERY = "/accounts/local/d1/database/conformance-db/query?namespace=default"
DB = {"type": "d1", "name": "DB", "id": "conformance-db"}
DO = {"type": "durable_object_namespace", "name": "CLOCK", "class_name": "Clock"}
DO_TENANT = h.EVAL_TENANT + r'''
from workers import DurableObject


class Clock(DurableObject):
    async def mark(self, marker):
        await self.ctx.storage.put(marker, 1)

    async def alarm_at(self):
        return await self.ctx.storage.getAlarm()

    async def arm(self, ms_from_now):
        import time
        await self.ctx.storage.setAlarm(time.time() * 1000 + ms_from_now)
        return await self.ctx.storage.getAlarm()

    async def alarm(self, info=None):
        pass
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = h.start(tmp_path_factory.mktemp("state-conformance"))
    server.deploy("t", DO_TENANT, bindings=[DB, DO])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cf(server):
    client = cloudflare_sdk(server)
    yield client
    client.close()


def _push(cf, queue_id: str, *bodies: str) -> None:
    cf.queues.messages.bulk_push(queue_id, account_id=A, messages=[{"body": b, "content_type": "text"} for b in bodies])


def _pull(server, queue_id: str, body: dict | None = None) -> list[dict]:
    resp = server.admin("POST", f"/accounts/{A}/queues/{queue_id}/messages/pull", body or {})
    assert resp.status == 200, resp
    return resp.json()["result"]["messages"]


def _settle(server, queue_id: str, acks: list[dict] = (), retries: list[dict] = ()) -> dict:  # type: ignore[assignment]
    resp = server.admin("POST", f"/accounts/{A}/queues/{queue_id}/messages/ack",
                        {"acks": list(acks), "retries": list(retries)})
    assert resp.status == 200, resp
    return resp.json()["result"]


# -- Queues: HTTP pull consumers ------------------------------------------------------


def test_a_pull_consumers_settings_are_kept_shown_and_applied(server, cf):
    queue = cf.queues.create(account_id=A, queue_name="settled")
    settings = {"batch_size": 2, "max_retries": 4, "visibility_timeout_ms": 600_000, "retry_delay": 7}
    made = cf.queues.consumers.create(queue.queue_id, account_id=A, type="http_pull", settings=settings,
                                      dead_letter_queue="settled-dlq")
    for shown in (made, cf.queues.consumers.get(made.consumer_id, account_id=A, queue_id=queue.queue_id),
                  *cf.queues.consumers.list(queue.queue_id, account_id=A)):
        assert shown.type == "http_pull" and shown.dead_letter_queue == "settled-dlq", shown
        assert shown.settings.to_dict() == settings, shown
    # A pull that names neither takes the consumer's batch size and visibility timeout.
    _push(cf, queue.queue_id, "a", "b", "c")
    first = _pull(server, queue.queue_id)
    assert [m["body"] for m in first] == ["a", "b"]
    assert _pull(server, queue.queue_id, {"batch_size": 10}) and not _pull(server, queue.queue_id)  # all hidden
    # A retry without delay_seconds waits the consumer's retry_delay (7 s): not back at once.
    assert _settle(server, queue.queue_id, retries=[{"lease_id": first[0]["lease_id"]}])["retryCount"] == 1
    assert _pull(server, queue.queue_id) == []

    # An update replaces the consumer: what it leaves out is the default again.
    updated = cf.queues.consumers.update(made.consumer_id, account_id=A, queue_id=queue.queue_id, type="http_pull",
                                         settings={"batch_size": 3})
    assert updated.settings.to_dict() == {"batch_size": 3, "max_retries": 3, "visibility_timeout_ms": 30_000,
                                          "retry_delay": 0}
    assert updated.dead_letter_queue == ""
    # Settings out of Cloudflare's ranges are refused, naming the field.
    for bad, field in (({"batch_size": 0}, "batch_size"), ({"max_retries": 101}, "max_retries"),
                       ({"visibility_timeout_ms": 12 * 3600 * 1000 + 1}, "visibility_timeout_ms")):
        with pytest.raises(cloudflare.BadRequestError, match=field):
            cf.queues.consumers.update(made.consumer_id, account_id=A, queue_id=queue.queue_id, type="http_pull",
                                       settings=bad)
    with pytest.raises(cloudflare.BadRequestError, match="the queue itself"):
        cf.queues.consumers.update(made.consumer_id, account_id=A, queue_id=queue.queue_id, type="http_pull",
                                   dead_letter_queue="settled")

    # One made without settings shows (and uses) Cloudflare's defaults.
    plain = cf.queues.create(account_id=A, queue_name="plain")
    consumer = cf.queues.consumers.create(plain.queue_id, account_id=A, type="http_pull")
    assert consumer.settings.to_dict() == {"batch_size": 5, "max_retries": 3, "visibility_timeout_ms": 30_000,
                                           "retry_delay": 0}
    _push(cf, plain.queue_id, *"abcdef")
    assert len(_pull(server, plain.queue_id)) == 5


def test_a_pull_from_a_queue_without_a_pull_consumer_is_refused(server, cf):
    queue = cf.queues.create(account_id=A, queue_name="unpulled")
    _push(cf, queue.queue_id, "kept")
    resp = server.admin("POST", f"/accounts/{A}/queues/{queue.queue_id}/messages/pull", {"batch_size": 1})
    assert resp.status == 409, resp
    (error,) = resp.json()["errors"]
    assert "has no HTTP pull consumer" in error["message"] and isinstance(error["code"], int), error
    with pytest.raises(cloudflare.ConflictError, match="no HTTP pull consumer"):
        cf.queues.messages.pull(queue.queue_id, account_id=A)
    # The message waited: once the queue has a pull consumer, it is pulled.
    cf.queues.consumers.create(queue.queue_id, account_id=A, type="http_pull")
    assert [m["body"] for m in _pull(server, queue.queue_id)] == ["kept"]


def test_a_pulled_message_retried_past_max_retries_is_dead_lettered(server, cf):
    source = cf.queues.create(account_id=A, queue_name="flaky")
    dlq = cf.queues.create(account_id=A, queue_name="flaky-dlq")
    cf.queues.consumers.create(source.queue_id, account_id=A, type="http_pull", dead_letter_queue="flaky-dlq",
                               settings={"max_retries": 1, "visibility_timeout_ms": 600_000})
    cf.queues.consumers.create(dlq.queue_id, account_id=A, type="http_pull")
    _push(cf, source.queue_id, "explicit")
    (first,) = _pull(server, source.queue_id)
    assert _settle(server, source.queue_id, retries=[{"lease_id": first["lease_id"], "delay_seconds": 0}])[
        "retryCount"] == 1
    (second,) = _pull(server, source.queue_id)
    assert (second["id"], second["attempts"]) == (first["id"], 2)
    # Its second delivery was its one retry: retrying it again sends it to the dead-letter queue.
    assert _settle(server, source.queue_id, retries=[{"lease_id": second["lease_id"], "delay_seconds": 0}])[
        "retryCount"] == 1
    assert _pull(server, source.queue_id) == []
    (dead,) = _pull(server, dlq.queue_id)
    assert (dead["id"], dead["body"], dead["attempts"], dead["timestamp_ms"]) == (
        first["id"], "explicit", 1, first["timestamp_ms"])
    _settle(server, dlq.queue_id, acks=[{"lease_id": dead["lease_id"]}])

    # A lease left to run out is a retry too: past max_retries, the next pull dead-letters it.
    _push(cf, source.queue_id, "abandoned")
    leases, dead_letters = 0, []
    deadline = time.monotonic() + 30
    while not dead_letters and time.monotonic() < deadline:  # each pull hides it for 1 ms
        leases += len(_pull(server, source.queue_id, {"visibility_timeout_ms": 1}))
        dead_letters = _pull(server, dlq.queue_id)
    assert [m["body"] for m in dead_letters] == ["abandoned"]
    assert leases == 2, leases  # delivered twice (max_retries 1), never acknowledged


def test_without_a_dead_letter_queue_a_message_past_max_retries_is_dropped_and_logged(server, cf):
    queue = cf.queues.create(account_id=A, queue_name="droppy")
    cf.queues.consumers.create(queue.queue_id, account_id=A, type="http_pull", settings={"max_retries": 0})
    _push(cf, queue.queue_id, "gone")
    (message,) = _pull(server, queue.queue_id)
    assert _settle(server, queue.queue_id, retries=[{"lease_id": message["lease_id"]}])["retryCount"] == 1
    assert _pull(server, queue.queue_id) == []
    events = [e for e in server.log_events() if e.get("event") == "queue.dead_lettered" and e.get("queue") == "droppy"]
    assert events and events[-1].get("to") == "(dropped)" and events[-1].get("count") == 1, events


# -- D1 ---------------------------------------------------------------------------------


def test_d1_binds_a_float_that_is_not_finite_as_null(server):
    got = h.ok(server, "t", """
await env.DB.exec("CREATE TABLE IF NOT EXISTS nums (i INTEGER PRIMARY KEY, v)")
await env.DB.prepare("INSERT INTO nums (i, v) VALUES (1, ?), (2, ?), (3, ?), (4, ?)").bind(
    float("inf"), float("-inf"), float("nan"), 1.5).run()
rows = await env.DB.prepare("SELECT v, typeof(v) AS t FROM nums ORDER BY i").all()
return [[r["v"], r["t"]] for r in rows.results]""")
    assert got == [[None, "null"], [None, "null"], [None, "null"], [1.5, "real"]]
    stored = server.admin("POST", QUERY, {"sql": "SELECT typeof(v) AS t FROM nums WHERE i = 1"}).json()
    assert stored["result"][0]["results"] == [{"t": "null"}], stored


@pytest.mark.parametrize("sql", [
    "CREATE TABLE _cf_mine (x)",
    "CREATE TABLE IF NOT EXISTS _CF_KV (key TEXT PRIMARY KEY, value BLOB)",
    "CREATE INDEX _cf_idx ON plain (x)",
    "CREATE VIEW _cf_view AS SELECT 1",
    "ALTER TABLE plain RENAME TO _cf_plain",
])
def test_d1_refuses_the_reserved_cf_prefix_through_the_binding(server, sql):
    h.ok(server, "t", 'await env.DB.exec("CREATE TABLE IF NOT EXISTS plain (x)")')
    error = h.fails(server, "t", f"await env.DB.prepare({sql!r}).run()")
    assert "not authorized" in error["message"] and "SQLITE_AUTH" in error["message"], error
    tables = h.ok(server, "t", """
rows = await env.DB.prepare("SELECT name FROM sqlite_master WHERE name LIKE '%cf%'").all()
return [r["name"] for r in rows.results]""")
    assert tables == [], tables


def test_d1_refuses_the_reserved_cf_prefix_through_the_api_and_the_cli(server, tmp_path):
    resp = server.admin("POST", QUERY, {"sql": "CREATE TABLE _cf_api (x)"})
    assert resp.status == 400 and "not authorized" in resp.text and "SQLITE_AUTH" in resp.text, resp

    def execute(sql: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "supervisor", "d1", "execute", "--socket", server.socket_path,
                               "--json", "--config", str(tmp_path), "--namespace", "default", DB["id"],
                               "--command", sql],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})

    refused = execute("CREATE TABLE _cf_cli (x)")
    assert refused.returncode == 1 and "not authorized" in refused.stderr, (refused.stdout, refused.stderr)
    # D1's own bookkeeping (wrangler's d1_migrations) and ordinary names are untouched.
    done = execute("CREATE TABLE IF NOT EXISTS d1_migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT);"
                   "INSERT INTO d1_migrations (name) VALUES ('0001_init.sql');"
                   "SELECT name FROM d1_migrations")
    assert done.returncode == 0 and "0001_init.sql" in done.stdout, done.stderr
    names = server.admin("POST", QUERY, {"sql": "SELECT name FROM sqlite_master"}).json()
    assert "d1_migrations" in json.dumps(names) and "_cf_" not in json.dumps(names), names


# -- Durable Object alarms -----------------------------------------------------------------


def _object_file(server, marker: str) -> Path:
    """The object's own SQLite file: the one whose key-value table holds ``marker``."""
    for path in (server.state_dir / "storage" / "do").glob("*/object.sqlite3"):
        conn = sqlite3.connect(path, timeout=30)
        try:
            if conn.execute("SELECT 1 FROM _cf_KV WHERE key = ?", (marker,)).fetchone():
                return path
        finally:
            conn.close()
    raise AssertionError(f"no object file holds {marker!r}")


@pytest.mark.parametrize("stored", ["1e300", "-1e300", "9e999", str(8_640_000_000_000_001)])
def test_an_alarm_stored_past_a_dates_range_by_older_code_reads_as_none(server, stored):
    name = f"old-alarm-{stored}"
    h.ok(server, "t", f"await env.CLOCK.getByName({name!r}).mark({name!r})")
    conn = sqlite3.connect(_object_file(server, name), timeout=30)
    try:  # what setAlarm() stored before it refused times a Date cannot hold
        conn.execute(f"INSERT OR REPLACE INTO _cf_alarm (id, time) VALUES (0, {stored})")
        conn.commit()
    finally:
        conn.close()
    assert h.ok(server, "t", f"return await env.CLOCK.getByName({name!r}).alarm_at()") is None
    events = [e for e in server.log_events() if e.get("event") == "dobject.alarm_out_of_range"]
    assert events, server.log()[-2000:]
    # The object is whole: a new alarm is set and read as usual.
    armed = h.ok(server, "t", f"return await env.CLOCK.getByName({name!r}).arm(3600 * 1000)")
    assert isinstance(armed, int) and armed > time.time() * 1000
