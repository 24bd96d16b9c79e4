"""Dependencies: requirement lists, the content-addressed package store, the resolver.

The resolver runs the real pip against the platform's package index (as this
host's pip configuration names it), as an unprivileged user.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from pathlib import Path

import msgspec
import pytest
import trio

from supervisor.errors import Invalid, TooLarge
from supervisor.packages import store as store_mod
from supervisor.packages.requirements import from_pyproject, from_requirements_txt, normalize
from supervisor.packages.resolver import Resolver
from supervisor.packages.store import Lock, PackageStore

# -- requirement lists ----------------------------------------------------------

def test_requirements_are_normalised_and_the_sdk_dropped():
    parsed = normalize(["Jinja2>=3", "  # a comment", "", "workers-runtime-sdk", "webtypy",
                        "requests ; python_version < '3'", "fastapi[standard]==0.1 # pinned"])
    assert parsed.requirements == ["fastapi[standard]==0.1", "jinja2>=3"]
    assert any("workers-runtime-sdk" in w for w in parsed.warnings)


@pytest.mark.parametrize("line, words", [
    ("-r other.txt", "not supported"),
    ("--index-url https://evil.example/simple", "not supported"),
    ("pkg @ https://evil.example/pkg.whl", "URL"),
    ("not a requirement !!", "invalid requirement"),
])
def test_requirements_that_would_leave_the_platforms_index_are_refused(line, words):
    with pytest.raises(Invalid, match=words):
        from_requirements_txt(line)


def test_pyproject_dependencies_and_an_unmet_requires_python():
    parsed = from_pyproject('[project]\nname = "x"\nrequires-python = ">=3.12"\n'
                            'dependencies = ["fastapi", "workers-py"]\n')
    assert parsed.requirements == ["fastapi"]
    assert any("requires-python" in w and "ignored" in w for w in parsed.warnings)
    with pytest.raises(Invalid, match="dependencies must be a list"):
        from_pyproject('[project]\ndependencies = "fastapi"\n')


# -- the store --------------------------------------------------------------------

def make_wheel(directory: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
        archive.writestr(f"{name}-{version}.dist-info/METADATA",
                         f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return path


def test_a_wheel_is_unpacked_once_read_only_and_importable_by_path(tmp_path):
    store = PackageStore(tmp_path / "packages")
    wheel = make_wheel(tmp_path, "demo", "1.0", {"demo/__init__.py": b"X = 1\n",
                                                   "demo-1.0.data/purelib/extra.py": b"Y = 2\n",
                                                   "demo-1.0.data/scripts/tool": b"#!/bin/sh\n"})
    first = store.add_wheel(wheel)
    again = store.add_wheel(wheel)
    assert first == again and first.name == "demo" and first.version == "1.0"
    root = store.entries / first.dir
    assert (root / "demo" / "__init__.py").read_bytes() == b"X = 1\n"
    assert (root / "extra.py").exists() and not (root / "tool").exists()
    assert not os.access(root / "demo" / "__init__.py", os.W_OK) or os.geteuid() == 0
    assert oct((root / "demo" / "__init__.py").stat().st_mode & 0o777) == "0o444"
    assert len(list(store.entries.iterdir())) == 1


def test_a_wheel_that_escapes_or_explodes_is_refused(tmp_path, monkeypatch):
    store = PackageStore(tmp_path / "packages")
    with pytest.raises(Invalid, match="escapes"):
        store.add_wheel(make_wheel(tmp_path, "evil", "1.0", {"../../etc/cron.d/x": b"boom"}))
    monkeypatch.setattr(store_mod, "MAX_WHEEL_BYTES", 1000)
    with pytest.raises(TooLarge, match="unpacks to"):
        store.add_wheel(make_wheel(tmp_path, "bomb", "1.0", {"bomb/data": b"\0" * 5000}))
    assert list(store.entries.iterdir()) == []
    assert not (tmp_path / "etc").exists()


def test_gc_keeps_what_kept_locks_use(tmp_path):
    store = PackageStore(tmp_path / "packages")
    a = store.add_wheel(make_wheel(tmp_path, "a", "1.0", {"a.py": b""}))
    b = store.add_wheel(make_wheel(tmp_path, "b", "1.0", {"b.py": b""}))
    store.write_lock(Lock(id="keep", requirements=["a"], entries=[a], size=a.size, created=0))
    store.write_lock(Lock(id="drop", requirements=["b"], entries=[b], size=b.size, created=0))
    assert store.gc({"keep"}, grace_s=0) == (1, 1)
    assert store.read_lock("keep") is not None and store.read_lock("drop") is None
    assert [p.name for p in store.entries.iterdir()] == [a.dir]


# -- the resolver (real pip) --------------------------------------------------------

def test_resolving_fetches_wheels_once_and_reuses_the_lock(tmp_path):
    store = PackageStore(tmp_path / "packages")
    resolver = Resolver(store)

    async def main():
        lock = await resolver.resolve(["jinja2>=3"])
        names = {e.name for e in lock.entries}
        assert {"jinja2", "markupsafe"} <= names
        # An unchanged set: no pip at all (a resolver that cannot run pip still answers).
        resolver._runner = (["/bin/false"], None, None)
        again = await resolver.resolve(["jinja2>=3"])
        assert again.id == lock.id and again.entries == lock.entries
        paths = store.paths(lock)
        assert any(Path(p, "jinja2", "__init__.py").exists() for p in paths)
        assert any(list(Path(p).glob("markupsafe/*.so")) for p in paths), \
            "markupsafe's native speedups come from the store"

    trio.run(main)


def test_a_package_without_a_wheel_is_refused_by_name(tmp_path):
    resolver = Resolver(PackageStore(tmp_path / "packages"))

    async def main():
        with pytest.raises(Invalid, match="no wheel of pycrypto"):
            await resolver.resolve(["pycrypto==2.6.1"])  # sdist only: would run setup.py

    trio.run(main)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="django-cf 0.2 installs on this Python")
def test_a_package_only_for_a_newer_python_is_refused_for_that_reason(tmp_path):
    """django-cf 0.2 publishes pure wheels, for Python 3.12 and later only:
    the error names the Python it needs, not a missing wheel."""
    resolver = Resolver(PackageStore(tmp_path / "packages"))

    async def main():
        with pytest.raises(Invalid) as caught:
            await resolver.resolve(["django-cf>=0.2.14"])
        message = str(caught.value)
        python = f"CPython {sys.version_info.major}.{sys.version_info.minor}"
        assert f"no release of django-cf>=0.2.14 installs on {python}" in message, message
        assert "Requires-Python >=3.12" in message and "no wheel" not in message, message

    trio.run(main)


def test_entries_are_named_by_a_keyed_hash_and_an_old_store_is_renamed_in_place(tmp_path):
    """Entry folders named ``<dist>-<version>-<sha16>`` (all public) let a tenant
    ``stat`` a guess to learn what others use: they are named by a keyed hash, and
    a store an earlier run left is renamed at start, its locks with it."""
    wheel = make_wheel(tmp_path, "demo", "1.0", {"demo/__init__.py": b"X = 1\n"})
    sha16 = hashlib.sha256(wheel.read_bytes()).hexdigest()[:16]
    public = f"demo-1.0-{sha16}"
    # The store as an earlier run left it: an entry under its public name, a lock naming it.
    root = tmp_path / "packages"
    (root / "entries" / public / "demo").mkdir(parents=True)
    (root / "entries" / public / "demo" / "__init__.py").write_bytes(b"X = 1\n")
    (root / "locks").mkdir()
    old = Lock(id="old", requirements=["demo"], entries=[store_mod.Entry(name="demo", version="1.0", dir=public,
                                                                          size=6)], size=6, created=0)
    (root / "locks" / "old.json").write_bytes(msgspec.json.encode(old))
    store = PackageStore(root)
    assert not (root / "entries" / public).exists(), "the public name is gone"
    lock = store.read_lock("old")
    assert lock is not None, "nothing lost"
    [path] = store.paths(lock)
    assert Path(path, "demo", "__init__.py").read_bytes() == b"X = 1\n"
    assert "demo" not in Path(path).name and sha16 not in Path(path).name, path
    # The same wheel again: the same (migrated) entry, unpacked once.
    assert store.add_wheel(wheel).dir == Path(path).name
    assert len(list(store.entries.iterdir())) == 1
    # Another state dir (another key) names the same wheel differently.
    assert PackageStore(tmp_path / "elsewhere" / "packages").add_wheel(wheel).dir != Path(path).name
    # A child (another uid) cannot even stat inside locks/ or tmp/.
    assert oct(store.locks.stat().st_mode & 0o777) == "0o700"
    assert oct(store.tmp.stat().st_mode & 0o777) == "0o700"
    assert oct(store.entries.stat().st_mode & 0o777) == "0o711"
    assert (tmp_path / "packages.key").stat().st_mode & 0o077 == 0
