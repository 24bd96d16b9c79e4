"""``importlib.metadata`` parses each distribution's METADATA once per zygote.

``importlib.metadata.version("fastapi")`` reads the ``METADATA`` file and
runs it through the e-mail parser on every call: ~0.5 ms of CPU each here,
and frameworks ask at import and on requests. Inside the jail the package
store is read-only and a bundle never changes under a running script, so the
parsed message of a given ``.dist-info`` directory cannot go stale. A package
zygote installs this memo and fills it (``package_warmup.read_metadata``)
before ``gc.freeze()``, so every child of the set answers from memory shared
copy-on-write.

Only :class:`importlib.metadata.PathDistribution` is wrapped, the class the
standard finders return; distributions from other finders keep their own
behaviour.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

#: ``str(dist._path)`` -> the parsed message.
_parsed: dict[str, Any] = {}


def install() -> None:
    """Wrap ``PathDistribution.metadata`` with the memo (once per process)."""
    cls = importlib.metadata.PathDistribution
    if getattr(cls, "_corral_memo", False):
        return
    parse = importlib.metadata.Distribution.metadata.fget

    def metadata(self: importlib.metadata.PathDistribution) -> Any:
        key = str(self._path)
        found = _parsed.get(key)
        if found is None:
            found = _parsed[key] = parse(self)
        return found

    cls.metadata = property(metadata, doc=importlib.metadata.Distribution.metadata.__doc__)
    cls._corral_memo = True
