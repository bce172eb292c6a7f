"""End to end, as a user sees it: real Redis, real Celery worker and beat processes,
a real SMTP server and a real HTTP server for ``$ref`` content."""

from __future__ import annotations

import base64
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from app.core.store import Store
from tests.integration.conftest import FileServer, Processes, SmtpSink, Web, wait_until

pytestmark = pytest.mark.slow

PDF = b"%PDF-1.4\n% sendbeat test attachment \x00\x01\x02\xff\n%%EOF\n"


def arguments(**extra: Any) -> dict[str, Any]:
    return {
        "recipients": "test@example.com",
        "headers": {"from": "test@example.com", "subject": "Example Scheduled Email"},
        "content": {"text/plain": "This email was sent automatically."},
        **extra,
    }


def create(web: Web, uid: str, schedule: str, args: dict[str, Any], **extra: Any) -> dict:
    body = {"uid": uid, "schedule": schedule, "metadata": {"arguments": args}, **extra}
    response = web.call("create_scheduled_event", body)
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json()["data"])


def test_seed_batch_sends_its_ref_attachment_when_triggered(
    web: Web, processes: Processes, smtp: SmtpSink, files: FileServer
) -> None:
    files.files["/resources/example.pdf"] = PDF
    ref = {
        "$ref": files.url("/resources/example.pdf"),
        "$type": "application/octet-stream",
        "$encode": "base64",
    }
    attachments = {"test.pdf": {"content_type": "application/octet-stream", "content": ref}}
    events = [
        {
            "uid": "__UID_1__",
            "schedule": "every 5 mins",
            "metadata": {"arguments": arguments(attachments=attachments)},
        },
        {
            "uid": "__UID_2__",
            "schedule": "every 30 mins",
            "metadata": {"arguments": arguments(attachments=attachments)},
        },
    ]
    created = web.call("create_scheduled_events", {"events": events})
    assert created.status_code == 200
    summary = created.get_json()["response"]["message"]
    assert [s["uid"] for s in summary] == ["__UID_1__", "__UID_2__"]
    assert files.hits == []  # remote content is fetched when the occurrence runs, not before
    processes.worker()

    assert web.trigger(summary[0]["id"]).get_json() == {"success": True}

    [received] = smtp.wait_for(1, timeout=15)
    assert files.hits == ["/resources/example.pdf"]
    message = received.message
    assert message.get_content_type() == "multipart/mixed"
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "test.pdf"
    assert attachment.get_content_type() == "application/octet-stream"
    assert attachment.get_content() == PDF
    assert message.get_body(("plain",)).get_content().strip() == (
        "This email was sent automatically."
    )


def test_every_minute_delivers_once_at_the_boundary_with_all_parts(
    web: Web, processes: Processes, smtp: SmtpSink
) -> None:
    processes.worker()
    processes.beat()
    args = arguments(
        recipients=["ann@example.com"],
        content={"text/plain": "Plain hello", "text/html": "<p>Hello <b>html</b></p>"},
        attachments={
            "notes.txt": {
                "content_type": "text/plain",
                "content": base64.b64encode(b"attached bytes").decode(),
            }
        },
    )
    record = create(web, "minutely", "every 1 mins", args)
    boundary = datetime.fromisoformat(record["scheduled_at"])
    assert boundary.second == 0 and boundary.tzinfo == UTC

    [received] = smtp.wait_for(1, timeout=75)

    # It arrived at the minute boundary, not before, and promptly after.
    assert boundary.timestamp() <= received.at < boundary.timestamp() + 5
    message = received.message
    assert received.rcpt_tos == ["ann@example.com"]
    assert (message["From"], message["To"]) == ("test@example.com", "ann@example.com")
    assert message["Subject"] == "Example Scheduled Email"
    assert message["Message-ID"] and message["Date"]
    assert message.get_content_type() == "multipart/mixed"
    [alternative] = [p for p in message.walk() if p.get_content_type() == "multipart/alternative"]
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    assert message.get_body(("plain",)).get_content().strip() == "Plain hello"
    assert message.get_body(("html",)).get_content().strip() == "<p>Hello <b>html</b></p>"
    [attachment] = list(message.iter_attachments())
    assert (attachment.get_filename(), attachment.get_content()) == ("notes.txt", "attached bytes")

    [instance] = wait_until(
        lambda: [i for i in web.instances("minutely") if i["status"] == "succeeded"], timeout=5
    )
    assert instance["trigger"] == "schedule"
    assert instance["scheduled_for"] == record["scheduled_at"]
    assert instance["attempts"] == 1
    assert instance["error"] is None
    assert instance["result"]["accepted"] == ["ann@example.com"]
    assert instance["result"]["message_id"] == message["Message-ID"]
    assert message["X-Sendbeat-Instance"] == instance["uid"]
    after = web.call("get_scheduled_event", {"uid": "minutely"}).get_json()["data"]
    assert after["run_count"] == 1
    assert (
        after["scheduled_at"] == datetime.fromtimestamp(boundary.timestamp() + 60, UTC).isoformat()
    )
    time.sleep(2)
    assert len(smtp.messages) == 1  # one occurrence, one email


