"""What API consumers and beat do to events: create, update, trigger, dispatch due ones.

Each operation takes the store, the publisher and ``now`` as arguments, so views
and the beat scheduler stay thin and tests pin the time.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from redis.exceptions import RedisError

from app.core import metrics
from app.core.clock import from_timestamp
from app.core.errors import Conflict, DispatchError, InvalidSchedule, UidTaken, ValidationError
from app.core.message import validate_arguments
from app.core.publisher import Publisher
from app.core.schedules import Schedule, parse_schedule
from app.core.scripts import Claim
from app.core.store import DueEvent, Event, Instance, InstanceStatus, Store

log = logging.getLogger("sendbeat.beat")

# A beat that was down for long must not walk every lost occurrence of a fine-grained
# schedule one by one; past this many it records the most recent ones and jumps ahead.
MAX_MISSED_PER_CLAIM = 100


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


@dataclass(frozen=True)
class Defaults:
    catchup_window: int = 300
    retries: int = 5


@dataclass
class Created:
    events: list[Event]
    schedules: list[Schedule] = field(default_factory=list)


def uid_taken(uid: str) -> UidTaken:
    """The seed's exact answer to a uid used twice in a project."""
    return UidTaken(
        uid, "Could not create scheduled event.", ["[:uid, :project id] is already taken"]
    )


