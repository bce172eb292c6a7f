"""Schedule grammar, alignment and DST behaviour, with pinned clocks.

DST transitions used (all 2024):
- Europe/London: spring 03-31 01:00 UTC (01:00 GMT -> 02:00 BST); fall 10-27 01:00 UTC
  (02:00 BST -> 01:00 GMT, so 01:00-02:00 local happens twice).
- America/New_York: spring 03-10 07:00 UTC (02:00 EST -> 03:00 EDT); fall 11-03 06:00 UTC
  (02:00 EDT -> 01:00 EST).
- Australia/Lord_Howe (30-minute shift): fall 04-06 15:00 UTC (02:00 +11 -> 01:30 +10:30);
  spring 10-05 15:30 UTC (02:00 +10:30 -> 02:30 +11).
"""

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from app.core.errors import InvalidSchedule
from app.core.schedules import Schedule, parse_schedule


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


NOW = utc(2019, 1, 4, 20, 50, 30)


def runs(text: str, start: datetime, count: int = 4, tz: str = "UTC") -> list[datetime]:
    return parse_schedule(text, tz, now=start).preview(start, count)


# --- repeating phrases: wall-clock alignment --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The compatible API's observed behaviour: created 20:50:30, aligned to the clock.
        ("every 1 mins", [utc(2019, 1, 4, 20, 51), utc(2019, 1, 4, 20, 52)]),
        ("every 5 mins", [utc(2019, 1, 4, 20, 55), utc(2019, 1, 4, 21, 0)]),
        ("every minute", [utc(2019, 1, 4, 20, 51), utc(2019, 1, 4, 20, 52)]),
        ("every 15 minutes", [utc(2019, 1, 4, 21, 0), utc(2019, 1, 4, 21, 15)]),
        ("every 1 min", [utc(2019, 1, 4, 20, 51), utc(2019, 1, 4, 20, 52)]),
        ("every 30 secs", [utc(2019, 1, 4, 20, 51), utc(2019, 1, 4, 20, 51, 30)]),
        ("every second", [utc(2019, 1, 4, 20, 50, 31), utc(2019, 1, 4, 20, 50, 32)]),
        ("every 45 seconds", [utc(2019, 1, 4, 20, 51), utc(2019, 1, 4, 20, 51, 45)]),
        ("every 1 sec", [utc(2019, 1, 4, 20, 50, 31), utc(2019, 1, 4, 20, 50, 32)]),
        ("every hour", [utc(2019, 1, 4, 21), utc(2019, 1, 4, 22)]),
        ("every 2 hours", [utc(2019, 1, 4, 22), utc(2019, 1, 5, 0)]),
        ("every 3 hrs", [utc(2019, 1, 4, 21), utc(2019, 1, 5, 0)]),
        ("every 1 hr", [utc(2019, 1, 4, 21), utc(2019, 1, 4, 22)]),
        ("every day", [utc(2019, 1, 5), utc(2019, 1, 6)]),
        ("every 1 days", [utc(2019, 1, 5), utc(2019, 1, 6)]),
        # date(2019, 1, 6).toordinal() - 1 == 737064, a multiple of 3
        ("every 3 days", [utc(2019, 1, 6), utc(2019, 1, 9)]),
        ("every week", [utc(2019, 1, 7), utc(2019, 1, 14)]),
        # Monday 2019-01-14: (ordinal - 1) // 7 == 105296, even
        ("every 2 weeks", [utc(2019, 1, 14), utc(2019, 1, 28)]),
        ("every month", [utc(2019, 2, 1), utc(2019, 3, 1)]),
        # (2019 * 12 + 3) % 3 == 0 -> April
        ("every 3 months", [utc(2019, 4, 1), utc(2019, 7, 1)]),
        ("every day at 1am", [utc(2019, 1, 5, 1), utc(2019, 1, 6, 1)]),
        ("every day at 13:30", [utc(2019, 1, 5, 13, 30), utc(2019, 1, 6, 13, 30)]),
        ("every day at 9:05pm", [utc(2019, 1, 4, 21, 5), utc(2019, 1, 5, 21, 5)]),
        ("every day at 12am", [utc(2019, 1, 5), utc(2019, 1, 6)]),
        ("every day at 12pm", [utc(2019, 1, 5, 12), utc(2019, 1, 6, 12)]),
        ("every day at noon", [utc(2019, 1, 5, 12), utc(2019, 1, 6, 12)]),
        ("every day at 9 am", [utc(2019, 1, 5, 9), utc(2019, 1, 6, 9)]),
        ("every 2 days at 6:15", [utc(2019, 1, 6, 6, 15), utc(2019, 1, 8, 6, 15)]),
        ("every monday at 9am", [utc(2019, 1, 7, 9), utc(2019, 1, 14, 9)]),
        ("every mon at 9am", [utc(2019, 1, 7, 9), utc(2019, 1, 14, 9)]),
        ("every friday at 9:00pm", [utc(2019, 1, 4, 21), utc(2019, 1, 11, 21)]),
        ("every sunday", [utc(2019, 1, 6), utc(2019, 1, 13)]),
        ("every weekday at 9am", [utc(2019, 1, 7, 9), utc(2019, 1, 8, 9)]),
        ("  EVERY 5 MINS  ", [utc(2019, 1, 4, 20, 55), utc(2019, 1, 4, 21, 0)]),
    ],
)
def test_repeating_phrases_align_to_the_wall_clock(text: str, expected: list[datetime]) -> None:
    schedule = parse_schedule(text, now=NOW)
    assert schedule.event_type == "repeatable"
    assert schedule.text == text
    assert schedule.preview(NOW, 2) == expected


