"""The domain side of operating sendbeat: metric buckets, JSON log lines, the new
settings and the start-up check of the Redis server."""

from __future__ import annotations

import json
import logging
import math
import sys
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from app.core import logs, metrics
from app.core.health import redis_config_problems, warn_about_redis
from app.core.keys import Keys
from app.core.settings import Settings, SettingsError

# -- metrics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [(0.0, "0.05"), (0.05, "0.05"), (0.051, "0.1"), (1.0, "1"), (59.9, "60"), (61, "+Inf")],
)
def test_an_observation_lands_in_the_first_bucket_that_holds_it(
    seconds: float, bucket: str
) -> None:
    assert metrics.bucket_of(seconds) == bucket


def test_histograms_are_made_cumulative_when_rendered() -> None:
    stored = metrics.Histogram.from_hash({"0.05": "2", "1": "1", "+Inf": "4", "count": "7"})
    cumulative = dict(stored.cumulative())
    assert cumulative["0.05"] == 2
    assert cumulative["0.5"] == 2
    assert cumulative["1"] == 3
    assert cumulative["60"] == 3
    assert cumulative["+Inf"] == 7 == stored.count


def test_record_dispatch_counts_statuses_and_lateness(redis: Redis, settings: Settings) -> None:
    keys = Keys(settings.key_prefix, shards=2)
    metrics.record_dispatch(redis, keys, 0, [], [])
    assert not redis.exists(keys.metrics_executions(0), keys.metrics_lateness)
    written = [("a", "queued"), ("b", "skipped"), ("c", "queued")]
    metrics.record_dispatch(redis, keys, 0, written, [0.2, 75.0])
    metrics.record_dispatch(redis, keys, 1, [("d", "queued")], [])
    snap = metrics.read_snapshot(redis, keys, 0.0)
    assert snap.executions == {"queued": 3, "skipped": 1}  # summed over the shards
    assert snap.lateness.count == 2
    assert snap.lateness.sum == pytest.approx(75.2)
    assert snap.lateness.buckets["0.25"] == 1 and snap.lateness.buckets["+Inf"] == 1
    assert snap.heartbeat_age == math.inf
    assert snap.queue_depth is None


# -- logs ------------------------------------------------------------------------------


def record(message: str, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("sendbeat.worker", logging.WARNING, __file__, 1, message, (), None)
    made.__dict__.update(extra)
    return made


def test_a_json_line_has_the_fields_and_the_context() -> None:
    logs.clear()
    logs.bind(instance_id="i-1", event_id="")
    try:
        line = logs.JsonFormatter().format(record("sent %s"))
    finally:
        logs.clear()
    entry = json.loads(line)
    assert list(entry) == ["ts", "level", "logger", "message", "instance_id"]
    assert entry["level"] == "WARNING" and entry["logger"] == "sendbeat.worker"
    assert entry["ts"].endswith("+00:00")


def test_extra_fields_win_and_exceptions_are_kept_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        made = record("failed", event_id="e-9")
        made.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(made)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["event_id"] == "e-9"
    assert "ValueError: boom" in entry["exc_info"]


# -- settings --------------------------------------------------------------------------


def test_operations_settings_are_read_and_checked() -> None:
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({}).beat_stale_after == 10.0
    read = Settings.from_env({"SENDBEAT_LOG_FORMAT": "JSON", "SENDBEAT_BEAT_STALE_AFTER": "30"})
    assert (read.log_format, read.beat_stale_after) == ("json", 30.0)
    with pytest.raises(SettingsError, match="SENDBEAT_LOG_FORMAT"):
        Settings.from_env({"SENDBEAT_LOG_FORMAT": "xml"})
    with pytest.raises(SettingsError, match="SENDBEAT_BEAT_STALE_AFTER"):
        Settings.from_env({"SENDBEAT_BEAT_STALE_AFTER": "0"})


# -- the start-up check of the Redis server ---------------------------------------------


class FakeConfig:
    def __init__(self, config: dict[str, str] | None) -> None:
        self.config = config

    def config_get(self, name: str) -> dict[str, str]:
        if self.config is None:
            raise ResponseError("unknown command 'CONFIG'")
        return {name: self.config[name]} if name in self.config else {}


def test_a_safe_redis_has_no_problems() -> None:
    safe = {"appendonly": "yes", "save": "", "maxmemory-policy": "noeviction"}
    assert redis_config_problems(FakeConfig(safe)) == []
    rdb = {"appendonly": "no", "save": "3600 1", "maxmemory-policy": "noeviction"}
    assert redis_config_problems(FakeConfig(rdb)) == []


def test_no_persistence_and_eviction_are_named_with_the_fix() -> None:
    unsafe = {"appendonly": "no", "save": "", "maxmemory-policy": "allkeys-lru"}
    problems = redis_config_problems(FakeConfig(unsafe)) or []
    assert len(problems) == 2
    assert "appendonly yes" in problems[0]
    assert "allkeys-lru" in problems[1] and "noeviction" in problems[1]


def test_a_disabled_config_command_is_tolerated(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "sendbeat.health")
    assert warn_about_redis(FakeConfig(None), "worker") == []
    assert "CONFIG is not available" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_unreachable_redis_is_a_warning_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    class Down:
        def config_get(self, name: str) -> dict[str, str]:
            raise RedisConnectionError("Connection refused")

    assert warn_about_redis(Down(), "beat") == []
    assert "could not check the Redis configuration" in caplog.text


def test_the_machine_redis_is_checked(redis: Redis, caplog: pytest.LogCaptureFixture) -> None:
    """The test Redis runs without persistence (appendonly no, no save points) unless
    configured otherwise: whatever it is, every problem found is logged as a WARNING."""
    expected = redis_config_problems(redis)
    problems = warn_about_redis(redis, "web")
    assert problems == expected
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"web: {p}" for p in problems]
    if (
        redis.config_get("appendonly")["appendonly"] == "no"
        and not redis.config_get("save")["save"]
    ):
        assert any("appendonly yes" in w for w in warnings)
