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
from redis.cluster import RedisCluster

from app.core import metrics
from app.core.clock import from_timestamp
from app.core.errors import NO_SUCH_UID, NotFound, UidTaken
from app.core.keys import Keys
from app.core.publisher import entry
from app.core.records import (
    ALERT_FIELD,
    DUE_FIELDS,
    DueEvent,
    Event,
    Instance,
    InstanceStatus,
    Project,
    new_id,
)
from app.core.scripts import Claim, Enqueued, Held, Scripts, Start
from app.core.webhook import new_secret

KEY_PREFIX_CHARS = 12
STAGED = "staged"  # an event hash field: written by a batch create not yet committed
BATCH_GRACE = 30.0  # seconds after which beat settles a batch create left half done
REPLAY_PACE_MS = 1000  # an event's catch-up or backfill sends at most one occurrence a second


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
    # Past occurrences to send one at a time (replay.lua): "trigger overlap nominal at".
    replay: tuple[str, ...] = ()
    missed: tuple[tuple[str, int], ...] = ()  # (instance id, scheduled_for) to record missed


class Store:
    def __init__(
        self,
        redis: Redis,
        keys: Keys | None = None,
        *,
        retention_days: int = 30,
        clock: Callable[[], datetime] | None = None,
        replicas: int = 0,
        stage_batches: bool | None = None,
    ) -> None:
        """``replicas``: how many replicas must hold an execution's record before the
        script that wrote it returns (Redis WAIT; 0: none asked, Settings.redis_replicas).
        ``stage_batches``: create batches spanning shards in steps (``_staged``), as Redis
        Cluster needs; by default on a Cluster only."""
        # The store speaks str: every client it is given must decode responses. redis-py's
        # types cannot say so (they are bytes | str), hence Any.
        self.redis: Any = redis
        self.keys = keys or Keys()
        self.retention = retention_days * 86400
        self.clock = clock
        self.stage_batches = (
            isinstance(redis, RedisCluster) if stage_batches is None else stage_batches
        )
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
        pipe = self.redis.pipeline(transaction=True)
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
        pipe = self.redis.pipeline(transaction=True)
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
        pipe = self.redis.pipeline(transaction=False)
        for digest in digests:
            pipe.hget(self.keys.api_key(digest), "prefix")
        prefixes = tuple(p for p in pipe.execute() if p)
        return Project(raw["id"], raw["name"], int(raw["created_at"]), prefixes)

    def webhook_secret(self, project_id: str) -> str:
        """The project's webhook signing secret, made on first use."""
        key = self.keys.project(project_id)
        secret = self.redis.hget(key, "webhook_secret")
        if secret:
            return str(secret)
        self.redis.hsetnx(key, "webhook_secret", new_secret())  # two first uses: one wins
        return str(self.redis.hget(key, "webhook_secret"))

    def rotate_webhook_secret(self, project_id: str) -> str:
        secret = new_secret()
        self.redis.hset(self.keys.project(project_id), "webhook_secret", secret)
        return secret

    def alert_url(self, project_id: str) -> str | None:
        """The project's default alert URL (events without alerts of their own)."""
        url = self.redis.hget(self.keys.project(project_id), "alert_url")
        return str(url) if url else None

    def set_alert_url(self, project_id: str, url: str | None) -> None:
        key = self.keys.project(project_id)
        if url is None:
            self.redis.hdel(key, "alert_url")
        else:
            self.redis.hset(key, "alert_url", url)

    def alert_sent(self, instance_id: str, kind: str, url: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.keys.instance(instance_id), f"{ALERT_FIELD}{kind}:{url}")
        return json.loads(raw) if raw else None

    def note_alert(self, instance_id: str, kind: str, url: str, outcome: dict[str, Any]) -> None:
        """Record one alert's outcome on the execution (only while the record lives)."""
        key = self.keys.instance(instance_id)
        if self.redis.exists(key):
            self.redis.hset(key, f"{ALERT_FIELD}{kind}:{url}", json.dumps(outcome))

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
        pipe = self.redis.pipeline(transaction=True)
        for digest in digests:
            pipe.delete(self.keys.api_key(digest))
            pipe.srem(self.keys.project_keys(project_id), digest)
        pipe.execute()

    def project_for_key(self, key: str) -> str | None:
        project_id = self.redis.hget(self.keys.api_key(key_digest(key)), "project_id")
        return project_id or None

    # -- events --------------------------------------------------------------------

    def add_events(self, events: list[Event]) -> None:
        """Store new events all together or not at all; raise UidTaken for a used uid.

        One transaction when they fit one (a single Redis, or one shard); on Redis Cluster
        a batch spanning shards is staged shard by shard, then committed (``_staged``)."""
        if not events:
            return
        project_id = events[0].project_id
        groups: dict[int, list[Event]] = {}
        for event in events:
            groups.setdefault(self.keys.uid_shard(project_id, event.uid), []).append(event)
        # Creation order for listing: a sequence, since many events share one second.
        last = self.redis.incrby(self.keys.event_sequence(project_id), len(events))
        numbers = {event.id: n for n, event in enumerate(events, start=last - len(events) + 1)}
        if len(groups) > 1 and self.stage_batches:
            self._staged(project_id, groups, numbers)
        else:
            self._at_once(project_id, groups, numbers)
        if any(_due_at(event) is not None for event in events):
            self.wake_beat()

    def _at_once(
        self, project_id: str, groups: dict[int, list[Event]], numbers: dict[str, int]
    ) -> None:
        keys = self.keys
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*(keys.uids(project_id, shard) for shard in groups))
                    for shard, group in groups.items():
                        _refuse_taken(pipe, keys.uids(project_id, shard), group)
                    pipe.multi()
                    for shard, group in groups.items():
                        for event in group:
                            self._write_event(pipe, event)
                            pipe.hset(keys.uids(project_id, shard), event.uid, event.id)
                            number = numbers[event.id]
                            pipe.zadd(keys.project_events(project_id, shard), {event.id: number})
                    pipe.execute()
                    return
                except WatchError:
                    continue

    # -- a batch create across shards (Redis Cluster) ------------------------------------

    def _staged(
        self, project_id: str, groups: dict[int, list[Event]], numbers: dict[str, int]
    ) -> None:
        """A transaction cannot span hash slots, so: note the batch's plan (global slot),
        stage each shard's events (written, their uids taken, but flagged ``staged`` so no
        reader sees them and out of the due index), then mark the plan committed and
        commit each shard. A uid found taken undoes the shards staged so far. A creator
        that dies half way leaves the plan behind; beat's ``sweep_batches`` finishes it
        (committed) or undoes it (still staging) once it is older than BATCH_GRACE."""
        keys = self.keys
        batch = new_id()
        plan = {"project": project_id, "events": [
            [e.id, e.uid, numbers[e.id], _due_at(e)] for group in groups.values() for e in group
        ]}  # fmt: skip
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.batch(batch), mapping={"state": "staging", "plan": json.dumps(plan)})
        pipe.zadd(keys.batches, {batch: self._now_ms()})
        pipe.execute()
        try:
            for shard, group in groups.items():
                self._stage(project_id, shard, group, batch)
        except UidTaken:
            if self._advance(batch, "staging", "undoing"):
                self._settle(batch)
            raise
        if not self._advance(batch, "staging", "commit"):
            # The sweep took this creator for dead and undid the batch.
            raise RuntimeError(f"batch {batch} was undone by beat before it was committed")
        self._settle(batch)

    def _stage(self, project_id: str, shard: int, group: list[Event], batch: str) -> None:
        uids = self.keys.uids(project_id, shard)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(uids)
                    _refuse_taken(pipe, uids, group)
                    pipe.multi()
                    for event in group:
                        self._put_event(pipe, event)
                        pipe.hset(self.keys.event(event.id), STAGED, batch)
                        pipe.hset(uids, event.uid, event.id)
                    pipe.execute()
                    return
                except WatchError:
                    continue

    def _advance(self, batch: str, before: str, after: str) -> bool:
        """Move the batch's state from ``before`` to ``after``; False when it was not
        ``before`` (another process moved it first)."""
        record = self.keys.batch(batch)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(record)
                    if pipe.hget(record, "state") != before:
                        return False
                    pipe.multi()
                    pipe.hset(record, "state", after)
                    pipe.execute()
                    return True
                except WatchError:
                    continue

    def _settle(self, batch: str) -> None:
        """Carry out the batch's state, shard by shard (each step idempotent), and forget it:
        commit (unflag the events, put them in the due index and the project's list) or
        undo (delete what was staged by this batch, free the uids it took)."""
        keys = self.keys
        raw = self.redis.hgetall(keys.batch(batch))
        if raw.get("state") == "commit":
            plan = json.loads(raw["plan"])
            project_id = plan["project"]
            by_shard: dict[int, list[list[Any]]] = {}
            for row in plan["events"]:
                by_shard.setdefault(keys.shard_of(row[0]), []).append(row)
            for shard, rows in by_shard.items():  # one transaction per shard
                pipe = self.redis.pipeline(transaction=True)
                for event_id, _, number, due_at in rows:
                    pipe.hdel(keys.event(event_id), STAGED)
                    pipe.zadd(keys.project_events(project_id, shard), {event_id: number})
                    if due_at is not None:
                        pipe.zadd(keys.due(shard), {event_id: due_at})
                pipe.execute()
        elif raw.get("state") == "undoing":
            plan = json.loads(raw["plan"])
            for event_id, uid, _, _ in plan["events"]:
                self._unstage(plan["project"], event_id, uid, batch)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.batch(batch))
        pipe.zrem(keys.batches, batch)
        pipe.execute()

    def _unstage(self, project_id: str, event_id: str, uid: str, batch: str) -> None:
        keys = self.keys
        event, uids = keys.event(event_id), keys.uids(project_id, keys.shard_of(event_id))
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(event, uids)
                    ours = pipe.hget(event, STAGED) == batch
                    took = pipe.hget(uids, uid) == event_id
                    pipe.multi()
                    if ours:
                        pipe.delete(event, keys.event_metadata(event_id))
                    if ours and took:
                        pipe.hdel(uids, uid)
                    pipe.execute()
                    return
                except WatchError:
                    continue

    def sweep_batches(self, grace: float = BATCH_GRACE) -> int:
        """Finish or undo the batch creates whose creator stopped half way (beat calls
        this); how many it settled."""
        if not self.stage_batches:
            return 0
        older = self._now_ms() - int(grace * 1000)
        settled = 0
        for batch in self.redis.zrangebyscore(self.keys.batches, "-inf", older):
            self._advance(batch, "staging", "undoing")  # a creator that stalled: undo
            self._settle(batch)
            settled += 1
        return settled

    def _now_ms(self) -> int:
        return int(self.now().timestamp() * 1000)

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
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*watched)
                    event = self.event_by_id(project_id, event_id)
                    if event is None:
                        return None
                    edit = decide(event)
                    inflight = pipe.zrange(watched[2], 0, -1) if edit.cancel else []
                    pipe.multi()
                    wake = self._apply(pipe, edit, inflight)
                    pipe.execute()
                    break
                except WatchError:
                    continue
        if wake:
            self.wake_beat()
        return edit

    def _apply(self, pipe: Any, edit: Edit, inflight: list[str]) -> bool:
        """Queue the edit's writes on ``pipe``; whether beat must look again."""
        event = edit.event
        if edit.cancel:
            self.scripts.cancel(event.id, inflight, edit.cancel, client=pipe)
            self._drop_replay(pipe, event.id)
        self._record_missed(pipe, event, edit.missed)
        if edit.replay:
            pipe.rpush(self.keys.event_replay(event.id), *edit.replay)
            pipe.zadd(self.keys.replay(self.keys.shard_of(event.id)), {event.id: 0})
        if edit.delete:
            self._delete(pipe, event)
        elif edit.park:
            self._put_event(pipe, event)
            self.scripts.park(event.id, client=pipe)
        elif edit.reschedule:
            return self._write_event(pipe, event)
        else:
            # The due index is left alone: beat may have just moved the score to the
            # next run, and writing back the score read earlier would claim an
            # occurrence twice.
            self._put_event(pipe, event)
        return False

    def _drop_replay(self, pipe: Any, event_id: str) -> None:
        pipe.delete(self.keys.event_replay(event_id))
        pipe.zrem(self.keys.replay(self.keys.shard_of(event_id)), event_id)

    def _record_missed(self, pipe: Any, event: Event, missed: tuple[tuple[str, int], ...]) -> None:
        """Execution records of occurrences that were not sent (as claim.lua writes them)."""
        stamp = int(self.now().timestamp())
        for instance_id, at in missed:
            key = self.keys.instance(instance_id)
            pipe.hset(key, mapping={"event_id": event.id, "event_uid": event.uid,
                                    "project_id": event.project_id, "trigger": "schedule",
                                    "status": InstanceStatus.MISSED, "scheduled_for": at,
                                    "enqueued_at": stamp, "completed_at": stamp})  # fmt: skip
            pipe.expire(key, self.retention)
            pipe.zadd(self.keys.event_instances(event.id), {instance_id: at})
        if missed:
            shard = self.keys.shard_of(event.id)
            pipe.hincrby(self.keys.metrics_executions(shard), InstanceStatus.MISSED, len(missed))

    def replay(
        self, shard: int, now_ms: int, new_id: Callable[[], str], *, limit: int,
        queue: str | None = None, tasks: Sequence[Any] = (),
    ) -> list[str]:  # fmt: skip
        """Send the next waiting occurrence of each event of ``shard`` whose replay list
        is due by ``now_ms`` (Redis' time); return the execution ids queued."""
        due = self.redis.zrangebyscore(self.keys.replay(shard), "-inf", now_ms, 0, limit)
        entries = [(event_id, new_id()) for event_id in due]
        return self.scripts.replay(shard, entries, retention=self.retention,
                                   pace_ms=REPLAY_PACE_MS, queue=queue, tasks=tasks)  # fmt: skip

    def replay_waiting(self, event_id: str) -> int:
        """How many past occurrences of the event wait to be sent."""
        return int(self.redis.llen(self.keys.event_replay(event_id)))

    def _put_event(self, pipe: Any, event: Event) -> None:
        fields = event.to_hash()
        unset = [name for name in Event.cleared() if name not in fields]
        if unset:
            pipe.hdel(self.keys.event(event.id), *unset)
        pipe.hset(self.keys.event(event.id), mapping=fields)
        pipe.set(
            self.keys.event_metadata(event.id), json.dumps(event.metadata, separators=(",", ":"))
        )

    def _write_event(self, pipe: Any, event: Event) -> bool:
        """Queue the event's writes with its place in the due index; whether it is due
        at some time (a sleeping beat must look again: it may be before it would)."""
        self._put_event(pipe, event)
        due, at = self.keys.due(self.keys.shard_of(event.id)), _due_at(event)
        if at is None:
            pipe.zrem(due, event.id)
            return False
        pipe.zadd(due, {event.id: at})
        return True

    def wake_beat(self) -> None:
        """Wake a sleeping beat (a hint, written after the change it announces: the wake
        key is in the global slot, not the event's)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(self.keys.beat_wake, 1)
        pipe.ltrim(self.keys.beat_wake, 0, 0)
        pipe.execute()

    def _delete(self, pipe: Any, event: Event) -> None:
        """Everything of the event goes now, but its execution records and their index,
        which stay readable by id until the retention ends, and then expire too."""
        shard = self.keys.shard_of(event.id)
        pipe.zrem(self.keys.due(shard), event.id)
        pipe.delete(self.keys.event(event.id), self.keys.event_metadata(event.id))
        pipe.hdel(self.keys.uids(event.project_id, shard), event.uid)
        pipe.zrem(self.keys.project_events(event.project_id, shard), event.id)
        pipe.expire(self.keys.event_instances(event.id), self.retention)
        pipe.expire(self.keys.event_inflight(event.id), self.retention)
        self._drop_replay(pipe, event.id)

    def event_by_uid(self, project_id: str, uid: str) -> Event:
        shard = self.keys.uid_shard(project_id, uid)
        event_id = self.redis.hget(self.keys.uids(project_id, shard), uid)
        event = self._events([event_id])[0] if event_id else None
        if event is None:
            raise NotFound(NO_SUCH_UID)
        return event

    def event_by_id(self, project_id: str, event_id: str) -> Event | None:
        """The event, or None when it is missing or belongs to another project."""
        event = self._events([event_id])[0]
        return event if event is not None and event.project_id == project_id else None

    def _events(self, ids: list[str]) -> list[Event | None]:
        pipe = self.redis.pipeline(transaction=False)
        for event_id in ids:
            pipe.hgetall(self.keys.event(event_id))
            pipe.zscore(self.keys.due(self.keys.shard_of(event_id)), event_id)
            pipe.get(self.keys.event_metadata(event_id))
        replies = pipe.execute()
        rows = list(zip(replies[::3], replies[1::3], replies[2::3], strict=True))
        last_runs = self._summaries([raw.get("last_run", "") for raw, _, _ in rows])
        return [
            # A staged event (a batch create not yet committed) does not exist yet.
            Event.from_hash(event_id, raw, score, metadata, last_run)
            if raw and STAGED not in raw
            else None
            for event_id, (raw, score, metadata), last_run in zip(ids, rows, last_runs, strict=True)
        ]

    def _summaries(self, instance_ids: list[str]) -> list[dict[str, Any] | None]:
        """Summaries of these executions (None for "" or one no longer kept)."""
        known = [iid for iid in instance_ids if iid]
        pipe = self.redis.pipeline(transaction=False)
        for iid in known:
            pipe.hgetall(self.keys.instance(iid))
        found = {
            iid: Instance.from_hash(iid, raw).summary()
            for iid, raw in zip(known, pipe.execute(), strict=True)
            if raw
        }
        return [found.get(iid) for iid in instance_ids]

    def list_events(
        self,
        project_id: str,
        offset: int,
        limit: int,
        status: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> tuple[list[Event], int]:
        """A page of the project's events, oldest first, and the total that match: all,
        or those with this ``status`` and every pair of ``labels`` (a filter reads every
        event of the project)."""
        if status is None and not labels and self.keys.shards == 1:
            key = self.keys.project_events(project_id, 0)
            ids = self.redis.zrange(key, offset, offset + limit - 1)
            return [e for e in self._events(ids) if e is not None], self.redis.zcard(key)
        if status is None and not labels:
            ids, total = self._event_ids(project_id, offset + limit)
            page = self._events(ids[offset : offset + limit])
            return [e for e in page if e is not None], total
        ids, _ = self._event_ids(project_id, None)
        matching = [
            e
            for e in self._events(ids)
            if e is not None and status in (None, e.status) and e.matches(labels or {})
        ]
        return matching[offset : offset + limit], len(matching)

    def _event_ids(self, project_id: str, first: int | None) -> tuple[list[str], int]:
        """The ``first`` (None: all) oldest event ids of the project, merged from its
        shards by creation number, and how many it has."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in self.keys.all_shards():
            key = self.keys.project_events(project_id, shard)
            pipe.zrange(key, 0, -1 if first is None else first - 1, withscores=True)
            pipe.zcard(key)
        replies = pipe.execute()
        merged = sorted((pair for pairs in replies[::2] for pair in pairs), key=lambda p: p[1])
        ids = [event_id for event_id, _ in merged]
        return ids if first is None else ids[:first], sum(replies[1::2])

    # -- the due index (beat) ------------------------------------------------------

    def due_events(self, shard: int, limit: int) -> tuple[int, list[DueEvent]]:
        """Redis' time (epoch ms) and the events of ``shard`` due by it, earliest first,
        with only the fields beat plans a claim from (two commands, whatever the batch)."""
        now_ms, due = self.scripts.due(shard, limit)
        rows = self.scripts.fields([self.keys.event(event_id) for event_id, _ in due], DUE_FIELDS)
        events = [
            DueEvent.from_row(event_id, at, row)
            for (event_id, at), row in zip(due, rows, strict=True)
            if row[0] is not None  # deleted between the two reads
        ]
        return now_ms, events

    def next_due_at(self) -> int | None:
        pipe = self.redis.pipeline(transaction=False)
        for shard in self.keys.all_shards():
            pipe.zrange(self.keys.due(shard), 0, 0, withscores=True)
        firsts = [int(first[0][1]) for first in pipe.execute() if first]
        return min(firsts, default=None)

    def claim(
        self,
        shard: int,
        claims: list[Claim],
        queue: str | None = None,
        tasks: Sequence[Any] = (),
    ) -> list[tuple[str, str]]:
        """Claim the occurrences of events of ``shard``; with ``queue`` (the broker is this
        Redis) also push their task messages (``tasks``: RedisMessages.arguments), in the
        same atomic step."""
        return self.scripts.claim(shard, claims, retention=self.retention, queue=queue, tasks=tasks)

    def release(
        self,
        waiting: str,
        shard: int,
        *,
        grace: float,
        queue: str | None,
        tasks: Sequence[Any] = (),
        limit: int = 1000,
    ) -> list[str]:
        """Release what waits in ``waiting`` (the retry, running or pending set of
        ``shard``) longer than ``grace`` seconds past its time: onto ``queue``, or without
        one into pending for the caller to publish and then ``forget_pending``."""
        return self.scripts.release(
            waiting, shard, grace_ms=int(grace * 1000), limit=limit, queue=queue, tasks=tasks
        )

    def forget_pending(self, instance_ids: list[str]) -> None:
        """Their publish is confirmed."""
        by_shard: dict[int, list[str]] = {}
        for iid in instance_ids:
            by_shard.setdefault(self.keys.shard_of(iid), []).append(iid)
        for shard, ids in by_shard.items():
            self.redis.zrem(self.keys.pending(shard), *ids)

    def waiting(self, kind: str) -> list[tuple[str, int]]:
        """Everything in the ``kind`` ("pending", "retry" or "running") sets of all shards,
        with its time (epoch ms), earliest first: for tests and operators."""
        sets = {"pending": self.keys.pending, "retry": self.keys.retry,
                "running": self.keys.running}  # fmt: skip
        found = [
            (iid, int(at))
            for shard in self.keys.all_shards()
            for iid, at in self.redis.zrange(sets[kind](shard), 0, -1, withscores=True)
        ]
        return sorted(found, key=lambda pair: pair[1])

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
        shard = self.keys.shard_of(instance.id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.instance(instance.id))
        pipe.zrem(self.keys.pending(shard), instance.id)
        pipe.hincrby(self.keys.metrics_executions(shard), "queued", -1)
        if instance.event_id:
            pipe.zrem(self.keys.event_instances(instance.event_id), instance.id)
            pipe.zrem(self.keys.event_inflight(instance.event_id), instance.id)
        if uid is not None:
            pipe.zrem(self.keys.message_uids(instance.project_id, shard), uid)
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
    ) -> str | None:
        """Write an execution's final state, release its event's overlap slot and count it:
        "done", or "recovered" for an event's first success after a failure; None when the
        attempt lost the record (another took over, or it ended)."""
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
        pipe = self.redis.pipeline(transaction=False)
        for iid in ids:
            pipe.hgetall(self.keys.instance(iid))
        pipe.zcard(key)
        *raws, total = pipe.execute()
        return [Instance.from_hash(i, raw) for i, raw in zip(ids, raws, strict=True) if raw], int(
            total
        )


def _due_at(event: Event) -> int | None:
    """Where the event goes in the due index (None: not in it)."""
    return event.scheduled_at if event.status == "activated" else None


def _refuse_taken(pipe: Any, uids_key: str, group: list[Event]) -> None:
    taken = pipe.hmget(uids_key, [event.uid for event in group])
    for event, existing in zip(group, taken, strict=True):
        if existing:
            raise UidTaken(event.uid, "Could not create scheduled event.")


def _latency(seconds: float) -> tuple[str, float]:
    seconds = max(0.0, seconds)
    return metrics.bucket_of(seconds), seconds
