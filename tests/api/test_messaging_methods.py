"""The rest of the messaging dialect: update, delete, list, send_message, limits."""

from __future__ import annotations

from datetime import timedelta

import pytest
from redis import Redis

from app.core.settings import Settings
from app.core.store import Store
from tests.api.conftest import Api, event_body
from tests.api.test_schedules import create, queued_tasks


def record(api: Api, uid: str) -> dict:
    return dict(api.call("get_scheduled_event", {"uid": uid}).get_json()["data"])


def test_update_schedule_recomputes_the_next_run_and_answers_frequency(api: Api) -> None:
    create(api, "ev")

    response = api.call("update_scheduled_event", {"uid": "ev", "schedule": "every 1 hours"})

    assert response.status_code == 200
    data = response.get_json()["data"]
    assert (data["schedule"], data["frequency"]) == ("every 1 hours", "every 1 hours")
    assert data["scheduled_at"] == "2019-01-04T21:00:00+00:00"
    assert data["updated_at"] == "2019-01-04T20:50:30+00:00"
    assert record(api, "ev")["scheduled_at"] == "2019-01-04T21:00:00+00:00"


def test_update_timezone_moves_a_wall_clock_schedule(api: Api) -> None:
    create(api, "ev", schedule="every day at 9am")

    data = api.call("update_scheduled_event", {"uid": "ev", "timezone": "America/New_York"})

    # 09:00 in New York in January is 14:00 UTC; the next one is on the 5th.
    assert data.get_json()["data"]["scheduled_at"] == "2019-01-05T14:00:00+00:00"


def test_suspend_then_active(api: Api, clock: list) -> None:
    create(api, "ev", schedule="every 1 hours")

    suspended = api.call("update_scheduled_event", {"uid": "ev", "status": "suspend"})

    data = suspended.get_json()["data"]
    assert (data["status"], data["scheduled_at"]) == ("suspend", None)
    assert record(api, "ev")["scheduled_at"] is None
    clock[0] += timedelta(minutes=20)
    resumed = api.call("update_scheduled_event", {"uid": "ev", "status": "active"})
    data = resumed.get_json()["data"]
    # 21:00 fell due while paused: recorded missed, not sent (catchup "none").
    assert (data["status"], data["scheduled_at"]) == ("activated", "2019-01-04T22:00:00+00:00")
    runs = api.call("list_scheduled_event_instances", {"uid": "ev"}).get_json()["data"]
    assert [(i["status"], i["scheduled_for"]) for i in runs["scheduled_event_instances"]] == [
        ("missed", "2019-01-04T21:00:00+00:00")
    ]


def test_suspending_cancels_queued_executions(api: Api) -> None:
    event_id = create(api, "ev")
    api.client.post(f"/api/unstable/schedules/{event_id}/trigger", headers=api.auth())

    api.call("update_scheduled_event", {"uid": "ev", "status": "suspend"})

    [instance] = api.call("list_scheduled_event_instances", {"uid": "ev"}).get_json()["data"][
        "scheduled_event_instances"
    ]
    assert instance["status"] == "cancelled"


def test_update_rejects_bad_values_and_changes_nothing(api: Api) -> None:
    create(api, "ev")

    response = api.call(
        "update_scheduled_event", {"uid": "ev", "status": "paused", "schedule": "every 0 mins"}
    )

    assert response.status_code == 400
    assert response.get_json()["data"]["errors"] == ["status: Must be one of: active, suspend."]
    bad_schedule = api.call("update_scheduled_event", {"uid": "ev", "schedule": "whenever"})
    assert bad_schedule.status_code == 400
    assert bad_schedule.get_json()["data"]["errors"][0].startswith("schedule: ")
    assert record(api, "ev")["schedule"] == "every 5 mins"


def test_update_unknown_uid_is_404(api: Api) -> None:
    response = api.call("update_scheduled_event", {"uid": "nope", "status": "suspend"})

    assert response.status_code == 404
    assert response.get_json()["response"]["message"] == (
        "Can not find scheduled event from the given UID"
    )


