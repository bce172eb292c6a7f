"""The store's key layout on a real Redis: a new store is marked, a store of another
layout or shard count is refused with what to do, and ``flask --app app store migrate``
moves a layout 1 store so that everything in it reads back the same."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis import Redis
from redis.crc import key_slot

from app import create_app
from app.core.dispatch import dispatch_due
from app.core.events import Defaults, EventSpec, create_events, send_message, trigger
from app.core.keys import LAYOUT, Keys
from app.core.layout import LayoutError, check_layout, layout_2_name, migrate
from app.core.settings import Settings
from app.core.store import Store

ROOT = Path(__file__).resolve().parents[2]
ARGS = {
    "arguments": {
        "recipients": "a@example.com",
        "headers": {"from": "b@example.com"},
        "content": {"text/plain": "hi"},
    }
}


class Recorder:
    direct_queue = None
    lua_arguments = ()

    def __init__(self) -> None:
        self.published: list[str] = []

    def publish(self, ids: list[str]) -> None:
        self.published += ids


def layout_1(redis: Redis, keys: Keys) -> None:
    """Rename every key of a one-shard store back to its layout 1 name: what sendbeat
    wrote before keys carried hash tags (the same names, without the braces)."""
    for key in list(redis.scan_iter(f"{{{keys.prefix}*", count=1000)):
        tag, rest = key[1:].split("}", 1)
        if key != keys.layout:
            redis.rename(key, keys.prefix + rest)
        else:
            redis.delete(key)
        assert tag in (keys.prefix, f"{keys.prefix}:0")


def flask(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": settings.redis_url,
           "SENDBEAT_KEY_PREFIX": settings.key_prefix}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_new_store_is_marked_with_its_layout_and_shards(redis: Redis, settings: Settings) -> None:
    keys = Keys(settings.key_prefix, shards=4)
    check_layout(redis, keys)
    assert redis.hgetall(keys.layout) == {"version": str(LAYOUT), "shards": "4"}
    check_layout(redis, keys)  # and it is accepted from then on

    with pytest.raises(LayoutError, match="set SENDBEAT_STORE_SHARDS=4 in every process"):
        check_layout(redis, Keys(settings.key_prefix, shards=2))


def test_unknown_layouts_are_refused_with_what_to_do(redis: Redis, settings: Settings) -> None:
    keys = Keys(settings.key_prefix)
    redis.hset(f"{settings.key_prefix}:project-names", "acme", "p1")
    with pytest.raises(LayoutError, match=r"layout 1 .* run `flask --app app store migrate`"):
        check_layout(redis, keys)
    redis.delete(f"{settings.key_prefix}:project-names")
    redis.hset(keys.layout, mapping={"version": "migrating"})
    with pytest.raises(LayoutError, match="stopped before it ended; run `flask"):
        check_layout(redis, keys)
    redis.hset(keys.layout, mapping={"version": "3", "shards": "1"})
    with pytest.raises(LayoutError, match="layout 3, which this version of sendbeat does not"):
        check_layout(redis, keys)


def full_store(store: Store) -> dict[str, object]:
    """A store with a project, events, executions of each kind and metrics; what the API
    reads back from it."""
    now = datetime(2026, 3, 2, 10, 0, 30, tzinfo=UTC)
    recorder = Recorder()
    _, key = store.create_project("acme", int(now.timestamp()))
    project_id = store.project_for_key(key)
    assert project_id is not None
    specs = [EventSpec(schedule="every 1 mins", metadata=ARGS, uid=f"u{n}") for n in range(3)]
    events = create_events(store, project_id, specs, Defaults()).events
    trigger(store, recorder, events[0])  # type: ignore[arg-type]
    send_message(store, recorder, project_id, ARGS["arguments"], "m-1")  # type: ignore[arg-type]
    store.redis.zadd(store.keys.due(0), {events[1].id: 1})  # long overdue: claimed now
    dispatch_due(store, recorder, 100)  # type: ignore[arg-type]
    return {
        "key": key,
        "project": store.project_for_key(key),
        "events": [store.event_by_uid(project_id, f"u{n}") for n in range(3)],
        "listed": store.list_events(project_id, 0, 10),
        "instances": [store.list_instances(e.id, 0, 10) for e in events],
        "pending": store.waiting("pending"),
        "next_due": store.next_due_at(),
        "published": recorder.published,
    }


def test_migrate_moves_a_layout_1_store_and_everything_reads_back(
    redis: Redis, settings: Settings, store: Store
) -> None:
    before = full_store(store)
    metrics_before = create_app(settings, store=store).test_client().get("/metrics").get_data()
    layout_1(redis, store.keys)
    assert redis.exists(f"{settings.key_prefix}:projects")
    with pytest.raises(LayoutError):
        check_layout(redis, store.keys)

    done = migrate(redis, settings.key_prefix)

    assert done.moved > 20 and done.skipped == []
    check_layout(redis, store.keys)
    after = {**full_store_reads(store, before), "published": before["published"]}
    assert after == before
    metrics_after = create_app(settings, store=store).test_client().get("/metrics").get_data()
    assert metrics_after == metrics_before
    assert migrate(redis, settings.key_prefix).already  # idempotent


def full_store_reads(store: Store, before: dict[str, object]) -> dict[str, object]:
    key = str(before["key"])
    project_id = store.project_for_key(key)
    assert project_id is not None
    events = [store.event_by_uid(project_id, f"u{n}") for n in range(3)]
    return {
        "key": key,
        "project": project_id,
        "events": events,
        "listed": store.list_events(project_id, 0, 10),
        "instances": [store.list_instances(e.id, 0, 10) for e in events],
        "pending": store.waiting("pending"),
        "next_due": store.next_due_at(),
    }


def test_an_interrupted_migration_is_refused_then_finished_by_running_it_again(
    redis: Redis, settings: Settings, store: Store
) -> None:
    before = full_store(store)
    layout_1(redis, store.keys)
    # Cut short: marked, half of the keys moved.
    redis.hset(store.keys.layout, "version", "migrating")
    old = sorted(redis.scan_iter(f"{settings.key_prefix}:*"))
    for key in old[: len(old) // 2]:
        redis.rename(key, layout_2_name(store.keys, key))  # type: ignore[arg-type]
    with pytest.raises(LayoutError, match="stopped before it ended"):
        check_layout(redis, store.keys)

    migrated = flask(settings, "store", "migrate")

    assert migrated.returncode == 0, migrated.stderr
    assert f"to key layout {LAYOUT}" in migrated.stdout
    check_layout(redis, store.keys)
    assert {**full_store_reads(store, before), "published": before["published"]} == before
    again = flask(settings, "store", "migrate")
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_the_web_and_the_cli_refuse_a_layout_1_store(
    redis: Redis, settings: Settings, store: Store
) -> None:
    full_store(store)
    layout_1(redis, store.keys)

    client = create_app(settings).test_client()
    answer = client.post("/v.1.1/list_scheduled_events", json={"api_key": "x"})
    assert answer.status_code == 503
    message = answer.get_json()["response"]["message"]
    assert "layout 1" in message and "run `flask --app app store migrate`" in message
    schedules = client.get("/api/unstable/schedules", headers={"Authorization": "Bearer x"})
    assert schedules.status_code == 503 and "store migrate" in schedules.get_json()["detail"]
    listed = flask(settings, "project", "list")
    assert listed.returncode != 0
    assert "flask --app app store migrate" in listed.stderr


@pytest.mark.parametrize("shards", [1, 3, 12, 64])
def test_shards_take_equal_parts_of_the_slot_range(shards: int) -> None:
    """So that a cluster whose masters hold equal runs of slots holds equal numbers of
    shards (plain tags fell 4/3/5 over three masters with 12 shards)."""
    keys = Keys("sendbeat", shards)
    slots = [key_slot(keys.due(shard).encode()) for shard in range(shards)]
    assert [slot * shards // 16384 for slot in slots] == list(range(shards))
    event = keys.new_id(shards - 1)
    assert key_slot(keys.event(event).encode()) == slots[-1]
