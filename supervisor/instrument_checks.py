"""trio's instrument checks without a Python call each.

Before every task step, every reschedule and every wait for I/O, trio asks
``"before_task_step" in runner.instruments``. Its ``Instruments`` is a
``UserDict``, so each of those checks is a call of ``UserDict.__contains__``
in Python, whether or not any instrument wants that hook: 7.5 per request
through the dispatcher, measured (cProfile), of the supervisor's ~250
Python calls per request. :func:`install` gives the running trio loop the
same collection as a ``dict`` subclass, whose ``in`` is C; trio's own
``add_instrument``, ``remove_instrument`` and ``call`` work on it
unchanged, since they only use ``self.data``.

trio has no public way to do this; when its internals are not what this
expects (another trio), nothing changes and a log line says so.
"""

from __future__ import annotations

import functools

import trio

from supervisor.log import warn


@functools.cache
def _dict_instruments_class() -> type[dict] | None:
    try:
        from trio._core._instrumentation import Instruments  # noqa: PLC0415 - see the docstring
    except ImportError:
        return None
    methods = {name: Instruments.__dict__.get(name) for name in
               ("add_instrument", "remove_instrument", "call")}
    if not all(callable(method) for method in methods.values()):
        return None

    class DictInstruments(dict):
        """trio's Instruments as a dict (``data`` is the dict itself)."""

        __slots__ = ()
        data = property(lambda self: self)
        add_instrument = methods["add_instrument"]
        remove_instrument = methods["remove_instrument"]
        call = methods["call"]

    return DictInstruments


def install() -> bool:
    """In a trio run: swap its instrument collection for the dict one (True if done)."""
    runner = getattr(getattr(trio._core._run, "GLOBAL_RUN_CONTEXT", None), "runner", None)  # noqa: SLF001
    current = getattr(runner, "instruments", None)
    fast = _dict_instruments_class()
    if fast is not None and isinstance(current, fast):
        return True
    data = getattr(current, "data", None)
    if fast is None or type(data) is not dict or "_all" not in data:
        warn("instrument_checks.unavailable",
             reason="trio's instrument collection is not the UserDict expected")
        return False
    runner.instruments = fast(data)
    return True