def test_every_7_mins_restarts_at_midnight() -> None:
    assert runs("every 7 mins", utc(2024, 5, 1, 23, 50)) == [
        utc(2024, 5, 1, 23, 55),
        utc(2024, 5, 2, 0, 0),
        utc(2024, 5, 2, 0, 7),
        utc(2024, 5, 2, 0, 14),
    ]


def test_intervals_align_in_the_event_timezone() -> None:
    # 05:30 in Kolkata is 00:00 UTC: local hours, not UTC hours, count.
    assert runs("every 2 hours", utc(2024, 5, 1, 0, 0), 2, "Asia/Kolkata") == [
        utc(2024, 5, 1, 0, 30),
        utc(2024, 5, 1, 2, 30),
    ]
    assert runs("every day", utc(2024, 5, 1, 12), 1, "America/New_York") == [utc(2024, 5, 2, 4)]


def test_a_run_time_itself_is_not_after_itself() -> None:
    schedule = parse_schedule("every 5 mins", now=NOW)
    assert schedule.next_after(utc(2019, 1, 4, 20, 55)) == utc(2019, 1, 4, 21, 0)
    assert schedule.next_after(utc(2019, 1, 4, 20, 54, 59, 999999)) == utc(2019, 1, 4, 20, 55)


def test_after_may_be_in_any_zone() -> None:
    schedule = parse_schedule("every hour", now=NOW)
    paris = datetime(2024, 1, 1, 10, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert schedule.next_after(paris) == utc(2024, 1, 1, 10)
    assert schedule.next_after(paris).tzinfo is UTC  # type: ignore[union-attr]


def test_every_month_and_every_day_across_month_and_leap_year_ends() -> None:
    assert runs("every month", utc(2024, 1, 31, 12), 3) == [
        utc(2024, 2, 1),
        utc(2024, 3, 1),
        utc(2024, 4, 1),
    ]
    assert runs("every day", utc(2024, 2, 28, 1), 2) == [utc(2024, 2, 29), utc(2024, 3, 1)]
    assert runs("every 12 months", utc(2024, 6, 1), 2) == [utc(2025, 1, 1), utc(2026, 1, 1)]


# --- crontab and EventBridge ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "start", "expected"),
    [
        (
            "*/15 9-17 * * MON-FRI",
            utc(2024, 1, 5, 17, 40),  # a Friday
            [utc(2024, 1, 5, 17, 45), utc(2024, 1, 8, 9, 0), utc(2024, 1, 8, 9, 15)],
        ),
        ("@hourly", utc(2024, 1, 1, 10, 30), [utc(2024, 1, 1, 11), utc(2024, 1, 1, 12)]),
        ("@daily", utc(2024, 1, 1, 10, 30), [utc(2024, 1, 2), utc(2024, 1, 3)]),
        ("@midnight", utc(2024, 1, 1, 10, 30), [utc(2024, 1, 2), utc(2024, 1, 3)]),
        ("@weekly", utc(2024, 1, 1, 10, 30), [utc(2024, 1, 7), utc(2024, 1, 14)]),
        ("@monthly", utc(2024, 1, 1, 10, 30), [utc(2024, 2, 1), utc(2024, 3, 1)]),
        ("@yearly", utc(2024, 1, 1, 10, 30), [utc(2025, 1, 1), utc(2026, 1, 1)]),
        ("@ANNUALLY", utc(2024, 1, 1, 10, 30), [utc(2025, 1, 1), utc(2026, 1, 1)]),
        (
            "0 0 31 * *",
            utc(2024, 1, 31),
            [utc(2024, 3, 31), utc(2024, 5, 31), utc(2024, 7, 31), utc(2024, 8, 31)],
        ),
        ("0 0 29 2 *", utc(2024, 3, 1), [utc(2028, 2, 29), utc(2032, 2, 29)]),
        ("0 0 L * *", utc(2024, 1, 31), [utc(2024, 2, 29), utc(2024, 3, 31)]),
        ("0 0 1 * SUN", utc(2024, 9, 1), [utc(2024, 9, 8), utc(2024, 9, 15)]),  # OR, as cron
        ("0 0 * * SAT-SUN", utc(2024, 1, 1), [utc(2024, 1, 6), utc(2024, 1, 7)]),
        ("0 0 * * 7", utc(2024, 1, 1), [utc(2024, 1, 7), utc(2024, 1, 14)]),
        ("0 0 ? * 5", utc(2024, 1, 1), [utc(2024, 1, 5), utc(2024, 1, 12)]),
        ("30 6 1 JAN,jul *", utc(2024, 2, 1), [utc(2024, 7, 1, 6, 30), utc(2025, 1, 1, 6, 30)]),
        ("0 12 * * 1#2", utc(2024, 1, 1), [utc(2024, 1, 8, 12), utc(2024, 2, 12, 12)]),
        # EventBridge: minute hour day-of-month month day-of-week year, 1-7 = SUN-SAT
        ("0 9 ? * MON-FRI *", utc(2024, 1, 5, 10), [utc(2024, 1, 8, 9), utc(2024, 1, 9, 9)]),
        ("0 9 ? * 2-6 *", utc(2024, 1, 5, 10), [utc(2024, 1, 8, 9), utc(2024, 1, 9, 9)]),
        ("0 9 ? * 1 *", utc(2024, 1, 1), [utc(2024, 1, 7, 9), utc(2024, 1, 14, 9)]),  # SUN
        ("0 9 ? * 7 *", utc(2024, 1, 1), [utc(2024, 1, 6, 9), utc(2024, 1, 13, 9)]),  # SAT
        ("0 9 ? * SUN,SAT *", utc(2024, 1, 1), [utc(2024, 1, 6, 9), utc(2024, 1, 7, 9)]),
        ("0 10 ? * 6#3 *", utc(2024, 1, 1), [utc(2024, 1, 19, 10), utc(2024, 2, 16, 10)]),
        ("0 18 L * ? *", utc(2024, 2, 1), [utc(2024, 2, 29, 18), utc(2024, 3, 31, 18)]),
        ("cron(0 18 L * ? *)", utc(2024, 2, 1), [utc(2024, 2, 29, 18), utc(2024, 3, 31, 18)]),
        ("0 12 1 1 ? 2030", utc(2024, 6, 1), [utc(2030, 1, 1, 12)]),
        ("0 12 1 1 ? 2030-2031", utc(2024, 6, 1), [utc(2030, 1, 1, 12), utc(2031, 1, 1, 12)]),
        ("0 0 29 2 ? 2024-2099/4", utc(2024, 3, 1), [utc(2028, 2, 29), utc(2032, 2, 29)]),
        ("15 10 1 * ? 2024,2026", utc(2024, 12, 5), [utc(2026, 1, 1, 10, 15)]),
    ],
)
def test_cron_forms(text: str, start: datetime, expected: list[datetime]) -> None:
    schedule = parse_schedule(text, now=start)
    assert schedule.event_type == "repeatable"
    assert schedule.preview(start, len(expected)) == expected


