"""One ``corral serve`` per state directory.

Two supervisors on one state directory would share its database, its
storage and its package store with nothing to order their writes, and the
second would take the admin socket over (it replaces what it finds at that
path), leaving the first serving traffic that no one can manage. So
``serve`` holds an exclusive ``flock`` on the state directory itself for as
long as it runs (on a lock file, an operator deleting a "stale"
``serve.lock`` let a second server in). The kernel drops the lock when the
process ends, however it ends, so there is never a stale lock to clean up;
``STATE/serve.lock`` holds the pid only to name the holder in the error.

The directory holds tenants' secrets and data, so it is made private
(0700; systemd's ``StateDirectoryMode=0700`` does the same), and one others
may read is warned about at start.
"""

from __future__ import annotations

import fcntl
import os

from supervisor.errors import StartupError
from supervisor.log import warn

LOCK_NAME = "serve.lock"


def hold(state_dir: str) -> int:
    """Take the state directory's lock; returns its descriptor, to keep open
    for the life of the server. :class:`StartupError` if another holds it."""
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StartupError(_unusable(state_dir, exc)) from None
    pid_file = os.path.join(state_dir, LOCK_NAME)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        try:
            with open(pid_file, "rb") as f:
                holder = f.read(32).decode("ascii", "replace").strip()
        except OSError:
            holder = ""
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise StartupError(f"the state directory {state_dir} is in use by another corral serve{by}; "
                           "stop that one first, or give this one another --state-dir") from None
    try:
        with open(os.open(pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as f:
            f.write(b"%d\n" % os.getpid())
    except OSError as exc:
        os.close(fd)
        raise StartupError(_unusable(state_dir, exc)) from None
    mode = os.fstat(fd).st_mode & 0o777
    if mode & 0o077:
        warn("serve.state_dir_not_private", state_dir=state_dir, mode=oct(mode),
             why="it holds tenants' secrets and data: chmod 700 it")
    return fd


def _unusable(state_dir: str, exc: OSError) -> str:
    """Why ``state_dir`` cannot be used, in words: a path that is a file, a
    folder that cannot be made or written (was a bare traceback)."""
    if isinstance(exc, FileExistsError) or (isinstance(exc, NotADirectoryError) and os.path.exists(state_dir)):
        return f"the state directory {state_dir} is not a folder: give --state-dir a folder (or a path to make one)"
    return (f"cannot use the state directory {state_dir}: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename else ""))
