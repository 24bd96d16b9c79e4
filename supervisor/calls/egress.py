"""Where tenant fetches may go: the platform's egress policy.

A tenant's ``fetch()`` is made by the supervisor, from inside the platform's
network. Without a policy a tenant could reach what only the host should:
loopback services, the cloud metadata endpoint, the private network (SSRF).
The policy is applied to the *resolved* addresses of every new connection,
redirect hops included, so a public name that resolves to a private address
is refused as well. Platforms that do need private upstreams allow them
explicitly (``[outbound] allow_private_networks`` or ``allow_hosts``); an
outbound worker remains the place for finer rules.
"""

from __future__ import annotations

import ipaddress

from supervisor.config import OutboundConfig
from supervisor.calls.http_client import FetchError, default_resolve


class EgressDenied(FetchError):
    """The destination is not one tenants may reach."""


def _is_public(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class EgressPolicy:
    def __init__(self, config: OutboundConfig) -> None:
        self.allow_private = config.allow_private_networks
        self.allow_hosts = frozenset(h.lower() for h in config.allow_hosts)

    async def resolve(self, host: str, port: int) -> list[tuple[str, int]]:
        """The HTTP client's resolver: addresses of ``host`` a tenant may use."""
        addresses = await default_resolve(host, port)
        if self.allow_private or host.lower() in self.allow_hosts:
            return addresses
        allowed = [(ip, p) for ip, p in addresses if _is_public(ip)]
        if not allowed:
            shown = ", ".join(ip for ip, _ in addresses[:3])
            raise EgressDenied(
                f"fetch to {host} ({shown}) is not allowed: the platform blocks loopback, "
                "private and link-local addresses"
            )
        return allowed
