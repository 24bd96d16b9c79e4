"""A project's dependency list, as Corral resolves it.

Cloudflare's Python Workers projects declare dependencies in
``pyproject.toml`` (``[project] dependencies``) or ``requirements.txt``; the
upload API carries them as ``text/x-python-requirement`` parts. This module
turns either into a normalised list of PEP 508 requirement strings:

* ``workers-runtime-sdk``, ``workers-py`` and ``webtypy`` are Cloudflare's
  SDK and type stubs: Corral's own ``workers`` module satisfies them, so they
  are dropped;
* a ``requires-python`` the host cannot meet is ignored with a warning
  (Cloudflare's projects ask for 3.12 or 3.13; tenants' code runs on the
  host's CPython);
* options pip would take from a requirements file (``-r``, ``--index-url``,
  ``-e``, URLs) are refused: the index is the platform's, not the tenant's.
"""

from __future__ import annotations

import sys
import tomllib

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from supervisor.errors import Invalid

#: Satisfied by Corral's own ``workers``, ``js`` and ``pyodide`` modules.
PROVIDED = frozenset({"workers-runtime-sdk", "workers-py", "webtypy", "pyodide-py"})
MAX_REQUIREMENTS = 200
MAX_LINE = 1000


class Parsed:
    """Requirements ready to resolve, and what was said about the input."""

    def __init__(self, requirements: list[str], warnings: list[str]) -> None:
        self.requirements = requirements
        self.warnings = warnings


def normalize(lines: list[str]) -> Parsed:
    """Check and normalise requirement strings (sorted, deduplicated, SDK dropped)."""
    out: dict[str, str] = {}
    warnings: list[str] = []
    if len(lines) > MAX_REQUIREMENTS:
        raise Invalid(f"{len(lines)} requirements; at most {MAX_REQUIREMENTS} are accepted")
    for raw in lines:
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if len(line) > MAX_LINE:
            raise Invalid(f"requirement {line[:60]!r}... is longer than {MAX_LINE} characters")
        if line.startswith("-"):
            raise Invalid(f"requirement option {line.split()[0]!r} is not supported: list package "
                          "names with versions (the package index is the platform's)")
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise Invalid(f"invalid requirement {line!r}: {exc}") from None
        if req.url:
            raise Invalid(f"requirement {line!r} names a URL: only packages from the platform's "
                          "index may be installed")
        if req.marker is not None and not req.marker.evaluate():
            continue  # for another platform or Python
        name = canonicalize_name(req.name)
        if name in PROVIDED:
            warnings.append(f"{req.name} is provided by Corral's built-in workers module; not installed")
            continue
        req.marker = None
        req.name = name  # one spelling per package: the same set hashes the same
        text = str(req)
        if name in out and out[name] != text:
            raise Invalid(f"{req.name} is required twice, differently: {out[name]!r} and {text!r}")
        out[name] = text
    return Parsed([out[name] for name in sorted(out)], warnings)


def from_requirements_txt(text: str) -> Parsed:
    return normalize(text.splitlines())


def from_pyproject(text: str, where: str = "pyproject.toml") -> Parsed:
    """``[project] dependencies``, checking ``requires-python`` against the host."""
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise Invalid(f"{where}: not valid TOML: {exc}") from None
    project = data.get("project", {})
    if not isinstance(project, dict):
        raise Invalid(f"{where}: [project] must be a table")
    deps = project.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise Invalid(f"{where}: [project] dependencies must be a list of strings")
    parsed = normalize(deps)
    wanted = project.get("requires-python")
    if isinstance(wanted, str):
        host = ".".join(map(str, sys.version_info[:3]))
        try:
            if host not in SpecifierSet(wanted):
                parsed.warnings.append(
                    f"requires-python {wanted!r} is not met by the host's Python {host}; ignored "
                    "(tenant code runs on the host's CPython)")
        except InvalidSpecifier:
            parsed.warnings.append(f"requires-python {wanted!r} is not a valid specifier; ignored")
    return parsed
