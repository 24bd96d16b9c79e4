"""``pyodide.ffi`` as far as Corral's Python-only runtime needs it.

Cloudflare's Python Workers catch binding errors (a D1 SQL error, a KV
limit, an R2 precondition) as ``pyodide.ffi.JsException``: the JavaScript
error surfaced into Python. Here the error comes from the supervisor, and
this class keeps the name tenants catch and the attributes they read
(``name``, ``message``); ``str(e)`` reads ``"Error: <message>"`` as in
Pyodide. Values are already Python, so ``to_js`` is the identity.
"""

from __future__ import annotations

from typing import Any

from .workers import PlatformError


class JsException(PlatformError):
    """An error raised by the platform (the JavaScript side on Cloudflare)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(name, message)
        self.message = message
        self.args = (f"{name}: {message}",)

    @property
    def js_error(self) -> "JsException":
        return self


def to_js(value: Any, **_: Any) -> Any:
    return value


JsProxy = object

__all__ = ["JsException", "JsProxy", "to_js"]
