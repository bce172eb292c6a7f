"""Alerts on real processes (issue 13): a real local HTTP receiver, a real SMTP server, a
real worker and beat. Each alert is checked with the Standard Webhooks reference verifier."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
from standardwebhooks import Webhook

from app.core.store import Store
from tests.integration.conftest import Processes, Receiver, SmtpSink, Web, wait_until

pytestmark = pytest.mark.slow

ARGS = {
    "recipients": "ops@example.com",
    "headers": {"from": "sendbeat@example.com", "subject": "Nightly"},
    "content": {"text/plain": "report"},
}


def create(web: Web, uid: str, alerts: list[dict[str, Any]], **extra: Any) -> str:
    body = {"uid": uid, "schedule": "every 2 secs", "overlap": "allow", "alerts": alerts,
            "metadata": {"arguments": ARGS}, **extra}  # fmt: skip
    response = web.call("create_scheduled_event", body)
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["data"]["id"])


def documents(receiver: Receiver, store: Store, web: Web) -> list[dict[str, Any]]:
    project = store.project_for_key(web.key)
    assert project is not None
    verifier = Webhook(store.webhook_secret(project))
    return [verifier.verify(d.body, d.headers) for d in receiver.received]


def test_a_failing_event_alerts_once_then_recovered_after_the_next_success(
    web: Web, processes: Processes, smtp: SmtpSink, receiver: Receiver, store: Store
) -> None:
    smtp.replies = ["550 5.7.1 Rejected by policy"]  # the first send fails for good
    url = receiver.url("/alerts")
    event_id = create(web, "nightly", [{"url": url, "on": ["failed", "recovered"]}])
    processes.worker()
    processes.beat()

    assert wait_until(lambda: len(receiver.received) >= 2, timeout=30), processes.log_text()
    web.call("update_scheduled_event", {"uid": "nightly", "status": "suspend"})
    time.sleep(3)  # nothing more: one alert per transition
    failed, recovered = documents(receiver, store, web)
    assert len(receiver.received) == 2
    assert failed["type"] == "execution.failed" and recovered["type"] == "execution.recovered"
    assert failed["event"] == recovered["event"] == {"uid": "nightly", "id": event_id}
    assert failed["execution"]["status"] == "failed"
    assert "550 5.7.1 Rejected by policy" in failed["execution"]["error"]
    assert recovered["execution"]["status"] == "succeeded"
    first = receiver.received[0].headers["webhook-id"]
    assert first == f"{failed['execution']['uid']}.failed"  # the receiver's idempotency key
    # Each execution records the alert it sent.
    runs = {i["uid"]: i for i in web.instances("nightly")}
    assert runs[failed["execution"]["uid"]]["alerts"] == [
        {"url": url, "type": "execution.failed", "status": "200", "attempts": 1}
    ]
    assert runs[recovered["execution"]["uid"]]["alerts"][0]["type"] == "execution.recovered"


def test_a_beat_outage_gives_one_missed_alert_per_event_not_one_per_occurrence(
    web: Web, processes: Processes, smtp: SmtpSink, receiver: Receiver, store: Store
) -> None:
    url = receiver.url("/alerts")
    ids = {uid: create(web, uid, [{"url": url, "on": ["missed"]}]) for uid in ("a", "b")}
    create(web, "quiet", [])  # no alerts: its missed runs stay silent
    processes.worker()
    time.sleep(7)  # beat is down: three or four occurrences of each fall due
    processes.beat()

    assert wait_until(lambda: len(receiver.received) >= 2, timeout=30), processes.log_text()
    time.sleep(3)
    alerts = documents(receiver, store, web)
    assert Counter(a["event"]["uid"] for a in alerts) == {"a": 1, "b": 1}
    assert {a["type"] for a in alerts} == {"execution.missed"}
    for alert in alerts:
        assert alert["event"]["id"] == ids[alert["event"]["uid"]]
        assert alert["execution"]["status"] == "missed"
        missed = [i for i in web.instances(alert["event"]["uid"]) if i["status"] == "missed"]
        assert len(missed) >= 2  # many missed runs, one alert
        latest = max(missed, key=lambda i: i["scheduled_for"])
        assert alert["execution"]["uid"] == latest["uid"]
    assert json.loads(receiver.received[0].body)["type"] == "execution.missed"
