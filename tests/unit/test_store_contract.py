"""The store's contract, run unchanged against fakeredis and a real Redis server."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import fakeredis
import pytest

from app.core.events import Defaults, EventSpec, create_events, dispatch_due, plan_claim
from app.core.keys import Keys
from app.core.store import InstanceStatus, Store

NOW = datetime(2026, 3, 2, 10, 0, 30, tzinfo=UTC)
T0 = int(NOW.timestamp())
ARGS = {
    "arguments": {
        "recipients": "a@example.com",
        "headers": {"from": "b@example.com"},
        "content": {"text/plain": "hi"},
    }
}


@pytest.fixture(params=["fakeredis", "redis"])
def any_store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "fakeredis":
        yield Store(fakeredis.FakeRedis(decode_responses=True), Keys("t"))
    else:
        yield request.getfixturevalue("store")


class Recorder:
    """Stands in for a broker that is not the store's Redis: records what the domain
    hands it to publish (the direct path is tested against real Redis below)."""

    direct_queue = None

    def __init__(self) -> None:
        self.published: list[str] = []

    def publish(self, ids: list[str]) -> None:
        self.published.extend(ids)

    @property
    def template_parts(self) -> list[str]:
        return []

    def message(self, instance_id: str) -> str:
        return f"task:{instance_id}"


def add(store: Store, schedule: str, **extra: object) -> str:
    spec = EventSpec(schedule=schedule, metadata=ARGS, uid=f"u-{schedule}", **extra)  # type: ignore[arg-type]
    [event] = create_events(store, "p1", [spec], NOW, Defaults()).events
    return event.id


def test_an_occurrence_is_claimed_once(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins")
    [event] = any_store.due_events(T0 + 30, 10)
    claim = plan_claim(event, T0 + 30)

    first = any_store.claim([claim], T0 + 30, None)
    second = any_store.claim([plan_claim(event, T0 + 30)], T0 + 30, None)

    assert first == [(claim.send[0], "queued")]  # type: ignore[index]
    assert second == []
    instances, total = any_store.list_instances(event_id, 0, 10)
    assert total == 1 and instances[0].scheduled_for == T0 + 30


def test_dispatch_moves_the_schedule_and_publishes(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins")
    recorder = Recorder()

    assert dispatch_due(any_store, recorder, NOW, 100) == 0  # type: ignore[arg-type]
    assert dispatch_due(any_store, recorder, datetime.fromtimestamp(T0 + 31, UTC), 100) == 1  # type: ignore[arg-type]

    [instance], _ = any_store.list_instances(event_id, 0, 10)
    assert recorder.published == [instance.id]
    assert instance.status == InstanceStatus.QUEUED
    assert any_store.event_by_id("p1", event_id).scheduled_at == T0 + 90  # type: ignore[union-attr]
    assert any_store.waiting(any_store.keys.pending, T0 + 100) == []


def test_a_long_outage_records_missed_runs_and_sends_only_the_latest(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins", catchup_window=120)
    recorder = Recorder()
    later = datetime.fromtimestamp(T0 + 30 + 600 + 10, UTC)  # ten minutes of downtime

    dispatch_due(any_store, recorder, later, 100)  # type: ignore[arg-type]

    instances, _ = any_store.list_instances(event_id, 0, 100)
    statuses = Counter(i.status for i in instances)
    assert statuses == {"missed": 10, "queued": 1}
    assert len(recorder.published) == 1
    assert instances[0].status == "queued"  # newest first: the one late send
    assert any_store.event_by_id("p1", event_id).scheduled_at == T0 + 30 + 660  # type: ignore[union-attr]


def test_beyond_the_window_nothing_is_sent(any_store: Store) -> None:
    event_id = add(any_store, "every 1 hours", catchup_window=60)
    recorder = Recorder()
    late = datetime.fromtimestamp(T0 + 3600 + 300, UTC)

    dispatch_due(any_store, recorder, late, 100)  # type: ignore[arg-type]

    [instance], _ = any_store.list_instances(event_id, 0, 10)
    assert instance.status == "missed" and recorder.published == []


def test_overlap_skip_records_skipped_while_one_is_running(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins")
    recorder = Recorder()
    dispatch_due(any_store, recorder, datetime.fromtimestamp(T0 + 30, UTC), 100)  # type: ignore[arg-type]

    dispatch_due(any_store, recorder, datetime.fromtimestamp(T0 + 90, UTC), 100)  # type: ignore[arg-type]

    instances, _ = any_store.list_instances(event_id, 0, 10)
    assert [i.status for i in instances] == ["skipped", "queued"]
    assert len(recorder.published) == 1


def test_a_one_time_event_completes(any_store: Store) -> None:
    event_id = add(any_store, "in 5 minutes")
    recorder = Recorder()

    dispatch_due(any_store, recorder, datetime.fromtimestamp(T0 + 300, UTC), 100)  # type: ignore[arg-type]

    event = any_store.event_by_id("p1", event_id)
    assert event is not None and event.status == "completed" and event.scheduled_at is None
    assert len(recorder.published) == 1


def test_an_execution_starts_once(any_store: Store) -> None:
    add(any_store, "every 1 mins")
    recorder = Recorder()
    dispatch_due(any_store, recorder, datetime.fromtimestamp(T0 + 30, UTC), 100)  # type: ignore[arg-type]
    [iid] = recorder.published

    assert any_store.start_instance(iid, T0 + 31, 300) == ("start", 1)
    assert any_store.start_instance(iid, T0 + 32, 300)[0] == "running"  # a redelivery waits
    assert any_store.start_instance(iid, T0 + 400, 300) == ("start", 2)  # lease ran out
    instance = any_store.instance(iid)
    assert instance is not None
    any_store.finish_instance(instance, InstanceStatus.SUCCEEDED, T0 + 401)
    assert any_store.start_instance(iid, T0 + 900, 300)[0] == "succeeded"


def test_deleting_cancels_queued_executions(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins")
    recorder = Recorder()
    dispatch_due(any_store, recorder, datetime.fromtimestamp(T0 + 30, UTC), 100)  # type: ignore[arg-type]
    event = any_store.event_by_id("p1", event_id)
    assert event is not None

    cancelled = any_store.delete_event(event, T0 + 31)

    assert cancelled == recorder.published
    assert any_store.instance(cancelled[0]).status == "cancelled"  # type: ignore[union-attr]
    assert any_store.start_instance(cancelled[0], T0 + 31, 300)[0] == "cancelled"
    assert any_store.due_events(T0 + 10_000, 10) == []


def test_api_keys(any_store: Store) -> None:
    project, key = any_store.create_project("acme", T0)

    assert any_store.project_for_key(key) == project.id
    assert len(key) >= 32
    new = any_store.rotate_key("acme", T0)
    assert any_store.project_for_key(key) is None
    assert any_store.project_for_key(new) == project.id
    any_store.revoke_key(new[:12])
    assert any_store.project_for_key(new) is None
    # Only the hash is stored: the key itself appears nowhere in Redis.
    assert not any(new in str(v) for v in any_store.redis.keys("*"))


def test_a_copy_that_stands_down_keeps_the_record_watched(any_store: Store) -> None:
    add(any_store, "every 1 mins")
    recorder = Recorder()
    dispatch_due(any_store, recorder, datetime.fromtimestamp(T0 + 30, UTC), 100)  # type: ignore[arg-type]
    [iid] = recorder.published
    any_store.start_instance(iid, T0 + 31, 5)  # lease until T0 + 36
    # Beat sweeps the lease away from {p}:running to publish a copy...
    any_store.forget_waiting(any_store.keys.running, [iid])

    # ...and the copy, arriving within the lease, stands down.
    assert any_store.start_instance(iid, T0 + 36, 5)[0] == "running"

    # The record is watched again, so a worker that dies now is still noticed.
    assert any_store.waiting(any_store.keys.running, T0 + 37) == [iid]


def test_dispatch_counts_what_it_wrote_and_how_late(any_store: Store) -> None:
    add(any_store, "every 1 mins", catchup_window=120)
    recorder = Recorder()

    dispatch_due(any_store, recorder, datetime.fromtimestamp(T0 + 30 + 180, UTC), 100)  # type: ignore[arg-type]

    counts = any_store.redis.hgetall(any_store.keys.metrics_executions)
    lateness = any_store.redis.hgetall(any_store.keys.metrics_lateness)
    assert (counts["queued"], counts["missed"]) == ("1", "3")
    assert lateness["count"] == "1"  # one occurrence published, one lateness observed


def test_scheduling_an_event_wakes_a_sleeping_beat(any_store: Store) -> None:
    assert any_store.wait_for_wake(0) is False

    add(any_store, "every 1 mins")

    assert any_store.redis.lrange(any_store.keys.beat_wake, 0, -1) == ["1"]
    if isinstance(any_store.redis, fakeredis.FakeRedis):
        return  # fakeredis does not block; the rest needs a real server
    started = time.monotonic()
    assert any_store.wait_for_wake(5) is True  # the token is there: no waiting
    assert any_store.wait_for_wake(0.2) is False  # consumed; the next wait times out
    assert time.monotonic() - started < 2
