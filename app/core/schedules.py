"""Schedules: what a schedule string means and when it next runs (DESIGN.md §5).

This module owns the schedule grammar (interval phrases, crontab and EventBridge cron lines,
one-time dates and relative phrases), its validation messages, the wall-clock alignment of
intervals and the daylight-saving rules. It is pure: no Flask, Celery or Redis, and it never
reads the system clock; every time comes in as an argument.

Every repeating schedule is a rule that yields naive *wall* times in the event's timezone.
One function, ``_resolve``, turns a wall time into an instant, so the DST rules live in one
place. Each event picks its rule (``dst``): ``shift`` (the default) runs a wall time inside a
spring-forward gap at the first instant after the gap, and a wall time that happens twice at
its first occurrence only; ``skip`` does not run a wall time that does not exist; ``twice``
runs a repeated wall time at both of its instants.
"""

import calendar
import re
import threading
from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import Enum
from functools import lru_cache
from typing import Literal, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from app.core.errors import InvalidSchedule

EventType = Literal["repeatable", "one_time"]
DST_POLICIES = ("shift", "skip", "twice")

_EXPECTED = "expected 'every N mins|hours|days|weeks|months', a crontab line, or a date"
_TICK = timedelta(microseconds=1)
_DAY = timedelta(days=1)


