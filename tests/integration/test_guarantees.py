"""The scheduler's guarantees, on real processes: once per occurrence with several
beats, nothing lost when a worker is killed or beat is down, overlap, retries,
permanent failures, and pausing. Counted at a real SMTP server."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.core.settings import Settings
from app.core.store import Store
from tests.integration.conftest import Processes, SmtpSink, Web, wait_until

pytestmark = pytest.mark.slow

ARGS = {
    "recipients": "test@example.com",
    "headers": {"from": "test@example.com", "subject": "Guarantee"},
    "content": {"text/plain": "once"},
}


def create(web: Web, uid: str, schedule: str, **extra: Any) -> dict[str, Any]:
    body = {"uid": uid, "schedule": schedule, "metadata": {"arguments": ARGS}, **extra}
    response = web.call("create_scheduled_event", body)
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json()["data"])


def emails_per_instance(smtp: SmtpSink) -> Counter[str]:
    return Counter(m.message["X-Sendbeat-Instance"] for m in smtp.messages)


def test_three_beats_over_minute_boundaries_send_each_occurrence_once(
    web: Web, processes: Processes, smtp: SmtpSink
) -> None:
    processes.worker(concurrency=4)
    uids = [f"minutely-{n}" for n in range(50)]
    for uid in uids:
        create(web, uid, "every 1 mins")
    first = datetime.fromisoformat(
        web.call("get_scheduled_event", {"uid": uids[0]}).get_json()["data"]["scheduled_at"]
    )
    for name in ("beat-a", "beat-b", "beat-c"):
        processes.beat(name)

    # Two minute boundaries: 100 occurrences.
    time.sleep(max(0.0, first.timestamp() + 60 + 8 - time.time()))

    instances = [i for uid in uids for i in web.instances(uid)]
    assert len(instances) == 100, processes.log_text()
    occurrences = Counter((i["event_id"], i["scheduled_for"]) for i in instances)
    assert set(occurrences.values()) == {1}
    assert {i["status"] for i in instances} == {"succeeded"}
    emails = emails_per_instance(smtp)
    assert len(smtp.messages) == 100
    assert set(emails) == {i["uid"] for i in instances}


def test_a_killed_worker_loses_nothing_and_sends_nothing_twice(
    web: Web, processes: Processes, smtp: SmtpSink, store: Store
) -> None:
    smtp.delay = 0.02  # sends are in flight when the worker dies
    processes.settings = processes.settings.with_(send_lease=5, visibility_timeout=5)
    doomed = processes.worker("doomed", concurrency=4)
    processes.beat()  # publishes again what a dead worker held past its lease
    ids = []
    for n in range(500):
        response = web.call("send_message", {"uid": f"m{n}", "arguments": ARGS})
        ids.append(response.get_json()["data"]["message"]["id"])

    wait_until(lambda: len(smtp.messages) >= 60, timeout=30)
    # Stall the server's answers so the sends in flight are all waiting for their 250
    # when the worker dies: whether a message counts is then decided by sendbeat, not
    # by a race with SMTP's own ambiguity (a server that took a message from a client
    # that died before reading the 250 would deliver it, whatever the client does).
    smtp.delay = 3.0
    time.sleep(0.5)
    kill_at = time.time()
    processes.kill(doomed)
    smtp.delay = 0.02
    delivered_before = len(smtp.messages)
    assert delivered_before < 500
    processes.worker("rescuer", concurrency=4)

    def all_finished() -> bool:
        return all(store.instance(i).status == "succeeded" for i in ids)  # type: ignore[union-attr]

    assert wait_until(all_finished, timeout=120, interval=1), processes.log_text()
    time.sleep(2)
    emails = emails_per_instance(smtp)
    assert sorted(emails) == sorted(ids)
    twice = [i for i, n in emails.items() if n > 1]
    assert not twice, [
        [round(m.at - kill_at, 3) for m in smtp.messages if m.message["X-Sendbeat-Instance"] == i]
        for i in twice
    ]
    retried = [i for i in ids if store.instance(i).attempts > 1]  # type: ignore[union-attr]
    assert retried, "the kill interrupted no send: the test proved nothing"


def test_what_a_killed_worker_reserved_and_never_started_comes_back_after_the_visibility_timeout(
    web: Web, processes: Processes, smtp: SmtpSink, store: Store
) -> None:
    """A worker with one sender thread takes a task message of 16 executions and starts
    two; it dies. The two come back when their lease runs out, the other 14 with their
    message when the visibility timeout does, both 5 s here: kombu's own pace (it looks
    for such messages every 100 s) would leave the 14 waiting for over a minute."""
    processes.settings = processes.settings.with_(send_lease=5, visibility_timeout=5)
    events = [create(web, f"batched-{n}", "every 60 mins")["id"] for n in range(16)]
    smtp.delay = 60.0  # the doomed worker's sends hang until it dies
    doomed = processes.worker("doomed", concurrency=1, env={"SENDBEAT_WORKER_CONCURRENCY": "1"})
    now = int(store.redis.time()[0])
    for event_id in events:  # due now instead of within the hour: one claim, one message
        store.redis.zadd(store.keys.due(store.keys.shard_of(event_id)), {event_id: now})
    processes.beat()
    assert wait_until(lambda: len(store.waiting("running")) == 2, timeout=30), processes.log_text()
    kill_at = time.time()
    processes.kill(doomed)
    smtp.delay = 0.0
    processes.worker("rescuer", concurrency=4)

    def all_sent() -> bool:
        return len(smtp.messages) >= 16

    assert wait_until(all_sent, timeout=30), (len(smtp.messages), processes.log_text())
    took = time.time() - kill_at
    time.sleep(2)  # a second copy would arrive after the last one
    executions = [i for n in range(16) for i in web.instances(f"batched-{n}")]
    assert sorted(emails_per_instance(smtp).items()) == sorted((i["uid"], 1) for i in executions)
    assert {i["status"] for i in executions} == {"succeeded"}, took


def test_beat_down_past_the_window_records_missed_runs_and_sends_one_late(
    web: Web, processes: Processes, smtp: SmtpSink, store: Store
) -> None:
    processes.worker()
    minutely = create(web, "minutely", "every 1 mins")
    once = create(web, "once", "in 1 hours", catchup_window=30)
    # Beat was down: the minutely event last ran ten minutes ago, the one-time event's
    # run is seven minutes overdue (past its 30 s window). This is what the due index
    # holds after such an outage.
    now = int(time.time())
    minute = now - now % 60
    store.redis.zadd(store.keys.due(0), {minutely["id"]: minute - 600, once["id"]: now - 420})

    processes.beat()
    time.sleep(4)

    runs = web.instances("minutely")
    by_status = Counter(i["status"] for i in runs)
    # Every lost minute is one missed record (ten, or eleven if a minute boundary
    # passed while beat started), and only the latest is sent: no burst.
    assert by_status["missed"] in (10, 11), by_status
    # A minute boundary may also pass after beat caught up: that minute's own, regular
    # run goes out too.
    boundary = datetime.fromtimestamp(minute + 60, UTC).isoformat()
    regular = [
        i
        for i in runs
        if by_status["missed"] == 10
        and i["status"] == "succeeded"
        and i["scheduled_for"] == boundary
    ]
    assert not regular or time.time() >= minute + 60
    assert by_status["succeeded"] == 1 + len(regular), by_status
    assert len(runs) == by_status["succeeded"] + by_status["missed"]
    missed = sorted(i["scheduled_for"] for i in runs if i["status"] == "missed")
    assert missed[0] == datetime.fromtimestamp(minute - 600, UTC).isoformat()
    assert len(set(missed)) == len(missed)
    [lost] = web.instances("once")
    assert lost["status"] == "missed"
    after_once = web.call("get_scheduled_event", {"uid": "once"}).get_json()["data"]
    assert (after_once["status"], after_once["scheduled_at"]) == ("completed", None)
    assert len(smtp.messages) == 1 + len(regular)
    after = web.call("get_scheduled_event", {"uid": "minutely"}).get_json()["data"]
    assert datetime.fromisoformat(after["scheduled_at"]).timestamp() > now


def test_overlap_skip_records_skipped_and_refuses_a_trigger(
    web: Web, processes: Processes, smtp: SmtpSink
) -> None:
    smtp.delay = 4.0
    processes.worker()
    processes.beat()
    record = create(web, "slow", "every 1 secs")

    wait_until(lambda: any(i["status"] == "running" for i in web.instances("slow")), 10)
    refused = web.trigger(record["id"])
    time.sleep(2)
    processes.stop(processes.running[-1][0])  # beat

    assert refused.status_code == 409
    assert refused.get_json()["detail"] == "Another execution is in progress for this schedule"
    statuses = Counter(i["status"] for i in web.instances("slow"))
    assert statuses["skipped"] >= 1
    assert statuses["running"] + statuses["succeeded"] == 1


def test_transient_failures_are_retried_and_succeed(
    web: Web, processes: Processes, smtp: SmtpSink
) -> None:
    smtp.replies = ["451 4.3.0 try again later"]
    processes.worker()
    processes.beat()  # publishes the retry when its backoff runs out
    record = create(web, "retry", "@daily", retries=3)

    web.trigger(record["id"])

    [received] = smtp.wait_for(1, timeout=20)
    [instance] = wait_until(
        lambda: [i for i in web.instances("retry") if i["status"] == "succeeded"], timeout=5
    )
    assert instance["attempts"] == 2
    assert smtp.refused == 1
    assert received.message["X-Sendbeat-Instance"] == instance["uid"]


def test_permanent_failures_fail_at_once_with_the_reason(
    web: Web, processes: Processes, smtp: SmtpSink
) -> None:
    smtp.replies = ["550 5.1.1 no such user"]
    processes.worker()
    record = create(web, "bounce", "@daily", retries=3)

    web.trigger(record["id"])

    [instance] = wait_until(
        lambda: [i for i in web.instances("bounce") if i["status"] == "failed"], timeout=15
    )
    assert instance["attempts"] == 1
    assert "550" in instance["error"]
    assert smtp.messages == []


def test_pausing_cancels_queued_work(
    web: Web, processes: Processes, smtp: SmtpSink, settings: Settings
) -> None:
    record = create(web, "paused", "@daily")
    web.trigger(record["id"])  # queued: no worker runs yet
    paused = web.client.put(
        f"/api/unstable/schedules/{record['id']}/pause",
        headers={"Authorization": f"Bearer {web.key}"},
    )
    assert paused.get_json() == {"success": True}

    processes.worker()  # it receives the task and must not send it
    time.sleep(3)

    [instance] = web.instances("paused")
    assert instance["status"] == "cancelled"
    assert smtp.messages == []


def test_a_bulk_pause_by_label_stops_exactly_the_matching_events(
    web: Web, processes: Processes, smtp: SmtpSink
) -> None:
    labelled = {"nightly-a": {"team": "billing"}, "nightly-b": {"team": "billing", "x": "1"},
                "other": {"team": "growth"}, "plain": {}}  # fmt: skip
    for uid, labels in labelled.items():
        create(web, uid, "every 2 secs", labels=labels)
    processes.worker(concurrency=4)
    processes.beat()

    def sent(uid: str) -> int:
        return sum(1 for i in web.instances(uid) if i["status"] == "succeeded")

    assert wait_until(lambda: all(sent(uid) >= 1 for uid in labelled), timeout=30)
    response = web.call("bulk_update_scheduled_events",
                        {"labels": {"team": "billing"}, "action": "pause"})  # fmt: skip
    assert [(r["uid"], r["status"]) for r in response.get_json()["data"]["results"]] == [
        ("nightly-a", "suspend"),
        ("nightly-b", "suspend"),
    ]
    # A send already running when the pause landed may still finish; nothing after it.
    time.sleep(1)
    paused = {uid: len(web.instances(uid)) for uid in ("nightly-a", "nightly-b")}
    running = {uid: sent(uid) for uid in ("other", "plain")}
    time.sleep(4)  # two more occurrences of the events left running
    assert {uid: len(web.instances(uid)) for uid in paused} == paused
    assert all(sent(uid) >= running[uid] + 1 for uid in running)
    to_each = Counter(m.message["X-Sendbeat-Instance"] for m in smtp.messages)
    assert set(to_each.values()) == {1}


def test_a_jittered_event_with_two_beats_sends_once_per_occurrence_at_its_offset(
    web: Web, processes: Processes, smtp: SmtpSink
) -> None:
    create(web, "jittered", "every 5 secs", jitter=4, overlap="allow")
    processes.worker(concurrency=4)
    processes.beat("beat-a")
    processes.beat("beat-b")

    def sent() -> list[dict[str, Any]]:
        return [i for i in web.instances("jittered") if i["status"] == "succeeded"]

    assert wait_until(lambda: len(sent()) >= 3, timeout=60), processes.log_text()
    time.sleep(2)
    arrived = {m.message["X-Sendbeat-Instance"]: m.at for m in smtp.messages}
    assert len(arrived) == len(smtp.messages)  # one email per execution
    runs = sent()
    nominal = [datetime.fromisoformat(i.get("nominal_for") or i["scheduled_for"]) for i in runs]
    due = [datetime.fromisoformat(i["scheduled_for"]) for i in runs]
    assert len(set(nominal)) == len(nominal)  # once per occurrence, whichever beat
    assert all(n.second % 5 == 0 for n in nominal)
    offsets = [(d - n).total_seconds() for d, n in zip(due, nominal, strict=True)]
    assert all(0 <= offset < 4 for offset in offsets), offsets
    # Each email leaves at its jittered time, not at the occurrence's own.
    for run, at in zip(runs, due, strict=True):
        assert at.timestamp() <= arrived[run["uid"]] < at.timestamp() + 3


def test_max_runs_two_sends_twice_and_completes(
    web: Web, processes: Processes, smtp: SmtpSink
) -> None:
    create(web, "twice", "every 2 secs", max_runs=2, overlap="allow")
    processes.worker(concurrency=2)
    processes.beat()

    def status() -> str:
        return str(web.call("get_scheduled_event", {"uid": "twice"}).get_json()["data"]["status"])

    assert wait_until(lambda: status() == "completed", timeout=30), processes.log_text()
    time.sleep(5)  # two more periods: nothing more
    # Two sent (an occurrence missed while the processes started does not count).
    runs = [i for i in web.instances("twice") if i["status"] != "missed"]
    assert [(i["trigger"], i["status"]) for i in runs] == [("schedule", "succeeded")] * 2
    assert wait_until(lambda: len(smtp.messages) == 2, timeout=10)
    record = web.call("get_scheduled_event", {"uid": "twice"}).get_json()["data"]
    assert record["scheduled_at"] is None and record["max_runs"] == 2


def test_resume_with_catchup_latest_sends_the_last_missed_run_once(
    web: Web, processes: Processes, smtp: SmtpSink
) -> None:
    create(web, "paused", "every 2 secs", overlap="allow")
    web.call("update_scheduled_event", {"uid": "paused", "status": "suspend"})
    processes.worker(concurrency=2)
    processes.beat()
    time.sleep(5)  # two or three occurrences fall due while it is paused
    resumed_at = datetime.now(UTC)
    body = {"uid": "paused", "status": "active", "catchup": "latest"}
    assert web.call("update_scheduled_event", body).status_code == 200

    def paused_runs() -> list[dict[str, Any]]:
        runs = web.instances("paused")
        return [i for i in runs if datetime.fromisoformat(i["scheduled_for"]) < resumed_at]

    def caught_up() -> bool:
        return any(i["status"] == "succeeded" for i in paused_runs())

    assert wait_until(caught_up, timeout=20), processes.log_text()
    time.sleep(3)
    runs = sorted(paused_runs(), key=lambda i: i["scheduled_for"])
    assert len(runs) >= 2
    assert [i["status"] for i in runs] == ["missed"] * (len(runs) - 1) + ["succeeded"]
    sent = {m.message["X-Sendbeat-Instance"] for m in smtp.messages}
    assert runs[-1]["uid"] in sent and not {i["uid"] for i in runs[:-1]} & sent


def test_a_backfill_of_five_occurrences_sends_five_in_order(
    web: Web, processes: Processes, smtp: SmtpSink
) -> None:
    create(web, "hourly", "every 60 mins")
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start, end = hour - timedelta(hours=5), hour - timedelta(seconds=1)
    body = {"uid": "hourly", "start": start.isoformat(), "end": end.isoformat()}
    response = web.call("backfill_scheduled_event", body)
    assert response.get_json()["data"] == {"uid": "hourly", "queued": 5}
    processes.worker(concurrency=4)
    processes.beat()

    def backfilled() -> list[dict[str, Any]]:
        return [i for i in web.instances("hourly") if i["trigger"] == "backfill"]

    assert wait_until(
        lambda: [i["status"] for i in backfilled()] == ["succeeded"] * 5, timeout=30
    ), processes.log_text()
    runs = sorted(backfilled(), key=lambda i: i["scheduled_for"])
    assert [datetime.fromisoformat(i["scheduled_for"]) for i in runs] == [
        start + timedelta(hours=n) for n in range(5)
    ]
    # Overlap skip: one after another, in the range's order.
    arrived = {m.message["X-Sendbeat-Instance"]: m.at for m in smtp.messages}
    times = [arrived[i["uid"]] for i in runs]
    assert times == sorted(times) and len(smtp.messages) == 5