def test_a_year_bounded_cron_whose_years_have_passed_is_finished() -> None:
    schedule = parse_schedule("0 12 1 1 ? 2020", now=utc(2024, 1, 1))
    assert schedule.next_after(utc(2024, 1, 1)) is None
    assert schedule.preview(utc(2024, 1, 1)) == []
    assert schedule.next_after(utc(2019, 6, 1)) == utc(2020, 1, 1, 12)
    # Years remain, but none of them holds another match.
    leap = parse_schedule("0 0 29 2 ? 2024,2025", now=utc(2024, 1, 1))
    assert leap.next_after(utc(2024, 3, 1)) is None


def test_cron_is_read_in_the_event_timezone() -> None:
    assert runs("0 9 * * *", utc(2024, 7, 1), 1, "America/New_York") == [utc(2024, 7, 1, 13)]


# --- one-time forms ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tz", "expected"),
    [
        ("2026-12-01", "UTC", utc(2026, 12, 1)),
        ("2026-12-01", "Europe/London", utc(2026, 12, 1)),
        ("2026-07-01", "Europe/London", utc(2026, 6, 30, 23)),
        ("2026-12-01 09:30:00", "America/New_York", utc(2026, 12, 1, 14, 30)),
        ("2026-12-01T09:30", "UTC", utc(2026, 12, 1, 9, 30)),
        ("2026-12-01T09:30:00+01:00", "America/New_York", utc(2026, 12, 1, 8, 30)),
        ("2026-12-01T09:30:00Z", "Asia/Tokyo", utc(2026, 12, 1, 9, 30)),
        ("2026-12-01t09:30:00z", "UTC", utc(2026, 12, 1, 9, 30)),
        ("at 2026-12-01T09:30:00", "UTC", utc(2026, 12, 1, 9, 30)),
        ("at 2026-12-01 09:30:00+01:00", "UTC", utc(2026, 12, 1, 8, 30)),
        ("in 5 minutes", "UTC", utc(2019, 1, 4, 20, 55, 30)),
        ("in 1 minute", "UTC", utc(2019, 1, 4, 20, 51, 30)),
        ("in 30 seconds", "UTC", utc(2019, 1, 4, 20, 51)),
        ("in 2 hours", "Asia/Kolkata", utc(2019, 1, 4, 22, 50, 30)),
        ("in 3 days", "UTC", utc(2019, 1, 7, 20, 50, 30)),
        ("in 1 week", "UTC", utc(2019, 1, 11, 20, 50, 30)),
        ("in 2 months", "UTC", utc(2019, 3, 4, 20, 50, 30)),
        ("5 days from now", "UTC", utc(2019, 1, 9, 20, 50, 30)),
        ("10 mins from now", "UTC", utc(2019, 1, 4, 21, 0, 30)),
        ("tomorrow", "UTC", utc(2019, 1, 5)),
        # 20:50 UTC is already the 5th in Tokyo (+9): tomorrow is its 6th.
        ("tomorrow", "Asia/Tokyo", utc(2019, 1, 5, 15)),
        ("tomorrow at 9am", "UTC", utc(2019, 1, 5, 9)),
        ("Tomorrow at 17:45", "Europe/London", utc(2019, 1, 5, 17, 45)),
    ],
)
def test_one_time_forms(text: str, tz: str, expected: datetime) -> None:
    schedule = parse_schedule(text, tz, now=NOW)
    assert schedule.event_type == "one_time"
    assert schedule.run_at == expected
    assert schedule.next_after(NOW) == expected
    assert schedule.next_after(expected) is None
    assert schedule.preview(NOW) == [expected]


