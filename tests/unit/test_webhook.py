"""The webhook argument (issue 13): its validation, the body it posts, its signature
(checked with the Standard Webhooks reference verifier), and Retry-After."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from app.core.errors import InvalidMessage
from app.core.message import validate_arguments
from app.core.settings import Settings
from app.core.webhook import new_secret, render_body, sign
from workers.webhooks import CONSOLE_ANSWER, MAX_RETRY_AFTER, deliver, retry_after

EMAIL = {"recipients": "a@example.com", "headers": {"from": "b@example.com"},
         "content": {"text/plain": "hi"}}  # fmt: skip


def problems(arguments: object) -> list[str]:
    try:
        validate_arguments(arguments)
    except InvalidMessage as exc:
        return exc.errors
    return []


def test_a_webhook_alone_needs_no_recipients_and_with_recipients_email_is_checked() -> None:
    assert problems({"webhook": {"url": "https://hooks.example.com/x"}}) == []
    assert problems({**EMAIL, "webhook": {"url": "https://hooks.example.com/x"}}) == []
    assert problems({"recipients": "a@example.com", "webhook": {"url": "https://h.example"}}) == [
        "arguments.headers: is required",
        "arguments.content: is required",
    ]
    assert problems({"webhook": {"url": {"$ref": "https://example.com/url.json"}}}) == [
        "arguments.webhook.url: must be an http or https URL"
    ]


@pytest.mark.parametrize(
    ("webhook", "error"),
    [
        ("https://h.example", "arguments.webhook: must be an object with url, and optionally "
         "method, headers, body"),
        ({}, "arguments.webhook.url: is required"),
        ({"url": "ftp://h.example/x"}, "arguments.webhook.url: must be an http or https URL"),
        ({"url": "https://h.example/" + "x" * 2048},
         "arguments.webhook.url: is 2,066 characters; the limit is 2,048"),
        ({"url": "https://h.example", "method": "GET"},
         "arguments.webhook.method: must be POST or PUT"),
        ({"url": "https://h.example", "verb": "PUT"},
         "arguments.webhook.verb: is not a known field (use url, method, headers, body)"),
        ({"url": "https://h.example", "headers": {"webhook-id": "x"}},
         "arguments.webhook.headers.webhook-id: is set by sendbeat"),
        ({"url": "https://h.example", "headers": {"X-A": "1\r\nX-B: 2"}},
         "arguments.webhook.headers.X-A: must be at most 8,192 characters on one line"),
        ({"url": "https://h.example", "headers": {"bad name": "1"}},
         "arguments.webhook.headers.bad name: is not a valid header name (1 to 128 token "
         "characters)"),
        ({"url": "https://h.example", "headers": ["X-A"]},
         "arguments.webhook.headers: must be an object of header names to text values"),
    ],
)  # fmt: skip
def test_a_bad_webhook_is_named(webhook: object, error: str) -> None:
    assert problems({"webhook": webhook}) == [error]


def test_the_signature_verifies_with_the_reference_implementation() -> None:
    secret = new_secret()
    body = render_body({"a": "{{x}}"}, {"x": [1, 2]})
    stamp = int(time.time())
    headers = {"webhook-id": "exec-1", "webhook-timestamp": str(stamp),
               "webhook-signature": sign(secret, "exec-1", stamp, body)}  # fmt: skip
    assert Webhook(secret).verify(body, headers) == {"a": [1, 2]}
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(secret).verify(body.replace(b"1", b"9"), headers)


def test_the_body_takes_the_global_variables() -> None:
    body = {"text": "Hi {{ name }}, {{ missing }}", "n": "{{n}}", "list": ["{{name}}"], "k": 1}
    rendered = json.loads(render_body(body, {"name": "Ann", "n": 7}))
    assert rendered == {"text": "Hi Ann, {{ missing }}", "n": 7, "list": ["Ann"], "k": 1}
    assert render_body(None, {}) == b"{}"


def test_retry_after_reads_seconds_and_dates_within_a_bound() -> None:
    now = datetime(2027, 1, 15, 8, 0, 0, tzinfo=UTC).timestamp()
    assert retry_after("30") == 30.0
    assert retry_after("999999") == MAX_RETRY_AFTER
    assert retry_after("Fri, 15 Jan 2027 08:00:30 GMT", now=now) == 30.0
    assert retry_after("Fri, 15 Jan 2027 07:00:00 GMT", now=now) == 0.0  # already past
    assert retry_after("soon") is None and retry_after(None) is None


def test_the_console_transport_prints_a_delivery_instead_of_sending_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings.from_env({"MAIL_URL": "console://"})
    caplog.set_level(logging.INFO, logger="workers.webhooks")
    # An address nothing listens on, and a private one: nothing is fetched or refused.
    hook = {"url": "http://127.0.0.1:9/in", "headers": {"X-Team": "ops"}}

    answer = deliver(hook, b'{"a":1}', message_id="exec-1", timestamp=1, secret=new_secret(),
                     settings=settings)  # fmt: skip

    assert answer == {"status": 200, "body": CONSOLE_ANSWER}
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("console transport: webhook POST http://127.0.0.1:9/in\n")
    assert "X-Team: ops" in line and "webhook-id: exec-1" in line and line.endswith('{"a":1}')
