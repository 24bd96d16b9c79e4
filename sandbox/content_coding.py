"""HTTP content codings as workerd applies them to a worker's bodies.

workerd decodes the body of a response ``fetch()`` returned when the worker
reads it (``text()``, ``json()``, ``body``), and hands it on still encoded
when the worker returns the response unread; and it encodes a response the
worker makes when its ``Content-Encoding`` asks for it, unless the response
says ``encodeBody: "manual"`` (its body is already encoded). The supervisor
passes bodies through as they are; this module does both steps in the
child, where they are billed to the tenant's CPU.

gzip (and ``x-gzip``) and deflate, with :mod:`zlib`; other codings (``br``,
``zstd``) pass through untouched, as bytes the worker sees as they came.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any

#: The codings handled, by the name a Content-Encoding header gives.
CODINGS = frozenset({"gzip", "x-gzip", "deflate"})


def coding_of(value: str | None) -> str | None:
    """The coding a ``Content-Encoding`` value names, if it is one handled
    here (one coding only: a list of them is left alone)."""
    if not value:
        return None
    coding = value.strip().lower()
    return coding if coding in CODINGS else None


def _decompressor() -> Any:
    """Either coding: 32 + 15 reads a gzip or a zlib header, as found
    (deflate as HTTP sends it is zlib)."""
    return zlib.decompressobj(32 + 15)


def _compressor(coding: str) -> Any:
    return zlib.compressobj(6, zlib.DEFLATED, 16 + 15 if coding != "deflate" else 15)


def decode(data: bytes, coding: str) -> bytes:
    """``data`` decoded; a body that is not what its header says raises
    ``zlib.error``, as workerd's read fails."""
    inflater = _decompressor()
    return inflater.decompress(data) + inflater.flush()


async def decoding(chunks: AsyncIterator[bytes], coding: str) -> AsyncIterator[bytes]:
    """``chunks`` decoded as they come."""
    inflater = _decompressor()
    async for chunk in chunks:
        out = inflater.decompress(chunk)
        if out:
            yield out
    tail = inflater.flush()
    if tail:
        yield tail


def encode(data: bytes, coding: str) -> bytes:
    deflater = _compressor(coding)
    return deflater.compress(data) + deflater.flush()


async def encoding(chunks: AsyncIterator[Any], coding: str) -> AsyncIterator[bytes]:
    """``chunks`` encoded as they come (each one flushed, so that a stream
    the worker writes slowly reaches the client as it is written)."""
    deflater = _compressor(coding)
    async for chunk in chunks:
        data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        if data:
            yield deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH)
    yield deflater.flush()
