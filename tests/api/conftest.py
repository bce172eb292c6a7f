"""The web app over a real Redis (store and broker), with its clock pinned."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from app import create_app
from app.core.settings import Settings
from app.core.store import Store

# The seed's example answers were made at this moment.
PINNED = datetime(2019, 1, 4, 20, 50, 30, tzinfo=UTC)


class Api:
    def __init__(self, client: FlaskClient, key: str) -> None:
        self.client = client
        self.key = key

    def call(self, method: str, body: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        payload = {"api_key": self.key, **(body or {})}
        return self.client.post(f"/v.1.1/{method}", json=payload, **kwargs)

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}


@pytest.fixture
def clock() -> list[datetime]:
    return [PINNED]


@pytest.fixture
def api(settings: Settings, store: Store, clock: list[datetime]) -> Api:
    store.clock = lambda: clock[0]
    app = create_app(settings, store=store)
    _, key = store.create_project("acme", int(PINNED.timestamp()))
    return Api(app.test_client(), key)


def event_body(uid: str, schedule: str = "every 5 mins", **extra: Any) -> dict[str, Any]:
    return {
        "uid": uid,
        "schedule": schedule,
        "metadata": {
            "arguments": {
                "recipients": "test@example.com",
                "headers": {"from": "test@example.com", "subject": "Example Scheduled Email"},
                "content": {"text/plain": "This email was sent automatically."},
            }
        },
        **extra,
    }
