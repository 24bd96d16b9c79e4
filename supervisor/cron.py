"""Cron triggers: parse Cloudflare's cron expressions, run ``scheduled()`` on time.

A script's ``crons`` (Wrangler's ``triggers.crons``) each run its
``scheduled(controller, env, ctx)`` handler as an invocation with the limits,
outcomes and trace events of a request (:func:`run_scheduled`, also used by
``corral trigger`` and ``/cdn-cgi/handler/scheduled``).

The :class:`Scheduler` plans from *now*: after a restart it waits for each
expression's next time, so runs missed while Corral was down are not replayed
in a burst, and a late wake-up (a suspended host) runs a trigger once, not
once per missed minute. Times are UTC, as on Cloudflare.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from protocol.messages import ScheduledEvent
from supervisor.errors import Invalid
from supervisor.log import log
from supervisor.model import MAX_CRONS

__all__ = ["CronError", "Cron", "Scheduler", "check_crons", "parse_cron"]

_UTC = datetime.UTC
_MONTHS = {m: i for i, m in enumerate(
    "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), 1)}
_DAYS = {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}
#: field: (low, high, names)
_FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
           ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS))


class CronError(ValueError):
    """A cron expression Corral cannot schedule; the message names the field."""


class Cron:
    """A parsed five-field expression (``minute hour day month weekday``)."""

    def __init__(self, text: str, fields: list[frozenset[int]], dom_any: bool, dow_any: bool) -> None:
        self.text = text
        self.minutes, self.hours, self.days, self.months, self.weekdays = fields
        self.dom_any = dom_any
        self.dow_any = dow_any

    def _day_matches(self, day: datetime.datetime) -> bool:
        dom = day.day in self.days
        dow = ((day.weekday() + 1) % 7) in self.weekdays
        if self.dom_any or self.dow_any:
            return dom and dow
        return dom or dow  # both restricted: either matches, as cron does

    def next_after(self, after: datetime.datetime) -> datetime.datetime:
        """The first matching minute strictly after ``after`` (UTC)."""
        t = after.astimezone(_UTC).replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
        limit = t + datetime.timedelta(days=366 * 5)
        while t < limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + datetime.timedelta(days=32)).replace(day=1)
                continue
            if not self._day_matches(t):
                t = t.replace(hour=0, minute=0) + datetime.timedelta(days=1)
                continue
            if t.hour not in self.hours:
                t = t.replace(minute=0) + datetime.timedelta(hours=1)
                continue
            if t.minute not in self.minutes:
                t += datetime.timedelta(minutes=1)
                continue
            return t
        raise CronError(f"cron {self.text!r} never fires")

    def __repr__(self) -> str:
        return f"Cron({self.text!r})"


def _value(token: str, low: int, high: int, names: dict[str, int], field: str, text: str) -> int:
    upper = token.upper()
    if upper in names:
        return names[upper]
    if not token.isdigit():
        raise CronError(f"cron {text!r}: {token!r} is not a valid {field}")
    value = int(token)
    if not low <= value <= high:
        raise CronError(f"cron {text!r}: {field} {value} is outside {low}-{high}")
    return value


def _field(spec: str, low: int, high: int, names: dict[str, int], field: str, text: str
           ) -> frozenset[int]:
    values: set[int] = set()
    for part in spec.split(","):
        rng, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"cron {text!r}: step {step_text!r} in the {field} must be a positive number")
            step = int(step_text)
        if rng == "*":
            start, end = low, high
        elif "-" in rng:
            a, _, b = rng.partition("-")
            start = _value(a, low, high, names, field, text)
            end = _value(b, low, high, names, field, text)
            if end < start:
                raise CronError(f"cron {text!r}: range {rng!r} in the {field} runs backwards")
        else:
            start = _value(rng, low, high, names, field, text)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


def parse_cron(text: str) -> Cron:
    """Parse a cron expression as Cloudflare accepts them (five fields, names, ``*/n``,
    ranges and lists; ``?`` for an unrestricted day)."""
    if not isinstance(text, str) or not text.strip():
        raise CronError("a cron expression must be a non-empty string like '*/5 * * * *'")
    parts = text.split()
    if len(parts) != 5:
        raise CronError(f"cron {text!r} must have five fields (minute hour day-of-month month "
                        f"day-of-week), it has {len(parts)}")
    fields: list[frozenset[int]] = []
    for spec, (field, low, high, names) in zip(parts, _FIELDS, strict=False):
        spec = "*" if spec == "?" else spec
        if field == "day of week" and spec.upper().endswith(("L", "#")) or "#" in spec or spec.upper() == "L":
            raise CronError(f"cron {text!r}: 'L' and '#' in the {field} are not supported by Corral yet")
        fields.append(_field(spec, low, high, names, field, text))
    fields[4] = frozenset(d % 7 for d in fields[4])  # 7 is Sunday too
    return Cron(text, fields, parts[2] in ("*", "?"), parts[4] in ("*", "?"))


def check_crons(crons: list[str]) -> list[str]:
    """``crons`` if every one parses and there are few enough (Cloudflare's
    limit), else :class:`~supervisor.errors.Invalid` naming the problem: the
    check every way of setting a script's triggers makes."""
    if len(crons) > MAX_CRONS:
        raise Invalid(f"{len(crons)} cron triggers, more than the {MAX_CRONS} a script may have")
    now = datetime.datetime.now(_UTC)
    for cron in crons:
        try:
            # One that never fires ("0 0 30 2 *") was accepted and then
            # dropped by every plan without a word: refused here, by name.
            parse_cron(cron).next_after(now)
        except CronError as exc:
            raise Invalid(str(exc)) from None
    return list(crons)


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def scheduled_event(cron: str, when: float | None = None) -> ScheduledEvent:
    """The event a ``scheduled()`` invocation carries (``when`` in seconds; default now)."""
    return ScheduledEvent(cron=cron, scheduled_time=float(int((when or time.time()) * 1000)))


