"""``env.BUCKET``: R2 with Cloudflare's methods, objects and options."""

from __future__ import annotations

import datetime
import email.utils
import re
from typing import Any

from .. import workers
from ..js_globals import JsDate
from ..pyodide_shim import ArrayBuffer
from ..sdk_types import Blob
from . import (
    AttrDict,
    AttrList,
    JsException,
    call,
    camel,
    js_json,
    js_key,
    js_keys,
    kind,
    options,
    read,
    stream_of,
    stream_value,
    webidl_int,
    wrap,
)

#: One range of bytes, as a Range header gives it.
_BYTE_RANGE = re.compile(r"bytes\s*=\s*(?P<start>\d*)\s*-\s*(?P<end>\d*)", re.IGNORECASE)
_HTTP_HEADERS = {"content-type": "contentType", "content-language": "contentLanguage",
                 "content-disposition": "contentDisposition",
                 "content-encoding": "contentEncoding", "cache-control": "cacheControl",
                 "expires": "cacheExpiry"}


def _expiry(value: Any) -> Any:
    """A cacheExpiry as ms since the epoch: a datetime, or an HTTP date as an
    ``Expires`` header has it (workerd keeps it as a Date either way; kept
    as the string, it could never be written back as a header)."""
    if isinstance(value, str):
        try:
            value = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            raise JsException("TypeError", f"cacheExpiry {value[:64]!r} is not a date") from None
    return _ms(value)


