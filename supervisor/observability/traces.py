"""Trace events with Cloudflare's field names (SPEC section 4), built once.

An :class:`~supervisor.pool.invocation.Invocation` collects what happened;
:func:`build` turns a finished one, and everything it called, into the JSON-
able dict that tail workers, ``/tail``, ``corral tail``, the log and OTLP all
read. Secrets never leave in it: credential headers and secret-looking parts
of the URL are replaced by ``REDACTED``, as Cloudflare's trace events do.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from protocol.messages import (
    DurableObjectEvent,
    QueueEvent,
    RpcEvent,
    ScheduledEvent,
    TailEvent,
    WebSocketEvent,
)
from supervisor.lifecycle import Outcome

if TYPE_CHECKING:
    from supervisor.model import ScriptRecord
    from supervisor.pool.invocation import Invocation

REDACTED = "REDACTED"
#: Request headers whose values are credentials.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie",
                            "x-api-key", "x-auth-token", "cf-access-jwt-assertion"})
#: Query parameters whose values are credentials, whatever they look like.
_SECRET_PARAM = re.compile(r"(?i)(^|[_-])(token|secret|password|passwd|pwd|api[_-]?key|key|auth|"
                           r"sig|signature|session|sessionid|jwt|credential|access[_-]?key)$")
_HEX_ID = re.compile(r"[0-9a-fA-F]{32,}")
_BASE64ISH = re.compile(r"[A-Za-z0-9+/_=-]{21,}")

#: Outcomes the platform reports that are not Cloudflare's are mapped to one
#: that is (the exception's name still says what happened).
_OUTCOMES: dict[str, str] = {Outcome.CRASHED: Outcome.EXCEPTION}


def outcome_of(inv: Invocation) -> str:
    """Cloudflare's outcome. An invocation that failed with the error of its own
    subrequest limit (not a callee's, passed on) exceeded it."""
    outcome = inv.outcome
    if outcome == Outcome.EXCEPTION and inv.error is not None and inv.error.name == Outcome.EXCEEDED_SUBREQUESTS:
        limit = inv.limits.sub_requests
        if limit is not None and inv.subrequests > limit:
            return Outcome.EXCEEDED_SUBREQUESTS
    return _OUTCOMES.get(outcome, outcome)


def _looks_secret(value: str) -> bool:
    """An id or key, as Cloudflare judges URL parts: long hex, or long base64
    with upper case, lower case and digits mixed."""
    if _HEX_ID.fullmatch(value):
        return True
    return bool(_BASE64ISH.fullmatch(value)) and any(c.isdigit() for c in value) \
        and any(c.islower() for c in value) and any(c.isupper() for c in value)


def redact_url(url: str) -> str:
    """The URL with secret-looking path segments and query values replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    segments = parts.path.split("/")
    path = "/".join(REDACTED if s and _looks_secret(s) else s for s in segments)
    query = parts.query
    if query:
        kept = []
        for item in query.split("&"):
            raw_key, eq, raw_value = item.partition("=")
            key, value = unquote_plus(raw_key), unquote_plus(raw_value)
            secret = eq and (_SECRET_PARAM.search(key) or _looks_secret(value))
            kept.append(f"{raw_key}={REDACTED}" if secret else item)  # others as they came
        query = "&".join(kept)
    if path == parts.path and query == parts.query:
        return url
    return urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))


def redact_headers(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Headers as a dict (repeated ones joined by ", "), credentials redacted."""
    out: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        value = REDACTED if name in SECRET_HEADERS else raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out and value != REDACTED else value
    return out


def event_info(inv: Invocation) -> dict[str, Any]:
    """``event``: what the invocation handled, per handler type."""
    event = inv.event
    if isinstance(event, DurableObjectEvent) and event.method == "alarm":
        return {"scheduledTime": int(event.scheduled_time)}  # Cloudflare's TraceItemAlarmEventInfo
    if isinstance(event, DurableObjectEvent) and event.method == "#webSocket":
        return _socket_event(event.socket_event, event.socket_code, event.socket_clean)
    if isinstance(event, WebSocketEvent):
        return _socket_event(event.kind, event.code, event.clean)
    if isinstance(event, DurableObjectEvent) and event.method not in ("fetch", "#evict"):
        return {"rpcMethod": event.method}  # Cloudflare's TraceItemJsRpcEventInfo
    if isinstance(event, RpcEvent):
        return {"rpcMethod": event.method}
    if event is None or isinstance(event, DurableObjectEvent) and event.method == "fetch":
        return {
            "request": {
                "url": redact_url(inv.url),
                "method": inv.method.decode("latin-1"),
                "headers": redact_headers(inv.headers),
            },
            "response": {"status": inv.status} if inv.status else None,
        }
    if isinstance(event, TailEvent):
        return {"consumedEvents": [{"scriptName": e.get("scriptName")} for e in event.events
                                   if isinstance(e, dict)]}
    if isinstance(event, ScheduledEvent):  # Cloudflare's shape for a cron trigger
        return {"cron": event.cron, "scheduledTime": event.scheduled_time}
    if isinstance(event, QueueEvent):  # Cloudflare's TraceItemQueueEventInfo
        return {"queue": event.queue, "batchSize": len(event.messages)}
    return {type(event).__struct_config__.tag: {}}


def _socket_event(kind: str, code: int, clean: bool) -> dict[str, Any]:
    """Cloudflare's TraceItemHibernatableWebSocketEventInfo."""
    info: dict[str, Any] = {"webSocketEventType": kind}
    if kind == "close":
        info.update(code=code, wasClean=clean)
    return {"getWebSocketEvent": info}


def build(inv: Invocation) -> dict[str, Any]:
    """The trace event of a finished invocation, with its callees' under ``children``."""
    record = inv.record
    durable = isinstance(inv.event, DurableObjectEvent)
    return {
        "scriptName": record.name,
        "dispatchNamespace": record.namespace or None,
        "scriptTags": list(record.tags),
        "scriptVersion": {"id": record.version_id or record.version},  # the versions API's id
        "entrypoint": inv.event.class_name if durable else None,  # type: ignore[union-attr]
        "executionModel": "durableObject" if durable else "stateless",
        "outcome": outcome_of(inv),
        "eventTimestamp": int(inv.event_ts),
        "event": event_info(inv),
        "logs": inv.logs,
        "exceptions": inv.exceptions,
        "diagnosticsChannelEvents": [],
        "cpuTime": round(inv.cpu_ns / 1e6, 3),
        "wallTime": round(inv.wall_ms, 3),
        "subrequests": inv.subrequests,
        "truncated": inv.truncated,
        "requestId": inv.request_id or None,
        "children": [build(child) for child in inv.children],
    }


def pairs(inv: Invocation, event: dict[str, Any]) -> Iterator[tuple[Invocation, dict[str, Any]]]:
    """Every invocation of a tree with its event (built by :func:`build`)."""
    yield inv, event
    for child, child_event in zip(inv.children, event["children"], strict=False):
        yield from pairs(child, child_event)


def nodes(inv: Invocation) -> list[Invocation]:
    """Every invocation of a tree, caller first. A list, built once per
    finished request for all its consumers (a generator per consumer and
    level cost more than the figures they fed)."""
    out = [inv]
    for node in out:
        out.extend(node.children)
    return out


def fetch_tree(inv: Invocation) -> dict[str, Any]:
    """The outbound fetches of each invocation of a tree, shaped like its events."""
    return {"fetches": list(inv.fetches or ()), "children": [fetch_tree(c) for c in inv.children]}


def script_not_found(script: str, url: str, method: bytes, headers: list[tuple[bytes, bytes]],
                     request_id: str) -> dict[str, Any]:
    """A routed request whose script does not exist (deleted since the route was made)."""
    now = time.time() * 1000.0
    return {
        "scriptName": script,
        "dispatchNamespace": None,
        "scriptTags": [],
        "scriptVersion": None,
        "entrypoint": None,
        "executionModel": "stateless",
        "outcome": Outcome.SCRIPT_NOT_FOUND,
        "eventTimestamp": int(now),
        "event": {"request": {"url": redact_url(url), "method": method.decode("latin-1"),
                              "headers": redact_headers(headers)},
                  "response": {"status": 404}},
        "logs": [],
        "exceptions": [],
        "diagnosticsChannelEvents": [],
        "cpuTime": 0,
        "wallTime": 0,
        "subrequests": 0,
        "truncated": False,
        "requestId": request_id or None,
        "children": [],
    }


def consumers_of(record: ScriptRecord) -> list[str]:
    """The platform scripts a record's tail consumers name."""
    return [c.service for c in record.tail_consumers]
