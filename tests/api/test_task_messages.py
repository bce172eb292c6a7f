"""Task messages on a Redis broker: a backlog shares messages (up to the batch size),
a lone execution goes out alone, and every message is one a Celery worker reads.
Against the real Redis, as the web and beat write them (prelude.lua's push_tasks)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from redis import Redis

from app import create_app
from app.core.dispatch import dispatch_due
from app.core.publisher import SEND_MESSAGE_TASK, Publisher, parse_entry
from app.core.settings import Settings
from app.core.store import Store
from tests.api.conftest import Api, event_body

ARGUMENTS = {
    "recipients": "a@example.com",
    "headers": {"from": "b@example.com"},
    "content": {"text/plain": "hi"},
}


def messages(redis: Redis, settings: Settings) -> list[dict[str, Any]]:
    """The queue's messages in the order workers take them (kombu pops from the right),
    decoded as kombu's Redis transport decodes them."""
    raw = list(reversed(redis.lrange(settings.queue, 0, -1)))
    decoded = [json.loads(m) for m in raw]
    for message in decoded:
        message["args"], kwargs, embed = json.loads(message["body"])
        assert (kwargs, embed["chain"]) == ({}, None)
    return decoded


def send(api: Api, n: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + n):
        response = api.call("send_message", {"uid": f"m{i}", "arguments": ARGUMENTS})
        assert response.status_code == 200, response.get_json()
        ids.append(response.get_json()["data"]["message"]["id"])
    return ids


def test_a_backlog_shares_messages_up_to_the_batch_size(
    api: Api, redis: Redis, settings: Settings
) -> None:
    ids = send(api, 40)

    queued = messages(redis, settings)

    assert [len(m["args"]) for m in queued] == [16, 16, 8]
    entries = [entry for m in queued for entry in m["args"]]
    assert entries == [f"{i} -" for i in ids]  # each once, in the order sent
    for message in queued:
        first = parse_entry(message["args"][0])[0]
        assert message["headers"]["task"] == SEND_MESSAGE_TASK
        assert message["headers"]["id"] == message["properties"]["correlation_id"] == first
    tags = {m["properties"]["delivery_tag"] for m in queued}
    assert len(tags) == 3


def test_a_message_a_worker_took_is_never_joined(
    api: Api, redis: Redis, settings: Settings
) -> None:
    [first] = send(api, 1)
    taken = redis.rpop(settings.queue)  # as a worker's BRPOP takes it
    assert json.loads(json.loads(taken)["body"])[0] == [f"{first} -"]

    [second] = send(api, 1, start=1)

    [message] = messages(redis, settings)
    assert message["args"] == [f"{second} -"]


def test_the_batch_size_is_a_setting(redis: Redis, settings: Settings, store: Store) -> None:
    one = Settings(**{**settings.__dict__, "task_batch": 1})
    client = create_app(one, store=store).test_client()
    _, key = store.create_project("acme", 0)
    for i in range(3):
        body = {"api_key": key, "uid": f"m{i}", "arguments": ARGUMENTS}
        assert client.post("/v.1.1/send_message", json=body).status_code == 200

    assert [len(m["args"]) for m in messages(redis, one)] == [1, 1, 1]


def test_beat_batches_what_falls_due_together_and_names_each_event(
    api: Api, redis: Redis, settings: Settings, store: Store, clock: list[Any]
) -> None:
    events = {}
    for i in range(20):
        response = api.call("create_scheduled_event", event_body(f"ev{i}", "every 1 mins"))
        events[response.get_json()["data"]["id"]] = i
    clock[0] += timedelta(minutes=1)
    publisher = Publisher(settings.redis_url, settings.queue, store_url=settings.redis_url)

    dispatch_due(store, publisher, 1000)

    queued = messages(redis, settings)
    assert [len(m["args"]) for m in queued] == [16, 4]
    entries = [parse_entry(entry) for m in queued for entry in m["args"]]
    assert sorted(event_id for _, event_id in entries) == sorted(events)
    for instance_id, event_id in entries:
        record = store.instance(instance_id)
        assert record is not None and (record.event_id, record.status) == (event_id, "queued")
