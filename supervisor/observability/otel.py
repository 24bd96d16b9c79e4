"""OpenTelemetry export over OTLP/HTTP, with the official SDK and exporter.

Imported only when an endpoint is configured (see :mod:`.otel_config`: ``[observability.otlp]``
``endpoint``, or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT``
variables, which the SDK's exporters read themselves together with
``OTEL_EXPORTER_OTLP_HEADERS``, ``..._TIMEOUT``, ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``). Without one, this module is never imported.

Each finished trace event becomes a span (the dispatcher's, with a child
span per user worker it called, per outbound fetch, and per binding call
once bindings record theirs), with the script name and namespace as
attributes, and OpenTelemetry's ``faas.trigger``; its logs and exceptions
become log records tied to that span. A request that came with a valid W3C
``traceparent`` has its server span in the caller's trace, under the
caller's span; otherwise the request id is the trace id.
Conversion runs on a thread of its own, fed by a bounded queue the trio
thread never waits on (a full queue drops, counted); the SDK's batch
processors then export in batches from their own threads, with bounded
queues and timeouts, so a collector that is down costs dropped telemetry,
never a stalled request.
"""

from __future__ import annotations

import os
import queue
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from supervisor.lifecycle import Outcome
from supervisor.log import warn
from supervisor.observability.log_lines import log_text
from supervisor.observability.traces import redact_url

if TYPE_CHECKING:
    from supervisor.config import OtlpConfig

_SEVERITY = {"debug": SeverityNumber.DEBUG, "info": SeverityNumber.INFO, "log": SeverityNumber.INFO,
             "warn": SeverityNumber.WARN, "error": SeverityNumber.ERROR}
_HEX32 = re.compile(r"[0-9a-f]{32}")
#: W3C Trace Context, as the SDK parses it (version, non-zero ids, flags).
_W3C = TraceContextTextMapPropagator()


def faas_trigger(info: Any) -> str:
    """OpenTelemetry's ``faas.trigger`` for what an invocation handled."""
    if not isinstance(info, dict):
        return "other"
    if info.get("request"):
        return "http"
    if "cron" in info or "scheduledTime" in info:  # a cron run, a Durable Object's alarm
        return "timer"
    if "queue" in info:
        return "pubsub"
    return "other"


#: What ran, by the field its event info has (TraceItem's), in the handler
#: words of the metrics' ``handler`` label (supervisor.observability.metrics).
_HANDLERS = (("request", "fetch"), ("cron", "scheduled"), ("queue", "queue"), ("scheduledTime", "alarm"),
             ("rpcMethod", "rpc"), ("consumedEvents", "tail"), ("getWebSocketEvent", "websocket"))


def handler_of(info: Any) -> str:
    """The handler an invocation's event info says ran (``event`` when none does)."""
    if isinstance(info, dict):
        for field, handler in _HANDLERS:
            if field in info:
                return handler
    return "event"


def incoming_context(request: Any) -> Any:
    """The context an incoming request's W3C ``traceparent`` (and
    ``tracestate``) names, for its server span to be the caller's child as
    W3C propagation makes it; None when there is none or it is not valid."""
    headers = request.get("headers") if isinstance(request, dict) else None
    if not isinstance(headers, dict) or not headers.get("traceparent"):
        return None
    context = _W3C.extract({k: headers[k] for k in ("traceparent", "tracestate") if k in headers})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


class _Ids(RandomIdGenerator):
    """Root spans take the request id as their trace id when it is one (32 hex
    digits), so the id in logs, headers and the trace backend is the same."""

    def __init__(self) -> None:
        self.next_trace_id: int | None = None

    def generate_trace_id(self) -> int:
        wanted, self.next_trace_id = self.next_trace_id, None
        return wanted if wanted else super().generate_trace_id()


