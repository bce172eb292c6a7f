"""Resume with a catch-up policy and backfill (issue 12), in both dialects, on a pinned
clock: what is recorded, what waits to be sent, and each bad request's 400."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from app.core.store import Store
from tests.api.conftest import Api, event_body
from tests.api.test_schedules import BASES, problem


def hourly(api: Api, uid: str = "ev", **extra: object) -> str:
    response = api.call("create_scheduled_event", event_body(uid, "every 1 hours", **extra))
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["data"]["id"])


def executions(api: Api, uid: str = "ev") -> list[tuple[str, str]]:
    body = api.call("list_scheduled_event_instances", {"uid": uid}).get_json()["data"]
    return sorted(
        (i["scheduled_for"][11:16], i["status"]) for i in body["scheduled_event_instances"]
    )


def paused_for_three_hours(api: Api, clock: list[datetime]) -> None:
    """Paused at 20:50:30; 21:00, 22:00 and 23:00 fall due; resumed at 23:50:30."""
    api.call("update_scheduled_event", {"uid": "ev", "status": "suspend"})
    clock[0] += timedelta(hours=3)


@pytest.mark.parametrize(
    ("catchup", "waiting", "missed"),
    [("none", 0, ["21:00", "22:00", "23:00"]), ("latest", 1, ["21:00", "22:00"]),
     ("all", 3, [])],
)  # fmt: skip
def test_resume_records_the_paused_runs_and_queues_what_catchup_sends(
    api: Api, store: Store, clock: list[datetime], catchup: str, waiting: int, missed: list[str]
) -> None:
    event_id = hourly(api)
    paused_for_three_hours(api, clock)

    body = {"uid": "ev", "status": "active", "catchup": catchup}
    resumed = api.call("update_scheduled_event", body).get_json()["data"]

    assert (resumed["status"], resumed["scheduled_at"]) == (
        "activated", "2019-01-05T00:00:00+00:00"
    )  # fmt: skip
    assert executions(api) == [(t, "missed") for t in missed]
    assert store.replay_waiting(event_id) == waiting  # sent one by one by beat


def test_the_schedules_dialect_resumes_with_a_catchup_body(
    api: Api, store: Store, clock: list[datetime]
) -> None:
    event_id = hourly(api)
    paused_for_three_hours(api, clock)
    path = f"{BASES[0]}/{event_id}/resume"

    bad = api.client.put(path, json={"catchup": "some"}, headers=api.auth())
    assert bad.get_json() == problem(
        400, "Bad Request: catchup: Must be one of: none, latest, all."
    )
    response = api.client.put(path, json={"catchup": "latest"}, headers=api.auth())

    assert response.get_json() == {"success": True}
    assert store.replay_waiting(event_id) == 1
    assert executions(api) == [("21:00", "missed"), ("22:00", "missed")]


def test_catchup_without_a_resume_is_a_400(api: Api) -> None:
    hourly(api)
    response = api.call("update_scheduled_event", {"uid": "ev", "catchup": "all"})
    assert response.status_code == 400
    assert response.get_json()["data"]["errors"] == [
        'catchup: give it with "status": "active" (it says what a resume sends).'
    ]


def test_backfill_queues_the_occurrences_of_a_past_range_in_both_dialects(
    api: Api, store: Store
) -> None:
    event_id = hourly(api)
    body = {"uid": "ev", "start": "2019-01-04T10:00:00Z", "end": "2019-01-04T14:00:00Z"}

    response = api.call("backfill_scheduled_event", body)

    assert response.get_json() == {"response": {"status": "ok", "uid": "ev"},
                                   "data": {"uid": "ev", "queued": 5}}  # fmt: skip
    assert store.replay_waiting(event_id) == 5
    # The entries, in order: each occurrence's own time, the event's overlap policy.
    entries = store.redis.lrange(store.keys.event_replay(event_id), 0, -1)
    start = int(datetime.fromisoformat("2019-01-04T10:00:00+00:00").timestamp())
    assert entries == [f"backfill skip {start + 3600 * n} {start + 3600 * n}" for n in range(5)]

    other = api.client.post(
        f"{BASES[1]}/{event_id}/backfill",
        json={"start": "2019-01-03T00:30:00", "end": "2019-01-03T02:59:59", "overlap": "allow"},
        headers=api.auth(),
    )
    assert other.get_json() == {"queued": 2}  # 01:00 and 02:00; naive times are UTC
    assert store.replay_waiting(event_id) == 7


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"start": "2019-01-04T10:00:00Z", "end": "2019-01-05T10:00:00Z"},
         "end: a backfill covers a past range; end is after now."),
        ({"start": "2019-01-04T10:00:00Z", "end": "2019-01-04T09:00:00Z"},
         "end: must not be before start."),
        ({"start": "2018-01-01T00:00:00Z", "end": "2019-01-01T00:00:00Z"},
         "start: the range holds more than 1000 occurrences; backfill at most 1000 at a time."),
        ({"start": "2019-01-04T10:00:00Z"}, "end: Missing data for required field."),
        ({"start": "2019-01-04T10:00:00Z", "end": "soon"}, "end: Not a valid datetime."),
        ({"start": "2019-01-04T10:00:00Z", "end": "2019-01-04T11:00:00Z", "overlap": "x"},
         "overlap: Must be one of: skip, allow."),
    ],
)  # fmt: skip
def test_a_bad_backfill_is_a_400_and_queues_nothing(
    api: Api, store: Store, body: dict[str, str], error: str
) -> None:
    event_id = hourly(api)
    response = api.call("backfill_scheduled_event", {"uid": "ev", **body})
    assert response.status_code == 400
    assert response.get_json()["data"]["errors"] == [error]
    assert store.replay_waiting(event_id) == 0


def test_a_paused_or_one_time_event_cannot_be_backfilled(api: Api) -> None:
    hourly(api)
    api.call("create_scheduled_event", event_body("once", "2019-02-01"))
    api.call("update_scheduled_event", {"uid": "ev", "status": "suspend"})
    past = {"start": "2019-01-04T10:00:00Z", "end": "2019-01-04T11:00:00Z"}

    paused = api.call("backfill_scheduled_event", {"uid": "ev", **past})
    once = api.call("backfill_scheduled_event", {"uid": "once", **past})

    assert paused.get_json()["data"]["errors"] == [
        "uid: the event is paused; resume it to backfill."
    ]
    assert once.get_json()["data"]["errors"] == [
        "uid: '2019-02-01' runs once: there is nothing to backfill."
    ]
