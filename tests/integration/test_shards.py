"""A store split into shards, on real processes: two beats claim every shard, each
occurrence, trigger and message is sent once, and every execution's keys share its
event's hash slot (what Redis Cluster needs of them)."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from redis.crc import key_slot

from app.core.settings import Settings
from app.core.store import Store
from tests.integration.conftest import Processes, SmtpSink, Web, wait_until

pytestmark = pytest.mark.slow

SHARDS = 3
ARGS = {
    "recipients": "test@example.com",
    "headers": {"from": "test@example.com", "subject": "Sharded"},
    "content": {"text/plain": "once"},
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_(store_shards=SHARDS)


def test_two_beats_claim_every_shard_and_send_each_occurrence_once(
    web: Web, processes: Processes, smtp: SmtpSink, store: Store
) -> None:
    assert store.keys.shards == SHARDS
    events = []
    for n in range(30):
        body = {"uid": f"sharded-{n}", "schedule": "every 60 mins", "overlap": "allow",
                "metadata": {"arguments": ARGS}}  # fmt: skip
        # (overlap allow: a trigger still in flight must not make the occurrence skip)
        response = web.call("create_scheduled_event", body)
        assert response.status_code == 200, response.get_json()
        events.append(response.get_json()["data"]["id"])
    keys = store.keys
    assert {keys.shard_of(event_id) for event_id in events} == set(range(SHARDS))
    # Every event falls due in three seconds instead of within the hour.
    soon = int(time.time()) + 3
    for event_id in events:
        store.redis.zadd(keys.due(keys.shard_of(event_id)), {event_id: soon})
    messages = []
    for n in range(30):
        response = web.call("send_message", {"uid": f"m{n}", "arguments": ARGS})
        messages.append(response.get_json()["data"]["message"]["id"])
    for event_id in events[:6]:
        assert web.trigger(event_id).get_json() == {"success": True}

    processes.worker(concurrency=4)
    processes.beat("beat-a")
    processes.beat("beat-b")

    def all_sent() -> bool:
        return len(smtp.messages) >= 30 + 30 + 6

    assert wait_until(all_sent, timeout=60), processes.log_text()
    time.sleep(2)  # a duplicate would arrive after the last one
    emails = Counter(m.message["X-Sendbeat-Instance"] for m in smtp.messages)
    assert set(emails.values()) == {1}
    executions = [i for n in range(30) for i in web.instances(f"sharded-{n}")]
    assert sorted(emails) == sorted([i["uid"] for i in executions] + messages)
    assert Counter(i["trigger"] for i in executions) == {"schedule": 30, "manual": 6}
    assert {i["status"] for i in executions} == {"succeeded"}
    for instance in executions:
        event_slot = key_slot(keys.event(instance["event_id"]).encode())
        assert key_slot(keys.instance(instance["uid"]).encode()) == event_slot
