"""Cloudflare API endpoints of products Corral does not have, answered as such.

A platform's back end or wrangler reaching for Workers AI, Workflows, D1
Time Travel, an R2 bucket's CORS rules and the like would otherwise get the
router's bare "no admin API endpoint": true, but it reads like a typo in the
path. Here each such family of paths answers Cloudflare's error envelope, 501
with the product's name and what Corral offers instead, whatever the method,
so the caller learns at once that the feature, not its call, is missing.

Only paths no real endpoint has are listed: the router tries its routes in
order, and these must never take a request a Corral feature answers.
"""

from __future__ import annotations

import msgspec

from supervisor.admin.render import Response
from supervisor.admin.router import Handler, Request, Router
from supervisor.errors import NotSupported

_A = "accounts/*"
_R2 = f"{_A}/r2/buckets/{{bucket}}"
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class Missing(msgspec.Struct, frozen=True):
    """A family of paths (``{rest+}`` ends take any depth) and the product they belong to."""

    templates: tuple[str, ...]
    product: str
    instead: str = ""


MISSING: tuple[Missing, ...] = (
    Missing((f"{_A}/ai/{{rest+}}",), "Workers AI"),
    Missing((f"{_A}/workflows", f"{_A}/workflows/{{rest+}}"), "Workflows"),
    Missing((f"{_A}/workers/observability/{{rest+}}",), "Workers Observability (the telemetry query API)",
            "trace events stream from GET /tail, to tail workers and to OTLP"),
    Missing((f"{_A}/d1/database/{{db}}/time_travel/{{rest+}}",), "D1 Time Travel",
            "export the database (client.d1.database.export) to keep a copy"),
    Missing((f"{_R2}/cors",), "R2 bucket CORS rules", "R2 is reached through bindings and this API only"),
    Missing((f"{_R2}/lifecycle",), "R2 object lifecycle rules"),
    Missing((f"{_R2}/lock",), "R2 bucket locks"),
    Missing((f"{_R2}/sippy",), "R2 Sippy (incremental migration)"),
    Missing((f"{_R2}/domains/{{rest+}}",), "R2 public bucket domains",
            "serve a bucket through a worker that binds it"),
    Missing((f"{_A}/r2/metrics",), "R2 account metrics"),
    Missing((f"{_A}/event_notifications/{{rest+}}",), "R2 event notifications"),
    Missing((f"{_A}/event_subscriptions/{{rest+}}",), "Queues event subscriptions",
            "producers send to a queue from a worker's queue binding or client.queues.messages.push"),
    # What wrangler's other product commands reach (hyperdrive, vectorize, pipelines,
    # secrets-store, r2 bucket catalog, pages, cert, email routing).
    Missing((f"{_A}/hyperdrive/{{rest+}}",), "Hyperdrive"),
    Missing((f"{_A}/vectorize/{{rest+}}",), "Vectorize"),
    Missing((f"{_A}/pipelines/{{rest+}}",), "Pipelines"),
    Missing((f"{_A}/secrets_store/{{rest+}}",), "Secrets Store",
            "a script's own secrets are put with PUT .../scripts/{name}/secrets (wrangler secret put)"),
    Missing((f"{_A}/r2-catalog/{{rest+}}",), "R2 Data Catalog"),
    Missing((f"{_A}/pages/{{rest+}}",), "Cloudflare Pages",
            "a worker's static assets (its config's assets) serve a site"),
    Missing((f"{_A}/mtls_certificates", f"{_A}/mtls_certificates/{{rest+}}"), "mTLS certificates"),
    Missing((f"{_A}/email/{{rest+}}",), "Email Routing"),
    # wrangler's r2 bucket info and d1 info read their usage figures here, and
    # print zeros when it fails: a 404 looked like an empty bucket.
    Missing(("graphql",), "The GraphQL Analytics API",
            "usage per script: GET .../workers/usage; a D1 database's size: GET .../d1/database/{id}"),
)


def _answer(missing: Missing) -> Handler:
    async def refuse(request: Request) -> Response:
        hint = f"; {missing.instead}" if missing.instead else ""
        raise NotSupported(f"{missing.product} is not supported by Corral ({request.method} "
                           f"{request.path.split('?', 1)[0]}){hint}")
    return refuse


def register(router: Router) -> None:
    for missing in MISSING:
        handler = _answer(missing)
        for template in missing.templates:
            router.add(template, **dict.fromkeys(_METHODS, handler))


__all__ = ["MISSING", "register"]
