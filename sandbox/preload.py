"""The modules the zygote imports before it forks, so children share them.

Not a list of what tenants may import (they may import any standard-library
module, lazily, from the read-only file view): only what most scripts use,
so that their ``import json`` is a dictionary lookup instead of a few
hundred microseconds of file reads and unmarshalling on every cold start.
Each module costs zygote memory that every child shares copy-on-write; the
choice was measured (``scripts/preload_cost``: import time and RSS of each
candidate on top of this list). Added with the file view, for ~0.6 MB of
zygote RSS: ``importlib.metadata`` (3.0 ms, 308 KB; packages ask their own
version at import), ``zoneinfo`` (1.6 ms, 128 KB), ``http.client`` (1.2 ms,
64 KB; requests/urllib3/httpx), ``mimetypes`` (0.4 ms, 24 KB; frameworks
serving files). Left lazy: ``sqlite3`` (856 KB), ``xml.etree`` (384 KB),
``urllib.request`` (256 KB), ``pickle``, ``argparse``, ``unittest``, ``tarfile``:
rare in workers, each paid only by the scripts that import it.
"""

from __future__ import annotations

#: Common in tenant code: cheap enough to pay once in the zygote.
COMMON: tuple[str, ...] = (
    "abc", "array", "ast", "asyncio", "base64", "binascii", "bisect", "calendar", "cmath",
    "collections", "collections.abc", "colorsys", "contextlib", "contextvars", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email", "email.utils", "email.message",
    "email.parser", "email.policy", "enum", "errno", "fnmatch", "fractions", "functools",
    "gzip", "hashlib", "heapq", "hmac", "html", "html.parser", "http", "http.cookies",
    "io", "ipaddress", "itertools", "json", "keyword", "logging", "math", "numbers",
    "operator", "os", "os.path", "posixpath", "pprint", "queue", "random", "re", "secrets", "shlex",
    "statistics", "stat", "string", "struct", "sys", "textwrap", "time", "timeit", "traceback",
    "types", "typing", "unicodedata", "urllib", "urllib.parse", "uuid", "warnings", "weakref",
    "zlib", "_strptime", "encodings.idna", "encodings.punycode",
    "importlib.metadata", "zoneinfo", "http.client", "mimetypes",
)

#: The runtime's own (the child's loop, the protocol; brotli for
#: ``Content-Encoding: br``, sandbox.content_coding: 0.4 ms, 256 KB, and it
#: must be imported here, as its files are not in the jail's file view).
RUNTIME: tuple[str, ...] = ("greenlet", "sandbox.run_sync", "msgspec", "msgspec.msgpack", "msgspec.json",
                           "socket", "selectors", "brotli")
