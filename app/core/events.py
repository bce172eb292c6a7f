"""What API consumers do to events and executions: create, update, pause, resume,
delete, trigger, and send a message now. (Beat's half is ``app.core.dispatch``.)

Each operation takes the store and the publisher as arguments, so views stay thin.
The time is the store's, Redis' clock (pinned in tests); every change to an existing
event is one atomic edit (``Store.edit_event``), so requests racing each other or beat
never undo one another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from app.core.dispatch import MAX_MISSED_PER_CLAIM, runs_due
from app.core.errors import (
    Conflict,
    DispatchError,
    EventGone,
    InvalidSchedule,
    UidTaken,
    ValidationError,
)
from app.core.keys import Keys
from app.core.message import DEFAULT_LIMITS, MessageLimits, validate_arguments
from app.core.publisher import Publisher
from app.core.records import Event, Instance, InstanceStatus, new_id
from app.core.scripts import Enqueued
from app.core.store import Edit, Store
from app.core.timing import Run, Timing, shortest_gap, timing_of


@dataclass(frozen=True)
class EventSpec:
    """A create_scheduled_event request, parsed."""

    schedule: str
    metadata: dict[str, Any]
    uid: str | None = None
    timezone: str = "UTC"
    catchup_window: int | None = None
    overlap: str = "skip"
    retries: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    jitter: int = 0
    start_at: int | None = None
    end_at: int | None = None
    max_runs: int | None = None
    dst: str = "shift"


@dataclass(frozen=True)
class Defaults:
    catchup_window: int = 300
    retries: int = 5
    limits: MessageLimits = DEFAULT_LIMITS  # of the events' send_message arguments


@dataclass
class Created:
    events: list[Event]
    now: datetime
    timings: list[Timing] = field(default_factory=list)


def uid_taken(uid: str) -> UidTaken:
    """The seed's exact answer to a uid used twice in a project."""
    return UidTaken(
        uid, "Could not create scheduled event.", ["[:uid, :project id] is already taken"]
    )


def message_uid_taken(uid: str) -> UidTaken:
    """A send_message uid used before in the project."""
    return UidTaken(uid, f"Uid {uid} already exists. Assuming message duplication.")


def in_progress() -> Conflict:
    """A manual trigger while an occurrence runs, with overlap ``skip``."""
    return Conflict("Another execution is in progress for this schedule")


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def past(text: str) -> InvalidSchedule:
    return InvalidSchedule(f"The schedule {text!r} lies in the past.")


ONLY_REPEATING = ("jitter", "start_at", "end_at", "max_runs")


def timing_for(event: Event, now: datetime) -> Timing:
    """The event's timing (its schedule was validated when it was written)."""
    return timing_of(event.schedule, event.timezone, now=epoch(now), dst=event.dst,
                     key=event.id, jitter=event.jitter, start_at=event.start_at,
                     end_at=event.end_at)  # fmt: skip


def place(event: Event, now: datetime) -> tuple[Timing | None, list[str]]:
    """Read the event's schedule with its timing policies, check them, and set its
    ``event_type`` and ``scheduled_at`` (and a one-time event's ``run_at``): the first
    run that fires after ``now``. Returns the timing, or None and what is wrong."""
    stamp = epoch(now)
    try:
        timing = timing_for(event, now)
    except InvalidSchedule as exc:
        field_name = "timezone" if "timezone" in exc.message.lower() else "schedule"
        return None, [f"{field_name}: {exc.message}"]
    schedule = timing.schedule
    once = schedule.event_type == "one_time"
    errors = [
        f"{name}: applies to repeating schedules; {schedule.text!r} runs once."
        for name in ONLY_REPEATING
        if once and getattr(event, name)
    ]
    if event.start_at is not None and event.end_at is not None and event.end_at <= event.start_at:
        errors.append("end_at: must be after start_at.")
    if event.jitter and not once and not errors:
        gap = shortest_gap(schedule, stamp)
        if gap is not None and event.jitter > gap:
            errors.append(f"jitter: at most the schedule's shortest interval, {gap} seconds; "
                          f"got {event.jitter}.")  # fmt: skip
    if errors:
        return None, errors
    run = timing.first_after(stamp)
    if run is None:
        if once:
            return None, [f"schedule: {past(schedule.text).message}"]
        return None, ["end_at: the schedule has no run between now and end_at."]
    event.event_type = schedule.event_type
    event.scheduled_at = run.at
    event.run_at = run.at if once else None
    return timing, []


