"""The whole system on a Redis Cluster store (three local masters, tests/cluster.py),
with the Celery broker on a separate Redis, as docs/operations.md says it must be: two
beats claim every shard, a worker is killed mid-send, and every occurrence, trigger
and message is still sent once, each execution's keys in its event's hash slot."""

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

SHARDS = 6
ARGS = {
    "recipients": "test@example.com",
    "headers": {"from": "test@example.com", "subject": "Clustered"},
    "content": {"text/plain": "once"},
}


@pytest.fixture
def settings(settings: Settings, cluster_url: str) -> Settings:
    # The broker is the plain Redis the other tests use; the store is the cluster.
    return settings.with_(redis_url=cluster_url, broker_url=settings.redis_url,
                          store_shards=SHARDS)  # fmt: skip


@pytest.fixture
def broker(settings: Settings) -> Iterator[Redis]:
    client = connect(settings.broker_url)
    yield client
    client.delete(settings.queue, f"_kombu.binding.{settings.queue}")
    client.close()


def test_the_system_on_a_cluster_sends_each_occurrence_once_through_a_killed_worker(
    web: Web, processes: Processes, smtp: SmtpSink, store: Store, broker: Redis
) -> None:
    assert type(store.redis).__name__ == "RedisCluster" and store.stage_batches
    keys = store.keys
    # overlap allow: a trigger still in flight must not make the occurrence skip.
    batch = [{"uid": f"c{n}", "schedule": "every 60 mins", "overlap": "allow",
              "metadata": {"arguments": ARGS}} for n in range(30)]  # fmt: skip
    response = web.call("create_scheduled_events", {"events": batch})
    assert response.status_code == 200, response.get_json()
    events = [web.call("get_scheduled_event", {"uid": f"c{n}"}).get_json()["data"]["id"]
              for n in range(30)]  # fmt: skip
    assert len({keys.shard_of(event_id) for event_id in events}) == SHARDS  # a staged batch
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
    assert store.redis.hgetall(keys.layout) == {"version": "2", "shards": str(SHARDS)}
    wait_until(lambda: len(smtp.messages) >= 20, timeout=30)
    processes.kill(doomed)
    processes.worker("rescuer", concurrency=4)

    total = 30 + 60 + 6
    assert wait_until(lambda: len(smtp.messages) >= total, timeout=90), processes.log_text()
    time.sleep(2)  # a duplicate would arrive after the last one
    emails = Counter(m.message["X-Sendbeat-Instance"] for m in smtp.messages)
    assert set(emails.values()) == {1}, [i for i, n in emails.items() if n > 1]
    executions = [i for n in range(30) for i in web.instances(f"c{n}")]
    assert sorted(emails) == sorted([i["uid"] for i in executions] + messages)
    assert Counter(i["trigger"] for i in executions) == {"schedule": 30, "manual": 6}
    assert {i["status"] for i in executions} == {"succeeded"}
    assert {store.instance(m).status for m in messages} == {"succeeded"}  # type: ignore[union-attr]
    for instance in executions:
        event_slot = key_slot(keys.event(instance["event_id"]).encode())
        assert key_slot(keys.instance(instance["uid"]).encode()) == event_slot
