"""Durable Object class migrations: renamed and deleted classes move or drop data.

A script's upload may carry Cloudflare's ``migrations``: wrangler's list of
tagged steps (``[{"tag": "v1", "new_sqlite_classes": [...]}, {"tag": "v2",
"renamed_classes": [{"from": "A", "to": "B"}]}]``), or the API's form (one
step, or ``steps``, between ``old_tag`` and ``new_tag``). An object's storage
is keyed by its class's name, so before, renaming a class lost every object's
data, and deleting one kept it (for a class of that name added later).

Each script's last applied tag is kept in the object index. At a deploy,
the steps after it are applied, in order, before the new version serves:

* ``renamed_classes``: every object of ``from`` moves, storage, index row
  and alarm, to the same id in ``to`` (refused if ``to`` has objects already);
* ``deleted_classes``: every object of the class is deleted, as deleting its
  script would;
* ``new_classes`` and ``new_sqlite_classes`` make no storage (it is made
  on first use) but set the class's kind: KV-backed or SQLite-backed
  (supervisor.bindings.do_backends); ``transferred_classes`` (between
  scripts) are refused.

A script with no tag kept (its first migrations, a script whose earlier
versions had none, or one deployed before Corral kept tags) has every step
replayed: a rename or a delete of a class with no objects does nothing, and
a delete of a class a later step adds back is skipped, since the objects
there may be the new class's. A step deleting a class the new version still
binds is refused, as Cloudflare refuses it: the binding would serve the
class with its data gone.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from supervisor.bindings import Services, do_backends, remove_tree
from supervisor.bindings.base import object_scope
from supervisor.bindings.durable_objects import (
    _index_add,
    _index_drop,
    _index_of_class,
    _index_setup,
    alarms_of,
    host_of,
    index_path,
    object_path,
)
from supervisor.errors import Invalid
from supervisor.log import log
from supervisor.objects import storage as st

#: Objects read from the index at a time while a class moves or goes.
_PAGE = 500


def pending(migrations: Any, current: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """The steps of ``migrations`` after tag ``current``, and the tag after them."""
    if isinstance(migrations, list):
        steps = [m for m in migrations if isinstance(m, dict)]
        tags = [m.get("tag") for m in steps]
        if current is None:
            start = 0
        elif current in tags:
            start = tags.index(current) + 1
        else:
            raise Invalid(f"the script's Durable Object migrations are at tag {current!r}, which the "
                          f"uploaded migrations do not list (their tags: {', '.join(map(str, tags)) or 'none'})")
        return steps[start:], (tags[-1] if steps and tags[-1] else current)
    if isinstance(migrations, dict):
        new_tag = migrations.get("new_tag")
        if new_tag is not None and new_tag == current:
            return [], current
        old_tag = migrations.get("old_tag")
        if old_tag is not None and old_tag != current:
            raise Invalid(f"migration precondition failed: old_tag {old_tag!r} is not the script's current "
                          f"migration tag ({current!r})")
        steps = migrations.get("steps")
        return ([s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else [migrations]), \
            (new_tag if new_tag is not None else current)
    return [], current


def _tag_of(conn: sqlite3.Connection, namespace: str, script: str) -> str | None:
    row = conn.execute("SELECT tag FROM migration_tags WHERE namespace = ? AND script = ?",
                       (namespace, script)).fetchone()
    return row[0] if row else None


def _set_tag(conn: sqlite3.Connection, namespace: str, script: str, tag: str | None) -> None:
    if tag is None:
        conn.execute("DELETE FROM migration_tags WHERE namespace = ? AND script = ?", (namespace, script))
    else:
        conn.execute("INSERT OR REPLACE INTO migration_tags VALUES (?, ?, ?)", (namespace, script, tag))


async def apply(services: Services, namespace: str, script: str, migrations: Any,
                bound_classes: frozenset[str]) -> None:
    """Apply what ``migrations`` (the new version's) has past the script's
    tag; ``bound_classes``: the script's own classes its new version binds.
    Raises :class:`Invalid` (nothing applied) for migrations that cannot be."""
    index = index_path(services)
    current = await services.databases.run(index, _index_setup, _tag_of, namespace, script)
    steps, tag = pending(migrations, current)
    deletes = _deletes(steps, replaying=current is None)
    for step in steps:  # everything is checked before anything moves
        if step.get("transferred_classes"):
            raise Invalid("transferred_classes (moving objects from another script) is not supported: "
                          "migrate within one script (renamed_classes)")
        for rename in step.get("renamed_classes") or []:
            if not (isinstance(rename, dict) and isinstance(rename.get("from"), str)
                    and isinstance(rename.get("to"), str) and rename["from"] != rename["to"]):
                raise Invalid(f"renamed_classes entries are {{\"from\": OLD, \"to\": NEW}}, got {rename!r}")
        if not all(isinstance(c, str) for c in step.get("deleted_classes") or []):
            raise Invalid("deleted_classes is a list of class names")
    for index_of_step, class_name in deletes:
        if class_name in bound_classes and not _added_after(steps, index_of_step, class_name):
            raise Invalid(f"Cannot apply deleted_classes migration to class {class_name!r} without also "
                          "removing the Durable Object binding that references it")
    for index_of_step, step in enumerate(steps):
        for rename in step.get("renamed_classes") or []:
            await _rename(services, namespace, script, rename["from"], rename["to"])
        for class_name in step.get("deleted_classes") or []:
            if (index_of_step, class_name) in deletes:
                await _delete(services, namespace, script, class_name)
        await services.databases.run(index, _index_setup, do_backends.apply_step, namespace, script, step)
    if steps:
        host_of(services).forget_kv_classes(namespace, script)
    if tag != current or steps:
        await services.databases.run(index, _index_setup, _set_tag, namespace, script, tag)


def _added_after(steps: list[dict[str, Any]], index_of_step: int, class_name: str) -> bool:
    """Whether a step after ``index_of_step`` makes ``class_name`` a class again."""
    for step in steps[index_of_step + 1:]:
        added = [*(step.get("new_classes") or []), *(step.get("new_sqlite_classes") or []),
                 *(r.get("to") for r in step.get("renamed_classes") or [] if isinstance(r, dict))]
        if class_name in added:
            return True
    return False


def _deletes(steps: list[dict[str, Any]], replaying: bool) -> set[tuple[int, str]]:
    """The (step, class) deletes to carry out. ``replaying`` (no tag kept):
    not a class a later step adds back, whose objects may be the new class's."""
    return {(i, name) for i, step in enumerate(steps) for name in step.get("deleted_classes") or []
            if isinstance(name, str) and not (replaying and _added_after(steps, i, name))}


async def _ids(services: Services, namespace: str, script: str, class_name: str) -> list[str]:
    ids: list[str] = []
    while True:
        page = await services.databases.run(index_path(services), _index_setup, _index_of_class, namespace,
                                            script, class_name, ids[-1] if ids else "", _PAGE)
        ids += page
        if len(page) < _PAGE:
            return ids


async def _rename(services: Services, namespace: str, script: str, old: str, new: str) -> None:
    ids = await _ids(services, namespace, script, old)
    if not ids:
        return
    if await _ids(services, namespace, script, new):
        raise Invalid(f"cannot rename Durable Object class {old!r} to {new!r}: {new!r} has objects already")
    host_of(services).forget_script(namespace, script)
    alarms = alarms_of(services)
    for object_id in ids:
        source = object_path(services, object_scope(namespace, script, old, object_id))
        target = object_path(services, object_scope(namespace, script, new, object_id))
        await services.databases.forget(source)
        if os.path.exists(source):
            await services.offload.run(_move, os.path.dirname(source), os.path.dirname(target))
        new_key, old_key = (namespace, script, new, object_id), (namespace, script, old, object_id)
        await services.databases.run(index_path(services), _index_setup, _index_add, new_key)
        await services.databases.run(index_path(services), _index_setup, _index_drop, [old_key])
        when = await services.databases.run(target, st.setup, st.get_alarm) if os.path.exists(target) else None
        await alarms.set(new_key, when)
        await alarms.set(old_key, None)
    log("dobject.class_renamed", namespace=namespace, script=script, old=old, new=new, objects=len(ids))


def _move(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(source, target)


async def _delete(services: Services, namespace: str, script: str, class_name: str) -> None:
    ids = await _ids(services, namespace, script, class_name)
    if not ids:
        return
    host_of(services).forget_script(namespace, script)
    alarms = alarms_of(services)
    for object_id in ids:
        key = (namespace, script, class_name, object_id)
        path = object_path(services, object_scope(*key))
        await services.databases.forget(path)
        await services.offload.run(remove_tree, os.path.dirname(path))
        await alarms.set(key, None)
        await services.databases.run(index_path(services), _index_setup, _index_drop, [key])
    log("dobject.class_deleted", namespace=namespace, script=script, class_name=class_name, objects=len(ids))
