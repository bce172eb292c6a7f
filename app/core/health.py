"""Whether this installation can work: readiness checks (Redis, broker, beat's
heartbeat) and the start-up check of the Redis server's persistence and eviction
settings. Each check answers "ok" or says what is wrong, in words an operator acts on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from app.core.publisher import BrokerLink, reason, task_queue
from app.core.store import Store

OK = "ok"
log = logging.getLogger("sendbeat.health")


@dataclass(frozen=True)
class Readiness:
    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        return all(result == OK for result in self.checks.values())


class BrokerProbe:
    """Checks the broker over one kombu connection, kept between checks and rebuilt
    after a failure. Declaring the task queue (as the publisher and the workers do)
    is a real round trip on every transport."""

    def __init__(self, url: str, queue: str, timeout: float = 2.0) -> None:
        self._queue = task_queue(queue)
        self._link = BrokerLink(url, timeout, retries=0)

    def check(self) -> str:
        try:
            self._link.use(lambda connection: self._queue(connection.default_channel).declare())
        except Exception as exc:  # kombu raises transport-specific errors
            return f"unreachable: {reason(exc)}"
        return OK

    def close(self) -> None:
        self._link.close()


def check_redis(store: Store) -> str:
    try:
        store.redis.ping()
    except RedisError as exc:
        return f"unreachable: {reason(exc)}"
    return OK


def check_beat(store: Store, stale_after: float) -> str:
    """Whether a beat ticked lately, by Redis' clock (beat writes its heartbeat by it)."""
    try:
        last = store.last_heartbeat()
        now = store.now().timestamp()
    except RedisError:
        return "unknown: Redis is unreachable"
    if last is None:
        return "no heartbeat yet: is a beat process running?"
    age = now - last
    if age > stale_after:
        return f"no heartbeat for {age:.0f} s"
    return OK


def readiness(store: Store, broker: BrokerProbe, stale_after: float) -> Readiness:
    return Readiness(
        {
            "redis": check_redis(store),
            "broker": broker.check(),
            "beat": check_beat(store, stale_after),
        }
    )


# -- the start-up check of the Redis server ------------------------------------------


def redis_config_problems(redis: Any) -> list[str] | None:
    """What makes this Redis unsafe for sendbeat; None when CONFIG is not allowed."""
    try:
        config = {}
        for name in ("appendonly", "save", "maxmemory-policy"):
            config.update(_text(redis.config_get(name)))
    except ResponseError:  # hosted Redis often disables or renames CONFIG
        return None
    problems = []
    if config.get("appendonly", "yes") != "yes" and not config.get("save", "x").strip():
        problems.append(
            "Redis does not persist (appendonly no and no RDB save points): schedules and "
            "executions are lost on restart; set `appendonly yes` (CONFIG SET appendonly yes "
            "and in redis.conf)"
        )
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        problems.append(
            f"Redis maxmemory-policy is {policy}: it may evict schedules and executions "
            "when memory is full; set `maxmemory-policy noeviction`"
        )
    return problems


def _text(raw: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }


def warn_about_redis(redis: Any, process: str) -> list[str]:
    """Log a WARNING for each problem of the Redis server; return the problems."""
    try:
        problems = redis_config_problems(redis)
    except RedisError as exc:
        log.warning("%s: could not check the Redis configuration: %s", process, reason(exc))
        return []
    if problems is None:
        log.info("%s: CONFIG is not available; check persistence and eviction yourself", process)
        return []
    for problem in problems:
        log.warning("%s: %s", process, problem)
    return problems
