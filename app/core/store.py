"""The Redis store: projects and API keys, events, the due index and execution records.

This module owns every Redis read and write sendbeat makes (keys come from
``app.core.keys``, atomic steps from ``app.core.scripts``). It returns plain
dataclasses; callers never see Redis types.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from redis import Redis, WatchError

from app.core.clock import from_timestamp, isoformat
from app.core.errors import NotFound, UidTaken
from app.core.keys import Keys
from app.core.scripts import Claim, Scripts

KEY_PREFIX_CHARS = 12


class InstanceStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    MISSED = "missed"
    SKIPPED = "skipped"


FINISHED = frozenset(
    {
        InstanceStatus.SUCCEEDED,
        InstanceStatus.FAILED,
        InstanceStatus.CANCELLED,
        InstanceStatus.MISSED,
        InstanceStatus.SKIPPED,
    }
)


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    created_at: int
    key_prefixes: tuple[str, ...] = ()


# Defaults fixed by the product contract (not by settings): an event hash leaves these
# fields out when they hold them.
FIXED_DEFAULTS = {"timezone": "UTC", "overlap": "skip"}


@dataclass
class Event:
    id: str
    uid: str
    project_id: str
    schedule: str
    timezone: str
    event_type: str
    metadata: dict[str, Any]
    created_at: int
    updated_at: int
    status: str = "activated"
    catchup_window: int = 300
    overlap: str = "skip"
    retries: int = 5
    run_count: int = 0
    last_run: dict[str, Any] | None = None
    suspended_at: int | None = None
    run_at: int | None = None  # a one-time event's run, kept while it is suspended
    scheduled_at: int | None = None  # read from the due index, never stored in the hash

    def record(self) -> dict[str, Any]:
        """The event record of DESIGN §3, as both dialects return it."""
        return {
            "uid": self.uid,
            "id": self.id,
            "status": self.status,
            "schedule": self.schedule,
            "event_type": self.event_type,
            "timezone": self.timezone,
            "scheduled_at": _iso(self.scheduled_at),
            "metadata": self.metadata,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "run_count": self.run_count,
            "last_run": self.last_run,
            "catchup_window": self.catchup_window,
            "overlap": self.overlap,
            "retries": self.retries,
        }

    def summary(self) -> dict[str, Any]:
        """One entry of create_scheduled_events' ``response.message``."""
        return {
            "uid": self.uid,
            "id": self.id,
            "status": self.status,
            "schedule": self.schedule,
            "event_type": self.event_type,
            "scheduled_at": _iso(self.scheduled_at),
        }

    def to_hash(self) -> dict[str, str | int]:
        """The hash fields; the id is the key's, and unset times are left out (a compact
        hash is a few hundred bytes per event at scale)."""
        fields: dict[str, str | int] = {
            "uid": self.uid,
            "project_id": self.project_id,
            "schedule": self.schedule,
            "timezone": self.timezone,
            "event_type": self.event_type,
            "status": self.status,
            "catchup_window": self.catchup_window,
            "overlap": self.overlap,
            "retries": self.retries,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if self.suspended_at is not None:
            fields["suspended_at"] = self.suspended_at
        if self.run_at is not None:
            fields["run_at"] = self.run_at
        for name, default in FIXED_DEFAULTS.items():
            if fields[name] == default:
                del fields[name]
        if self.updated_at == self.created_at:
            del fields["updated_at"]  # never updated: it reads as created_at
        return fields

    @staticmethod
    def cleared() -> tuple[str, ...]:
        """Fields ``to_hash`` leaves out when unset, to delete on rewrite."""
        return ("suspended_at", "run_at", "updated_at", *FIXED_DEFAULTS)

    @classmethod
    def from_hash(
        cls,
        event_id: str,
        raw: dict[str, str],
        scheduled_at: float | None,
        metadata: str | None,
        last_run: dict[str, Any] | None,
    ) -> Event:
        return cls(
            id=event_id,
            uid=raw["uid"],
            project_id=raw["project_id"],
            schedule=raw["schedule"],
            timezone=raw.get("timezone", FIXED_DEFAULTS["timezone"]),
            event_type=raw["event_type"],
            status=raw["status"],
            metadata=json.loads(metadata or "{}"),
            catchup_window=int(raw["catchup_window"]),
            overlap=raw.get("overlap", FIXED_DEFAULTS["overlap"]),
            retries=int(raw["retries"]),
            created_at=int(raw["created_at"]),
            updated_at=int(raw.get("updated_at", raw["created_at"])),
            run_count=int(raw.get("run_count", 0)),
            last_run=last_run,
            suspended_at=int(raw["suspended_at"]) if raw.get("suspended_at") else None,
            run_at=int(raw["run_at"]) if raw.get("run_at") else None,
            scheduled_at=None if scheduled_at is None else int(scheduled_at),
        )


@dataclass(frozen=True)
class DueEvent:
    """What beat needs of a due event to plan its claim (not its message)."""

    id: str
    scheduled_at: int
    schedule: str
    timezone: str
    event_type: str
    catchup_window: int
    uid: str
    project_id: str
    overlap: str


DUE_FIELDS = ("schedule", "timezone", "event_type", "catchup_window", "uid", "project_id",
              "overlap")  # fmt: skip


@dataclass
class Instance:
    """One execution record (DESIGN §7)."""

    id: str
    project_id: str
    trigger: str
    status: str
    scheduled_for: int
    enqueued_at: int
    event_id: str = ""
    event_uid: str = ""
    attempts: int = 0
    started_at: int | None = None
    completed_at: int | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    payload: dict[str, Any] | None = None  # send_message arguments when there is no event
    delivered: list[str] = field(default_factory=list)  # recipients already accepted

    def record(self) -> dict[str, Any]:
        return {
            "uid": self.id,
            "event_uid": self.event_uid or None,
            "event_id": self.event_id or None,
            "trigger": self.trigger,
            "status": self.status,
            "scheduled_for": _iso(self.scheduled_for),
            "enqueued_at": _iso(self.enqueued_at),
            "started_at": _iso(self.started_at),
            "completed_at": _iso(self.completed_at),
            "attempts": self.attempts,
            "error": self.error,
            "result": self.result,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "uid": self.id,
            "trigger": self.trigger,
            "status": self.status,
            "scheduled_for": _iso(self.scheduled_for),
            "completed_at": _iso(self.completed_at),
        }

    def to_hash(self) -> dict[str, str | int]:
        fields: dict[str, str | int] = {
            "project_id": self.project_id,
            "event_id": self.event_id,
            "event_uid": self.event_uid,
            "trigger": self.trigger,
            "status": self.status,
            "scheduled_for": self.scheduled_for,
            "enqueued_at": self.enqueued_at,
            "attempts": self.attempts,
        }
        if self.payload is not None:
            fields["payload"] = json.dumps(self.payload, separators=(",", ":"))
        return fields

    @classmethod
    def from_hash(cls, instance_id: str, raw: dict[str, str]) -> Instance:
        def opt_int(name: str) -> int | None:
            return int(float(raw[name])) if raw.get(name) else None

        return cls(
            id=instance_id,
            project_id=raw.get("project_id", ""),
            event_id=raw.get("event_id", ""),
            event_uid=raw.get("event_uid", ""),
            trigger=raw["trigger"],
            status=raw["status"],
            scheduled_for=int(float(raw["scheduled_for"])),
            enqueued_at=int(float(raw["enqueued_at"])),
            attempts=int(raw.get("attempts", 0)),
            started_at=opt_int("started_at"),
            completed_at=opt_int("completed_at"),
            error=raw.get("error") or None,
            result=json.loads(raw["result"]) if raw.get("result") else None,
            payload=json.loads(raw["payload"]) if raw.get("payload") else None,
            delivered=json.loads(raw["delivered"]) if raw.get("delivered") else [],
        )


def _iso(epoch: int | None) -> str | None:
    return None if epoch is None else isoformat(from_timestamp(epoch))


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    """A fresh API key: 192 random bits, URL-safe."""
    return "sb_" + secrets.token_urlsafe(24)


class Store:
    def __init__(self, redis: Redis, keys: Keys | None = None, *, retention_days: int = 30):
        # The store speaks str: every client it is given must decode responses. redis-py's
        # types cannot say so (they are bytes | str), hence Any.
        self.redis: Any = redis
        self.keys = keys or Keys()
        self.retention = retention_days * 86400
        self.scripts = Scripts(redis, self.keys)

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

    def save_event(self, event: Event, *, reschedule: bool) -> None:
        """Write an event's definition; with ``reschedule`` also its place in the due index.

        Without it the due index is left alone: beat may have just moved the score to
        the next run, and writing back the score read earlier would claim an occurrence
        twice.
        """
        pipe = self.redis.pipeline(transaction=True)
        if reschedule:
            self._write_event(pipe, event)
        else:
            self._put_event(pipe, event)
        pipe.execute()

    def cancel_queued(self, event_id: str, now: int) -> list[str]:
        """Cancel the event's executions that have not started; return their ids."""
        active = sorted(self.redis.smembers(self.keys.event_active(event_id)))
        return self.scripts.cancel(event_id, active, now=now)

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

    def delete_event(self, event: Event, now: int) -> list[str]:
        """Remove the event; return the ids of its executions that had not started, now
        cancelled (one already running finishes and is recorded)."""
        cancelled = self.cancel_queued(event.id, now)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.keys.due, event.id)
        pipe.delete(self.keys.event(event.id), self.keys.event_metadata(event.id))
        pipe.hdel(self.keys.uids(event.project_id), event.uid)
        pipe.zrem(self.keys.project_events(event.project_id), event.id)
        pipe.execute()
        return cancelled

    def event_by_uid(self, project_id: str, uid: str) -> Event:
        event_id = self.redis.hget(self.keys.uids(project_id), uid)
        event = self._events([event_id])[0] if event_id else None
        if event is None:
            raise NotFound("Can not find scheduled event from the given UID")
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

    def due_events(self, now: int, limit: int) -> list[DueEvent]:
        """Events whose next run is at or before ``now``, earliest first: only the fields
        beat needs, read in one command (due.lua)."""
        return [
            DueEvent(event_id, int(float(score)), schedule,
                     timezone or FIXED_DEFAULTS["timezone"], event_type, int(window), uid,
                     project_id, overlap or FIXED_DEFAULTS["overlap"])
            for event_id, score, schedule, timezone, event_type, window, uid, project_id,
            overlap in self.scripts.due(now, limit, DUE_FIELDS)
        ]  # fmt: skip

    def next_due_at(self) -> int | None:
        first = self.redis.zrange(self.keys.due, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    def claim(
        self,
        claims: list[Claim],
        now: int,
        queue: str | None = None,
        template: list[str] | None = None,
    ) -> list[tuple[str, str]]:
        """Claim the occurrences; with ``queue`` (the broker is this Redis) also push their
        task messages, built from ``template``'s parts, in the same atomic step."""
        return self.scripts.claim(
            claims, now=now, retention=self.retention, queue=queue, template=template or []
        )

    def waiting(self, waiting_key: str, until: float, limit: int = 1000) -> list[str]:
        """Ids in a waiting set (retry, running, pending) whose time has come."""
        return self.redis.zrangebyscore(waiting_key, "-inf", until, 0, limit)

    def publish_waiting(self, waiting_key: str, queue: str, messages: list[tuple[str, str]]) -> int:
        return self.scripts.publish(waiting_key, queue, messages)

    def forget_waiting(self, waiting_key: str, instance_ids: list[str]) -> None:
        if instance_ids:
            self.redis.zrem(waiting_key, *instance_ids)

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

    def add_instance(self, instance: Instance, *, active: bool = True) -> None:
        """Record a new execution (manual trigger or send_message) as queued."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.instance(instance.id), mapping=instance.to_hash())
        pipe.expire(self.keys.instance(instance.id), self.retention)
        if instance.event_id:
            pipe.zadd(
                self.keys.event_instances(instance.event_id), {instance.id: instance.scheduled_for}
            )
            if active:
                pipe.sadd(self.keys.event_active(instance.event_id), instance.id)
        pipe.execute()

    def discard_instance(self, instance: Instance) -> None:
        """Forget an execution that never reached the broker."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.instance(instance.id))
        if instance.event_id:
            pipe.zrem(self.keys.event_instances(instance.event_id), instance.id)
            pipe.srem(self.keys.event_active(instance.event_id), instance.id)
        pipe.execute()

    def has_active(self, event_id: str) -> bool:
        return bool(self.redis.scard(self.keys.event_active(event_id)))

    def reserve_message_uid(self, project_id: str, uid: str, instance_id: str) -> bool:
        return bool(self.redis.hsetnx(self.keys.message_uids(project_id), uid, instance_id))

    def release_message_uid(self, project_id: str, uid: str) -> None:
        self.redis.hdel(self.keys.message_uids(project_id), uid)

    def instance(self, instance_id: str) -> Instance | None:
        raw = self.redis.hgetall(self.keys.instance(instance_id))
        return Instance.from_hash(instance_id, raw) if raw else None

    def start_instance(self, instance_id: str, now: int, lease: int) -> tuple[str, int]:
        return self.scripts.start(instance_id, now=now, lease=lease)

    def record_delivered(self, instance_id: str, delivered: list[str]) -> None:
        self.redis.hset(self.keys.instance(instance_id), "delivered", json.dumps(delivered))

    def retry_instance(self, instance_id: str, error: str, at: float) -> None:
        """Park an execution until ``at``: retries wait in Redis, not in the broker."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            self.keys.instance(instance_id),
            mapping={"status": InstanceStatus.RETRYING, "error": error, "lease_until": 0},
        )
        pipe.zrem(self.keys.running, instance_id)
        pipe.zadd(self.keys.retry, {instance_id: at})
        pipe.execute()

    def finish_instance(
        self,
        instance: Instance,
        status: InstanceStatus,
        now: int,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Write an execution's final state and release its event's overlap slot."""
        fields: dict[str, str | int] = {"status": status, "completed_at": now}
        fields["error"] = error or ""
        if result is not None:
            fields["result"] = json.dumps(result, separators=(",", ":"))
        instance.status, instance.completed_at, instance.error = status, now, error
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.instance(instance.id), mapping=fields)
        pipe.expire(self.keys.instance(instance.id), self.retention)
        pipe.zrem(self.keys.pending, instance.id)
        pipe.zrem(self.keys.running, instance.id)
        if instance.event_id:
            pipe.srem(self.keys.event_active(instance.event_id), instance.id)
            # The event's index of executions is trimmed here, off beat's hot path.
            pipe.zremrangebyscore(
                self.keys.event_instances(instance.event_id), "-inf", now - self.retention
            )
            if status in (InstanceStatus.SUCCEEDED, InstanceStatus.FAILED):
                event_key = self.keys.event(instance.event_id)
                pipe.exists(event_key)
        replies = pipe.execute()
        if (
            instance.event_id
            and status in (InstanceStatus.SUCCEEDED, InstanceStatus.FAILED)
            and replies[-1]
        ):
            self._count_run(instance)

    def _count_run(self, instance: Instance) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(self.keys.event(instance.event_id), "run_count", 1)
        # The id only: a summary (JSON) would push the hash out of its compact encoding.
        pipe.hset(self.keys.event(instance.event_id), "last_run", instance.id)
        pipe.execute()

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
