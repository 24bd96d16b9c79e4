"""The outbound client's network backend: it dials only what the egress policy allows.

httpcore opens every new connection through its network backend's
``connect_tcp(host, port)``, whatever the reason: a tenant's first request,
a redirect hop to another origin, a retry after a dead keep-alive connection.
So that is where the egress policy sits: this backend resolves ``host``
itself, hands every resolved address to :meth:`EgressPolicy.vet`, and
connects to an allowed *IP*, never to the name again (so DNS rebinding
between the check and the connect is impossible). TLS still verifies the
original host name: httpcore calls ``start_tls(server_hostname=host)`` on
the stream returned here.

Dialling itself is delegated to httpcore's trio backend, one IP literal at a
time, a new attempt starting every ``stagger`` seconds (or as soon as the
previous one fails) so a black-holed address does not eat the connect timeout.
Streams are closed forcefully (no TLS close_notify exchange): closing must
never wait on a peer that may be hostile.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import trio

from supervisor.calls.egress import EgressPolicy
from supervisor.calls.fetch_errors import FetchError

#: ``resolve(host, port)`` -> IP literals to try, in order.
Resolver = Callable[[str, int], Awaitable[list[str]]]

_STAGGER = 0.25


async def system_resolve(host: str, port: int) -> list[str]:
    """The system resolver (getaddrinfo), de-duplicated, in its order."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # gaierror, or IDNA rejecting the name
        reason = getattr(exc, "strerror", None) or str(exc)
        raise httpcore.ConnectError(f"could not resolve {host}: {reason}") from None
    out: list[str] = []
    for *_, sockaddr in infos:
        if str(sockaddr[0]) not in out:
            out.append(str(sockaddr[0]))
    return out


def _reason(exc: BaseException) -> str:
    """The OS's word for why a connect failed (trio wraps it in groups and causes)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        if isinstance(seen, BaseExceptionGroup):
            seen = seen.exceptions[-1]
            continue
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


class _Stream(httpcore.AsyncNetworkStream):
    """The trio backend's stream, closed forcefully (works under cancellation,
    never waits for the peer) and staying wrapped across ``start_tls``."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._inner)  # type: ignore[arg-type]

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class EgressBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend applying ``policy`` to every connection.

    ``policy=None`` allows every address (tests, tools). ``resolve`` replaces
    the system resolver (tests pin names to local servers with it); it must
    return IP literals, and its exceptions propagate unchanged.
    """

    def __init__(self, policy: EgressPolicy | None = None, resolve: Resolver | None = None,
                 *, stagger: float = _STAGGER) -> None:
        self._policy = policy
        self._resolve = resolve or system_resolve
        self._stagger = stagger
        self._dial = httpcore.TrioBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        # ``timeout`` (the client's connect timeout) bounds resolving and dialling.
        with trio.move_on_after(math.inf if timeout is None else timeout):
            addresses = await self._addresses(host, port)
            return _Stream(await self._first_to_connect(addresses, host, port, local_address,
                                                        socket_options))
        raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}")

    async def _addresses(self, host: str, port: int) -> list[str]:
        addresses = await self._resolve(host, port)
        for ip in addresses:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise FetchError(f"resolver returned a non-IP address {ip!r} for {host}") from None
        if not addresses:
            raise httpcore.ConnectError(f"could not resolve {host}: no addresses")
        if self._policy is not None:
            addresses = self._policy.vet(host, addresses)
        return addresses

    async def _first_to_connect(self, addresses: list[str], host: str, port: int,
                                local_address: str | None,
                                socket_options: Iterable[Any] | None) -> httpcore.AsyncNetworkStream:
        winner: httpcore.AsyncNetworkStream | None = None
        errors: list[httpcore.ConnectError] = []

        async def attempt(ip: str, failed: trio.Event, nursery: trio.Nursery) -> None:
            nonlocal winner
            try:
                stream = await self._dial.connect_tcp(ip, port, local_address=local_address,
                                                      socket_options=socket_options)
            except httpcore.ConnectError as exc:
                errors.append(exc)
                failed.set()
                return
            if winner is None:
                winner = stream
                nursery.cancel_scope.cancel()
            else:
                await trio.aclose_forcefully(stream)  # type: ignore[arg-type]

        try:
            async with trio.open_nursery() as nursery:
                for ip in addresses:
                    failed = trio.Event()
                    nursery.start_soon(attempt, ip, failed, nursery)
                    with trio.move_on_after(self._stagger):
                        await failed.wait()
        except BaseException:
            if winner is not None:
                await trio.aclose_forcefully(winner)  # type: ignore[arg-type]
            raise
        if winner is None:
            reason = _reason(errors[-1]) if errors else "no addresses"
            raise httpcore.ConnectError(f"could not connect to {host}:{port}: {reason}")
        return winner

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise FetchError("unix sockets are not an outbound destination")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)