class OtelExport:
    """The SDK providers and the conversion thread."""

    def __init__(self, config: OtlpConfig, on_drop: Callable[[int], None]) -> None:
        self.on_drop = on_drop
        resource = Resource.create({"service.name": config.service_name}) \
            if not os.environ.get("OTEL_SERVICE_NAME") else Resource.create()
        base = config.endpoint.rstrip("/")
        kwargs: dict[str, Any] = {"timeout": config.export_timeout_s}
        if config.headers:
            kwargs["headers"] = dict(config.headers)
        span_exporter = OTLPSpanExporter(endpoint=f"{base}/v1/traces" if base else None, **kwargs)
        log_exporter = OTLPLogExporter(endpoint=f"{base}/v1/logs" if base else None, **kwargs)
        self._ids = _Ids()
        self.tracer_provider = TracerProvider(resource=resource, id_generator=self._ids)
        batch = {"max_queue_size": config.max_queue, "schedule_delay_millis": config.schedule_delay_ms,
                 "export_timeout_millis": config.export_timeout_s * 1000.0}
        self.tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter, **batch))
        self.logger_provider = LoggerProvider(resource=resource)
        self.logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter, **batch))
        self.tracer = self.tracer_provider.get_tracer("corral")
        self.logger = self.logger_provider.get_logger("corral")
        self.queue: queue.Queue[tuple[dict[str, Any], dict[str, Any]] | None] = queue.Queue(config.max_queue)
        self.thread = threading.Thread(target=self._work, name="corral-otel", daemon=True)
        self.thread.start()

    # -- from the trio thread ---------------------------------------------------------
    def submit(self, event: dict[str, Any], fetches: dict[str, Any]) -> None:
        """Hand a finished event over; never waits (a full queue drops it)."""
        try:
            self.queue.put_nowait((event, fetches))
        except queue.Full:
            self.on_drop(1)

    def shutdown(self) -> None:
        """Flush what is queued (bounded by the exporters' timeouts), then stop."""
        try:
            self.queue.put(None, timeout=1.0)
        except queue.Full:
            pass
        self.thread.join(timeout=5.0)
        self.tracer_provider.shutdown()
        self.logger_provider.shutdown()

    # -- the conversion thread ------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            try:
                self._span(item[0], item[1], None)
            except Exception as exc:  # noqa: BLE001 - telemetry must never take the supervisor down
                warn("otel.convert_failed", reason=f"{type(exc).__name__}: {exc}")

    def _span(self, event: dict[str, Any], fetches: dict[str, Any], parent: Any) -> None:
        # The event's cpuTime and wallTime are whole ms (Cloudflare's); the
        # fetch tree carries them unrounded, for spans and their attributes.
        wall_ms = float(fetches.get("wallMs", event.get("wallTime")) or 0)
        cpu_ms = float(fetches.get("cpuMs", event.get("cpuTime")) or 0)
        start_ns = int(float(fetches.get("startMs", event.get("eventTimestamp")) or 0) * 1_000_000)
        end_ns = start_ns + int(wall_ms * 1_000_000)
        info = event.get("event") or {}
        request = info.get("request") if isinstance(info, dict) else None
        kind = handler_of(info)
        script = event.get("scriptName") or ""
        attributes: dict[str, Any] = {
            "faas.name": script,
            "corral.script": script,
            "corral.namespace": event.get("dispatchNamespace") or "",
            "corral.outcome": event.get("outcome") or "",
            "corral.handler": kind,
            "faas.trigger": faas_trigger(info),
            "corral.cpu_time_ms": cpu_ms,
            "corral.wall_time_ms": wall_ms,
            "corral.subrequests": int(event.get("subrequests") or 0),
        }
        tags = event.get("scriptTags")
        if tags:
            attributes["corral.tags"] = list(tags)
        request_id = event.get("requestId")
        if request_id:
            attributes["corral.request_id"] = request_id
        if request:
            attributes["http.request.method"] = request.get("method", "")
            attributes["url.full"] = request.get("url", "")
        response = info.get("response") if isinstance(info, dict) else None
        if isinstance(response, dict) and response.get("status"):
            attributes["http.response.status_code"] = int(response["status"])
        server = parent is None
        if server:
            parent = incoming_context(request)  # the caller's trace, when it sent one
            if parent is None and request_id and _HEX32.fullmatch(request_id):
                self._ids.next_trace_id = int(request_id, 16)
        # What ran and whose: "fetch hello", "alarm counter", an RPC call by its method.
        name = f"{info['rpcMethod']} {script}" if kind == "rpc" else f"{kind} {script}"
        span = self.tracer.start_span(name, context=parent, start_time=start_ns,
                                      kind=SpanKind.SERVER if server else SpanKind.INTERNAL,
                                      attributes=attributes)
        self._ids.next_trace_id = None
        context = trace.set_span_in_context(span)
        status = attributes.get("http.response.status_code", 0)
        if event.get("outcome") != Outcome.OK:
            span.set_status(Status(StatusCode.ERROR, str(event.get("outcome"))))
        elif status >= 500:  # OTel's HTTP conventions: a server's 5xx is its error
            span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
        for fetch in fetches.get("fetches") or ():
            self._fetch_span(fetch, context)
        for child, child_fetches in zip(event.get("children") or (), fetches.get("children") or (), strict=False):
            self._span(child, child_fetches, context)
        log_attributes = {"corral.script": script, "corral.namespace": attributes["corral.namespace"]}
        if request_id:
            log_attributes["corral.request_id"] = request_id
        for line in event.get("logs") or ():
            level = str(line.get("level", "log"))
            self.logger.emit(LogRecord(
                timestamp=int(float(line.get("timestamp") or 0) * 1_000_000), context=context,
                severity_text=level.upper(), severity_number=_SEVERITY.get(level, SeverityNumber.INFO),
                body=log_text(line.get("message") or []),
                attributes=log_attributes))
        for exc in event.get("exceptions") or ():
            ts = int(float(exc.get("timestamp") or 0) * 1_000_000)
            exc_attributes = {"exception.type": str(exc.get("name", "")),
                              "exception.message": str(exc.get("message", "")),
                              "exception.stacktrace": str(exc.get("stack", ""))}
            span.add_event("exception", exc_attributes, timestamp=ts)
            self.logger.emit(LogRecord(
                timestamp=ts, context=context, severity_text="ERROR", severity_number=SeverityNumber.ERROR,
                body=f"{exc.get('name')}: {exc.get('message')}", attributes={**log_attributes, **exc_attributes}))
        span.end(end_time=max(end_ns, start_ns))

    def _fetch_span(self, fetch: dict[str, Any], context: Any) -> None:
        """A client span for one outbound fetch or one binding call."""
        start = int(fetch.get("start_ns") or 0)
        if "binding" in fetch:
            name = f"{fetch.get('type', 'binding')} {fetch.get('method', '')}"
            attributes: dict[str, Any] = {"cloudflare.binding.name": str(fetch["binding"]),
                                          "cloudflare.binding.type": str(fetch.get("type", "")),
                                          "cloudflare.binding.method": str(fetch.get("method", ""))}
        else:
            name = f"fetch {fetch.get('method', '')}"
            attributes = {"http.request.method": fetch.get("method", ""),
                          "url.full": redact_url(str(fetch.get("url", "")))}
            if fetch.get("status"):
                attributes["http.response.status_code"] = int(fetch["status"])
        span = self.tracer.start_span(name, context=context, start_time=start, kind=SpanKind.CLIENT,
                                      attributes=attributes)
        if fetch.get("error"):
            span.set_status(Status(StatusCode.ERROR, str(fetch["error"])))
        elif int(fetch.get("status") or 0) >= 400:  # a client's 4xx and 5xx are errors (OTel's HTTP conventions)
            span.set_status(Status(StatusCode.ERROR, f"HTTP {fetch['status']}"))
        span.end(end_time=max(int(fetch.get("end_ns") or start), start))
