"""Timing policies (issue 12), on a pinned clock: jitter, bounds, the DST policies, and
how beat plans a claim with them (app.core.timing, app.core.dispatch.plan_claim)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.core.dispatch import plan_claim
from app.core.records import DueEvent
from app.core.schedules import parse_schedule
from app.core.timing import Run, Timing, shortest_gap, timing_of


def epoch(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp())  # type: ignore[misc]


NOW = epoch(2026, 12, 1, 10, 0, 0)


def minutely(jitter: int = 0, key: str = "event-1", **bounds: int | None) -> Timing:
    return timing_of("every 1 mins", "UTC", now=NOW, key=key, jitter=jitter, **bounds)  # type: ignore[arg-type]


# -- jitter ---------------------------------------------------------------------------------


def test_jitter_is_deterministic_per_event_and_occurrence_and_within_range() -> None:
    timing = minutely(jitter=45)
    runs = timing.preview(NOW, 200)
    offsets = [run.at - run.nominal for run in runs]
    first = runs[0].nominal  # NOW's own occurrence when its offset puts it after NOW
    assert first == (NOW if offsets[0] else NOW + 60)
    assert [run.nominal for run in runs] == [first + 60 * n for n in range(200)]
    assert all(0 <= offset < 45 for offset in offsets)
    assert len(set(offsets)) > 20  # spread, not one fixed delay
    assert minutely(jitter=45).preview(NOW, 200) == runs  # every beat, every restart
    other = minutely(jitter=45, key="event-2").preview(NOW, 200)
    assert [r.at for r in other] != [r.at for r in runs]  # events spread apart
    assert minutely().preview(NOW, 3) == [Run(NOW + 60 * n, NOW + 60 * n) for n in (1, 2, 3)]


def test_a_fire_time_names_its_occurrence_again() -> None:
    timing = minutely(jitter=59)
    for run in timing.preview(NOW, 100):
        assert timing.nominal_of(run.at) == run.nominal
        assert timing.following(run.nominal) == timing.run(run.nominal + 60)
    # A score written before the jitter changed stands for itself.
    assert timing.nominal_of(NOW + 7) in (NOW + 7, NOW)


def test_first_after_counts_a_run_whose_occurrence_passed_but_which_fires_later() -> None:
    timing = minutely(jitter=59)
    run = next(r for r in timing.preview(NOW, 50) if r.at - r.nominal >= 2)
    assert timing.first_after(run.nominal) == run  # its time passed; it has not fired yet
    assert timing.first_after(run.at) == timing.run(run.nominal + 60)


def test_jitter_may_not_exceed_the_shortest_interval() -> None:
    at = epoch(2026, 12, 1)
    assert shortest_gap(parse_schedule("every 5 mins", now=datetime.now(UTC)), at) == 300
    weekdays = parse_schedule("0 9,17 * * MON-FRI", now=datetime.now(UTC))
    assert shortest_gap(weekdays, at) == 8 * 3600


# -- bounds ---------------------------------------------------------------------------------


def test_bounds_at_their_edges() -> None:
    start, end = NOW + 180, NOW + 360  # both on occurrences
    timing = minutely(start_at=start, end_at=end)
    assert [r.nominal for r in timing.preview(NOW, 10)] == [start, start + 60, start + 120, end]
    assert timing.first_after(end) is None
    assert timing.following(end) is None
    between = minutely(start_at=start + 1, end_at=end - 1)
    assert [r.nominal for r in between.preview(NOW, 10)] == [start + 60, start + 120]
    # A bound holds for the occurrence, whatever its jitter: the last may fire after end_at.
    jittered = minutely(jitter=59, start_at=start, end_at=end)
    assert [r.nominal for r in jittered.preview(NOW, 10)] == [start, start + 60, start + 120, end]


# -- DST policies ---------------------------------------------------------------------------

# (zone, schedule, from, policy) -> the runs in UTC
DST_CASES = [
    # London springs forward 2026-03-29 01:00 GMT -> 02:00 BST: 01:30 does not exist.
    ("Europe/London", "every day at 1:30am", (2026, 3, 28), "shift",
     ["2026-03-28T01:30", "2026-03-29T01:00", "2026-03-30T00:30"]),
    ("Europe/London", "every day at 1:30am", (2026, 3, 28), "skip",
     ["2026-03-28T01:30", "2026-03-30T00:30", "2026-03-31T00:30"]),
    ("Europe/London", "every day at 1:30am", (2026, 3, 28), "twice",
     ["2026-03-28T01:30", "2026-03-29T01:00", "2026-03-30T00:30"]),
    # London falls back 2026-10-25 02:00 BST -> 01:00 GMT: 01:00-02:00 happens twice.
    ("Europe/London", "*/30 1 * * *", (2026, 10, 25), "shift",
     ["2026-10-25T00:30", "2026-10-26T01:00", "2026-10-26T01:30", "2026-10-27T01:00"]),
    ("Europe/London", "*/30 1 * * *", (2026, 10, 25), "skip",
     ["2026-10-25T00:30", "2026-10-26T01:00", "2026-10-26T01:30", "2026-10-27T01:00"]),
    ("Europe/London", "*/30 1 * * *", (2026, 10, 25), "twice",
     ["2026-10-25T00:30", "2026-10-25T01:00", "2026-10-25T01:30", "2026-10-26T01:00"]),
    # New York springs forward 2026-03-08 02:00 EST -> 03:00 EDT.
    ("America/New_York", "30 2 * * *", (2026, 3, 7), "shift",
     ["2026-03-07T07:30", "2026-03-08T07:00", "2026-03-09T06:30"]),
    ("America/New_York", "30 2 * * *", (2026, 3, 7), "skip",
     ["2026-03-07T07:30", "2026-03-09T06:30", "2026-03-10T06:30"]),
    # New York falls back 2026-11-01 02:00 EDT -> 01:00 EST.
    ("America/New_York", "every 20 mins", (2026, 11, 1, 5, 10), "shift",
     ["2026-11-01T05:20", "2026-11-01T05:40", "2026-11-01T07:00"]),
    ("America/New_York", "every 20 mins", (2026, 11, 1, 5, 10), "twice",
     ["2026-11-01T05:20", "2026-11-01T05:40", "2026-11-01T06:00", "2026-11-01T06:20",
      "2026-11-01T06:40", "2026-11-01T07:00"]),
    # Lord Howe moves by half an hour: back 2026-04-05 02:00 (+11) -> 01:30 (+10:30) ...
    ("Australia/Lord_Howe", "every day at 1:45am", (2026, 4, 4), "shift",
     ["2026-04-04T14:45", "2026-04-05T15:15"]),
    ("Australia/Lord_Howe", "every day at 1:45am", (2026, 4, 4), "twice",
     ["2026-04-04T14:45", "2026-04-04T15:15", "2026-04-05T15:15"]),
    # ... and forward 2026-10-04 02:00 (+10:30) -> 02:30 (+11): 02:15 does not exist.
    ("Australia/Lord_Howe", "every day at 2:15am", (2026, 10, 2), "shift",
     ["2026-10-02T15:45", "2026-10-03T15:30", "2026-10-04T15:15"]),
    ("Australia/Lord_Howe", "every day at 2:15am", (2026, 10, 2), "skip",
     ["2026-10-02T15:45", "2026-10-04T15:15", "2026-10-05T15:15"]),
]  # fmt: skip


@pytest.mark.parametrize(("zone", "text", "start", "dst", "expected"), DST_CASES)
def test_each_dst_policy(
    zone: str, text: str, start: tuple[int, ...], dst: str, expected: list[str]
) -> None:
    moment = datetime(*start, tzinfo=UTC)  # type: ignore[misc]
    schedule = parse_schedule(text, zone, now=moment, dst=dst)
    runs = schedule.preview(moment, len(expected))
    assert [r.strftime("%Y-%m-%dT%H:%M") for r in runs] == expected


def test_twice_runs_a_repeated_time_twice_and_every_other_time_once() -> None:
    moment = datetime(2026, 10, 20, tzinfo=UTC)
    twice = parse_schedule("every 15 mins", "Europe/London", now=moment, dst="twice")
    shift = parse_schedule("every 15 mins", "Europe/London", now=moment, dst="shift")
    runs, once = twice.preview(moment, 2000), shift.preview(moment, 2000)
    assert len(set(runs)) == len(runs) and runs == sorted(runs)
    extra = sorted(set(runs[: len(once) + 4]) - set(once))
    assert [r.strftime("%H:%M") for r in extra] == ["01:00", "01:15", "01:30", "01:45"]


# -- beat's claim ---------------------------------------------------------------------------


def due(at: int, **fields: object) -> DueEvent:
    base: dict[str, object] = dict(id="event-1", scheduled_at=at, schedule="every 1 mins",
                                   timezone="UTC", event_type="repeatable", catchup_window=300,
                                   uid="u", project_id="p", overlap="skip")  # fmt: skip
    return DueEvent(**{**base, **fields})  # type: ignore[arg-type]


def test_a_jittered_claim_sends_at_the_fire_time_and_keeps_the_occurrence() -> None:
    timing = minutely(jitter=50)
    run = next(r for r in timing.preview(NOW, 50) if r.at != r.nominal)
    claim = plan_claim(due(run.at, jitter=50), run.at + 1, new_id=lambda: "i")
    assert claim.send == ("i", run.at)
    assert claim.nominal == run.nominal
    assert claim.next_at == timing.run(run.nominal + 60).at
    plain = plan_claim(due(NOW), NOW, new_id=lambda: "i")
    assert (plain.nominal, plain.next_at) == (None, NOW + 60)


def test_a_claim_past_end_at_completes_the_event_and_max_runs_reaches_the_script() -> None:
    claim = plan_claim(due(NOW, end_at=NOW + 59), NOW, new_id=lambda: "i")
    assert claim.send == ("i", NOW) and claim.next_at is None  # the last: then completed
    counted = plan_claim(due(NOW, max_runs=2), NOW, new_id=lambda: "i")
    assert counted.max_runs == 2 and counted.record(1).split("\x1f")[-1] == "2"


def test_after_an_outage_jittered_runs_are_missed_once_each() -> None:
    timing = minutely(jitter=30)
    later = NOW + 3600
    claim = plan_claim(due(timing.run(NOW).at, jitter=30), later,
                       new_id=iter(str(n) for n in range(10_000)).__next__)  # fmt: skip
    fired = [r.at for n in range(62) if (r := timing.run(NOW + 60 * n)).at <= later]
    assert claim.send is not None and claim.send[1] == fired[-1]
    assert [at for _, at in claim.missed] == fired[:-1]
    assert len(set(fired)) == len(fired) >= 60