def build_event(
    spec: EventSpec, project_id: str, now: datetime, defaults: Defaults, keys: Keys
) -> tuple[Event, Timing]:
    """Validate one spec into an Event; raise ValidationError with field-named errors.
    Its id falls in the shard of its uid (``keys``), so the event and its uid's index
    share one slot."""
    stamp = epoch(now)
    uid = spec.uid or new_id()
    event = Event(
        id=keys.new_id(keys.uid_shard(project_id, uid)),
        uid=uid,
        project_id=project_id,
        schedule=spec.schedule,
        timezone=spec.timezone,
        event_type="repeatable",
        metadata=spec.metadata,
        created_at=stamp,
        updated_at=stamp,
        catchup_window=defaults.catchup_window
        if spec.catchup_window is None
        else spec.catchup_window,
        overlap=spec.overlap,
        retries=defaults.retries if spec.retries is None else spec.retries,
        labels=dict(spec.labels),
        alerts=list(spec.alerts),
        jitter=spec.jitter,
        start_at=spec.start_at,
        end_at=spec.end_at,
        max_runs=spec.max_runs,
        dst=spec.dst,
    )
    timing, errors = place(event, now)
    try:
        validate_arguments(
            spec.metadata.get("arguments"), path="metadata.arguments", limits=defaults.limits
        )
    except ValidationError as exc:
        errors.extend(exc.errors)
    if errors or timing is None:
        raise ValidationError(errors[0], errors)
    return event, timing


def create_events(
    store: Store,
    project_id: str,
    specs: list[EventSpec],
    defaults: Defaults,
    *,
    batch: bool = True,
) -> Created:
    """Validate every spec first, then store all of them or none."""
    now = store.now()
    created = Created([], now)
    errors: list[str] = []
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        where = f"events[{index}]." if batch else ""
        if spec.uid is not None and spec.uid in seen:
            raise uid_taken(spec.uid)
        if spec.uid is not None:
            seen.add(spec.uid)
        try:
            event, timing = build_event(spec, project_id, now, defaults, store.keys)
        except ValidationError as exc:
            errors.extend(where + e for e in exc.errors)
            continue
        created.events.append(event)
        created.timings.append(timing)
    if errors:
        raise ValidationError("Could not create scheduled event.", errors)
    try:
        store.add_events(created.events)
    except UidTaken as exc:
        raise uid_taken(exc.uid) from None
    return created


def trigger(
    store: Store, publisher: Publisher, event: Event, *, skip_next: bool = False
) -> Instance:
    """Run the event now as an extra, manual occurrence; its regular schedule stays, or
    with ``skip_next`` its next occurrence is passed over (no record of its own: the
    manual execution stands for it) and the one after it is the next to run. The
    overlap check and the record are one step: of two racing triggers, one wins."""
    if skip_next and event.status != "activated":
        state = "paused" if event.status == "suspend" else event.status
        raise ValidationError(f"skip_next: the event is {state}: it has no next run to skip.")
    instance = Instance(
        id=store.keys.new_id(store.keys.shard_of(event.id)),  # in its event's shard
        project_id=event.project_id,
        event_id=event.id,
        event_uid=event.uid,
        trigger="manual",
        status=InstanceStatus.QUEUED,
        scheduled_for=0,
        enqueued_at=0,
    )
    outcome = _enqueue(store, publisher, instance)
    if outcome is Enqueued.CONFLICT:
        raise in_progress()
    if outcome is Enqueued.GONE:
        raise EventGone()
    if skip_next:
        store.edit_event(event.project_id, event.id, lambda current: _skipped_next(current, store))
    return instance


