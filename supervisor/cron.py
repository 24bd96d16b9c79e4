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

import calendar
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
#: Cloudflare numbers weekdays 1-7 from Sunday (Quartz's way, not crontab's 0-6).
_DAYS = {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split(), 1)}
#: field: (low, high, names)
_FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
           ("month", 1, 12, _MONTHS), ("day of week", 1, 7, _DAYS))
_DOM, _DOW = 2, 4
#: A rule that picks days by their place in the month: ``L``, ``LW``, ``15W``,
#: ``5L`` (the last Thursday), ``MON#1``.
DayRule = Callable[[datetime.date], bool]


class CronError(ValueError):
    """A cron expression Corral cannot schedule; the message names the field."""


def weekday_number(day: datetime.date) -> int:
    """``day``'s weekday as Cloudflare numbers it: 1 is Sunday, 7 Saturday."""
    return (day.weekday() + 1) % 7 + 1


def _month_length(day: datetime.date) -> int:
    return calendar.monthrange(day.year, day.month)[1]


def _nearest_weekday(day: datetime.date, target: int) -> int:
    """The day of ``day``'s month that ``target``W names: the weekday nearest
    the ``target``th, never in another month (Quartz's rule)."""
    last = _month_length(day)
    if target > last:
        return 0  # this month has no such day: the rule does not fire in it
    weekday = weekday_number(day.replace(day=target))
    if weekday == 7:  # Saturday: the Friday before, or the Monday after the 1st
        return target - 1 if target > 1 else target + 2
    if weekday == 1:  # Sunday: the Monday after, or the Friday before the last
        return target + 1 if target < last else target - 2
    return target


class Cron:
    """A parsed five-field expression (``minute hour day month weekday``)."""

    def __init__(self, text: str, fields: list[frozenset[int]], dom_any: bool, dow_any: bool,
                 dom_rules: tuple[DayRule, ...] = (), dow_rules: tuple[DayRule, ...] = ()) -> None:
        self.text = text
        self.minutes, self.hours, self.days, self.months, self.weekdays = fields
        self.dom_any = dom_any
        self.dow_any = dow_any
        self.dom_rules = dom_rules
        self.dow_rules = dow_rules

    def _day_matches(self, day: datetime.datetime) -> bool:
        date = day.date()
        dom = day.day in self.days or any(rule(date) for rule in self.dom_rules)
        dow = weekday_number(date) in self.weekdays or any(rule(date) for rule in self.dow_rules)
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
    if field == "day of week" and value == 0:
        raise CronError(f"cron {text!r}: weekdays are 1-7 from Sunday (1) to Saturday (7), as "
                        "Cloudflare numbers them, or SUN-SAT; 0 is none of them")
    if not low <= value <= high:
        raise CronError(f"cron {text!r}: {field} {value} is outside {low}-{high}")
    return value


def _day_rule(part: str, field: str, text: str) -> DayRule | None:
    """The rule a day field's ``part`` names (``L``, ``LW``, ``15W``, ``5L``,
    ``FRI#2``), or None when it is a plain value, range or step."""
    upper = part.upper()
    if field == "day of month":
        if upper == "L":
            return lambda d: d.day == _month_length(d)
        if upper == "LW":
            return lambda d: d.day == _nearest_weekday(d, _month_length(d))
        if upper.startswith("L-"):
            # saffron's (Cloudflare's parser) L-3: the third day before the
            # last; L-3W: the weekday nearest it, in the month.
            nearest = upper.endswith("W")
            digits = upper[2:-1] if nearest else upper[2:]
            if not digits.isdigit() or not 1 <= int(digits) <= 30:
                raise CronError(f"cron {text!r}: {part!r}: the offset after 'L-' is a day count, 1-30")
            offset = int(digits)
            if nearest:
                return lambda d: (target := _month_length(d) - offset) >= 1 \
                    and d.day == _nearest_weekday(d, target)
            return lambda d: d.day + offset == _month_length(d)
        if upper.endswith("W"):
            target = _value(part[:-1], 1, 31, {}, field, text)
            return lambda d: d.day == _nearest_weekday(d, target)
        if "L" in upper or "#" in upper:
            raise CronError(f"cron {text!r}: {part!r} is not a valid {field} (L, LW, L-3, L-3W and 15W are)")
        return None
    if upper == "L":  # Quartz: the last day of the week, Saturday
        return lambda d: weekday_number(d) == 7
    if upper.endswith("L"):
        weekday = _value(part[:-1], 1, 7, _DAYS, field, text)
        return lambda d: weekday_number(d) == weekday and d.day + 7 > _month_length(d)
    if "#" in upper:
        name, _, nth_text = part.partition("#")
        weekday = _value(name, 1, 7, _DAYS, field, text)
        if not nth_text.isdigit() or not 1 <= int(nth_text) <= 5:
            raise CronError(f"cron {text!r}: {part!r}: the number after '#' is the week, 1-5")
        nth = int(nth_text)
        return lambda d: weekday_number(d) == weekday and (d.day - 1) // 7 + 1 == nth
    return None


def _field(spec: str, low: int, high: int, names: dict[str, int], field: str, text: str
           ) -> tuple[frozenset[int], tuple[DayRule, ...]]:
    values: set[int] = set()
    rules: list[DayRule] = []
    for part in spec.split(","):
        if field in ("day of month", "day of week") and (rule := _day_rule(part, field, text)) is not None:
            rules.append(rule)
            continue
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
                # Wraps around (22-2 is 22:00 to 02:00, FRI-MON four days), as
                # Cloudflare's parser (saffron) takes it "to match up with
                # quartz": the step walks on across the wrap.
                values.update([*range(start, high + 1), *range(low, end + 1)][::step])
                continue
        else:
            start = _value(rng, low, high, names, field, text)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return frozenset(values), tuple(rules)


def parse_cron(text: str) -> Cron:
    """Parse a cron expression as Cloudflare documents them: five fields,
    names, ``*/n``, ranges and lists, ``?`` for an unrestricted day; weekdays
    1-7 from Sunday; ranges that wrap around (``22-2``, ``FRI-MON``);
    ``L``, ``LW``, ``L-3``, ``L-3W`` and ``15W`` in the day of the month,
    ``5L`` (the last Thursday) and ``MON#1`` in the day of the week."""
    if not isinstance(text, str) or not text.strip():
        raise CronError("a cron expression must be a non-empty string like '*/5 * * * *'")
    parts = text.split()
    if len(parts) != 5:
        raise CronError(f"cron {text!r} must have five fields (minute hour day-of-month month "
                        f"day-of-week), it has {len(parts)}")
    fields: list[frozenset[int]] = []
    rules: list[tuple[DayRule, ...]] = []
    for spec, (field, low, high, names) in zip(parts, _FIELDS, strict=False):
        values, field_rules = _field("*" if spec == "?" else spec, low, high, names, field, text)
        fields.append(values)
        rules.append(field_rules)
    return Cron(text, fields, parts[_DOM] in ("*", "?"), parts[_DOW] in ("*", "?"),
                rules[_DOM], rules[_DOW])


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
        #: Runs under way, and whether the server stops (none starts then).
        self.running = 0
        self._draining = False

    def drain(self) -> None:
        """The server stops: no run starts from now on; :attr:`running` says
        when those under way have ended."""
        self._draining = True

    async def _run(self, namespace: str, name: str, cron: str, when: float) -> None:
        self.running += 1
        try:
            await self.runner(namespace, name, cron, when)
        finally:
            self.running -= 1

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
                    if not self._draining:
                        nursery.start_soon(self._run, namespace, name, cron, when)
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