def test_relative_forms_drop_sub_second_noise_and_stay_after_now() -> None:
    now = utc(2024, 1, 1, 10, 0, 0, 900000)
    assert parse_schedule("in 1 second", now=now).run_at == utc(2024, 1, 1, 10, 0, 1)


def test_calendar_relative_forms_keep_the_local_time_of_day() -> None:
    # 2024-03-30 12:00 GMT; three days later London is on BST, and it is still 12:00 local.
    now = utc(2024, 3, 30, 12)
    assert parse_schedule("in 3 days", "Europe/London", now=now).run_at == utc(2024, 4, 2, 11)
    # Elapsed units ignore the wall clock.
    assert parse_schedule("in 72 hours", "Europe/London", now=now).run_at == utc(2024, 4, 2, 12)
    # Month ends clamp.
    jan31 = utc(2024, 1, 31, 8)
    assert parse_schedule("in 1 month", now=jan31).run_at == utc(2024, 2, 29, 8)


def test_past_dates_parse_and_never_run() -> None:
    schedule = parse_schedule("2001-01-01", now=NOW)
    assert schedule.event_type == "one_time"
    assert schedule.next_after(NOW) is None
    assert schedule.preview(NOW) == []


def test_same_inputs_give_the_same_schedule() -> None:
    for text in ("every 5 mins", "in 5 minutes", "tomorrow", "0 9 ? * MON-FRI *"):
        assert parse_schedule(text, "Europe/London", now=NOW) == parse_schedule(
            text, "Europe/London", now=NOW
        )


def test_a_schedule_built_directly_still_computes() -> None:
    repeating = Schedule("every 5 mins", "UTC", "repeatable")
    assert repeating.next_after(NOW) == utc(2019, 1, 4, 20, 55)
    absolute = Schedule("2026-12-01", "Europe/London", "one_time")
    assert absolute.next_after(NOW) == utc(2026, 12, 1)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse_schedule("every day", now=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="aware"):
        parse_schedule("every day", now=NOW).next_after(datetime(2024, 1, 1))


