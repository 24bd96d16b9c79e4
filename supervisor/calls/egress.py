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


_V6 = ipaddress.ip_network
#: IPv6 addresses that stand for an IPv4 address in their low 32 bits:
#: IPv4-compatible (::a.b.c.d, deprecated), IPv4-mapped (::ffff:a.b.c.d),
#: IPv4-translated (::ffff:0:a.b.c.d, SIIT) and NAT64's well-known prefix
#: (64:ff9b::a.b.c.d, RFC 6052): a host or gateway may deliver them to that
#: IPv4 address, so ::7f00:1 can be 127.0.0.1.
_LOW_32_BITS = (_V6("::/96"), _V6("::ffff:0:0/96"), _V6("::ffff:0:0:0/96"), _V6("64:ff9b::/96"))
#: NAT64's local-use prefix (RFC 8215): the IPv4 address sits where the
#: operator's prefix length puts it, which cannot be told from outside.
_UNJUDGEABLE = (_V6("64:ff9b:1::/48"),)
_6TO4, _TEREDO = _V6("2002::/16"), _V6("2001::/32")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address] | None:
    """The IPv4 addresses an IPv6 address leads to (6to4, Teredo, NAT64,
    ISATAP...), [] for a plain IPv6 address, None when it cannot be judged."""
    low = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if any(address in net for net in _LOW_32_BITS):
        return [low]
    if any(address in net for net in _UNJUDGEABLE):
        return None
    if address in _6TO4:
        return [address.sixtofour] if address.sixtofour is not None else None
    if address in _TEREDO:  # (server, client): the client's address, de-obfuscated
        return list(address.teredo) if address.teredo is not None else None
    # ISATAP (RFC 5214): any prefix, interface id 0000:5efe or 0200:5efe
    # followed by the IPv4 address of the node on the IPv4 network.
    if (int(address) >> 32) & 0xFDFFFFFF == 0x00005EFE:
        return [low]
    return []


def _is_public(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address):
        inside = _embedded_ipv4(address)
        if inside is None:
            return False
        if inside:  # judged by the IPv4 addresses it stands for
            return all(v4.is_global and not v4.is_multicast for v4 in inside)
        if address.is_site_local:  # fec0::/10: deprecated, but still the site's own
            return False
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
