"""The Redis store: projects and API keys, events, the due index and execution records.

This module owns every Redis read and write sendbeat makes (keys come from
``app.core.keys``, atomic steps from ``app.core.scripts``). It returns the plain
dataclasses of ``app.core.records``; callers never see Redis types.

Its clock is Redis': ``now()`` reads the server's ``TIME`` and the scripts read it
themselves, so every process, whatever its own clock says, decides by the same time.
A store built with a pinned ``clock`` (tests) uses that instead, everywhere.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis, WatchError

from app.core import metrics
from app.core.clock import from_timestamp
from app.core.errors import NO_SUCH_UID, NotFound, UidTaken
from app.core.keys import Keys
from app.core.publisher import entry
from app.core.records import (
    DUE_FIELDS,
    DueEvent,
    Event,
    Instance,
    Project,
)
from app.core.scripts import Claim, Enqueued, Held, Scripts, Start

KEY_PREFIX_CHARS = 12


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    """A fresh API key: 192 random bits, URL-safe."""
    return "sb_" + secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Edit:
    """What a change to an event writes, decided from the event as it was read."""

    event: Event  # the event as it must be stored
    reschedule: bool = False  # its place in the due index changes too
    park: bool = False  # it is paused: out of the due index, its due time kept
    delete: bool = False
    cancel: str | None = None  # "paused" | "deleted": stop its in-flight executions


class Store:
    def __init__(
        self,
        redis: Redis,
        keys: Keys | None = None,
        *,
        retention_days: int = 30,
        clock: Callable[[], datetime] | None = None,
        replicas: int = 0,
    ) -> None:
        """``replicas``: how many replicas must hold an execution's record before the
        script that wrote it returns (Redis WAIT; 0: none asked, Settings.redis_replicas)."""
        # The store speaks str: every client it is given must decode responses. redis-py's
        # types cannot say so (they are bytes | str), hence Any.
        self.redis: Any = redis
        self.keys = keys or Keys()
        self.retention = retention_days * 86400
        self.clock = clock
        self.scripts = Scripts(redis, self.keys, self._pinned_ms, replicas=replicas)

    # -- the clock -----------------------------------------------------------------

    def _pinned_ms(self) -> str:
        return "" if self.clock is None else str(int(self.clock().timestamp() * 1000))

    def now(self) -> datetime:
        """The time every process decides by: the Redis server's (or the pinned clock)."""
        if self.clock is not None:
            return self.clock()
        seconds, micros = self.redis.time()
        return from_timestamp(int(seconds) + int(micros) / 1e6)

    # -- projects and keys ---------------------------------------------------------

    def create_project(self, name: str, now: int) -> tuple[Project, str]:
        project_id = secrets.token_hex(8)
        if not self.redis.hsetnx(self.keys.project_names, name, project_id):
            raise UidTaken(name, f"A project named {name!r} already exists.")
        pipe = self.redis.pipeline()
        pipe.hset(
            self.keys.project(project_id),
            mapping={"id": project_id, "name": name, "created_at": now},
        )
        pipe.zadd(self.keys.projects, {project_id: now})
        pipe.execute()
        key = self._add_key(project_id, now)
        return Project(project_id, name, now, (key[:KEY_PREFIX_CHARS],)), key

    def _add_key(self, project_id: str, now: int) -> str:
        key = new_api_key()
        digest = key_digest(key)
        pipe = self.redis.pipeline()
        pipe.hset(
            self.keys.api_key(digest),
            mapping={"project_id": project_id, "prefix": key[:KEY_PREFIX_CHARS], "created_at": now},
        )
        pipe.sadd(self.keys.project_keys(project_id), digest)
        pipe.execute()
        return key

    def project_by_name(self, name: str) -> Project | None:
        project_id = self.redis.hget(self.keys.project_names, name)
        return self._project(project_id) if project_id else None

    def list_projects(self) -> list[Project]:
        ids = self.redis.zrange(self.keys.projects, 0, -1)
        return [p for p in (self._project(pid) for pid in ids) if p is not None]

    def _project(self, project_id: str) -> Project | None:
        raw = self.redis.hgetall(self.keys.project(project_id))
        if not raw:
            return None
        digests = sorted(self.redis.smembers(self.keys.project_keys(project_id)))
        pipe = self.redis.pipeline()
        for digest in digests:
            pipe.hget(self.keys.api_key(digest), "prefix")
        prefixes = tuple(p for p in pipe.execute() if p)
        return Project(raw["id"], raw["name"], int(raw["created_at"]), prefixes)

    def rotate_key(self, name: str, now: int) -> str:
        """Issue a new key for the project and revoke all its earlier keys."""
        project = self.project_by_name(name)
        if project is None:
            raise NotFound(f"No project named {name!r}.")
        old = self.redis.smembers(self.keys.project_keys(project.id))
        key = self._add_key(project.id, now)
        self._revoke_digests(project.id, old)
        return key

    def revoke_key(self, prefix: str) -> Project:
        """Revoke the one live key starting with ``prefix`` (or the whole key given)."""
        whole = self.project_for_key(prefix)
        if whole is not None:
            self._revoke_digests(whole, {key_digest(prefix)})
            return self._project(whole) or Project(whole, "", 0)
        matches = [
            (project, digest)
            for project in self.list_projects()
            for digest in self.redis.smembers(self.keys.project_keys(project.id))
            if (self.redis.hget(self.keys.api_key(digest), "prefix") or "").startswith(prefix)
        ]
        if not matches:
            raise NotFound(f"No live key starts with {prefix!r}.")
        if len(matches) > 1:
            raise NotFound(f"{len(matches)} keys start with {prefix!r}; give a longer prefix.")
        project, digest = matches[0]
        self._revoke_digests(project.id, {digest})
        return project

    def _revoke_digests(self, project_id: str, digests: Iterable[str]) -> None:
        pipe = self.redis.pipeline()
        for digest in digests:
            pipe.delete(self.keys.api_key(digest))
            pipe.srem(self.keys.project_keys(project_id), digest)
        pipe.execute()

    def project_for_key(self, key: str) -> str | None:
        project_id = self.redis.hget(self.keys.api_key(key_digest(key)), "project_id")
        return project_id or None

    # -- events --------------------------------------------------------------------

    def add_events(self, events: list[Event]) -> None:
        """Store new events all together or not at all; raise UidTaken for a used uid."""
        if not events:
            return
        project_id = events[0].project_id
        uids_key = self.keys.uids(project_id)
        # Creation order for listing: a sequence, since many events share one second.
        last = self.redis.incrby(self.keys.event_sequence(project_id), len(events))
        first = last - len(events) + 1
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(uids_key)
                    taken = pipe.hmget(uids_key, [e.uid for e in events])
                    for event, existing in zip(events, taken, strict=True):
                        if existing:
                            raise UidTaken(event.uid, "Could not create scheduled event.")
                    pipe.multi()
                    for number, event in enumerate(events, start=first):
                        self._write_event(pipe, event)
                        pipe.hset(uids_key, event.uid, event.id)
                        pipe.zadd(self.keys.project_events(project_id), {event.id: number})
                    pipe.execute()
                    return
                except WatchError:
                    continue

    def edit_event(
        self, project_id: str, event_id: str, decide: Callable[[Event], Edit]
    ) -> Edit | None:
        """Read the event, let ``decide`` say what to write, and write it atomically; None
        when the event is gone (or another project's).

        The event, its request and its in-flight executions are WATCHed, so anything that
        changes them in between (beat claiming or completing it, a worker counting a run,
        another request) makes this read and decide again: a delete is never undone, a
        status beat wrote is never overwritten, and a pause cancels every execution
        queued before it answers.
        """
        watched = (self.keys.event(event_id), self.keys.event_metadata(event_id),
                   self.keys.event_inflight(event_id))  # fmt: skip
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(*watched)
                    event = self.event_by_id(project_id, event_id)
                    if event is None:
                        return None
                    edit = decide(event)
                    inflight = pipe.zrange(watched[2], 0, -1) if edit.cancel else []
                    pipe.multi()
                    self._apply(pipe, edit, inflight)
                    pipe.execute()
                    return edit
                except WatchError:
                    continue

    def _apply(self, pipe: Any, edit: Edit, inflight: list[str]) -> None:
        event = edit.event
        if edit.cancel:
            self.scripts.cancel(event.id, inflight, edit.cancel, client=pipe)
        if edit.delete:
            self._delete(pipe, event)
        elif edit.park:
            self._put_event(pipe, event)
            self.scripts.park(event.id, client=pipe)
        elif edit.reschedule:
            self._write_event(pipe, event)
        else:
            # The due index is left alone: beat may have just moved the score to the
            # next run, and writing back the score read earlier would claim an
            # occurrence twice.
            self._put_event(pipe, event)

    def _put_event(self, pipe: Any, event: Event) -> None:
        fields = event.to_hash()
        unset = [name for name in Event.cleared() if name not in fields]
        if unset:
            pipe.hdel(self.keys.event(event.id), *unset)
        pipe.hset(self.keys.event(event.id), mapping=fields)
        pipe.set(
            self.keys.event_metadata(event.id), json.dumps(event.metadata, separators=(",", ":"))
        )

    def _write_event(self, pipe: Any, event: Event) -> None:
        self._put_event(pipe, event)
        if event.scheduled_at is None or event.status != "activated":
            pipe.zrem(self.keys.due, event.id)
        else:
            pipe.zadd(self.keys.due, {event.id: event.scheduled_at})
            # Wake a sleeping beat: this run may be due before it would look again.
            pipe.lpush(self.keys.beat_wake, 1)
            pipe.ltrim(self.keys.beat_wake, 0, 0)

    def _delete(self, pipe: Any, event: Event) -> None:
        """Everything of the event goes now, but its execution records and their index,
        which stay readable by id until the retention ends, and then expire too."""
        pipe.zrem(self.keys.due, event.id)
        pipe.delete(self.keys.event(event.id), self.keys.event_metadata(event.id))
        pipe.hdel(self.keys.uids(event.project_id), event.uid)
        pipe.zrem(self.keys.project_events(event.project_id), event.id)
        pipe.expire(self.keys.event_instances(event.id), self.retention)
        pipe.expire(self.keys.event_inflight(event.id), self.retention)

    def event_by_uid(self, project_id: str, uid: str) -> Event:
        event_id = self.redis.hget(self.keys.uids(project_id), uid)
        event = self._events([event_id])[0] if event_id else None
        if event is None:
            raise NotFound(NO_SUCH_UID)
        return event

    def event_by_id(self, project_id: str, event_id: str) -> Event | None:
        """The event, or None when it is missing or belongs to another project."""
        event = self._events([event_id])[0]
        return event if event is not None and event.project_id == project_id else None

    def _events(self, ids: list[str]) -> list[Event | None]:
        pipe = self.redis.pipeline()
        for event_id in ids:
            pipe.hgetall(self.keys.event(event_id))
            pipe.zscore(self.keys.due, event_id)
            pipe.get(self.keys.event_metadata(event_id))
        replies = pipe.execute()
        rows = list(zip(replies[::3], replies[1::3], replies[2::3], strict=True))
        last_runs = self._summaries([raw.get("last_run", "") for raw, _, _ in rows])
        return [
            Event.from_hash(event_id, raw, score, metadata, last_run) if raw else None
            for event_id, (raw, score, metadata), last_run in zip(ids, rows, last_runs, strict=True)
        ]

    def _summaries(self, instance_ids: list[str]) -> list[dict[str, Any] | None]:
        """Summaries of these executions (None for "" or one no longer kept)."""
        known = [iid for iid in instance_ids if iid]
        pipe = self.redis.pipeline()
        for iid in known:
            pipe.hgetall(self.keys.instance(iid))
        found = {
            iid: Instance.from_hash(iid, raw).summary()
            for iid, raw in zip(known, pipe.execute(), strict=True)
            if raw
        }
        return [found.get(iid) for iid in instance_ids]

    def list_events(
        self, project_id: str, offset: int, limit: int, status: str | None = None
    ) -> tuple[list[Event], int]:
        """A page of the project's events, oldest first, and the total that match."""
        key = self.keys.project_events(project_id)
        if status is None:
            ids = self.redis.zrange(key, offset, offset + limit - 1)
            return [e for e in self._events(ids) if e is not None], self.redis.zcard(key)
        events = [e for e in self._events(self.redis.zrange(key, 0, -1)) if e is not None]
        events = [e for e in events if e.status == status]
        return events[offset : offset + limit], len(events)

    # -- the due index (beat) ------------------------------------------------------

    def due_events(self, limit: int) -> tuple[int, list[DueEvent]]:
        """Redis' time (epoch ms) and the events due by it, earliest first, with only the
        fields beat plans a claim from (two commands, whatever the batch)."""
        now_ms, due = self.scripts.due(limit)
        rows = self.scripts.fields([self.keys.event(event_id) for event_id, _ in due], DUE_FIELDS)
        events = [
            DueEvent.from_row(event_id, at, row)
            for (event_id, at), row in zip(due, rows, strict=True)
            if row[0] is not None  # deleted between the two reads
        ]
        return now_ms, events

    def next_due_at(self) -> int | None:
        first = self.redis.zrange(self.keys.due, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    def claim(
        self, claims: list[Claim], queue: str | None = None, tasks: Sequence[Any] = ()
    ) -> list[tuple[str, str]]:
        """Claim the occurrences; with ``queue`` (the broker is this Redis) also push their
        task messages (``tasks``: RedisMessages.arguments), in the same atomic step."""
        return self.scripts.claim(claims, retention=self.retention, queue=queue, tasks=tasks)

    def release(
        self,
        waiting: str,
        *,
        grace: float,
        queue: str | None,
        tasks: Sequence[Any] = (),
        limit: int = 1000,
    ) -> list[str]:
        """Release what waits in ``waiting`` (retry, running or pending) longer than
        ``grace`` seconds past its time: onto ``queue``, or without one into pending for
        the caller to publish and then ``forget_pending``."""
        return self.scripts.release(
            waiting, grace_ms=int(grace * 1000), limit=limit, queue=queue, tasks=tasks
        )

    def forget_pending(self, instance_ids: list[str]) -> None:
        """Their publish is confirmed."""
        if instance_ids:
            self.redis.zrem(self.keys.pending, *instance_ids)

    def waiting(self, waiting_key: str) -> list[tuple[str, int]]:
        """Everything in a waiting set, with its time (epoch ms): for tests and operators."""
        return [
            (iid, int(at)) for iid, at in self.redis.zrange(waiting_key, 0, -1, withscores=True)
        ]

    def wait_for_wake(self, timeout: float) -> bool:
        """Sleep until an event is (re)scheduled or ``timeout`` passes; True when woken."""
        if timeout <= 0:
            return False
        return self.redis.blpop([self.keys.beat_wake], timeout=timeout) is not None

    def heartbeat(self, now: float) -> None:
        self.redis.set(self.keys.beat_heartbeat, now)

    def last_heartbeat(self) -> float | None:
        value = self.redis.get(self.keys.beat_heartbeat)
        return float(value) if value else None

    # -- executions ----------------------------------------------------------------

    def enqueue(
        self,
        instance: Instance,
        *,
        queue: str | None,
        tasks: Sequence[Any] = (),
        uid: str | None = None,
    ) -> tuple[Enqueued, int]:
        """Record a new execution (a manual trigger or send_message) as queued and push its
        task onto ``queue`` (``tasks``: RedisMessages.arguments), or mark it pending, in
        one step (enqueue.lua)."""
        event = (instance.event_id, instance.event_uid) if instance.event_id else None
        payload = json.dumps(instance.payload, separators=(",", ":")) if not event else ""
        return self.scripts.enqueue(
            instance.id,
            retention=self.retention,
            queue=queue,
            entry=entry(instance.id, instance.event_id),
            tasks=tasks,
            project_id=instance.project_id,
            event=event,
            uid=uid or "",
            payload=payload,
        )

    def discard(self, instance: Instance, uid: str | None = None) -> None:
        """Forget an execution that never reached the broker, and free its uid."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.instance(instance.id))
        pipe.zrem(self.keys.pending, instance.id)
        pipe.hincrby(self.keys.metrics_executions, "queued", -1)
        if instance.event_id:
            pipe.zrem(self.keys.event_instances(instance.event_id), instance.id)
            pipe.zrem(self.keys.event_inflight(instance.event_id), instance.id)
        if uid is not None:
            pipe.zrem(self.keys.message_uids(instance.project_id), uid)
        pipe.execute()

    def instance(self, instance_id: str) -> Instance | None:
        raw = self.redis.hgetall(self.keys.instance(instance_id))
        return Instance.from_hash(instance_id, raw) if raw else None

    def start(
        self, instance_id: str, *, lease: float, retries: int, event_id: str | None = None
    ) -> tuple[Start, Instance | None]:
        """Try to start an execution for this worker: (the start, the record as started).
        ``event_id`` is its event's ("" for none) when the task said; else it is read."""
        if event_id is None:
            event_id = self.redis.hget(self.keys.instance(instance_id), "event_id") or ""
        start = self.scripts.start(
            instance_id, event_id, lease_ms=int(lease * 1000), retention=self.retention,
            retries=retries,
        )  # fmt: skip
        record = None if start.record is None else Instance.from_hash(instance_id, start.record)
        return start, record

    def hold(
        self,
        instance_id: str,
        token: str,
        *,
        lease: float,
        delivered: list[str] | None = None,
        result: dict[str, Any] | None = None,
    ) -> tuple[Held, str]:
        """Renew this attempt's lease and record its progress (when given)."""
        return self.scripts.hold(
            instance_id,
            token,
            lease_ms=int(lease * 1000),
            delivered="" if delivered is None else json.dumps(delivered),
            result="" if result is None else json.dumps(result, separators=(",", ":")),
        )

    def note_late(
        self, instance_id: str, token: str, delivered: list[str], accepted: list[str]
    ) -> None:
        """Copies this attempt got accepted after it lost the record (its recipients and
        the accepted addresses): facts the record must show, though the attempt may no
        longer write its state (late.lua)."""
        late = json.dumps({"delivered": delivered, "accepted": accepted})
        self.scripts.late(instance_id, token, late)

    def retry(self, instance_id: str, token: str, *, delay: float, error: str, took: float) -> bool:
        """Park an execution for ``delay`` seconds; False when the attempt lost the record."""
        return self.scripts.retry(
            instance_id, token, delay_ms=int(delay * 1000), error=error, latency=_latency(took)
        )

    def finish(
        self,
        instance: Instance,
        token: str,
        status: str,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        took: float | None = None,
    ) -> bool:
        """Write an execution's final state, release its event's overlap slot and count it;
        False when the attempt lost the record (another took over, or it ended)."""
        return self.scripts.finish(
            instance.id,
            instance.event_id,
            token,
            status=status,
            error=error or "",
            result="" if result is None else json.dumps(result, separators=(",", ":")),
            retention=self.retention,
            latency=None if took is None else _latency(took),
        )

    def list_instances(self, event_id: str, offset: int, limit: int) -> tuple[list[Instance], int]:
        """A page of the event's executions, newest first, and how many are kept."""
        key = self.keys.event_instances(event_id)
        ids = self.redis.zrevrange(key, offset, offset + limit - 1)
        pipe = self.redis.pipeline()
        for iid in ids:
            pipe.hgetall(self.keys.instance(iid))
        pipe.zcard(key)
        *raws, total = pipe.execute()
        return [Instance.from_hash(i, raw) for i, raw in zip(ids, raws, strict=True) if raw], int(
            total
        )


def _latency(seconds: float) -> tuple[str, float]:
    seconds = max(0.0, seconds)
    return metrics.bucket_of(seconds), seconds
