"""Domain errors: what went wrong, in words for the operator, with no HTTP in them.

The store, the model and the admin handlers raise these; the admin API maps
them to an HTTP status and a Cloudflare-style error code in one place
(:mod:`supervisor.admin.errors`). ``code`` is set where Cloudflare has a
specific number for the case (script not found, validation failed...).

This module imports nothing of Corral's (only the standard library): every other
part may use it.
"""

from __future__ import annotations

import errno
import sqlite3


class CorralError(Exception):
    """An expected failure; ``message`` is fit to show to whoever caused it."""

    code: int | None = None

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class Invalid(CorralError, ValueError):
    """Input that does not fit its shape; the message names the field and the fix."""


class NotFound(CorralError):
    """What was asked for does not exist."""


class Conflict(CorralError):
    """The change contradicts what exists (a name taken, a namespace in use)."""


class TooLarge(CorralError):
    """Over a size limit."""


class Unavailable(CorralError):
    """Cannot be done right now (no sandbox free); retrying may work."""


class NotSupported(CorralError):
    """Corral does not do this (yet)."""


class Unauthorized(CorralError):
    """No credentials, or credentials that match nothing."""


class Forbidden(CorralError):
    """Valid credentials that do not allow this (scope or namespace)."""


class StartupError(CorralError):
    """``corral serve`` cannot start (the state directory or an address is in use)."""


def storage_full(exc: BaseException) -> bool:
    """A full disk or quota under the state dir, as the OS or SQLite
    (SQLITE_FULL) reports it: the operator's to fix, and to be said as such."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