# --- daylight saving --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tz", "start", "expected"),
    [
        # Spring forward: 01:30 does not exist in London on 03-31; runs at 02:00 BST.
        (
            "30 1 * * *",
            "Europe/London",
            utc(2024, 3, 30, 12),
            [utc(2024, 3, 31, 1), utc(2024, 4, 1, 0, 30)],
        ),
        (
            "every day at 1:30am",
            "Europe/London",
            utc(2024, 3, 30, 12),
            [utc(2024, 3, 31, 1), utc(2024, 4, 1, 0, 30)],
        ),
        # Every wall time in the gap maps to the same instant, which runs once.
        (
            "every 30 mins",
            "Europe/London",
            utc(2024, 3, 31, 0),
            [
                utc(2024, 3, 31, 0, 30),
                utc(2024, 3, 31, 1),
                utc(2024, 3, 31, 1, 30),
                utc(2024, 3, 31, 2),
            ],
        ),
        (
            "every hour",
            "Europe/London",
            utc(2024, 3, 30, 23, 30),
            [utc(2024, 3, 31, 0), utc(2024, 3, 31, 1), utc(2024, 3, 31, 2)],
        ),
        # Fall back: 01:30 happens twice in London on 10-27; only the first (BST) runs.
        (
            "30 1 * * *",
            "Europe/London",
            utc(2024, 10, 26, 12),
            [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)],
        ),
        (
            "every 30 mins",
            "Europe/London",
            utc(2024, 10, 26, 23),
            [
                utc(2024, 10, 26, 23, 30),
                utc(2024, 10, 27, 0),
                utc(2024, 10, 27, 0, 30),
                utc(2024, 10, 27, 2),
            ],
        ),
        (
            "every hour",
            "Europe/London",
            utc(2024, 10, 26, 23, 30),
            [utc(2024, 10, 27, 0), utc(2024, 10, 27, 2), utc(2024, 10, 27, 3)],
        ),
        # New York: 02:30 is skipped on 03-10 (runs at 03:00 EDT), 01:30 repeats on 11-03.
        (
            "every day at 2:30am",
            "America/New_York",
            utc(2024, 3, 9, 12),
            [utc(2024, 3, 10, 7), utc(2024, 3, 11, 6, 30)],
        ),
        (
            "30 2 * * *",
            "America/New_York",
            utc(2024, 3, 9, 12),
            [utc(2024, 3, 10, 7), utc(2024, 3, 11, 6, 30)],
        ),
        (
            "every day at 1:30am",
            "America/New_York",
            utc(2024, 11, 2, 12),
            [utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)],
        ),
        (
            "0 * * * *",
            "America/New_York",
            utc(2024, 11, 3, 3, 30),
            [utc(2024, 11, 3, 4), utc(2024, 11, 3, 5), utc(2024, 11, 3, 7)],
        ),
        (
            "every 2 hours",
            "America/New_York",
            utc(2024, 3, 10, 4, 30),
            [utc(2024, 3, 10, 5), utc(2024, 3, 10, 7), utc(2024, 3, 10, 8)],
        ),
        # Lord Howe shifts by 30 minutes: 02:00-02:30 is skipped on 10-06 (local).
        (
            "every 15 mins",
            "Australia/Lord_Howe",
            utc(2024, 10, 5, 15),
            [utc(2024, 10, 5, 15, 15), utc(2024, 10, 5, 15, 30), utc(2024, 10, 5, 15, 45)],
        ),
        (
            "every day at 2:15am",
            "Australia/Lord_Howe",
            utc(2024, 10, 5, 12),
            [utc(2024, 10, 5, 15, 30), utc(2024, 10, 6, 15, 15)],
        ),
        # ... and 01:30-02:00 happens twice on 04-07 (local).
        (
            "every 15 mins",
            "Australia/Lord_Howe",
            utc(2024, 4, 6, 14),
            [
                utc(2024, 4, 6, 14, 15),
                utc(2024, 4, 6, 14, 30),
                utc(2024, 4, 6, 14, 45),
                utc(2024, 4, 6, 15, 30),
            ],
        ),
        (
            "45 1 * * *",
            "Australia/Lord_Howe",
            utc(2024, 4, 6, 12),
            [utc(2024, 4, 6, 14, 45), utc(2024, 4, 7, 15, 15)],
        ),
    ],
)
def test_daylight_saving(text: str, tz: str, start: datetime, expected: list[datetime]) -> None:
    assert runs(text, start, len(expected), tz) == expected


@pytest.mark.parametrize(
    ("text", "tz", "after", "expected"),
    [
        # `after` inside the second pass of the repeated hour: the repeated wall times already
        # ran in the first pass, so the next run is where the repetition ends.
        ("every 1 sec", "Europe/London", utc(2024, 10, 27, 1, 15), utc(2024, 10, 27, 2)),
        ("every 5 mins", "Europe/London", utc(2024, 10, 27, 1, 59), utc(2024, 10, 27, 2)),
        ("*/10 * * * *", "America/New_York", utc(2024, 11, 3, 6, 5), utc(2024, 11, 3, 7)),
        ("every 15 mins", "Australia/Lord_Howe", utc(2024, 4, 6, 15, 10), utc(2024, 4, 6, 15, 30)),
        # At the very transition instant (second 01:00 in London).
        ("every 30 mins", "Europe/London", utc(2024, 10, 27, 1), utc(2024, 10, 27, 2)),
    ],
)
def test_next_after_from_inside_a_repeated_hour(
    text: str, tz: str, after: datetime, expected: datetime
) -> None:
    assert parse_schedule(text, tz, now=after).next_after(after) == expected


