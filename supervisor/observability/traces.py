"""Trace events with Cloudflare's field names (SPEC section 4), built once.

An :class:`~supervisor.pool.invocation.Invocation` collects what happened;
:func:`build` turns a finished one, and everything it called, into the JSON-
able dict that tail workers, ``/tail``, ``corral tail``, the log and OTLP all
read. Secrets never leave in it: credential headers and secret-looking parts
of the URL are replaced by ``REDACTED``, as Cloudflare's trace events do.

The shape is workerd's ``TraceItem`` (``src/workerd/api/trace.h``, and
``TraceItem`` of @cloudflare/workers-types): ``cpuTime``, ``wallTime`` and
every timestamp are whole milliseconds; a property Cloudflare leaves
``undefined`` (``entrypoint`` of a default entrypoint, ``dispatchNamespace``
of a platform script, ``scriptTags`` when there are none, an exception's
``stack``, a fetch's ``response`` before it had one, ``durableObjectId``) is
absent from the JSON, as ``JSON.stringify`` and ``wrangler tail`` show it;
a tail worker's :class:`sandbox.events.TraceItem` reads it as None. Corral
adds ``requestId``, ``subrequests`` and, on a dispatcher's event, its user
workers' events under ``children``.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from protocol.messages import (
    DurableObjectEvent,
    QueueEvent,
    RequestEvent,
    RpcEvent,
    ScheduledEvent,
    TailEvent,
    WebSocketEvent,
)
from supervisor.lifecycle import Outcome
from supervisor.nesting import deeper_than

if TYPE_CHECKING:
    from supervisor.model import ScriptRecord
    from supervisor.pool.invocation import Invocation

REDACTED = "REDACTED"
#: Request headers whose values are credentials (named in full).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie",
                            "x-api-key", "x-auth-token", "cf-access-jwt-assertion"})
#: Any header whose name holds one of these is a credential too: workerd's
#: ``TraceItem::FetchEventInfo::Request::getHeaders`` redacts ``cookie``,
#: ``set-cookie`` and every name containing auth, jwt, key, secret or token
#: (``x-custom-token``, ``x-amz-security-token``, ``x-goog-api-key``).
_SECRET_HEADER_PARTS = ("auth", "jwt", "key", "secret", "token")


def is_secret_header(name: str) -> bool:
    """Whether a (lower-case) header name's value is kept out of trace events."""
    return name in SECRET_HEADERS or any(part in name for part in _SECRET_HEADER_PARTS)


#: A run of the characters ids are made of (letters, digits, and the ``+``,
#: ``-`` and ``_`` that separate their groups): what workerd judges, one at a time.
_ID_SPAN = re.compile(r"[A-Za-z0-9+_-]+")
_HEX = frozenset("0123456789abcdefABCDEF")
_SEPARATORS = frozenset("+-_")


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


def _looks_secret(span: str) -> bool:
    """Whether one run of id characters is redacted, by workerd's rules
    (``redactUrl``): a hex id (32 hex digits or more, separators allowed,
    UUIDs among them), a base64-looking id (21 characters or more with at
    least two each of digits, upper and lower case letters), or a payment
    card number (13 to 19 digits, separators allowed, that pass Luhn's check)."""
    if len(span) < 13:
        return False  # shorter than anything below
    hex_digits = digits = upper = lower = 0
    other = False
    for c in span:
        if c in _HEX:
            hex_digits += 1
        elif c not in _SEPARATORS:
            other = True
        if c.isdigit():
            digits += 1
        elif c.isupper():
            upper += 1
        elif c.islower():
            lower += 1
    if hex_digits >= 32 and not other:
        return True
    if len(span) >= 21 and digits >= 2 and upper >= 2 and lower >= 2:
        return True
    return _luhn_card(span)


def _luhn_card(span: str) -> bool:
    total = count = 0
    double = False
    for c in reversed(span):
        if c in _SEPARATORS:
            continue
        if not "0" <= c <= "9":
            return False
        digit = (ord(c) - 48) * (2 if double else 1)
        total += digit - 9 if digit > 9 else digit
        count += 1
        double = not double
    return 13 <= count <= 19 and total % 10 == 0


