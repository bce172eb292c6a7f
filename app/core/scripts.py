"""Typed wrappers over the Lua scripts in ``app/core/lua``; each script is loaded once
and called by its SHA (redis-py's ``Script`` reloads it after a server restart)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from redis import Redis

from app.core.keys import Keys


def _source(name: str) -> str:
    return resources.files("app.core").joinpath(f"lua/{name}.lua").read_text()


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

    def record(self) -> str:
        """The claim as claim.lua reads it: nine fields separated by \x1f."""
        send_id, send_at = self.send or ("", "")
        missed = " ".join(f"{iid} {at}" for iid, at in self.missed)
        next_at = "" if self.next_at is None else self.next_at
        fields = (self.event_id, self.at, next_at, self.event_uid, self.project_id,
                  self.overlap, send_id, send_at, missed)  # fmt: skip
        return "\x1f".join(map(str, fields))


class Scripts:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._keys = keys
        self._claim = redis.register_script(_source("claim"))
        self._start = redis.register_script(_source("start"))
        self._publish = redis.register_script(_source("publish"))
        self._due = redis.register_script(_source("due"))
        self._cancel = redis.register_script(_source("cancel"))

    def claim(
        self,
        claims: list[Claim],
        *,
        now: int,
        retention: int,
        queue: str | None,
        template: list[str],
    ) -> list[tuple[str, str]]:
        """Claim the occurrences (and push their task messages onto ``queue`` when the
        broker is this Redis); return (instance id, status) for each record written."""
        if not claims:
            return []
        flat = self._claim(
            keys=[self._keys.due, self._keys.pending, queue or ""],
            args=[
                now,
                retention,
                self._keys.event(""),
                self._keys.instance(""),
                len(template) if queue else 0,
                *(template if queue else []),
                "\x1e".join(claim.record() for claim in claims),
            ],
        )
        values = [v.decode() if isinstance(v, bytes) else v for v in flat]
        return list(zip(values[::2], values[1::2], strict=True))

    def start(self, instance_id: str, *, now: int, lease: int) -> tuple[str, int]:
        """Try to start an execution; ("start", attempts) means the caller sends it."""
        reply = self._start(
            keys=[self._keys.instance(instance_id), self._keys.running],
            args=[now, lease, instance_id],
        )
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        return status, int(reply[1]) if len(reply) > 1 else 0

    def publish(self, waiting: str, queue: str, messages: list[tuple[str, str]]) -> int:
        """Move (instance id, task message) pairs from a waiting set onto the queue."""
        if not messages:
            return 0
        args = [part for pair in messages for part in pair]
        return int(self._publish(keys=[waiting, queue], args=args))

    def cancel(self, event_id: str, instance_ids: list[str], *, now: int) -> list[str]:
        """Cancel those executions that have not started; return their ids."""
        if not instance_ids:
            return []
        keys = [self._keys.pending, self._keys.retry, self._keys.event_active(event_id)]
        reply = self._cancel(keys=keys, args=[now, self._keys.instance(""), *instance_ids])
        return [v.decode() if isinstance(v, bytes) else v for v in reply]

    def due(self, now: int, limit: int, fields: tuple[str, ...]) -> list[list[str]]:
        """[event id, score, *fields] for each due event, earliest first."""
        flat = self._due(keys=[self._keys.due], args=[now, limit, self._keys.event(""), *fields])
        width = 2 + len(fields)
        values = [v.decode() if isinstance(v, bytes) else v for v in flat]
        return [values[i : i + width] for i in range(0, len(values), width)]
