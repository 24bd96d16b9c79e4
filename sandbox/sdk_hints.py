"""The names Cloudflare's ``workers`` module exports for type hints.

Code written for the SDK imports them for its annotations (``from workers
import Body, FetchKwargs``); a missing name would fail the script at import.
Here they describe Corral's own values: bodies are Python objects, not
JavaScript ones.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict

if TYPE_CHECKING:
    from .sdk_types import Blob, File, FormData
    from .web_streams import ReadableStream

#: What a body may be besides text (the SDK's JavaScript-side bodies).
JSBody: TypeAlias = "bytes | bytearray | memoryview | Blob | ReadableStream"
#: A request or response body.
Body: TypeAlias = "str | FormData | JSBody"
#: A part of a Blob.
BlobValue: TypeAlias = "str | bytes | bytearray | memoryview | Blob | File"
#: A FormData entry's value.
FormDataValue: TypeAlias = "str | Blob"

#: ``Blob(..., endings=)``: keep line endings, or make them the platform's.
BlobEnding = enum.StrEnum("BlobEnding", {"TRANSPARENT": "transparent", "NATIVE": "native"})

#: ``fetch(..., cf={...})``: Cloudflare's cache and image options (Corral takes
#: them and has no edge cache to apply them to).
RequestInitCfProperties = TypedDict("RequestInitCfProperties", {  # noqa: UP013 - keys, not fields
    "apps": "bool | None", "cacheEverything": "bool | None", "cacheKey": "str | None",
    "cacheTags": "list[str] | None", "cacheTtl": int, "cacheTtlByStatus": "dict[str, int]",
    "image": Any, "mirage": "bool | None", "polish": "str | None", "resolveOverride": "str | None",
    "scrapeShield": "bool | None", "webp": "bool | None",
}, total=False)

#: The keyword arguments of ``fetch`` and ``Request``.
FetchKwargs = TypedDict("FetchKwargs", {  # noqa: UP013 - keys, not fields
    "headers": Any, "body": Any, "method": "str | None", "redirect": "str | None",
    "cf": "RequestInitCfProperties | None",
}, total=False)
