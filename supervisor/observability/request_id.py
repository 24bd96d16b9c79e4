"""Request ids: one per client request, in the logs, the trace and the response.

Fresh ids are 32 hex digits (also the OpenTelemetry trace id of the request):
a counter that starts at a random value, then 64 random bits drawn once per
process. Unique, as trace ids must be, without a ``getrandom`` syscall per
request; they are labels, not secrets.
An ``x-corral-request-id`` sent by a trusted proxy (``observability.
trusted_proxies``, a list of addresses or CIDR networks) is kept so that one id
follows the request through the proxy too; from anyone else it is replaced.
"""

from __future__ import annotations

import itertools
import os
import re

from supervisor.edge.client_ip import TrustedProxies, parse_address

HEADER = b"x-corral-request-id"
_MASK64 = (1 << 64) - 1
_VALID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")


class RequestIds:
    def __init__(self, trusted_proxies: list[str]) -> None:
        self.trusted = TrustedProxies(trusted_proxies)
        self._suffix = os.urandom(8).hex()
        self._counter = itertools.count(int.from_bytes(os.urandom(8), "big") >> 1)

    def assign(self, headers: list[tuple[bytes, bytes]], peer: str) -> str:
        """``peer``: the connection's IP address as text ("" for none: a unix
        socket is no proxy), as the connection read it once."""
        if self.trusted and peer:
            incoming = next((v for k, v in headers if k == HEADER), None)
            if incoming is not None and _VALID.fullmatch(incoming) and parse_address(peer) in self.trusted:
                return incoming.decode("ascii")
        return f"{next(self._counter) & _MASK64:016x}{self._suffix}"
