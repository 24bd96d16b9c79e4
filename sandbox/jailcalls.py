"""The jail's system calls, as builtins of a small CPython extension.

fork, prctl, the three Landlock calls and the seccomp filter's installation
(``sandbox/native/jailcalls.c``, built by ``scripts/setup``). They used to go
through ctypes; a forked child's first ctypes call writes to the reference
counts of ctypes' own objects across ~70 of the zygote's pages, each then
copied into the child, and each further call site copies ~8 more. From fork
to a locked jail with its bundle confined, that was ~190 pages (0.75 MB) of
every child, measured with ``ru_minflt`` in forked children: ~90 with these
builtins. The extension holds no policy: which rules, which rights and in
which order stay in :mod:`sandbox.landlock`, :mod:`sandbox.seccomp_policy`
and :mod:`sandbox.jail`.

Required: without the built extension the zygote does not start, and this
import says how to build it.
"""

from __future__ import annotations

try:
    from ._jailcalls import (  # type: ignore[import-not-found]
        fork,
        landlock_abi,
        landlock_add_path,
        landlock_create,
        landlock_restrict,
        no_new_privs,
        not_dumpable,
        seccomp_load,
    )
except ImportError as exc:  # pragma: no cover - a checkout scripts/setup has not prepared
    raise ImportError(
        "sandbox/_jailcalls is not built: run scripts/setup (it compiles "
        "sandbox/native/jailcalls.c and needs a C compiler and Python's headers: "
        f"apt-get install gcc python3-dev) [{exc}]"
    ) from exc

__all__ = ["fork", "landlock_abi", "landlock_add_path", "landlock_create", "landlock_restrict",
           "no_new_privs", "not_dumpable", "seccomp_load"]
