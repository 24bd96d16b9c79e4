"""The standard-library modules tenant code may import.

The zygote imports all of them before it forks, so a tenant's ``import json``
is a dictionary lookup that needs no file system (there is none in the jail).
Anything else raises an ImportError that names the refused module.

This list is a usability boundary, not a security one: the security boundary
is the seccomp filter and the namespaces. A tenant that digs ``socket`` out
of some object graph still cannot create a socket.
"""

from __future__ import annotations

#: Top-level names tenants may import (submodules listed where they must be
#: pre-imported explicitly).
TENANT_MODULES: tuple[str, ...] = (
    "abc", "array", "ast", "asyncio", "base64", "binascii", "bisect", "calendar", "cmath",
    "collections", "collections.abc", "colorsys", "contextlib", "contextvars", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email", "email.utils", "email.message",
    "email.parser", "email.policy", "enum", "errno", "fnmatch", "fractions", "functools",
    "gzip", "hashlib", "heapq", "hmac", "html", "html.parser", "http", "http.cookies",
    "io", "ipaddress", "itertools", "json", "keyword", "logging", "math", "numbers",
    "operator", "os", "os.path", "posixpath", "pprint", "queue", "random", "re", "secrets", "shlex", "statistics",
    "stat", "string", "struct", "sys", "textwrap", "time", "timeit", "traceback", "types", "typing",
    "unicodedata", "urllib", "urllib.parse", "uuid", "warnings", "weakref", "zlib",
    "_strptime", "encodings.idna", "encodings.punycode",
    # The tenant API and its JS-flavoured companions.
    "workers", "js", "pyodide",
)

#: Modules the runtime needs pre-imported but tenants may not name.
RUNTIME_ONLY: tuple[str, ...] = ("msgspec", "msgspec.msgpack", "msgspec.json", "socket", "selectors")


def top_level(name: str) -> str:
    return name.partition(".")[0]


ALLOWED_TOP_LEVEL = frozenset(top_level(name) for name in TENANT_MODULES)
