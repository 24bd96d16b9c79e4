"""``js.URL`` and ``js.URLSearchParams``: WHATWG URLs as Cloudflare's Python
Workers reach them through Pyodide's ``js`` module.

Tenants use them to rewrite where a request goes (``url = URL.new(request.url);
url.hostname = "origin.example"; await fetch(url.toString(), request)``) and
to read or build query strings (``url.searchParams.get("q")``,
``url.searchParams.set("mac", mac)``). So every component is a property
whose setter changes ``href``, and ``searchParams`` is a live view: changing
one changes ``search`` and ``href``, and setting ``search`` re-reads it.

Why not a library: the only WHATWG URL parsers for Python (``whatwg-url``,
``ada-url``) are a dependency the zygote would import for every tenant for a
few hundred lines of behaviour; ``urllib.parse`` does the splitting and
joining here, and this module adds what the standard says on top of it:
special schemes and their default ports, lower-case and IDNA hosts, dot
segments, ``\\`` as ``/``, the percent-encode sets, and
``application/x-www-form-urlencoded`` for the query's parameters.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

#: Special schemes and their default ports (None: ``file`` has none).
SPECIAL: dict[str, int | None] = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21, "file": None}

_C0 = {chr(c) for c in range(0x20)} | {"\x7f"}
_FRAGMENT_SET = _C0 | set(' "<>`')
_QUERY_SET = _C0 | set(' "#<>')
_SPECIAL_QUERY_SET = _QUERY_SET | {"'"}
_PATH_SET = _QUERY_SET | set("?`{}^")
_USERINFO_SET = _PATH_SET | set("/:;=@[\\]|")
#: Bytes application/x-www-form-urlencoded leaves as they are (space is '+').
_FORM_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789*-._")


def _encode(text: str, escape: set[str]) -> str:
    """Percent-encode the characters in ``escape`` and everything past ASCII
    (UTF-8), leaving existing escapes as they are, as the URL parser does."""
    if all(" " < c < "\x7f" and c not in escape for c in text):
        return text
    return "".join(c if " " < c < "\x7f" and c not in escape else
                   "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")) for c in text)


def _form_encode(text: str) -> str:
    return "".join(chr(b) if b in _FORM_SAFE else "+" if b == 0x20 else f"%{b:02X}"
                   for b in text.encode("utf-8", "surrogatepass"))


def _form_decode(text: str) -> str:
    return urllib.parse.unquote(text.replace("+", " "), errors="replace")


def _invalid(url: str) -> TypeError:
    return TypeError(f"Invalid URL string: {url!r}")


def _host(hostname: str, url: str) -> str:
    """A special URL's host as the standard serialises it: lower case, IDNA
    for non-ASCII labels; an IPv6 address compressed (``[::1]``), and one
    that ends in a number read as IPv4 in the standard's forms (``127.1``,
    ``0x7f.1``, ``2130706433`` are ``127.0.0.1``); refused when it holds a
    forbidden code point or is a malformed address."""
    if hostname.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(hostname[1:-1]).compressed}]"
        except ValueError:
            raise _invalid(url) from None
    host = urllib.parse.unquote(hostname)
    if any(c in host for c in " #%/:<>?@[\\]^|") or any(c in _C0 for c in host):
        raise _invalid(url)
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise _invalid(url) from None
    host = host.lower()
    if _ends_in_a_number(host):
        address = _ipv4(host)
        if address is None:
            raise _invalid(url)
        return str(ipaddress.IPv4Address(address))
    return host


def _ipv4_number(part: str) -> int | None:
    """One part of an IPv4 host (the URL standard's "IPv4 number parser"):
    decimal, ``0x`` hex, or octal after a leading ``0``."""
    if not part:
        return None
    radix = 10
    if part[:2] in ("0x", "0X"):
        part, radix = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        part, radix = part[1:], 8
    if not part:
        return 0
    try:
        return int(part, radix) if part.isalnum() and part.isascii() else None
    except ValueError:
        return None


def _ends_in_a_number(host: str) -> bool:
    parts = host.split(".")
    if parts[-1] == "":
        if len(parts) == 1:
            return False
        parts.pop()
    last = parts[-1]
    return (last != "" and last.isdigit() and last.isascii()) or _ipv4_number(last) is not None


def _ipv4(host: str) -> int | None:
    """The address of an IPv4 host in any of the standard's forms, or None."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4:
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):  # type: ignore[operator]
        return None
    address = last
    for i, n in enumerate(head):
        address += n * 256 ** (3 - i)  # type: ignore[operator]
    return address  # type: ignore[return-value]


