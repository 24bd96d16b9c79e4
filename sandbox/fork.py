"""Forking a child from a single-threaded zygote without Python's at-fork work.

``os.fork()`` runs the interpreter's after-fork code in the child: the
``threading`` module rebuilds its locks and thread table, ``logging`` makes
a new lock for every handler, ``random`` reseeds. It is there for processes
with other threads, whose locks may be held at the fork. Every object it
touches is a page of the zygote copied into the child: ~130 pages (520 KB)
per child, measured, most of them put back exactly as they were.

The base zygote has one thread and holds no lock while it forks, so none
of that applies; only the random state must differ per child (else every
tenant's ``random`` would produce the same sequence). :func:`fork` calls
libc's ``fork`` with the GIL held (:mod:`sandbox.jailcalls`: no other
thread exists to run meanwhile), then reseeds ``random`` in the child from the kernel,
and otherwise is ``os.fork()`` itself. Where another thread may exist (a
package zygote: native extensions start threads of their own), callers use
``os.fork()``.
"""

from __future__ import annotations

import _random
import random

from . import jailcalls


def fork() -> int:
    """``os.fork()`` for a process that has only this thread; see the module docstring."""
    pid = jailcalls.fork()
    if pid == 0:
        # What random's own at-fork hook does, without its Python frames.
        _random.Random.seed(random._inst, None)
        random._inst.gauss_next = None
    return pid