def _skipped_next(event: Event, store: Store) -> Edit:
    """The event with its next occurrence passed over: due at the one after it (a
    one-time event, or one at its end, completes). The manual execution stands for it:
    the skipped occurrence gets no record of its own."""
    if event.status != "activated" or event.scheduled_at is None:
        return Edit(event)  # paused or completed meanwhile: nothing to skip
    now = store.now()
    following = None
    if event.event_type == "repeatable":
        timing = timing_for(event, now)
        following = timing.following(timing.nominal_of(event.scheduled_at))
    if following is None:
        event.status = "completed"
    else:
        event.scheduled_at = following.at
    event.updated_at = epoch(now)
    return Edit(event, reschedule=True)


def send_message(
    store: Store,
    publisher: Publisher,
    project_id: str,
    arguments: dict[str, Any],
    uid: str | None,
    *,
    limits: MessageLimits = DEFAULT_LIMITS,
) -> Instance:
    """Queue one immediate message (trigger ``api``); a reused uid is refused."""
    validate_arguments(arguments, limits=limits)
    keys = store.keys
    instance = Instance(
        # In the shard of its uid, whose index keeps the uid unique (any without one).
        id=keys.new_id(keys.uid_shard(project_id, uid)) if uid else new_id(),
        project_id=project_id,
        trigger="api",
        status=InstanceStatus.QUEUED,
        scheduled_for=0,
        enqueued_at=0,
        payload=arguments,
    )
    if _enqueue(store, publisher, instance, uid) is Enqueued.TAKEN:
        raise message_uid_taken(str(uid))
    return instance


def _enqueue(
    store: Store, publisher: Publisher, instance: Instance, uid: str | None = None
) -> Enqueued:
    """Record the execution and hand it to the broker. When the broker is the store's
    Redis, one script does both; otherwise the record waits in {p}:pending until the
    publish is confirmed (a web that dies in between leaves it for beat to publish), and
    a publish that fails takes the record and its uid back."""
    queue = publisher.direct_queue
    tasks = publisher.lua_arguments
    outcome, now_ms = store.enqueue(instance, queue=queue, tasks=tasks, uid=uid)
    if outcome is not Enqueued.QUEUED:
        return outcome
    instance.scheduled_for = instance.enqueued_at = now_ms // 1000
    if queue is None:
        try:
            publisher.publish([instance.id])
        except DispatchError:
            store.discard(instance, uid)
            raise
        store.forget_pending([instance.id])
    return outcome


@dataclass(frozen=True)
class EventChanges:
    """An update_scheduled_event request: only the fields given change."""

    schedule: str | None = None
    timezone: str | None = None
    metadata: dict[str, Any] | None = None
    status: str | None = None  # "active" or "suspend"
    catchup_window: int | None = None
    overlap: str | None = None
    retries: int | None = None
    labels: dict[str, str] | None = None  # the whole map: {} removes every label
    alerts: list[dict[str, Any]] | None = None  # the whole list: [] removes every alert
    jitter: int | None = None
    start_at: int | None = None
    end_at: int | None = None
    max_runs: int | None = None
    dst: str | None = None
    cleared: frozenset[str] = frozenset()  # of start_at, end_at, max_runs: given as null
    catchup: str | None = None  # with status "active": CATCHUP_POLICIES

    def changes_timing(self) -> bool:
        timing = ("schedule", "timezone", "jitter", "start_at", "end_at", "dst")
        given = any(getattr(self, name) is not None for name in timing)
        return given or bool(self.cleared & {"start_at", "end_at"})


def update_event(
    store: Store, event: Event, changes: EventChanges, *, limits: MessageLimits = DEFAULT_LIMITS
) -> Event:
    """Apply the changes; a new schedule or timezone recomputes the next run."""
    new_id = partial(store.keys.new_id, store.keys.shard_of(event.id))  # the event's shard
    return _edit(
        store, event, lambda current: _changed(current, changes, store.now(), limits, new_id)
    )


def set_paused(store: Store, event: Event, paused: bool, *, catchup: str | None = None) -> Event:
    """Pause, or resume with a ``catchup`` policy (CATCHUP_POLICIES; "none" by default)."""
    status = "suspend" if paused else "active"
    return update_event(store, event, EventChanges(status=status, catchup=catchup))


def delete_event(store: Store, event: Event) -> None:
    """Remove the event and cancel its executions: those not started at once, one being
    sent before its next recipient (a send in progress finishes only its current one)."""
    _edit(store, event, lambda current: Edit(current, delete=True, cancel="deleted"))