def _ms(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return value.timestamp() * 1000.0
    return value


def _http_metadata(value: Any) -> Any:
    if isinstance(value, workers.Headers):
        return {field: (_expiry(value.get(name)) if field == "cacheExpiry" else value.get(name))
                for name, field in _HTTP_HEADERS.items() if value.has(name)}
    if isinstance(value, dict):
        return {camel(k): (_expiry(v) if camel(k) == "cacheExpiry" else v) for k, v in value.items()}
    return value


def _conditional_etags(header: str, name: str) -> list[list[str]]:
    """An ``If-Match`` / ``If-None-Match`` value as workerd's
    ``parseConditionalEtagHeader`` reads it: quoted strong etags, ``W/"..."``
    weak ones, or ``*`` (which stands alone), comma separated; parsing stops
    at any other character. A header with no etag in it is an Error, as are
    an unclosed quote and two etags with no comma between them. Each etag is
    ``[kind, value]``, kind ``strong``, ``weak`` or ``wildcard``: R2 compares
    ``etagMatches`` strongly (a weak etag never matches) and
    ``etagDoesNotMatch`` weakly."""
    etags: list[list[str]] = []
    rest, comma_due = header, False
    while True:
        rest = rest.lstrip(" \t")
        if not rest or rest[0] not in ',*W"':
            break
        head = rest[0]
        if head == ",":
            rest, comma_due = rest[1:], False
            continue
        if comma_due:
            raise JsException("Error", f"Comma was expected to separate etags. Encountered {head!r} instead.")
        if head == "*":
            etags = [["wildcard", ""]]
            break
        kind = "strong"
        if head == "W":
            if not rest.startswith('W/"'):
                raise JsException("Error", "Weak etags must start with W/ and their value must be quoted")
            kind, rest = "weak", rest[2:]
        end = rest.find('"', 1)
        if end < 0:
            raise JsException("Error", "Unclosed double quote for Etag")
        etags.append([kind, rest[1:end]])
        rest, comma_due = rest[end + 1:], True
    if not etags:
        raise JsException("Error", f"Invalid ETag in {name} header")
    return etags


def _only_if(value: Any) -> Any:
    """R2's ``onlyIf`` as the supervisor takes it, its etags as
    :func:`_conditional_etags` gives them. From Headers, dates carry
    ``secondsGranularity`` (an HTTP date has whole seconds, so an object
    uploaded at 12:00:00.5 is not "modified since" 12:00:00, as in
    workerd's ``UnwrappedConditional``). In an object, an etag is one
    strong etag (or ``*``) taken as written, and one wrapped in quotes is
    workerd's TypeError."""
    if isinstance(value, workers.Headers):
        out: dict[str, Any] = {}
        for header, key in (("if-match", "etagMatches"), ("if-none-match", "etagDoesNotMatch")):
            if value.has(header):
                out[key] = _conditional_etags(value.get(header), header)
        for header, key in (("if-unmodified-since", "uploadedBefore"),
                            ("if-modified-since", "uploadedAfter")):
            if value.has(header):
                try:
                    out[key] = email.utils.parsedate_to_datetime(value.get(header)).timestamp() * 1000
                except (TypeError, ValueError):
                    pass
                else:
                    out["secondsGranularity"] = True
        return out
    if isinstance(value, dict):
        out = {k: _ms(v) for k, v in value.items()}
        for name in ("etagMatches", "etagDoesNotMatch"):
            etag = value.get(name)
            if etag is None:
                continue
            if not isinstance(etag, str):
                raise JsException("TypeError", f"onlyIf.{name} must be a string, not {type(etag).__name__}")
            if etag.startswith('"') and etag.endswith('"'):
                raise JsException("TypeError", f"Conditional ETag should not be wrapped in quotes ({etag}).")
            out[name] = [["wildcard", ""]] if etag == "*" else [["strong", etag]]
        return out
    return value


def _js_number(value: float) -> str:
    """A number as JavaScript prints it in workerd's messages (``2``, not ``2.0``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _range_field(value: Any, label: str, negative: str, name: str) -> Any:
    """One field of a ``range`` object, checked as workerd's ``initGetOptions``
    checks it: a RangeError for a negative or fractional number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JsException("TypeError", f"range.{name} must be a number, not {type(value).__name__}")
    if value < 0:
        raise JsException("RangeError", f"{negative} ({_js_number(value)}) must be greater than or "
                                         "equal to 0.")
    if isinstance(value, float) and not value.is_integer():
        raise JsException("RangeError", f"Invalid range. {label} ({_js_number(value)}) must be an "
                                         "integer, not floating point.")
    return int(value)


def _range(value: Any) -> Any:
    if isinstance(value, workers.Headers):
        value = value.get("range")
    if isinstance(value, str):  # "bytes=0-99", "bytes=100-", "bytes=-50"
        match = _BYTE_RANGE.fullmatch(value.strip())
        if match is None or not (match["start"] or match["end"]):
            raise JsException("TypeError", f"Invalid range header {value[:100]!r}: R2 reads one range "
                                           "of bytes ('bytes=0-99', 'bytes=100-' or 'bytes=-50')")
        start, end = match["start"], match["end"]
        if not start:
            return {"suffix": int(end)}
        if end and int(end) < int(start):
            raise JsException("RangeError", f"Invalid range header {value[:100]!r}: it ends before it starts")
        return {"offset": int(start), **({"length": int(end) - int(start) + 1} if end else {})}
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        if value.get("offset") is not None:
            out["offset"] = _range_field(value["offset"], "Starting offset",
                                         "Invalid range. Starting offset", "offset")
        if value.get("length") is not None:
            out["length"] = _range_field(value["length"], "Length", "Invalid range. Length", "length")
        if value.get("suffix") is not None:
            if "offset" in out:
                raise JsException("TypeError", "Suffix is incompatible with offset.")
            if "length" in out:
                raise JsException("TypeError", "Suffix is incompatible with length.")
            out["suffix"] = _range_field(value["suffix"], "Suffix", "Invalid suffix. Suffix", "suffix")
        return out
    return value


#: The hashes ``put`` may check, with workerd's names and sizes (bytes).
_HASHES = (("md5", "MD5", 16), ("sha1", "SHA-1", 20), ("sha256", "SHA-256", 32),
           ("sha384", "SHA-384", 48), ("sha512", "SHA-512", 64))


def _hash_options(opts: dict[str, Any]) -> dict[str, Any]:
    """``put``'s checksum option, checked as workerd checks it before
    sending (r2-bucket.c++): one algorithm at most, and a digest of the
    algorithm's size, as bytes or as hex."""
    sent: dict[str, Any] = {}
    for name, label, size in _HASHES:
        value = opts.get(name)
        if value is None:
            continue
        if sent:
            raise JsException("TypeError", "You cannot specify multiple hashing algorithms.")
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = bytes(value)
            if len(value) != size:
                raise JsException("TypeError", f"{label} is {size} bytes, not {len(value)}")
        elif isinstance(value, str):
            if len(value) != size * 2:
                raise JsException("TypeError", f"{label} is {size * 2} hex characters, not {len(value)}")
            try:
                bytes.fromhex(value)
            except ValueError:
                raise JsException("TypeError", f"Provided {label} wasn't a valid hex string") from None
        else:
            raise JsException("TypeError", f"{name} must be a hex string or an ArrayBuffer, not "
                                           f"{type(value).__name__}")
        sent[name] = value
    return sent


class _Fields:
    """``obj["key"]`` as well as ``obj.key``: the SDK reaches a JavaScript
    object's fields both ways, and code written for it does too."""

    def __getitem__(self, name: str) -> Any:
        if not isinstance(name, str) or name.startswith("_"):
            raise KeyError(name)
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None


class R2Checksums(AttrDict):
    """``obj.checksums``: each digest an ArrayBuffer of its bytes, as workerd's
    R2Checksums has them (``.md5.to_bytes().hex()``), and ``toJSON()`` their
    hex strings, as its ``toJSON`` gives them."""

    #: workerd's R2Checksums properties: each is there, ``undefined`` (None
    #: here) when the object has no such digest (a multipart upload's has none).
    ALGORITHMS = ("md5", "sha1", "sha256", "sha384", "sha512")

    def __init__(self, hex_digests: dict[str, str]) -> None:
        super().__init__((name, ArrayBuffer(bytes.fromhex(value))) for name, value in hex_digests.items())

    def __getattr__(self, name: str) -> Any:
        if name in R2Checksums.ALGORITHMS:
            return self.get(name)
        return super().__getattr__(name)

    def toJSON(self) -> AttrDict:  # noqa: N802 - Workers API name
        return AttrDict((name, bytes(value).hex()) for name, value in self.items())


class R2Object(_Fields):
    """An object's metadata (``head``, ``put``, ``list``)."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.key: str = raw["key"]
        self.version: str = raw["version"]
        self.size: int = raw["size"]
        self.etag: str = raw["etag"]
        self.httpEtag: str = raw["httpEtag"]  # noqa: N815
        # A JavaScript Date on Cloudflare (``.getTime()``, ``.toISOString()``),
        # and a UTC datetime for Python code.
        self.uploaded = JsDate.from_ms(raw["uploaded"], naive=True)  # as the SDK converts a Date
        # A listed object has the metadata its list's ``include`` asked for;
        # the rest is undefined (None), as with workerd's R2 list.
        self.httpMetadata = wrap(raw.get("httpMetadata"))  # noqa: N815
        self.customMetadata = wrap(raw.get("customMetadata"))  # noqa: N815
        self.checksums = R2Checksums(raw.get("checksums") or {})
        self.storageClass: str = raw.get("storageClass", "Standard")  # noqa: N815
        self.range = wrap(raw.get("range"))

    @property
    def http_etag(self) -> str:
        return self.httpEtag

    @property
    def http_metadata(self) -> AttrDict:
        return self.httpMetadata

    @property
    def custom_metadata(self) -> AttrDict:
        return self.customMetadata

    @property
    def storage_class(self) -> str:
        return self.storageClass

    def writeHttpMetadata(self, headers: Any) -> None:  # noqa: N802
        """Set the object's HTTP metadata as headers (``workers.Headers`` or a dict)."""
        if self.httpMetadata is None:
            raise JsException("TypeError", f"HTTP metadata unknown for key `{self.key}`. Did you "
                                           "forget to add 'httpMetadata' to `include` when listing?")
        names = {field: name for name, field in _HTTP_HEADERS.items()}
        for field, value in self.httpMetadata.items():
            if field in names and value is not None:
                if field == "cacheExpiry":
                    value = datetime.datetime.fromtimestamp(
                        float(value) / 1000.0, datetime.UTC).strftime(
                        "%a, %d %b %Y %H:%M:%S GMT")
                headers[names[field]] = str(value)

    write_http_metadata = writeHttpMetadata

    def to_py(self) -> R2Object:
        """Itself: Pyodide's ``to_py()`` leaves an instance of a JavaScript class
        (an R2Object is one) as the proxy it is, with its fields. django-cf's R2
        storage reads ``head(key).to_py().size``; without it ``exists()`` was
        always False, so every save overwrote the file of that name."""
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key!r} {self.size} bytes>"


