"""Labels on events (issue 12): set on create and update, filters on both dialects'
lists, and bulk pause, resume, trigger and delete by label selector, reported per event."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from redis import Redis

from app import create_app
from app.core.settings import Settings
from app.core.store import Store
from tests.api.conftest import Api, event_body
from tests.api.test_schedules import BASES, problem, queued_tasks

BILLING = {"team": "billing", "env": "prod"}


def create(api: Api, uid: str, labels: dict[str, str], **extra: Any) -> str:
    response = api.call("create_scheduled_event", event_body(uid, labels=labels, **extra))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["data"]["labels"] == labels
    return str(response.get_json()["data"]["id"])


def fleet(api: Api) -> dict[str, str]:
    """Four events: two billing/prod, one billing/staging, one without labels."""
    return {
        "invoice": create(api, "invoice", BILLING),
        "dunning": create(api, "dunning", {**BILLING, "kind": "reminder"}),
        "staging": create(api, "staging", {"team": "billing", "env": "staging"}),
        "plain": create(api, "plain", {}),
    }


def statuses(api: Api) -> dict[str, str]:
    body = api.call("list_scheduled_events").get_json()["data"]
    return {e["uid"]: e["status"] for e in body["scheduled_events"]}


def test_labels_are_kept_replaced_and_cleared(api: Api) -> None:
    create(api, "ev", BILLING)
    assert api.call("get_scheduled_event", {"uid": "ev"}).get_json()["data"]["labels"] == BILLING

    changed = api.call("update_scheduled_event", {"uid": "ev", "labels": {"team": "growth"}})
    assert changed.get_json()["data"]["labels"] == {"team": "growth"}  # the whole map
    api.call("update_scheduled_event", {"uid": "ev", "schedule": "every 10 mins"})
    record = api.call("get_scheduled_event", {"uid": "ev"}).get_json()["data"]
    assert record["labels"] == {"team": "growth"}  # untouched by other changes

    cleared = api.call("update_scheduled_event", {"uid": "ev", "labels": {}})
    assert cleared.get_json()["data"]["labels"] == {}


@pytest.mark.parametrize(
    ("labels", "error"),
    [
        ({"bad name": "x"}, "labels: Label name 'bad name': 1 to 63 letters, digits, '-', '_', "
         "'.' or '/', starting and ending with a letter or digit."),
        ({"team:x": "a"}, "labels: Label name 'team:x': 1 to 63 letters, digits, '-', '_', "
         "'.' or '/', starting and ending with a letter or digit."),
        ({"team": "x" * 256}, "labels: Label 'team': a value is at most 255 characters, "
         "without control characters."),
        ({"team": "a\nb"}, "labels: Label 'team': a value is at most 255 characters, "
         "without control characters."),
        ({f"k{n}": "v" for n in range(17)}, "labels: At most 16 labels; got 17."),
        ({"team": 5}, "labels.team.value: Not a valid string."),
        (["team"], "labels: Not a valid mapping type."),
    ],
)  # fmt: skip
def test_bad_labels_are_a_400_naming_them_and_write_nothing(
    api: Api, labels: object, error: str
) -> None:
    response = api.call("create_scheduled_event", event_body("ev", labels=labels))
    assert response.status_code == 400
    assert response.get_json()["data"]["errors"] == [error]
    assert api.call("get_scheduled_event", {"uid": "ev"}).status_code == 404

    create(api, "kept", {"a": "1"})
    response = api.call("update_scheduled_event", {"uid": "kept", "labels": labels})
    assert response.status_code == 400
    assert response.get_json()["data"]["errors"] == [error]
    assert api.call("get_scheduled_event", {"uid": "kept"}).get_json()["data"]["labels"] == {
        "a": "1"
    }


def test_lists_filter_by_every_label_pair_in_both_dialects(api: Api) -> None:
    ids = fleet(api)

    def messaging(labels: dict[str, str], **extra: Any) -> list[str]:
        body = api.call("list_scheduled_events", {"labels": labels, **extra}).get_json()["data"]
        return [e["uid"] for e in body["scheduled_events"]]

    assert messaging(BILLING) == ["invoice", "dunning"]
    assert messaging({"team": "billing"}) == ["invoice", "dunning", "staging"]
    assert messaging({"kind": "reminder", "env": "prod"}) == ["dunning"]
    assert messaging({"team": "nobody"}) == []
    assert messaging({}) == ["invoice", "dunning", "staging", "plain"]
    api.call("update_scheduled_event", {"uid": "invoice", "status": "suspend"})
    assert messaging({"team": "billing"}, status="suspend") == ["invoice"]
    paged = api.call("list_scheduled_events", {"labels": {"team": "billing"}, "per_page": 2})
    assert paged.get_json()["data"]["total"] == 3

    def schedules(*pairs: str) -> list[str]:
        response = api.client.get(BASES[0], query_string={"label": list(pairs)}, headers=api.auth())
        assert response.status_code == 200, response.get_json()
        return [r["id"] for r in response.get_json()["records"]]

    assert schedules("team:billing", "env:prod") == [ids["invoice"], ids["dunning"]]
    assert schedules("env:staging") == [ids["staging"]]
    assert schedules() == list(ids.values())
    bad = api.client.get(BASES[1] + "?label=team", headers=api.auth())
    assert bad.status_code == 400
    assert bad.get_json() == problem(400, "Bad Request: label: Use name:value; got 'team'.")


def test_bulk_pause_and_resume_touch_exactly_the_matching_events(api: Api) -> None:
    ids = fleet(api)

    response = api.call("bulk_update_scheduled_events", {"labels": BILLING, "action": "pause"})

    assert response.status_code == 200
    assert response.get_json() == {
        "response": {"status": "ok", "uid": None},
        "data": {"results": [
            {"uid": "invoice", "id": ids["invoice"], "status": "suspend"},
            {"uid": "dunning", "id": ids["dunning"], "status": "suspend"},
        ]},
    }  # fmt: skip
    assert statuses(api) == {"invoice": "suspend", "dunning": "suspend",
                             "staging": "activated", "plain": "activated"}  # fmt: skip

    resumed = api.client.post(
        BASES[0] + "/bulk/resume", json={"labels": {"kind": "reminder"}}, headers=api.auth()
    )
    assert resumed.status_code == 200
    assert resumed.get_json() == {
        "results": [{"uid": "dunning", "id": ids["dunning"], "status": "activated"}]
    }
    assert statuses(api)["dunning"] == "activated"
    assert statuses(api)["invoice"] == "suspend"


def test_bulk_trigger_reports_each_execution_and_each_conflict(
    api: Api, redis: Redis, settings: Settings
) -> None:
    fleet(api)
    first = api.client.post(
        BASES[1] + "/bulk/trigger", json={"labels": {"env": "prod"}}, headers=api.auth()
    ).get_json()["results"]
    assert [(r["uid"], r["status"]) for r in first] == [
        ("invoice", "queued"),
        ("dunning", "queued"),
    ]
    # Each task message's arguments are "execution-id event-id" entries.
    queued = [entry.split()[0] for t in queued_tasks(redis, settings) for entry in t["body"][0]]
    assert sorted(queued) == sorted(r["execution"] for r in first)

    # Overlap skip: both executions are still queued, so a second trigger conflicts.
    again = api.call(
        "bulk_update_scheduled_events", {"labels": {"env": "prod"}, "action": "trigger"}
    )
    assert again.get_json()["data"]["results"] == [
        {"uid": uid, "id": r["id"], "error": "Another execution is in progress for this schedule"}
        for uid, r in zip(("invoice", "dunning"), first, strict=True)
    ]
    assert len([e for t in queued_tasks(redis, settings) for e in t["body"][0]]) == 2


def test_bulk_delete_removes_exactly_the_matching_events(api: Api) -> None:
    ids = fleet(api)

    response = api.client.post(
        BASES[0] + "/bulk/delete", json={"labels": {"team": "billing"}}, headers=api.auth()
    )

    gone = ("invoice", "dunning", "staging")
    assert response.get_json() == {
        "results": [{"uid": uid, "id": ids[uid], "status": "deleted"} for uid in gone]
    }
    assert statuses(api) == {"plain": "activated"}
    none = api.client.post(
        BASES[0] + "/bulk/delete", json={"labels": {"team": "billing"}}, headers=api.auth()
    )
    assert none.get_json() == {"results": []}


def test_a_bulk_selector_must_hold_a_pair_and_match_at_most_the_batch_limit(
    api: Api, store: Store
) -> None:
    fleet(api)
    empty = api.call("bulk_update_scheduled_events", {"labels": {}, "action": "pause"})
    assert empty.status_code == 400
    assert empty.get_json()["data"]["errors"] == [
        "labels: Give at least one label pair (every pair must match)."
    ]
    unknown = api.call("bulk_update_scheduled_events", {"labels": BILLING, "action": "stop"})
    assert unknown.get_json()["data"]["errors"] == [
        "action: Must be one of: pause, resume, trigger, delete."
    ]
    missing = api.client.post(BASES[0] + "/bulk/pause", headers=api.auth())
    assert missing.status_code == 400
    assert missing.get_json() == problem(
        400, "Bad Request: labels: Missing data for required field."
    )
    not_object = api.client.post(BASES[0] + "/bulk/pause", json=[1], headers=api.auth())
    assert not_object.status_code == 400
    assert statuses(api) == dict.fromkeys(["invoice", "dunning", "staging", "plain"], "activated")


def test_more_matches_than_the_batch_limit_are_a_400_and_change_nothing(
    settings: Settings, store: Store, clock: list[datetime]
) -> None:
    store.clock = lambda: clock[0]
    app = create_app(settings.with_(batch_limit=2), store=store)
    _, key = store.create_project("small", int(clock[0].timestamp()))
    api = Api(app.test_client(), key)
    fleet(api)

    response = api.call("bulk_update_scheduled_events", {"labels": {"team": "billing"},
                                                          "action": "delete"})  # fmt: skip

    assert response.status_code == 400
    assert response.get_json()["data"]["errors"] == [
        "labels: 3 events match; at most 2 per bulk call. Narrow the selector with more pairs."
    ]
    assert statuses(api) == dict.fromkeys(["invoice", "dunning", "staging", "plain"], "activated")
