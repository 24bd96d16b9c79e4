"""A script's cron triggers, as Cloudflare's API sets them: ``.../schedules``.

``wrangler deploy`` of a config with ``triggers.crons`` uploads the script,
then puts its schedules here; the SDK's ``client.workers.scripts.schedules``
reads and sets them. As on Cloudflare, crons are the script's, not a
version's (:data:`supervisor.store.records.UNVERSIONED`): new schedules make
no new version, and the deployed record (what the scheduler,
:mod:`supervisor.cron`, reads) gets them at once. An upload that says nothing
about crons keeps them, as Cloudflare keeps schedules across uploads, and so
does a deployment of another version (``wrangler rollback``).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from supervisor.admin.decode import body_as
from supervisor.admin.handlers import _NS, _PS, Handlers, log_event
from supervisor.admin.render import Response, envelope
from supervisor.admin.router import Request, Router
from supervisor.cron import check_crons
from supervisor.model import ScriptRecord


class Schedule(msgspec.Struct):
    """One entry of the ``PUT`` body: ``{"cron": "*/5 * * * *"}``."""

    cron: str


def schedules_json(record: ScriptRecord) -> dict[str, Any]:
    when = record.version_created_on or record.modified_on
    return {"schedules": [{"cron": cron, "created_on": when, "modified_on": when} for cron in record.crons]}


class ScheduleHandlers:
    def __init__(self, core: Handlers) -> None:
        self.core = core

    def register(self, router: Router) -> None:
        for prefix in (f"{_NS}/{{ns}}/scripts", _PS):
            router.add(f"{prefix}/{{name}}/schedules", GET=self.get_schedules, PUT=self.put_schedules)

    async def get_schedules(self, request: Request) -> Response:
        _, _, record = await self.core.deployed(request)
        return envelope(200, schedules_json(record))

    async def put_schedules(self, request: Request) -> Response:
        body = body_as(request.body, list[Schedule], '[{"cron": "*/5 * * * *"}, ...]',
                       "set the script's cron triggers")
        crons = check_crons(list(dict.fromkeys(s.cron.strip() for s in body)))
        ns, name, record = await self.core.deployed(request)
        if crons != list(record.crons):
            record = await self.core.set_unversioned(ns, name, crons=crons)
            log_event(logging.INFO, "admin.schedules_set", namespace=ns, script=name, crons=crons)
        return envelope(200, schedules_json(record))


__all__ = ["ScheduleHandlers"]
