"""The messaging dialect (PostageApp), against the seed's exact bodies."""

from __future__ import annotations

import json
import uuid
from typing import Any

from app.core.store import Store
from tests.api.conftest import Api, event_body

PDF_REF = {
    "$ref": "http://example.com/resources/example.pdf",
    "$type": "application/octet-stream",
    "$encode": "base64",
}


def seed_event(uid: str, schedule: str, subject: str) -> dict[str, Any]:
    return {
        "uid": uid,
        "schedule": schedule,
        "metadata": {
            "arguments": {
                "recipients": "test@example.com",
                "headers": {"from": "test@example.com", "subject": subject},
                "content": {"text/plain": "This email was sent automatically."},
                "attachments": {
                    "test.pdf": {"content_type": "application/octet-stream", "content": PDF_REF}
                },
            }
        },
    }


SEED_EVENTS = [
    seed_event("__UID_1__", "every 5 mins", "Example Scheduled Email"),
    seed_event("__UID_2__", "every 30 mins", "Example Secondary Scheduled Email"),
]

UID_TAKEN = {
    "response": {
        "status": "bad_request",
        "uid": "__UID_1__",
        "message": "Could not create scheduled event.",
    },
    "data": {"errors": ["[:uid, :project id] is already taken"]},
}


def is_uuid(value: str) -> bool:
    return str(uuid.UUID(value)) == value


def test_seed_batch_create_answers_the_seed_body(api: Api) -> None:
    response = api.call("create_scheduled_events", {"events": SEED_EVENTS})

    assert response.status_code == 200
    body = response.get_json()
    ids = [entry.pop("id") for entry in body["response"]["message"]]
    assert all(is_uuid(i) for i in ids) and len(set(ids)) == 2
    assert body == {
        "response": {
            "status": "ok",
            "message": [
                {
                    "uid": "__UID_1__",
                    "status": "activated",
                    "schedule": "every 5 mins",
                    "event_type": "repeatable",
                    "scheduled_at": "2019-01-04T20:55:00+00:00",
                },
                {
                    "uid": "__UID_2__",
                    "status": "activated",
                    "schedule": "every 30 mins",
                    "event_type": "repeatable",
                    "scheduled_at": "2019-01-04T21:00:00+00:00",
                },
            ],
        }
    }


def test_a_taken_uid_answers_the_seed_body_and_creates_nothing(api: Api, store: Store) -> None:
    api.call("create_scheduled_events", {"events": SEED_EVENTS[:1]})
    fresh = seed_event("__UID_3__", "every 1 mins", "x")

    response = api.call("create_scheduled_events", {"events": [fresh, SEED_EVENTS[0]]})

    assert response.status_code == 400
    assert response.get_json() == UID_TAKEN
    got = api.call("get_scheduled_event", {"uid": "__UID_3__"})
    assert got.status_code == 404


def test_a_uid_twice_in_one_batch_is_taken(api: Api) -> None:
    response = api.call("create_scheduled_events", {"events": [SEED_EVENTS[0], SEED_EVENTS[0]]})

    assert response.status_code == 400
    assert response.get_json() == UID_TAKEN
    assert api.call("get_scheduled_event", {"uid": "__UID_1__"}).status_code == 404


def test_single_create_with_a_taken_uid_answers_the_same_body(api: Api) -> None:
    api.call("create_scheduled_event", SEED_EVENTS[0])

    response = api.call("create_scheduled_event", SEED_EVENTS[0])

    assert response.status_code == 400
    assert response.get_json() == UID_TAKEN


def test_batch_validation_names_each_event_and_field_and_is_atomic(api: Api) -> None:
    good = event_body("good")
    bad_schedule = event_body("bad1", schedule="every blue moon")
    no_from = event_body("bad2")
    del no_from["metadata"]["arguments"]["headers"]["from"]

    response = api.call("create_scheduled_events", {"events": [good, bad_schedule, no_from]})

    assert response.status_code == 400
    body = response.get_json()
    assert body["response"] == {
        "status": "bad_request",
        "uid": None,
        "message": "Could not create scheduled event.",
    }
    errors = body["data"]["errors"]
    assert len(errors) == 2
    assert errors[0].startswith("events[1].schedule: ")
    assert errors[1].startswith("events[2].metadata.arguments.headers")
    assert api.call("get_scheduled_event", {"uid": "good"}).status_code == 404


