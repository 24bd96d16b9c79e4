"""The exceptions a tenant's ``fetch()`` can fail with, shared by every part
of the outbound path (HTTP client, egress policy, redirect rules).

They live apart from the client so the policy modules can raise them
without importing the client (and the client can import the policies).
``str(e)`` is always a message fit for tenants: the supervisor hands it to
the tenant as its fetch exception, so it must name the problem without
leaking internals.
"""

from __future__ import annotations


class FetchError(Exception):
    """A request could not be completed; ``str(e)`` is a message fit for users."""


class FetchTimeout(FetchError):
    """Connecting, sending, waiting for the response head or an individual
    body read took longer than the platform allows."""


class ResponseTooLarge(FetchError):
    """The response body exceeded ``max_response_bytes``; the connection was closed."""
