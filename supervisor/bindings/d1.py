"""D1 (``d1_databases``): one SQLite database per (namespace, id).

Calls carry statements as ``[sql, params]`` pairs; this side runs them and
answers, per statement, the column names, the rows (lists, so duplicate
column names survive for ``raw()``) and Cloudflare's ``meta``. The SDK in
the child shapes ``all()``, ``first()``, ``run()`` and ``raw()`` from that.

What a tenant's SQL may do is decided by SQLite's authorizer, not by
parsing: ``ATTACH`` (and so ``VACUUM INTO``, which attaches its target),
``load_extension()``, pragmas outside a read-only allowlist, transaction
statements (``batch()`` is the transaction), and tables, indexes and views
named with Cloudflare's reserved ``_cf_`` prefix (D1's ``not authorized:
SQLITE_AUTH``) are refused with a message that says so. Per-query time (a progress handler), result size,
statement length, bound parameters and value size are bounded; the
database's size cap is SQLite's ``max_page_count``, so a write past it fails
cleanly inside its transaction.
"""

from __future__ import annotations

import functools
import math
import os
import sqlite3
import time
from typing import Any, Protocol

from supervisor.bindings import BOUND_DATA, Services, d1_export, register
from supervisor.bindings.base import BindingError, Context, Reply, Scope, arg, string
from supervisor.bindings.quota import quota_error
from supervisor.bindings.sqlite_limits import Deadline, hold_to, row_cost

#: ``<storage>/<folder>/<scope key>/<file>``: its data, per (namespace, id).
_FOLDER, _FILE = BOUND_DATA["d1"]

MAX_SQL_BYTES = 100_000
MAX_PARAMS = 100
MAX_VALUE_BYTES = 2_000_000
MAX_BATCH = 10_000
#: JavaScript's Number.MAX_SAFE_INTEGER: a whole float up to it is an integer to D1.
MAX_SAFE_INTEGER = 2**53 - 1
#: Pragmas a tenant may run: they read the schema or set per-connection
#: behaviour, and touch no file.
ALLOWED_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo", "index_list",
    "foreign_key_list", "foreign_key_check", "foreign_keys", "defer_foreign_keys",
    "integrity_check", "quick_check", "optimize", "case_sensitive_like",
    "recursive_triggers", "reverse_unordered_selects", "ignore_check_constraints",
    "legacy_alter_table", "function_list", "pragma_list", "collation_list", "data_version",
    "page_count", "page_size", "freelist_count", "user_version", "schema_version",
})

Statement = tuple[str, list[Any]]
#: Names Cloudflare keeps for its own tables (D1's ``_cf_KV``, a Durable Object's ``_cf_*``).
RESERVED_PREFIX = "_cf_"
#: Authorizer actions whose first argument names a table, index or view.
_NAMED_BY_ARG1 = frozenset({
    sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_TEMP_INDEX,
    sqlite3.SQLITE_CREATE_TEMP_TABLE, sqlite3.SQLITE_CREATE_TEMP_VIEW, sqlite3.SQLITE_CREATE_VIEW,
    sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DELETE, sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_DROP_TABLE,
    sqlite3.SQLITE_DROP_TEMP_INDEX, sqlite3.SQLITE_DROP_TEMP_TABLE, sqlite3.SQLITE_DROP_TEMP_VIEW,
    sqlite3.SQLITE_DROP_VIEW, sqlite3.SQLITE_DROP_VTABLE, sqlite3.SQLITE_INSERT, sqlite3.SQLITE_READ,
    sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_REINDEX, sqlite3.SQLITE_ANALYZE,
})
#: ... whose second argument names a table (an index's or trigger's; ALTER TABLE's; a pragma's argument).
_NAMED_BY_ARG2 = frozenset({
    sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_TEMP_INDEX, sqlite3.SQLITE_CREATE_TRIGGER,
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER, sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_DROP_TEMP_INDEX,
    sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_DROP_TEMP_TRIGGER, sqlite3.SQLITE_ALTER_TABLE,
    sqlite3.SQLITE_PRAGMA,
})


def reserved(name: Any) -> bool:
    """Whether ``name`` has the ``_cf_`` prefix (in any case: SQLite's names are
    case-insensitive, so ``_CF_KV`` is the table ``_cf_KV``)."""
    return isinstance(name, str) and name[:len(RESERVED_PREFIX)].lower() == RESERVED_PREFIX


class D1Backend(Protocol):
    """Where D1 databases live; a fleet may put them on a shared engine."""

    async def run(self, scope: Scope, statements: list[Statement], *, max_bytes: int | None,
                  timeout_s: float, max_result: int, prefix: str = "D1_ERROR"
                  ) -> list[dict[str, Any]]:
        """Run ``statements`` as one transaction; all or nothing. Errors are
        :class:`BindingError` whose message starts with ``prefix``."""

    async def dump(self, scope: Scope, no_schema: bool, no_data: bool, tables: list[str],
                   max_bytes: int) -> bytes:
        """The database as SQL text (:mod:`supervisor.bindings.d1_export`)."""

    def close(self) -> None: ...


