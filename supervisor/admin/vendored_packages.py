"""An upload's ``python_modules/``: pywrangler's Pyodide packages, replaced by native builds.

Cloudflare's tooling for Python Workers with packages (``pywrangler``)
installs a project's dependencies as Pyodide (wasm32-emscripten) builds into
``python_modules/``, a copy of a venv's site-packages, and wrangler uploads
every file of it as a module named ``python_modules/<path>``; it sends no
requirement parts for such a project. On Cloudflare, workerd puts
``python_modules`` on ``sys.path``.

Corral runs native CPython: a wasm32 extension cannot load, and native code
only ever comes from Corral's read-only package store, never from a tenant's
bundle. So an upload's vendored files are read for what they *say*, the
``Name`` and ``Version`` of each ``<dist>.dist-info/METADATA``, which become
pinned requirements resolved as requirement parts are (same store, locks and
package zygotes); the files themselves are not stored. Cloudflare's own
runtime distributions (the ``workers`` SDK, ``pyodide-py``, ``webtypy``) are
skipped: the jail provides its own ``workers``, ``pyodide`` and ``js``.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.parser import BytesHeaderParser
from typing import Protocol

import msgspec
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from supervisor.admin import multipart
from supervisor.admin.decode import clip
from supervisor.admin.multipart import DEFAULT_MAX_PARTS
from supervisor.errors import Invalid, TooLarge
from supervisor.packages.requirements import PROVIDED, normalize
from supervisor.packages.upload import is_requirement

PREFIX = "python_modules/"
#: Cloudflare's Worker size limit (64 MiB uncompressed, on every plan), which
#: counts python_modules; the admin socket and TCP listener take bodies of the
#: same size (supervisor.server, supervisor.admin.tcp), so they usually stop a
#: bigger upload first.
MAX_VENDORED_BYTES = 64 * 2**20
#: A Django project's site-packages is ~3,000 files, pandas' ~2,000: room for
#: several such stacks, and a bound on the parts one upload may have.
MAX_VENDORED_FILES = 20_000
#: What multipart.parse may split an upload into: the code's parts and python_modules.
MAX_UPLOAD_PARTS = DEFAULT_MAX_PARTS + MAX_VENDORED_FILES
_METADATA_BYTES = 1 * 2**20


class Part(Protocol):
    """A multipart part (supervisor.admin.multipart.Part), as far as this module reads it."""

    name: str
    data: bytes
    filename: str | None
    content_type: str | None


class Pin(msgspec.Struct, frozen=True):
    """One vendored distribution, as a requirement: ``name==version``."""

    name: str       #: PEP 503-normalised
    version: str    #: the public version (a local ``+label`` is the Pyodide build's)
    source: str     #: the METADATA module it was read from

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


class Vendored(msgspec.Struct):
    """What an upload's python_modules came to (what the rest of the upload
    path sees as ``packages.upload.Pinned``)."""

    files: int = 0
    size: int = 0
    pins: list[Pin] = msgspec.field(default_factory=list)
    #: Distributions skipped as Cloudflare's runtime (satisfied by Corral's own modules).
    provided: list[str] = msgspec.field(default_factory=list)

    @property
    def present(self) -> bool:
        return self.files > 0

    def merge(self, explicit: list[str]) -> list[str]:
        """The explicit requirements (normalised) and the pins they do not
        name. An explicit requirement of a vendored package keeps its extras
        and markers and takes the vendored version (the one the tenant ran
        with under pywrangler), which it must admit: otherwise the two
        disagree, and the upload says which to keep."""
        named = {canonicalize_name(Requirement(line).name): line for line in explicit}
        pinned: dict[str, str] = {}
        extra: list[str] = []
        for pin in self.pins:
            line = named.get(pin.name)
            if line is None:
                extra.append(pin.requirement)
                continue
            wanted = Requirement(line)
            if not wanted.specifier.contains(pin.version, prereleases=True):
                raise Invalid(f"requirement {line!r} (a requirement part) conflicts with {pin.requirement!r} "
                              f"from {pin.source}: pywrangler installed {pin.name} {pin.version} into "
                              "python_modules; send one version (or drop the requirement part)")
            extras = f"[{','.join(sorted(wanted.extras))}]" if wanted.extras else ""
            marker = f"; {wanted.marker}" if wanted.marker else ""
            pinned[line] = f"{wanted.name}{extras}=={pin.version}{marker}"
        return normalize([*(pinned.get(line, line) for line in explicit), *extra]).requirements

    def explain(self, error: Invalid) -> Invalid:
        """A failed resolution, saying which pins came from python_modules."""
        named = [p for p in self.pins if p.requirement in error.message]
        if not named:  # a requirement part's failure, or pip's own words: list the pins, briefly
            if not self.pins:
                return error
            listed = ", ".join(p.requirement for p in self.pins[:10]) + (", ..." if len(self.pins) > 10 else "")
            return Invalid(f"{error.message} (the requirements included pins from the upload's "
                           f"python_modules/: {listed})", code=error.code)
        shown = ", ".join(f"{p.requirement} (from {p.source})" for p in named[:5])
        more = f" and {len(named) - 5} more" if len(named) > 5 else ""
        return Invalid(f"{error.message}; {shown}{more} came from the upload's python_modules/ (pywrangler's "
                       "Pyodide packages), which Corral installs as builds of the same version for the "
                       "host's CPython", code=error.code)


def part_path(part: Part) -> str:
    """A code part's module path. Cloudflare's SDKs name each part ``files``
    (``files[]`` in a content update) with the path as its filename; others
    name the part after the file."""
    return part.filename if part.name in ("files", "files[]") and part.filename else part.name


def is_vendored(part: Part) -> bool:
    return part.name != "metadata" and not is_requirement(part) and part_path(part).startswith(PREFIX)


def split(parts: Sequence[Part], limit: int = MAX_VENDORED_BYTES,
          max_files: int = MAX_VENDORED_FILES) -> tuple[list[Part], Vendored]:
    """The parts to keep (every part but python_modules') and what the
    vendored ones pin. Refuses python_modules over ``limit`` bytes or
    ``max_files`` files, and more code parts than an upload without
    python_modules may have."""
    kept = [p for p in parts if not is_vendored(p)]
    vendored = [p for p in parts if is_vendored(p)]
    if vendored and not _made_by_pywrangler(vendored):
        kept += _loose_modules(vendored, kept)
        vendored = []
    if len(kept) > DEFAULT_MAX_PARTS:
        raise TooLarge(f"the upload has more than {DEFAULT_MAX_PARTS} parts besides python_modules/ "
                       f"({len(kept)})")
    size = sum(len(p.data) for p in vendored)
    if size > limit or len(vendored) > max_files:
        raise TooLarge(f"the upload's python_modules/ is {len(vendored)} files of {size / 2**20:.1f} MiB, over "
                       f"the {limit / 2**20:.0f} MiB (and {max_files}-file) limit of vendored packages; "
                       "list the dependencies in pyproject.toml and let Corral install them")
    found = Vendored(files=len(vendored), size=size)
    for part in vendored:
        path = part_path(part)
        if _is_metadata(path):
            pin = read_pin(path, part.data)
            other = next((p for p in found.pins if p.name == pin.name), None)
            if pin.name in PROVIDED:
                found.provided.append(pin.name)
            elif other is None:
                found.pins.append(pin)
            elif other.version != pin.version:
                raise Invalid(f"python_modules/ has {pin.name} twice, as {other.version} ({other.source}) "
                              f"and {pin.version} ({pin.source}): keep one")
    found.pins.sort(key=lambda p: p.name)
    return kept, found


#: Modules the sandbox provides, which a bundle may not have (sandbox.loader.RESERVED).
_RUNTIME_NAMES = frozenset({"workers", "js", "pyodide"})


def _made_by_pywrangler(vendored: Sequence[Part]) -> bool:
    """Whether python_modules/ is ``pywrangler sync``'s (a venv's
    site-packages: installed distributions, the ``pyvenv.cfg`` it marks the
    copy with; sync replaces the whole folder), not modules vendored by hand."""
    for part in vendored:
        top = part_path(part)[len(PREFIX):].split("/", 1)
        if top[0] == "pyvenv.cfg" or top[0].endswith(".dist-info"):
            return True
    return False


def _top_name(path: str) -> str:
    """The importable name a module path starts: ``mod`` for ``mod.py`` and ``mod/x.py``."""
    return path.split("/", 1)[0].removesuffix(".py")


def _loose_modules(vendored: Sequence[Part], kept: Sequence[Part]) -> list[Part]:
    """The ``.py`` files of a python_modules/ vendored by hand, as modules at
    the import root: workerd puts python_modules on ``sys.path`` after the
    main module's folder, so ``import mod`` finds ``python_modules/mod.py``
    unless the upload has a ``mod`` of its own (which wins, as there) or it
    is one of the runtime's names. ``corral deploy`` places them the same way
    (supervisor.admin.project)."""
    own = {_top_name(part_path(p)) for p in kept if p.name != "metadata" and not is_requirement(p)}
    own |= _RUNTIME_NAMES
    return [multipart.Part(name=inside, data=part.data, content_type=part.content_type)
            for part in vendored
            if (inside := part_path(part)[len(PREFIX):]).endswith(".py") and _top_name(inside) not in own]


def _is_metadata(path: str) -> bool:
    """``python_modules/<dist>.dist-info/METADATA``: a distribution installed
    at the top of site-packages (not one a package vendors inside itself)."""
    inside = path[len(PREFIX):].split("/")
    return len(inside) == 2 and inside[0].endswith(".dist-info") and inside[1] == "METADATA"


def read_pin(path: str, data: bytes) -> Pin:
    """The ``Name`` and ``Version`` headers of a METADATA file (the core
    metadata's email-header format, as importlib.metadata reads it)."""
    if len(data) > _METADATA_BYTES:
        raise Invalid(f"{clip(path)} is {len(data)} bytes; a METADATA file this large is not a package's")
    headers = BytesHeaderParser().parsebytes(data)
    name = str(headers.get("Name") or "").strip()
    raw_version = str(headers.get("Version") or "").strip()
    if not name or not raw_version:
        missing = " and ".join(h for h, v in (("Name", name), ("Version", raw_version)) if not v)
        raise Invalid(f"{clip(path)} has no {missing} header: python_modules/ should be what pywrangler "
                      "installs (each package's .dist-info/METADATA names it and its version)")
    try:
        version = Version(raw_version).public
        Requirement(f"{name}=={version}")
    except (InvalidVersion, InvalidRequirement):
        raise Invalid(f"{clip(path)} names {clip(name)!r} version {clip(raw_version)!r}, which is not a "
                      "valid package name and version") from None
    return Pin(name=canonicalize_name(name), version=version, source=path)
