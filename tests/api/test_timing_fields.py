"""The timing policies on the API (issue 12): jitter, start_at, end_at, max_runs and dst
on create and update, in the record of both dialects and in the preview; each bad value
a 400 naming it, writing nothing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.api.conftest import PINNED, Api, event_body
from tests.api.test_schedules import BASES


def create(api: Api, uid: str = "ev", schedule: str = "every 5 mins", **extra: Any) -> Any:
    return api.call("create_scheduled_event", event_body(uid, schedule, **extra))


def test_the_policies_are_kept_and_shown_by_both_dialects(api: Api) -> None:
    response = create(api, jitter=120, start_at="2019-01-05T00:00:00Z",
                      end_at="2019-01-06T00:00:00+01:00", max_runs=3, dst="twice")  # fmt: skip
    assert response.status_code == 200, response.get_json()
    record = response.get_json()["data"]
    policies = {name: record[name] for name in ("jitter", "start_at", "end_at", "max_runs", "dst")}
    assert policies == {
        "jitter": 120,
        "start_at": "2019-01-05T00:00:00+00:00",
        "end_at": "2019-01-05T23:00:00+00:00",  # its offset, +01:00, read
        "max_runs": 3,
        "dst": "twice",
    }
    # The first occurrence is the first at or after start_at, moved by its jitter.
    first = datetime.fromisoformat(record["scheduled_at"])
    assert 0 <= (first - datetime.fromisoformat("2019-01-05T00:00:00+00:00")).total_seconds() < 120
    same = api.client.get(f"{BASES[0]}/{record['id']}", headers=api.auth()).get_json()
    assert same == record


def test_the_preview_is_jittered_and_bounded(api: Api) -> None:
    response = create(api, schedule="every 1 hours", jitter=600, end_at="2019-01-05T00:30:00",
                      preview=True)  # fmt: skip
    body = response.get_json()["data"]
    runs = [datetime.fromisoformat(t) for t in body["next_runs"]]
    # 21:00, 22:00, 23:00 and 00:00 on the pinned day; none after end_at.
    assert [t.strftime("%H") for t in runs] == ["21", "22", "23", "00"]
    assert all(0 <= t.minute * 60 + t.second < 600 for t in runs)
    assert body["scheduled_at"] == body["next_runs"][0]
    again = create(api, uid="ev2", schedule="every 1 hours", jitter=600, preview=True)
    assert again.get_json()["data"]["next_runs"][:4] != body["next_runs"]  # per event


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"jitter": 301},
         "jitter: at most the schedule's shortest interval, 300 seconds; got 301."),
        ({"jitter": -1}, "jitter: Must be greater than or equal to 0 and less than or equal to "
         "31622400."),
        ({"jitter": 10, "schedule": "in 5 minutes"},
         "jitter: applies to repeating schedules; 'in 5 minutes' runs once."),
        ({"max_runs": 2, "schedule": "2019-02-01"},
         "max_runs: applies to repeating schedules; '2019-02-01' runs once."),
        ({"max_runs": 0}, "max_runs: Must be greater than or equal to 1 and less than or equal "
         "to 1000000000."),
        ({"start_at": "2019-01-06", "end_at": "2019-01-05"}, "end_at: must be after start_at."),
        ({"end_at": "2019-01-01T00:00:00Z"},
         "end_at: the schedule has no run between now and end_at."),
        ({"start_at": "tomorrow"}, "start_at: Not a valid datetime."),
        ({"start_at": "3000-01-01T00:00:00Z"}, "start_at: Must be greater than or equal to "
         "1970-01-01 00:00:00+00:00 and less than or equal to 2999-12-31 23:59:59+00:00."),
        ({"dst": "never"}, "dst: Must be one of: shift, skip, twice."),
    ],
)  # fmt: skip
def test_a_bad_policy_is_a_400_naming_it(api: Api, extra: dict[str, Any], error: str) -> None:
    schedule = extra.pop("schedule", "every 5 mins")
    response = create(api, schedule=schedule, **extra)
    assert response.status_code == 400
    assert response.get_json()["data"]["errors"] == [error]
    assert api.call("get_scheduled_event", {"uid": "ev"}).status_code == 404


def test_an_update_sets_and_clears_the_policies(api: Api) -> None:
    create(api, start_at="2019-02-01T00:00:00Z", max_runs=5)

    changed = api.call("update_scheduled_event", {"uid": "ev", "jitter": 60, "dst": "skip"})
    record = changed.get_json()["data"]
    assert (record["jitter"], record["dst"], record["max_runs"]) == (60, "skip", 5)
    assert record["scheduled_at"].startswith("2019-02-01T00:0")  # start_at still holds

    cleared = api.call("update_scheduled_event",
                       {"uid": "ev", "start_at": None, "max_runs": None})  # fmt: skip
    record = cleared.get_json()["data"]
    assert (record["start_at"], record["max_runs"], record["jitter"]) == (None, None, 60)
    first = datetime.fromisoformat(record["scheduled_at"])
    # 20:50's occurrence when its offset puts it after now (20:50:30), else 20:55's.
    since = (first - datetime.fromisoformat("2019-01-04T20:50:00+00:00")).total_seconds()
    assert first > PINNED and since % 300 < 60 and since < 360

    bad = api.call("update_scheduled_event", {"uid": "ev", "jitter": 1000})
    assert bad.get_json()["data"]["errors"] == [
        "jitter: at most the schedule's shortest interval, 300 seconds; got 1000."
    ]
    kept = api.call("get_scheduled_event", {"uid": "ev"}).get_json()["data"]
    assert kept == {name: value for name, value in record.items() if name != "frequency"}


def test_trigger_with_skip_next_runs_now_and_moves_the_next_run_one_period(api: Api) -> None:
    event_id = create(api, overlap="allow").get_json()["data"]["id"]
    path = f"{BASES[0]}/{event_id}/trigger"

    plain = api.client.post(path, headers=api.auth())
    skipping = api.client.post(path, json={"skip_next": True}, headers=api.auth())

    assert plain.get_json() == skipping.get_json() == {"success": True}
    record = api.call("get_scheduled_event", {"uid": "ev"}).get_json()["data"]
    assert record["scheduled_at"] == "2019-01-04T21:00:00+00:00"  # 20:55 skipped
    runs = api.call("list_scheduled_event_instances", {"uid": "ev"}).get_json()["data"]
    assert [i["trigger"] for i in runs["scheduled_event_instances"]] == ["manual", "manual"]

    api.call("update_scheduled_event", {"uid": "ev", "status": "suspend"})
    paused = api.client.post(path, json={"skip_next": True}, headers=api.auth())
    assert paused.status_code == 400
    assert paused.get_json()["detail"] == (
        "skip_next: the event is paused: it has no next run to skip."
    )
    bad = api.client.post(path, json={"skip_next": "maybe"}, headers=api.auth())
    assert bad.get_json()["detail"] == "Bad Request: skip_next: Not a valid boolean."