#: TEXT as D1 hands it over: a JavaScript string, decoded from UTF-8 with
#: U+FFFD for what is not (Python's strict decoding failed every query that
#: read such a value, and a stored row could never be read again). A C
#: callable, as the default is: no Python frame per cell.
_TEXT = functools.partial(str, encoding="utf-8", errors="replace")


def _setup(conn: sqlite3.Connection) -> None:
    conn.text_factory = _TEXT
    conn.execute("PRAGMA foreign_keys=ON")  # as D1 has it
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES)
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, MAX_PARAMS)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)


class _Guard(Deadline):
    """The authorizer and progress handler of one tenant call."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.refused = ""
        #: An ALTER TABLE ran: a RENAME TO names its new table where the
        #: authorizer never sees it, so the schema is checked after it.
        self.altered = False

    def authorize(self, action: int, arg1: Any, arg2: Any, db: Any, trigger: Any) -> int:
        if (action in _NAMED_BY_ARG1 and reserved(arg1)) or (action in _NAMED_BY_ARG2 and reserved(arg2)):
            name = arg1 if action in _NAMED_BY_ARG1 and reserved(arg1) else arg2
            return self._refuse(f"not authorized: names starting with {RESERVED_PREFIX} are reserved for "
                                f"Cloudflare's own tables ({str(name)[:64]!r})")
        if action == sqlite3.SQLITE_ALTER_TABLE:
            self.altered = True
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            return self._refuse("ATTACH and DETACH (and VACUUM INTO) are not allowed in D1")
        if action == sqlite3.SQLITE_PRAGMA and str(arg1).lower() not in ALLOWED_PRAGMAS:
            return self._refuse(f"PRAGMA {arg1} is not allowed in D1")
        if action == sqlite3.SQLITE_FUNCTION and str(arg2).lower() == "load_extension":
            return self._refuse("load_extension() is not allowed in D1")
        if action in (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT):
            return self._refuse("transaction statements are not allowed in D1: use batch() to run "
                                "statements in one transaction")
        return sqlite3.SQLITE_OK

    def _refuse(self, why: str) -> int:
        self.refused = why
        return sqlite3.SQLITE_DENY

def _error_name(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "") or "SQLITE_ERROR"
    return "_".join(name.split("_")[:2])


def _run(conn: sqlite3.Connection, statements: list[Statement], max_bytes: int | None,
         timeout_s: float, max_result: int, prefix: str = "D1_ERROR") -> list[dict[str, Any]]:
    page_size = hold_to(conn, max_bytes)
    guard = _Guard(timeout_s)
    out: list[dict[str, Any]] = []
    budget = max_result
    conn.execute("BEGIN IMMEDIATE")
    conn.set_authorizer(guard.authorize)
    conn.set_progress_handler(guard.progress, 1000)
    index = 0
    try:
        for index, (sql, params) in enumerate(statements):  # noqa: B007 - read after the loop
            started = time.perf_counter()
            before = conn.total_changes
            # An ALTER TABLE is checked against the reserved names there were before it.
            kept = _reserved_names(conn, guard) if "alter" in sql.lower() else set()
            cursor = conn.execute(sql, params)
            if guard.altered:
                guard.altered = False
                _check_renamed(conn, guard, kept)
            columns = [d[0] for d in cursor.description or ()]
            rows: list[list[Any]] = []
            while batch := cursor.fetchmany(256):
                for row in batch:
                    budget -= row_cost(row)
                    if budget < 0:
                        raise BindingError(f"{prefix}: the result is larger than {max_result} "
                                           "bytes (storage.d1_result_bytes): SQLITE_TOOBIG")
                    rows.append(list(row))
            written = conn.total_changes - before
            changes = max(cursor.rowcount, 0) if not columns else written
            if not columns and cursor.rowcount < 0 and written:
                # Python's sqlite3 counts rows only for a statement that starts
                # with INSERT, UPDATE, DELETE or REPLACE, not for WITH ... INSERT:
                # SQLite's own count of the statement's rows (triggers' not in it).
                changes = conn.execute("SELECT changes()").fetchone()[0]
            duration = round((time.perf_counter() - started) * 1000.0, 3)
            out.append({"columns": columns, "rows": rows, "meta": {
                "served_by": "corral-d1",
                # Cloudflare's D1 has regions and read replicas; here one local primary answers.
                "served_by_region": "local",
                "served_by_primary": True,
                "timings": {"sql_duration_ms": duration},
                "duration": duration,
                "changes": changes,
                "last_row_id": cursor.lastrowid or 0,
                "changed_db": written > 0,
                "rows_read": len(rows) if columns else 0,
                "rows_written": written,
            }})
        conn.set_authorizer(None)
        conn.set_progress_handler(None, 0)
        conn.execute("COMMIT")
    except BaseException as exc:
        conn.set_authorizer(None)
        conn.set_progress_handler(None, 0)
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise _explain(exc, guard, prefix, index, statements[index][0] if statements else "",
                           max_bytes, conn, page_size) from None
        raise
    size = conn.execute("PRAGMA page_count").fetchone()[0] * page_size
    for result in out:
        result["meta"]["size_after"] = size
    return out


def _reserved_names(conn: sqlite3.Connection, guard: _Guard) -> set[str]:
    """The schema's names with the reserved prefix (read past the authorizer)."""
    conn.set_authorizer(None)
    try:
        return {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE substr(lower(name), 1, ?) = ?",
            (len(RESERVED_PREFIX), RESERVED_PREFIX))}
    finally:
        conn.set_authorizer(guard.authorize)


