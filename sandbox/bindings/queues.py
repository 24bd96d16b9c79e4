"""``env.QUEUE``: a queue producer (``send``, ``sendBatch``), Cloudflare's shapes.

Bodies are encoded here by ``contentType`` (any case): ``"json"``
(``JSON.stringify``'s text), ``"v8"`` (any plain data, as structured clone
carries it), ``"text"`` (a str) or ``"bytes"``; the consumer's batch decodes
them the same way. With none given, ``json`` for a script whose
compatibility date is 2024-03-18 or later (workerd's ``queues_json_messages``,
which an HTTP pull consumer can read), else ``v8``; the flags
``queues_json_messages`` and ``no_queues_json_messages`` choose too.
"""

from __future__ import annotations

import json
from typing import Any

from .. import workers
from . import JsException, call, clone_encode, js_double, js_number, js_stringify, kind, options

CONTENT_TYPES = ("text", "bytes", "json", "v8")


def _typeof(value: Any) -> str:
    """JavaScript's ``typeof`` of ``value`` as Pyodide passes it (None is null)."""
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "function" if callable(value) else "object"


def encode_body(body: Any, content_type: Any) -> bytes:
    """``body`` in its ``contentType``, refused as workerd's queue.c++ refuses it
    (TypeError, its words)."""
    content_type = content_type.lower() if isinstance(content_type, str) else content_type
    if content_type not in CONTENT_TYPES:
        raise JsException("TypeError", f"Unsupported queue message content type: {content_type}")
    if content_type == "text":
        if not isinstance(body, str):
            raise JsException("TypeError", 'Content Type "text" requires a value of type string, '
                                           f"but received: {_typeof(body)}")
        return body.encode()
    if content_type == "bytes":
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise JsException("TypeError", 'Content Type "bytes" requires a value of type '
                                           f"ArrayBufferView, but received: {_typeof(body)}")
        return bytes(body)
    if content_type == "json":
        try:
            return js_stringify(body).encode()
        except (TypeError, ValueError) as exc:  # JSON.stringify's TypeError, a JsException here
            raise JsException("TypeError", f"the message body is not JSON: {exc}") from None
    try:
        return clone_encode(body)  # a value structured clone refuses: DataCloneError, as Cloudflare's
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"the message body cannot be serialized: {exc}") from None


def decode_body(data: bytes, content_type: str) -> Any:
    from . import CLONE_DECODER, wrap

    if content_type == "text":
        return data.decode("utf-8", "replace")
    if content_type == "bytes":
        return data
    if content_type == "json":
        # The consumer's JSON.parse of what JSON.stringify wrote: 1.0 arrives as 1
        # (js_json), and NaN or an infinity, which JSON.stringify writes as null
        # (Python's json.dumps in encode_body writes NaN), as None.
        return wrap(json.loads(data, parse_float=lambda text: js_number(float(text)),
                               parse_int=lambda text: js_double(int(text)),
                               parse_constant=lambda _name: None))
    return wrap(CLONE_DECODER.decode(data))


#: workerd's ``queues_json_messages``: its compatibility date.
JSON_BY_DEFAULT_FROM = "2024-03-18"


def default_content_type() -> str:
    """``json`` or ``v8``, by the running script's compatibility date and flags."""
    runtime = workers._runtime
    script = None if runtime is None else runtime.script
    if script is None:
        return "json"
    flags = script.compatibility_flags
    if "no_queues_json_messages" in flags:
        return "v8"
    if "queues_json_messages" in flags or script.compatibility_date >= JSON_BY_DEFAULT_FROM:
        return "json"
    return "v8"


def _one(body: Any, opts: dict[str, Any]) -> list[Any]:
    given = opts.get("contentType")
    ctype = given.lower() if isinstance(given, str) and given else default_content_type()
    return [encode_body(body, ctype), ctype, opts.get("delaySeconds")]


@kind("queue")
class Queue:
    def __init__(self, name: str) -> None:
        self._name = name

    async def send(self, body: Any, options_: Any = None, **keywords: Any) -> None:
        opts = options(options_, keywords, "Queue.send()")
        await call(self._name, "send", _one(body, opts))

    async def sendBatch(self, messages: Any, options_: Any = None, **keywords: Any) -> None:  # noqa: N802
        opts = options(options_, keywords, "Queue.sendBatch()")
        messages = list(messages)
        if not messages:
            raise JsException("TypeError", "sendBatch() requires at least one message")
        items = []
        for message in messages:
            if not isinstance(message, dict) or "body" not in message:
                raise TypeError('sendBatch() takes a list of {"body": ..., "contentType": ..., '
                                '"delaySeconds": ...} dicts')
            items.append(_one(message["body"], options(message, {}, "Queue.sendBatch()")))
        await call(self._name, "sendBatch", [items, opts.get("delaySeconds")])

    send_batch = sendBatch

    def __repr__(self) -> str:
        return f"<Queue {self._name}>"