def _redacted_span(match: re.Match[str]) -> str:
    return REDACTED if _looks_secret(match.group()) else match.group()


def redact_url(url: str) -> str:
    """The URL with each id-looking run of characters replaced, anywhere in it,
    as workerd redacts a trace event's URL (:func:`_looks_secret`); parameter
    names play no part. A tail worker still reads the URL as it was with
    ``event.request.getUnredacted()``."""
    return _ID_SPAN.sub(_redacted_span, url)


def redact_headers(headers: list[tuple[bytes, bytes]], redact: bool = True) -> dict[str, str]:
    """Headers as a dict (repeated ones joined by ", "), credentials redacted
    (unless ``redact`` is false)."""
    out: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        value = REDACTED if redact and is_secret_header(name) else raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out and value != REDACTED else value
    return out


#: The key a fetch event's request carries, to tail workers only, for
#: ``event.request.getUnredacted()`` (sandbox.events hides it from the dict).
UNREDACTED = "unredacted"


def with_unredacted(event: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    """A copy of ``inv``'s event tree (from :func:`build`) whose fetch
    requests also carry their URL and headers unredacted, for a tail
    worker's ``getUnredacted()``, as Cloudflare's TraceItem has it. A copy:
    the event itself goes to the log, live tails and OTLP as it is."""
    copy = dict(event)
    info = copy.get("event")
    if isinstance(info, dict) and isinstance(info.get("request"), dict):
        request = {**info["request"], UNREDACTED: {"url": inv.url, "headers": redact_headers(inv.headers, False)}}
        copy["event"] = {**info, "request": request}
    children = copy.get("children")
    if children:
        copy["children"] = [with_unredacted(child_event, child)
                            for child, child_event in zip(inv.children, children, strict=False)]
    return copy


def event_info(inv: Invocation) -> dict[str, Any]:
    """``event``: what the invocation handled, per handler type, in the shape
    of workerd's ``TraceItem::*EventInfo`` of that type."""
    event = inv.event
    if isinstance(event, DurableObjectEvent) and event.method == "alarm":
        # TraceItemAlarmEventInfo: a JS Date, which JSON (wrangler tail,
        # JSON.stringify in a tail worker) writes as an ISO 8601 string.
        return {"scheduledTime": iso_time(event.scheduled_time)}
    if isinstance(event, DurableObjectEvent) and event.method == "#webSocket":
        return _socket_event(event.socket_event, event.socket_code, event.socket_clean)
    if isinstance(event, WebSocketEvent):
        return _socket_event(event.kind, event.code, event.clean)
    if isinstance(event, DurableObjectEvent) and event.method not in ("fetch", "#evict"):
        return {"rpcMethod": event.method}  # Cloudflare's TraceItemJsRpcEventInfo
    if isinstance(event, RpcEvent):
        return {"rpcMethod": event.method}
    if event is None or isinstance(event, RequestEvent) \
            or isinstance(event, DurableObjectEvent) and event.method == "fetch":
        info: dict[str, Any] = {
            "request": {
                "url": redact_url(inv.url),
                "method": inv.method.decode("latin-1"),
                "headers": redact_headers(inv.headers),
            },
        }
        if inv.status:  # TraceItemFetchEventInfo.response is undefined without one
            info["response"] = {"status": inv.status}
        return info
    if isinstance(event, TailEvent):
        return {"consumedEvents": [{"scriptName": e.get("scriptName")} for e in event.events
                                   if isinstance(e, dict)]}
    if isinstance(event, ScheduledEvent):  # TraceItemScheduledEventInfo: a number of ms
        return {"cron": event.cron, "scheduledTime": int(event.scheduled_time)}
    if isinstance(event, QueueEvent):  # Cloudflare's TraceItemQueueEventInfo
        return {"queue": event.queue, "batchSize": len(event.messages)}
    return {}  # TraceItemCustomEventInfo: no fields


def iso_time(ms: float) -> str:
    """``ms`` since the epoch as JavaScript's ``Date.prototype.toJSON`` writes
    it: ``2026-12-04T15:43:52.123Z``."""
    when = datetime.datetime.fromtimestamp(int(ms) / 1000.0, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ms) % 1000:03d}Z"