def _check_renamed(conn: sqlite3.Connection, guard: _Guard, before: set[str]) -> None:
    """After an ALTER TABLE: refuse a table it renamed into the reserved
    prefix (SQLite shows the authorizer the old name, not the new). Names
    there before (from before the prefix was refused) do not count."""
    new = sorted(_reserved_names(conn, guard) - before)
    if new:
        guard.refused = (f"not authorized: names starting with {RESERVED_PREFIX} are reserved for "
                         f"Cloudflare's own tables ({new[0][:64]!r})")
        raise sqlite3.DatabaseError("not authorized")


#: How much of a failed statement ``exec``'s error quotes (the statement may be 100 kB).
MAX_QUOTED_SQL = 500


def _explain(exc: sqlite3.Error, guard: _Guard, prefix: str, index: int, sql: str,
             max_bytes: int | None, conn: sqlite3.Connection, page_size: int) -> BindingError:
    name = _error_name(exc)
    # exec()'s error names the failed statement and quotes it, as workerd's
    # d1-api.ts does: "D1_EXEC_ERROR: Error in line 2: <its SQL>: <error>".
    sql = sql.rstrip().removesuffix(";")  # the splitter's own terminator
    quoted = sql if len(sql) <= MAX_QUOTED_SQL else sql[:MAX_QUOTED_SQL] + "..."
    where = f"Error in line {index + 1}: {quoted}: " if prefix == "D1_EXEC_ERROR" else ""
    if isinstance(exc, sqlite3.ProgrammingError) and "number of bindings" in str(exc):
        # Python's words ("Incorrect number of bindings supplied ...") are not D1's.
        return BindingError(f"{prefix}: {where}Wrong number of parameter bindings for SQL query.")
    if guard.refused:  # SQLITE_AUTH, or SQLITE_ERROR for a refused function
        return BindingError(f"{prefix}: {where}{guard.refused}: SQLITE_AUTH")
    if guard.timed_out and name == "SQLITE_INTERRUPT":
        return BindingError(f"{prefix}: {where}the query ran past its time limit and was "
                            "interrupted (storage.d1_query_ms): SQLITE_INTERRUPT")
    if name == "SQLITE_FULL" and max_bytes is not None:
        used = conn.execute("PRAGMA page_count").fetchone()[0] * page_size
        return BindingError(quota_error(f"{prefix}: {where}database full", used, max_bytes,
                                        "d1_bytes") + ": SQLITE_FULL")
    return BindingError(f"{prefix}: {where}{exc}: {name}")


class SqliteD1:
    """Embedded D1: ``<state>/storage/d1/<scope>/db.sqlite3``."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def run(self, scope: Scope, statements: list[Statement], *, max_bytes: int | None,
                  timeout_s: float, max_result: int, prefix: str = "D1_ERROR"
                  ) -> list[dict[str, Any]]:
        path = self.services.path(_FOLDER, scope, _FILE)
        return await self.services.databases.run(path, _setup, _run, statements, max_bytes,
                                                 timeout_s, max_result, prefix)

    async def dump(self, scope: Scope, no_schema: bool, no_data: bool, tables: list[str],
                   max_bytes: int) -> bytes:
        path = self.services.path(_FOLDER, scope, _FILE)
        return await self.services.databases.run(path, _setup, d1_export.dump, no_schema, no_data,
                                                 tables, max_bytes)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------
# Statements, as the child sends them
# ---------------------------------------------------------------------------


def _value(value: Any) -> Any:
    """A bound value as D1 stores it. A float that is not finite (``inf``,
    ``-inf``, ``nan``) is NULL: D1's binding sends parameters as JSON, where
    ``JSON.stringify`` writes ``Infinity`` and ``NaN`` as ``null`` (workerd's
    ``d1-api.ts``); SQLite here would have kept an infinity as a REAL and
    turned NaN into NULL."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
        # A whole Number is an INTEGER to D1 (its docs' type conversion): 1.0
        # from Python is the Number 1 in JavaScript, stored as 1, not 1.0.
        return int(value)
    if value is None or isinstance(value, (str, bytes, float)):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise BindingError(f"D1_TYPE_ERROR: the integer {value} does not fit in 64 bits")
        return value
    raise BindingError(f"D1_TYPE_ERROR: Type '{type(value).__name__}' not supported for value "
                       f"{str(value)[:60]!r}")


