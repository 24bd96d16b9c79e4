"""Who may do what on the admin API: the owner, or an API token.

The unix socket is the owner's (its file mode is the access control), so a
request that came through it may do everything. The optional TCP listener
(:mod:`supervisor.admin.tcp`) needs ``Authorization: Bearer <token>``; a
token has a scope and may be bound to namespaces:

* ``read``: GET only;
* ``deploy``: also uploads, deletes, tags, secrets, settings, versions and
  deployments of scripts in dispatch namespaces (not namespaces themselves,
  platform scripts or routes);
* ``admin``: everything but managing tokens, which only the owner does.

A token bound to namespaces reaches only paths inside those namespaces.
Tokens are stored as SHA-256 hashes; the secret is shown once, at creation.
"""

from __future__ import annotations

import logging

import msgspec

from supervisor.admin.decode import clip
from supervisor.admin.handlers import Handlers, log_event
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router, api_segments
from supervisor.errors import Forbidden, Invalid, NotFound
from supervisor.store.records import TokenInfo

TOKENS_PATH = "accounts/*/corral/tokens"
_READ_METHODS = ("GET", "HEAD")


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling: the owner (the unix socket) or a token."""

    owner: bool = False
    token: TokenInfo | None = None
    #: Only the asset blob upload, authenticated by its session token.
    asset_upload: bool = False
    #: Only a D1 export's download or a D1 import's upload, whose URL's random
    #: token is its credential (supervisor.admin.d1_exports, d1_imports), as a presigned URL's is.
    download: bool = False


OWNER = Principal(owner=True)
ASSET_UPLOADER = Principal(asset_upload=True)
DOWNLOADER = Principal(download=True)


def is_download(path: str) -> bool:
    """``[/client/v4]/accounts/{a}/d1/exports/{token}``: a D1 export's download URL."""
    segments = api_segments(path)
    return len(segments) == 5 and segments[0] == "accounts" and segments[2:4] == ["d1", "exports"]


def is_import_upload(path: str) -> bool:
    """``[/client/v4]/accounts/{a}/d1/imports/{token}``: a D1 import's upload URL
    (:mod:`supervisor.admin.d1_imports`), whose token is its credential."""
    segments = api_segments(path)
    return len(segments) == 5 and segments[0] == "accounts" and segments[2:4] == ["d1", "imports"]


def token_json(info: TokenInfo) -> dict[str, object]:
    return msgspec.to_builtins(info)


def authorize(principal: Principal, method: str, path: str, params: dict[str, str]) -> None:
    """Raise :class:`Forbidden` unless ``principal`` may make this call."""
    if principal.owner:
        return
    if principal.download:
        if (method in _READ_METHODS and is_download(path)) or (method == "PUT" and is_import_upload(path)):
            return
        raise Forbidden("a D1 export's download URL and an import's upload URL take no token; other calls "
                        "take an API token")
    segments = api_segments(path)
    is_asset_upload = segments[2:] == ["workers", "assets", "upload"]
    if principal.asset_upload or is_asset_upload:
        if principal.asset_upload and is_asset_upload:
            return
        raise Forbidden("the asset upload endpoint takes the upload session's token; other calls take an API token")
    token = principal.token
    assert token is not None
    if segments[2:4] == ["corral", "tokens"]:
        raise Forbidden("API tokens are managed only over the admin unix socket (`corral token ...` on the host)")
    if method in _READ_METHODS and _asks_who(segments):
        return
    ns = params.get("ns")
    if token.namespaces and (ns is None or ns not in token.namespaces):
        raise Forbidden(f"token {token.name!r} is bound to namespace(s) {', '.join(token.namespaces)}: "
                        f"it cannot reach {clip(path)}")
    if token.namespaces and method not in _READ_METHODS and segments[6:7] == ["scripts"] \
            and segments[8:9] == ["tags"]:
        raise Forbidden("a script's tags are the platform's (its plans' limits, usage, bulk deletes): a "
                        f"token bound to namespace(s) {', '.join(token.namespaces)} cannot change them")
    if token.scope == "admin" or method in _READ_METHODS:
        return
    if token.scope == "read":
        raise Forbidden(f"token {token.name!r} is read-only: {method} needs a deploy or admin token")
    # deploy: script-level changes inside dispatch namespaces only
    in_scripts = segments[2:5] == ["workers", "dispatch", "namespaces"] and len(segments) >= 7 \
        and segments[6] == "scripts"
    if not in_scripts:
        raise Forbidden(f"token {token.name!r} has the deploy scope: it changes scripts in dispatch namespaces, "
                        f"not {clip(path)} (use an admin token)")


def _asks_who(segments: list[str]) -> bool:
    """The calls that verify the token and name the account (see
    supervisor.admin.account): any token may make them, as a client checks
    its credentials with them before anything else."""
    return segments in (["user"], ["user", "tokens", "verify"], ["memberships"], ["accounts"]) \
        or (segments[:1] == ["accounts"] and segments[2:] == ["tokens", "verify"])


def _check_token_name(name: object) -> None:
    """A token's name is shown in ``corral token ls`` and the log: control
    characters (a NUL, an ESC sequence, a newline forging a line) are refused.
    Its type and length the store checks."""
    if isinstance(name, str) and any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise Invalid(f"token name {clip(name)!r} has control characters: use printable text")


class TokenHandlers:
    """``/accounts/{a}/corral/tokens``: create, list, delete (owner only)."""

    def __init__(self, core: Handlers) -> None:
        self.core = core
        self.store = core.store

    def register(self, router: Router) -> None:
        router.add(TOKENS_PATH, GET=self.list_tokens, POST=self.create_token)
        router.add(f"{TOKENS_PATH}/{{id}}", DELETE=self.delete_token)

    async def list_tokens(self, request: Request) -> Response:
        return envelope(200, [token_json(t) for t in await self.core._run(self.store.list_tokens)])

    async def create_token(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise Invalid('send {"name": "ci", "scope": "read|deploy|admin", "namespaces": ["customers"]}')
        namespaces = body.get("namespaces") or []
        if not isinstance(namespaces, list) or not all(isinstance(n, str) for n in namespaces):
            raise Invalid("namespaces must be a list of namespace names")
        _check_token_name(body.get("name"))
        info, secret = await self.core._run(self.store.create_token, body.get("name"), body.get("scope"),
                                            namespaces)
        log_event(logging.INFO, "admin.token_created", id=info.id, name=info.name, scope=info.scope,
                  namespaces=info.namespaces)
        return envelope(200, {**token_json(info), "value": secret})

    async def delete_token(self, request: Request) -> Response:
        if not await self.core._run(self.store.delete_token, request.params["id"]):
            raise NotFound(f"no token with id {clip(request.params['id'])!r}: see `corral token ls`")
        log_event(logging.INFO, "admin.token_deleted", id=request.params["id"])
        return envelope(200, {"id": request.params["id"]})
