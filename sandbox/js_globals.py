"""JavaScript's standard globals, as ``from js import ...`` reaches them.

On Cloudflare, ``js`` is the whole JavaScript global scope, and Python
Workers use its plain values and helpers directly: ``Date.new()``,
``Math.floor``, ``btoa``, ``encodeURIComponent``, ``setTimeout``,
``Map.new()``, ``Promise.all``, ``structuredClone``, ``navigator.userAgent``
(Cloudflare's own SDK calls ``js.Map.new`` and ``js.Date.new``). Corral runs
CPython, so each is a Python stand-in with JavaScript's names and
semantics, returning Python values: a ``Date`` is a UTC ``datetime`` that
also answers ``getTime()`` and ``toISOString()``, a ``Map`` a ``dict`` with
``set``/``has``, a ``Promise`` an awaitable. Globals that need a JavaScript
engine (``ReadableStream``'s constructor, ``AbortController``) stay
unavailable, with an error that says so (:mod:`sandbox.js_shim`).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import email.utils
import itertools
import math
import random
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .pyodide_shim import JsException
from .sdk_types import JsList

_UTC = datetime.UTC
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class JsDate(datetime.datetime):
    """A JavaScript ``Date``: a UTC ``datetime`` (so Python code compares and
    formats it as one) with JavaScript's methods. Workers run in UTC, so the
    local getters are the UTC ones, as on Cloudflare."""

    @classmethod
    def from_ms(cls, ms: float, naive: bool = False) -> JsDate:
        """The Date of ``ms`` since the epoch. ``naive``: with no tzinfo, as
        the SDK hands a binding's Date to Python (``python_from_rpc``:
        ``datetime.fromtimestamp``, in a runtime whose zone is UTC), so that
        it subtracts from ``datetime.now()``."""
        if not math.isfinite(ms) or abs(ms) > 8.64e15:
            raise JsException("RangeError", "Invalid time value")
        moment = cls.fromtimestamp(ms / 1000.0, _UTC)
        return moment.replace(tzinfo=None) if naive else moment

    def _utc(self) -> datetime.datetime:
        """This moment in UTC (a naive one is UTC's wall clock)."""
        return self.replace(tzinfo=_UTC) if self.tzinfo is None else self.astimezone(_UTC)

    def getTime(self) -> int:  # noqa: N802 - JavaScript's names
        return round(self._utc().timestamp() * 1000)

    valueOf = getTime

    def toISOString(self) -> str:  # noqa: N802
        utc = self._utc()
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"

    toJSON = toISOString

    def toUTCString(self) -> str:  # noqa: N802
        return email.utils.format_datetime(self._utc(), usegmt=True)

    toGMTString = toUTCString

    def toString(self) -> str:  # noqa: N802
        utc = self._utc()
        return (f"{_DAYS[utc.weekday()]} {_MONTHS[utc.month - 1]} {utc.day:02d} {utc.year} "
                f"{utc:%H:%M:%S} GMT+0000 (Coordinated Universal Time)")

    def getUTCFullYear(self) -> int:  # noqa: N802
        return self._utc().year

    def getUTCMonth(self) -> int:  # noqa: N802 - zero-based, as in JavaScript
        return self._utc().month - 1

    def getUTCDate(self) -> int:  # noqa: N802
        return self._utc().day

    def getUTCDay(self) -> int:  # noqa: N802 - Sunday is 0
        return (self._utc().weekday() + 1) % 7

    def getUTCHours(self) -> int:  # noqa: N802
        return self._utc().hour

    def getUTCMinutes(self) -> int:  # noqa: N802
        return self._utc().minute

    def getUTCSeconds(self) -> int:  # noqa: N802
        return self._utc().second

    def getUTCMilliseconds(self) -> int:  # noqa: N802
        return self._utc().microsecond // 1000

    getFullYear, getMonth, getDate, getDay = getUTCFullYear, getUTCMonth, getUTCDate, getUTCDay
    getHours, getMinutes, getSeconds = getUTCHours, getUTCMinutes, getUTCSeconds
    getMilliseconds = getUTCMilliseconds

    def getTimezoneOffset(self) -> int:  # noqa: N802
        return 0


def _parse_date(text: str) -> float:
    """Milliseconds of a date string as ``Date.parse`` reads the common forms:
    ISO 8601 (a date alone is UTC midnight) and RFC 2822 / HTTP dates."""
    value = text.strip()
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return math.nan
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_UTC)
    return moment.timestamp() * 1000.0