def test_one_time_local_times_follow_the_dst_rules() -> None:
    gap = parse_schedule("2024-03-31 01:30", "Europe/London", now=NOW)
    assert gap.run_at == utc(2024, 3, 31, 1)
    repeated = parse_schedule("2024-10-27 01:30", "Europe/London", now=NOW)
    assert repeated.run_at == utc(2024, 10, 27, 0, 30)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "evry 5 mins",
            "Unknown schedule 'evry 5 mins': expected 'every N mins|hours|days|weeks|months', "
            "a crontab line, or a date",
        ),
        ("", "Empty schedule"),
        ("   ", "Empty schedule"),
        ("garbage", "Unknown schedule 'garbage'"),
        ("every 5 mins!", "Unknown schedule 'every 5 mins!'"),
        ("every 5 fortnights", "Unknown schedule"),
        ("every", "Unknown schedule"),
        ("in 5", "Unknown schedule"),
        ("5 days from", "Unknown schedule"),
        ("every -5 mins", "Unknown schedule"),
        ("every 0 mins", "Invalid schedule 'every 0 mins': N must be a positive integer"),
        ("in 0 minutes", "N must be a positive integer"),
        ("every 48 hours", "N must be 1-24 for hours"),
        ("every 1441 mins", "N must be 1-1440 for minutes"),
        ("every 5 mins at 9am", "'at' needs an interval of days, weeks or months"),
        ("every day at 13pm", "hour must be 1-12 with am/pm"),
        ("every day at 24:00", "time of day must be 0:00-23:59"),
        ("every day at 9:60", "time of day must be 0:00-23:59"),
        ("every day at", "expected a time of day"),
        ("tomorrow at 9am please", "Unknown schedule"),
        ("61 * * * *", "Invalid crontab '61 * * * *': minute must be 0-59"),
        ("0 24 * * *", "hour must be 0-23"),
        ("0 0 0 * *", "day-of-month must be 1-31 or L"),
        ("0 0 32 * *", "day-of-month must be 1-31 or L"),
        ("0 0 1 13 *", "month must be 1-12 or JAN-DEC"),
        ("0 0 1 FOO *", "month must be 1-12 or JAN-DEC"),
        ("0 0 * * 8", "day-of-week must be 0-7 or SUN-SAT"),
        ("*/0 * * * *", "minute '*/0': step must be a positive integer"),
        ("30-10 * * * *", "minute range '30-10' runs backwards"),
        ("? * * * *", "'?' is only allowed in day-of-month or day-of-week"),
        ("0 0 * * 1#6", "the week after '#' must be 1-5"),
        ("1,,2 * * * *", "minute must be 0-59"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * * *", "expected 5 fields"),
        ("0 0 30 2 *", "Invalid crontab '0 0 30 2 *': it can never fire"),
        ("0 0 31 4,6,9,11 *", "it can never fire"),
        ("0 0 29 2 ? 2027", "Invalid EventBridge cron '0 0 29 2 ? 2027': it can never fire"),
        ("0 9 ? * 0 *", "day-of-week must be 1-7 (1 = SUN), SUN-SAT or ?"),
        ("0 9 ? * 8 *", "day-of-week must be 1-7 (1 = SUN), SUN-SAT or ?"),
        ("0 9 * * MON-FRI *", "exactly one of day-of-month and day-of-week must be '?'"),
        ("0 9 ? * ? *", "exactly one of day-of-month and day-of-week must be '?'"),
        ("0 9 ? * MON 1969", "year must be 1970-2099"),
        ("0 9 ? * MON 2100", "year must be 1970-2099"),
        ("@fortnightly", "Unknown crontab macro '@fortnightly': expected one of @hourly"),
        ("2026-13-01", "Invalid date '2026-13-01': expected an ISO-8601 date"),
        ("2026-02-30 10:00", "Invalid date"),
        ("at 2026-12-01T25:00", "Invalid date"),
    ],
)
def test_invalid_schedules_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        parse_schedule(text, now=NOW)
    assert str(caught.value).startswith(message) or message in str(caught.value)
    assert caught.value.errors == [caught.value.message]


@pytest.mark.parametrize("tz", ["Mars/Base", "", "utc/../../etc/passwd", "/etc/localtime"])
def test_unknown_timezone(tz: str) -> None:
    with pytest.raises(InvalidSchedule, match=r"^Unknown timezone '.*'$"):
        parse_schedule("every day", tz, now=NOW)


def test_unknown_timezone_is_checked_even_with_an_explicit_offset() -> None:
    with pytest.raises(InvalidSchedule, match="Unknown timezone 'Mars/Base'"):
        parse_schedule("2026-12-01T09:30:00+01:00", "Mars/Base", now=NOW)


# --- properties -------------------------------------------------------------------------------

ZONES = [
    "UTC",
    "Europe/London",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Santiago",
]
UNITS = {"secs": 1, "mins": 60, "hours": 3600, "days": 0, "weeks": 0, "months": 0}
MAX_N = {"secs": 120, "mins": 120, "hours": 24, "days": 30, "weeks": 10, "months": 24}

nows = st.datetimes(
    min_value=datetime(2021, 1, 1), max_value=datetime(2031, 12, 31), timezones=st.just(UTC)
)


@st.composite
def intervals(draw: st.DrawFn) -> tuple[str, int]:
    unit = draw(st.sampled_from(sorted(UNITS)))
    return unit, draw(st.integers(min_value=1, max_value=MAX_N[unit]))


