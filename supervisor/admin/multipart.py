"""A strict, small ``multipart/form-data`` parser for script uploads.

Uploads carry Python source and possibly binary data files, so parts are
treated as opaque bytes: the body is split on the boundary with plain byte
searches (no decoding, no line-ending translation), and only the part
headers are read as text. Limits on the number of parts and on each part's
size are checked while splitting, before anything is copied, so a hostile
body costs at most one pass over bytes the HTTP server already capped.

Errors are :class:`MultipartError` with a message naming what is wrong;
``status`` is 413 for a limit and 400 for malformed input, ready for the
admin API's envelope.
"""

from __future__ import annotations

import re
import urllib.parse

import msgspec

__all__ = ["MultipartError", "Part", "encode", "parse", "parse_boundary", "parse_header_params"]

DEFAULT_MAX_PARTS = 1000
DEFAULT_MAX_PART_BYTES = 10 * 2**20
_MAX_HEADER_BYTES = 16 * 1024
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{1,70}")  # RFC 2046 bchars (fullmatch)


class MultipartError(ValueError):
    """The body is not a usable multipart/form-data upload."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Part(msgspec.Struct, kw_only=True):
    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


def parse_header_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type; a=1; b="x \\"y\\""`` into the lowercased first token and its params.

    Parameter names are lowercased; quoted values are unescaped; RFC 5987
    ``name*=UTF-8''...`` values are decoded and win over the plain form.
    """
    params: dict[str, str] = {}
    extended: dict[str, str] = {}
    i = value.find(";")
    head = (value if i == -1 else value[:i]).strip().lower()
    n = len(value)
    while i != -1 and i < n:
        i += 1
        while i < n and value[i] in " \t":
            i += 1
        eq = value.find("=", i)
        semi = value.find(";", i)
        if eq == -1 or (semi != -1 and semi < eq):
            # A bare token without '=': skip it.
            i = semi
            continue
        key = value[i:eq].strip().lower()
        i = eq + 1
        while i < n and value[i] in " \t":
            i += 1
        if i < n and value[i] == '"':
            i += 1
            out: list[str] = []
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(value[i])
                i += 1
            if i >= n:
                raise MultipartError(f"unterminated quoted string in header value {value[:80]!r}")
            val = "".join(out)
            i = value.find(";", i + 1)
        else:
            semi = value.find(";", i)
            val = (value[i:] if semi == -1 else value[i:semi]).strip()
            i = semi
        if key.endswith("*"):
            charset, _, rest = val.partition("'")
            _, _, encoded = rest.partition("'")
            try:
                extended[key[:-1]] = urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="strict")
            except (LookupError, ValueError):  # unknown charset, or bytes it cannot decode
                raise MultipartError(f"cannot decode header parameter {key[:40]}={val[:80]!r}: "
                                     "use UTF-8''percent-escapes (RFC 5987)") from None
        elif key:
            params[key] = val
    params.update(extended)
    return head, params


def parse_boundary(content_type: str) -> str:
    """The boundary of a ``multipart/form-data`` Content-Type, or MultipartError."""
    kind, params = parse_header_params(content_type or "")
    if kind != "multipart/form-data":
        raise MultipartError(
            f"expected Content-Type multipart/form-data, got {content_type[:80] or 'none'!r}"
        )
    boundary = params.get("boundary", "")
    if not boundary:
        raise MultipartError("the multipart/form-data Content-Type has no boundary parameter")
    if not _BOUNDARY_RE.fullmatch(boundary) or boundary.endswith(" "):
        raise MultipartError(f"invalid multipart boundary {boundary[:80]!r} (RFC 2046: 1-70 safe characters)")
    return boundary


def _parse_part(raw: bytes, index: int) -> Part:
    end = raw.find(b"\r\n\r\n")
    if raw.startswith(b"\r\n"):  # no headers at all
        head, data = b"", raw[2:]
    elif end == -1:
        raise MultipartError(f"part {index + 1} has no blank line between its headers and its body")
    else:
        head, data = raw[:end], raw[end + 4 :]
    if len(head) > _MAX_HEADER_BYTES:
        raise MultipartError(f"part {index + 1} has more than {_MAX_HEADER_BYTES} bytes of headers", 413)
    try:
        lines = head.decode("utf-8").split("\r\n") if head else []
    except UnicodeDecodeError:
        raise MultipartError(f"part {index + 1} has headers that are not UTF-8") from None
    headers: dict[str, str] = {}
    for line in lines:
        if line[:1] in (" ", "\t") and headers:
            raise MultipartError(f"part {index + 1} uses folded headers, which form-data does not allow")
        key, colon, value = line.partition(":")
        if not colon:
            raise MultipartError(f"part {index + 1} has a malformed header line {line[:80]!r}")
        headers[key.strip().lower()] = value.strip()
    disposition = headers.get("content-disposition")
    if disposition is None:
        raise MultipartError(f"part {index + 1} has no Content-Disposition header")
    kind, params = parse_header_params(disposition)
    if kind != "form-data":
        raise MultipartError(f"part {index + 1} has Content-Disposition {kind!r}, expected form-data")
    name = params.get("name")
    if not name:
        raise MultipartError(f"part {index + 1} has no name in its Content-Disposition")
    return Part(name=name, data=data, filename=params.get("filename"), content_type=headers.get("content-type"))