def _utc_ms(year: float, month: float = 0, day: float = 1, hours: float = 0, minutes: float = 0,
            seconds: float = 0, ms: float = 0) -> float:
    """``Date.UTC``'s arithmetic: fields may overflow into the next (month 12 is
    next January), as JavaScript lets them."""
    year, month = int(year), int(month)
    if 0 <= year <= 99:
        year += 1900
    year += month // 12
    first = datetime.datetime(year, month % 12 + 1, 1, tzinfo=_UTC)
    offset = datetime.timedelta(days=day - 1, hours=hours, minutes=minutes, seconds=seconds, milliseconds=ms)
    return (first + offset).timestamp() * 1000.0


class _DateClass:
    """``js.Date``: ``now()``, ``new(...)``, ``parse(text)``, ``UTC(...)``."""

    @staticmethod
    def now() -> float:
        return date_now()

    @staticmethod
    def new(*args: Any) -> JsDate:
        """``new Date()``, ``new Date(ms)``, ``new Date("2024-01-02T03:04:05Z")``,
        ``new Date(date)``, or ``new Date(year, monthIndex, day, ...)`` (UTC)."""
        if not args:
            return JsDate.now(_UTC)
        if len(args) == 1:
            value = args[0]
            if isinstance(value, datetime.datetime):
                return JsDate.from_ms(value.timestamp() * 1000.0)
            if isinstance(value, str):
                return JsDate.from_ms(_parse_date(value))
            return JsDate.from_ms(float(value))
        return JsDate.from_ms(_utc_ms(*(float(a) for a in args)))

    @staticmethod
    def parse(text: str) -> float:
        return _parse_date(str(text))

    @staticmethod
    def UTC(*fields: float) -> float:  # noqa: N802
        return _utc_ms(*fields)


def _js_round(x: float) -> float:
    """JavaScript's ``Math.round``: halves go up (``-2.5`` is ``-2``)."""
    return math.floor(x + 0.5)


class _Math:
    """``js.Math``: the same functions over Python floats."""

    PI, E, LN2, LN10 = math.pi, math.e, math.log(2), math.log(10)
    LOG2E, LOG10E, SQRT2, SQRT1_2 = 1 / math.log(2), 1 / math.log(10), math.sqrt(2), math.sqrt(0.5)
    abs, floor, ceil, trunc = staticmethod(abs), staticmethod(math.floor), staticmethod(math.ceil), \
        staticmethod(math.trunc)
    sqrt, cbrt, exp, log = staticmethod(math.sqrt), staticmethod(math.cbrt), staticmethod(math.exp), \
        staticmethod(math.log)
    log2, log10, log1p, expm1 = staticmethod(math.log2), staticmethod(math.log10), staticmethod(math.log1p), \
        staticmethod(math.expm1)
    sin, cos, tan, asin, acos = staticmethod(math.sin), staticmethod(math.cos), staticmethod(math.tan), \
        staticmethod(math.asin), staticmethod(math.acos)
    atan, atan2, hypot = staticmethod(math.atan), staticmethod(math.atan2), staticmethod(math.hypot)
    round = staticmethod(_js_round)

    @staticmethod
    def random() -> float:
        return random.random()

    @staticmethod
    def pow(x: float, y: float) -> float:
        return math.pow(x, y)

    @staticmethod
    def sign(x: float) -> float:
        return x if x == 0 or math.isnan(x) else math.copysign(1, x)

    @staticmethod
    def max(*values: float) -> float:
        return max(values, default=-math.inf)

    @staticmethod
    def min(*values: float) -> float:
        return min(values, default=math.inf)


class JsMap(dict):
    """A JavaScript ``Map``: a ``dict`` with ``set``/``has``/``delete``/``size``."""

    def set(self, key: Any, value: Any) -> JsMap:
        self[key] = value
        return self

    def has(self, key: Any) -> bool:
        return key in self

    def delete(self, key: Any) -> bool:
        return self.pop(key, _MISSING) is not _MISSING

    @property
    def size(self) -> int:
        return len(self)

    def entries(self) -> Iterable[tuple[Any, Any]]:
        return iter(self.items())

    def forEach(self, callback: Callable[..., Any]) -> None:  # noqa: N802
        for key, value in list(self.items()):
            callback(value, key, self)