def _edit(store: Store, event: Event, decide: Callable[[Event], Edit]) -> Event:
    edit = store.edit_event(event.project_id, event.id, decide)
    if edit is None:
        raise EventGone()
    updated = edit.event
    if updated.status != "activated":
        updated.scheduled_at = None
    return updated


def _changed(
    event: Event,
    changes: EventChanges,
    now: datetime,
    limits: MessageLimits,
    new_id: Callable[[], str],
) -> Edit:
    """What ``changes`` make of ``event`` (as read just now), validated; ``new_id`` makes
    ids for the records a resume writes."""
    stamp = epoch(now)
    errors: list[str] = []
    if changes.catchup is not None and changes.status != "active":
        errors.append('catchup: give it with "status": "active" (it says what a resume sends).')
    for name in ("schedule", "timezone", "jitter", "start_at", "end_at", "max_runs", "dst"):
        value = getattr(changes, name)
        if value is not None:
            setattr(event, name, value)
    for name in changes.cleared:
        setattr(event, name, None)
    schedule_changed = changes.changes_timing()
    if schedule_changed:
        _, errors = place(event, now)
        event.resume_at = None  # a paused event with a new schedule resumes from it
    if changes.metadata is not None:
        try:
            arguments = changes.metadata.get("arguments")
            validate_arguments(arguments, path="metadata.arguments", limits=limits)
        except ValidationError as exc:
            errors.extend(exc.errors)
        event.metadata = changes.metadata
    if errors:
        raise ValidationError(errors[0], errors)
    for name in ("catchup_window", "overlap", "retries", "labels", "alerts"):
        value = getattr(changes, name)
        if value is not None:
            setattr(event, name, value)
    reschedule, park, cancel = schedule_changed, False, None
    caught_up = CaughtUp()
    if schedule_changed and event.status == "completed":
        # A finished event given a new schedule runs again, its max_runs counted afresh.
        event.status, event.runs = "activated", 0
    # Pausing or resuming a completed event changes nothing: its one run is over.
    if changes.status == "suspend" and event.status == "activated":
        event.status, event.suspended_at = "suspend", stamp
        # Keep where the schedule stood, unless this very change gives it a new one.
        park, cancel = not schedule_changed, "paused"
    elif changes.status == "active" and event.status == "suspend":
        caught_up = resume(event, now, changes.catchup or "none", new_id)
        reschedule = True
    event.updated_at = stamp
    return Edit(event, reschedule=reschedule and not park, park=park, cancel=cancel,
                replay=caught_up.replay, missed=caught_up.missed)  # fmt: skip


CATCHUP_POLICIES = ("none", "latest", "all")
CATCHUP_LIMIT = 100  # occurrences a resume with catchup "all" sends; older ones are missed
BACKFILL_LIMIT = 1000  # occurrences one backfill may queue
SENT_BY_CATCHUP = {"none": 0, "latest": 1, "all": CATCHUP_LIMIT}  # at most, of a paused period


@dataclass(frozen=True)
class CaughtUp:
    """What a resume does about the occurrences that fell due while the event was paused:
    the ones it sends (replay entries) and the ones it records missed."""

    replay: tuple[str, ...] = ()
    missed: tuple[tuple[str, int], ...] = ()