def new_id() -> str:
    """A random (version 4) UUID as text; a third of ``str(uuid.uuid4())``'s cost,
    which beat pays for every occurrence it claims."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def next_run(schedule: Schedule, now: datetime) -> int:
    """The first run strictly after ``now``; a one-time date already past is a 400."""
    at = schedule.next_after(now)
    if at is None:
        raise InvalidSchedule(f"The schedule {schedule.text!r} lies in the past.")
    return epoch(at)


def build_event(
    spec: EventSpec, project_id: str, now: datetime, defaults: Defaults
) -> tuple[Event, Schedule]:
    """Validate one spec into an Event; raise ValidationError with field-named errors."""
    errors: list[str] = []
    schedule = None
    try:
        schedule = parse_schedule(spec.schedule, spec.timezone, now=now)
        scheduled_at = next_run(schedule, now)
    except InvalidSchedule as exc:
        field_name = "timezone" if "timezone" in exc.message.lower() else "schedule"
        errors.append(f"{field_name}: {exc.message}")
    try:
        validate_arguments(spec.metadata.get("arguments"), path="metadata.arguments")
    except ValidationError as exc:
        errors.extend(exc.errors)
    if errors or schedule is None:
        raise ValidationError(errors[0], errors)
    stamp = epoch(now)
    event = Event(
        id=new_id(),
        uid=spec.uid or new_id(),
        project_id=project_id,
        schedule=spec.schedule,
        timezone=spec.timezone,
        event_type=schedule.event_type,
        metadata=spec.metadata,
        created_at=stamp,
        updated_at=stamp,
        catchup_window=defaults.catchup_window
        if spec.catchup_window is None
        else spec.catchup_window,
        overlap=spec.overlap,
        retries=defaults.retries if spec.retries is None else spec.retries,
        scheduled_at=scheduled_at,
        run_at=scheduled_at if schedule.event_type == "one_time" else None,
    )
    return event, schedule


def create_events(
    store: Store,
    project_id: str,
    specs: list[EventSpec],
    now: datetime,
    defaults: Defaults,
    *,
    batch: bool = True,
) -> Created:
    """Validate every spec first, then store all of them or none."""
    created = Created([])
    errors: list[str] = []
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        where = f"events[{index}]." if batch else ""
        if spec.uid is not None and spec.uid in seen:
            raise uid_taken(spec.uid)
        if spec.uid is not None:
            seen.add(spec.uid)
        try:
            event, schedule = build_event(spec, project_id, now, defaults)
        except ValidationError as exc:
            errors.extend(where + e for e in exc.errors)
            continue
        created.events.append(event)
        created.schedules.append(schedule)
    if errors:
        raise ValidationError("Could not create scheduled event.", errors)
    try:
        store.add_events(created.events)
    except UidTaken as exc:
        raise uid_taken(exc.uid) from None
    return created


def trigger(store: Store, publisher: Publisher, event: Event, now: datetime) -> Instance:
    """Run the event now as an extra, manual occurrence; its regular schedule stays."""
    if event.overlap != "allow" and store.has_active(event.id):
        raise Conflict("Another execution is in progress for this schedule")
    stamp = epoch(now)
    instance = Instance(
        id=new_id(),
        project_id=event.project_id,
        event_id=event.id,
        event_uid=event.uid,
        trigger="manual",
        status=InstanceStatus.QUEUED,
        scheduled_for=stamp,
        enqueued_at=stamp,
    )
    store.add_instance(instance)
    try:
        publisher.publish([instance.id])
    except DispatchError:
        store.discard_instance(instance)
        raise
    return instance


def plan_claim(event: DueEvent, now: int) -> Claim:
    """Decide what to do with one due event: send its latest occurrence if it is within
    the catch-up window, record the older ones as missed, and find the next run."""
    occurrences: tuple[int, ...] = (event.scheduled_at,)
    next_at: int | None = None
    if event.event_type == "repeatable":
        occurrences, next_at = _occurrences(event.schedule, event.timezone, event.scheduled_at, now)
    latest = occurrences[-1]
    on_time = now - latest <= event.catchup_window
    missed = occurrences[:-1] if on_time else occurrences
    send_id = new_id()
    return Claim(
        event_id=event.id,
        at=event.scheduled_at,
        next_at=next_at,
        send=(send_id, latest) if on_time else None,
        missed=tuple((new_id(), at) for at in missed[-MAX_MISSED_PER_CLAIM:]),
        event_uid=event.uid,
        project_id=event.project_id,
        overlap=event.overlap,
    )


@lru_cache(maxsize=4096)
def _occurrences(
    text: str, timezone: str, scheduled_at: int, now: int
) -> tuple[tuple[int, ...], int | None]:
    """Every occurrence from ``scheduled_at`` up to ``now``, and the first run after it.
    Cached: the many events that share a schedule and fall due together cost one walk."""
    schedule = parse_schedule(text, timezone, now=from_timestamp(scheduled_at))
    occurrences = [scheduled_at]
    at = schedule.next_after(from_timestamp(scheduled_at))
    while at is not None and epoch(at) <= now:
        if len(occurrences) > MAX_MISSED_PER_CLAIM:
            at = schedule.next_after(from_timestamp(now))
            break
        occurrences.append(epoch(at))
        at = schedule.next_after(at)
    return tuple(occurrences), None if at is None else epoch(at)


def dispatch_due(
    store: Store,
    publisher: Publisher,
    now: datetime,
    batch: int,
    *,
    batches: int = 1,
    claimer: Executor | None = None,
) -> int:
    """Claim and publish what is due at ``now``: up to ``batches`` claims of ``batch``
    events each; return how many events were due.

    With a ``claimer`` (one thread), beat plans the next batch while Redis runs the
    claim of the one before: Python and Redis work side by side instead of in turn.
    """
    stamp = epoch(now)
    events = store.due_events(stamp, batch * batches)
    queue, parts = publisher.direct_queue, publisher.template_parts
    written: list[tuple[str, str]] = []
    running: Future[list[tuple[str, str]]] | None = None
    sends: dict[str, int] = {}  # instance id -> the occurrence it sends, for metrics
    for start in range(0, len(events), batch):
        claims = [plan_claim(e, stamp) for e in events[start : start + batch]]
        sends.update(c.send for c in claims if c.send is not None)
        if claimer is None:
            written += store.claim(claims, stamp, queue, parts)
            continue
        if running is not None:
            written += running.result()
        running = claimer.submit(store.claim, claims, stamp, queue, parts)
    if running is not None:
        written += running.result()
    if queue is None:
        queued = [iid for iid, status in written if status == InstanceStatus.QUEUED]
        publisher.publish(queued)
        store.forget_waiting(store.keys.pending, queued)
    _record_dispatch(store, sends, written)
    return len(events)


def _record_dispatch(store: Store, sends: dict[str, int], written: list[tuple[str, str]]) -> None:
    """Count what beat wrote and how late each queued occurrence reached the broker."""
    published_at = time.time()
    lateness = [
        published_at - sends[iid]
        for iid, status in written
        if status == InstanceStatus.QUEUED and iid in sends
    ]
    try:
        metrics.record_dispatch(store.redis, store.keys, written, lateness)
    except RedisError as exc:  # a dispatch never fails over its metrics
        log.warning("could not record dispatch metrics: %s", exc)


def release_waiting(store: Store, publisher: Publisher, now: datetime, *, unconfirmed: int) -> int:
    """Publish what waits in Redis and is due: retries whose backoff ran out, executions
    whose worker's lease ran out (it died mid-send), and claims whose publish was never
    confirmed for ``unconfirmed`` seconds (a beat died in between). Workers start a
    record only once, so a second copy of a task is harmless."""
    stamp = epoch(now)
    keys = store.keys
    published = 0
    # A lease ending at ``stamp`` is still held during that second (start.lua takes over
    # only past it), so the running set is swept strictly before ``stamp``.
    for waiting, until in (
        (keys.retry, stamp),
        (keys.running, stamp - 1),
        (keys.pending, stamp - unconfirmed),
    ):
        ids = store.waiting(waiting, until)
        if not ids:
            continue
        if publisher.direct_queue is not None:
            messages = [(iid, publisher.message(iid)) for iid in ids]
            published += store.publish_waiting(waiting, publisher.direct_queue, messages)
        else:
            publisher.publish(ids)
            store.forget_waiting(waiting, ids)
            published += len(ids)
    return published


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


def update_event(store: Store, event: Event, changes: EventChanges, now: datetime) -> Event:
    """Apply the changes; a new schedule or timezone recomputes the next run."""
    stamp = epoch(now)
    errors: list[str] = []
    schedule_changed = changes.schedule is not None or changes.timezone is not None
    if schedule_changed:
        event.schedule = changes.schedule or event.schedule
        event.timezone = changes.timezone or event.timezone
        try:
            schedule = parse_schedule(event.schedule, event.timezone, now=now)
            event.event_type = schedule.event_type
            event.scheduled_at = next_run(schedule, now)
            event.run_at = event.scheduled_at if event.event_type == "one_time" else None
        except InvalidSchedule as exc:
            field_name = "timezone" if "timezone" in exc.message.lower() else "schedule"
            errors.append(f"{field_name}: {exc.message}")
    if changes.metadata is not None:
        try:
            validate_arguments(changes.metadata.get("arguments"), path="metadata.arguments")
        except ValidationError as exc:
            errors.extend(exc.errors)
        event.metadata = changes.metadata
    if errors:
        raise ValidationError(errors[0], errors)
    for name in ("catchup_window", "overlap", "retries"):
        value = getattr(changes, name)
        if value is not None:
            setattr(event, name, value)
    reschedule = schedule_changed
    if schedule_changed and event.status == "completed":
        event.status = "activated"  # a finished one-time event given a new date runs again
    if changes.status == "suspend" and event.status != "suspend":
        suspend(store, event, stamp)
        reschedule = True
    elif changes.status == "active" and event.status == "suspend":
        resume(event, now)
        reschedule = True
    event.updated_at = stamp
    store.save_event(event, reschedule=reschedule)
    if event.status != "activated":
        event.scheduled_at = None
    return event


def suspend(store: Store, event: Event, stamp: int) -> None:
    """Stop the event's runs and cancel its queued, unstarted executions."""
    event.status, event.suspended_at = "suspend", stamp
    store.cancel_queued(event.id, stamp)


