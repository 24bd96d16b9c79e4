"""Text from tenants, made safe to print on an operator's terminal.

Logs, exception messages, URLs and tags are written by tenant code or
tenant requests. Printed raw, an ESC starts a terminal escape sequence (OSC 0
sets the window title, OSC 52 writes the clipboard, CSI ``2K`` plus CR erases
a line so the next text passes for another script's event). The human
printers of the CLI (``corral tail --format pretty``, tables, ``corral
trigger``) show every such character as visible escape text instead, as
``repr`` does: ``\\x1b``, ``\\r``, ``\\x9b``, ``\\u202e``. A backslash itself
is left alone (so a ``\\x1b`` on screen is ambiguous with a tenant that typed
those four characters; it is never an escape). JSON output is never passed
through here: ``--format json`` and ``--json`` stay exact.
"""

from __future__ import annotations

import unicodedata

#: Unicode's bidirectional overrides and isolates ("Trojan Source"): they
#: reorder what is shown without being control characters (category Cf).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unsafe(char: str, keep: str) -> bool:
    if char in keep:
        return False
    # Cc: C0 (including ESC, CR, BS), DEL and C1 (0x80-0x9f, 0x9b is a
    # one-byte CSI); Zl/Zp: line and paragraph separators.
    return char in _BIDI or unicodedata.category(char) in ("Cc", "Zl", "Zp")


def _escape(char: str) -> str:
    code = ord(char)
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if char == "\t":
        return "\\t"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, keep: str = "\t") -> str:
    """``text`` (as ``str()``) with every control character except those in
    ``keep`` shown as its escape text. A newline is escaped too unless kept:
    single-line fields (a URL, a name) stay on their line."""
    text = str(text)
    if all(" " <= c < "\x7f" for c in text):  # plain ASCII, the usual case
        return text
    return "".join(_escape(c) if _unsafe(c, keep) else c for c in text)


def printable_lines(text: object, continuation: str) -> str:
    """Multi-line tenant text (a log message, an exception): each line made
    :func:`printable`, and every line after the first prefixed with
    ``continuation`` (an indent and a marker, so a line of tenant text can
    never pass for a line the CLI wrote itself)."""
    lines = printable(text, keep="\t\n").split("\n")
    return "\n".join([lines[0], *(continuation + line for line in lines[1:])])