def matches_interval(wall: datetime, unit: str, n: int) -> bool:
    if UNITS[unit]:
        since_midnight = wall.hour * 3600 + wall.minute * 60 + wall.second
        return wall.microsecond == 0 and since_midnight % (n * UNITS[unit]) == 0
    if wall.time() != datetime.min.time():
        return False
    if unit == "days":
        return (wall.toordinal() - 1) % n == 0
    if unit == "weeks":
        return wall.weekday() == 0 and (wall.toordinal() - 1) // 7 % n == 0
    return wall.day == 1 and (wall.year * 12 + wall.month - 1) % n == 0


def is_transition(moment: datetime, tz: ZoneInfo) -> bool:
    """A gap's wall times run at the instant the clocks jump, whose wall time is the gap's end."""
    before = (moment - timedelta(microseconds=1)).astimezone(tz).utcoffset()
    return before != moment.astimezone(tz).utcoffset()


def iterate(schedule: Schedule, start: datetime, count: int = 20) -> list[datetime]:
    results: list[datetime] = []
    moment = start
    for _ in range(count):
        following = schedule.next_after(moment)
        assert following is not None
        assert following > moment
        assert following.tzinfo is UTC
        results.append(following)
        moment = following
    assert schedule.preview(start, count) == results
    return results


@settings(max_examples=150, deadline=None)
@given(interval=intervals(), tz=st.sampled_from(ZONES), now=nows)
def test_interval_runs_increase_and_match(
    interval: tuple[str, int], tz: str, now: datetime
) -> None:
    unit, n = interval
    schedule = parse_schedule(f"every {n} {unit}", tz, now=now)
    zone = ZoneInfo(tz)
    for moment in iterate(schedule, now):
        local = moment.astimezone(zone)
        assert local.fold == 0  # never the second pass of a repeated hour
        assert matches_interval(local.replace(tzinfo=None), unit, n) or is_transition(moment, zone)


@settings(max_examples=100, deadline=None)
@given(interval=intervals(), now=nows)
def test_interval_runs_in_utc_skip_nothing(interval: tuple[str, int], now: datetime) -> None:
    unit, n = interval
    results = iterate(parse_schedule(f"every {n} {unit}", now=now), now)
    for earlier, later in zip([now, *results], results, strict=False):
        if UNITS[unit]:
            step = timedelta(seconds=n * UNITS[unit])
            # Consecutive runs are one step apart, except where the count restarts at midnight.
            assert later - earlier <= step
            assert later - earlier == step or later.time() == datetime.min.time() or earlier == now
        elif unit == "days":
            assert later - earlier <= timedelta(days=n)
        elif unit == "weeks":
            assert later - earlier <= timedelta(weeks=n)
        else:
            months = (later.year - earlier.year) * 12 + later.month - earlier.month
            assert months <= n


# Small cron alphabet: each written field with the set it stands for (None: unrestricted).
MINUTES = {"*": None, "0": {0}, "*/15": {0, 15, 30, 45}, "5,35": {5, 35}, "10-20/5": {10, 15, 20}}
HOURS = {"*": None, "0": {0}, "9-17": set(range(9, 18)), "*/6": {0, 6, 12, 18}, "1,2": {1, 2}}
DOMS = {"*": None, "1": {1}, "15": {15}, "L": "L", "31": {31}, "1-7": set(range(1, 8))}
MONTHS = {"*": None, "1": {1}, "2": {2}, "*/3": {1, 4, 7, 10}, "JAN,JUL": {1, 7}, "12": {12}}
CRON_DOWS = {"*": None, "MON-FRI": {1, 2, 3, 4, 5}, "0": {0}, "SUN,SAT": {0, 6}, "3": {3}}
EVENTBRIDGE_DOWS = {"MON-FRI": {1, 2, 3, 4, 5}, "1": {0}, "7": {6}, "2-6": {1, 2, 3, 4, 5}}


