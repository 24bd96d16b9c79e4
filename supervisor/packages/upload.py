"""Requirement parts of an upload, resolved before the script is validated.

Cloudflare's upload API carries a Python Worker's dependencies as parts of
type ``text/x-python-requirement``; wrangler sends one part per requirement,
*named* by it, with an empty body. Corral accepts that shape and also a part
whose body lists requirements one per line (``requirements.txt`` as is), so
that a platform's back end can send either.

Resolution happens in the upload handler, before validation: validating a
script imports it in a sandbox, which needs its packages. An unchanged set
resolves to the lock it already has (no network, no pip).

The size cap is the *bundle's*, code and unpacked packages together: the
code part's own limit is about the upload body, and packages never travel
in it (a Django project is a few KB of code and ~40 MB of packages).
"""

from __future__ import annotations

from typing import Protocol

from supervisor.errors import Invalid, TooLarge
from supervisor.packages.requirements import Parsed, normalize
from supervisor.packages.store import Lock

REQUIREMENT_TYPE = "text/x-python-requirement"
#: Code plus unpacked packages of one script version.
MAX_BUNDLE_BYTES = 256 * 2**20


class Resolved:
    """What an upload's requirements came to. ``declared``: the upload said
    what its packages are (requirement parts or python_modules), so a
    content update takes them instead of keeping the deployed version's."""

    def __init__(self, requirements: list[str], lock: Lock | None, warnings: list[str],
                 declared: bool = False) -> None:
        self.requirements = requirements
        self.lock = lock
        self.warnings = warnings
        self.declared = declared

    @property
    def lock_id(self) -> str:
        return self.lock.id if self.lock is not None else ""


class Part(Protocol):
    """A multipart part (supervisor.admin.multipart.Part), as far as this module reads it."""

    name: str
    data: bytes
    filename: str | None
    content_type: str | None


class LockResolver(Protocol):
    async def resolve(self, requirements: list[str]) -> Lock: ...


class Pinned(Protocol):
    """Requirements an upload carries besides its requirement parts: the
    versions of its python_modules (supervisor.admin.vendored_packages)."""

    @property
    def present(self) -> bool: ...

    def merge(self, explicit: list[str]) -> list[str]:
        """``explicit`` (normalised requirement parts) with the pins added."""
        ...

    def explain(self, error: Invalid) -> Invalid:
        """A failed resolution, saying which requirements were pinned and why."""
        ...


def is_requirement(part: Part) -> bool:
    kind = (part.content_type or "").split(";", 1)[0].strip().lower()
    return kind == REQUIREMENT_TYPE


def requirement_lines(parts: list[Part]) -> list[str]:
    """Every requirement the upload names, in order (Cloudflare's shape or a list)."""
    lines: list[str] = []
    for part in parts:
        if not is_requirement(part):
            continue
        try:
            text = part.data.decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid(f"requirement part {part.name[:60]!r} is not UTF-8 text") from None
        if text.strip():
            lines += text.splitlines()
        else:  # wrangler: the part's name is the requirement
            lines.append(part.filename or part.name)
    return lines


async def resolve_parts(parts: list[Part], resolver: LockResolver | None,
                        pinned: Pinned | None = None) -> Resolved:
    """Normalise and resolve the upload's requirement parts, with ``pinned``'s
    requirements merged in (none: no work at all)."""
    lines = requirement_lines(parts)
    vendored = pinned is not None and pinned.present
    if not lines and not vendored:
        return Resolved([], None, [])
    parsed: Parsed = normalize(lines)
    requirements = pinned.merge(parsed.requirements) if pinned is not None else parsed.requirements
    if not requirements:
        return Resolved([], None, parsed.warnings, declared=True)
    if resolver is None:
        raise Invalid("this Corral cannot install packages (no package store configured)")
    try:
        lock = await resolver.resolve(requirements)
    except Invalid as exc:
        raise pinned.explain(exc) if pinned is not None else exc from None
    return Resolved(requirements, lock, parsed.warnings, declared=True)


def check_bundle_size(modules: dict[str, bytes], lock: Lock | None,
                      limit: int = MAX_BUNDLE_BYTES) -> None:
    """Refuse a bundle over ``limit``, saying what takes the room."""
    code = sum(len(v) for v in modules.values())
    packages = lock.size if lock is not None else 0
    if code + packages <= limit:
        return
    mib = 2**20
    biggest = sorted(lock.entries, key=lambda e: -e.size)[:3] if lock is not None else []
    detail = ", ".join(f"{e.name} {e.size / mib:.1f} MiB" for e in biggest)
    raise TooLarge(f"the script's bundle is {(code + packages) / mib:.1f} MiB (code {code / mib:.1f} MiB, "
                   f"packages {packages / mib:.1f} MiB{': ' + detail if detail else ''}), over the "
                   f"{limit / mib:.0f} MiB cap of a script's code and packages together")
