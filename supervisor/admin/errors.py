"""The one place that decides what a failure looks like on the admin API.

Domain errors (:mod:`supervisor.errors`) carry no HTTP; here each kind gets
its status and a numeric code for Cloudflare's error envelope: Cloudflare's
own number where the error has one (script not found, validation failed,
too large), otherwise 10000 + the HTTP status, so a code is never ambiguous
and always hints at its status.
"""

from __future__ import annotations

from supervisor.admin.multipart import MultipartError
from supervisor.errors import (
    Conflict,
    CorralError,
    Forbidden,
    Invalid,
    NotFound,
    NotSupported,
    TooLarge,
    Unauthorized,
    Unavailable,
    storage_full,
)


class ErrorCode:
    SCRIPT_NOT_FOUND = 10007
    VALIDATION_FAILED = 10021
    TOO_LARGE = 10027
    #: A service binding that names no script (Cloudflare's workers.api.error.service_binding_error).
    SERVICE_BINDING_ERROR = 10143
    #: A queue that has a consumer already (Cloudflare's workers.api.error.consumer_exists).
    QUEUE_CONSUMER_EXISTS = 11004
    BAD_REQUEST = 10400
    UNAUTHORIZED = 10401
    FORBIDDEN = 10403
    NOT_FOUND = 10404
    METHOD_NOT_ALLOWED = 10405
    CONFLICT = 10409
    INTERNAL = 10500
    NOT_IMPLEMENTED = 10501
    UNAVAILABLE = 10503
    STORAGE_FULL = 10507


class MethodNotAllowed(CorralError):
    """The path exists, the method does not; ``allowed`` lists what does."""

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed


class LoadFailed(Invalid):
    """The script was well formed but did not load in a sandbox."""

    code = ErrorCode.VALIDATION_FAILED


_BY_KIND: list[tuple[type[Exception], int, int]] = [
    (MethodNotAllowed, 405, ErrorCode.METHOD_NOT_ALLOWED),
    (Invalid, 400, ErrorCode.BAD_REQUEST),
    (Unauthorized, 401, ErrorCode.UNAUTHORIZED),
    (Forbidden, 403, ErrorCode.FORBIDDEN),
    (NotFound, 404, ErrorCode.NOT_FOUND),
    (Conflict, 409, ErrorCode.CONFLICT),
    (TooLarge, 413, ErrorCode.TOO_LARGE),
    (Unavailable, 503, ErrorCode.UNAVAILABLE),
    (NotSupported, 501, ErrorCode.NOT_IMPLEMENTED),
]


def status_and_code(exc: BaseException) -> tuple[int, int, str]:
    """``(HTTP status, error code, message)`` for any exception the API meets.

    Unexpected ones are a 500 whose message says so; the caller logs the
    traceback.
    """
    if isinstance(exc, MultipartError):
        code = ErrorCode.TOO_LARGE if exc.status == 413 else ErrorCode.BAD_REQUEST
        return exc.status, code, str(exc)
    for kind, status, code in _BY_KIND:
        if isinstance(exc, kind):
            assert isinstance(exc, CorralError)
            return status, exc.code or code, exc.message
    if storage_full(exc):
        # Not an internal error: the operator's disk, said as such (507).
        return 507, ErrorCode.STORAGE_FULL, (f"the state directory is full ({exc}): the call did not "
                                             "complete; free space and try again")
    return 500, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
