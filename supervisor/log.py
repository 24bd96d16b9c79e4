"""JSON-lines logging on stderr, the format SPEC.md promises operators.

``log(event, **fields)`` is the one call the supervisor uses: a stable event
name plus structured fields, so logs can be grepped and parsed alike. Other
modules' ``logging`` records (helpers, the admin API) are formatted the same
way by :class:`JsonFormatter`.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()

#: The client request the running task serves (set by the edge); every log
#: line written meanwhile carries it as ``request_id``.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
_logger = logging.getLogger("corral")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry["event"] = record.getMessage()
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


#: Libraries whose INFO and DEBUG lines carry tenants' URLs.
_QUIETED = ("httpx", "httpcore")


def setup(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The HTTP client's own lines name each request's URL ("HTTP Request: GET
    # https://...?token=..." at INFO): tenants' URLs, secrets in their query
    # strings too, are not the operator's log's. Their warnings still show.
    for name in _QUIETED:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def log(event: str, level: int = logging.INFO, exc_info: Any = None, **fields: Any) -> None:
    """Log ``event`` with structured ``fields`` (one JSON line)."""
    if _logger.isEnabledFor(level):
        rid = request_id.get()
        if rid and "request_id" not in fields:
            fields["request_id"] = rid
        _logger.log(level, event, extra={"fields": fields or {"_": None}}, exc_info=exc_info)


def warn(event: str, **fields: Any) -> None:
    log(event, logging.WARNING, **fields)


def error(event: str, exc_info: Any = None, **fields: Any) -> None:
    log(event, logging.ERROR, exc_info=exc_info, **fields)


def now_ms() -> float:
    return time.time() * 1000.0
