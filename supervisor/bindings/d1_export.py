"""A D1 database as SQL text, as Cloudflare's D1 export makes it
(``wrangler d1 export --remote``).

The text rebuilds the database when run on an empty one: each table's
``CREATE`` and then its rows as ``INSERT`` statements, then the indexes,
views and triggers, after ``PRAGMA defer_foreign_keys=TRUE`` so that rows
may come in any order. Values are written by SQLite's own ``quote()``, so
text, blobs, integers and reals come back exactly. ``no_schema`` leaves the
``CREATE`` statements out, ``no_data`` the rows, and ``tables`` limits both
to the tables named (with their indexes and triggers; views come with a
whole export only). SQLite's own tables and Cloudflare's reserved ``_cf_``
ones are never exported; a database with a virtual table is refused, as
Cloudflare's export refuses it (its shadow tables cannot be rebuilt row by
row).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from supervisor.bindings.base import BindingError


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _user_objects(conn: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
    """(type, name, table, sql) of every object the tenant made, in creation order."""
    return [row for row in conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL "
        "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND tbl_name NOT LIKE '\\_cf\\_%' ESCAPE '\\' "
        "ORDER BY rowid")]


def dump_lines(conn: sqlite3.Connection, no_schema: bool, no_data: bool,
               tables: list[str]) -> Iterator[str]:
    """The statements of the export, one per line."""
    objects = _user_objects(conn)
    virtual = [name for kind, name, _, sql in objects
               if kind == "table" and sql.upper().startswith("CREATE VIRTUAL TABLE")]
    if virtual:
        raise BindingError(f"D1 export is not supported for databases with virtual tables "
                           f"({', '.join(sorted(virtual))})")
    known = {name for kind, name, _, _ in objects if kind == "table"}
    missing = [t for t in tables if t not in known]
    if missing:
        raise BindingError(f"no such table to export: {', '.join(missing)}")
    wanted = set(tables) or known
    yield "PRAGMA defer_foreign_keys=TRUE;"
    for kind, name, _, sql in objects:
        if kind != "table" or name not in wanted:
            continue
        if not no_schema:
            yield f"{sql};"
        if no_data:
            continue
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({_quoted(name)})")]
        values = " || ',' || ".join(f"quote({_quoted(c)})" for c in columns)
        insert = "INSERT INTO " + _quoted(name).replace("'", "''") + " VALUES("
        for (line,) in conn.execute(f"SELECT '{insert}' || {values} || ');' FROM {_quoted(name)}"):
            yield line
    if no_schema:
        return
    for kind, _, table, sql in objects:
        # An index or trigger goes with its table; a view (its own tbl_name) with a whole export.
        if kind != "table" and (table in wanted or (kind == "view" and not tables)):
            yield f"{sql};"


def dump(conn: sqlite3.Connection, no_schema: bool, no_data: bool, tables: list[str],
         max_bytes: int) -> bytes:
    """The export as UTF-8 text, or :class:`BindingError` past ``max_bytes``.
    Read in one transaction, so it is one moment of the database."""
    out: list[bytes] = []
    size = 0
    conn.execute("BEGIN")
    try:
        for line in dump_lines(conn, no_schema, no_data, tables):
            data = line.encode("utf-8", "surrogatepass") + b"\n"
            size += len(data)
            if size > max_bytes:
                raise BindingError(f"the export is larger than {max_bytes} bytes, the most Corral "
                                   "exports at once (export some tables at a time: --table)")
            out.append(data)
    finally:
        conn.execute("ROLLBACK")
    return b"".join(out)


__all__ = ["dump", "dump_lines"]
