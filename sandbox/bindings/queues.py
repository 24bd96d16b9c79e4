"""``env.QUEUE``: a queue producer (``send``, ``sendBatch``), Cloudflare's shapes.

Bodies are encoded here by ``contentType``: ``"v8"`` (the default: any plain
data, as structured clone carries it), ``"json"``, ``"text"`` (a str) or
``"bytes"``; the consumer's batch decodes them the same way.
"""

from __future__ import annotations

import json
from typing import Any

from . import JsException, call, clone_encode, js_double, js_number, kind, options

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
            return json.dumps(body).encode()
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


def _one(body: Any, opts: dict[str, Any]) -> list[Any]:
    ctype = opts.get("contentType") or "v8"
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
