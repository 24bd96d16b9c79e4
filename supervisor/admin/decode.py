"""What enters the admin API, bounded: JSON bodies and request targets.

Names, tags and ids are short and JSON bodies small, so a long target, a long
segment, many query fields or deeply nested JSON can only be hostile: each is
refused with a 400 (413 for size) naming the limit, never a RecursionError,
a SQLite expression-depth error or a huge echo in a message and a log line.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

import msgspec

from supervisor.errors import Invalid, TooLarge
from supervisor.nesting import deeper_than

MAX_JSON_DEPTH = 32
MAX_JSON_BODY = 1 * 2**20
MAX_METADATA_BYTES = 1 * 2**20
MAX_TARGET = 8 * 1024
MAX_SEGMENT = 1024
#: Path segments: 16 at most for any endpoint but an R2 object's, whose key
#: (up to 1024 bytes) may hold as many slashes as it likes up to this.
MAX_SEGMENTS = 64
MAX_QUERY_FIELDS = 32
MAX_TAG_FILTERS = 32
MAX_HEADERS = 128
MAX_MESSAGE = 2000


def clip(text: str, limit: int = 80) -> str:
    """``text`` shortened for an error message: hostile input is not echoed whole."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_depth(value: Any, what: str) -> None:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH."""
    if deeper_than(value, MAX_JSON_DEPTH):
        raise Invalid(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")


def _surrogate_problem(data: bytes, what: str) -> str | None:
    """Where a document msgspec refused holds a lone surrogate escape
    (``"\\ud800"``), which is valid JSON but no text UTF-8 can carry; msgspec
    says only "Input data was truncated". None if that is not the problem."""
    if b"\\u" not in data:
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if _has_surrogate(key):
                    return _surrogate_message(what, path or "a key", key)
                stack.append((child, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in reversed(list(enumerate(item))))
        elif isinstance(item, str) and _has_surrogate(item):
            return _surrogate_message(what, path, item)
    return None


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _surrogate_message(what: str, path: str, text: str) -> str:
    where = f"{what}: {path}" if path else what
    shown = clip(text.encode("utf-8", "backslashreplace").decode())
    return (f"{where} is '{shown}', "
            "text with a lone surrogate (a \\ud800-\\udfff escape not in a pair), which UTF-8 cannot carry")


def query_int(query: Mapping[str, str], field: str, default: int, high: int) -> int:
    """The query parameter ``field`` as an integer from 1 to ``high``
    (``default`` when absent): a page number, a page size."""
    raw = query.get(field, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"{field} must be an integer, got {clip(raw)!r}") from None
    if not 1 <= value <= high:
        raise Invalid(f"{field} must be from 1 to {high}, got {value}")
    return value


def decode_json(data: bytes, what: str, limit: int = MAX_JSON_BODY) -> Any:
    """Decode a client's JSON, bounded in size and depth.

    msgspec raises RecursionError on very deep input; it and every other
    decoding error become an :class:`Invalid` that says what was wrong.
    """
    if len(data) > limit:
        raise TooLarge(f"{what} is larger than {limit} bytes")
    if not data.strip():
        raise Invalid(f"{what} is empty: send a JSON document")
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise Invalid(_surrogate_problem(data, what) or f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise Invalid(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep") from None
    if isinstance(value, (dict, list)):
        _check_depth(value, what)
    return value


def page_of(query: Mapping[str, str], rows: list[Any], default: int, high: int) -> tuple[list[Any], dict[str, int]]:
    """The ``page`` of ``per_page`` rows (``default`` when absent, at most
    ``high``) a listing's query asks for, and Cloudflare's ``result_info`` for it."""
    page = query_int(query, "page", 1, 1_000_000)
    per_page = query_int(query, "per_page", default, high)
    shown = rows[(page - 1) * per_page:page * per_page]
    return shown, {"page": page, "per_page": per_page, "count": len(shown), "total_count": len(rows),
                   "total_pages": (len(rows) + per_page - 1) // per_page}


def body_as(body: bytes, shape: Any, example: str, what: str) -> Any:
    """A request's JSON body as ``shape`` (bounded as :func:`decode_json`
    bounds it), or :class:`Invalid` showing what to send to do ``what``."""
    try:
        return msgspec.convert(decode_json(body or b"null", "the request body"), type=shape)
    except msgspec.ValidationError as exc:
        raise Invalid(f"send {example} to {what} ({exc})") from None


def parse_target(target: str) -> tuple[str, list[str], dict[str, str]]:
    """``(path, decoded segments, query)`` of a request target, each bounded."""
    if len(target) > MAX_TARGET:
        raise Invalid(f"the request target is {len(target)} characters long, over the {MAX_TARGET} accepted")
    try:
        split = urllib.parse.urlsplit(target)
        segments = [urllib.parse.unquote(s, errors="strict") for s in split.path.split("/")]
        # A repeated key's values joined with ',' as one list (``tags=a&tags=b``
        # is ``tags=a,b``), so none is dropped unseen: a field that takes one
        # value then refuses the joined text, saying what it got.
        query = {k: ",".join(dict.fromkeys(v)) for k, v in urllib.parse.parse_qs(
            split.query, keep_blank_values=True, errors="strict",
            max_num_fields=MAX_QUERY_FIELDS).items()}
    except (UnicodeDecodeError, ValueError) as exc:
        raise Invalid(f"malformed request target {clip(target, 200)!r}: {exc} "
                      f"(percent-escapes must be UTF-8; at most {MAX_QUERY_FIELDS} query fields)") from None
    if segments and segments[0] == "":
        segments = segments[1:]
    if segments and segments[-1] == "":
        segments.pop()  # tolerate a trailing slash
    if len(segments) > MAX_SEGMENTS:
        raise Invalid(f"the path has {len(segments)} segments; the admin API takes at most {MAX_SEGMENTS}")
    for segment in segments:
        if len(segment) > MAX_SEGMENT:
            raise Invalid(f"path segment {clip(segment)!r} is longer than {MAX_SEGMENT} characters")
    return split.path, segments, query
