"""The record types sendbeat stores and returns: projects, events, execution records.

Plain dataclasses with their hash encodings (``to_hash`` / ``from_hash``) and the
published shapes of DESIGN §3 and §7 (``record`` / ``summary``). No I/O here: the
store (``app.core.store``) reads and writes them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from app.core.clock import from_timestamp, isoformat


def new_id() -> str:
    """A random (version 4) UUID as text; a third of ``str(uuid.uuid4())``'s cost,
    which beat pays for every occurrence it claims."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class InstanceStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    MISSED = "missed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    created_at: int
    key_prefixes: tuple[str, ...] = ()


# Defaults fixed by the product contract (not by settings): an event hash leaves these
# fields out when they hold them.
FIXED_DEFAULTS = {"timezone": "UTC", "overlap": "skip", "dst": "shift"}


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
    resume_at: int | None = None  # where a paused schedule stood: resume starts there
    labels: dict[str, str] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # [{url, on: [kind, ...]}]
    jitter: int = 0  # seconds: each occurrence fires up to this much after its time
    start_at: int | None = None  # no occurrence before it
    end_at: int | None = None  # none after it
    max_runs: int | None = None  # completed once this many occurrences were queued
    dst: str = "shift"  # app.core.schedules.DST_POLICIES
    runs: int = 0  # occurrences queued by beat (claim.lua counts them for max_runs)
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
            "labels": self.labels,
            "alerts": self.alerts,
            "jitter": self.jitter,
            "start_at": _iso(self.start_at),
            "end_at": _iso(self.end_at),
            "max_runs": self.max_runs,
            "dst": self.dst,
        }

    def matches(self, selector: dict[str, str]) -> bool:
        """Whether the event carries every pair of the label ``selector``."""
        return all(self.labels.get(name) == value for name, value in selector.items())

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
            "dst": self.dst,
            "jitter": self.jitter,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if self.suspended_at is not None:
            fields["suspended_at"] = self.suspended_at
        if self.run_at is not None:
            fields["run_at"] = self.run_at
        if self.resume_at is not None:
            fields["resume_at"] = self.resume_at
        if not self.jitter:
            del fields["jitter"]
        if self.runs:  # edits WATCH the hash: a count claim.lua added meanwhile is never lost
            fields["runs"] = self.runs
        for name in ("start_at", "end_at", "max_runs"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        if self.alerts:
            fields["alerts"] = json.dumps(self.alerts, separators=(",", ":"))
        if self.labels:
            fields["labels"] = json.dumps(self.labels, separators=(",", ":"), sort_keys=True)
        for name, default in FIXED_DEFAULTS.items():
            if fields[name] == default:
                del fields[name]
        if self.updated_at == self.created_at:
            del fields["updated_at"]  # never updated: it reads as created_at
        return fields

    @staticmethod
    def cleared() -> tuple[str, ...]:
        """Fields ``to_hash`` leaves out when unset, to delete on rewrite."""
        return ("suspended_at", "run_at", "resume_at", "labels", "jitter", "start_at", "end_at",
                "max_runs", "runs", "alerts", "updated_at", *FIXED_DEFAULTS)  # fmt: skip

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
            resume_at=int(float(raw["resume_at"])) if raw.get("resume_at") else None,
            labels=json.loads(raw["labels"]) if raw.get("labels") else {},
            alerts=json.loads(raw["alerts"]) if raw.get("alerts") else [],
            jitter=int(raw.get("jitter", 0)),
            start_at=_int_or_none(raw.get("start_at")),
            end_at=_int_or_none(raw.get("end_at")),
            max_runs=_int_or_none(raw.get("max_runs")),
            dst=raw.get("dst", FIXED_DEFAULTS["dst"]),
            runs=int(raw.get("runs", 0)),
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
    dst: str = "shift"
    jitter: int = 0
    start_at: int | None = None
    end_at: int | None = None
    max_runs: int | None = None
    alert_on: frozenset[str] = frozenset()  # the transitions its own alerts ask for

    @classmethod
    def from_row(cls, event_id: str, at: int, row: list[str | None]) -> DueEvent:
        """From the values of ``DUE_FIELDS``, in that order."""
        (schedule, timezone, event_type, window, uid, project_id, overlap, dst, jitter,
         start_at, end_at, max_runs, alerts) = (v or "" for v in row)  # fmt: skip
        return cls(event_id, at, schedule, timezone or FIXED_DEFAULTS["timezone"], event_type,
                   int(window), uid, project_id, overlap or FIXED_DEFAULTS["overlap"],
                   dst or FIXED_DEFAULTS["dst"], int(jitter or 0), _int_or_none(start_at),
                   _int_or_none(end_at), _int_or_none(max_runs),
                   frozenset(k for a in json.loads(alerts or "[]") for k in a["on"]))  # fmt: skip


DUE_FIELDS = ("schedule", "timezone", "event_type", "catchup_window", "uid", "project_id",
              "overlap", "dst", "jitter", "start_at", "end_at", "max_runs", "alerts")  # fmt: skip


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value else None


ALERT_FIELD = "alert:"  # an execution hash field per alert sent: alert:{kind}:{url}


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
    nominal_for: int | None = None  # a jittered occurrence's time by its schedule
    alerts: list[dict[str, Any]] = field(default_factory=list)  # [{url, type, status, attempts}]

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
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
        if self.nominal_for is not None:  # scheduled_for is when its jitter made it due
            record["nominal_for"] = _iso(self.nominal_for)
        if self.alerts:
            record["alerts"] = self.alerts
        return record

    def summary(self) -> dict[str, Any]:
        return {
            "uid": self.id,
            "trigger": self.trigger,
            "status": self.status,
            "scheduled_for": _iso(self.scheduled_for),
            "completed_at": _iso(self.completed_at),
        }

    @classmethod
    def from_hash(cls, instance_id: str, raw: dict[str, str]) -> Instance:
        def opt_int(name: str) -> int | None:
            return int(float(raw[name])) if raw.get(name) else None

        instance = cls(
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
            nominal_for=opt_int("nominal_for"),
        )
        for name, value in sorted(raw.items()):
            if name.startswith("late."):
                instance.add_late(json.loads(value))
            elif name.startswith(ALERT_FIELD):
                instance.alerts.append(json.loads(value))
        return instance

    def add_late(self, late: dict[str, list[str]]) -> None:
        """Copies a stale attempt got accepted (late.lua: its ``delivered`` recipients and
        the ``accepted`` addresses): they arrived, whatever the holder of the record knows."""
        self.delivered += [r for r in late["delivered"] if r not in self.delivered]
        result = self.result or {"message_id": None, "accepted": [], "rejected": {}}
        accepted = result.get("accepted", [])
        result["accepted"] = accepted + [a for a in late["accepted"] if a not in accepted]
        self.result = result


def _iso(epoch: int | None) -> str | None:
    return None if epoch is None else isoformat(from_timestamp(epoch))
