"""Turning a tenant's print, logging and console calls into trace logs.

Each line becomes a ``Log`` frame tagged with the invocation the code runs
for (a context variable), so concurrent invocations in one child keep their
logs apart. Output is line-buffered and capped per line, so a tenant cannot
flood the supervisor with one giant write.
"""

from __future__ import annotations

import codecs
import io
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

import msgspec

#: Longest message kept; the rest is cut with a marker.
MAX_LINE = 16 * 1024

_sink: Callable[..., None] | None = None


def set_sink(sink: Callable[..., None]) -> None:
    """``sink(level, message, cut)`` receives every completed line (``cut``:
    it was longer than :data:`MAX_LINE`); ``sink(level, text, False, True)``
    a console call's arguments, as the JSON text of their list."""
    global _sink
    _sink = sink


#: A path into the state dir's bundles (``.../bundles/<keyed name>``) or
#: package store (``.../packages/entries/<keyed name>``), anywhere in a text.
_STATE_PATH = re.compile(r"(?:/[^\s'\"/]+)*/(?:bundles|packages/entries)/[0-9A-Za-z._+-]{8,}(/|(?![^\s'\"/]))")


def strip_state_paths(text: str) -> str:
    """``text`` with the host's folders of bundles and packages cut out: a
    file of the script's own by its path in its project (``data.txt``, the
    folder itself ``.``), as its stack's frames are. An exception's message
    crosses to other scripts (a dispatcher, a service binding's caller, a tail
    consumer), and the folder's name is the script's secret on the host."""
    if "/bundles/" not in text and "/packages/entries/" not in text:
        return text
    return _STATE_PATH.sub(lambda m: "" if m.group(1) else ".", text)


def exception_text(exc: BaseException) -> str:
    """``str(exc)``, or what the traceback module writes when that fails: a
    tenant's exception whose ``__str__`` raised (or returned no str) escaped
    the runtime's own handler, and the invocation was never answered."""
    try:
        text = str(exc)
    except BaseException:  # noqa: BLE001 - any failure of the tenant's __str__
        return "<exception str() failed>"
    return text