@st.composite
def crons(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    minute, hour = draw(st.sampled_from(sorted(MINUTES))), draw(st.sampled_from(sorted(HOURS)))
    month = draw(st.sampled_from(sorted(MONTHS)))
    if draw(st.booleans()):
        dom, dow = draw(st.sampled_from(sorted(DOMS))), draw(st.sampled_from(sorted(CRON_DOWS)))
        text = f"{minute} {hour} {dom} {month} {dow}"
        sets = {"dom": DOMS[dom], "dow": CRON_DOWS[dow]}
    elif draw(st.booleans()):
        dom = draw(st.sampled_from(sorted(DOMS)))
        text, sets = f"{minute} {hour} {dom} {month} ? *", {"dom": DOMS[dom], "dow": None}
    else:
        dow = draw(st.sampled_from(sorted(EVENTBRIDGE_DOWS)))
        text = f"{minute} {hour} ? {month} {dow} *"
        sets = {"dom": None, "dow": EVENTBRIDGE_DOWS[dow]}
    sets |= {"minute": MINUTES[minute], "hour": HOURS[hour], "month": MONTHS[month]}
    return text, sets


def in_set(value: int, allowed: object) -> bool:
    return allowed is None or value in allowed  # type: ignore[operator]


def matches_cron(wall: datetime, sets: dict[str, object]) -> bool:
    last_day = (date(wall.year + wall.month // 12, wall.month % 12 + 1, 1) - timedelta(days=1)).day
    dom = sets["dom"]
    dom_ok = wall.day == last_day if dom == "L" else in_set(wall.day, dom)
    dow_ok = in_set((wall.weekday() + 1) % 7, sets["dow"])
    # Cron's rule: with both day fields restricted a day matches either.
    day_ok = dom_ok or dow_ok if None not in (dom, sets["dow"]) else dom_ok and dow_ok
    return (
        wall.second == 0
        and wall.microsecond == 0
        and in_set(wall.minute, sets["minute"])
        and in_set(wall.hour, sets["hour"])
        and in_set(wall.month, sets["month"])
        and day_ok
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(cron=crons(), tz=st.sampled_from(ZONES), now=nows)
def test_cron_runs_increase_and_match(
    cron: tuple[str, dict[str, object]], tz: str, now: datetime
) -> None:
    text, sets = cron
    try:
        schedule = parse_schedule(text, tz, now=now)
    except InvalidSchedule:
        assume(False)  # e.g. the 31st of February
        raise
    zone = ZoneInfo(tz)
    results = iterate(schedule, now)
    for moment in results:
        local = moment.astimezone(zone)
        assert local.fold == 0
        assert matches_cron(local.replace(tzinfo=None), sets) or is_transition(moment, zone)
    if tz == "UTC" and "?" not in text:
        # Without DST the runs are exactly croniter's.
        plain = croniter(text, now.replace(tzinfo=None))
        assert [plain.get_next(datetime).replace(tzinfo=UTC) for _ in results] == results


@settings(max_examples=50, deadline=None)
@given(
    offset=st.integers(min_value=-12 * 60, max_value=14 * 60), tz=st.sampled_from(ZONES), now=nows
)
def test_explicit_offsets_win_over_the_event_timezone(offset: int, tz: str, now: datetime) -> None:
    zone = timezone(timedelta(minutes=offset))
    moment = now.astimezone(zone).replace(microsecond=0)
    schedule = parse_schedule(f"at {moment.isoformat()}", tz, now=now)
    assert schedule.run_at == moment
    assert schedule.next_after(moment - timedelta(seconds=1)) == moment


TRANSITIONS = [
    ("Europe/London", utc(2024, 3, 31, 1)),
    ("Europe/London", utc(2024, 10, 27, 1)),
    ("America/New_York", utc(2024, 3, 10, 7)),
    ("America/New_York", utc(2024, 11, 3, 6)),
    ("Australia/Lord_Howe", utc(2024, 4, 6, 15)),
    ("Australia/Lord_Howe", utc(2024, 10, 5, 15, 30)),
]


def runs_at(moment: datetime, zone: ZoneInfo, unit: str, n: int) -> bool:
    """An independent oracle over UTC instants: a run is a matching wall time's first
    occurrence, or the instant clocks jump past a gap that held a matching wall time."""
    local = moment.astimezone(zone)
    if local.fold == 0 and matches_interval(local.replace(tzinfo=None), unit, n):
        return True
    gap_start = (moment - timedelta(minutes=1)).astimezone(zone).replace(tzinfo=None)
    wall = local.replace(tzinfo=None)
    if not is_transition(moment, zone) or wall - gap_start <= timedelta(minutes=1):
        return False  # not the end of a spring-forward gap
    return any(
        matches_interval(gap_start + timedelta(minutes=k), unit, n)
        for k in range(1, int((wall - gap_start) / timedelta(minutes=1)))
    )


@settings(max_examples=100, deadline=None)
@given(
    transition=st.sampled_from(TRANSITIONS),
    unit_n=st.one_of(
        st.tuples(st.just("mins"), st.integers(1, 90)),
        st.tuples(st.just("hours"), st.integers(1, 3)),
    ),
    seconds=st.integers(-3 * 3600, 3 * 3600),
)
def test_around_transitions_no_run_is_skipped_or_doubled(
    transition: tuple[str, datetime], unit_n: tuple[str, int], seconds: int
) -> None:
    tz, instant = transition
    unit, n = unit_n
    zone = ZoneInfo(tz)
    start = instant + timedelta(seconds=seconds)
    results = iterate(parse_schedule(f"every {n} {unit}", tz, now=start), start, 10)
    minute = start.replace(second=0) + timedelta(minutes=1)
    expected = []
    while len(expected) < len(results):
        if runs_at(minute, zone, unit, n):
            expected.append(minute)
        minute += timedelta(minutes=1)
    assert results == expected
