"""``corral tail`` and ``corral usage``: the command-line side of observability.

``corral tail [NAME]`` streams ``GET /tail`` and prints each event as
``wrangler tail`` does: a line per event (``GET https://... - Ok @ time``),
its logs and exceptions indented under it, coloured on a terminal; or, with
``--format json``, the events themselves, one JSON document per line. It
runs until interrupted (Ctrl-C exits 0) or the supervisor goes away.

``corral usage`` prints the per-minute usage table (or ``--json`` rows for
billing pipelines).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import urllib.parse
from collections.abc import Callable
from typing import Any, TextIO

from supervisor.lifecycle import Outcome
from supervisor.observability.log_lines import log_text
from supervisor.terminal_text import printable, printable_lines

#: How ``wrangler tail`` shows each outcome (``crashed`` never reaches an
#: event: :func:`supervisor.observability.traces.outcome_of` maps it).
_OUTCOMES: dict[str, str] = {
    Outcome.OK: "Ok",
    Outcome.EXCEPTION: "Exception Thrown",
    Outcome.EXCEEDED_CPU: "Exceeded CPU Limit",
    Outcome.EXCEEDED_MEMORY: "Exceeded Memory",
    Outcome.EXCEEDED_WALL_TIME: "Exceeded Wall Time",
    Outcome.EXCEEDED_SUBREQUESTS: "Exceeded Subrequests",
    Outcome.CANCELED: "Canceled",
    Outcome.SCRIPT_NOT_FOUND: "Script Not Found",
}
_RESET, _DIM, _RED, _YELLOW, _GREEN, _BOLD = "\033[0m", "\033[2m", "\033[31m", "\033[33m", "\033[32m", "\033[1m"


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    tail = sub.add_parser("tail", parents=[common], help="stream trace events as they happen")
    tail.add_argument("name", metavar="NAME", nargs="?", help="only this script's events")
    tail.add_argument("--namespace", "-n", help="only scripts of this dispatch namespace")
    tail.add_argument("--format", choices=("pretty", "json"), default=None,
                      help="pretty (default on a terminal) or json (one event per line)")
    tail.add_argument("--tag", action="append", help="only scripts with this tag (repeatable)")
    tail.add_argument("--status", action="append", type=_status,
                      help="ok, error or canceled (as wrangler's), or an HTTP status like 404 or "
                           "a class like 5xx (repeatable)")
    tail.add_argument("--outcome", action="append", help="an outcome such as exceededCpu (repeatable)")
    tail.add_argument("--method", action="append", help="HTTP method (repeatable)")
    tail.add_argument("--header", action="append",
                      help="only requests with this header, NAME or NAME:VALUE (repeatable: any of them)")
    tail.add_argument("--ip", action="append",
                      help="only requests from this client IP address (repeatable)")
    tail.add_argument("--search", help="only events whose logs, exceptions or URL contain this text")
    tail.add_argument("--sampling-rate", type=_share, default=None, help="share of events to show, 0..1")

    usage = sub.add_parser("usage", parents=[common], help="requests, errors, CPU and wall time per minute")
    usage.add_argument("name", metavar="NAME", nargs="?", help="only this script")
    usage.add_argument("--namespace", "-n", help="only this dispatch namespace")
    usage.add_argument("--tag", help="rows per this tag instead of per script")
    usage.add_argument("--since", type=_time("--since"),
                       help="start: ISO time, epoch seconds, or relative like 1h (default 1h)")
    usage.add_argument("--until", type=_time("--until"), help="end (default now)")


def _share(text: str) -> float:
    """``--sampling-rate``: a share from 0 to 1 (checked here: a bad one is a
    usage error, exit status 2, not the server's refusal)."""
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return share


def _time(flag: str) -> Callable[[str], str]:
    """``--since``/``--until``: a time as the usage API reads it
    (supervisor.time_spec), checked here so that a bad one is a usage error;
    sent as written (a relative time counts from the server's clock)."""
    def check(text: str) -> str:
        from supervisor.errors import Invalid
        from supervisor.time_spec import parse_time

        try:
            parse_time(text, flag, 0)
        except Invalid as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag} ")) from None
        return text
    return check


