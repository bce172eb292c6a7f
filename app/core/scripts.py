"""Typed wrappers over the Lua scripts in ``app/core/lua``.

Each script is ``prelude.lua`` (the one clock, the fence) followed by its own file,
loaded once and called by its SHA (redis-py's ``Script`` reloads it after a server
restart). Every key a script touches arrives in ``KEYS``, built by ``app.core.keys``.
Each wrapper turns the script's reply into a value or an enum member, so callers never
compare strings.

Time: every script reads the Redis server's clock itself, unless the store was given
a pinned clock (tests), whose time is then passed as the first argument.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

from redis import Redis

from app.core.keys import Keys
from app.core.records import InstanceStatus

log = logging.getLogger("sendbeat.store")


@cache
def _source(name: str) -> str:
    lua = resources.files("app.core").joinpath("lua")
    return lua.joinpath("prelude.lua").read_text() + lua.joinpath(f"{name}.lua").read_text()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Claim:
    """One event's due occurrence as beat computed it, ready to be claimed."""

    event_id: str
    at: int
    next_at: int | None
    send: tuple[str, int] | None  # (instance id, scheduled epoch)
    missed: tuple[tuple[str, int], ...] = ()
    event_uid: str = ""
    project_id: str = ""
    overlap: str = "skip"
    nominal: int | None = None  # the sent occurrence's own time, when jitter moved it
    max_runs: int | None = None

    def record(self, base: int) -> str:
        """The claim as claim.lua reads it: twelve fields separated by \x1f; ``base`` is
        the index (1-based) of its first key in KEYS."""
        send_id, send_at = self.send or ("", "")
        missed = " ".join(f"{iid} {at}" for iid, at in self.missed)
        next_at = "" if self.next_at is None else self.next_at
        nominal = "" if self.nominal is None else self.nominal
        max_runs = "" if self.max_runs is None else self.max_runs
        fields = (self.event_id, self.at, next_at, self.event_uid, self.project_id,
                  self.overlap, send_id, send_at, missed, base, nominal, max_runs)  # fmt: skip
        return "\x1f".join(map(str, fields))

    def keys(self, keys: Keys) -> list[str]:
        """The keys claim.lua touches for this claim, in its order."""
        ids = ([self.send[0]] if self.send else []) + [iid for iid, _ in self.missed]
        return [
            keys.event(self.event_id),
            keys.event_instances(self.event_id),
            keys.event_inflight(self.event_id),
            *map(keys.instance, ids),
        ]


class Started(StrEnum):
    """What start.lua made of a task besides a record's status (another worker holds it:
    ``running``; it ended: ``succeeded``, ``failed``, ``cancelled`` ...)."""

    START = "start"  # the caller sends it
    WAITING = "waiting"  # an early copy of a retry
    GONE = "gone"  # the record expired or was never written


@dataclass(frozen=True)
class Start:
    status: Started | InstanceStatus
    token: str = ""  # the attempt number, which fences every later write
    now_ms: int = 0
    record: dict[str, str] | None = None
    # An event's execution: the event's retry budget and metadata (JSON), read with the
    # start; None for a send_message execution.
    event_retries: int | None = None
    event_metadata: str | None = None


class Held(StrEnum):
    HELD = "held"
    LOST = "lost"  # another attempt took over, or the record ended
    STOP = "stop"  # the event was paused or deleted


class Enqueued(StrEnum):
    QUEUED = "queued"
    GONE = "gone"
    CONFLICT = "conflict"
    TAKEN = "taken"


# The writes of an execution's record a failover must not lose: the API's acceptance,
# the start (before anything is sent), the progress and the end of a send.
DURABLE = frozenset(("enqueue", "start", "hold", "retry", "finish", "late"))
REPLICA_WAIT_MS = 1000  # how long a durable write waits for its replicas before going on


