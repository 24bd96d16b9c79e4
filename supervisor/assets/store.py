"""Content-addressed asset blobs, per script.

A narrow interface (``put``, ``path``, ``open``) so that it can be swapped for
the management plane's store (Cloudflare's upload sessions) at merge time.
Blobs live at ``<state_dir>/assets/<namespace or _platform>/<script>/<hash>``:
deduplicated across the versions of a script, and never shared between
scripts, so one tenant's upload can never be served (or probed) as another's.
The manifest (``/path`` -> hash, size) lives in the script record
(:class:`supervisor.model.AssetSet`). Blocking file I/O: call from a thread.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import BinaryIO

_HASH = re.compile(r"^[0-9a-f]{32}$")


def content_hash(data: bytes) -> str:
    """32 hex digits, as Cloudflare's manifests carry."""
    return hashlib.sha256(data).hexdigest()[:32]


class AssetStore:
    def __init__(self, root: str) -> None:
        self.root = root

    def _dir(self, namespace: str, script: str) -> str:
        return os.path.join(self.root, namespace or "_platform", script)

    def path(self, namespace: str, script: str, digest: str) -> str:
        if not _HASH.match(digest):
            raise ValueError(f"not an asset hash: {digest!r}")
        return os.path.join(self._dir(namespace, script), digest)

    def put(self, namespace: str, script: str, data: bytes) -> str:
        """Store ``data`` (once) and return its hash."""
        digest = content_hash(data)
        target = self.path(namespace, script, digest)
        if os.path.exists(target):
            return digest
        os.makedirs(os.path.dirname(target), exist_ok=True)
        staging = f"{target}.{os.getpid()}.tmp"
        with open(staging, "wb") as f:
            f.write(data)
        os.replace(staging, target)
        return digest

    def open(self, namespace: str, script: str, digest: str) -> BinaryIO:
        return open(self.path(namespace, script, digest), "rb")
