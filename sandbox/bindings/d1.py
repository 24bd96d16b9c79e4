"""``env.DB``: D1 with Cloudflare's methods and result shapes."""

from __future__ import annotations

import itertools
import time
from typing import Any

from . import AttrDict, AttrList, JsException, call, js_double, kind, options, wrap

_BIND_TYPES = (type(None), bool, int, float, str, bytes)
#: Pyodide hands a Python int to JavaScript as a Number from -2**53 to 2**53
#: and as a BigInt past that; D1's bind() refuses BigInts.
MAX_NUMBER_INT = 2**53


def _bindable(value: Any) -> Any:
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, list) and all(isinstance(v, int) and 0 <= v < 256 for v in value):
        return bytes(value)  # an ArrayBuffer as D1 hands it back
    if not isinstance(value, _BIND_TYPES):
        # In JavaScript's words, as d1-api.ts writes them (`typeof r`, `${r}`):
        # the value reached D1 as a JavaScript object.
        raise JsException("Error", f"D1_TYPE_ERROR: Type 'object' not supported for value "
                                   f"'{_js_text(value)[:60]}'")
    if isinstance(value, int) and not -MAX_NUMBER_INT <= value <= MAX_NUMBER_INT:
        raise JsException("Error", f"D1_TYPE_ERROR: Type 'bigint' not supported for value "
                                   f"'{_bigint_text(value)}'")
    return value


def _js_text(value: Any) -> str:
    """What JavaScript's String() gives for the object a Python value becomes."""
    if isinstance(value, (list, tuple)):
        return ",".join("" if v is None else _js_text(v) if isinstance(v, (list, tuple, dict, set, frozenset))
                        else str(v).lower() if isinstance(v, bool) else str(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return "[object Set]"
    return "[object Object]"


def _bigint_text(value: int) -> str:
    """An int as JavaScript prints the BigInt it would be (its digits), or
    its size when the digits would be many (Python refuses to print an int
    of more than 4,300 digits, and the message should stay short)."""
    if value.bit_length() <= 256:
        return str(value)
    return f"{'-' if value < 0 else ''}<{value.bit_length()}-bit integer>"


def _cell(value: Any) -> Any:
    """BLOBs come back as lists of byte values, as D1 returns them; a number
    as the JavaScript Number D1 hands over (:func:`js_double`): a whole REAL
    an int, an INTEGER past 2**53 the float it rounds to (D1's docs: BigInts
    are not supported, integers are safe up to Number.MAX_SAFE_INTEGER)."""
    return list(value) if isinstance(value, bytes) else js_double(value)


def _rows(raw: dict[str, Any]) -> list[AttrDict]:
    columns = raw["columns"]
    return AttrList(AttrDict(zip(columns, map(_cell, row), strict=False)) for row in raw["rows"])


def _result(raw: dict[str, Any]) -> AttrDict:
    return AttrDict(results=_rows(raw), success=True, meta=wrap(raw["meta"]))


class D1PreparedStatement:
    """``DB.prepare(sql)``; ``bind()`` returns a new statement, as on Cloudflare."""

    def __init__(self, db: D1Database | D1DatabaseSession, sql: str,
                 params: list[Any] | None = None) -> None:
        if not isinstance(sql, str):
            raise TypeError(f"prepare() takes SQL as a string, not {type(sql).__name__}")
        self._db = db
        self._sql = sql
        self._params = params or []

    def bind(self, *values: Any) -> D1PreparedStatement:
        return D1PreparedStatement(self._db, self._sql, [_bindable(v) for v in values])

    def _wire(self) -> list[Any]:
        return [self._sql, self._params]

    async def _query(self) -> dict[str, Any]:
        value, _ = await call(self._db._name, "query", [self._wire()])
        self._db._advance()
        return value

    async def all(self) -> AttrDict:
        return _result(await self._query())

    async def run(self) -> AttrDict:
        return _result(await self._query())

    async def first(self, column: str | None = None, **keywords: Any) -> Any:
        column = keywords.get("colName", keywords.get("col_name", column))
        raw = await self._query()
        rows = _rows(raw)
        if column is not None and column not in raw["columns"]:
            if not rows:
                return None
            raise JsException("Error", f"D1_COLUMN_NOTFOUND: Column not found ({column})")
        if not rows:
            return None
        return rows[0] if column is None else rows[0][column]

    async def raw(self, options_: Any = None, **keywords: Any) -> AttrList:
        opts = options(options_, keywords, "raw()")
        raw = await self._query()
        rows = AttrList(AttrList(map(_cell, row)) for row in raw["rows"])
        if opts.get("columnNames"):
            rows.insert(0, AttrList(raw["columns"]))
        return rows

    def __repr__(self) -> str:
        return f"<D1PreparedStatement {self._sql[:40]!r}>"


@kind("d1")
class D1Database:
    """A D1 binding (``d1_databases`` / ``d1``)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def prepare(self, sql: str) -> D1PreparedStatement:
        return D1PreparedStatement(self, sql)

    async def batch(self, statements: Any) -> AttrList:
        statements = list(statements)
        if not all(isinstance(s, D1PreparedStatement) for s in statements):
            raise TypeError("batch() takes a list of prepared statements (DB.prepare(...))")
        value, _ = await call(self._name, "batch", [[s._wire() for s in statements]])
        return AttrList(_result(r) for r in value)

    async def exec(self, sql: str) -> AttrDict:  # noqa: A003 - D1's name
        value, _ = await call(self._name, "exec", [sql])
        return wrap(value)

    def withSession(self, constraint: Any = None) -> D1DatabaseSession:  # noqa: N802
        """A session (Cloudflare's read replication). Corral's database has one
        copy, so every read already sees every write; the session keeps the
        bookmark API: none until its first query, then the latest one's."""
        if constraint is not None and not isinstance(constraint, str):
            raise TypeError("withSession() takes a bookmark, 'first-primary' or 'first-unconstrained'")
        # d1-api.ts trims it, and an empty one is "first-unconstrained": no bookmark yet.
        constraint = (constraint or "").strip()
        bookmark = None if constraint in ("", "first-primary", "first-unconstrained") else constraint
        return D1DatabaseSession(self, bookmark)

    with_session = withSession

    def _advance(self) -> None:
        """A query ran (sessions keep a bookmark; the database itself does not)."""

    def __repr__(self) -> str:
        return f"<D1Database {self._name}>"


class D1DatabaseSession:
    """``DB.withSession()``: ``prepare``, ``batch`` and ``getBookmark``."""

    def __init__(self, db: D1Database, bookmark: str | None) -> None:
        self._db = db
        self._name = db._name
        self._bookmark = bookmark

    def prepare(self, sql: str) -> D1PreparedStatement:
        return D1PreparedStatement(self, sql)

    async def batch(self, statements: Any) -> AttrList:
        result = await self._db.batch(statements)
        self._advance()
        return result

    def getBookmark(self) -> str | None:  # noqa: N802
        return self._bookmark

    get_bookmark = getBookmark

    def _advance(self) -> None:
        """A query ran: the session's bookmark is now past it (opaque, ordered)."""
        self._bookmark = f"{time.time_ns():016x}-{next(_SEQUENCE):08x}"

    def __repr__(self) -> str:
        return f"<D1DatabaseSession {self._db._name}>"


_SEQUENCE = itertools.count(1)