def parse(
    content_type: str,
    body: bytes,
    *,
    max_parts: int = DEFAULT_MAX_PARTS,
    max_part_bytes: int = DEFAULT_MAX_PART_BYTES,
) -> list[Part]:
    """Split an upload into its parts, in body order.

    Raises :class:`MultipartError` for a wrong content type, a malformed body,
    a duplicate part name, or a limit (``status`` 413).
    """
    boundary = parse_boundary(content_type).encode("latin-1")
    delimiter = b"--" + boundary
    # The first delimiter may follow a preamble, which must end in CRLF.
    if body.startswith(delimiter):
        pos = len(delimiter)
    else:
        first = body.find(b"\r\n" + delimiter)
        if first == -1:
            raise MultipartError("the body does not contain the boundary given in Content-Type")
        pos = first + 2 + len(delimiter)
    separator = b"\r\n" + delimiter
    parts: list[Part] = []
    names: set[str] = set()
    while True:
        if body.startswith(b"--", pos):
            return parts  # close delimiter; anything after it is an epilogue
        # Transport padding (spaces/tabs) may follow a delimiter, then CRLF.
        while pos < len(body) and body[pos] in b" \t":
            pos += 1
        if not body.startswith(b"\r\n", pos):
            raise MultipartError("malformed multipart body: a boundary line is not followed by CRLF")
        start = pos + 2
        end = body.find(separator, start)
        if end == -1:
            raise MultipartError("malformed multipart body: the closing boundary is missing (truncated upload?)")
        if len(parts) >= max_parts:
            raise MultipartError(f"the upload has more than {max_parts} parts", 413)
        if end - start > max_part_bytes + _MAX_HEADER_BYTES:
            raise MultipartError(f"part {len(parts) + 1} is larger than {max_part_bytes} bytes", 413)
        part = _parse_part(body[start:end], len(parts))
        if len(part.data) > max_part_bytes:
            raise MultipartError(f"part {part.name[:80]!r} is larger than {max_part_bytes} bytes", 413)
        # Cloudflare's SDKs name every module part "files" (the path is its
        # filename): those are told apart by filename.
        key = f"files:{part.filename}" if part.name in ("files", "files[]") and part.filename else part.name
        if key in names:
            what = (f"files with the filename {part.filename[:80]!r}" if key != part.name
                    else f"parts named {part.name[:80]!r}")
            raise MultipartError(f"the upload has two {what}")
        names.add(key)
        parts.append(part)
        pos = end + len(separator)


def encode(fields: list[Part], boundary: str | None = None) -> tuple[str, bytes]:
    """Build a body: returns ``(content_type, body)``. Used by the CLI and tests.

    The boundary is random unless given; a part containing it is an error
    (vanishingly unlikely with the random one).
    """
    import secrets

    boundary = boundary or "corral-" + secrets.token_hex(16)
    marker = b"--" + boundary.encode("latin-1")
    chunks: list[bytes] = []
    for part in fields:
        if any(c in (part.name + (part.filename or "") + (part.content_type or "")) for c in "\r\n\0"):
            raise MultipartError(f"part name {part.name!r} contains a line break or NUL")
        if marker in part.data:
            raise MultipartError(f"part {part.name!r} contains the multipart boundary")
        name = part.name.replace("\\", "\\\\").replace('"', '\\"')
        disposition = f'form-data; name="{name}"'
        if part.filename is not None:
            filename = part.filename.replace("\\", "\\\\").replace('"', '\\"')
            disposition += f'; filename="{filename}"'
        head = f"Content-Disposition: {disposition}\r\n"
        if part.content_type:
            head += f"Content-Type: {part.content_type}\r\n"
        chunks += [marker, b"\r\n", head.encode("utf-8"), b"\r\n", part.data, b"\r\n"]
    chunks += [marker, b"--\r\n"]
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks)