class Scripts:
    def __init__(
        self, redis: Redis, keys: Keys, now_ms: Callable[[], str], *, replicas: int = 0
    ) -> None:
        """``now_ms`` gives the first argument of every script: "" (the server's clock)
        or a pinned time in epoch milliseconds. With ``replicas``, each DURABLE script
        is followed on its connection by WAIT: it returns once that many replicas hold
        its writes (or after REPLICA_WAIT_MS, logged: a replica is down or behind)."""
        self._redis = redis
        self._keys = keys
        self._now = now_ms
        self._replicas = replicas
        load = redis.register_script
        names = ("due", "fields", "claim", "release", "enqueue", "start", "hold", "retry",
                 "finish", "cancel", "park", "late", "replay")  # fmt: skip
        self._scripts = {name: load(_source(name)) for name in names}

    def _call(self, name: str, keys: Sequence[str], args: Sequence[Any], client: Any = None) -> Any:
        script, args = self._scripts[name], [self._now(), *args]
        if client is not None:
            # Queued in a caller's MULTI: sent whole (EVAL), since a script missing from
            # the server's cache would fail the transaction (and Redis Cluster pipelines
            # refuse EVALSHA). Only pauses and deletes do this.
            return client.execute_command("EVAL", _source(name), len(keys), *keys, *args)
        if not self._replicas or name not in DURABLE:
            return script(keys=keys, args=args)
        pipe = self._redis.pipeline(transaction=False)  # one connection: WAIT is per client
        script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self._replicas, REPLICA_WAIT_MS)
        reply, acknowledged = pipe.execute()
        if int(acknowledged) < self._replicas:
            log.warning(
                "%s: %s of %s replicas hold the write after %s ms; a failover now could lose it",
                name, acknowledged, self._replicas, REPLICA_WAIT_MS,
            )  # fmt: skip
        return reply

    def due(self, shard: int, limit: int) -> tuple[int, list[tuple[str, int]]]:
        """(now in epoch ms, [(event id, due epoch), ...] earliest first) of one shard."""
        now, *flat = self._call("due", [self._keys.due(shard)], [limit])
        pairs = [(_text(flat[i]), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]
        return int(now), pairs

    def fields(self, hashes: list[str], names: Sequence[str]) -> list[list[str | None]]:
        """The ``names`` fields of each hash, one row per hash (None where missing)."""
        if not hashes:
            return []
        flat = self._scripts["fields"](keys=hashes, args=list(names))
        width = len(names)
        values = [None if v is None else _text(v) for v in flat]
        return [values[i : i + width] for i in range(0, len(values), width)]

    def claim(
        self,
        shard: int,
        claims: list[Claim],
        *,
        retention: int,
        queue: str | None,
        tasks: Sequence[Any],
    ) -> list[tuple[str, str]]:
        """Claim the occurrences of events of ``shard`` (and push their task messages onto
        ``queue`` when the broker is this Redis; ``tasks`` is RedisMessages.arguments);
        return (instance id, status) for each record written."""
        if not claims:
            return []
        keys = [self._keys.due(shard), queue or self._keys.pending(shard)]
        records = []
        for claim in claims:
            records.append(claim.record(len(keys) + 1))
            keys += claim.keys(self._keys)
        template, separator, room = tasks if queue else ("", "", 0)
        mode = "push" if queue else "pending"
        args = [retention, mode, template, separator, room, "\x1e".join(records)]
        flat = self._call("claim", keys, args)
        values = [_text(v) for v in flat]
        return list(zip(values[::2], values[1::2], strict=True))

    def replay(
        self,
        shard: int,
        entries: list[tuple[str, str]],
        *,
        retention: int,
        pace_ms: int,
        queue: str | None,
        tasks: Sequence[Any],
    ) -> list[str]:
        """Send the next occurrence of each event's replay list (``entries``: event id,
        the id its execution gets); return the execution ids queued."""
        if not entries:
            return []
        keys = [self._keys.replay(shard), queue or self._keys.pending(shard),
                self._keys.metrics_executions(shard)]  # fmt: skip
        records = []
        for event_id, instance_id in entries:
            records.append(f"{event_id}\x1f{instance_id}\x1f{len(keys) + 1}")
            keys += [self._keys.event(event_id), self._keys.event_inflight(event_id),
                     self._keys.event_instances(event_id), self._keys.event_replay(event_id),
                     self._keys.instance(instance_id)]  # fmt: skip
        template, separator, room = tasks if queue else ("", "", 0)
        mode = "push" if queue else "pending"
        args = [retention, mode, template, separator, room, pace_ms, "\x1e".join(records)]
        return [_text(i) for i in self._call("replay", keys, args)]

    def release(
        self,
        waiting: str,
        shard: int,
        *,
        grace_ms: int,
        limit: int,
        queue: str | None,
        tasks: Sequence[Any],
    ) -> list[str]:
        """Release the due ids of a waiting set of ``shard``: pushed onto ``queue`` with
        their task messages, or (no queue) moved to its pending set for the caller to
        publish."""
        destination = queue or self._keys.pending(shard)
        mode = "push" if queue else "take"
        args = [grace_ms, limit, mode, *(tasks if queue else ())]
        _, *ids = self._call("release", [waiting, destination], args)
        return [_text(i) for i in ids]

    def enqueue(
        self,
        instance_id: str,
        *,
        retention: int,
        queue: str | None,
        entry: str,
        tasks: Sequence[Any],
        project_id: str,
        event: tuple[str, str] | None = None,
        uid: str = "",
        payload: str = "",
    ) -> tuple[Enqueued, int]:
        """Record a manual trigger of ``event`` (id, uid), or a send_message (``uid``,
        ``payload``), and push its task ``entry`` onto ``queue`` (the broker is this Redis;
        ``tasks`` is RedisMessages.arguments), or without a queue mark it pending for the
        caller to publish."""
        shard = self._keys.shard_of(instance_id)
        destination = queue or self._keys.pending(shard)
        keys = [self._keys.instance(instance_id), destination,
                self._keys.metrics_executions(shard)]  # fmt: skip
        entry = entry if queue else ""
        if event is not None:
            event_id, event_uid = event
            keys += [self._keys.event(event_id), self._keys.event_inflight(event_id),
                     self._keys.event_instances(event_id)]  # fmt: skip
            args = ["manual", project_id, event_id, event_uid]
        else:
            keys.append(self._keys.message_uids(project_id, shard))
            args = ["api", project_id, uid, payload]
        args += list(tasks) if entry else []
        reply = self._call("enqueue", keys, [retention, instance_id, entry, *args])
        return Enqueued(_text(reply[0])), int(reply[1]) if len(reply) > 1 else 0

    def start(
        self, instance_id: str, event_id: str, *, lease_ms: int, retention: int, retries: int
    ) -> Start:
        shard = self._keys.shard_of(instance_id)
        keys = [self._keys.instance(instance_id), self._keys.running(shard),
                self._keys.retry(shard), self._keys.pending(shard),
                self._keys.metrics_executions(shard)]  # fmt: skip
        if event_id:
            keys += [self._keys.event(event_id), self._keys.event_inflight(event_id),
                     self._keys.event_metadata(event_id)]  # fmt: skip
        reply = self._call("start", keys, [lease_ms, instance_id, retention, retries])
        text = _text(reply[0])
        status = Started(text) if text in Started.__members__.values() else InstanceStatus(text)
        if status is not Started.START:
            return Start(status)
        event_retries, event_metadata = _text(reply[3]), _text(reply[4])
        flat = [_text(v) for v in reply[5:]]
        return Start(
            status,
            _text(reply[1]),
            int(reply[2]),
            dict(zip(flat[::2], flat[1::2], strict=True)),
            int(event_retries) if event_retries else None,
            event_metadata if event_id else None,
        )

    def hold(
        self, instance_id: str, token: str, *, lease_ms: int, delivered: str, result: str
    ) -> tuple[Held, str]:
        """Renew the lease (and record the progress, when given): (HELD, ""), (LOST, "")
        or (STOP, "paused" | "deleted")."""
        keys = [self._keys.instance(instance_id),
                self._keys.running(self._keys.shard_of(instance_id))]  # fmt: skip
        reply = self._call("hold", keys, [lease_ms, token, instance_id, delivered, result])
        return Held(_text(reply[0])), _text(reply[1]) if len(reply) > 1 else ""

    def retry(
        self, instance_id: str, token: str, *, delay_ms: int, error: str, latency: tuple[str, float]
    ) -> bool:
        """Park the execution for ``delay_ms``; False when the token no longer holds it."""
        shard = self._keys.shard_of(instance_id)
        keys = [self._keys.instance(instance_id), self._keys.running(shard),
                self._keys.retry(shard), self._keys.metrics_executions(shard),
                self._keys.metrics_send_latency(shard)]  # fmt: skip
        bucket, seconds = latency
        reply = self._call("retry", keys, [token, instance_id, delay_ms, error, bucket, seconds])
        return bool(_text(reply[0]) == "retrying")

    def finish(
        self,
        instance_id: str,
        event_id: str,
        token: str,
        *,
        status: str,
        error: str,
        result: str,
        retention: int,
        latency: tuple[str, float] | None,
    ) -> str | None:
        """Write the final state: "done", or "recovered" (an event's first success after
        a failure); None when the token no longer holds the record."""
        shard = self._keys.shard_of(instance_id)
        keys = [self._keys.instance(instance_id), self._keys.running(shard),
                self._keys.metrics_executions(shard),
                self._keys.metrics_send_latency(shard)]  # fmt: skip
        if event_id:
            keys += [self._keys.event(event_id), self._keys.event_inflight(event_id),
                     self._keys.event_instances(event_id)]  # fmt: skip
        bucket, seconds = latency or ("", 0.0)
        args = [token, instance_id, status, error, result, retention, bucket, seconds]
        outcome = _text(self._call("finish", keys, args)[0])
        return None if outcome == "lost" else outcome

    def late(self, instance_id: str, token: str, late: str) -> bool:
        """Note copies a stale attempt got accepted (JSON); False when the record is gone."""
        return bool(self._call("late", [self._keys.instance(instance_id)], [token, late]))

    def cancel(self, event_id: str, instance_ids: list[str], why: str, *, client: Any) -> None:
        """Queue the cancel of the event's in-flight executions on ``client`` (the MULTI
        of a pause or delete)."""
        shard = self._keys.shard_of(event_id)
        keys = [self._keys.pending(shard), self._keys.retry(shard),
                self._keys.event_inflight(event_id), self._keys.metrics_executions(shard),
                *map(self._keys.instance, instance_ids)]  # fmt: skip
        self._call("cancel", keys, [why, *instance_ids], client=client)

    def park(self, event_id: str, *, client: Any) -> None:
        """Queue, on ``client`` (the MULTI of a pause), taking the event out of the due
        index while keeping its due time as ``resume_at``."""
        keys = [self._keys.due(self._keys.shard_of(event_id)), self._keys.event(event_id)]
        client.execute_command("EVAL", _source("park"), len(keys), *keys, event_id)