def _remove_dot_segments(path: str) -> str:
    """``.`` and ``..`` segments resolved as the URL parser does (``%2e`` is a
    dot; an empty segment, ``//``, stays)."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        lowered = segment.lower()
        if lowered in ("..", ".%2e", "%2e.", "%2e%2e"):
            if out:
                out.pop()
            if last:
                out.append("")
        elif lowered in (".", "%2e"):
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _path(path: str, special: bool) -> str:
    """The path with dot segments removed and the path set percent-encoded."""
    if special:
        path = path.replace("\\", "/")
        if not path.startswith("/"):
            path = "/" + path
    if path.startswith("/") and "." in path:
        path = _remove_dot_segments(path)
    return _encode(path, _PATH_SET)


class URLSearchParams:
    """``URLSearchParams``: an ordered list of name/value pairs. ``get`` is the
    first value (None when there is none, as Pyodide turns JS null);
    ``toString()`` is application/x-www-form-urlencoded. One that belongs to
    a :class:`URL` writes every change back to it."""

    def __init__(self, init: Any = None) -> None:
        self._pairs: list[tuple[str, str]] = []
        self._owner: URL | None = None
        if init is None:
            return
        if isinstance(init, URLSearchParams):
            self._pairs = list(init._pairs)
        elif isinstance(init, str):
            self._pairs = self._parse(init)
        elif hasattr(init, "items"):
            self._pairs = [(str(k), str(v)) for k, v in init.items()]
        else:
            for pair in init:
                pair = list(pair)
                if len(pair) != 2:
                    raise TypeError("Each query pair must be an iterable [name, value] tuple")
                self._pairs.append((str(pair[0]), str(pair[1])))

    @classmethod
    def new(cls, init: Any = None) -> URLSearchParams:
        return cls(init)

    @staticmethod
    def _parse(query: str) -> list[tuple[str, str]]:
        query = query[1:] if query.startswith("?") else query
        pairs = []
        for part in query.split("&"):
            if part:
                name, _, value = part.partition("=")
                pairs.append((_form_decode(name), _form_decode(value)))
        return pairs

    def _changed(self) -> None:
        if self._owner is not None:
            self._owner._query = self.toString() or None

    # -- reading --------------------------------------------------------------------
    def get(self, name: str) -> str | None:
        return next((v for k, v in self._pairs if k == name), None)

    def getAll(self, name: str) -> list[str]:  # noqa: N802 - JS name
        return [v for k, v in self._pairs if k == name]

    get_all = getAll

    def has(self, name: str, value: str | None = None) -> bool:
        return any(k == name and (value is None or v == value) for k, v in self._pairs)

    @property
    def size(self) -> int:
        return len(self._pairs)

    def entries(self) -> Iterator[list[str]]:
        return iter([[k, v] for k, v in self._pairs])

    def keys(self) -> Iterator[str]:
        return iter([k for k, _ in self._pairs])

    def values(self) -> Iterator[str]:
        return iter([v for _, v in self._pairs])

    def forEach(self, callback: Callable[..., Any]) -> None:  # noqa: N802 - JS name
        for k, v in list(self._pairs):
            callback(v, k, self)

    def __iter__(self) -> Iterator[list[str]]:
        return self.entries()

    def __len__(self) -> int:
        return len(self._pairs)

    def __contains__(self, name: object) -> bool:
        return any(k == name for k, _ in self._pairs)

    # Pyodide gives a JavaScript object with get/set/delete methods Python's
    # subscripts on them: Cloudflare's CORS proxy example reads
    # ``url.searchParams["apiurl"]`` (None when absent: get() answers null).
    def __getitem__(self, name: str) -> str | None:
        return self.get(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set(name, value)

    def __delitem__(self, name: str) -> None:
        self.delete(name)

    # -- changing -------------------------------------------------------------------
    def append(self, name: str, value: Any) -> None:
        self._pairs.append((str(name), str(value)))
        self._changed()

    def set(self, name: str, value: Any) -> None:
        name, value = str(name), str(value)
        at = next((i for i, (k, _) in enumerate(self._pairs) if k == name), None)
        if at is None:
            self._pairs.append((name, value))
        else:
            self._pairs[at] = (name, value)
            self._pairs[at + 1:] = [p for p in self._pairs[at + 1:] if p[0] != name]
        self._changed()

    def delete(self, name: str, value: Any = None) -> None:
        self._pairs = [(k, v) for k, v in self._pairs if not (k == name and (value is None or v == str(value)))]
        self._changed()

    def sort(self) -> None:
        self._pairs.sort(key=lambda pair: pair[0].encode("utf-16-be"))  # JS sorts by UTF-16 code units
        self._changed()

    def toString(self) -> str:  # noqa: N802 - JS name
        return "&".join(f"{_form_encode(k)}={_form_encode(v)}" for k, v in self._pairs)

    def __str__(self) -> str:
        return self.toString()

    def __repr__(self) -> str:
        return f"URLSearchParams({self.toString()!r})"


class URL:
    """``URL``: ``URL.new(url, base=None)`` parses (a TypeError for what is
    no URL); every component can be read and set, ``href`` follows."""

    __slots__ = ("_scheme", "_username", "_password", "_hostname", "_port", "_path", "_query",
                 "_fragment", "_has_authority", "_params")

    def __init__(self, url: Any, base: Any = None) -> None:
        self._params: URLSearchParams | None = None
        self._parse(str(url), None if base is None else str(base))

    @classmethod
    def new(cls, url: Any, base: Any = None) -> URL:
        return cls(url, base)

    @classmethod
    def canParse(cls, url: Any, base: Any = None) -> bool:  # noqa: N802 - JS name
        try:
            cls(url, base)
        except TypeError:
            return False
        return True

    @classmethod
    def parse(cls, url: Any, base: Any = None) -> URL | None:
        try:
            return cls(url, base)
        except TypeError:
            return None

    # -- parsing --------------------------------------------------------------------
    def _parse(self, url: str, base: str | None) -> None:
        text = url.strip("".join(_C0) + " ").replace("\t", "").replace("\n", "").replace("\r", "")
        if base is not None:
            base_href = URL(base).href
            if urllib.parse.urlsplit(base_href).scheme in SPECIAL:
                text = text.replace("\\", "/")
            text = urllib.parse.urljoin(base_href, text)
        try:
            # urlsplit refuses a bracketed host that is no address (ValueError).
            scheme = urllib.parse.urlsplit(text).scheme.lower()
            special = scheme in SPECIAL
            if special:
                text = text.replace("\\", "/")
            parts = urllib.parse.urlsplit(text)
        except ValueError:
            raise _invalid(url) from None
        if not scheme or not scheme[0].isalpha():
            raise _invalid(url)
        try:
            port = parts.port
        except ValueError:
            raise _invalid(url) from None
        hostname = parts.netloc.rpartition("@")[2]
        hostname = hostname[: hostname.find("]") + 1] if hostname.startswith("[") else hostname.partition(":")[0]
        if special and scheme != "file" and not hostname:
            raise _invalid(url)
        self._scheme = scheme
        self._has_authority = special or text[len(scheme) + 1:].startswith("//")
        self._username = _encode(parts.username or "", _USERINFO_SET)
        self._password = _encode(parts.password or "", _USERINFO_SET)
        self._hostname = _host(hostname, url) if special else hostname
        self._port = None if port is None or port == SPECIAL.get(scheme) else port
        self._path = _path(parts.path, special) if special or parts.path.startswith("/") \
            else _encode(parts.path, _C0)
        before_fragment, has_fragment, fragment = text.partition("#")
        _, has_query, query = before_fragment.partition("?")
        self._query = _encode(query, _SPECIAL_QUERY_SET if special else _QUERY_SET) if has_query else None
        self._fragment = _encode(fragment, _FRAGMENT_SET) if has_fragment else None
        if self._params is not None:
            self._params._pairs = URLSearchParams._parse(self._query or "")

    # -- components -----------------------------------------------------------------
    @property
    def href(self) -> str:
        out = self._scheme + ":"
        if self._has_authority:
            out += "//"
            if self._username or self._password:
                out += self._username + (":" + self._password if self._password else "") + "@"
            out += self.host
        out += self._path
        if self._query is not None:
            out += "?" + self._query
        if self._fragment is not None:
            out += "#" + self._fragment
        return out

    @href.setter
    def href(self, value: str) -> None:
        self._parse(str(value), None)

    @property
    def origin(self) -> str:
        if self._scheme in SPECIAL and self._scheme != "file":
            return f"{self._scheme}://{self.host}"
        return "null"

    @property
    def protocol(self) -> str:
        return self._scheme + ":"

    @protocol.setter
    def protocol(self, value: str) -> None:
        scheme = str(value).partition(":")[0].lower()
        # A special URL stays special and the other way round (the standard
        # ignores such a change), as does a scheme that is no scheme.
        if scheme and scheme[0].isalpha() and (scheme in SPECIAL) == (self._scheme in SPECIAL):
            self._scheme = scheme
            if self._port == SPECIAL.get(scheme):
                self._port = None

    @property
    def username(self) -> str:
        return self._username

    @username.setter
    def username(self, value: str) -> None:
        if self._hostname:
            self._username = _encode(str(value), _USERINFO_SET)

    @property
    def password(self) -> str:
        return self._password

    @password.setter
    def password(self, value: str) -> None:
        if self._hostname:
            self._password = _encode(str(value), _USERINFO_SET)

    @property
    def host(self) -> str:
        return self._hostname + (f":{self._port}" if self._port is not None else "")

    @host.setter
    def host(self, value: str) -> None:
        value = str(value)
        if value.startswith("["):
            name, _, rest = value.partition("]")
            name += "]"
            port = rest[1:] if rest.startswith(":") else ""
        else:
            name, _, port = value.partition(":")
        if name:
            self.hostname = name
            if port:
                self.port = port

    @property
    def hostname(self) -> str:
        return self._hostname

    @hostname.setter
    def hostname(self, value: str) -> None:
        value = str(value)
        if not value:
            return
        try:
            self._hostname = _host(value, value) if self._scheme in SPECIAL else value
        except TypeError:
            return  # the standard leaves the URL as it was

    @property
    def port(self) -> str:
        return "" if self._port is None else str(self._port)

    @port.setter
    def port(self, value: Any) -> None:
        text = str(value)
        digits = text[: len(text) - len(text.lstrip("0123456789"))]
        if text == "":
            self._port = None
        elif digits and int(digits) <= 65535:
            port = int(digits)
            self._port = None if port == SPECIAL.get(self._scheme) else port

    @property
    def pathname(self) -> str:
        return self._path

    @pathname.setter
    def pathname(self, value: str) -> None:
        self._path = _path(str(value), self._scheme in SPECIAL)

    @property
    def search(self) -> str:
        return f"?{self._query}" if self._query else ""

    @search.setter
    def search(self, value: str) -> None:
        value = str(value)
        value = value[1:] if value.startswith("?") else value
        self._query = _encode(value, _SPECIAL_QUERY_SET if self._scheme in SPECIAL else _QUERY_SET) or None
        if self._params is not None:
            self._params._pairs = URLSearchParams._parse(value)

    @property
    def searchParams(self) -> URLSearchParams:  # noqa: N802 - JS name
        if self._params is None:
            self._params = URLSearchParams(self._query or "")
            self._params._owner = self
        return self._params

    @property
    def hash(self) -> str:
        return f"#{self._fragment}" if self._fragment else ""

    @hash.setter
    def hash(self, value: str) -> None:
        value = str(value)
        value = value[1:] if value.startswith("#") else value
        self._fragment = _encode(value, _FRAGMENT_SET) or None

    # -- as text ---------------------------------------------------------------------
    def toString(self) -> str:  # noqa: N802 - JS name
        return self.href

    def toJSON(self) -> str:  # noqa: N802 - JS name
        return self.href

    def __str__(self) -> str:
        return self.href

    def __repr__(self) -> str:
        return f"URL({self.href!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, URL) and other.href == self.href

    def __hash__(self) -> int:
        return hash(self.href)
