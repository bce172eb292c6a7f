"""When an event's occurrences fire: its schedule with the event's timing policies —
bounds (``start_at``, ``end_at``) and ``jitter`` (DESIGN §9; the DST policy is the
schedule's own, ``app.core.schedules``).

An occurrence is named by its *nominal* time, the schedule's; it fires at that time
plus an offset in ``[0, jitter)`` drawn from the event id and the nominal time, so every
beat, every restart and every preview computes the same one. The due index holds fire
times. ``jitter`` is at most the schedule's shortest gap, so fire times keep the
occurrences' order and each nominal time is found again from its fire time.

Pure: every time comes in as an argument (epoch seconds).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import pairwise

from app.core.clock import from_timestamp
from app.core.schedules import Schedule, parse_schedule

# How many upcoming runs the shortest gap is measured over (jitter's bound).
GAP_SAMPLE = 32


@dataclass(frozen=True)
class Run:
    nominal: int  # the occurrence, by the schedule
    at: int  # when it fires: nominal + the jitter offset


@dataclass(frozen=True)
class Timing:
    schedule: Schedule
    key: str = ""  # the event id: the jitter's seed
    jitter: int = 0
    start_at: int | None = None
    end_at: int | None = None

    def offset(self, nominal: int) -> int:
        """The occurrence's jitter offset, in ``[0, jitter)``."""
        if self.jitter <= 1:
            return 0
        digest = hashlib.blake2b(f"{self.key}/{nominal}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.jitter

    def run(self, nominal: int) -> Run:
        return Run(nominal, nominal + self.offset(nominal))

    def nominal_after(self, moment: int) -> int | None:
        """The first occurrence strictly after ``moment`` within the bounds."""
        if self.start_at is not None:
            moment = max(moment, self.start_at - 1)
        at = self.schedule.next_after(from_timestamp(moment))
        if at is None:
            return None
        nominal = int(at.timestamp())
        if self.end_at is not None and nominal > self.end_at:
            return None
        return nominal

    def following(self, nominal: int) -> Run | None:
        """The run of the occurrence after ``nominal``."""
        after = self.nominal_after(nominal)
        return None if after is None else self.run(after)

    def first_after(self, moment: int) -> Run | None:
        """The first run that fires strictly after ``moment``."""
        nominal = self.nominal_after(moment - self.jitter)
        while nominal is not None:
            run = self.run(nominal)
            if run.at > moment:
                return run
            nominal = self.nominal_after(nominal)
        return None

    def nominal_of(self, at: int) -> int:
        """The occurrence that fires at ``at`` (a due index score). A score no run of
        this timing has (the jitter changed since it was written) stands for itself."""
        if self.jitter <= 1:
            return at
        nominal = self.nominal_after(at - self.jitter)
        while nominal is not None and nominal <= at:
            if self.run(nominal).at == at:
                return nominal
            nominal = self.nominal_after(nominal)
        return at

    def preview(self, now: int, count: int = 5) -> list[Run]:
        runs: list[Run] = []
        run = self.first_after(now)
        while run is not None and len(runs) < count:
            runs.append(run)
            run = self.following(run.nominal)
        return runs


def shortest_gap(schedule: Schedule, now: int) -> int | None:
    """The shortest gap (seconds) between the schedule's next ``GAP_SAMPLE`` runs; None
    when it has fewer than two."""
    runs = [int(t.timestamp()) for t in schedule.preview(from_timestamp(now), GAP_SAMPLE)]
    gaps = [b - a for a, b in pairwise(runs)]
    return min(gaps, default=None)


def timing_of(
    text: str,
    timezone: str,
    *,
    now: int,
    dst: str = "shift",
    key: str = "",
    jitter: int = 0,
    start_at: int | None = None,
    end_at: int | None = None,
) -> Timing:
    """An event's timing from its stored fields (``now`` anchors a relative one-time
    schedule). Raises InvalidSchedule."""
    schedule = parse_schedule(text, timezone, now=from_timestamp(now), dst=dst)
    return Timing(schedule, key if jitter > 1 else "", jitter, start_at, end_at)
