"""The store's contract, run unchanged against fakeredis and a real Redis server.

Every store here has a pinned clock (``Pinned``), which the Lua scripts then use instead
of the server's: the tests move time by hand instead of sleeping.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import fakeredis
import pytest
from redis.crc import key_slot

from app.core.dispatch import MAX_MISSED_PER_CLAIM, dispatch_due, plan_claim, release_waiting
from app.core.errors import Conflict, EventGone, UidTaken
from app.core.events import (
    CATCHUP_LIMIT,
    Defaults,
    EventChanges,
    EventSpec,
    backfill,
    create_events,
    delete_event,
    send_message,
    set_paused,
    trigger,
    update_event,
)
from app.core.keys import Keys
from app.core.records import InstanceStatus
from app.core.redis_client import connect
from app.core.scripts import Held, Started
from app.core.store import Store

NOW = datetime(2026, 3, 2, 10, 0, 30, tzinfo=UTC)
T0 = int(NOW.timestamp())
ARGS = {
    "arguments": {
        "recipients": "a@example.com",
        "headers": {"from": "b@example.com"},
        "content": {"text/plain": "hi"},
    }
}


@dataclass
class Pinned:
    """A clock the test moves by hand."""

    at: float = T0

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.at, UTC)


@pytest.fixture(params=["fakeredis", "redis", "redis, 3 shards", "cluster, 6 shards"])
def any_store(request: pytest.FixtureRequest) -> Iterator[Store]:
    prefix = request.getfixturevalue("settings").key_prefix
    if request.param == "fakeredis":
        store = Store(fakeredis.FakeRedis(decode_responses=True), Keys("t"))
    elif request.param == "redis":
        store = request.getfixturevalue("store")
    elif request.param == "redis, 3 shards":
        store = Store(request.getfixturevalue("redis"), Keys(prefix, shards=3))
        one_slot_per_script(store)
    else:
        cluster = connect(request.getfixturevalue("cluster_url"))
        store = Store(cluster, Keys(prefix, shards=6))
        request.addfinalizer(lambda: drop(cluster, prefix))
    store.clock = Pinned()
    yield store


def drop(client: Any, prefix: str) -> None:
    for key in list(client.scan_iter(f"{{{prefix}*", count=1000)):
        client.delete(key)
    client.close()


def one_slot_per_script(store: Store) -> None:
    """Make every Lua script call of ``store`` fail unless all its keys share one hash
    slot, as Redis Cluster requires."""

    def checked(script: Any) -> Any:
        def call(keys: Any = (), args: Any = (), client: Any = None) -> Any:
            slots = {key_slot(key.encode()) for key in keys}
            assert len(slots) <= 1, f"keys of one script call span {len(slots)} slots: {keys}"
            return script(keys=keys, args=args, client=client)

        return call

    scripts = store.scripts._scripts
    for name in scripts:
        scripts[name] = checked(scripts[name])


def executions(store: Store) -> dict[str, str]:
    """The executions counter, summed over the shards."""
    counts: Counter[str] = Counter()
    for shard in store.keys.all_shards():
        counts.update(
            {
                k: int(v)
                for k, v in store.redis.hgetall(store.keys.metrics_executions(shard)).items()
            }
        )
    return {k: str(v) for k, v in counts.items()}


def uids_left(store: Store, project_id: str) -> list[str]:
    """The send_message uids the project still remembers, in every shard."""
    keys = store.keys
    return sorted(
        uid
        for shard in keys.all_shards()
        for uid in store.redis.zrange(keys.message_uids(project_id, shard), 0, -1)
    )


def at(store: Store, seconds: float) -> None:
    store.clock.at = seconds  # type: ignore[union-attr]


class Recorder:
    """Stands in for a broker that is not the store's Redis: records what the domain
    hands it to publish (the direct path is tested against real Redis below)."""

    direct_queue = None
    lua_arguments = ()

    def __init__(self, fail: bool = False) -> None:
        self.published: list[str] = []
        self.alerts: list[tuple[str, str]] = []
        self.fail = fail

    def publish(self, ids: list[str]) -> None:
        if self.fail:
            from app.core.errors import DispatchError

            raise DispatchError("Dispatcher error: the broker is down")
        self.published.extend(ids)

    def message(self, instance_id: str) -> str:
        return f"task:{instance_id}"

    def publish_alert(
        self, instance_id: str, kind: str, attempt: int = 1, delay: float = 0
    ) -> None:
        self.alerts.append((instance_id, kind))


def add(store: Store, schedule: str, **extra: object) -> str:
    spec = EventSpec(schedule=schedule, metadata=ARGS, uid=f"u-{schedule}", **extra)  # type: ignore[arg-type]
    [event] = create_events(store, "p1", [spec], Defaults()).events
    return event.id


def dispatch(store: Store, recorder: Recorder, when: float) -> int:
    at(store, when)
    return dispatch_due(store, recorder, 100).due  # type: ignore[arg-type]


def started(store: Store, iid: str, when: float, lease: float = 300) -> tuple[Started, str]:
    at(store, when)
    start, _ = store.start(iid, lease=lease, retries=5)
    return start.status, start.token


def test_an_occurrence_is_claimed_once(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins")
    at(any_store, T0 + 30)
    shard = any_store.keys.shard_of(event_id)
    now_ms, [event] = any_store.due_events(shard, 10)
    assert now_ms == (T0 + 30) * 1000  # the pinned clock reached the script
    new_id = partial(any_store.keys.new_id, shard)
    claim = plan_claim(event, T0 + 30, new_id)

    first = any_store.claim(shard, [claim])
    second = any_store.claim(shard, [plan_claim(event, T0 + 30, new_id)])

    assert first == [(claim.send[0], "queued")]  # type: ignore[index]
    assert second == []
    instances, total = any_store.list_instances(event_id, 0, 10)
    assert total == 1 and instances[0].scheduled_for == T0 + 30


def test_dispatch_moves_the_schedule_and_publishes(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins")
    recorder = Recorder()

    assert dispatch(any_store, recorder, T0) == 0
    assert dispatch(any_store, recorder, T0 + 31) == 1

    [instance], _ = any_store.list_instances(event_id, 0, 10)
    assert recorder.published == [instance.id]
    assert instance.status == InstanceStatus.QUEUED
    assert any_store.event_by_id("p1", event_id).scheduled_at == T0 + 90  # type: ignore[union-attr]
    assert any_store.waiting("pending") == []  # published: nothing pending


def test_a_long_outage_records_missed_runs_and_sends_only_the_latest(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins", catchup_window=120)
    recorder = Recorder()

    dispatch(any_store, recorder, T0 + 30 + 600 + 10)  # ten minutes of downtime

    instances, _ = any_store.list_instances(event_id, 0, 100)
    statuses = Counter(i.status for i in instances)
    assert statuses == {"missed": 10, "queued": 1}
    assert len(recorder.published) == 1
    assert instances[0].status == "queued"  # newest first: the one late send
    assert any_store.event_by_id("p1", event_id).scheduled_at == T0 + 30 + 660  # type: ignore[union-attr]


def test_an_outage_beyond_the_missed_cap_still_sends_the_latest_once(any_store: Store) -> None:
    event_id = add(any_store, "every 1 secs", catchup_window=5)
    recorder = Recorder()
    first_run = T0 + 1
    down_until = first_run + 3 * 3600 + 0.5  # three hours: 10,800 occurrences

    dispatch(any_store, recorder, down_until)

    instances, total = any_store.list_instances(event_id, 0, 1000)
    statuses = Counter(i.status for i in instances)
    # The cap bounds the records written, never what is sent: the latest is sent once.
    assert statuses == {"missed": MAX_MISSED_PER_CLAIM, "queued": 1}
    assert total == MAX_MISSED_PER_CLAIM + 1
    [sent] = [i for i in instances if i.status == "queued"]
    assert sent.scheduled_for == int(down_until)
    missed = sorted(i.scheduled_for for i in instances if i.status == "missed")
    assert missed == list(range(int(down_until) - MAX_MISSED_PER_CLAIM, int(down_until)))
    assert recorder.published == [sent.id]
    assert any_store.event_by_id("p1", event_id).scheduled_at == int(down_until) + 1  # type: ignore[union-attr]


def test_beyond_the_window_nothing_is_sent(any_store: Store) -> None:
    event_id = add(any_store, "every 1 hours", catchup_window=60)
    recorder = Recorder()

    dispatch(any_store, recorder, T0 + 3600 + 300)

    [instance], _ = any_store.list_instances(event_id, 0, 10)
    assert instance.status == "missed" and recorder.published == []


def test_overlap_skip_records_skipped_while_one_is_running(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins")
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 30)

    dispatch(any_store, recorder, T0 + 90)

    instances, _ = any_store.list_instances(event_id, 0, 10)
    assert [i.status for i in instances] == ["skipped", "queued"]
    assert len(recorder.published) == 1


def test_an_execution_whose_record_expired_does_not_block_its_event(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins")
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 30)
    # Its task was lost with a queue flushed by hand; the record outlived the retention.
    [stale] = recorder.published
    any_store.redis.delete(any_store.keys.instance(stale))

    dispatch(any_store, recorder, T0 + 30 + any_store.retention + 60)

    instances, _ = any_store.list_instances(event_id, 0, 10)
    assert instances[0].status == "queued"  # not skipped for ever


def test_a_one_time_event_completes(any_store: Store) -> None:
    event_id = add(any_store, "in 5 minutes")
    recorder = Recorder()

    dispatch(any_store, recorder, T0 + 300)

    event = any_store.event_by_id("p1", event_id)
    assert event is not None and event.status == "completed" and event.scheduled_at is None
    assert len(recorder.published) == 1


def test_max_runs_completes_the_event_after_that_many_queued_occurrences(
    any_store: Store,
) -> None:
    event_id = add(any_store, "every 1 mins", max_runs=2, overlap="allow")
    recorder = Recorder()

    for minute in range(4):
        dispatch(any_store, recorder, T0 + 30 + 60 * minute)

    assert len(recorder.published) == 2
    event = any_store.event_by_id("p1", event_id)
    assert event is not None and event.status == "completed" and event.scheduled_at is None
    assert any_store.redis.zscore(any_store.keys.due(any_store.keys.shard_of(event_id)),
                                  event_id) is None  # fmt: skip


def test_a_completed_event_given_a_new_schedule_counts_max_runs_afresh(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins", max_runs=1, overlap="allow")
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 30)
    done = any_store.event_by_id("p1", event_id)
    assert done is not None and done.status == "completed" and done.runs == 1
    again = update_event(any_store, done, EventChanges(schedule="every 2 mins"))
    assert again.status == "activated" and again.runs == 0
    dispatch(any_store, recorder, T0 + 90)
    assert len(recorder.published) == 2
    assert any_store.event_by_id("p1", event_id).status == "completed"  # type: ignore[union-attr]


def test_a_skipped_occurrence_does_not_count_towards_max_runs(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins", max_runs=2)  # overlap skip: the first is live
    recorder = Recorder()
    for minute in range(3):
        dispatch(any_store, recorder, T0 + 30 + 60 * minute)
    statuses = [i.status for i in any_store.list_instances(event_id, 0, 10)[0]]
    assert statuses == ["skipped", "skipped", "queued"]
    assert any_store.event_by_id("p1", event_id).status == "activated"  # type: ignore[union-attr]


def test_end_at_sends_its_last_occurrence_then_completes(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins", end_at=T0 + 90, overlap="allow")
    recorder = Recorder()
    for minute in range(3):
        dispatch(any_store, recorder, T0 + 30 + 60 * minute)
    instances, _ = any_store.list_instances(event_id, 0, 10)
    assert sorted(i.scheduled_for for i in instances) == [T0 + 30, T0 + 90]
    assert any_store.event_by_id("p1", event_id).status == "completed"  # type: ignore[union-attr]


def test_start_at_holds_the_first_occurrence_back(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins", start_at=T0 + 3600)
    event = any_store.event_by_id("p1", event_id)
    assert event is not None and event.scheduled_at == T0 + 3630
    assert dispatch(any_store, Recorder(), T0 + 1800) == 0


def test_a_jittered_occurrence_is_sent_at_its_offset_and_keeps_its_own_time(
    any_store: Store,
) -> None:
    event_id = add(any_store, "every 1 mins", jitter=50)
    event = any_store.event_by_id("p1", event_id)
    assert event is not None and event.scheduled_at is not None
    fire = event.scheduled_at
    nominal = fire - (fire - T0 - 30) % 60  # the minute boundary it belongs to
    assert 0 <= fire - nominal < 50
    if fire > nominal:  # not due at its own time, only at its offset
        assert dispatch(any_store, Recorder(), fire - 1) == 0

    dispatch(any_store, Recorder(), fire)

    [instance], _ = any_store.list_instances(event_id, 0, 10)
    assert (instance.scheduled_for, instance.nominal_for) == (
        fire,
        nominal if fire != nominal else None,
    )
    later = any_store.event_by_id("p1", event_id)
    assert later is not None and later.scheduled_at is not None
    assert 0 <= later.scheduled_at - (nominal + 60) < 50


def test_changing_a_timing_policy_moves_the_next_run(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins")
    event = any_store.event_by_id("p1", event_id)
    assert event is not None
    moved = update_event(any_store, event, EventChanges(start_at=T0 + 7200))
    assert moved.scheduled_at == T0 + 7230 and moved.start_at == T0 + 7200
    cleared = update_event(any_store, moved, EventChanges(cleared=frozenset({"start_at"})))
    assert cleared.scheduled_at == T0 + 30 and cleared.start_at is None


def test_beat_alerts_one_missed_per_event_and_claim_and_each_skipped(any_store: Store) -> None:
    alerts = [{"url": "https://alerts.example.com/in", "on": ["missed", "skipped"]}]
    loud = add(any_store, "every 1 mins", alerts=alerts)
    quiet = add(any_store, "every 2 mins")  # no alerts, no project default: silent
    recorder = Recorder()

    dispatch(any_store, recorder, T0 + 30 + 600 + 10)  # ten minutes of downtime
    [(missed_id, kind)] = recorder.alerts
    instances = {i.id: i for i in any_store.list_instances(loud, 0, 100)[0]}
    assert kind == "missed" and instances[missed_id].status == "missed"
    assert instances[missed_id].scheduled_for == max(
        i.scheduled_for for i in instances.values() if i.status == "missed"
    )  # the latest missed run stands for the outage

    dispatch(any_store, recorder, T0 + 30 + 660)  # the late send is still queued: skipped
    assert [k for _, k in recorder.alerts] == ["missed", "skipped"]
    assert len(any_store.list_instances(quiet, 0, 100)[0]) > 1  # quiet missed, skipped too

    any_store.set_alert_url("p1", "https://alerts.example.com/default")
    recorder.alerts.clear()
    dispatch(any_store, recorder, T0 + 30 + 780)  # 10:14: both due, both still in flight
    by_event = {(any_store.instance(i).event_id, k) for i, k in recorder.alerts}  # type: ignore[union-attr]
    assert by_event == {(loud, "skipped"), (loud, "missed")}  # a default hears no skips
    recorder.alerts.clear()
    dispatch(any_store, recorder, T0 + 30 + 780 + 600)  # another outage
    by_event = {(any_store.instance(i).event_id, k) for i, k in recorder.alerts}  # type: ignore[union-attr]
    assert (quiet, "missed") in by_event  # but the default hears of missed runs


def test_an_execution_starts_once(any_store: Store) -> None:
    add(any_store, "every 1 mins")
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 30)
    [iid] = recorder.published

    assert started(any_store, iid, T0 + 31) == ("start", "1")
    assert started(any_store, iid, T0 + 32)[0] == "running"  # a redelivery waits
    assert started(any_store, iid, T0 + 400) == ("start", "2")  # lease ran out
    instance = any_store.instance(iid)
    assert instance is not None
    assert any_store.finish(instance, "2", InstanceStatus.SUCCEEDED)
    assert started(any_store, iid, T0 + 900)[0] == "succeeded"


def test_a_stale_attempt_can_write_nothing(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins")
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 30)
    [iid] = recorder.published
    started(any_store, iid, T0 + 31, lease=5)
    started(any_store, iid, T0 + 40, lease=5)  # taken over: attempt 2 holds it now
    instance = any_store.instance(iid)
    assert instance is not None

    assert any_store.hold(iid, "1", lease=5, delivered=["a@example.com"]) == (Held.LOST, "")
    assert not any_store.retry(iid, "1", delay=10, error="451", took=1.0)
    assert not any_store.finish(instance, "1", InstanceStatus.FAILED, error="stale")

    record = any_store.instance(iid)
    assert record is not None
    assert (record.status, record.delivered, record.attempts) == ("running", [], 2)
    assert any_store.finish(instance, "2", InstanceStatus.SUCCEEDED)
    event = any_store.event_by_id("p1", event_id)
    assert event is not None and event.run_count == 1
    counts = executions(any_store)
    assert counts.get("succeeded") == "1" and "failed" not in counts


def test_a_held_lease_outlives_its_first_term(any_store: Store) -> None:
    add(any_store, "every 1 mins")
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 30)
    [iid] = recorder.published
    started(any_store, iid, T0 + 31, lease=5)

    for second in range(33, 60, 2):  # the heartbeat, every third of the lease
        at(any_store, T0 + second)
        assert any_store.hold(iid, "1", lease=5) == (Held.HELD, "")
        assert release_waiting(any_store, recorder, unconfirmed=30) == 0  # type: ignore[arg-type]
        assert started(any_store, iid, T0 + second + 1)[0] == "running"

    assert len(recorder.published) == 1


def test_an_execution_taken_over_too_often_ends_failed(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins", retries=1)
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 30)
    [iid] = recorder.published

    when = T0 + 31
    for _ in range(1 + 3):  # the first start, then retries + 2 takeovers
        assert started(any_store, iid, when, lease=5)[0] == "start"
        when += 10
    assert started(any_store, iid, when, lease=5)[0] == "failed"

    record = any_store.instance(iid)
    assert record is not None
    assert (record.status, record.error) == ("failed", "worker lost 4 times")
    assert iid not in dict(any_store.waiting("running"))
    assert not any_store.redis.zcard(any_store.keys.event_inflight(event_id))


def test_a_retry_waits_for_its_time(any_store: Store) -> None:
    add(any_store, "every 1 mins")
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 30)
    [iid] = recorder.published
    started(any_store, iid, T0 + 31)

    assert any_store.retry(iid, "1", delay=20, error="451 later", took=0.5)

    assert started(any_store, iid, T0 + 40)[0] == "waiting"  # an early copy
    at(any_store, T0 + 50)
    assert release_waiting(any_store, recorder, unconfirmed=30) == 0  # type: ignore[arg-type]
    at(any_store, T0 + 52)
    assert release_waiting(any_store, recorder, unconfirmed=30) == 1  # type: ignore[arg-type]
    assert started(any_store, iid, T0 + 52) == ("start", "2")


def test_deleting_cancels_queued_executions_and_leaves_nothing_live(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins")
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 30)
    event = any_store.event_by_id("p1", event_id)
    assert event is not None

    delete_event(any_store, event)

    [iid] = recorder.published
    assert any_store.instance(iid).status == "cancelled"  # type: ignore[union-attr]
    assert started(any_store, iid, T0 + 31)[0] == "cancelled"
    at(any_store, T0 + 10_000)
    assert any_store.due_events(any_store.keys.shard_of(event_id), 10)[1] == []
    keys = any_store.keys
    assert not any_store.redis.exists(keys.event(event_id), keys.event_metadata(event_id))
    # Its executions stay readable until the retention, then go too.
    for key in (keys.event_instances(event_id), keys.event_inflight(event_id)):
        ttl = any_store.redis.ttl(key)
        assert ttl == -2 or 0 < ttl <= any_store.retention


def test_pausing_stops_an_execution_being_sent(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins")
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 30)
    [iid] = recorder.published
    started(any_store, iid, T0 + 31)
    event = any_store.event_by_id("p1", event_id)
    assert event is not None

    set_paused(any_store, event, True)

    at(any_store, T0 + 200)
    assert any_store.hold(iid, "1", lease=300) == (Held.STOP, "paused")
    instance = any_store.instance(iid)
    assert instance is not None and instance.status == "running"
    # The lease is renewed all the same: the worker ends the execution itself, after the
    # copy it is finishing, and nobody takes it over meanwhile.
    assert any_store.waiting("running") == [(iid, (T0 + 500) * 1000)]


def test_pausing_and_resuming_a_completed_event_changes_nothing(any_store: Store) -> None:
    event_id = add(any_store, "in 5 minutes")
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 300)
    event = any_store.event_by_id("p1", event_id)
    assert event is not None and event.status == "completed"

    set_paused(any_store, event, True)
    resumed = set_paused(any_store, event, False)

    assert (resumed.status, resumed.scheduled_at) == ("completed", None)
    dispatch(any_store, recorder, T0 + 400)
    assert len(recorder.published) == 1  # its one run, not a second
    assert any_store.list_instances(event_id, 0, 10)[1] == 1


def paused_through_three_runs(store: Store, catchup: str, **extra: object) -> str:
    """An event paused before beat claimed its first run (T0 + 30) and resumed at
    T0 + 200 with ``catchup``: T0 + 30, + 90 and + 150 fell due while it was paused."""
    event_id = add(store, "every 1 mins", **extra)
    event = store.event_by_id("p1", event_id)
    assert event is not None
    at(store, T0 + 31)  # beat had not claimed T0 + 30 (it was down, or had not ticked)
    set_paused(store, event, True)
    at(store, T0 + 200)
    resumed = set_paused(store, event, False, catchup=catchup)
    assert resumed.scheduled_at == T0 + 210  # the schedule goes on from now
    return event_id


def runs(store: Store, event_id: str) -> dict[int, tuple[str, str]]:
    instances, _ = store.list_instances(event_id, 0, 100)
    return {i.scheduled_for: (i.status, i.trigger) for i in instances}


def test_resuming_records_what_fell_due_while_paused_and_by_default_sends_none(
    any_store: Store,
) -> None:
    event_id = paused_through_three_runs(any_store, "none")
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 201)
    assert recorder.published == []
    missed = ("missed", "schedule")
    assert runs(any_store, event_id) == {T0 + 30: missed, T0 + 90: missed, T0 + 150: missed}


def test_resuming_with_catchup_latest_sends_the_last_missed_run_once(any_store: Store) -> None:
    event_id = paused_through_three_runs(any_store, "latest")
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 201)
    dispatch(any_store, recorder, T0 + 205)
    assert len(recorder.published) == 1
    missed = ("missed", "schedule")
    assert runs(any_store, event_id) == {T0 + 30: missed, T0 + 90: missed,
                                         T0 + 150: ("queued", "schedule")}  # fmt: skip


def test_resuming_with_catchup_all_sends_every_missed_run_in_order_one_a_second(
    any_store: Store,
) -> None:
    event_id = paused_through_three_runs(any_store, "all", overlap="allow")
    recorder = Recorder()
    for moment in (T0 + 201, T0 + 201.5, T0 + 202.1, T0 + 203.2, T0 + 204.3):
        dispatch(any_store, recorder, moment)
        if moment == T0 + 201.5:
            assert len(recorder.published) == 1  # paced: not two in one second
    assert len(recorder.published) == 3
    by_id = {i.id: i.scheduled_for for i in any_store.list_instances(event_id, 0, 10)[0]}
    assert [by_id[iid] for iid in recorder.published] == [T0 + 30, T0 + 90, T0 + 150]
    assert any_store.replay_waiting(event_id) == 0


def test_catchup_all_with_overlap_skip_waits_for_each_run_to_end(any_store: Store) -> None:
    paused_through_three_runs(any_store, "all")
    recorder = Recorder()
    for second in range(1, 6):
        dispatch(any_store, recorder, T0 + 200 + second)
    assert len(recorder.published) == 1  # the first is still queued: the next waits
    first = recorder.published[0]
    _, token = started(any_store, first, T0 + 206)
    assert any_store.finish(any_store.instance(first), token, "succeeded")  # type: ignore[arg-type]
    dispatch(any_store, recorder, T0 + 207)
    assert len(recorder.published) == 2


def test_a_long_pause_with_catchup_all_sends_the_last_hundred_and_records_the_rest(
    any_store: Store,
) -> None:
    event_id = add(any_store, "every 1 mins", overlap="allow")
    event = any_store.event_by_id("p1", event_id)
    at(any_store, T0 + 1)
    set_paused(any_store, event, True)  # type: ignore[arg-type]
    at(any_store, T0 + 30 + 249 * 60)  # 250 occurrences fell due (the last just now)
    set_paused(any_store, any_store.event_by_id("p1", event_id), False, catchup="all")  # type: ignore[arg-type]

    assert any_store.replay_waiting(event_id) == CATCHUP_LIMIT
    instances, total = any_store.list_instances(event_id, 0, 1000)
    # The 150 before the last 100 are missed; their records stop at the latest 100.
    assert total == MAX_MISSED_PER_CLAIM == 100
    assert {i.status for i in instances} == {"missed"}
    assert sorted(i.scheduled_for for i in instances) == [T0 + 30 + 60 * n for n in range(50, 150)]


@pytest.mark.parametrize("overlap", ["skip", "allow"])
def test_a_backfill_runs_its_range_in_order_by_its_overlap_policy(
    any_store: Store, overlap: str
) -> None:
    event_id = add(any_store, "every 1 mins")
    event = any_store.event_by_id("p1", event_id)
    start = datetime.fromtimestamp(T0 - 3600, UTC)  # 09:00:30: 09:01 ... 09:05
    queued = backfill(any_store, event, start, start + timedelta(minutes=5), overlap)  # type: ignore[arg-type]
    assert queued == 5
    recorder = Recorder()
    for second in range(1, 8):
        dispatch(any_store, recorder, T0 + second)
    expected = 1 if overlap == "skip" else 5  # skip: the first is still queued
    assert len(recorder.published) == expected
    by_id = {i.id: i for i in any_store.list_instances(event_id, 0, 10)[0]}
    assert [by_id[iid].scheduled_for for iid in recorder.published] == [
        T0 - 3600 + 30 + 60 * n for n in range(expected)
    ]
    assert {by_id[iid].trigger for iid in recorder.published} == {"backfill"}


def test_a_pause_drops_what_a_catchup_had_left_to_send(any_store: Store) -> None:
    event_id = paused_through_three_runs(any_store, "all", overlap="allow")
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 201)
    set_paused(any_store, any_store.event_by_id("p1", event_id), True)  # type: ignore[arg-type]
    assert any_store.replay_waiting(event_id) == 0
    dispatch(any_store, recorder, T0 + 205)
    assert len(recorder.published) == 1


def test_a_paused_event_can_still_be_triggered_by_hand(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins")
    event = any_store.event_by_id("p1", event_id)
    assert event is not None
    set_paused(any_store, event, True)
    recorder = Recorder()

    instance = trigger(any_store, recorder, event)  # type: ignore[arg-type]

    assert started(any_store, instance.id, T0 + 1)[0] == "start"
    assert any_store.hold(instance.id, "1", lease=300) == (Held.HELD, "")


def test_an_edit_racing_a_delete_never_brings_the_event_back(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins")
    event = any_store.event_by_id("p1", event_id)
    assert event is not None
    real_now = any_store.now

    def delete_in_between() -> datetime:
        # The delete lands after the update read the event and before it writes.
        any_store.now = real_now  # type: ignore[method-assign]
        delete_event(any_store, any_store.event_by_id("p1", event_id))  # type: ignore[arg-type]
        return real_now()

    any_store.now = delete_in_between  # type: ignore[method-assign]
    with pytest.raises(EventGone):
        update_event(any_store, event, EventChanges(schedule="every 2 mins"))

    keys = any_store.keys
    assert not any_store.redis.exists(keys.event(event_id), keys.event_metadata(event_id))
    assert any_store.redis.zscore(keys.due(keys.shard_of(event_id)), event_id) is None
    assert (
        any_store.redis.hget(
            keys.uids("p1", keys.uid_shard("p1", "u-every 1 mins")), "u-every 1 mins"
        )
        is None
    )


def test_an_update_keeps_the_status_beat_wrote_meanwhile(any_store: Store) -> None:
    event_id = add(any_store, "in 5 minutes")
    event = any_store.event_by_id("p1", event_id)
    assert event is not None
    real_now = any_store.now
    recorder = Recorder()

    def beat_in_between() -> datetime:
        any_store.now = real_now  # type: ignore[method-assign]
        dispatch(any_store, recorder, T0 + 300)  # beat claims it: the event completes
        return real_now()

    any_store.now = beat_in_between  # type: ignore[method-assign]
    updated = update_event(any_store, event, EventChanges(retries=2))

    assert (updated.status, updated.retries) == ("completed", 2)
    stored = any_store.event_by_id("p1", event_id)
    assert stored is not None and stored.status == "completed"


def test_of_two_triggers_at_once_one_is_refused(any_store: Store) -> None:
    event_id = add(any_store, "@daily")
    event = any_store.event_by_id("p1", event_id)
    assert event is not None
    recorder = Recorder()

    trigger(any_store, recorder, event)  # type: ignore[arg-type]
    with pytest.raises(Conflict):
        trigger(any_store, recorder, event)  # type: ignore[arg-type]

    assert len(recorder.published) == 1
    assert any_store.redis.zcard(any_store.keys.event_inflight(event_id)) == 1


def test_a_failed_publish_leaves_nothing_and_frees_the_uid(any_store: Store) -> None:
    event_id = add(any_store, "@daily")
    event = any_store.event_by_id("p1", event_id)
    assert event is not None
    from app.core.errors import DispatchError

    with pytest.raises(DispatchError):
        trigger(any_store, Recorder(fail=True), event)  # type: ignore[arg-type]
    with pytest.raises(DispatchError):
        send_message(any_store, Recorder(fail=True), "p1", ARGS["arguments"], "m-1")  # type: ignore[arg-type]

    assert any_store.list_instances(event_id, 0, 10) == ([], 0)
    assert any_store.waiting("pending") == []
    recorder = Recorder()
    trigger(any_store, recorder, event)  # type: ignore[arg-type]  # no phantom: not 409
    send_message(any_store, recorder, "p1", ARGS["arguments"], "m-1")  # type: ignore[arg-type]
    with pytest.raises(UidTaken):
        send_message(any_store, recorder, "p1", ARGS["arguments"], "m-1")  # type: ignore[arg-type]
    assert len(recorder.published) == 2


def test_a_queued_record_whose_publish_never_came_is_published_after_a_grace(
    any_store: Store,
) -> None:
    event_id = add(any_store, "@daily")
    event = any_store.event_by_id("p1", event_id)
    assert event is not None

    class Dies(Recorder):
        def publish(self, ids: list[str]) -> None:
            raise KeyboardInterrupt  # the web process dies between record and publish

    with pytest.raises(KeyboardInterrupt):
        trigger(any_store, Dies(), event)  # type: ignore[arg-type]
    [(iid, _)] = any_store.waiting("pending")

    recorder = Recorder()
    at(any_store, T0 + 10)
    assert release_waiting(any_store, recorder, unconfirmed=30) == 0  # type: ignore[arg-type]
    at(any_store, T0 + 31)
    assert release_waiting(any_store, recorder, unconfirmed=30) == 1  # type: ignore[arg-type]
    assert recorder.published == [iid]
    assert any_store.waiting("pending") == []
    assert started(any_store, iid, T0 + 32)[0] == "start"


def test_every_record_expires_with_the_retention_even_one_never_started(
    any_store: Store,
) -> None:
    add(any_store, "every 1 mins")
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 30)
    send_message(any_store, recorder, "p1", ARGS["arguments"], None)  # type: ignore[arg-type]

    for iid in recorder.published:
        assert 0 < any_store.redis.ttl(any_store.keys.instance(iid)) <= any_store.retention


def test_republishing_a_lost_lease_never_unwatches_a_new_holder(any_store: Store) -> None:
    add(any_store, "every 1 mins")
    recorder = Recorder()
    dispatch(any_store, recorder, T0 + 30)
    [iid] = recorder.published
    started(any_store, iid, T0 + 31, lease=5)

    class StartsAtOnce(Recorder):
        def publish(self, ids: list[str]) -> None:
            super().publish(ids)
            # The copy is taken by a worker before the beat has cleared its publish.
            assert started(any_store, iid, T0 + 40, lease=5) == ("start", "2")

    at(any_store, T0 + 40)
    assert release_waiting(any_store, StartsAtOnce(), unconfirmed=30) == 1  # type: ignore[arg-type]

    assert any_store.waiting("running") == [(iid, (T0 + 45) * 1000)]
    assert any_store.waiting("pending") == []


def test_message_uids_expire_with_the_retention(any_store: Store) -> None:
    recorder = Recorder()
    send_message(any_store, recorder, "p1", ARGS["arguments"], "m-1")  # type: ignore[arg-type]
    with pytest.raises(UidTaken):
        send_message(any_store, recorder, "p1", ARGS["arguments"], "m-1")  # type: ignore[arg-type]

    at(any_store, T0 + any_store.retention + 1)
    send_message(any_store, recorder, "p1", ARGS["arguments"], "m-2")  # type: ignore[arg-type]

    assert uids_left(any_store, "p1") == ["m-2"]


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
    dispatch(any_store, recorder, T0 + 30)
    [iid] = recorder.published
    started(any_store, iid, T0 + 31, lease=5)  # lease until T0 + 36
    # Beat sweeps the lease away from {p}:running to publish a copy...
    any_store.redis.zrem(any_store.keys.running(any_store.keys.shard_of(iid)), iid)

    # ...and the copy, arriving within the lease, stands down.
    assert started(any_store, iid, T0 + 36, lease=5)[0] == "running"

    # The record is watched again, so a worker that dies now is still noticed.
    assert any_store.waiting("running") == [(iid, (T0 + 36) * 1000)]


def test_dispatch_counts_what_it_wrote_and_how_late(any_store: Store) -> None:
    add(any_store, "every 1 mins", catchup_window=120)
    recorder = Recorder()

    dispatch(any_store, recorder, T0 + 30 + 180)

    counts = executions(any_store)
    lateness = any_store.redis.hgetall(any_store.keys.metrics_lateness)
    assert (counts["queued"], counts["missed"]) == ("1", "3")
    assert lateness["count"] == "1"  # one occurrence published, one lateness observed


def test_scheduling_an_event_wakes_a_sleeping_beat(any_store: Store) -> None:
    assert any_store.wait_for_wake(0) is False

    add(any_store, "every 1 mins")

    assert any_store.redis.lrange(any_store.keys.beat_wake, 0, -1) == ["1"]
    if isinstance(any_store.redis, fakeredis.FakeRedis):
        return  # fakeredis does not block; the rest needs a real server
    started_at = time.monotonic()
    assert any_store.wait_for_wake(5) is True  # the token is there: no waiting
    assert any_store.wait_for_wake(0.2) is False  # consumed; the next wait times out
    assert time.monotonic() - started_at < 2


def test_an_unpinned_store_decides_by_the_servers_clock(store: Store) -> None:
    assert store.clock is None
    server = float(".".join(map(str, store.redis.time())))
    assert abs(store.now().timestamp() - server) < 5
    now_ms, _ = store.due_events(0, 1)
    assert abs(now_ms / 1000 - server) < 5


def test_a_start_reads_what_the_send_needs_in_the_same_call(any_store: Store) -> None:
    event_id = add(any_store, "every 1 mins", retries=3)
    event = any_store.event_by_id("p1", event_id)
    assert event is not None
    recorder = Recorder()
    first = trigger(any_store, recorder, event)  # type: ignore[arg-type]
    changed = {"arguments": {**ARGS["arguments"], "recipients": "new@example.com"}}
    update_event(any_store, event, EventChanges(metadata=changed, retries=1))
    at(any_store, T0 + 1)

    start, _ = any_store.start(first.id, lease=300, retries=5)

    assert start.status == "start"
    assert start.event_retries == 1  # as the event says now, not when it was queued
    assert json.loads(start.event_metadata or "") == changed
    message = send_message(any_store, recorder, "p1", ARGS["arguments"], "m1")  # type: ignore[arg-type]
    plain, _ = any_store.start(message.id, lease=300, retries=5)
    assert (plain.status, plain.event_retries, plain.event_metadata) == ("start", None, None)


# -- batch creates across shards (Redis Cluster: staged, then committed) ----------------


@pytest.fixture(params=["redis, 3 shards, staged", "cluster, 6 shards"])
def staged_store(request: pytest.FixtureRequest) -> Iterator[Store]:
    prefix = request.getfixturevalue("settings").key_prefix
    if request.param.startswith("redis"):
        store = Store(request.getfixturevalue("redis"), Keys(prefix, shards=3), stage_batches=True)
        one_slot_per_script(store)
    else:
        cluster = connect(request.getfixturevalue("cluster_url"))
        store = Store(cluster, Keys(prefix, shards=6))
        request.addfinalizer(lambda: drop(cluster, prefix))
    assert store.stage_batches
    store.clock = Pinned()
    yield store


def batch(n: int, prefix: str = "b") -> list[EventSpec]:
    return [EventSpec(schedule="every 1 mins", metadata=ARGS, uid=f"{prefix}{i}") for i in range(n)]


def visible(store: Store) -> list[str]:
    events, total = store.list_events("p1", 0, 100)
    assert total == len(events)
    return sorted(e.uid for e in events)


def test_a_batch_across_shards_is_created_whole(staged_store: Store) -> None:
    created = create_events(staged_store, "p1", batch(12), Defaults()).events
    keys = staged_store.keys
    assert len({keys.shard_of(e.id) for e in created}) > 1  # it did span shards
    assert visible(staged_store) == sorted(f"b{i}" for i in range(12))
    assert [e.uid for e in staged_store.list_events("p1", 0, 100)[0]] == [
        f"b{i}" for i in range(12)
    ]  # in creation order
    assert staged_store.next_due_at() == T0 + 30
    assert not staged_store.redis.zcard(keys.batches)


def test_a_batch_with_one_taken_uid_leaves_nothing_behind(staged_store: Store) -> None:
    create_events(staged_store, "p1", batch(1, "taken"), Defaults())
    specs = batch(11) + batch(1, "taken")
    with pytest.raises(UidTaken):
        create_events(staged_store, "p1", specs, Defaults())
    assert visible(staged_store) == ["taken0"]
    assert not staged_store.redis.zcard(staged_store.keys.batches)
    # Every uid of the refused batch is free again.
    assert len(create_events(staged_store, "p1", batch(11), Defaults()).events) == 11


def test_a_batch_whose_creator_died_while_staging_is_undone_by_the_sweep(
    staged_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dies(*_: object) -> bool:
        raise ConnectionError("the creator died")

    with monkeypatch.context() as patch:
        patch.setattr(staged_store, "_advance", dies)
        with pytest.raises(ConnectionError):
            create_events(staged_store, "p1", batch(12), Defaults())
    assert visible(staged_store) == []  # staged events are not there for anyone
    assert staged_store.next_due_at() is None
    assert staged_store.sweep_batches() == 0  # within its grace: the creator may be slow
    at(staged_store, T0 + 31)

    assert staged_store.sweep_batches() == 1

    assert visible(staged_store) == []
    assert not staged_store.redis.zcard(staged_store.keys.batches)
    assert len(create_events(staged_store, "p1", batch(12), Defaults()).events) == 12


def test_a_batch_whose_creator_died_after_committing_is_finished_by_the_sweep(
    staged_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dies(*_: object) -> None:
        raise ConnectionError("the creator died")

    with monkeypatch.context() as patch:
        patch.setattr(staged_store, "_settle", dies)
        with pytest.raises(ConnectionError):
            create_events(staged_store, "p1", batch(12), Defaults())
    assert visible(staged_store) == []
    at(staged_store, T0 + 31)

    recorder = Recorder()
    release_waiting(staged_store, recorder, unconfirmed=30)  # beat's sweep  # type: ignore[arg-type]

    assert visible(staged_store) == sorted(f"b{i}" for i in range(12))
    assert staged_store.next_due_at() == T0 + 30
    assert dispatch(staged_store, recorder, T0 + 31) == 12  # and beat claims them