class R2ObjectBody(R2Object):
    """An object with its body (``get``): read it once, as text, JSON, bytes or a stream."""

    def __init__(self, raw: dict[str, Any], body: Any) -> None:
        super().__init__(raw)
        self._body = body
        self._body_used = False
        self._stream: Any = None

    def _take(self) -> Any:
        if self._body_used:
            raise JsException("TypeError", "the object's body was already used")
        self._body_used = True
        return self._body

    @property
    def body(self) -> Any:
        """The body as a stream: the same one each time, as workerd's ``body``
        is (``hasattr(obj, "body")`` then ``Response(obj.body)``, as the R2
        docs serve objects); reading from it uses the body."""
        if self._stream is None:
            if self._body_used:
                raise JsException("TypeError", "the object's body was already used")
            self._stream = stream_of(self._body, owner=self)
        return self._stream

    @property
    def bodyUsed(self) -> bool:  # noqa: N802
        return self._body_used

    body_used = bodyUsed

    async def bytes(self) -> bytes:
        return await read(self._take())

    async def arrayBuffer(self) -> ArrayBuffer:  # noqa: N802
        """The body as Cloudflare's binding gives it, a JavaScript ArrayBuffer
        (read with ``.to_bytes()``); bytes to Python code."""
        return ArrayBuffer(await self.bytes())

    array_buffer = arrayBuffer

    async def text(self) -> str:
        return (await self.bytes()).decode("utf-8", "replace")

    async def json(self) -> Any:
        return js_json(await self.bytes())

    async def blob(self) -> Blob:
        """The body as a Blob of the object's content type."""
        kind_ = (self.httpMetadata or {}).get("contentType") or ""
        return Blob([await self.bytes()], type=kind_)