def resume(event: Event, now: datetime, catchup: str, new_id: Callable[[], str]) -> CaughtUp:
    """Make the event due again at its first run after ``now``. The occurrences that
    fell due while it was paused (from where it stood when paused: its first occurrence
    not yet claimed) are recorded ``missed``, but for what ``catchup`` sends: ``latest``
    the last of them, ``all`` every one (the last CATCHUP_LIMIT), in order, one at a time
    (replay.lua). After a very long pause the records stop at MAX_MISSED_PER_CLAIM."""
    stamp = epoch(now)
    timing = timing_for(event, now)
    if event.event_type == "one_time":
        at = event.run_at or stamp
        due: tuple[Run, ...] = (Run(at, at),) if at <= stamp else ()
        following = None if due else Run(at, at)
    else:
        first = event.resume_at
        if first is None:
            run = timing.first_after(event.suspended_at or stamp)
            first = None if run is None else run.at
        due, following = (), None
        if first is not None and first <= stamp:
            keep = MAX_MISSED_PER_CLAIM + SENT_BY_CATCHUP[catchup]
            due, following = runs_due(event, first, stamp, keep)
        elif first is not None:
            following = timing.run(timing.nominal_of(first))
    sent = SENT_BY_CATCHUP[catchup]
    send = due[len(due) - sent :] if sent else ()
    missed = due[: len(due) - len(send)][-MAX_MISSED_PER_CLAIM:]
    if following is None:
        event.status, event.scheduled_at = "completed", None
    else:
        event.status, event.scheduled_at = "activated", following.at
    event.suspended_at, event.resume_at = None, None
    return CaughtUp(
        replay=tuple(f"schedule {event.overlap} {run.nominal} {run.at}" for run in send),
        missed=tuple((new_id(), run.at) for run in missed),
    )


def backfill(
    store: Store, event: Event, start: datetime, end: datetime, overlap: str | None = None
) -> int:
    """Queue the occurrences of ``[start, end]`` (a past range) to run now, in order,
    one at a time (``trigger: "backfill"``; with overlap ``skip`` each waits for the one
    before it, and for any other execution of the event, to end). Returns how many."""
    now = store.now()
    if end < start:
        raise ValidationError("end: must not be before start.")
    if end > now:
        raise ValidationError("end: a backfill covers a past range; end is after now.")
    if event.event_type == "one_time":
        raise ValidationError(f"uid: {event.schedule!r} runs once: there is nothing to backfill.")
    # The range is the caller's: the event's own bounds and jitter do not apply to it.
    timing = timing_of(event.schedule, event.timezone, now=epoch(now), dst=event.dst)
    nominals: list[int] = []
    nominal = timing.nominal_after(epoch(start) - 1)
    while nominal is not None and nominal <= epoch(end):
        if len(nominals) == BACKFILL_LIMIT:
            raise ValidationError(
                f"start: the range holds more than {BACKFILL_LIMIT} occurrences; backfill at "
                f"most {BACKFILL_LIMIT} at a time."
            )
        nominals.append(nominal)
        nominal = timing.nominal_after(nominal)
    entries = tuple(f"backfill {overlap or event.overlap} {n} {n}" for n in nominals)

    def queue(current: Event) -> Edit:
        if current.status == "suspend":
            raise ValidationError("uid: the event is paused; resume it to backfill.")
        return Edit(current, replay=entries)

    if entries:
        _edit(store, event, queue)
    return len(entries)


BULK_ACTIONS = ("pause", "resume", "trigger", "delete")


def bulk_action(
    store: Store, publisher: Publisher, project_id: str, selector: dict[str, str], action: str,
    *, limit: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Do ``action`` to every event of the project carrying all the pairs of the label
    ``selector``, oldest first: each one an edit of its own (atomic per event, as the
    single-event call is), each reported with the event's ``status`` after it ("deleted"
    for a delete, the execution's "queued" and its ``execution`` id for a trigger), or the
    ``error`` that event met. More than ``limit`` matches is a 400 and changes nothing."""
    events, total = store.list_events(project_id, 0, limit + 1, labels=selector)
    if total > limit:
        raise ValidationError(
            f"labels: {total} events match; at most {limit} per bulk call. "
            "Narrow the selector with more pairs."
        )
    return [_bulk_one(store, publisher, event, action) for event in events]


def _bulk_one(store: Store, publisher: Publisher, event: Event, action: str) -> dict[str, Any]:
    result: dict[str, Any] = {"uid": event.uid, "id": event.id}
    try:
        if action in ("pause", "resume"):
            result["status"] = set_paused(store, event, action == "pause").status
        elif action == "trigger":
            instance = trigger(store, publisher, event)
            result.update(status=str(instance.status), execution=instance.id)
        else:
            delete_event(store, event)
            result["status"] = "deleted"
    except EventGone:
        result["error"] = "The event was deleted meanwhile."
    except (Conflict, DispatchError) as exc:
        result["error"] = exc.message
    return result