def resume(event: Event, now: datetime) -> None:
    """Make the event due again from where it was paused. Beat then applies the
    misfire policy: runs lost while paused are recorded ``missed``, and the latest
    is sent late only when it is within the catch-up window."""
    if event.event_type == "one_time":
        event.scheduled_at = event.run_at
    else:
        schedule = parse_schedule(event.schedule, event.timezone, now=now)
        paused = from_timestamp(event.suspended_at or epoch(now))
        event.scheduled_at = next_run(schedule, paused)
    event.status, event.suspended_at = "activated", None


def set_paused(store: Store, event: Event, paused: bool, now: datetime) -> Event:
    return update_event(store, event, EventChanges(status="suspend" if paused else "active"), now)


def send_message(
    store: Store,
    publisher: Publisher,
    project_id: str,
    arguments: dict[str, Any],
    uid: str | None,
    now: datetime,
) -> Instance:
    """Queue one immediate message (trigger ``api``); a reused uid is refused."""
    validate_arguments(arguments)
    stamp = epoch(now)
    instance = Instance(
        id=new_id(),
        project_id=project_id,
        trigger="api",
        status=InstanceStatus.QUEUED,
        scheduled_for=stamp,
        enqueued_at=stamp,
        payload=arguments,
    )
    if uid is not None and not store.reserve_message_uid(project_id, uid, instance.id):
        raise UidTaken(uid, f"Uid {uid} already exists. Assuming message duplication.")
    store.add_instance(instance)
    try:
        publisher.publish([instance.id])
    except DispatchError:
        store.discard_instance(instance)
        if uid is not None:
            store.release_message_uid(project_id, uid)
        raise
    return instance
