"""One queue's messages, durable in ``<storage>/queues/<scope>/queue.sqlite3``.

A message is *visible* from ``visible_at`` (its send delay, or a retry's
delay) until a consumer *leases* it in a batch. A lease ends when the batch
settles: acked messages go, retried ones become visible again later, and a
message past its consumer's ``max_retries`` moves to the dead-letter queue
(or is dropped without one), as on Cloudflare. Leases are not durable: at
start every message is visible again, so a batch interrupted by a crash is
redelivered (at-least-once, as on Cloudflare).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from typing import Any

from protocol.messages import QueueMessage
from supervisor.bindings.base import BindingError
from supervisor.bindings.quota import quota_error

#: Cloudflare's limits ("1 KB is measured as 1000 bytes", its limits page says).
MAX_MESSAGE_BYTES = 128_000
MAX_BATCH_MESSAGES = 100
MAX_BATCH_BYTES = 256_000
MAX_DELAY_S = 43200
CONTENT_TYPES = ("text", "bytes", "json", "v8")


def setup(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                 "id TEXT UNIQUE NOT NULL, body BLOB NOT NULL, content_type TEXT NOT NULL, "
                 "timestamp REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
                 "visible_at REAL NOT NULL, leased INTEGER NOT NULL DEFAULT 0)")
    conn.execute("CREATE INDEX IF NOT EXISTS messages_visible ON messages (leased, visible_at)")
    # A fresh open is a (re)start: nothing is in flight any more.
    conn.execute("UPDATE messages SET leased = 0 WHERE leased = 1")


class Outgoing:
    """A message to enqueue (checked by the producer handler)."""

    __slots__ = ("body", "content_type", "delay_s", "attempts", "timestamp", "id")

    def __init__(self, body: bytes, content_type: str, delay_s: float, attempts: int = 0,
                 timestamp: float | None = None, id: str | None = None) -> None:
        self.body = body
        self.content_type = content_type
        self.delay_s = delay_s
        self.attempts = attempts
        self.timestamp = timestamp if timestamp is not None else time.time() * 1000
        self.id = id or uuid.uuid4().hex


def send(conn: sqlite3.Connection, messages: list[Outgoing], cap: int | None) -> None:
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    try:
        if cap is not None:
            count = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            if count + len(messages) > cap:
                raise BindingError(quota_error("Queue send failed", count, cap, "queue_messages"))
        conn.executemany(
            "INSERT OR IGNORE INTO messages (id, body, content_type, timestamp, attempts, visible_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(m.id, m.body, m.content_type, m.timestamp, m.attempts, now + m.delay_s)
             for m in messages])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # else the real error would read "cannot rollback"
            conn.execute("ROLLBACK")
        raise


def purge(conn: sqlite3.Connection) -> int:
    """Delete every message, those in flight too (their settling finds none); how many."""
    return conn.execute("DELETE FROM messages").rowcount


def visible(conn: sqlite3.Connection) -> tuple[int, float | None]:
    """How many messages are visible now, and when the next hidden one shows."""
    now = time.time()
    count = conn.execute("SELECT count(*) FROM messages WHERE leased = 0 AND visible_at <= ?",
                         (now,)).fetchone()[0]
    nxt = conn.execute("SELECT min(visible_at) FROM messages WHERE leased = 0 AND visible_at > ?",
                       (now,)).fetchone()[0]
    return count, nxt


def backlog(conn: sqlite3.Connection) -> tuple[int, int, float]:
    """The queue's unacknowledged messages (in flight and delayed ones too):
    how many, their bytes, and the oldest one's timestamp in ms (0: none),
    as Cloudflare's queue metrics count them."""
    count, size, oldest = conn.execute(
        "SELECT count(*), coalesce(sum(length(body)), 0), coalesce(min(timestamp), 0) FROM messages").fetchone()
    return count, size, oldest


def peek(conn: sqlite3.Connection, limit: int) -> list[QueueMessage]:
    """Up to ``limit`` visible messages, oldest first, left as they are (not
    leased, their attempts not counted): what a pull would get next."""
    rows = conn.execute("SELECT id, timestamp, body, content_type, attempts FROM messages "
                        "WHERE leased = 0 AND visible_at <= ? ORDER BY seq LIMIT ?", (time.time(), limit))
    return [QueueMessage(*row) for row in rows]


def delete(conn: sqlite3.Connection, ids: list[str]) -> list[str]:
    """Delete the messages ``ids`` (in flight or not); the ids that were not there."""
    missing = []
    for id_ in ids:
        if conn.execute("DELETE FROM messages WHERE id = ?", (id_,)).rowcount == 0:
            missing.append(id_)
    return missing


