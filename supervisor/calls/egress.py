"""Where tenant fetches may go: the platform's egress policy.

A tenant's ``fetch()`` is made by the supervisor, from inside the platform's
network. Without a policy a tenant could reach what only the host should:
loopback services, the cloud metadata endpoint, the private network (SSRF).
The policy is applied to the *resolved* addresses of every new connection,
redirect hops included, so a public name that resolves to a private address
is refused as well: the HTTP client's network backend
(supervisor.calls.egress_backend) resolves each host itself, asks
:meth:`EgressPolicy.vet` and dials only what it returns. Platforms that do
need private upstreams allow them explicitly (``[outbound]
allow_private_networks`` or ``allow_hosts``); an outbound worker remains the
place for finer rules.
"""

from __future__ import annotations

import ipaddress

from supervisor.calls.fetch_errors import FetchError
from supervisor.config import OutboundConfig


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

    def vet(self, host: str, addresses: list[str]) -> list[str]:
        """The addresses of ``host`` (IP literals, as resolved) a tenant may
        connect to, in order; raises :class:`EgressDenied` if there are none."""
        if self.allow_private or host.lower() in self.allow_hosts:
            return addresses
        allowed = [ip for ip in addresses if _is_public(ip)]
        if not allowed:
            shown = ", ".join(addresses[:3])
            raise EgressDenied(
                f"fetch to {host} ({shown}) is not allowed: the platform blocks loopback, "
                "private and link-local addresses"
            )
        return allowed