def _status(text: str) -> str:
    """``--status``: wrangler's words, or an HTTP status or class (checked
    here so that a typo is a usage error, not a tail that shows nothing)."""
    if text in (Outcome.OK, "error", Outcome.CANCELED) or re.fullmatch(r"[1-5](?:[0-9][0-9]|xx)", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not ok, error, canceled, an HTTP status or a class like 5xx")


def _query(params: dict[str, Any]) -> str:
    """Lists as repeated keys: a header filter's value may hold commas."""
    kept = {k: v for k, v in params.items() if v not in (None, "", [])}
    return urllib.parse.urlencode(kept, doseq=True)


# -- tail --------------------------------------------------------------------


def _colour(enabled: bool) -> Callable[[str, str], str]:
    return (lambda code, text: f"{code}{text}{_RESET}") if enabled else (lambda code, text: text)


def format_pretty(event: dict[str, Any], colour: bool = False, indent: str = "") -> str:
    """One event as ``wrangler tail`` prints it (children nested, indented).

    Every text that comes from a tenant (URL, names, logs, exceptions) is
    made :func:`~supervisor.terminal_text.printable`: control characters (ESC,
    CR, C1...) show as ``\\x1b`` and the like, never reach the terminal. A
    log or exception message keeps its line breaks: its continuation lines are
    indented under the message and start with ``| ``, which no line the CLI
    writes itself starts with, so tenant text cannot forge an event line.
    """
    paint = _colour(colour)
    outcome = event.get("outcome") or "unknown"
    shown = printable(_OUTCOMES.get(outcome, outcome))
    when = datetime.datetime.fromtimestamp((event.get("eventTimestamp") or 0) / 1000.0)
    stamp = when.strftime("%-m/%-d/%Y, %-I:%M:%S %p")
    info = event.get("event") or {}
    request = info.get("request") if isinstance(info, dict) else None
    name = printable(event.get("scriptName") or "?")
    if event.get("dispatchNamespace"):
        name = f"{printable(event['dispatchNamespace'])}/{name}"
    if request:
        head = printable(f"{request.get('method', '')} {request.get('url', '')}")
    elif isinstance(info, dict) and info.get("consumedEvents") is not None:
        head = f"Tail ({len(info['consumedEvents'])} events)"
    elif event.get("event") is None:
        head = "(no event)"
    elif isinstance(info, dict) and "cron" in info:  # as wrangler prints a scheduled event
        head = printable(f'"{info["cron"]}"')
    elif isinstance(info, dict) and "scheduledTime" in info:
        head = "Alarm"
    elif isinstance(info, dict) and "queue" in info:
        head = printable(f"Queue {info['queue']} ({info.get('batchSize', 0)} messages)")
    elif isinstance(info, dict) and "rpcMethod" in info:
        head = printable(f"RPC {info['rpcMethod']}")
    elif isinstance(info, dict) and "getWebSocketEvent" in info:
        head = "WebSocket"
    else:
        head = "Unknown Event"
    status = paint(_GREEN if outcome == Outcome.OK else _RED, shown)
    lines = [f"{indent}{paint(_BOLD, head)} - {status} @ {stamp} {paint(_DIM, '[' + name + ']')}"]
    for line in event.get("logs") or ():
        level = printable(line.get("level", "log"))
        prefix = f"{indent}  ({level}) "
        message = printable_lines(log_text(line.get("message") or []),
                                  " " * (len(prefix) - 2) + "| ")
        code = _RED if level == "error" else _YELLOW if level == "warn" else ""
        text = prefix + message
        lines.append(paint(code, text) if code else text)
    for exc in event.get("exceptions") or ():
        prefix = f"{indent}  ✘ "
        message = printable_lines(f"{printable(exc.get('name'))}: {exc.get('message')}",
                                  " " * (len(prefix) - 2) + "| ")
        lines.append(paint(_RED, prefix + message))
    for child in event.get("children") or ():
        lines.append(format_pretty(child, colour, indent + "  "))
    return "\n".join(lines)


def cmd_tail(args: argparse.Namespace, client: Any) -> int:
    from supervisor.cli_client import ApiCallError, UnixHTTPConnection

    query = _query({"namespace": args.namespace, "script": args.name, "tag": args.tag,
                    "status": args.status, "outcome": args.outcome, "method": args.method,
                    "header": args.header, "ip": args.ip, "search": args.search, "sampling_rate": args.sampling_rate})
    fmt = args.format or ("json" if getattr(args, "json", False) or not sys.stdout.isatty() else "pretty")
    colour = fmt == "pretty" and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    conn = UnixHTTPConnection(client.socket_path, timeout=None)  # type: ignore[arg-type]
    try:
        conn.request("GET", "/tail" + (f"?{query}" if query else ""))
        response = conn.getresponse()
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ApiCallError(f"cannot reach the supervisor at {client.socket_path}: {exc.strerror} "
                           "(is `corral serve` running? set --socket or CORRAL_ADMIN_SOCKET)") from None
    except OSError as exc:
        raise ApiCallError(f"admin socket {client.socket_path}: {exc}") from None
    if response.status != 200:
        try:
            errors = json.loads(response.read()).get("errors") or []
            message = "; ".join(str(e.get("message")) for e in errors)
        except ValueError:
            message = ""
        raise ApiCallError(message or f"GET /tail: HTTP {response.status}")
    if fmt == "pretty":
        scope = args.name or ("all scripts" if not args.namespace else "every script")
        where = f" of dispatch namespace {args.namespace}" if args.namespace else ""
        print(f"Connected to {scope}{where}, waiting for logs...", file=sys.stderr)
    try:
        _stream(response, fmt, colour, sys.stdout)
    except KeyboardInterrupt:
        return 0
    except OSError:
        pass
    finally:
        conn.close()
    print("corral tail: the supervisor closed the stream", file=sys.stderr)
    return 1


def _stream(response: Any, fmt: str, colour: bool, out: TextIO) -> None:
    while True:
        line = response.readline()
        if not line:
            return
        line = line.strip()
        if not line:
            continue
        if fmt == "json":
            out.write(line.decode() + "\n")
        else:
            out.write(format_pretty(json.loads(line), colour) + "\n")
        out.flush()


# -- usage -------------------------------------------------------------------


def cmd_usage(args: argparse.Namespace, client: Any) -> int:
    from supervisor.cli_client import API, _table

    query = _query({"namespace": args.namespace, "script": args.name, "tag": args.tag,
                    "since": args.since or "-1h", "until": args.until})
    rows, _ = client.call("GET", f"{API}/usage?{query}")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    kind = "tag" if args.tag else "script"
    table = [[r["minute"], r.get("namespace") or "-", r.get(kind, ""), str(r["requests"]), str(r["errors"]),
              f"{r['cpuTimeMs']['sum']:.1f}", f"{r['cpuTimeMs']['p50']:.2f}", f"{r['cpuTimeMs']['p99']:.2f}",
              f"{r['wallTimeMs']['sum']:.1f}", f"{r['wallTimeMs']['p99']:.1f}", str(r["subrequests"])]
             for r in rows]
    _table(table, ["MINUTE", "NAMESPACE", kind.upper(), "REQUESTS", "ERRORS", "CPU_MS",
                   "CPU_P50", "CPU_P99", "WALL_MS", "WALL_P99", "SUBREQ"])  # prints it
    return 0


COMMANDS = {"tail": cmd_tail, "usage": cmd_usage}
