"""Beat's half of the engine: claim the occurrences that are due and hand them, with
the executions that wait in Redis (retries, lost leases, unconfirmed publishes), to
the broker.

Every decision is taken by the Redis clock: the due read returns the server's time,
and beat plans its claims by that time, whatever its own clock says.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from functools import lru_cache, partial

from redis.exceptions import RedisError

from app.core import metrics
from app.core.errors import DispatchError
from app.core.publisher import Publisher
from app.core.records import DueEvent, Event, InstanceStatus, new_id
from app.core.scripts import Claim
from app.core.store import Store
from app.core.timing import Run, Timing, timing_of
from app.core.webhook import DEFAULT_ALERT_KINDS

log = logging.getLogger("sendbeat.beat")

# A beat that was down for long writes at most this many missed records per event and
# claim (the most recent ones): the cap bounds what is written, never what is sent.
MAX_MISSED_PER_CLAIM = 100


@dataclass(frozen=True)
class Dispatched:
    due: int  # events that were due
    now: float  # Redis' time of the due read (epoch seconds)


def plan_claim(event: DueEvent, now: int, new_id: Callable[[], str] = new_id) -> Claim:
    """Decide what to do with one due event: send its latest occurrence if it is within
    the catch-up window, record the older ones as missed, and find the next run.
    ``new_id`` makes the executions' ids (in the event's shard)."""
    runs: tuple[Run, ...] = (Run(event.scheduled_at, event.scheduled_at),)
    following: Run | None = None
    if event.event_type == "repeatable":
        runs, following = runs_due(event, event.scheduled_at, now)
    latest = runs[-1]
    on_time = now - latest.at <= event.catchup_window
    missed = runs[:-1] if on_time else runs
    return Claim(
        event_id=event.id,
        at=event.scheduled_at,
        next_at=None if following is None else following.at,
        send=(new_id(), latest.at) if on_time else None,
        missed=tuple((new_id(), run.at) for run in missed[-MAX_MISSED_PER_CLAIM:]),
        event_uid=event.uid,
        project_id=event.project_id,
        overlap=event.overlap,
        nominal=latest.nominal if on_time and latest.nominal != latest.at else None,
        max_runs=event.max_runs,
    )


def runs_due(
    event: DueEvent | Event, first: int, now: int, keep: int = MAX_MISSED_PER_CLAIM + 1
) -> tuple[tuple[Run, ...], Run | None]:
    """``occurrences`` of a repeating event's timing, from its run that fires at
    ``first``; events without jitter share their walks (the jitter's seed is the id)."""
    key = event.id if event.jitter > 1 else ""
    return occurrences(event.schedule, event.timezone, event.dst, key, event.jitter,
                       event.start_at, event.end_at, first, now, keep)  # fmt: skip


@lru_cache(maxsize=4096)
def occurrences(
    text: str,
    timezone: str,
    dst: str,
    key: str,
    jitter: int,
    start_at: int | None,
    end_at: int | None,
    scheduled_at: int,
    now: int,
    keep: int = MAX_MISSED_PER_CLAIM + 1,
) -> tuple[tuple[Run, ...], Run | None]:
    """The runs from the one that fires at ``scheduled_at`` up to ``now`` — all of them,
    or after a long outage only the latest ``keep`` — and the first to fire after
    ``now``. Cached: the many events that share a schedule (and no jitter) and fall due
    together cost one walk."""
    timing = timing_of(text, timezone, now=scheduled_at, dst=dst, key=key, jitter=jitter,
                       start_at=start_at, end_at=end_at)  # fmt: skip
    first = timing.run(timing.nominal_of(scheduled_at))
    if first.at != scheduled_at:  # a score no run has (the timing changed): it stands alone
        first = Run(scheduled_at, scheduled_at)
    kept, after, done = _walk(timing, first, now, keep, budget=2 * keep)
    if done:
        return tuple(kept), after
    # A long outage: rather than walk all of it, walk the end of it, reaching further
    # back (twice as far each time) until it holds enough occurrences.
    span = (kept[1].nominal - kept[0].nominal) * keep
    while True:
        start = first
        if now - span > scheduled_at:
            nominal = timing.nominal_after(now - span - 1)
            if nominal is None or timing.run(nominal).at > now:
                span *= 2
                continue
            start = timing.run(nominal)
        kept, after, _ = _walk(timing, start, now, keep)
        if len(kept) == keep or start == first:
            return tuple(kept), after
        span *= 2


def _walk(
    timing: Timing, first: Run, now: int, keep: int, budget: int | None = None
) -> tuple[deque[Run], Run | None, bool]:
    """Walk the runs from ``first`` (one of them) that fire by ``now``, keeping the last
    ``keep``; stop after ``budget`` steps. Returns (kept, the first run after ``now``,
    whether the walk got past ``now``)."""
    kept: deque[Run] = deque(maxlen=keep)
    run: Run | None = first
    steps = 0
    while run is not None and run.at <= now:
        if budget is not None and steps == budget:
            return kept, None, False
        kept.append(run)
        steps += 1
        run = timing.following(run.nominal)
    return kept, run, True


def dispatch_due(
    store: Store,
    publisher: Publisher,
    batch: int,
    *,
    batches: int = 1,
    claimer: Executor | None = None,
) -> Dispatched:
    """Claim and publish what is due now (Redis' time) in every shard: up to
    ``batches`` claims of ``batch`` events each, per shard.

    With a ``claimer`` (one thread), beat plans the next batch while Redis runs the
    claim of the one before: Python and Redis work side by side instead of in turn.
    """
    due, now = 0, 0.0
    # Each beat starts at a shard of its own choosing: beats running side by side (no
    # leader) work on different shards at once instead of racing for the same claims.
    shards = store.keys.all_shards()
    first = random.randrange(len(shards))
    for shard in [*shards[first:], *shards[:first]]:
        done = _dispatch_shard(store, publisher, shard, batch, batches, claimer)
        due, now = due + done.due, done.now
    return Dispatched(due, now)


def _dispatch_shard(
    store: Store,
    publisher: Publisher,
    shard: int,
    batch: int,
    batches: int,
    claimer: Executor | None,
) -> Dispatched:
    now_ms, events = store.due_events(shard, batch * batches)
    stamp = now_ms // 1000
    new_id = partial(store.keys.new_id, shard)  # an event's executions share its shard
    queue = publisher.direct_queue
    tasks = publisher.lua_arguments
    written: list[tuple[str, str]] = []
    running: Future[list[tuple[str, str]]] | None = None
    sends: dict[str, int] = {}  # instance id -> the occurrence it sends, for metrics
    planned: list[Claim] = []
    for start in range(0, len(events), batch):
        claims = [plan_claim(e, stamp, new_id) for e in events[start : start + batch]]
        planned += claims
        sends.update(c.send for c in claims if c.send is not None)
        if claimer is None:
            written += store.claim(shard, claims, queue, tasks)
            continue
        if running is not None:
            written += running.result()
        running = claimer.submit(store.claim, shard, claims, queue, tasks)
    if running is not None:
        written += running.result()
    if queue is None:
        queued = [iid for iid, status in written if status == InstanceStatus.QUEUED]
        publisher.publish(queued)
        store.forget_pending(queued)
    _record_dispatch(store, shard, sends, written, now_ms / 1000)
    _alert_dispatch(store, publisher, events, planned, written)
    # Past occurrences waiting to be sent one by one (a resume's catch-up, a backfill).
    replayed = store.replay(shard, now_ms, new_id, limit=batch, queue=queue, tasks=tasks)
    if queue is None and replayed:
        publisher.publish(replayed)
        store.forget_pending(replayed)
    return Dispatched(len(events), now_ms / 1000)


def _alert_dispatch(
    store: Store,
    publisher: Publisher,
    events: list[DueEvent],
    claims: list[Claim],
    written: list[tuple[str, str]],
) -> None:
    """Have the alerts of what beat recorded ``missed`` or ``skipped`` sent, for events
    with alerts (or a project default): one ``missed`` alert per event and claim (the
    latest; an outage is one alert, not a flood), one per ``skipped`` execution."""
    statuses = dict(written)
    if not any(s in (InstanceStatus.MISSED, InstanceStatus.SKIPPED) for s in statuses.values()):
        return
    by_id = {event.id: event for event in events}
    defaults: dict[str, str | None] = {}
    for claim in claims:
        event = by_id[claim.event_id]
        alerts: list[tuple[str, str]] = []
        missed = [iid for iid, _ in claim.missed if statuses.get(iid) == InstanceStatus.MISSED]
        if missed:
            alerts.append((missed[-1], "missed"))
        if claim.send is not None and statuses.get(claim.send[0]) == InstanceStatus.SKIPPED:
            alerts.append((claim.send[0], "skipped"))
        if event.alert_on:  # alerts of its own (each asks for at least one kind)
            alerts = [(iid, kind) for iid, kind in alerts if kind in event.alert_on]
        else:  # the project's default URL, if it has one, hears of some kinds
            alerts = [(iid, kind) for iid, kind in alerts if kind in DEFAULT_ALERT_KINDS]
            if alerts and event.project_id not in defaults:
                defaults[event.project_id] = store.alert_url(event.project_id)
            if not alerts or defaults[event.project_id] is None:
                continue
        for instance_id, kind in alerts:
            try:
                publisher.publish_alert(instance_id, kind)
            except DispatchError as exc:  # the records stand; only the alert is lost
                log.warning("could not publish the %s alert of %s: %s", kind, instance_id, exc)


def _record_dispatch(
    store: Store, shard: int, sends: dict[str, int], written: list[tuple[str, str]], now: float
) -> None:
    """Count what beat wrote and how late each queued occurrence reached the broker."""
    lateness = [
        now - sends[iid]
        for iid, status in written
        if status == InstanceStatus.QUEUED and iid in sends
    ]
    try:
        metrics.record_dispatch(store.redis, store.keys, shard, written, lateness)
    except RedisError as exc:  # a dispatch never fails over its metrics
        log.warning("could not record dispatch metrics: %s", exc)


def release_waiting(store: Store, publisher: Publisher, *, unconfirmed: float) -> int:
    """Publish what waits in Redis and is due by Redis' clock: retries whose backoff ran
    out, executions whose worker's lease ran out (it died or stalled mid-send), and
    executions whose publish was not confirmed for ``unconfirmed`` seconds (the process
    that queued them died in between). Workers start a record only once, so a second
    copy of a task is harmless."""
    keys = store.keys
    queue = publisher.direct_queue
    tasks = publisher.lua_arguments
    store.sweep_batches()  # batch creates left half done by a process that died
    published = 0
    for shard in keys.all_shards():
        waits = ((keys.retry(shard), 0.0), (keys.running(shard), 0.0),
                 (keys.pending(shard), unconfirmed))  # fmt: skip
        for waiting, grace in waits:
            ids = store.release(waiting, shard, grace=grace, queue=queue, tasks=tasks)
            if ids and queue is None:
                publisher.publish(ids)
                store.forget_pending(ids)
            published += len(ids)
    return published