# --- the public value -------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A parsed, valid schedule. ``run_at`` is the resolved UTC instant of a one-time
    schedule; relative forms ('in 5 minutes') cannot be recomputed without it, so store it."""

    text: str
    timezone: str
    event_type: EventType
    run_at: datetime | None = None
    dst: str = "shift"  # DST_POLICIES: what a wall time in a gap or a repeated hour does

    def next_after(self, after: datetime) -> datetime | None:
        """The first run time strictly after `after` (an aware datetime, any zone), as an aware
        UTC datetime; None when a one-time run (or a year-bounded cron) is not after `after`."""
        after_utc = _as_utc(after, "after")
        zone = _zone(self.timezone)
        if self.event_type == "one_time":
            run_at = self.run_at or _one_time_run_at(_meaning(self.text), zone, None)
            return run_at if run_at > after_utc else None
        rule = _meaning(self.text)
        assert isinstance(rule, _WallRule)
        first = _next_instant(rule, zone, after_utc, skip_gaps=self.dst == "skip")
        if self.dst == "twice":
            again = _second_pass(rule, zone, after_utc)
            if again is not None and (first is None or again < first):
                return again
        return first

    def preview(self, now: datetime, count: int = 5) -> list[datetime]:
        """The next `count` run times strictly after `now` (fewer for one_time)."""
        runs: list[datetime] = []
        moment: datetime | None = now
        while len(runs) < count and moment is not None:
            moment = self.next_after(moment)
            if moment is not None:
                runs.append(moment)
        return runs


def parse_schedule(
    text: str, timezone: str = "UTC", *, now: datetime, dst: str = "shift"
) -> Schedule:
    """Parse and validate. `now` (aware) anchors relative one-time forms; the same text,
    timezone and now always give the same Schedule. One-time dates in the past are accepted
    (callers check ``next_after(now) is None``). Raises InvalidSchedule."""
    now_utc = _as_utc(now, "now")
    zone = _zone(timezone)
    meaning = _meaning(text)
    if isinstance(meaning, _WallRule):
        return Schedule(text, timezone, "repeatable", dst=dst)
    return Schedule(text, timezone, "one_time", _one_time_run_at(meaning, zone, now_utc))


def _as_utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime")
    return moment.astimezone(UTC)


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        # ValueError covers names zoneinfo refuses outright, such as absolute paths.
        raise InvalidSchedule(f"Unknown timezone '{name}'") from None


# --- wall time to instant: the DST rules ------------------------------------------------------


def _resolve(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant a naive local wall time runs at."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first  # exists; fold=0 is the first occurrence of a repeated time
    # A spring-forward gap: the two folds read the wall time with the offsets either side of
    # the transition, so the transition instant (the first one after the gap) lies between.
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return _transition(min(first, second), max(first, second), zone)


def _transition(lo: datetime, hi: datetime, zone: ZoneInfo) -> datetime:
    """The first instant in (lo, hi] already on hi's UTC offset; zoneinfo exposes no
    transition table, so bisect down to the microsecond."""
    target = hi.astimezone(zone).utcoffset()
    while hi - lo > _TICK:
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == target:
            hi = mid
        else:
            lo = mid
    return hi


def _search_start(after: datetime, zone: ZoneInfo) -> datetime:
    """The earliest wall time whose run could still be after `after`."""
    local = after.astimezone(zone)
    wall = local.replace(tzinfo=None)
    first_pass = wall.replace(tzinfo=zone, fold=0)
    if not local.fold or first_pass.utcoffset() == local.utcoffset():
        return wall
    # `after` is in the second pass of a repeated hour: every repeated wall time already ran
    # in the first pass, so resume where the repetition ends rather than stepping through
    # up to an hour of wall times (3600 for `every 1 sec`) that cannot qualify.
    old_offset = first_pass.utcoffset()
    assert old_offset is not None
    end = _transition(first_pass.astimezone(UTC), after, zone)
    return end.replace(tzinfo=None) + old_offset


def _next_instant(
    rule: "_WallRule", zone: ZoneInfo, after: datetime, *, skip_gaps: bool = False
) -> datetime | None:
    """The first run after ``after``, each wall time at its first instant (``skip_gaps``:
    a wall time that does not exist does not run)."""
    wall = _search_start(after, zone)
    while (candidate := rule.first_at_or_after(wall)) is not None:
        instant = _resolve(candidate, zone)
        exists = not skip_gaps or instant.astimezone(zone).replace(tzinfo=None) == candidate
        if exists and instant > after:  # wall times in one gap share an instant; it runs once
            return instant
        wall = candidate + _TICK
    return None


_FALL_BACK_REACH = timedelta(hours=3)  # more than any zone's repeated stretch (2 h at most)


def _second_pass(rule: "_WallRule", zone: ZoneInfo, after: datetime) -> datetime | None:
    """The first run after ``after`` at the *second* instant of a repeated wall time
    (policy ``twice``). Such a run belongs to a clock going back within a few hours of
    ``after``; otherwise there is none."""
    lo, hi = after - _FALL_BACK_REACH, after + _FALL_BACK_REACH
    before, later = lo.astimezone(zone).utcoffset(), hi.astimezone(zone).utcoffset()
    if before is None or later is None or later >= before:
        return None  # no clock goes back around ``after``
    change = _transition(lo, hi, zone)  # the first instant on the later offset
    start = change.astimezone(zone).replace(tzinfo=None)  # the repeated stretch's walls
    wall = max(start, after.astimezone(UTC).replace(tzinfo=None) + later + _TICK)
    candidate = rule.first_at_or_after(wall)
    if candidate is None or candidate >= start + (before - later):
        return None
    return (candidate - later).replace(tzinfo=UTC)


# --- repeating rules: naive wall times --------------------------------------------------------


class _WallRule:
    """A repeating schedule as a strictly increasing series of naive local wall times."""

    def first_at_or_after(self, wall: datetime) -> datetime | None:
        raise NotImplementedError


@dataclass(frozen=True)
class _SubDayRule(_WallRule):
    """Every `step` seconds counted from each local midnight (the count restarts daily)."""

    step: int

    def first_at_or_after(self, wall: datetime) -> datetime | None:
        midnight = wall.replace(hour=0, minute=0, second=0, microsecond=0)
        step = timedelta(seconds=self.step)
        steps = -((midnight - wall) // step)  # ceiling division
        return min(midnight + steps * step, midnight + _DAY)


class _Unit(Enum):
    SECOND = 1
    MINUTE = 60
    HOUR = 3600
    DAY = 86400
    WEEK = 7 * 86400
    MONTH = 0  # calendar months have no fixed length


@dataclass(frozen=True)
class _CalendarRule(_WallRule):
    """Every `n` days, weeks or months at `at` local time, aligned to the proleptic calendar:
    days whose (ordinal - 1) % n == 0, ISO weeks (from Monday) whose (monday ordinal - 1) // 7
    % n == 0, months whose (year * 12 + month - 1) % n == 0 (from the 1st)."""

    unit: _Unit
    n: int
    at: time

    def first_at_or_after(self, wall: datetime) -> datetime | None:
        first = self._first_aligned_on_or_after(wall.date())
        candidate = datetime.combine(first, self.at)
        if candidate < wall:
            candidate = datetime.combine(self._step(first), self.at)
        return candidate

    def _first_aligned_on_or_after(self, day: date) -> date:
        if self.unit is _Unit.DAY:
            return day + timedelta(days=-(day.toordinal() - 1) % self.n)
        if self.unit is _Unit.WEEK:
            monday = day - timedelta(days=day.weekday())
            weeks = -((monday.toordinal() - 1) // 7) % self.n
            start = monday + timedelta(weeks=weeks)
            return start if start >= day else start + timedelta(weeks=self.n)
        index = day.year * 12 + day.month - 1
        aligned = index + (-index % self.n)
        if aligned == index and day.day > 1:
            aligned += self.n
        return date(aligned // 12, aligned % 12 + 1, 1)

    def _step(self, day: date) -> date:
        if self.unit is _Unit.DAY:
            return day + timedelta(days=self.n)
        if self.unit is _Unit.WEEK:
            return day + timedelta(weeks=self.n)
        index = day.year * 12 + day.month - 1 + self.n
        return date(index // 12, index % 12 + 1, 1)


class _CronRule(_WallRule):
    """A cron expression in croniter's syntax, evaluated on naive wall times so croniter's
    own DST handling never runs (the DST rules are ``_resolve``'s)."""

    def __init__(self, expression: str, last_year: int | None) -> None:
        self.expression = expression
        self._last_year = last_year
        # croniter gives up after this many empty years; year-bounded crons span 1970-2099.
        self._iterator = croniter(
            expression, datetime(2000, 1, 1), max_years_between_matches=_CRON_YEARS
        )
        # The iterator is stateful and the API may call in from several threads.
        self._lock = threading.Lock()

    def first_at_or_after(self, wall: datetime) -> datetime | None:
        if self._last_year is not None and wall.year > self._last_year:
            return None
        with self._lock:
            self._iterator.set_current(wall - _TICK, force=True)
            try:
                result: datetime = self._iterator.get_next(datetime)
            except CroniterBadDateError:
                return None
        return result

    def can_fire(self) -> bool:
        return self.first_at_or_after(datetime(1970, 1, 1)) is not None


# --- one-time meanings ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Instant:
    """An ISO date-time with an explicit offset: the offset wins over the event timezone."""

    instant: datetime


@dataclass(frozen=True)
class _LocalWall:
    """An ISO date or date-time without offset, read in the event timezone."""

    wall: datetime


@dataclass(frozen=True)
class _Relative:
    """'in 5 minutes' / '5 minutes from now'."""

    amount: int
    unit: _Unit


@dataclass(frozen=True)
class _Tomorrow:
    at: time


_OneTime = _Instant | _LocalWall | _Relative | _Tomorrow
_Meaning = _WallRule | _OneTime


def _one_time_run_at(meaning: _Meaning, zone: ZoneInfo, now: datetime | None) -> datetime:
    if isinstance(meaning, _Instant):
        return meaning.instant.astimezone(UTC)
    if isinstance(meaning, _LocalWall):
        return _resolve(meaning.wall, zone)
    if now is None:
        raise ValueError("a relative one-time schedule needs its run_at (or now) to resolve")
    if isinstance(meaning, _Tomorrow):
        tomorrow = now.astimezone(zone).date() + _DAY
        return _resolve(datetime.combine(tomorrow, meaning.at), zone)
    assert isinstance(meaning, _Relative)
    return _relative_run_at(meaning, zone, now)


def _relative_run_at(relative: _Relative, zone: ZoneInfo, now: datetime) -> datetime:
    """Seconds, minutes and hours are elapsed time; days, weeks and months are calendar steps
    on the local wall clock (same time of day, month ends clamped). Whole seconds, since
    timestamps are reported at second precision."""
    if relative.unit in (_Unit.SECOND, _Unit.MINUTE, _Unit.HOUR):
        elapsed = timedelta(seconds=relative.amount * relative.unit.value)
        return (now + elapsed).replace(microsecond=0)
    wall = now.astimezone(zone).replace(tzinfo=None, microsecond=0)
    if relative.unit is _Unit.MONTH:
        return _resolve(_add_months(wall, relative.amount), zone)
    return _resolve(wall + relative.amount * timedelta(seconds=relative.unit.value), zone)


def _add_months(wall: datetime, months: int) -> datetime:
    year, month0 = divmod(wall.year * 12 + wall.month - 1 + months, 12)
    last_day = calendar.monthrange(year, month0 + 1)[1]
    return wall.replace(year=year, month=month0 + 1, day=min(wall.day, last_day))


# --- parsing: dispatch ------------------------------------------------------------------------

_ISO_START = re.compile(r"\d{4}-\d{2}-\d{2}")
_CRONISH = re.compile(r"[\d*?/,\-]+")


@lru_cache(maxsize=4096)
def _meaning(text: str) -> _Meaning:
    """What a schedule string means, independent of timezone and `now` (so it is cached:
    the beat re-parses every due event)."""
    stripped = text.strip()
    lowered = stripped.lower()
    if not lowered:
        raise InvalidSchedule(f"Empty schedule: {_EXPECTED}")
    if lowered.startswith("cron(") and lowered.endswith(")"):
        return _cron(stripped[5:-1].strip(), stripped)
    if lowered.startswith("@"):
        return _macro(lowered, stripped)
    when = lowered.removeprefix("at ").strip()
    if _ISO_START.match(when):
        return _iso(when, stripped)
    fields = lowered.split()
    if len(fields) >= 2 and all(_CRONISH.fullmatch(f) for f in fields[:2]):
        return _cron(stripped, stripped)
    return _Phrase(lowered, stripped).schedule()


_FIRST_YEAR, _LAST_YEAR = 1970, 2999


def _iso(when: str, original: str) -> _OneTime:
    try:
        moment = datetime.fromisoformat(when.upper())
    except ValueError:
        raise InvalidSchedule(
            f"Invalid date '{original}': expected an ISO-8601 date or date-time such as "
            "2026-12-01, 2026-12-01 09:30:00 or 2026-12-01T09:30:00+01:00"
        ) from None
    if not _FIRST_YEAR <= moment.year <= _LAST_YEAR:
        # Also keeps every offset's conversion to UTC representable (year 9999 at -14:00
        # is past datetime's last day).
        raise InvalidSchedule(
            f"Invalid date '{original}': the year must be from {_FIRST_YEAR} to {_LAST_YEAR}"
        )
    if moment.tzinfo is not None:
        return _Instant(moment)
    return _LocalWall(moment)


# --- parsing: natural-language phrases --------------------------------------------------------

_UNITS: dict[str, _Unit] = {
    word: unit
    for unit, words in {
        _Unit.SECOND: ("sec", "secs", "second", "seconds"),
        _Unit.MINUTE: ("min", "mins", "minute", "minutes"),
        _Unit.HOUR: ("hour", "hours", "hr", "hrs"),
        _Unit.DAY: ("day", "days"),
        _Unit.WEEK: ("week", "weeks"),
        _Unit.MONTH: ("month", "months"),
    }.items()
    for word in words
}

# Largest N per unit: sub-day intervals must fit in the day they are aligned to, and the
# calendar ones stay within ten years so the next run is always representable.
_MAX_N: dict[_Unit, int] = {
    _Unit.SECOND: 86400,
    _Unit.MINUTE: 1440,
    _Unit.HOUR: 24,
    _Unit.DAY: 3650,
    _Unit.WEEK: 520,
    _Unit.MONTH: 120,
}

# Cron day-of-week numbers (0 = Sunday) for `every <day> at <time>`.
_DAYS_OF_WEEK: dict[str, str] = {
    **dict.fromkeys(("sunday", "sun"), "0"),
    **dict.fromkeys(("monday", "mon"), "1"),
    **dict.fromkeys(("tuesday", "tue", "tues"), "2"),
    **dict.fromkeys(("wednesday", "wed"), "3"),
    **dict.fromkeys(("thursday", "thu", "thur", "thurs"), "4"),
    **dict.fromkeys(("friday", "fri"), "5"),
    **dict.fromkeys(("saturday", "sat"), "6"),
    "weekday": "1-5",
    "weekend": "0,6",
}

_TOKEN = re.compile(r"(?P<clock>\d{1,2}:\d{2})|(?P<int>\d+)|(?P<word>[a-z]+)|(?P<space>\s+)|.")


class _Phrase:
    """A recursive-descent parser over the tokens of a lowercased phrase:

    schedule := 'every' every | 'in' quantity | quantity 'from' 'now'
              | 'tomorrow' [at]
    every    := INT unit [at] | unit [at] | day-of-week [at]
    quantity := INT unit
    at       := 'at' (CLOCK | INT) ['am' | 'pm'] | 'at' ('noon' | 'midnight')
    """

    def __init__(self, lowered: str, original: str) -> None:
        self.original = original
        self.tokens: list[tuple[str, str]] = []
        for match in _TOKEN.finditer(lowered):
            if match.lastgroup is None:
                self.fail()
            if match.lastgroup != "space":
                self.tokens.append((match.lastgroup, match.group()))
        self.position = 0

    def schedule(self) -> _Meaning:
        meaning: _Meaning
        if self.accept("every"):
            meaning = self.every()
        elif self.accept("in"):
            meaning = _Relative(*self.quantity())
        elif self.accept("tomorrow"):
            meaning = _Tomorrow(self.at() or time(0))
        else:
            meaning = _Relative(*self.quantity())
            self.expect("from")
            self.expect("now")
        if self.position != len(self.tokens):
            self.fail()
        return meaning

    def every(self) -> _WallRule:
        day_of_week = self.take("word", _DAYS_OF_WEEK)
        if day_of_week is not None:
            clock = self.at() or time(0)
            days = _DAYS_OF_WEEK[day_of_week]
            return _CronRule(f"{clock.minute} {clock.hour} * * {days}", None)
        n = self.positive_int() if self.peek_kind() == "int" else 1
        unit = self.unit()
        if n > _MAX_N[unit]:
            self.fail(
                f"N must be 1-{_MAX_N[unit]} for {unit.name.lower()}s (use a larger unit "
                "or a crontab line for longer intervals)"
            )
        at = self.at()
        if unit in (_Unit.DAY, _Unit.WEEK, _Unit.MONTH):
            return _CalendarRule(unit, n, at or time(0))
        if at is not None:
            self.fail("'at' needs an interval of days, weeks or months, or a day name")
        return _SubDayRule(n * unit.value)

    def quantity(self) -> tuple[int, _Unit]:
        n = self.positive_int()
        unit = self.unit()
        if n > _MAX_N[unit] * 100:  # far enough for any real use, small enough to compute
            self.fail(f"N is too large for {unit.name.lower()}s")
        return n, unit

    def at(self) -> time | None:
        if not self.accept("at"):
            return None
        if self.accept("noon"):
            return time(12)
        if self.accept("midnight"):
            return time(0)
        token = self.take("clock") or self.take("int")
        if token is None:
            self.fail("expected a time of day such as 9am, 9:05pm or 13:30")
        hour, _, minute = token.partition(":")
        return self.clock(int(hour), int(minute or 0), self.take("word", {"am", "pm"}))

    def clock(self, hour: int, minute: int, meridiem: str | None) -> time:
        if meridiem is not None:
            if not 1 <= hour <= 12:
                self.fail("hour must be 1-12 with am/pm")
            hour = hour % 12 + (12 if meridiem == "pm" else 0)
        if not (0 <= hour <= 23 and 0 <= minute <= 59):
            self.fail("time of day must be 0:00-23:59, or 1-12 with am/pm")
        return time(hour, minute)

    def positive_int(self) -> int:
        token = self.take("int")
        if token is None:
            self.fail()
        if int(token) < 1:
            self.fail("N must be a positive integer")
        return int(token)

    def unit(self) -> _Unit:
        word = self.take("word", _UNITS)
        if word is None:
            self.fail()
        return _UNITS[word]

    def peek_kind(self) -> str | None:
        return self.tokens[self.position][0] if self.position < len(self.tokens) else None

    def take(self, kind: str, words: Container[str] | None = None) -> str | None:
        """The next token's text if it is of `kind` (and in `words`, when given), consumed."""
        if self.peek_kind() != kind:
            return None
        text = self.tokens[self.position][1]
        if words is not None and text not in words:
            return None
        self.position += 1
        return text

    def accept(self, word: str) -> bool:
        return self.take("word", {word}) is not None

    def expect(self, word: str) -> None:
        if not self.accept(word):
            self.fail()

    def fail(self, problem: str | None = None) -> NoReturn:
        if problem is None:
            raise InvalidSchedule(f"Unknown schedule '{self.original}': {_EXPECTED}")
        raise InvalidSchedule(f"Invalid schedule '{self.original}': {problem}")


# --- parsing: crontab and EventBridge cron ----------------------------------------------------

_CRON_YEARS = 130  # 1970-2099, the years croniter can represent
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEK = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")

_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


@dataclass(frozen=True)
class _Field:
    """One cron field: its range as written, the names it takes (mapped to cron numbers)
    and what it accepts, for messages. `shift` maps written numbers to cron's numbers
    (EventBridge counts days of the week 1-7 from Sunday, cron 0-6)."""

    label: str
    low: int
    high: int
    accepts: str
    names: dict[str, int]
    extras: frozenset[str] = frozenset()  # '?', 'L' (last day of month), '#' (nth weekday)
    shift: int = 0


_MONTH_NAMES = {name: i + 1 for i, name in enumerate(_MONTHS)}
_WEEK_NAMES = {name: i for i, name in enumerate(_WEEK)}
_MINUTE = _Field("minute", 0, 59, "0-59", {})
_HOUR = _Field("hour", 0, 23, "0-23", {})
_MONTH = _Field("month", 1, 12, "1-12 or JAN-DEC", _MONTH_NAMES)
_CRONTAB_FIELDS = (
    _MINUTE,
    _HOUR,
    _Field("day-of-month", 1, 31, "1-31 or L", {}, frozenset("?L")),
    _MONTH,
    _Field("day-of-week", 0, 7, "0-7 or SUN-SAT", _WEEK_NAMES, frozenset("?#")),
)
_EVENTBRIDGE_FIELDS = (
    _MINUTE,
    _HOUR,
    _Field("day-of-month", 1, 31, "1-31, L or ?", {}, frozenset("?L")),
    _MONTH,
    _Field("day-of-week", 1, 7, "1-7 (1 = SUN), SUN-SAT or ?", _WEEK_NAMES, frozenset("?#"), 1),
    _Field("year", 1970, 2099, "1970-2099", {}),
)


class _FieldError(Exception):
    pass


def _macro(lowered: str, original: str) -> _CronRule:
    if lowered not in _MACROS:
        raise InvalidSchedule(
            f"Unknown crontab macro '{original}': expected one of {', '.join(_MACROS)}"
        )
    return _CronRule(_MACROS[lowered], None)


def _cron(line: str, original: str) -> _CronRule:
    fields = line.split()
    specs: tuple[_Field, ...]
    if len(fields) == 5:
        kind, specs = "crontab", _CRONTAB_FIELDS
    elif len(fields) == 6:
        kind, specs = "EventBridge cron", _EVENTBRIDGE_FIELDS
    else:
        raise InvalidSchedule(
            f"Invalid crontab '{original}': expected 5 fields (minute hour day-of-month month "
            "day-of-week) or 6 EventBridge fields (minute hour day-of-month month day-of-week "
            "year)"
        )
    try:
        canonical = [_canonical_field(text, spec) for text, spec in zip(fields, specs, strict=True)]
    except _FieldError as error:
        raise InvalidSchedule(f"Invalid {kind} '{original}': {error}") from None
    rule = _cron_rule(canonical, fields, kind, original)
    if not rule.can_fire():
        raise InvalidSchedule(f"Invalid {kind} '{original}': it can never fire")
    return rule


def _cron_rule(canonical: list[str], fields: list[str], kind: str, original: str) -> _CronRule:
    if len(canonical) == 5:
        return _CronRule(" ".join(canonical), None)
    if [fields[2], fields[4]].count("?") != 1:
        # EventBridge refuses both a day-of-month and a day-of-week; so do we.
        raise InvalidSchedule(
            f"Invalid {kind} '{original}': exactly one of day-of-month and day-of-week must be '?'"
        )
    year = canonical[5]
    last_year = None if year == "*" else max(_expand_years(year))
    # croniter's seven-field form is minute hour dom month dow second year.
    return _CronRule(" ".join([*canonical[:5], "0", year]), last_year)


def _expand_years(field: str) -> list[int]:
    years: list[int] = []
    for item in field.split(","):
        span, _, step = item.partition("/")
        low, _, high = ("1970-2099" if span == "*" else span).partition("-")
        years.extend(range(int(low), int(high or low) + 1, int(step or 1)))
    return years


def _canonical_field(text: str, spec: _Field) -> str:
    """The field rewritten in croniter's plain numeric syntax, or _FieldError."""
    return ",".join(_canonical_item(item, spec) for item in text.lower().split(","))


def _canonical_item(item: str, spec: _Field) -> str:
    if item in ("*", "?"):
        if item == "?" and "?" not in spec.extras:
            raise _FieldError("'?' is only allowed in day-of-month or day-of-week")
        return "*"
    if item == "l" and "L" in spec.extras:
        return "L"
    if "#" in item and "#" in spec.extras:
        day, _, nth = item.partition("#")
        if not nth.isdigit() or not 1 <= int(nth) <= 5:
            raise _FieldError(f"{spec.label} '{item}': the week after '#' must be 1-5")
        return f"{_value(day, spec)}#{nth}"
    span, slash, step = item.partition("/")
    if slash and (not step.isdigit() or int(step) < 1):
        raise _FieldError(f"{spec.label} '{item}': step must be a positive integer")
    suffix = f"/{step}" if slash else ""
    if span == "*":
        return f"*{suffix}"
    low, dash, high = span.partition("-")
    start = _value(low, spec)
    if not dash:
        # 'a/s' means from a to the end of the range, every s (Saturday ends a week).
        last = 6 if spec.names is _WEEK_NAMES else spec.high
        return f"{start}-{last}{suffix}" if slash else str(start)
    end = _value(high, spec)
    if spec.names is _WEEK_NAMES and end == 0 < start:
        end = 7  # 'SAT-SUN': cron also numbers Sunday 7
    if start > end:
        raise _FieldError(f"{spec.label} range '{span}' runs backwards")
    return f"{start}-{end}{suffix}"


def _value(token: str, spec: _Field) -> int:
    """A written value as cron counts it."""
    if token.isdigit() and spec.low <= int(token) <= spec.high:
        return int(token) - spec.shift
    if token in spec.names:
        return spec.names[token]
    raise _FieldError(f"{spec.label} must be {spec.accepts}")