def _socket_event(kind: str, code: int, clean: bool) -> dict[str, Any]:
    """Cloudflare's TraceItemHibernatableWebSocketEventInfo."""
    info: dict[str, Any] = {"webSocketEventType": kind}
    if kind == "close":
        info.update(code=code, wasClean=clean)
    return {"getWebSocketEvent": info}


class TraceLog(msgspec.Struct):
    """One line of ``logs``: workerd's ``TraceLog`` (``message``: the
    console call's arguments; a print or logging call is one string)."""

    message: list[Any]
    level: str
    timestamp: int  # ms since the epoch, whole, as workerd's


class TraceException(msgspec.Struct, omit_defaults=True):
    """One of ``exceptions``: workerd's ``TraceException``; ``stack`` is
    optional there (absent, not "", when there is none)."""

    name: str
    message: str
    timestamp: int  # ms since the epoch, whole, as workerd's
    stack: str | None = None


def logs_of(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An invocation's log lines in workerd's shape (whole-ms timestamps: the
    invocation keeps the child's float as it came, cheaply)."""
    return msgspec.to_builtins([TraceLog(m if type(m := line["message"]) is list else _arguments(m),
                                         line["level"], int(line["timestamp"]))
                                for line in lines])


_args_decoder = msgspec.json.Decoder(list[Any])


#: How deep a console call's arguments may nest (the SDK cuts them at 64
#: levels, sandbox.logs): deeper came from a child that skipped it, and a
#: tail worker walking the trace by recursion failed its whole batch, every
#: other tenant's events in it too.
MAX_ARGUMENT_DEPTH = 64


def _arguments(message: str) -> list[Any]:
    """A console call's arguments, which come as JSON text
    (``Invocation.log``), decoded only now that someone reads the trace; text
    that is not a JSON list (cut at the invocation's log budget, or sent so by
    a hostile child), or that nests past :data:`MAX_ARGUMENT_DEPTH`, is kept
    as one string."""
    try:
        args = _args_decoder.decode(message)
    except (msgspec.DecodeError, RecursionError):
        return [message]
    return [message] if deeper_than(args, MAX_ARGUMENT_DEPTH + 1) else args


def exceptions_of(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An invocation's exceptions in workerd's shape."""
    return msgspec.to_builtins([TraceException(e["name"], e["message"], int(e["timestamp"]),
                                               e.get("stack") or None) for e in found])


def script_version(record: ScriptRecord) -> dict[str, str]:
    """workerd's ``ScriptVersion`` of the version that ran: its id (the
    versions API's), and its tag and message (the upload's ``workers/tag``
    and ``workers/message`` annotations) only when it has them, as workerd
    leaves them undefined."""
    version = {"id": record.version_id or record.version}
    if record.version_tag:
        version["tag"] = record.version_tag
    if record.version_message:
        version["message"] = record.version_message
    return version


def whole_ms(ms: float) -> int:
    """``cpuTime`` and ``wallTime``: whole milliseconds, cut as workerd's
    ``trace.cpuTime / kj::MILLISECONDS`` cuts them (an ``uint``)."""
    return int(ms) if ms > 0 else 0


def _identity(event: dict[str, Any], record: ScriptRecord, entrypoint: str | None,
              object_id: str | None) -> dict[str, Any]:
    """The fields that say which script ran, each only when Cloudflare's
    TraceItem has it (``undefined`` otherwise)."""
    if record.namespace:
        event["dispatchNamespace"] = record.namespace
    if record.tags:
        event["scriptTags"] = list(record.tags)
    if entrypoint:
        event["entrypoint"] = entrypoint
    if object_id:
        event["durableObjectId"] = object_id
    return event


def entrypoint_of(inv: Invocation) -> str | None:
    """The entrypoint class the invocation began in: a Durable Object's class,
    a service binding's named entrypoint; None for the default one (workerd's
    ``TraceItem.entrypoint`` is then undefined)."""
    event = inv.event
    if isinstance(event, DurableObjectEvent):
        return event.class_name
    if isinstance(event, (RpcEvent, RequestEvent)) and event.entrypoint not in ("", "Default"):
        return event.entrypoint
    return None


def build(inv: Invocation) -> dict[str, Any]:
    """The trace event of a finished invocation, with its callees' under ``children``."""
    record = inv.record
    event = inv.event
    durable = isinstance(event, DurableObjectEvent)
    out = _identity({"scriptName": record.name}, record, entrypoint_of(inv),
                    event.object_id if durable else None)  # type: ignore[union-attr]
    out.update({
        "scriptVersion": script_version(record),
        "executionModel": "durableObject" if durable else "stateless",
        "outcome": outcome_of(inv),
        "eventTimestamp": int(inv.event_ts),
        "event": event_info(inv),
        "logs": logs_of(inv.logs),
        "exceptions": exceptions_of(inv.exceptions),
        "diagnosticsChannelEvents": [],
        "cpuTime": whole_ms(inv.cpu_ns / 1e6),
        "wallTime": whole_ms(inv.wall_ms),
        "truncated": inv.truncated,
        "subrequests": inv.subrequests,
        "requestId": inv.request_id or None,
        "children": [build(child) for child in inv.children],
    })
    return out


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
    """The outbound fetches of each invocation of a tree, shaped like its
    events, with its start, CPU and wall time unrounded (spans keep what the
    event's whole milliseconds cut: a child's span ended after its parent's)."""
    return {"fetches": list(inv.fetches or ()), "cpuMs": inv.cpu_ns / 1e6, "wallMs": inv.wall_ms,
            "startMs": inv.event_ts, "children": [fetch_tree(c) for c in inv.children]}


def script_not_found(script: str, url: str, method: bytes, headers: list[tuple[bytes, bytes]],
                     request_id: str) -> dict[str, Any]:
    """A routed request whose script does not exist (deleted since the route was made)."""
    return {
        "scriptName": script,
        "executionModel": "stateless",
        "outcome": Outcome.SCRIPT_NOT_FOUND,
        "eventTimestamp": int(time.time() * 1000.0),
        "event": {"request": {"url": redact_url(url), "method": method.decode("latin-1"),
                              "headers": redact_headers(headers)},
                  "response": {"status": 404}},
        "logs": [],
        "exceptions": [],
        "diagnosticsChannelEvents": [],
        "cpuTime": 0,
        "wallTime": 0,
        "truncated": False,
        "subrequests": 0,
        "requestId": request_id or None,
        "children": [],
    }


def background(record: ScriptRecord, outcome: str, message: str) -> dict[str, Any]:
    """A trace event for what a script did outside any invocation (a task left
    running after its response, killed for its CPU): no event (``null``, as
    TraceItem.event is when there is none), and the reason as its exception."""
    now = int(time.time() * 1000.0)
    return _identity({"scriptName": record.name}, record, None, None) | {
        "scriptVersion": script_version(record),
        "executionModel": "stateless",
        "outcome": outcome,
        "eventTimestamp": now,
        "event": None,
        "logs": [],
        "exceptions": exceptions_of([{"name": outcome, "message": message, "timestamp": now}]),
        "diagnosticsChannelEvents": [],
        "cpuTime": 0,
        "wallTime": 0,
        "truncated": False,
        "subrequests": 0,
        "requestId": None,
        "children": [],
    }


def consumers_of(record: ScriptRecord) -> list[str]:
    """The platform scripts a record's tail consumers name."""
    return [c.service for c in record.tail_consumers]
