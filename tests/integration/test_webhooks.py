"""Webhook deliveries on real processes (issue 13): a real local HTTP receiver, a real
worker and beat. Each delivery is checked with the Standard Webhooks reference verifier
(the ``standardwebhooks`` package), not with sendbeat's own signing code."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from standardwebhooks import Webhook

from app.core.settings import Settings
from app.core.store import Store
from tests.integration.conftest import Processes, Receiver, SmtpSink, Web, wait_until

pytestmark = pytest.mark.slow


def hook(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {"webhook": {"url": receiver.url(), "headers": {"X-Team": "billing"},
                        "body": {"text": "Report for {{ name }}", "count": "{{count}}"},
                        **extra}, "variables": {"name": "ACME", "count": 3}}  # fmt: skip


def secret_of(store: Store, web: Web) -> str:
    project = store.project_for_key(web.key)
    assert project is not None
    return store.webhook_secret(project)


def execution(web: Web, uid: str) -> dict[str, Any]:
    [record] = web.instances(uid)
    return record


def test_a_webhook_event_fires_at_its_boundary_once_signed_and_keyed_across_a_retry(
    web: Web, processes: Processes, receiver: Receiver, store: Store, smtp: SmtpSink
) -> None:
    receiver.answers = [(503, {})]  # the first attempt fails, the retry succeeds
    # Running first, so the event's first occurrence is claimed on time (not missed
    # because a worker took long to start).
    processes.worker()
    processes.beat()
    body = {"uid": "hooked", "schedule": "every 2 secs", "metadata": {"arguments": hook(receiver)}}
    created = web.call("create_scheduled_event", body)
    assert created.status_code == 200, created.get_json()
    due = created.get_json()["data"]["scheduled_at"]

    def first_succeeded() -> bool:
        runs = [i for i in web.instances("hooked") if i["scheduled_for"] == due]
        return bool(runs) and runs[0]["status"] == "succeeded"

    assert wait_until(first_succeeded, timeout=30), processes.log_text()
    web.call("update_scheduled_event", {"uid": "hooked", "status": "suspend"})
    [run] = [i for i in web.instances("hooked") if i["scheduled_for"] == due]
    tries = [d for d in receiver.received if d.headers["webhook-id"] == run["uid"]]
    assert len(tries) == 2  # 503, then 200: the same idempotency key on both
    verifier = Webhook(secret_of(store, web))
    for delivery in tries:
        payload = verifier.verify(delivery.body, delivery.headers)
        assert payload == {"text": "Report for ACME", "count": 3}
        assert delivery.method == "POST" and delivery.headers["X-Team"] == "billing"
        assert delivery.headers["Content-Type"] == "application/json"
    assert tries[1].headers["webhook-timestamp"] >= tries[0].headers["webhook-timestamp"]
    assert run["attempts"] == 2
    assert run["result"]["webhook"] == {"status": 200, "body": '{"ok": true}'}
    assert run["result"]["accepted"] == [] and smtp.messages == []  # no email asked for
    assert tries[0].at >= datetime.fromisoformat(due).timestamp()  # at its boundary


def test_a_404_fails_at_once(web: Web, processes: Processes, receiver: Receiver) -> None:
    receiver.answers = [(404, {})]
    processes.worker()
    sent = web.call("send_message", {"uid": "m404", "arguments": hook(receiver)})
    message = sent.get_json()["data"]["message"]["id"]

    assert wait_until(lambda: web.store.instance(message).status == "failed", timeout=20)  # type: ignore[union-attr]
    record = web.store.instance(message)
    assert record is not None and record.attempts == 1 and len(receiver.received) == 1
    assert (
        record.error == f"webhook {receiver.url()}: the receiver answered 404 Not Found: try later"
    )
    assert record.result is not None  # the receiver's answer, in the record
    assert record.result["webhook"] == {"status": 404, "body": "try later"}


def test_a_429_waits_as_long_as_retry_after_says(
    web: Web, processes: Processes, receiver: Receiver
) -> None:
    receiver.answers = [(429, {"Retry-After": "4"})]
    processes.worker()
    processes.beat()  # publishes the retry when its time comes
    sent = web.call("send_message", {"uid": "m429", "arguments": hook(receiver)})
    message = sent.get_json()["data"]["message"]["id"]

    assert wait_until(lambda: web.store.instance(message).status == "succeeded", timeout=30)  # type: ignore[union-attr]
    first, second = receiver.received
    assert second.headers["webhook-id"] == first.headers["webhook-id"] == message
    assert 4 <= second.at - first.at < 8  # the receiver's wait, not the 2 s first backoff


def test_a_private_address_is_refused_without_allow_private_refs(
    web: Web, processes: Processes, receiver: Receiver
) -> None:
    processes.settings = processes.settings.with_(allow_private_refs=False)
    processes.worker()
    sent = web.call("send_message", {"uid": "private", "arguments": hook(receiver)})
    message = sent.get_json()["data"]["message"]["id"]

    assert wait_until(lambda: web.store.instance(message).status == "failed", timeout=20)  # type: ignore[union-attr]
    record = web.store.instance(message)
    assert record is not None and receiver.received == []
    assert record.error == (
        f"webhook {receiver.url()} refused: 127.0.0.1 is a loopback address "
        "(set SENDBEAT_ALLOW_PRIVATE_REFS=1 to allow)"
    )


def test_email_and_webhook_together_each_go_once(
    web: Web, processes: Processes, receiver: Receiver, smtp: SmtpSink, settings: Settings
) -> None:
    arguments = {**hook(receiver), "recipients": "a@example.com",
                 "headers": {"from": "b@example.com", "subject": "Both"},
                 "content": {"text/plain": "Hello {{name}}"}}  # fmt: skip
    processes.worker()
    sent = web.call("send_message", {"uid": "both", "arguments": arguments})
    message = sent.get_json()["data"]["message"]["id"]

    assert wait_until(lambda: web.store.instance(message).status == "succeeded", timeout=20)  # type: ignore[union-attr]
    assert len(smtp.messages) == 1 and len(receiver.received) == 1
    assert json.loads(receiver.received[0].body) == {"text": "Report for ACME", "count": 3}
    assert settings.allow_private_refs