#: Lists every (namespace, name, crons) with cron triggers (runs in a thread).
ScheduleSource = Callable[[], Iterable[tuple[str, str, list[str]]]]
#: Runs one trigger: (namespace, name, cron, scheduled time in seconds).
Runner = Callable[[str, str, str, float], Awaitable[Any]]


class Scheduler:
    """Fires every script's cron triggers on time; reloads when scripts change."""

    def __init__(self, source: ScheduleSource, runner: Runner,
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.runner = runner
        self.clock = clock
        self._changed = trio.Event()

    def scripts_changed(self) -> None:
        self._changed.set()

    def plan(self, entries: Iterable[tuple[str, str, list[str]]], now: float
             ) -> list[tuple[float, str, str, str]]:
        """``(when, namespace, name, cron)`` of each trigger's next run after ``now``."""
        start = datetime.datetime.fromtimestamp(now, _UTC)
        out = []
        for namespace, name, crons in entries:
            for text in crons:
                try:
                    when = parse_cron(text).next_after(start).timestamp()
                except CronError:
                    continue
                out.append((when, namespace, name, text))
        return sorted(out)

    async def run(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                self._changed = trio.Event()
                entries = await trio.to_thread.run_sync(lambda: list(self.source()))
                pending = self.plan(entries, self.clock())
                # What is scheduled now, at start and after each change of scripts.
                log("cron.planned", triggers=len(pending), scripts=len(entries),
                    next=f"{pending[0][1] or '(platform)'}/{pending[0][2]} at {pending[0][0]:.0f}" if pending else "")
                while pending and not self._changed.is_set():
                    when, namespace, name, cron = pending[0]
                    with trio.move_on_after(max(0.0, when - self.clock())):
                        await self._changed.wait()
                    if self._changed.is_set():
                        break
                    # Due: run it, then plan its next run from now (no catch-up burst).
                    pending.pop(0)
                    nursery.start_soon(self.runner, namespace, name, cron, when)
                    now = self.clock()
                    pending.extend(self.plan([(namespace, name, [cron])], max(now, when)))
                    pending.sort()
                if not pending:
                    await self._changed.wait()


async def run_scheduled(pool: Any, limits: Any, record: Any, cron: str, when: float | None = None,
                        on_trace: Callable[[Any], None] | None = None,
                        linger_s: float = 60.0) -> dict[str, Any]:
    """Run ``record``'s ``scheduled()`` once for ``cron`` and return its trace event.

    The invocation is a request's in every way but its event: the script's
    limits (``limits.defaults_for``), its outcome, its trace (``on_trace``).
    """
    from supervisor.observability import traces

    inv = await pool.invoke(record, b"GET", "", [], None, limits.defaults_for(record),
                            event=scheduled_event(cron, when))
    if on_trace is not None:
        inv.on_done = on_trace
    await inv.wait_head()
    with trio.move_on_after(linger_s):  # waitUntil work; the pool ends it at its deadline
        await inv.done.wait()
    return traces.build(inv)
