"""The asset upload endpoints (see :mod:`supervisor.admin.assets` for the flow)."""

from __future__ import annotations

import logging

from supervisor.admin import multipart
from supervisor.admin.assets import MAX_ASSET_BYTES, decode_blobs, parse_manifest
from supervisor.admin.handlers import _NS, _PS, Handlers, _namespace_of, _script_of, log_event
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.errors import Invalid, NotSupported, TooLarge, Unauthorized
from supervisor.model import PLATFORM
from supervisor.store.store import namespace_not_found


class AssetHandlers:
    def __init__(self, core: Handlers) -> None:
        self.core = core
        self.sessions = core.sessions

    def register(self, router: Router) -> None:
        for prefix in (f"{_NS}/{{ns}}/scripts", _PS):
            router.add(f"{prefix}/{{name}}/assets-upload-session", POST=self.open_session)
        router.add("accounts/*/workers/assets/upload", POST=self.upload)

    def _blobs(self):  # noqa: ANN202
        if self.core.blobs is None:
            raise NotSupported("static assets need a state directory (this API has no asset store)")
        return self.core.blobs

    async def open_session(self, request: Request) -> Response:
        ns, name = _namespace_of(request), _script_of(request)
        blobs = self._blobs()
        body = request.json()
        manifest = parse_manifest(body.get("manifest") if isinstance(body, dict) else None)
        if ns != PLATFORM and await self.core._run(self.core.store.get_namespace, ns) is None:
            raise namespace_not_found(ns)
        sizes = {e.hash: (path, e.size) for path, e in manifest.items()}
        stored = await self.core._run(lambda: {h: blobs.size(ns, name, h) for h in sizes})
        for digest, size in stored.items():
            path, declared = sizes[digest]
            if size is not None and size != declared:
                # Served by the manifest's size, the file would be cut short or framed too long.
                raise Invalid(f"manifest entry {path!r}: hash {digest} is a stored file of {size} bytes, "
                              f"not {declared}")
        missing = {digest for digest, size in stored.items() if size is None}
        token, buckets = self.sessions.open(ns, name, manifest, missing)
        log_event(logging.INFO, "admin.assets_session", namespace=ns, script=name, files=len(manifest),
                  missing=len(missing))
        return envelope(200, {"jwt": token, "buckets": buckets})

    async def upload(self, request: Request) -> Response:
        blobs = self._blobs()
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not token:
            raise Unauthorized("send the upload session's token as 'Authorization: Bearer <jwt>'")
        session = self.sessions.session(token)
        content_type = request.headers.get("content-type", "")
        parts = None
        if content_type.lower().startswith("multipart/"):
            parts = multipart.parse(content_type, request.body, max_part_bytes=2 * MAX_ASSET_BYTES)
        is_base64 = request.query.get("base64", "").lower() in ("true", "1")
        received = decode_blobs(content_type, request.body, parts, is_base64)
        sizes = {e.hash: e.size for e in session.manifest.values()}
        for digest, data in received.items():
            if digest not in session.missing:
                raise Invalid(f"asset {digest} is not one this session is waiting for")
            if len(data) != sizes[digest]:
                raise (TooLarge if len(data) > sizes[digest] else Invalid)(
                    f"asset {digest} is {len(data)} bytes, the manifest said {sizes[digest]}")

        def write() -> None:
            for digest, data in received.items():
                blobs.put(session.namespace, session.script, digest, data)

        await self.core._run(write)
        done = self.sessions.received(token, set(received))
        if done is None:
            return envelope(202, {"jwt": None})
        return envelope(201, {"jwt": done})
