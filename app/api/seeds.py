"""The public pages sendbeat is compatible with, as the OpenAPI document quotes them:
the request and answer of PostageApp's create_scheduled_events page, verbatim."""

from __future__ import annotations

from typing import Any

# The create_scheduled_events page we copy: its request and both answers, verbatim.
_SEED_PDF = {
    "content_type": "application/octet-stream",
    "content": {
        "$ref": "http://example.com/resources/example.pdf",
        "$type": "application/octet-stream",
        "$encode": "base64",
    },
}


def _seed_event(uid: str, schedule: str, subject: str) -> dict[str, Any]:
    return {
        "uid": uid,
        "schedule": schedule,
        "metadata": {
            "arguments": {
                "recipients": "test@example.com",
                "headers": {"from": "test@example.com", "subject": subject},
                "content": {"text/plain": "This email was sent automatically."},
                "attachments": {"test.pdf": _SEED_PDF},
            }
        },
    }


SEED_BATCH_REQUEST = {
    "api_key": "__PROJECT_API__KEY__",
    "events": [
        _seed_event("__UID_1__", "every 5 mins", "Example Scheduled Email"),
        _seed_event("__UID_2__", "every 30 mins", "Example Secondary Scheduled Email"),
    ],
}
SEED_BATCH_200 = {
    "response": {
        "status": "ok",
        "message": [
            {
                "uid": "__UID_1__",
                "status": "activated",
                "schedule": "every 1 mins",
                "event_type": "repeatable",
                "scheduled_at": "2019-01-04T20:51:00+00:00",
            },
            {
                "uid": "__UID_2__",
                "status": "activated",
                "schedule": "every 5 mins",
                "event_type": "repeatable",
                "scheduled_at": "2019-01-04T20:55:00+00:00",
            },
        ],
    }
}
