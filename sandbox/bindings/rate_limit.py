"""``env.RATE_LIMITER``: Cloudflare's Rate Limiting binding, tenant side.

``await env.RATE_LIMITER.limit({"key": k})`` (or ``limit(key=k)``) answers
``{"success": bool}``, which also reads as ``outcome.success``. The rule
(``limit`` per ``period``) is the platform's, held by the supervisor
(:mod:`supervisor.bindings.rate_limit`): the tenant names only its key.
"""

from __future__ import annotations

from typing import Any

from . import AttrDict, call, kind, options


@kind("ratelimit")
class RateLimit:
    def __init__(self, name: str) -> None:
        self._name = name

    async def limit(self, options_: Any = None, **keywords: Any) -> AttrDict:
        opts = options(options_, keywords, "RateLimit.limit()")
        key = opts.get("key")
        if not isinstance(key, str):
            raise TypeError(f"RateLimit.limit() needs a str key, as limit({{'key': ...}}) or "
                            f"limit(key=...), got {type(key).__name__}")
        success, _ = await call(self._name, "limit", [key])
        return AttrDict(success=bool(success))

    def __repr__(self) -> str:
        return f"<RateLimit {self._name}>"