class JsSet(set):
    """A JavaScript ``Set``: a ``set`` with ``has``/``delete``/``size``."""

    def has(self, value: Any) -> bool:
        return value in self

    def delete(self, value: Any) -> bool:
        found = value in self
        self.discard(value)
        return found

    @property
    def size(self) -> int:
        return len(self)

    def forEach(self, callback: Callable[..., Any]) -> None:  # noqa: N802
        for value in list(self):
            callback(value, value, self)


_MISSING = object()


class _MapClass:
    @staticmethod
    def new(entries: Iterable[Any] | None = None) -> JsMap:
        return JsMap(entries.items() if isinstance(entries, dict) else (entries or ()))


class _SetClass:
    @staticmethod
    def new(values: Iterable[Any] | None = None) -> JsSet:
        return JsSet(values or ())


def date_now() -> int:
    """``Date.now()``: whole milliseconds since the epoch."""
    return math.floor(datetime.datetime.now(_UTC).timestamp() * 1000.0)


class _ArrayClass:
    """``js.Array``: ``new(...)``, ``of(...)``, ``isArray(x)``, and ``from``
    (reached as ``getattr(Array, "from")``, as in Pyodide): Python lists."""

    @staticmethod
    def new(*items: Any) -> JsList:
        if len(items) == 1 and isinstance(items[0], int) and not isinstance(items[0], bool):
            return JsList([None] * items[0])
        return JsList(items)

    @staticmethod
    def of(*items: Any) -> JsList:
        return JsList(items)

    @staticmethod
    def isArray(value: Any) -> bool:  # noqa: N802
        return isinstance(value, list)

    @staticmethod
    def from_(iterable: Iterable[Any], mapper: Callable[..., Any] | None = None) -> JsList:
        items = list(iterable.items()) if isinstance(iterable, dict) else list(iterable)
        return JsList(mapper(item, i) for i, item in enumerate(items)) if mapper else JsList(items)


setattr(_ArrayClass, "from", staticmethod(_ArrayClass.from_))  # noqa: B010 - "from" is a keyword


class _PromiseClass:
    """``js.Promise``: ``new(executor)``, ``resolve``, ``reject``, ``all``,
    ``allSettled``, ``race``: awaitables on the invocation's own loop."""

    @staticmethod
    def new(executor: Callable[[Callable[[Any], None], Callable[[Any], None]], Any]) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()

        def resolve(value: Any = None) -> None:
            if not future.done():
                future.set_result(value)

        def reject(reason: Any = None) -> None:
            if not future.done():
                future.set_exception(reason if isinstance(reason, BaseException)
                                     else JsException("Error", "" if reason is None else str(reason)))
        try:
            executor(resolve, reject)
        except Exception as exc:  # noqa: BLE001 - a throwing executor rejects, as in JavaScript
            reject(exc)
        return future

    @staticmethod
    async def resolve(value: Any = None) -> Any:
        return await value if isinstance(value, Awaitable) else value

    @staticmethod
    async def reject(reason: Any = None) -> Any:
        raise reason if isinstance(reason, BaseException) else JsException("Error", str(reason))

    @staticmethod
    async def all(values: Iterable[Any]) -> list[Any]:
        return list(await asyncio.gather(*(_PromiseClass.resolve(v) for v in values)))

    @staticmethod
    async def allSettled(values: Iterable[Any]) -> list[dict[str, Any]]:  # noqa: N802
        results = await asyncio.gather(*(_PromiseClass.resolve(v) for v in values), return_exceptions=True)
        return [{"status": "rejected", "reason": r} if isinstance(r, BaseException)
                else {"status": "fulfilled", "value": r} for r in results]

    @staticmethod
    async def race(values: Iterable[Any]) -> Any:
        tasks = [asyncio.ensure_future(_PromiseClass.resolve(v)) for v in values]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            return next(iter(done)).result()
        finally:
            for task in tasks:
                task.cancel()