def lease(conn: sqlite3.Connection, limit: int) -> list[QueueMessage]:
    """Up to ``limit`` visible messages (oldest first, within the batch byte
    limit), leased, their attempts counted."""
    now = time.time()
    rows = conn.execute("SELECT seq, id, body, content_type, timestamp, attempts FROM messages "
                        "WHERE leased = 0 AND visible_at <= ? ORDER BY seq LIMIT ?",
                        (now, limit)).fetchall()
    out: list[QueueMessage] = []
    size = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for seq, id_, body, ctype, ts, attempts in rows:
            size += len(body)
            if out and size > MAX_BATCH_BYTES:
                break
            conn.execute("UPDATE messages SET leased = 1, attempts = attempts + 1 WHERE seq = ?", (seq,))
            out.append(QueueMessage(id_, ts, body, ctype, attempts + 1))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # else the real error would read "cannot rollback"
            conn.execute("ROLLBACK")
        raise
    return out


def settle(conn: sqlite3.Connection, acked: list[str], retried: list[tuple[str, float]],
           dead: list[str]) -> list[tuple[Any, ...]]:
    """Apply a batch's outcome; return the dead messages' rows (for the DLQ)."""
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = []
        for id_ in dead:
            row = conn.execute("SELECT id, body, content_type, timestamp FROM messages WHERE id = ?",
                               (id_,)).fetchone()
            if row is not None:
                rows.append(row)
        conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in [*acked, *dead]])
        conn.executemany("UPDATE messages SET leased = 0, visible_at = ? WHERE id = ?",
                         [(now + delay, i) for i, delay in retried])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # else the real error would read "cannot rollback"
            conn.execute("ROLLBACK")
        raise
    return rows


def _take_dead(conn: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Delete the messages ``where`` selects; their (id, body, content type,
    timestamp) rows, for the dead-letter queue (inside the caller's transaction)."""
    rows = conn.execute(f"SELECT id, body, content_type, timestamp FROM messages WHERE {where} ORDER BY seq",
                        params).fetchall()
    conn.executemany("DELETE FROM messages WHERE id = ?", [(row[0],) for row in rows])
    return rows


def pull(conn: sqlite3.Connection, limit: int, visibility_s: float, max_retries: int
         ) -> tuple[list[QueueMessage], int, list[tuple[Any, ...]]]:
    """An HTTP pull consumer's batch: up to ``limit`` visible messages, oldest
    first, hidden for ``visibility_s`` (seen again then unless acked), their
    attempts counted; how many visible messages are left; and the rows of the
    messages taken out as dead instead of delivered.

    A visible message already delivered more than ``max_retries`` times was
    retried past its consumer's limit (its lease ran out unacknowledged): it
    goes to the dead-letter queue, as a push consumer's does, instead of
    being delivered once more for ever."""
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    try:
        dead = _take_dead(conn, "leased = 0 AND visible_at <= ? AND attempts > ?", (now, max_retries))
        rows = conn.execute("SELECT seq, id, body, content_type, timestamp, attempts FROM messages "
                            "WHERE leased = 0 AND visible_at <= ? ORDER BY seq LIMIT ?", (now, limit)).fetchall()
        conn.executemany("UPDATE messages SET attempts = attempts + 1, visible_at = ? WHERE seq = ?",
                         [(now + visibility_s, row[0]) for row in rows])
        left = conn.execute("SELECT count(*) FROM messages WHERE leased = 0 AND visible_at <= ?",
                            (now,)).fetchone()[0]
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # else the real error would read "cannot rollback"
            conn.execute("ROLLBACK")
        raise
    messages = [QueueMessage(id_, ts, body, ctype, attempts + 1) for _, id_, body, ctype, ts, attempts in rows]
    return messages, left, dead


def settle_leases(conn: sqlite3.Connection, acks: list[tuple[str, int]],
                  retries: list[tuple[str, int, float]], max_retries: int
                  ) -> tuple[int, int, int, list[tuple[Any, ...]]]:
    """An HTTP pull consumer's acks and retries, each naming a message and the
    attempt its lease was for. An ack is taken whatever the attempt, as
    Cloudflare documents ("if a consumer acknowledges a message by its lease
    ID after the visibility timeout is reached, Queues will still accept that
    acknowledgment"); only one of a message gone counts as stale. A retry's
    lease whose message was pulled again since (its visibility timeout ran
    out) or is gone is stale and changes nothing. A retry of a message
    delivered more than ``max_retries`` times
    takes it out as dead (its row returned, for the dead-letter queue), as a
    push consumer's retry does. (acked, retried, stale, dead rows)."""
    now = time.time()
    acked = retried = stale = 0
    dead: list[tuple[Any, ...]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for id_, _attempt in acks:
            done = conn.execute("DELETE FROM messages WHERE id = ?", (id_,)).rowcount
            acked += done
            stale += 1 - done
        for id_, attempt, delay in retries:
            if attempt > max_retries:
                rows = _take_dead(conn, "id = ? AND attempts = ?", (id_, attempt))
                dead += rows
                done = len(rows)
            else:
                done = conn.execute("UPDATE messages SET visible_at = ? WHERE id = ? AND attempts = ?",
                                    (now + delay, id_, attempt)).rowcount
            retried += done
            stale += 1 - done
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # else the real error would read "cannot rollback"
            conn.execute("ROLLBACK")
        raise
    return acked, retried, stale, dead