def wire_text(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate (``print("\\ud800")``,
    text decoded with ``surrogateescape``) is written as its escape, ``\\ud800``.
    Sent as it was, it could not be encoded, and took the worker down."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def cut(text: str, limit: int = MAX_LINE) -> str:
    """``text`` up to ``limit`` characters, the rest cut with a marker (an
    exception's message, a log line: sent whole, one could be too large
    for a message to the supervisor)."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} characters cut]"


def emit(level: str, message: str) -> None:
    # A traceback printed or logged names the script's files by their paths
    # on the host, whose folder is the script's secret (strip_state_paths).
    message = strip_state_paths(wire_text(message))
    was_cut = len(message) > MAX_LINE
    if was_cut:
        message = cut(message)
    if _sink is not None:
        _sink(level, message, was_cut)


class _ByteWriter(io.RawIOBase):
    """``sys.stdout.buffer``: bytes written are decoded as UTF-8 (a character
    split across writes waits for its rest; bad bytes become U+FFFD) and go
    to the text stream, so they become log lines as text does."""

    def __init__(self, text: LineWriter) -> None:
        self._text = text
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._text.write(self._decode(view.tobytes()))
        return view.nbytes


class LineWriter(io.TextIOBase):
    """A text stream (``sys.stdout``) that emits a log line per line written.

    It looks like Pyodide's ``sys.stdout`` (a UTF-8 TextIOWrapper) where code
    looks: ``encoding`` (None would break code that sniffs it), ``errors``,
    ``line_buffering``, a binary ``buffer`` and ``reconfigure``."""

    encoding = "utf-8"
    errors = "strict"
    line_buffering = True

    def __init__(self, level: str) -> None:
        self._level = level
        self._partial = ""
        #: The partial line was emitted, cut, for its length: the newline
        #: that ends it ends nothing more.
        self._cut = False
        self.buffer = _ByteWriter(self)

    def writable(self) -> bool:
        return True

    def reconfigure(self, **_: Any) -> None:
        """Accepted and ignored (``sys.stdout.reconfigure(encoding="utf-8")``
        opens many scripts): every line becomes a log line, as UTF-8, whatever it asks."""

    def write(self, text: str) -> int:
        data = self._partial + text
        *lines, self._partial = data.split("\n")
        if lines and self._cut:
            self._cut = False
            if lines[0] == "":
                del lines[0]  # the end of the line emitted (cut) already
        for line in lines:
            emit(self._level, line)
        if len(self._partial) > MAX_LINE:
            emit(self._level, self._partial)
            self._partial = ""
            self._cut = True
        return len(text)

    def flush(self) -> None:
        if self._partial:
            emit(self._level, self._partial)
            self._partial = ""


_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn",
           logging.ERROR: "error", logging.CRITICAL: "error"}


class _TraceHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:  # noqa: D102
        try:
            message = self.format(record)
        except Exception:  # noqa: BLE001 - a broken format string is the tenant's
            message = str(record.msg)
        # An exception logged (logging.exception) is a log line, not one of
        # the trace's exceptions: those are the uncaught ones, as on Cloudflare.
        emit(_LEVELS.get(record.levelno, "log"), message)


def install_logging() -> None:
    """Route the root logger to the trace; nothing to do when it already is.

    The zygote installs it once before it forks, because installing writes
    to every logger the imports created (``setLevel`` clears their caches):
    ~45 of the zygote's pages that each child copied. A child calls this
    again, cheaply, in case a package zygote's framework rehearsal
    configured logging its own way.
    """
    if logging.basicConfig is not _basic_config:
        logging.basicConfig = _basic_config
    root = logging.getLogger()
    handlers = root.handlers
    if len(handlers) == 1 and type(handlers[0]) is _TraceHandler and root.level == logging.INFO:
        return
    root.handlers[:] = [_TraceHandler()]
    root.setLevel(logging.INFO)


_standard_basic_config = logging.basicConfig

#: What makes ``basicConfig`` set up handlers of its own.
_OWN_HANDLERS = ("stream", "filename", "handlers")


def _basic_config(**kwargs: Any) -> None:
    """``logging.basicConfig`` for tenant code. The standard one does nothing
    when the root logger has a handler, and here it always has the trace's
    (:func:`install_logging`), so ``basicConfig(level=logging.DEBUG)`` was
    silently ignored, where on Cloudflare (no root handler before it) it
    takes effect. While the trace's handler is the only one: a stream, file
    or handlers of its own replace it, as they would a root with none
    (``sys.stdout`` and ``sys.stderr`` are log lines too); otherwise
    ``level`` and ``format`` (``datefmt``, ``style``) apply to it, the logs
    going on to the trace with their levels (no format: the bare message)."""
    root = logging.getLogger()
    handlers = root.handlers
    if not (len(handlers) == 1 and type(handlers[0]) is _TraceHandler):
        _standard_basic_config(**kwargs)  # the tenant set up logging already
        return
    if any(kwargs.get(key) is not None for key in _OWN_HANDLERS):
        _standard_basic_config(**{**kwargs, "force": True})
        return
    unknown = set(kwargs) - {"level", "format", "datefmt", "style", "encoding", "errors", "force",
                             *_OWN_HANDLERS, "filemode"}
    if unknown:  # the standard function's own error
        raise ValueError("Unrecognised argument(s): " + ", ".join(sorted(unknown)))
    if kwargs.get("format") is not None or kwargs.get("datefmt") is not None:
        handlers[0].setFormatter(logging.Formatter(kwargs.get("format"), kwargs.get("datefmt"),
                                                   kwargs.get("style", "%")))
    if kwargs.get("level") is not None:
        root.setLevel(kwargs["level"])


def _join(args: tuple[Any, ...]) -> str:
    return " ".join(a if isinstance(a, str) else repr(a) for a in args)


class _TooLong(Exception):
    """A console call's arguments, as JSON, would be longer than a log line."""


class _Unserializable(Exception):
    """An argument holds itself, or nests deeper than :data:`_MAX_DEPTH`."""


#: Deepest nesting of lists and dicts in a console call's argument.
_MAX_DEPTH = 64


def _json_value(value: Any, room: list[int], path: list[int]) -> Any:
    """``value`` as a JSON value of a trace's log message, as workerd writes a
    console argument (``JSON.stringify`` for JSON's types, the string for
    the rest). ``room[0]``: characters left under :data:`MAX_LINE`, roughly;
    past it, :class:`_TooLong`, so a giant argument is not copied whole
    before it is found too long. ``path``: the ids of the lists and dicts
    being converted, to find one that holds itself."""
    room[0] -= 1
    if room[0] < 0:
        raise _TooLong
    if isinstance(value, str):
        room[0] -= len(value)
        return wire_text(str.__str__(value))  # a str subclass (an enum's) as its text
    if value is None or type(value) is bool:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None  # JSON.stringify(NaN): null
    if isinstance(value, (list, tuple, dict)):
        if id(value) in path or len(path) >= _MAX_DEPTH:
            raise _Unserializable
        path.append(id(value))
        if isinstance(value, dict):
            out: Any = {wire_text(str(k)): _json_value(v, room, path) for k, v in value.items()}
        else:
            out = [_json_value(v, room, path) for v in value]
        path.pop()
        return out
    text = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else str(value)
    room[0] -= len(text)
    return wire_text(text)


def _argument(value: Any, room: list[int]) -> Any:
    """One console argument as JSON; one that holds itself is ``{}``, as
    workerd writes an argument ``JSON.stringify`` throws on."""
    try:
        return _json_value(value, room, [])
    except _Unserializable:
        return {}


def emit_args(level: str, args: tuple[Any, ...]) -> None:
    """A console call's arguments as one log whose message is their list, as
    workerd's (``console.log("a", 1, {"k": 2})``: ``["a", 1, {"k": 2}]``).
    Longer than :data:`MAX_LINE` as JSON, they are one string, cut, as a long
    line is."""
    room = [MAX_LINE]
    try:
        text: str | None = msgspec.json.encode([_argument(a, room) for a in args]).decode()
    except _TooLong:
        text = None
    if text is None or len(text) > MAX_LINE:
        emit(level, _join(args))
    elif _sink is not None:
        _sink(level, text, False, True)


def _console(level: str, args: tuple[Any, ...]) -> None:
    """One console call: a lone string (nearly all) goes as the line it is."""
    if len(args) == 1 and type(args[0]) is str:
        emit(level, args[0])
    else:
        emit_args(level, args)


class _Console:
    """``console.log`` and friends, as in a JS worker."""

    def log(self, *args: Any) -> None:
        _console("log", args)

    def info(self, *args: Any) -> None:
        _console("info", args)

    def debug(self, *args: Any) -> None:
        _console("debug", args)

    def warn(self, *args: Any) -> None:
        _console("warn", args)

    def error(self, *args: Any) -> None:
        _console("error", args)

    def __getattr__(self, name: str) -> Any:
        """V8's other console methods (``trace``, ``table``, ``time``,
        ``group``, ``assert``...): they exist and write nothing to the trace,
        which only the five above feed (workerd's worker.c++). They raised
        AttributeError, failing the handler."""
        if name in _SILENT_CONSOLE:
            return _silent
        raise AttributeError(f"console has no method {name!r}")


#: The console methods V8 has beyond the five that reach a trace.
_SILENT_CONSOLE = frozenset({"trace", "table", "dir", "dirxml", "assert", "count", "countReset", "group",
                             "groupCollapsed", "groupEnd", "time", "timeEnd", "timeLog", "timeStamp",
                             "clear", "profile", "profileEnd"})


def _silent(*_args: Any, **_kwargs: Any) -> None:
    return None


console = _Console()


def now_ms() -> float:
    return time.time() * 1000.0