def test_trigger_delivers_within_seconds_and_leaves_scheduled_at(
    web: Web, processes: Processes, smtp: SmtpSink
) -> None:
    processes.worker()
    record = create(web, "daily", "@daily", arguments())

    started = time.time()
    assert web.trigger(record["id"]).get_json() == {"success": True}

    [received] = smtp.wait_for(1, timeout=10)
    assert received.at - started < 5
    [instance] = wait_until(
        lambda: [i for i in web.instances("daily") if i["status"] == "succeeded"], timeout=5
    )
    assert instance["trigger"] == "manual"
    after = web.call("get_scheduled_event", {"uid": "daily"}).get_json()["data"]
    assert after["scheduled_at"] == record["scheduled_at"]
    assert after["run_count"] == 1


def test_two_beats_send_each_occurrence_exactly_once(
    web: Web, processes: Processes, smtp: SmtpSink, store: Store
) -> None:
    processes.worker(concurrency=4)
    uids = [f"fast-{n}" for n in range(5)]
    for uid in uids:
        create(web, uid, "every 2 secs", arguments(), overlap="allow")
    processes.beat("beat-a")
    processes.beat("beat-b")
    time.sleep(10)
    for process, _ in list(processes.running)[1:]:
        processes.stop(process)  # both beats; the worker finishes what was claimed
    time.sleep(3)

    instances = [i for uid in uids for i in web.instances(uid)]
    occurrences = Counter((i["event_id"], i["scheduled_for"]) for i in instances)
    assert len(instances) >= 5 * 4, processes.log_text()
    assert max(occurrences.values()) == 1  # no occurrence claimed twice
    assert {i["status"] for i in instances} == {"succeeded"}, instances
    emails = Counter(m.message["X-Sendbeat-Instance"] for m in smtp.messages)
    assert set(emails) == {i["uid"] for i in instances}
    assert set(emails.values()) == {1}  # each occurrence's email arrived once


def test_send_message_with_every_recipient_form_variables_and_a_yaml_ref(
    web: Web, processes: Processes, smtp: SmtpSink, files: FileServer
) -> None:
    files.files["/vars.yaml"] = b"greeting: Hello\nproduct: sendbeat\n"
    processes.worker()
    content = {
        "text/plain": "{{greeting}} {{name}}, welcome to {{product}}.",
        "text/html": "<p>{{greeting}} <b>{{name}}</b>, welcome to {{product}}.</p>",
    }
    yaml_vars = {"$ref": files.url("/vars.yaml"), "$type": "application/yaml"}
    forms: list[Any] = [
        "a@example.com, b@example.com",
        ["c@example.com"],
        {"d@example.com": {"name": "Dora"}, "e@example.com": {"name": "Emil", "greeting": "Hi"}},
    ]
    for n, recipients in enumerate(forms):
        args = {
            "recipients": recipients,
            "headers": {"from": "Sendbeat <me@example.com>", "subject": "{{greeting}} {{name}}"},
            "content": content,
            # The first two fetch their variables from YAML when they are sent.
            "variables": yaml_vars if n < 2 else {"greeting": "Hello", "product": "sendbeat"},
        }
        response = web.call("send_message", {"uid": f"msg-{n}", "arguments": args})
        assert response.status_code == 200, response.get_json()

    received = smtp.wait_for(5, timeout=20)

    by_rcpt = {r.rcpt_tos[0]: r.message for r in received}
    assert sorted(by_rcpt) == [f"{c}@example.com" for c in "abcde"]
    assert len(received) == 5
    dora, emil = by_rcpt["d@example.com"], by_rcpt["e@example.com"]
    assert dora["Subject"] == "Hello Dora"
    assert emil["Subject"] == "Hi Emil"  # a recipient's own variables win
    assert dora.get_body(("plain",)).get_content().strip() == "Hello Dora, welcome to sendbeat."
    assert emil.get_body(("html",)).get_content().strip() == (
        "<p>Hi <b>Emil</b>, welcome to sendbeat.</p>"
    )
    plain = by_rcpt["a@example.com"]
    # Variables fetched from YAML at send time; an unknown placeholder stays as written.
    assert plain["Subject"] == "Hello {{name}}"
    assert plain.get_content_type() == "multipart/alternative"
    assert plain["To"] == "a@example.com" and plain["From"] == "Sendbeat <me@example.com>"
    assert files.hits.count("/vars.yaml") == 2  # once per message that referenced it
