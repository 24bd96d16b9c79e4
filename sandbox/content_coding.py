"""HTTP content codings as workerd applies them to a worker's bodies.

workerd decodes the body of a response ``fetch()`` returned when the worker
reads it (``text()``, ``json()``, ``body``), and hands it on still encoded
when the worker returns the response unread; and it encodes a response the
worker makes when its ``Content-Encoding`` asks for it, unless the response
says ``encodeBody: "manual"`` (its body is already encoded). The supervisor
passes bodies through as they are; this module does both steps in the
child, where they are billed to the tenant's CPU.

Which codings, as workerd's ``getContentEncoding`` (``api/system-streams.c++``)
decides for both directions: a ``Content-Encoding`` of exactly ``gzip``, and
of exactly ``br`` when the script has ``brotli_content_encoding`` (on by
default from its compatibility date 2024-04-29; ``no_brotli_content_encoding``
turns it off). Anything else (``deflate``, ``x-gzip``, ``GZIP``, ``zstd``, a
list of codings, and ``br`` with the flag off) passes through untouched: the
bytes the worker sees, or sends, as they are.

gzip with :mod:`zlib`; brotli with the ``brotli`` package, a dependency of
Corral's, which the zygote imports before it builds the jail's file view
(this module is imported there), so children have it without its files.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any

import brotli

from . import compat

#: workerd's ``brotliContentEncoding``: its enable date and its two flags.
BROTLI_FROM = "2024-04-29"
BROTLI_ON = "brotli_content_encoding"
BROTLI_OFF = "no_brotli_content_encoding"

#: kj's ``BrotliAsyncOutputStream`` defaults (``kj/compat/brotli.h``): quality
#: 5 (brotli's own default, 11, is far too slow to compress on the fly) and a
#: 512 KiB window.
BROTLI_QUALITY = 5
BROTLI_WINDOW_BITS = 19
#: gzip's: zlib's default level, as kj's ``GzipAsyncOutputStream`` has it.
GZIP_LEVEL = 6

#: The codings handled for the script this child runs (one script a child:
#: set once, when it is loaded, by :func:`configure`). gzip until then.
_codings: frozenset[str] = frozenset({"gzip"})


def configure() -> None:
    """Set the codings handled to those of the script this child loaded
    (its compatibility: sandbox.compat)."""
    global _codings
    on = compat.on(BROTLI_ON, BROTLI_OFF, BROTLI_FROM)
    _codings = frozenset({"gzip", "br"} if on else {"gzip"})


def coding_of(value: str | None) -> str | None:
    """The coding a ``Content-Encoding`` value names, if it is one handled
    here: its exact name, as workerd compares it (the header's value is
    already trimmed of whitespace, as the Fetch standard normalizes it)."""
    return value if value in _codings else None


class _Brotli:
    """Compresses as zlib's objects do for gzip (``compress``/``flush``),
    so that both codings go through the same loops."""

    def __init__(self) -> None:
        self._inner = brotli.Compressor(quality=BROTLI_QUALITY, lgwin=BROTLI_WINDOW_BITS)

    def compress(self, data: bytes) -> bytes:
        return self._inner.process(data)

    def flush(self, mode: int = zlib.Z_FINISH) -> bytes:
        return self._inner.finish() if mode == zlib.Z_FINISH else self._inner.flush()


class _Unbrotli:
    """Decompresses with zlib's ``decompressobj`` calls, ``max_length`` and
    ``unconsumed_tail`` included (brotli keeps the input it has not used
    itself: the tail is empty, and more output comes of empty input until
    none does)."""

    unconsumed_tail = b""

    def __init__(self) -> None:
        self._inner = brotli.Decompressor()

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        if not max_length:
            return self._inner.process(data)
        return self._inner.process(data, output_buffer_limit=max_length)

    def flush(self) -> bytes:
        return b""


def _decompressor(coding: str) -> Any:
    """32 + 15 reads a gzip header (or a zlib one, as found)."""
    return _Unbrotli() if coding == "br" else zlib.decompressobj(32 + 15)


def _compressor(coding: str) -> Any:
    return _Brotli() if coding == "br" else zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + 15)


def decode(data: bytes, coding: str) -> bytes:
    """``data`` decoded; a body that is not what its header says raises
    ``zlib.error`` or ``brotli.error``, as workerd's read fails."""
    inflater = _decompressor(coding)
    return inflater.decompress(data) + inflater.flush()


#: The most a streamed body's decoding hands the reader at once: a few
#: hundred compressed bytes can stand for gigabytes (brotli's ratio is
#: unbounded in practice), which decoded whole blew the worker's memory
#: however it read them, where workerd decodes into the reader's buffer.
DECODED_PIECE = 64 * 1024


async def decoding(chunks: AsyncIterator[bytes], coding: str) -> AsyncIterator[bytes]:
    """``chunks`` decoded as they come, :data:`DECODED_PIECE` at most at a time."""
    inflater = _decompressor(coding)
    async for chunk in chunks:
        data = chunk
        while True:
            out = inflater.decompress(data, DECODED_PIECE)
            if out:
                yield out
            data = inflater.unconsumed_tail  # zlib: input it has not used yet
            if not data and not out:
                break  # all of this chunk is out (brotli: asked again until it gives nothing)
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
