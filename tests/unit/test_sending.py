"""``run_instance`` over fakeredis with a scripted transport: every execution ends,
a worker that lost its lease stops and writes nothing, a pause stops a send before its
next recipient, and each copy keeps one Message-ID across attempts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from app.core import message
from app.core.errors import TransientDeliveryError, ValidationError
from app.core.events import (
    Defaults,
    EventChanges,
    EventSpec,
    create_events,
    send_message,
    set_paused,
    trigger,
    update_event,
)
from app.core.keys import Keys
from app.core.message import Envelope, MessageLimits
from app.core.records import Instance
from app.core.settings import Settings
from app.core.store import Store
from workers import sending
from workers.sending import run_instance
from workers.transport import SendResult

T0 = datetime(2026, 3, 2, 10, 0, 30, tzinfo=UTC).timestamp()
RECIPIENTS = ["a@example.com", "b@example.com", "c@example.com"]


@dataclass
class Clock:
    at: float = T0

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.at, UTC)


@dataclass
class Transport:
    """Accepts every copy, after running ``before`` (the test's interference) on it."""

    before: Callable[[Envelope], None] = lambda envelope: None
    sent: list[Envelope] = field(default_factory=list)

    def send(self, envelope: Envelope) -> SendResult:
        self.before(envelope)
        self.sent.append(envelope)
        return SendResult(str(envelope.message["Message-ID"]), envelope.rcpt_to, {})

    def close(self) -> None:
        pass


class Publisher:
    direct_queue = None
    lua_arguments = ()

    def publish(self, ids: list[str]) -> None:
        pass


@pytest.fixture
def store() -> Store:
    return Store(fakeredis.FakeRedis(decode_responses=True), Keys("t"), clock=Clock())


def queued(store: Store, **arguments: Any) -> Instance:
    args = {
        "recipients": RECIPIENTS,
        "headers": {"from": "sender@example.com", "subject": "Hello"},
        "content": {"text/plain": "hi"},
        **arguments,
    }
    spec = EventSpec(schedule="@daily", metadata={"arguments": args}, uid="ev", retries=2)
    [event] = create_events(store, "p1", [spec], Defaults()).events
    return trigger(store, Publisher(), event)  # type: ignore[arg-type]


def run(store: Store, transport: Transport, instance: Instance) -> str:
    return run_instance(store, transport, Settings(), instance.id, lease=10).status


def record(store: Store, instance: Instance) -> Instance:
    found = store.instance(instance.id)
    assert found is not None
    return found


def test_an_unexpected_exception_ends_the_execution_failed(store: Store) -> None:
    instance = queued(store)

    def explode(envelope: Envelope) -> None:
        raise ValueError("Header values may not contain linefeed or carriage return characters")

    assert run(store, Transport(explode), instance) == "failed"

    ended = record(store, instance)
    assert ended.status == "failed" and ended.attempts == 1
    assert ended.error == (
        "Internal error: ValueError: "
        "Header values may not contain linefeed or carriage return characters"
    )
    assert not store.redis.zcard(store.keys.event_inflight(ended.event_id))
    assert not store.waiting("running")


def test_a_worker_that_lost_its_lease_stops_and_only_notes_what_arrived(store: Store) -> None:
    instance = queued(store)
    transport = Transport()

    def stall_then_lose(envelope: Envelope) -> None:
        if len(transport.sent) == 1:  # stalled past its lease; another worker took over
            store.clock.at += 60  # type: ignore[union-attr]
            assert store.start(instance.id, lease=10, retries=2)[0].token == "2"

    transport.before = stall_then_lose
    assert run(store, transport, instance) == "lost"

    # The copy in flight when it stalled went out; nothing after it. The record stays the
    # new holder's, but shows the late copy: it did arrive.
    assert [e.recipient for e in transport.sent] == RECIPIENTS[:2]
    taken = record(store, instance)
    assert (taken.status, taken.attempts) == ("running", 2)
    assert taken.delivered == RECIPIENTS[:2]
    assert store.redis.hget(store.keys.instance(instance.id), "delivered") == json.dumps(
        RECIPIENTS[:1]
    )


def test_the_next_attempt_sends_only_what_is_left_under_the_same_message_ids(
    store: Store,
) -> None:
    instance = queued(store)
    first = Transport()

    def fail_on_third(envelope: Envelope) -> None:
        if envelope.recipient == RECIPIENTS[2]:
            raise TransientDeliveryError("SMTP: 451 try later")

    first.before = fail_on_third
    assert run(store, first, instance) == "retrying"
    store.clock.at += 600  # type: ignore[union-attr]
    second = Transport()
    assert run(store, second, instance) == "succeeded"

    assert [e.recipient for e in second.sent] == RECIPIENTS[2:]
    ended = record(store, instance)
    assert ended.result is not None and ended.result["accepted"] == RECIPIENTS
    ids = [str(e.message["Message-ID"]) for e in first.sent + second.sent]
    assert ids == [f"<{instance.id}.{n}@sendbeat.local>" for n in range(3)]


def test_a_copy_accepted_while_redis_is_away_is_recorded_when_it_returns(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = queued(store)
    transport = Transport()
    real_hold = store.scripts.hold
    away = iter([True, True, False])  # Redis is unreachable twice after the first copy

    def hold(*args: Any, **kwargs: Any) -> Any:
        if transport.sent and next(away, False):
            raise RedisConnectionError("Connection refused")
        return real_hold(*args, **kwargs)

    monkeypatch.setattr(store.scripts, "hold", hold)

    assert run(store, transport, instance) == "succeeded"

    # The worker waited for Redis instead of failing: every copy once, all recorded.
    assert [e.recipient for e in transport.sent] == RECIPIENTS
    ended = record(store, instance)
    assert (ended.status, ended.attempts, ended.error) == ("succeeded", 1, None)


def test_a_pause_stops_a_send_before_its_next_recipient(store: Store) -> None:
    instance = queued(store)
    transport = Transport()

    def pause_after_first(envelope: Envelope) -> None:
        if not transport.sent:
            event = store.event_by_id("p1", instance.event_id)
            assert event is not None
            set_paused(store, event, True)

    transport.before = pause_after_first
    assert run(store, transport, instance) == "cancelled"

    assert [e.recipient for e in transport.sent] == RECIPIENTS[:1]
    ended = record(store, instance)
    assert ended.status == "cancelled"
    assert ended.error == "The scheduled event was paused after 1 copy had been sent."
    assert ended.result is not None and ended.result["accepted"] == RECIPIENTS[:1]


# --- limits at send time (issue 9) -----------------------------------------------------


def test_remote_content_that_grew_past_the_limit_fails_at_once_and_readably(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = queued(store, content={"text/plain": {"$ref": "https://cms.example/body"}})

    def grown(arguments: Any, *, settings: Settings) -> Any:
        return {**arguments, "content": {"text/plain": "x" * 100_000}}

    monkeypatch.setattr(sending, "resolve_refs", grown)
    transport = Transport()
    settings = Settings(max_message_bytes=64 * 1024)
    assert run_instance(store, transport, settings, instance.id, lease=10).status == "failed"

    ended = record(store, instance)
    assert (ended.status, ended.attempts) == ("failed", 1)  # permanent: no retry
    assert ended.error == (
        "arguments: the message for a@example.com would be 101,068 bytes;"
        " the limit is SENDBEAT_MAX_MESSAGE_BYTES = 65,536"
    )
    assert transport.sent == []
    assert not store.redis.zcard(store.keys.event_inflight(ended.event_id))


def test_the_worker_builds_each_copy_as_it_sends_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = queued(store)
    built: list[str] = []
    build = message._message

    def counted(*args: Any) -> Any:
        built.append(args[2].addr_spec)
        return build(*args)

    monkeypatch.setattr(message, "_message", counted)
    transport = Transport(lambda envelope: seen.append(list(built)))
    seen: list[list[str]] = []
    assert run(store, transport, instance) == "succeeded"
    assert seen == [RECIPIENTS[:1], RECIPIENTS[:2], RECIPIENTS]


def test_events_and_messages_are_validated_with_the_limits_given(store: Store) -> None:
    args = {
        "recipients": RECIPIENTS,
        "headers": {"from": "sender@example.com"},
        "content": {"text/plain": "hi"},
    }
    limits = MessageLimits(max_recipients=2)
    too_many = "the limit is SENDBEAT_MAX_RECIPIENTS = 2"
    spec = EventSpec(schedule="@daily", metadata={"arguments": args}, uid="ev")
    with pytest.raises(ValidationError) as caught:
        create_events(store, "p1", [spec], Defaults(limits=limits))
    assert caught.value.errors == [
        f"events[0].metadata.arguments.recipients: has 3 recipients; {too_many}"
    ]
    with pytest.raises(ValidationError) as caught:
        send_message(store, Publisher(), "p1", args, None, limits=limits)  # type: ignore[arg-type]
    assert caught.value.errors == [f"arguments.recipients: has 3 recipients; {too_many}"]
    [event] = create_events(store, "p1", [spec], Defaults()).events
    with pytest.raises(ValidationError) as caught:
        update_event(store, event, EventChanges(metadata={"arguments": args}), limits=limits)
    assert caught.value.errors == [f"metadata.arguments.recipients: has 3 recipients; {too_many}"]


def test_a_long_send_keeps_its_lease_renewed(store: Store) -> None:
    instance = queued(store, recipients=["a@example.com"])
    seen = []

    def slow(envelope: Envelope) -> None:
        store.clock.at += 0.5  # type: ignore[union-attr]
        time.sleep(0.5)  # real time: the process' keeper renews every third of the lease
        store.clock.at += 0.5  # type: ignore[union-attr]
        # Past the first lease's end another worker still cannot take the execution over.
        seen.append(store.start(instance.id, lease=0.6, retries=2)[0].status)

    transport = Transport(slow)
    assert run_instance(store, transport, Settings(), instance.id, lease=0.6).status == (
        "succeeded"
    )
    assert seen == ["running"]
    assert record(store, instance).attempts == 1
