"""The whole system on a sharded store — a single Redis with 3 shards, and a Redis
Cluster store (three local masters, tests/cluster.py) with 6, whose Celery broker is a
separate Redis as docs/operations.md says it must be: two beats claim every shard, a
worker is killed mid-send, and every occurrence, trigger and message is still sent
once, each execution's keys in its event's hash slot."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
from redis import Redis
from redis.crc import key_slot

from app.core.redis_client import connect
from app.core.settings import Settings
from app.core.store import Store
from tests.integration.conftest import Processes, SmtpSink, Web, wait_until

pytestmark = pytest.mark.slow

ARGS = {
    "recipients": "test@example.com",
    "headers": {"from": "test@example.com", "subject": "Sharded"},
    "content": {"text/plain": "once"},
}


@pytest.fixture(params=["redis, 3 shards", "cluster, 6 shards"])
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    if request.param.startswith("redis"):
        return settings.with_(store_shards=3)
    # The broker is the plain Redis the other tests use; the store is the cluster.
    return settings.with_(redis_url=request.getfixturevalue("cluster_url"),
                          broker_url=settings.redis_url, store_shards=6)  # fmt: skip


@pytest.fixture
def broker(settings: Settings) -> Iterator[Redis]:
    """The broker when it is not the store (the shared fixtures clean the store's keys)."""
    client = connect(settings.effective_broker_url)
    yield client
    client.delete(settings.queue, f"_kombu.binding.{settings.queue}")
    client.close()


def test_a_sharded_store_sends_each_occurrence_once_through_a_killed_worker(
    web: Web, processes: Processes, smtp: SmtpSink, store: Store, broker: Redis
) -> None:
    keys = store.keys
    clustered = type(store.redis).__name__ == "RedisCluster"
    assert store.stage_batches == clustered  # a batch across shards is staged on a Cluster
    # 30 uids, five in each shard (random ones can miss a shard), so the batch spans all.
    project = store.project_for_key(web.key)
    assert project is not None
    per_shard: dict[int, list[str]] = {}
    for uid in (f"c{n}" for n in range(10_000)):
        per_shard.setdefault(keys.uid_shard(project, uid), []).append(uid)
    uids = [uid for shard in range(keys.shards) for uid in per_shard[shard][: 30 // keys.shards]]
    # overlap allow: a trigger still in flight must not make the occurrence skip.
    batch = [{"uid": uid, "schedule": "every 60 mins", "overlap": "allow",
              "metadata": {"arguments": ARGS}} for uid in uids]  # fmt: skip
    response = web.call("create_scheduled_events", {"events": batch})
    assert response.status_code == 200, response.get_json()
    events = [web.call("get_scheduled_event", {"uid": uid}).get_json()["data"]["id"]
              for uid in uids]  # fmt: skip
    assert len({keys.shard_of(event_id) for event_id in events}) == keys.shards
    soon = int(time.time()) + 3
    for event_id in events:  # due in three seconds instead of within the hour
        store.redis.zadd(keys.due(keys.shard_of(event_id)), {event_id: soon})
    messages = [
        web.call("send_message", {"uid": f"m{n}", "arguments": ARGS}).get_json()["data"]["message"][
            "id"
        ]
        for n in range(60)
    ]
    for event_id in events[:6]:
        assert web.trigger(event_id).get_json() == {"success": True}

    smtp.delay = 0.05  # sends are in flight when the worker dies
    processes.settings = processes.settings.with_(send_lease=5, visibility_timeout=5)
    doomed = processes.worker("doomed", concurrency=4)
    processes.beat("beat-a")
    processes.beat("beat-b")
    # The first process to start wrote the store's layout (a check that could not run
    # on the cluster would have left it out).
    assert store.redis.hgetall(keys.layout) == {"version": "2", "shards": str(keys.shards)}
    wait_until(lambda: len(smtp.messages) >= 20, timeout=30)
    processes.kill(doomed)
    processes.worker("rescuer", concurrency=4)

    # What the dead worker had started comes back when its 5 s lease runs out, what it
    # had reserved and not started when its 5 s visibility timeout does: well within a
    # minute (kombu's own pace, 100 s, would not be).
    total = 30 + 60 + 6
    assert wait_until(lambda: len(smtp.messages) >= total, timeout=60), processes.log_text()
    time.sleep(2)  # a duplicate would arrive after the last one
    emails = Counter(m.message["X-Sendbeat-Instance"] for m in smtp.messages)
    assert set(emails.values()) == {1}, [i for i, n in emails.items() if n > 1]
    executions = [i for uid in uids for i in web.instances(uid)]
    assert sorted(emails) == sorted([i["uid"] for i in executions] + messages)
    assert Counter(i["trigger"] for i in executions) == {"schedule": 30, "manual": 6}
    assert {i["status"] for i in executions} == {"succeeded"}
    assert {store.instance(m).status for m in messages} == {"succeeded"}  # type: ignore[union-attr]
    for instance in executions:
        event_slot = key_slot(keys.event(instance["event_id"]).encode())
        assert key_slot(keys.instance(instance["uid"]).encode()) == event_slot