def test_missing_fields_are_named(api: Api) -> None:
    response = api.call("create_scheduled_events", {"events": [{"uid": "x"}]})

    assert response.status_code == 400
    assert response.get_json()["data"]["errors"] == [
        "events[0].schedule: Missing data for required field.",
        "events[0].metadata: Missing data for required field.",
    ]


def test_batch_limit(api: Api) -> None:
    events = [event_body(f"e{i}") for i in range(1001)]

    response = api.call("create_scheduled_events", {"events": events})

    assert response.status_code == 400
    assert response.get_json()["data"]["errors"] == [
        "events: At most 1000 events per request; got 1001."
    ]


def test_a_past_one_time_date_is_a_400(api: Api) -> None:
    response = api.call("create_scheduled_event", event_body("old", schedule="2018-12-01"))

    assert response.status_code == 400
    assert response.get_json()["data"]["errors"][0].startswith("schedule: ")
    assert "past" in response.get_json()["data"]["errors"][0]


def test_get_returns_the_event_record(api: Api) -> None:
    created = api.call("create_scheduled_event", event_body("weekly", "*/15 9-17 * * MON-FRI"))
    assert created.status_code == 200

    response = api.call("get_scheduled_event", {"uid": "weekly"})

    assert response.status_code == 200
    body = response.get_json()
    record = body["data"]
    assert body["response"] == {"status": "ok", "uid": "weekly"}
    assert is_uuid(record.pop("id"))
    assert record == {
        "uid": "weekly",
        "status": "activated",
        "schedule": "*/15 9-17 * * MON-FRI",
        "event_type": "repeatable",
        "timezone": "UTC",
        # 2019-01-04 is a Friday at 20:50: the next run is Monday 09:00.
        "scheduled_at": "2019-01-07T09:00:00+00:00",
        "metadata": event_body("weekly")["metadata"],
        "created_at": "2019-01-04T20:50:30+00:00",
        "updated_at": "2019-01-04T20:50:30+00:00",
        "run_count": 0,
        "last_run": None,
        "catchup_window": 300,
        "overlap": "skip",
        "retries": 5,
        "labels": {},
        "alerts": [],
        "jitter": 0,
        "start_at": None,
        "end_at": None,
        "max_runs": None,
        "dst": "shift",
    }


def test_one_time_event(api: Api) -> None:
    response = api.call("create_scheduled_event", event_body("once", "2019-02-01 09:30:00"))

    record = response.get_json()["data"]
    assert (record["event_type"], record["scheduled_at"]) == (
        "one_time",
        "2019-02-01T09:30:00+00:00",
    )


def test_preview_lists_the_next_runs(api: Api) -> None:
    response = api.call("create_scheduled_event", event_body("p", "every 1 mins", preview=True))

    assert response.get_json()["data"]["next_runs"] == [
        "2019-01-04T20:51:00+00:00",
        "2019-01-04T20:52:00+00:00",
        "2019-01-04T20:53:00+00:00",
        "2019-01-04T20:54:00+00:00",
        "2019-01-04T20:55:00+00:00",
    ]


def test_unknown_uid_is_404(api: Api) -> None:
    response = api.call("get_scheduled_event", {"uid": "nope"})

    assert response.status_code == 404
    assert response.get_json() == {
        "response": {
            "status": "not_found",
            "uid": "nope",
            "message": "Can not find scheduled event from the given UID",
        },
        "data": {"errors": ["Can not find scheduled event from the given UID"]},
    }


def test_another_projects_event_is_404(api: Api, store: Store) -> None:
    api.call("create_scheduled_event", event_body("mine"))
    _, other_key = store.create_project("other", 0)

    response = api.call("get_scheduled_event", {"uid": "mine", "api_key": other_key})

    assert response.status_code == 404


def test_bearer_auth_works_too(api: Api) -> None:
    api.call("create_scheduled_event", event_body("b"))

    response = api.client.post("/v.1.1/get_scheduled_event", json={"uid": "b"}, headers=api.auth())

    assert response.status_code == 200