class Timers:
    """``setTimeout``/``setInterval`` and their ``clear*``: callbacks on the
    loop after a delay in milliseconds, an ``async def`` one run as a task.

    A timer belongs to the invocation that set it, as in workerd, where it
    lives in the request's I/O context: once that invocation is over (its
    response sent and its ``waitUntil`` work done) the timer never fires, so
    a forgotten ``setInterval`` cannot keep a tenant's child busy between
    requests. Set while the script loads, a timer is workerd's global-scope
    error: there is no request for it to belong to."""

    def __init__(self, current: Callable[[], int], running: Callable[[int], bool],
                 global_scope_error: str) -> None:
        self._current = current
        self._running = running
        self._error = global_scope_error
        self._ids = itertools.count(1)
        self._handles: dict[int, asyncio.TimerHandle] = {}

    def setTimeout(self, callback: Callable[..., Any], delay: float = 0, *args: Any) -> int:  # noqa: N802
        return self._schedule(callback, delay, args, repeat=False)

    def setInterval(self, callback: Callable[..., Any], delay: float = 0, *args: Any) -> int:  # noqa: N802
        return self._schedule(callback, delay, args, repeat=True)

    def clearTimeout(self, timer_id: Any = None) -> None:  # noqa: N802
        handle = self._handles.pop(timer_id, None) if isinstance(timer_id, int) else None
        if handle is not None:
            handle.cancel()

    clearInterval = clearTimeout

    def _schedule(self, callback: Callable[..., Any], delay: Any, args: tuple[Any, ...], repeat: bool) -> int:
        invocation = self._current()
        if invocation == 0:
            raise JsException("Error", self._error)
        if not callable(callback):
            raise JsException("TypeError", "The first argument to setTimeout must be a function")
        seconds = max(0.0, float(delay or 0)) / 1000.0
        loop = asyncio.get_running_loop()
        timer_id = next(self._ids)

        def fire() -> None:
            if not self._running(invocation):
                self._handles.pop(timer_id, None)
                return
            if repeat:
                self._handles[timer_id] = loop.call_later(max(seconds, 0.001), fire)
            else:
                self._handles.pop(timer_id, None)
            result = callback(*args)
            if asyncio.iscoroutine(result):
                asyncio.ensure_future(result)

        self._handles[timer_id] = loop.call_later(seconds, fire)
        return timer_id


def btoa(data: Any) -> str:
    """Base64 of a string of code points 0-255, as JavaScript's ``btoa``."""
    try:
        raw = str(data).encode("latin-1")
    except UnicodeEncodeError:
        raise JsException("InvalidCharacterError",
                          "btoa() can only operate on characters in the Latin1 (ISO/IEC 8859-1) range") from None
    return base64.b64encode(raw).decode("ascii")


def atob(data: Any) -> str:
    """The decoded string of ``atob``: one code point per byte."""
    text = "".join(str(data).split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True).decode("latin-1")
    except ValueError:
        raise JsException("InvalidCharacterError", "atob() called with invalid base64-encoded data") from None


def encodeURIComponent(value: Any) -> str:  # noqa: N802
    return urllib.parse.quote(_js_string(value), safe="-_.!~*'()")


def encodeURI(value: Any) -> str:  # noqa: N802
    return urllib.parse.quote(_js_string(value), safe="-_.!~*'();/?:@&=+$,#")


def decodeURIComponent(value: Any) -> str:  # noqa: N802
    try:
        return urllib.parse.unquote(str(value), errors="strict")
    except UnicodeDecodeError:
        raise JsException("URIError", "URI malformed") from None


#: Escapes ``decodeURI`` leaves as they are: JavaScript's reserved characters
#: ``; / ? : @ & = + $ , #``.
_RESERVED_ESCAPE = re.compile(r"(%(?:2[346bBcCfF]|3[aAbBdDfF]|40))")


def decodeURI(value: Any) -> str:  # noqa: N802
    pieces = _RESERVED_ESCAPE.split(str(value))
    return "".join(piece if i % 2 else decodeURIComponent(piece) for i, piece in enumerate(pieces))


