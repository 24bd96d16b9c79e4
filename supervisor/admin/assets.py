"""Static assets uploaded as Cloudflare's API uploads them.

1. ``POST .../scripts/{name}/assets-upload-session`` with a manifest
   ``{"/index.html": {"hash": "...", "size": 123}}`` answers the hashes the
   store lacks, in ``buckets``, and an upload token (``jwt``); when nothing
   is missing the token is already the completion token.
2. ``POST /accounts/{a}/workers/assets/upload`` with ``Authorization: Bearer
   <upload token>`` carries blobs by hash (multipart parts named by hash, or a
   JSON object ``{hash: base64}`` as the SDK sends it); the call that brings
   the last missing blob answers the completion token.
3. The script upload names the completion token in ``metadata.assets.jwt``;
   the manifest becomes part of that version.

Sessions live in memory for an hour: a restart only makes a platform open a
new session, and no unfinished upload is ever mistaken for a complete one.
Tokens are random and bound to one ``(namespace, script)``; a completion
token stays valid until it expires, so a script upload that failed to load
can be retried with it.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from typing import Any

import msgspec

from supervisor.errors import Invalid, NotFound, Unauthorized
from supervisor.store.assets import check_hash

SESSION_TTL_S = 3600.0
MAX_MANIFEST_FILES = 20_000
MAX_ASSET_BYTES = 25 * 2**20
BUCKET_SIZE = 50


class Entry(msgspec.Struct, kw_only=True):
    hash: str
    size: int


class _Session(msgspec.Struct, kw_only=True):
    namespace: str
    script: str
    manifest: dict[str, Entry]
    missing: set[str]
    expires: float


def parse_manifest(raw: Any) -> dict[str, Entry]:
    """``{path: {"hash", "size"}}``, checked: paths absolute, hashes hex, sizes bounded."""
    if not isinstance(raw, dict) or not raw:
        raise Invalid('send {"manifest": {"/index.html": {"hash": "<hex>", "size": 123}, ...}}')
    if len(raw) > MAX_MANIFEST_FILES:
        raise Invalid(f"the manifest lists {len(raw)} files, more than the {MAX_MANIFEST_FILES} accepted")
    manifest: dict[str, Entry] = {}
    for path, item in raw.items():
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path or len(path) > 1024 \
                or any(p in (".", "..") for p in path.split("/")):
            raise Invalid(f"invalid asset path {str(path)[:80]!r}: use an absolute path like '/index.html'")
        size = item.get("size", 0) if isinstance(item, dict) else None
        # (JSON's true is a Python int: a size it is not.)
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_ASSET_BYTES:
            raise Invalid(f"manifest entry {path[:80]!r} needs a hash and a size of 0 to {MAX_ASSET_BYTES} bytes")
        manifest[path] = Entry(hash=check_hash(item.get("hash")), size=size)
    return manifest


def decode_blobs(content_type: str, body: bytes, parts: list[Any] | None, is_base64: bool) -> dict[str, bytes]:
    """The blobs of one upload call, by hash."""
    if parts is not None:
        raw = {p.name: p.data for p in parts}
    else:
        try:
            obj = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise Invalid("the asset upload is neither multipart nor a JSON object of hash -> content: "
                          f"{exc}") from None
        if not isinstance(obj, dict):
            raise Invalid("send the assets as a JSON object {hash: base64 content}")
        raw = {k: v.encode() if isinstance(v, str) else b"" for k, v in obj.items()}
        is_base64 = True  # JSON carries text: the SDK sends base64
    blobs: dict[str, bytes] = {}
    for digest, data in raw.items():
        digest = check_hash(digest)
        if is_base64:
            try:
                data = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise Invalid(f"asset {digest} is not valid base64 (uploads with ?base64=true must be)") from None
        blobs[digest] = data
    return blobs


class AssetSessions:
    """Upload sessions and completion tokens, in memory (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uploads: dict[str, _Session] = {}
        self._completed: dict[str, _Session] = {}

    def _expire(self, now: float) -> None:
        for table in (self._uploads, self._completed):
            for token in [t for t, s in table.items() if s.expires < now]:
                del table[token]

    def open(self, namespace: str, script: str, manifest: dict[str, Entry],
             missing: set[str]) -> tuple[str, list[list[str]]]:
        """``(token, buckets)``: an upload token and the missing hashes; with
        nothing missing, a completion token and no buckets."""
        now = time.monotonic()
        session = _Session(namespace=namespace, script=script, manifest=manifest, missing=set(missing),
                           expires=now + SESSION_TTL_S)
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._expire(now)
            (self._uploads if missing else self._completed)[token] = session
        ordered = sorted(missing)
        return token, [ordered[i:i + BUCKET_SIZE] for i in range(0, len(ordered), BUCKET_SIZE)]

    def session(self, token: str) -> _Session:
        with self._lock:
            session = self._uploads.get(token)
        if session is None or session.expires < time.monotonic():
            raise Unauthorized("unknown or expired asset upload token: open a new upload session with "
                               "POST .../scripts/{name}/assets-upload-session")
        return session

    def received(self, token: str, hashes: set[str]) -> str | None:
        """Mark blobs as stored; the completion token once none is missing."""
        with self._lock:
            session = self._uploads.get(token)
            if session is None:
                return None
            session.missing -= hashes
            if session.missing:
                return None
            del self._uploads[token]
            done = secrets.token_urlsafe(32)
            self._completed[done] = session
            return done

    def complete(self, token: str, namespace: str, script: str) -> dict[str, Entry]:
        """The manifest of a completion token, for this script only."""
        with self._lock:
            session = self._completed.get(token)
            if session is None or session.expires < time.monotonic():
                raise NotFound("unknown or expired assets completion token (metadata.assets.jwt): finish "
                               "the asset upload session first, then upload the script with its token")
            if (session.namespace, session.script) != (namespace, script):
                raise Invalid("this assets completion token was issued for another script")
        return session.manifest
