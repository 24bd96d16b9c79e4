"""``js.crypto``: the part of the Web Crypto API that Workers code reaches for.

Cloudflare's examples compare secrets with ``crypto.subtle.timingSafeEqual``
(a Workers extension), make ids with ``crypto.randomUUID()`` and sign URLs
with an HMAC key from ``crypto.subtle.importKey("raw", ...)``. Here they are
over Python's ``hmac``, ``hashlib`` and ``secrets``: digests (SHA-1/256/384/512
and Workers' MD5) and raw HMAC keys. Another algorithm or key format raises
``NotSupportedError`` naming it, as workerd does for what it lacks.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
import uuid
from typing import Any

from .pyodide_shim import ArrayBuffer, JsException

#: Web Crypto's hash names, as hashlib calls them.
_HASHES = {"SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512", "MD5": "md5"}
#: The most bytes ``getRandomValues`` fills at once (Web Crypto's QuotaExceededError).
MAX_RANDOM_BYTES = 65536


def _name(algorithm: Any) -> str:
    """An AlgorithmIdentifier (a name, or an object with ``name``), upper-cased."""
    name = algorithm.get("name") if isinstance(algorithm, dict) else getattr(algorithm, "name", algorithm)
    if not isinstance(name, str):
        raise JsException("TypeError", "Algorithm: name is required")
    return name.upper()


def _hash(algorithm: Any) -> str:
    name = _name(algorithm)
    if name not in _HASHES:
        raise JsException("NotSupportedError", f"Unrecognized or unimplemented digest algorithm requested: {name}")
    return _HASHES[name]


def _bytes(data: Any, what: str) -> bytes:
    """A BufferSource (bytes, a Uint8Array or ArrayBuffer, a memoryview) as bytes."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise JsException("TypeError", f"{what} must be an ArrayBuffer or ArrayBufferView, not {type(data).__name__}")


class CryptoKey:
    """An imported secret key: ``type``, ``extractable``, ``algorithm``, ``usages``."""

    type = "secret"

    def __init__(self, secret: bytes, hash_name: str, extractable: bool, usages: list[str]) -> None:
        self._secret = secret
        self._hash = hash_name
        self.extractable = bool(extractable)
        self.usages = list(usages)
        self.algorithm = {"name": "HMAC", "length": len(secret) * 8,
                          "hash": {"name": next(k for k, v in _HASHES.items() if v == hash_name)}}

    def _check(self, usage: str) -> None:
        if usage not in self.usages:
            raise JsException("InvalidAccessError", f"Requested key usage \"{usage}\" does not match any usage "
                                                    "listed in this CryptoKey.")

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._secret, data, self._hash).digest()


class SubtleCrypto:
    """``crypto.subtle``: promises (coroutines) as in JavaScript, bar the
    synchronous ``timingSafeEqual``."""

    async def digest(self, algorithm: Any, data: Any) -> ArrayBuffer:
        return ArrayBuffer(hashlib.new(_hash(algorithm), _bytes(data, "data")).digest())

    async def importKey(self, format: str, key_data: Any, algorithm: Any,  # noqa: A002, N802 - JS names
                        extractable: bool = False, usages: Any = ()) -> CryptoKey:
        if format != "raw" or _name(algorithm) != "HMAC":
            raise JsException("NotSupportedError", f"importKey({format!r}, {_name(algorithm)}) is not supported "
                                                   "by Corral: only raw HMAC keys are")
        hash_of = algorithm.get("hash") if isinstance(algorithm, dict) else None
        if hash_of is None:
            raise JsException("TypeError", "HmacImportParams: hash is required")
        return CryptoKey(_bytes(key_data, "keyData"), _hash(hash_of), extractable, list(usages))

    async def sign(self, algorithm: Any, key: CryptoKey, data: Any) -> ArrayBuffer:
        self._hmac_key(algorithm, key)._check("sign")
        return ArrayBuffer(key._mac(_bytes(data, "data")))

    async def verify(self, algorithm: Any, key: CryptoKey, signature: Any, data: Any) -> bool:
        self._hmac_key(algorithm, key)._check("verify")
        return hmac.compare_digest(key._mac(_bytes(data, "data")), _bytes(signature, "signature"))

    def timingSafeEqual(self, a: Any, b: Any) -> bool:  # noqa: N802 - Workers API name
        """Workers' constant-time comparison; buffers of different lengths are a TypeError."""
        left, right = _bytes(a, "a"), _bytes(b, "b")
        if len(left) != len(right):
            raise JsException("TypeError", "Input buffers must have the same byte length")
        return hmac.compare_digest(left, right)

    @staticmethod
    def _hmac_key(algorithm: Any, key: Any) -> CryptoKey:
        if _name(algorithm) != "HMAC" or not isinstance(key, CryptoKey):
            raise JsException("InvalidAccessError", "Corral signs and verifies with HMAC keys from importKey() only")
        return key


class Crypto:
    """``crypto``: ``subtle``, ``randomUUID()``, ``getRandomValues(array)``."""

    def __init__(self) -> None:
        self.subtle = SubtleCrypto()

    def randomUUID(self) -> str:  # noqa: N802 - JS name
        return str(uuid.uuid4())

    def getRandomValues(self, array: Any) -> Any:  # noqa: N802 - JS name
        """Fills a bytearray in place; a Uint8Array (immutable here) comes back
        as a new one of the same length, which is what callers read."""
        size = len(array)
        if size > MAX_RANDOM_BYTES:
            raise JsException("QuotaExceededError", f"getRandomValues() can fill at most {MAX_RANDOM_BYTES} "
                                                    f"bytes, not {size}")
        data = secrets.token_bytes(size)
        if isinstance(array, bytearray):
            array[:] = data
            return array
        return type(array)(data) if isinstance(array, bytes) else bytearray(data)

    random_uuid, get_random_values = randomUUID, getRandomValues


def js_date_json(value: datetime.datetime) -> str:
    """A datetime as JavaScript's ``Date.prototype.toJSON`` writes it (UTC, ms)."""
    value = value.astimezone(datetime.UTC)  # a naive one is local time, as Python has it
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