def test_v1_0_alias(api: Api) -> None:
    response = api.client.post(
        "/v.1.0/create_scheduled_event.json", json={"api_key": api.key, **event_body("alias")}
    )

    assert response.status_code == 200


def test_bad_key_is_401(api: Api) -> None:
    response = api.call("get_scheduled_event", {"uid": "x", "api_key": "sb_wrong"})

    assert response.status_code == 401
    assert response.get_json() == {
        "response": {
            "status": "unauthorized",
            "uid": "x",
            "message": "Invalid or inactive project API key used.",
        },
        "data": {"errors": ["Invalid or inactive project API key used."]},
    }


def test_revoked_key_is_401(api: Api, store: Store) -> None:
    store.revoke_key(api.key[:12])

    assert api.call("get_scheduled_event", {"uid": "x"}).status_code == 401


def test_a_rotated_key_replaces_the_old_one(api: Api, store: Store) -> None:
    new_key = store.rotate_key("acme", 0)

    assert api.call("get_scheduled_event", {"uid": "x"}).status_code == 401
    assert api.call("get_scheduled_event", {"uid": "x", "api_key": new_key}).status_code == 404


def test_invalid_json_is_406(api: Api) -> None:
    response = api.client.post(
        "/v.1.1/get_scheduled_event", data=b'{"api_key": ', content_type="application/json"
    )

    assert response.status_code == 406
    assert response.get_json() == {
        "response": {
            "status": "invalid_json",
            "uid": None,
            "message": "The posted content is not valid JSON.",
        },
        "data": {"errors": ["The posted content is not valid JSON."]},
    }


def test_invalid_utf8_is_406(api: Api) -> None:
    response = api.client.post(
        "/v.1.1/get_scheduled_event", data=b'{"uid": "\xff"}', content_type="application/json"
    )

    assert response.status_code == 406
    assert response.get_json()["response"]["status"] == "invalid_utf8"


def test_a_json_array_body_is_400(api: Api) -> None:
    response = api.client.post(
        "/v.1.1/get_scheduled_event",
        data=json.dumps([1]),
        content_type="application/json",
        headers=api.auth(),
    )

    assert response.status_code == 400
    assert response.get_json()["response"]["status"] == "bad_request"


def test_unknown_method_is_404_in_the_envelope(api: Api) -> None:
    response = api.call("make_coffee")

    assert response.status_code == 404
    body = response.get_json()
    assert body["response"]["status"] == "not_found"
    assert body["response"]["message"].startswith("Unknown API method 'make_coffee'.")


def test_list_instances_is_empty_for_a_new_event(api: Api) -> None:
    api.call("create_scheduled_event", event_body("fresh"))

    response = api.call("list_scheduled_event_instances", {"uid": "fresh"})

    assert response.status_code == 200
    assert response.get_json()["data"] == {
        "scheduled_event_instances": [],
        "page": 1,
        "per_page": 250,
        "total": 0,
    }


def test_an_unknown_timezone_is_a_400_naming_the_field(api: Api) -> None:
    response = api.call("create_scheduled_event", event_body("tz", timezone="Mars/Olympus"))

    assert response.status_code == 400
    assert response.get_json()["data"]["errors"] == ["timezone: Unknown timezone 'Mars/Olympus'"]


def test_wall_clock_schedules_follow_the_event_timezone(api: Api) -> None:
    body = event_body("ny", schedule="every day at 9am", timezone="America/New_York", preview=True)

    record = api.call("create_scheduled_event", body).get_json()["data"]

    assert record["timezone"] == "America/New_York"
    assert record["scheduled_at"] == "2019-01-05T14:00:00+00:00"  # 09:00 EST, in UTC
    assert record["next_runs"][:2] == ["2019-01-05T14:00:00+00:00", "2019-01-06T14:00:00+00:00"]


def test_a_uid_with_control_characters_is_refused(api: Api) -> None:
    response = api.call("create_scheduled_event", event_body("tab\there"))

    assert response.status_code == 400
    assert response.get_json()["data"]["errors"] == ["uid: Must not contain control characters."]
