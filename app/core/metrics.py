"""Operational metrics, kept in Redis so every process on every machine adds to the
same figures, and read back at scrape time into Prometheus metric families.

Recording: the scripts that end a worker's attempt (``finish.lua``, ``retry.lua``) count
it and its send latency in the same atomic step as the record, fenced like the record;
``record_dispatch`` (beat wrote claims) adds its counts in one pipeline.
Reading: ``read_snapshot`` takes every figure in one round trip and ``Collector``
turns a snapshot into Prometheus metrics. Histograms are stored as one counter per
bucket (that bucket alone) plus ``count`` and ``sum``; they are made cumulative only
when rendered. Every function takes the Redis client and the key schema explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from app.core.keys import Keys
from app.core.records import InstanceStatus

BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, math.inf)
STATUSES = tuple(status.value for status in InstanceStatus)


def bucket_of(seconds: float) -> str:
    """The field of the first bucket whose upper bound holds ``seconds``."""
    bound = next(b for b in BUCKETS if seconds <= b)
    return _label(bound)


def _label(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound)).removesuffix(".0")


def record_dispatch(
    redis: Any, keys: Keys, shard: int, written: list[tuple[str, str]], lateness: list[float]
) -> None:
    """Beat wrote these (instance id, status) records in ``shard`` and published
    occurrences this many seconds after their scheduled time."""
    if not written and not lateness:
        return
    pipe = redis.pipeline(transaction=False)
    for status, count in _count(status for _, status in written).items():
        pipe.hincrby(keys.metrics_executions(shard), status, count)
    # Beat publishes many occurrences at once: one increment per bucket, not per value.
    for bucket, count in _count(bucket_of(max(0.0, s)) for s in lateness).items():
        pipe.hincrby(keys.metrics_lateness, bucket, count)
    if lateness:
        pipe.hincrby(keys.metrics_lateness, "count", len(lateness))
        pipe.hincrbyfloat(keys.metrics_lateness, "sum", sum(max(0.0, s) for s in lateness))
    pipe.execute()


def _count(statuses: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


@dataclass(frozen=True)
class Histogram:
    """A stored histogram: per-bucket (not cumulative) counts, total count and sum."""

    buckets: dict[str, int] = field(default_factory=dict)
    count: int = 0
    sum: float = 0.0

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> Histogram:
        return cls.from_hashes([raw])

    @classmethod
    def from_hashes(cls, raws: list[dict[str, str]]) -> Histogram:
        """The histogram of several stored ones (one per shard), added up."""
        buckets = {_label(b): sum(int(r.get(_label(b), 0)) for r in raws) for b in BUCKETS}
        count = sum(int(r.get("count", 0)) for r in raws)
        return cls(buckets, count, sum(float(r.get("sum", 0.0)) for r in raws))

    def cumulative(self) -> list[tuple[str, float]]:
        running, out = 0, []
        for bound in BUCKETS:
            running += self.buckets.get(_label(bound), 0)
            out.append((_label(bound), float(running)))
        return out


@dataclass(frozen=True)
class Snapshot:
    due_backlog: int
    heartbeat_age: float  # +Inf when no beat ever ran
    executions: dict[str, int]
    lateness: Histogram
    send_latency: Histogram
    queue_depth: int | None = None  # None when the broker is not Redis


def read_snapshot(
    redis: Any, keys: Keys, now: float, *, queue_redis: Any = None, queue: str = ""
) -> Snapshot:
    """Every figure in one round trip (two when the broker is another Redis); the
    per-shard figures summed over the shards."""
    pipe = redis.pipeline(transaction=False)
    pipe.get(keys.beat_heartbeat)
    pipe.hgetall(keys.metrics_lateness)
    for shard in keys.all_shards():
        pipe.zcount(keys.due(shard), "-inf", math.floor(now))
        pipe.hgetall(keys.metrics_executions(shard))
        pipe.hgetall(keys.metrics_send_latency(shard))
    if queue_redis is redis:
        pipe.llen(queue)
    heartbeat, lateness, *replies = pipe.execute()
    shards = replies[: 3 * keys.shards]
    depth = replies[3 * keys.shards :]
    if queue_redis is not None and queue_redis is not redis:
        depth = [queue_redis.llen(queue)]
    return Snapshot(
        due_backlog=sum(int(n) for n in shards[0::3]),
        heartbeat_age=max(0.0, now - float(heartbeat)) if heartbeat else math.inf,
        executions=_summed(_decoded(raw) for raw in shards[1::3]),
        lateness=Histogram.from_hash(_decoded(lateness)),
        send_latency=Histogram.from_hashes([_decoded(raw) for raw in shards[2::3]]),
        queue_depth=int(depth[0]) if depth else None,
    )


def _summed(hashes: Iterable[dict[str, str]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for raw in hashes:
        for name, n in raw.items():
            total[name] = total.get(name, 0) + int(n)
    return total


def _decoded(raw: dict[Any, Any]) -> dict[str, str]:
    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return {text(k): text(v) for k, v in raw.items()}


class Collector:
    """A prometheus-client collector that reads Redis at every scrape."""

    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        return iter(metric_families(self._read()))


def metric_families(snap: Snapshot) -> list[Metric]:
    families: list[Metric] = [
        GaugeMetricFamily(
            "sendbeat_due_backlog",
            "Events due now and not yet claimed by a beat.",
            value=snap.due_backlog,
        ),
        GaugeMetricFamily(
            "sendbeat_beat_heartbeat_age_seconds",
            "Seconds since a beat last ticked (+Inf when none ever did).",
            value=snap.heartbeat_age,
        ),
    ]
    if snap.queue_depth is not None:
        families.append(
            GaugeMetricFamily(
                "sendbeat_queue_depth",
                "Task messages waiting in the broker queue.",
                value=snap.queue_depth,
            )
        )
    families.append(_executions(snap.executions))
    families.append(
        _histogram(
            "sendbeat_dispatch_lateness_seconds",
            "How late each occurrence was published after its scheduled time.",
            snap.lateness,
        )
    )
    families.append(
        _histogram(
            "sendbeat_send_latency_seconds",
            "How long a worker took to send one execution, start to finish.",
            snap.send_latency,
        )
    )
    return families


def _executions(counts: dict[str, int]) -> Metric:
    family = CounterMetricFamily(
        "sendbeat_executions",
        "Execution records that reached each status.",
        labels=["status"],
    )
    for status in sorted(set(STATUSES) | set(counts)):
        family.add_metric([status], counts.get(status, 0))
    return family


def _histogram(name: str, documentation: str, histogram: Histogram) -> Metric:
    return HistogramMetricFamily(
        name, documentation, buckets=histogram.cumulative(), sum_value=histogram.sum
    )
