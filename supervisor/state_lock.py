"""One ``corral serve`` per state directory.

Two supervisors on one state directory would share its database, its
storage and its package store with nothing to order their writes, and the
second would take the admin socket over (it replaces what it finds at that
path), leaving the first serving traffic that no one can manage. So
``serve`` holds an exclusive ``flock`` on ``STATE/serve.lock`` for as long
as it runs. The kernel drops the lock when the process ends, however it
ends, so there is never a stale lock to clean up; the file holds the pid
only to name the holder in the error.
"""

from __future__ import annotations

import fcntl
import os

from supervisor.errors import StartupError

LOCK_NAME = "serve.lock"


def hold(state_dir: str) -> int:
    """Take the state directory's lock; returns its descriptor, to keep open
    for the life of the server. :class:`StartupError` if another holds it."""
    try:
        os.makedirs(state_dir, exist_ok=True)
        fd = os.open(os.path.join(state_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StartupError(_unusable(state_dir, exc)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise StartupError(f"the state directory {state_dir} is in use by another corral serve{by}; "
                           "stop that one first, or give this one another --state-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    return fd


def _unusable(state_dir: str, exc: OSError) -> str:
    """Why ``state_dir`` cannot be used, in words: a path that is a file, a
    folder that cannot be made or written (was a bare traceback)."""
    if isinstance(exc, FileExistsError) or (isinstance(exc, NotADirectoryError) and os.path.exists(state_dir)):
        return f"the state directory {state_dir} is not a folder: give --state-dir a folder (or a path to make one)"
    return (f"cannot use the state directory {state_dir}: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename else ""))
