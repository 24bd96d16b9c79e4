"""``CF-Connecting-IP`` is the address that connected, never one the client chose.

Tenants use it for rate limits and allow-lists, as on Cloudflare, whose edge
always sets it. Before the fix a client's own ``CF-Connecting-IP`` reached the
worker unchanged, and without one the worker saw no address at all.
"""

from __future__ import annotations

import pytest

from supervisor.edge.client_ip import ClientAddress, TrustedProxies
from tests.test_cf_gaps import deploy

ECHO_IP = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response.json({"ip": request.headers.get("cf-connecting-ip"),
                              "xff": request.headers.get("x-forwarded-for")})
'''


def test_the_worker_sees_the_connecting_address_whatever_the_client_sends(corral):
    deploy(corral, "whoami", ECHO_IP)
    plain = corral.request("/", host="whoami.localhost")
    assert plain.status == 200, (plain, corral.log())
    assert plain.json() == {"ip": "127.0.0.1", "xff": "127.0.0.1"}
    spoofed = corral.request("/", host="whoami.localhost", headers={
        "CF-Connecting-IP": "6.6.6.6", "X-Forwarded-For": "7.7.7.7"})
    assert spoofed.json() == {"ip": "127.0.0.1", "xff": "7.7.7.7, 127.0.0.1"}


def stamp(headers: dict[str, str], peer: str, trusted: list[str]) -> dict[str, str]:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()] + [(b"x-other", b"kept")]
    out = ClientAddress(TrustedProxies(trusted)).stamp(raw, peer)
    assert (b"x-other", b"kept") in out
    return {k.decode(): v.decode() for k, v in out if k != b"x-other"}


@pytest.mark.parametrize("headers, peer, trusted, ip", [
    # An untrusted peer is the client, whatever it claims.
    ({"cf-connecting-ip": "6.6.6.6"}, "192.0.2.1", [], "192.0.2.1"),
    ({"x-forwarded-for": "6.6.6.6"}, "192.0.2.1", ["10.0.0.0/8"], "192.0.2.1"),
    # A trusted proxy names the client: the rightmost untrusted hop.
    ({"x-forwarded-for": "203.0.113.7"}, "10.1.2.3", ["10.0.0.0/8"], "203.0.113.7"),
    ({"x-forwarded-for": "6.6.6.6, 203.0.113.7, 10.9.9.9"}, "10.1.2.3", ["10.0.0.0/8"], "203.0.113.7"),
    # ... or its CF-Connecting-IP when it forwards no chain.
    ({"cf-connecting-ip": "198.51.100.2"}, "10.1.2.3", ["10.0.0.0/8"], "198.51.100.2"),
    # A malformed hop ends the chain: the proxy itself is all that is known.
    ({"x-forwarded-for": "203.0.113.7, junk"}, "10.1.2.3", ["10.0.0.0/8"], "10.1.2.3"),
    # IPv6, and IPv4 mapped into IPv6.
    ({"x-forwarded-for": "2001:db8::1"}, "::1", ["::1"], "2001:db8::1"),
    ({"x-forwarded-for": "::ffff:203.0.113.9"}, "10.0.0.1", ["10.0.0.0/8"], "203.0.113.9"),
])
def test_trusted_proxies_name_the_client(headers, peer, trusted, ip):
    out = stamp(headers, peer, trusted)
    assert out["cf-connecting-ip"] == ip
    forwarded = headers.get("x-forwarded-for")
    assert out["x-forwarded-for"] == (f"{forwarded}, {peer}" if forwarded else peer)


def test_no_ip_peer_leaves_the_headers_alone():
    raw = [(b"cf-connecting-ip", b"6.6.6.6")]
    assert ClientAddress(TrustedProxies([])).stamp(raw, "") is raw
