"""A trace's log message as one line of text.

workerd keeps a log's ``message`` as the console call's arguments, a list of
JSON values (``console.log("a", 1, {"k": 2})``: ``["a", 1, {"k": 2}]``); a
``print`` is a list of one string. Where a log must be one text (``corral
tail --format pretty``, an OTLP log record's body, the live tail's search),
the values are joined by spaces as ``wrangler tail``'s pretty format prints
them: a string as it is, anything else as its JSON. Light on purpose: the
CLI imports it.
"""

from __future__ import annotations

import json
from typing import Any


def log_text(message: Any) -> str:
    """``message`` (a log's list of values) as one line of text."""
    if not isinstance(message, list):
        return "" if message is None else str(message)
    return " ".join(part if isinstance(part, str) else json.dumps(part, ensure_ascii=False, default=str)
                    for part in message)
