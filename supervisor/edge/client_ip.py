"""The client's address as Cloudflare's edge hands it to a worker: ``CF-Connecting-IP``.

Tenants rely on ``CF-Connecting-IP`` for rate limits, allow-lists and logs,
so it must be the address that connected, never one the client chose: on
Cloudflare the edge always sets it. Here the supervisor does, on every
request that comes in from the HTTP listener:

* ``cf-connecting-ip`` is the connection's peer, replacing whatever the
  client sent. When the peer is one of ``observability.trusted_proxies`` (a
  load balancer in front of Corral), it is the client that proxy names
  instead: the rightmost ``X-Forwarded-For`` address that is not itself a
  trusted proxy, else the proxy's own ``CF-Connecting-IP``.
* ``x-forwarded-for`` gets the peer appended (or is the peer alone), as
  Cloudflare appends the address that connected to it.
"""

from __future__ import annotations

import ipaddress

CF_CONNECTING_IP = b"cf-connecting-ip"
X_FORWARDED_FOR = b"x-forwarded-for"

Header = tuple[bytes, bytes]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str | bytes) -> Address | None:
    """An IP address (an IPv4-mapped IPv6 one as IPv4), or None if ``text`` is none."""
    try:
        address = ipaddress.ip_address(text.decode("ascii") if isinstance(text, bytes) else text)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """``observability.trusted_proxies``: addresses or CIDR networks."""

    def __init__(self, cidrs: list[str]) -> None:
        self.networks = [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: Address | None) -> bool:
        return address is not None and any(address in network for network in self.networks)


class ClientAddress:
    """Stamps each request's headers with the client's address (module docstring)."""

    def __init__(self, trusted: TrustedProxies) -> None:
        self.trusted = trusted

    def stamp(self, headers: list[Header], peer: str) -> list[Header]:
        """``headers`` without the client's own ``cf-connecting-ip`` and
        ``x-forwarded-for``, plus ours; unchanged when there is no IP peer."""
        if not peer:
            return headers
        forwarded: bytes | None = None
        named: bytes | None = None
        out: list[Header] = []
        for header in headers:
            name = header[0]
            if name == X_FORWARDED_FOR:
                forwarded = header[1] if forwarded is None else forwarded + b", " + header[1]
            elif name == CF_CONNECTING_IP:
                named = header[1]
            else:
                out.append(header)
        address = peer.encode("ascii")
        client = address
        if self.trusted and parse_address(peer) in self.trusted:
            client = self._named_client(forwarded, named) or address
        out.append((CF_CONNECTING_IP, client))
        out.append((X_FORWARDED_FOR, forwarded + b", " + address if forwarded else address))
        return out

    def _named_client(self, forwarded: bytes | None, named: bytes | None) -> bytes | None:
        """The client a trusted proxy names: the rightmost forwarded address
        that is not a trusted proxy itself, else its CF-Connecting-IP."""
        if forwarded:
            hops = [hop.strip() for hop in forwarded.split(b",")]
            for hop in reversed(hops):
                address = parse_address(hop)
                if address is None:
                    break  # a malformed hop: nothing to its left can be believed
                if address not in self.trusted:
                    return str(address).encode("ascii")
        address = None if named is None else parse_address(named.strip())
        return None if address is None else str(address).encode("ascii")