def _statement(raw: Any) -> Statement:
    if not isinstance(raw, list) or len(raw) != 2 or not isinstance(raw[1], list):
        raise BindingError("a statement must be [sql, params]", "TypeError")
    sql = string(raw[0], "sql")
    if not sql.strip():
        raise BindingError("D1_ERROR: Cannot prepare an empty statement")
    if len(raw[1]) > MAX_PARAMS:
        raise BindingError(f"D1_ERROR: too many SQL variables: {len(raw[1])} bound, at most "
                           f"{MAX_PARAMS}: SQLITE_RANGE")
    return sql, [_value(v) for v in raw[1]]


def split_sql(sql: str) -> list[str]:
    """Statements of a script (``exec``, migrations, ``corral d1 execute``),
    split where SQLite says a statement is complete (not inside a string,
    comment or trigger body)."""
    if "\0" in sql:  # SQLite's splitter would raise ValueError: the platform's error, not the query's
        raise BindingError("D1_ERROR: the query contains a null character: SQLITE_ERROR")
    statements: list[str] = []
    current = ""
    for piece in sql.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if _has_code(current):
                statements.append(current.strip())
            current = ""
    if _has_code(current.rstrip(";")):
        statements.append(current.rstrip(";").strip())
    return statements


def _has_code(sql: str) -> bool:
    """Whether ``sql`` holds more than blanks, semicolons and comments."""
    text = sql
    while True:
        text = text.strip().lstrip(";").strip()
        if text.startswith("--"):
            text = text.partition("\n")[2]
        elif text.startswith("/*"):
            text = text.partition("*/")[2]
        else:
            return bool(text)


#: A database's own tables (not SQLite's, nor D1's reserved ``_cf_`` ones): its ``num_tables``.
_TABLES_SQL = ("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' "
               "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\'")


@register("d1")
class D1Handler:
    def __init__(self, services: Services, backend: D1Backend | None = None) -> None:
        self.services = services
        self.backend = backend or SqliteD1(services)

    def close(self) -> None:
        self.backend.close()

    async def run(self, scope: Scope, statements: list[Statement], max_bytes: int | None,
                  prefix: str = "D1_ERROR") -> list[dict[str, Any]]:
        config = self.services.config
        return await self.backend.run(scope, statements, max_bytes=max_bytes,
                                      timeout_s=config.d1_query_ms / 1000.0,
                                      max_result=config.d1_result_bytes, prefix=prefix)

    async def info(self, scope: Scope) -> dict[str, int]:
        """What Cloudflare's ``GET .../d1/database/{id}`` tells of a database's
        data, its ``file_size`` and ``num_tables`` (``wrangler d1 info`` shows
        both). A database never written is empty: looking does not make its file."""
        if not os.path.exists(self.services.path(_FOLDER, scope, _FILE)):
            return {"file_size": 0, "num_tables": 0}
        (result,) = await self.run(scope, [(_TABLES_SQL, [])], None)
        return {"file_size": result["meta"]["size_after"], "num_tables": result["rows"][0][0]}

    async def call(self, ctx: Context, method: str, args: list[Any]) -> Reply:
        cap = ctx.quota.d1_bytes
        if method == "query":  # one prepared statement: all(), first(), run(), raw()
            return Reply((await self.run(ctx.scope, [_statement(arg(args, 0))], cap))[0])
        if method == "batch":
            raw = arg(args, 0)
            if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_BATCH:
                raise BindingError("batch() takes a list of 1 to "
                                   f"{MAX_BATCH} prepared statements", "TypeError")
            return Reply(await self.run(ctx.scope, [_statement(s) for s in raw], cap))
        if method == "exec":
            started = time.perf_counter()
            statements = [(s, []) for s in split_sql(string(arg(args, 0), "sql"))]
            if not statements:
                raise BindingError("D1_EXEC_ERROR: Error in line 1: no SQL statement to run")
            await self.run(ctx.scope, statements, cap, "D1_EXEC_ERROR")
            return Reply({"count": len(statements),
                          "duration": round((time.perf_counter() - started) * 1000.0, 3)})
        raise BindingError(f"D1 databases have no method {method[:64]!r}", "TypeError")