def test_delete(api: Api, redis: Redis, settings: Settings) -> None:
    event_id = create(api, "ev")
    api.client.post(f"/api/unstable/schedules/{event_id}/trigger", headers=api.auth())

    response = api.call("delete_scheduled_event", {"uid": "ev"})

    assert response.status_code == 200
    assert response.get_json() == {
        "response": {"status": "ok", "uid": "ev"},
        "data": {"uid": "ev", "deleted": True},
    }
    assert api.call("get_scheduled_event", {"uid": "ev"}).status_code == 404
    assert api.call("delete_scheduled_event", {"uid": "ev"}).status_code == 404
    # The uid is free again.
    assert api.call("create_scheduled_event", event_body("ev")).status_code == 200


def test_list_pages_and_filters(api: Api) -> None:
    for n in range(5):
        create(api, f"e{n}")
    api.call("update_scheduled_event", {"uid": "e1", "status": "suspend"})

    first = api.call("list_scheduled_events", {"page": 1, "per_page": 2}).get_json()["data"]
    third = api.call("list_scheduled_events", {"page": 3, "per_page": 2}).get_json()["data"]
    suspended = api.call("list_scheduled_events", {"status": "suspend"}).get_json()["data"]

    assert [e["uid"] for e in first["scheduled_events"]] == ["e0", "e1"]
    assert (first["page"], first["per_page"], first["total"]) == (1, 2, 5)
    assert [e["uid"] for e in third["scheduled_events"]] == ["e4"]
    assert [e["uid"] for e in suspended["scheduled_events"]] == ["e1"]
    too_big = api.call("list_scheduled_events", {"per_page": 1001})
    assert too_big.status_code == 400
    assert too_big.get_json()["data"]["errors"] == [
        "per_page: Must be greater than or equal to 1 and less than or equal to 1000."
    ]


SEND = {
    "recipients": ["ann@example.com"],
    "headers": {"from": "me@example.com", "subject": "Now"},
    "content": {"text/plain": "right now"},
}


def test_send_message_queues_it(api: Api, redis: Redis, settings: Settings, store: Store) -> None:
    response = api.call("send_message", {"uid": "m-1", "arguments": SEND})

    assert response.status_code == 200
    body = response.get_json()
    message = body["data"]["message"]
    assert body["response"] == {"status": "ok", "uid": "m-1"}
    assert message["status"] == "queued"
    [task] = queued_tasks(redis, settings)
    assert task["body"][0] == [f"{message['id']} -"]  # the execution; "-": no event
    instance = store.instance(message["id"])
    assert instance is not None and (instance.trigger, instance.payload) == ("api", SEND)


def test_send_message_uid_is_used_once(api: Api) -> None:
    api.call("send_message", {"uid": "m-1", "arguments": SEND})

    response = api.call("send_message", {"uid": "m-1", "arguments": SEND})

    assert response.status_code == 400
    assert response.get_json() == {
        "response": {
            "status": "bad_request",
            "uid": "m-1",
            "message": "Uid m-1 already exists. Assuming message duplication.",
        },
        "data": {"errors": ["Uid m-1 already exists. Assuming message duplication."]},
    }


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({**SEND, "recipients": "not an address"}, "arguments.recipients"),
        (
            {**SEND, "headers": {"from": "me@example.com", "subject": "a\r\nBcc: x@y.z"}},
            "arguments.headers.subject",
        ),
    ],
)
def test_send_message_validates(api: Api, arguments: dict, error: str) -> None:
    response = api.call("send_message", {"arguments": arguments})

    assert response.status_code == 400
    assert response.get_json()["data"]["errors"][0].startswith(error)


def test_oversized_body_is_413(api: Api) -> None:
    huge = "x" * (11 * 1024 * 1024)

    response = api.call("send_message", {"arguments": {**SEND, "content": {"text/plain": huge}}})

    assert response.status_code == 413
    assert response.get_json()["response"]["status"] == "too_large"