class R2MultipartUpload(_Fields):
    """``createMultipartUpload`` / ``resumeMultipartUpload``."""

    def __init__(self, bucket: R2Bucket, key: str, upload_id: str) -> None:
        self._bucket = bucket
        self.key = key
        self.uploadId = upload_id  # noqa: N815

    @property
    def upload_id(self) -> str:
        return self.uploadId

    async def uploadPart(self, partNumber: int, value: Any, options_: Any = None,  # noqa: N802,N803
                         **keywords: Any) -> AttrDict:
        body = stream_value(value, "uploadPart()")
        value_, _ = await call(self._bucket._name, "uploadPart",
                               [self.key, self.uploadId, partNumber], body)
        return wrap(value_)

    upload_part = uploadPart

    async def abort(self) -> None:
        await call(self._bucket._name, "abortMultipartUpload", [self.key, self.uploadId])

    async def complete(self, uploadedParts: Any) -> R2Object:  # noqa: N803
        parts = [{camel(k): v for k, v in dict(p).items()} for p in uploadedParts]
        value, _ = await call(self._bucket._name, "completeMultipartUpload",
                              [self.key, self.uploadId, parts])
        return R2Object(value)


@kind("r2_bucket")
class R2Bucket:
    """An R2 bucket binding (``r2_buckets`` / ``r2_bucket``)."""

    def __init__(self, name: str) -> None:
        self._name = name

    async def head(self, key: str) -> R2Object | None:
        value, _ = await call(self._name, "head", [js_key(key)])
        return None if value is None else R2Object(value)

    async def get(self, key: str, options_: Any = None, **keywords: Any
                  ) -> R2ObjectBody | R2Object | None:
        opts = options(options_, keywords, "R2.get()", nested=("onlyIf", "range"))
        sent: dict[str, Any] = {}
        if opts.get("onlyIf") is not None:
            sent["onlyIf"] = _only_if(opts["onlyIf"])
        if opts.get("range") is not None:
            sent["range"] = _range(opts["range"])
        value, body = await call(self._name, "get", [js_key(key), sent])
        if value is None:
            return None
        if not value.get("body"):
            return R2Object(value)  # a precondition failed: metadata only, as on Cloudflare
        return R2ObjectBody(value, body)

    async def put(self, key: str, value: Any, options_: Any = None, **keywords: Any
                  ) -> R2Object | None:
        opts = options(options_, keywords, "R2.put()", nested=("onlyIf",))
        sent: dict[str, Any] = {}
        if opts.get("httpMetadata") is not None:
            sent["httpMetadata"] = _http_metadata(opts["httpMetadata"])
        if opts.get("customMetadata") is not None:
            sent["customMetadata"] = dict(opts["customMetadata"])
        if opts.get("onlyIf") is not None:
            sent["onlyIf"] = _only_if(opts["onlyIf"])
        if opts.get("storageClass") is not None:
            sent["storageClass"] = opts["storageClass"]
        sent.update(_hash_options(opts))
        body = None if value is None else stream_value(value, "R2 put()")
        result, _ = await call(self._name, "put", [js_key(key), sent], body)
        return None if result is None else R2Object(result)

    async def delete(self, keys: Any) -> None:
        await call(self._name, "delete", [js_keys(keys)])

    async def list(self, options_: Any = None, **keywords: Any) -> AttrDict:
        opts = options(options_, keywords, "R2.list()")
        sent = {k: opts[k] for k in ("limit", "prefix", "cursor", "delimiter", "startAfter",
                                     "include") if opts.get(k) is not None}
        if "limit" in sent:
            sent["limit"] = webidl_int(sent["limit"])
        if "include" in sent:
            sent["include"] = [camel(i) for i in sent["include"]]
            for field in sent["include"]:
                if field not in ("httpMetadata", "customMetadata"):
                    raise JsException("RangeError", f"Unsupported include value {field}")
        value, _ = await call(self._name, "list", [sent])
        out = AttrDict(objects=AttrList(R2Object(o) for o in value["objects"]),
                       truncated=value["truncated"],
                       delimitedPrefixes=AttrList(value["delimitedPrefixes"]))
        out["delimited_prefixes"] = out["delimitedPrefixes"]
        if "cursor" in value:
            out["cursor"] = value["cursor"]
        return out

    async def createMultipartUpload(self, key: str, options_: Any = None,  # noqa: N802
                                    **keywords: Any) -> R2MultipartUpload:
        opts = options(options_, keywords, "R2.createMultipartUpload()")
        sent: dict[str, Any] = {}
        if opts.get("httpMetadata") is not None:
            sent["httpMetadata"] = _http_metadata(opts["httpMetadata"])
        if opts.get("customMetadata") is not None:
            sent["customMetadata"] = dict(opts["customMetadata"])
        if opts.get("storageClass") is not None:
            sent["storageClass"] = opts["storageClass"]
        value, _ = await call(self._name, "createMultipartUpload", [js_key(key), sent])
        return R2MultipartUpload(self, value["key"], value["uploadId"])

    create_multipart_upload = createMultipartUpload

    def resumeMultipartUpload(self, key: str, uploadId: str) -> R2MultipartUpload:  # noqa: N802,N803
        return R2MultipartUpload(self, key, uploadId)

    resume_multipart_upload = resumeMultipartUpload

    def __repr__(self) -> str:
        return f"<R2Bucket {self._name}>"
