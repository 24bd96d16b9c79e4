"""Static asset blobs: content-addressed files under ``<state_dir>/assets``.

Blobs are scoped per script: ``assets/<scope>/<hash[:2]>/<hash>`` where the
scope is a hash of ``(namespace, script)``. The same file uploaded by two
tenants is stored twice, on purpose: a hash a tenant names (Cloudflare's
manifest hashes are the client's to compute) can only ever reach blobs
uploaded for that same script, so nothing is served across tenants.

A blob is written to a temporary file and renamed into place, so a crash
leaves either the whole blob or none; the manifest that names it is
committed to SQLite only afterwards. Reading is for the edge (issue 14):
:meth:`AssetBlobs.open` with the hash from the version's ``ScriptRecord.assets``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from typing import BinaryIO

from supervisor.errors import Invalid

HASH_RE = re.compile(r"[0-9a-fA-F]{16,64}")


def check_hash(value: object) -> str:
    if not isinstance(value, str) or not HASH_RE.fullmatch(value):
        raise Invalid(f"invalid asset hash {str(value)[:80]!r}: use 16 to 64 hex digits, as in the manifest")
    return value.lower()


class AssetBlobs:
    """The blob files of one state directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)

    @staticmethod
    def scope(namespace: str, script: str) -> str:
        return hashlib.sha256(f"{namespace}\0{script}".encode()).hexdigest()[:32]

    def path(self, namespace: str, script: str, digest: str) -> str:
        digest = check_hash(digest)
        return os.path.join(self.root, self.scope(namespace, script), digest[:2], digest)

    def size(self, namespace: str, script: str, digest: str) -> int | None:
        """The stored blob's size in bytes; None if there is none."""
        try:
            return os.path.getsize(self.path(namespace, script, digest))
        except FileNotFoundError:
            return None

    def put(self, namespace: str, script: str, digest: str, data: bytes) -> None:
        """Write one blob atomically (temporary file, fsync, rename)."""
        final = self.path(namespace, script, digest)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        staging = f"{final}.{os.getpid()}.tmp"
        with open(staging, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, final)

    def open(self, namespace: str, script: str, digest: str) -> BinaryIO:
        """The blob for reading; FileNotFoundError if it was never uploaded for this script."""
        return open(self.path(namespace, script, digest), "rb")

    def drop_script(self, namespace: str, script: str) -> None:
        """Forget every blob of a deleted script."""
        shutil.rmtree(os.path.join(self.root, self.scope(namespace, script)), ignore_errors=True)
