"""One Durable Object's storage: a SQLite file with Cloudflare's two APIs.

The key-value API (``ctx.storage.get/put/delete/deleteAll/list``) lives in
the table ``_cf_KV`` and the SQL API (``ctx.storage.sql.exec``) in the same
file, as on Cloudflare's SQLite-backed objects; tenant SQL may not touch
``_cf_`` tables. The alarm time is kept here too (``_cf_alarm``), so it is
part of the object's state and survives a restart with it. Values are
opaque bytes here (the child encodes them), so this side never evaluates
tenant data.

Every function takes the connection first and runs in a storage thread
(supervisor.bindings.io), one at a time per object.
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

from supervisor.bindings.base import MAX_DATE_MS, BindingError
from supervisor.bindings.quota import quota_error
from supervisor.bindings.sqlite_limits import Deadline, hold_to, row_cost
from supervisor.log import warn

MAX_KEY_BYTES = 2048
MAX_VALUE_BYTES = 2 * 1024 * 1024
#: A KV-backed class's (``new_classes``) largest value, as workerd's
#: ActorStorageLimits says it, and what it takes: a few bytes more, for the
#: encoding's header (workerd adds 34 to its V8 serialization's size).
KV_BACKED_MAX_VALUE_BYTES = 128 * 1024
KV_BACKED_VALUE_CUSHION = 34
MAX_KEYS_PER_CALL = 128
#: Largest SQL result returned to the object (the sum of its values), and
#: largest ``get([...])`` or ``list()`` (keys and values): a whole object's
#: storage in one reply was built in the supervisor's memory, per call.
MAX_SQL_RESULT = 32 * 1024 * 1024


#: The pragmas tenant SQL may run, as workerd allows them in a Durable
#: Object (util/sqlite.c++): per-connection behaviour and schema reads,
#: nothing that touches the file. ``table_info(_cf_KV)`` and the like stay
#: refused, as every name with the ``_cf_`` prefix is.
ALLOWED_PRAGMAS = frozenset({
    "foreign_keys", "defer_foreign_keys", "case_sensitive_like", "ignore_check_constraints",
    "legacy_alter_table", "recursive_triggers", "reverse_unordered_selects", "foreign_key_check",
    "foreign_key_list", "index_info", "index_list", "index_xinfo", "table_info", "table_xinfo",
    "table_list", "quick_check", "optimize", "data_version",
})


#: Cloudflare's SQL storage limits, set as workerd's util/sqlite.c++ sets them
#: (setupSecurity): code that passed here failed there. A row may hold a
#: KV value of MAX_VALUE_BYTES and its key.
SQL_LIMITS = {
    sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER: 100,
    sqlite3.SQLITE_LIMIT_SQL_LENGTH: 100_000,
    sqlite3.SQLITE_LIMIT_COLUMN: 100,
    sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 50,
    sqlite3.SQLITE_LIMIT_COMPOUND_SELECT: 5,
    sqlite3.SQLITE_LIMIT_EXPR_DEPTH: 100,
    sqlite3.SQLITE_LIMIT_TRIGGER_DEPTH: 10,
    sqlite3.SQLITE_LIMIT_ATTACHED: 0,
}


def setup(conn: sqlite3.Connection) -> None:
    for limit, value in SQL_LIMITS.items():
        conn.setlimit(limit, value)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES + 4096)
    # Foreign keys are enforced, as workerd builds SQLite (SQLITE_DEFAULT_FOREIGN_KEYS=1).
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("CREATE TABLE IF NOT EXISTS _cf_KV (key TEXT PRIMARY KEY, value BLOB NOT NULL) "
                 "WITHOUT ROWID")
    conn.execute("CREATE TABLE IF NOT EXISTS _cf_alarm (id INTEGER PRIMARY KEY CHECK (id = 0), "
                 "time REAL NOT NULL)")
    conn.set_authorizer(None)


def capped(conn: sqlite3.Connection, max_bytes: int | None, fn: Any, *args: Any) -> Any:
    """``fn(conn, *args)`` with the object's database held to ``max_bytes``
    (``[storage.quota] durable_object_bytes``; SQLite's ``max_page_count``, as
    D1's cap). A write past it fails, saying which cap, and keeps nothing."""
    page_size = hold_to(conn, max_bytes)
    try:
        return fn(conn, *args)
    except (sqlite3.Error, BindingError) as exc:
        if max_bytes is None or "database or disk is full" not in str(exc):
            raise
        used = conn.execute("PRAGMA page_count").fetchone()[0] * page_size
        raise BindingError(quota_error("Durable Object storage full", used, max_bytes,
                                       "durable_object_bytes")) from None


def check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise BindingError(f"Durable Object storage keys must be strings, got {type(key).__name__}",
                           "TypeError")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise BindingError(f"Keys cannot be larger than {MAX_KEY_BYTES} bytes.", "RangeError")
    return key


def check_keys(keys: Any) -> list[str]:
    if not isinstance(keys, list):
        raise BindingError("keys must be a string or an array of strings", "TypeError")
    if len(keys) > MAX_KEYS_PER_CALL:
        raise BindingError(f"Maximum number of keys exceeded: {MAX_KEYS_PER_CALL} per call.",
                           "RangeError")
    return [check_key(k) for k in keys]


def check_value(value: Any, kv_backed: bool = False) -> bytes:
    """An encoded value, if the object's class may store it (``kv_backed``:
    a ``new_classes`` class, whose values are smaller)."""
    if not isinstance(value, bytes):
        raise BindingError("a storage value must arrive encoded", "TypeError")
    if kv_backed:
        advertised, enforced = KV_BACKED_MAX_VALUE_BYTES, KV_BACKED_MAX_VALUE_BYTES + KV_BACKED_VALUE_CUSHION
    else:
        advertised = enforced = MAX_VALUE_BYTES
    if len(value) > enforced:  # workerd's words (actor-storage.c++)
        raise BindingError(f"Values cannot be larger than {advertised} bytes. A value of size {len(value)} "
                           "was provided.", "RangeError")
    return value


def _tx(conn: sqlite3.Connection, fn: Any, *args: Any) -> Any:
    """``fn`` all or nothing: a savepoint, so that inside an open transaction
    (``transaction()``) it nests, and outside one it is its own transaction."""
    outermost = not conn.in_transaction
    conn.execute("SAVEPOINT corral_op")
    try:
        out = fn(conn, *args)
    except BaseException:
        try:
            conn.execute("ROLLBACK TO corral_op")
            conn.execute("RELEASE corral_op")
        except sqlite3.Error:
            # SQLite rolled the whole transaction back itself (SQLITE_FULL
            # does): nothing is left to undo, and fn's error is the one to report.
            if conn.in_transaction and not _abandon(conn, outermost):
                raise
        raise
    try:
        conn.execute("RELEASE corral_op")  # outermost: the commit, which a full disk fails
    except sqlite3.Error:
        _abandon(conn, outermost)
        raise
    return out


def _abandon(conn: sqlite3.Connection, outermost: bool) -> bool:
    """After a failed commit or undo, roll back a transaction this call
    began, whole: SQLite leaves it open when the commit fails (a full disk),
    and every later write then nested in it, was read back by this
    connection as if stored, and was lost with it at the next close
    (writes acknowledged after a disk-full episode did not survive a
    restart). True if it was rolled back."""
    if not (outermost and conn.in_transaction):
        return False
    conn.execute("ROLLBACK")
    return True


# -- transactions (``ctx.storage.transaction`` / ``transactionSync``) ---------------
# One savepoint per level, open across the calls the closure makes; the
# handler (supervisor.bindings.durable_objects) keeps who opened them.

def txn_begin(conn: sqlite3.Connection, depth: int) -> None:
    conn.execute(f"SAVEPOINT corral_txn_{depth}")


def txn_end(conn: sqlite3.Connection, depth: int, commit: bool) -> None:
    """Commit (release) or roll back level ``depth``; a level the database no
    longer has (it was closed, which rolled it back) is an error saying so."""
    try:
        if not commit:
            conn.execute(f"ROLLBACK TO corral_txn_{depth}")
        conn.execute(f"RELEASE corral_txn_{depth}")
    except sqlite3.Error as exc:
        _abandon(conn, depth == 1)  # a failed commit leaves the transaction open: nothing of it stays
        raise BindingError(f"the transaction was lost and nothing of it was written ({exc})") from None


def txn_abandon(conn: sqlite3.Connection) -> None:
    """Roll back whatever transaction is open (its caller is gone)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _too_large(what: str) -> BindingError:
    return BindingError(f"{what}: the result is larger than {MAX_SQL_RESULT} bytes; "
                        "read fewer keys at once (list()'s limit, prefix or start)", "RangeError")


def get(conn: sqlite3.Connection, keys: list[str]) -> list[tuple[str, bytes]]:
    out = []
    size = 0
    for key in keys:
        row = conn.execute("SELECT value FROM _cf_KV WHERE key = ?", (key,)).fetchone()
        if row is not None:
            size += len(key) + len(row[0])
            if size > MAX_SQL_RESULT:
                raise _too_large("get()")
            out.append((key, row[0]))
    return out


def put(conn: sqlite3.Connection, entries: list[tuple[str, bytes]]) -> None:
    _tx(conn, lambda c: c.executemany(
        "INSERT OR REPLACE INTO _cf_KV (key, value) VALUES (?, ?)", entries))


def delete(conn: sqlite3.Connection, keys: list[str]) -> int:
    def run(c: sqlite3.Connection) -> int:
        return sum(c.execute("DELETE FROM _cf_KV WHERE key = ?", (k,)).rowcount for k in keys)
    return _tx(conn, run)


def delete_all(conn: sqlite3.Connection, alarm_too: bool = True) -> None:
    """Everything goes: keys, tables the object made, and its alarm unless
    ``alarm_too`` is false (workerd's delete_all_deletes_alarm, on from
    2026-02-24; before it deleteAll kept the alarm)."""
    def run(c: sqlite3.Connection) -> None:
        c.execute("DELETE FROM _cf_KV")
        if alarm_too:
            c.execute("DELETE FROM _cf_alarm")
        tables = [r[0] for r in c.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '_cf_%' "
            "AND name NOT LIKE 'sqlite_%'")]
        for table in tables:
            c.execute(f'DROP TABLE IF EXISTS "{table}"')
    _tx(conn, run)


def list_(conn: sqlite3.Connection, prefix: str | None, start: str | None, start_after: str | None,
          end: str | None, limit: int | None, reverse: bool) -> list[tuple[str, bytes]]:
    where, params = [], []
    if prefix:
        where.append("key >= ? AND substr(key, 1, ?) = ?")
        params += [prefix, len(prefix), prefix]
    if start is not None:
        where.append("key >= ?")
        params.append(start)
    if start_after is not None:
        where.append("key > ?")
        params.append(start_after)
    if end is not None:
        where.append("key < ?")
        params.append(end)
    sql = "SELECT key, value FROM _cf_KV"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY key " + ("DESC" if reverse else "ASC")
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    out = []
    size = 0
    for key, value in conn.execute(sql, params):
        size += len(key) + len(value)
        if size > MAX_SQL_RESULT:
            raise _too_large("list()")
        out.append((key, value))
    return out


# -- SQL ---------------------------------------------------------------------------

def _authorizer(action: int, a: str | None, b: str | None, db: str | None, src: str | None) -> int:
    """Tenant SQL may not reach Corral's tables, attach files or run pragmas
    beyond :data:`ALLOWED_PRAGMAS`."""
    for name in (a, b):
        if name and name.lower().startswith("_cf_") and action not in (sqlite3.SQLITE_FUNCTION,):
            return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA:
        return sqlite3.SQLITE_OK if (a or "").lower() in ALLOWED_PRAGMAS else sqlite3.SQLITE_DENY
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH,
                  sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT):
        # Savepoints too: one named like Corral's own (corral_op, corral_txn_N)
        # would let tenant SQL commit or undo what ctx.storage.transaction holds.
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def split_statements(sql: str) -> list[str]:
    """``a; b; c`` as statements (semicolons inside strings kept), empty ones dropped."""
    out, current = [], ""
    for piece in sql.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                out.append(current)
            current = ""
    if current.strip(" \t\r\n;"):
        out.append(current)
    return out


def sql_exec(conn: sqlite3.Connection, query: str, binds: list[Any],
             timeout_s: float = 30.0) -> dict[str, Any]:
    """Run ``query`` (one or more statements; binds go to the last) and return
    the last statement's columns and rows, with rows read and written.

    Interrupted after ``timeout_s`` (``[storage] d1_query_ms``): it runs in
    one of the few storage threads every tenant shares, and a query that
    never ends (a recursive CTE without a bound) held one for ever; a few
    stopped every tenant's storage."""
    if "\0" in query:  # SQLite's splitter would raise ValueError: the platform's error, not the query's
        raise BindingError("SQL query contains a null character: SQLITE_ERROR")
    statements = split_statements(query)
    if not statements:
        raise BindingError("SQL query must not be empty", "Error")
    rows_before = conn.total_changes
    deadline = Deadline(timeout_s)

    def run(c: sqlite3.Connection) -> tuple[list[str], list[list[Any]]]:
        c.set_authorizer(_authorizer)
        c.set_progress_handler(deadline.progress, 1000)
        try:
            columns: list[str] = []
            rows: list[list[Any]] = []
            for i, statement in enumerate(statements):
                last = i == len(statements) - 1
                cursor = c.execute(statement, binds if last else [])
                if last:
                    columns = [d[0] for d in cursor.description or ()]
                    size = 0
                    for row in cursor:
                        size += row_cost(row)
                        if size > MAX_SQL_RESULT:
                            raise BindingError(f"SQL result is larger than {MAX_SQL_RESULT} bytes")
                        rows.append(list(row))
            return columns, rows
        finally:
            c.set_authorizer(None)
            c.set_progress_handler(None, 0)

    try:
        columns, rows = _tx(conn, run)
    except OverflowError:  # a bound integer past 64 bits
        raise BindingError("SQL bindings: an integer does not fit in 64 bits: SQLITE_RANGE", "RangeError") from None
    except sqlite3.Error as exc:
        if deadline.timed_out:
            raise BindingError(f"SQL query exceeded the time limit of {timeout_s:g} s "
                               "([storage] d1_query_ms) and was interrupted: SQLITE_INTERRUPT") from None
        text = str(exc)
        if "not authorized" in text:
            text = ("not authorized: SQL may not use _cf_ tables, ATTACH, a PRAGMA other than "
                    f"{', '.join(sorted(ALLOWED_PRAGMAS))}, or transaction statements (use "
                    "ctx.storage.transactionSync)")
        raise BindingError(f"{text}: SQLITE_ERROR") from None
    written = conn.total_changes - rows_before
    return {"columns": columns, "rows": rows, "rowsRead": max(len(rows), 0),
            "rowsWritten": written}


# -- alarm ---------------------------------------------------------------------------

def database_size(conn: sqlite3.Connection) -> int:
    """Bytes the object's database takes (``ctx.storage.sql.databaseSize``)."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    return int(pages) * int(conn.execute("PRAGMA page_size").fetchone()[0])


def get_alarm(conn: sqlite3.Connection) -> float | None:
    """The alarm time (ms since the epoch), or None.

    A time no JavaScript Date holds (past ``MAX_DATE_MS``, an infinity, not
    a number) was stored by code before setAlarm() refused one: it can
    never fire, and ``getAlarm()``'s whole number of it broke every read
    (an internal error). It is no alarm: cleared, and logged once, saying
    so."""
    row = conn.execute("SELECT time FROM _cf_alarm WHERE id = 0").fetchone()
    if row is None:
        return None
    when = row[0]
    if isinstance(when, (int, float)) and not isinstance(when, bool) and math.isfinite(when) \
            and abs(when) <= MAX_DATE_MS:
        return float(when)
    conn.execute("DELETE FROM _cf_alarm WHERE id = 0")
    files = [r[2] for r in conn.execute("PRAGMA database_list") if r[1] == "main"]
    warn("dobject.alarm_out_of_range", file=files[0] if files else "", stored=repr(when)[:60],
         action="cleared: treated as no alarm")
    return None


def set_alarm(conn: sqlite3.Connection, when: float | None) -> None:
    if when is None:
        conn.execute("DELETE FROM _cf_alarm")
    else:
        conn.execute("INSERT OR REPLACE INTO _cf_alarm (id, time) VALUES (0, ?)", (when,))


def remember_name(conn: sqlite3.Connection, name: str) -> None:
    """Keep the object's name (``idFromName``'s) with its storage, for the
    alarm that wakes it after a restart: ``ctx.id.name`` in ``alarm()``, as
    Cloudflare has it (it was None in an object an alarm started). The table
    is made on first use only: an object with no named alarm takes no page."""
    conn.execute("CREATE TABLE IF NOT EXISTS _cf_name (id INTEGER PRIMARY KEY CHECK (id = 0), name TEXT NOT NULL)")
    conn.execute("INSERT OR REPLACE INTO _cf_name (id, name) VALUES (0, ?)", (name,))


def name_of(conn: sqlite3.Connection) -> str | None:
    """The name :func:`remember_name` kept, if any."""
    try:
        row = conn.execute("SELECT name FROM _cf_name WHERE id = 0").fetchone()
    except sqlite3.OperationalError:  # no such table: never named
        return None
    return row[0] if row else None


def clear_alarm_if(conn: sqlite3.Connection, when: float) -> bool:
    """Clear the alarm if it is still ``when`` (the handler may have set a new one)."""
    return conn.execute("DELETE FROM _cf_alarm WHERE time = ?", (when,)).rowcount > 0