def _js_string(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def structuredClone(value: Any) -> Any:  # noqa: N802
    """A deep copy, as ``structuredClone`` makes one (functions cannot be cloned)."""
    if callable(value) and not isinstance(value, type):
        raise JsException("DataCloneError", f"{value!r} could not be cloned.")
    return copy.deepcopy(value)


def parseFloat(value: Any) -> float:  # noqa: N802
    """The longest leading decimal number of the text, else NaN."""
    text = str(value).strip()
    for end in range(len(text), 0, -1):
        try:
            number = float(text[:end])
        except ValueError:
            continue
        if text[:end].lower() in ("nan", "+nan", "-nan", "inf", "+inf", "-inf"):
            continue
        return number
    if text.startswith(("Infinity", "+Infinity")):
        return math.inf
    return -math.inf if text.startswith("-Infinity") else math.nan


def parseInt(value: Any, radix: int = 10) -> float:  # noqa: N802
    """The leading integer of the text in ``radix`` (``0x`` means 16), else NaN."""
    text = str(value).strip()
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    radix = int(radix or 10)
    if radix in (10, 16) and text[:2].lower() == "0x":
        text, radix = text[2:], 16
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"[:radix]
    head = ""
    for ch in text.lower():
        if ch not in digits:
            break
        head += ch
    return sign * int(head, radix) if head else math.nan


class _NumberClass:
    """``js.Number``: its constants and predicates; ``Number(x)`` converts."""

    MAX_SAFE_INTEGER, MIN_SAFE_INTEGER = 2**53 - 1, -(2**53 - 1)
    EPSILON, MAX_VALUE, MIN_VALUE = 2.0**-52, 1.7976931348623157e308, 5e-324
    NaN, POSITIVE_INFINITY, NEGATIVE_INFINITY = math.nan, math.inf, -math.inf
    parseFloat, parseInt = staticmethod(parseFloat), staticmethod(parseInt)

    def __call__(self, value: Any = 0) -> float:
        if value is None or value == "":
            return 0
        if isinstance(value, bool):
            return int(value)
        try:
            number = float(str(value).strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            return math.nan
        return int(number) if number.is_integer() and abs(number) <= 2**53 else number

    @staticmethod
    def isInteger(value: Any) -> bool:  # noqa: N802
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and float(value).is_integer()

    @staticmethod
    def isSafeInteger(value: Any) -> bool:  # noqa: N802
        return _NumberClass.isInteger(value) and abs(value) <= 2**53 - 1

    @staticmethod
    def isFinite(value: Any) -> bool:  # noqa: N802
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    @staticmethod
    def isNaN(value: Any) -> bool:  # noqa: N802
        return isinstance(value, float) and math.isnan(value)


class _StringClass:
    """``js.String``: ``String(x)`` converts; ``fromCharCode``, ``fromCodePoint``."""

    def __call__(self, value: Any = "") -> str:
        return _js_string(value)

    @staticmethod
    def fromCharCode(*codes: int) -> str:  # noqa: N802
        return "".join(chr(int(c) & 0xFFFF) for c in codes)

    @staticmethod
    def fromCodePoint(*codes: int) -> str:  # noqa: N802
        return "".join(chr(int(c)) for c in codes)


class _Navigator:
    """``navigator``, as workerd sets it."""

    userAgent = "Cloudflare-Workers"  # noqa: N815
    hardwareConcurrency = 1  # noqa: N815
    language = "en-US"


def install_into(js: Any, timers: Timers) -> None:
    """Put the globals on the ``js`` module (``from js import Math`` works)."""
    js.Date = _DateClass()
    js.Math = _Math()
    js.Map = _MapClass()
    js.Set = _SetClass()
    js.Array = _ArrayClass()
    js.Promise = _PromiseClass()
    js.Number = _NumberClass()
    js.String = _StringClass()
    js.navigator = _Navigator()
    for name in ("setTimeout", "setInterval", "clearTimeout", "clearInterval"):
        setattr(js, name, getattr(timers, name))
    for function in (btoa, atob, encodeURIComponent, encodeURI, decodeURIComponent, decodeURI,
                     structuredClone, parseFloat, parseInt):
        setattr(js, function.__name__, function)
    js.isNaN = lambda value: math.isnan(_NumberClass()(value))
    js.isFinite = lambda value: math.isfinite(_NumberClass()(value))
    js.NaN, js.Infinity = math.nan, math.inf
