"""Redis unreachable (a restart, a failover): every request answers 503 with
Retry-After in its dialect's envelope, not a 500 with a logged traceback."""

from __future__ import annotations

import uuid

from app import create_app
from app.api.common import UNAVAILABLE
from app.core.keys import Keys
from app.core.redis_client import connect
from app.core.settings import Settings
from app.core.store import Store
from app.embedded_redis import free_port

ARGUMENTS = {
    "recipients": "a@example.com",
    "headers": {"from": "b@example.com"},
    "content": {"text/plain": "hi"},
}


def test_an_unreachable_store_answers_503_with_retry_after_in_both_dialects(
    settings: Settings,
) -> None:
    dead = settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    store = Store(connect(dead.redis_url), Keys(dead.key_prefix))
    client = create_app(dead, store=store).test_client()

    sent = client.post(
        "/v.1.1/send_message", json={"api_key": "k", "uid": "m1", "arguments": ARGUMENTS}
    )
    read = client.get(f"/api/v1/schedules/{uuid.uuid4()}", headers={"Authorization": "Bearer k"})

    assert (sent.status_code, sent.headers["Retry-After"]) == (503, "5")
    assert sent.get_json() == {
        "response": {"status": "unavailable", "uid": "m1", "message": UNAVAILABLE},
        "data": {"errors": [UNAVAILABLE]},
    }
    assert (read.status_code, read.headers["Retry-After"]) == (503, "5")
    assert read.get_json() == {
        "detail": UNAVAILABLE,
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": 503,
    }
