"""The rest of the schedules dialect: list, get, delete, pause, resume, recipients,
executions, and "Invalid method" on every path."""

from __future__ import annotations

import uuid

import pytest

from tests.api.conftest import Api, event_body
from tests.api.test_schedules import BASES, create, problem

PATHS = {
    "": {"GET"},
    "/{id}": {"GET", "DELETE"},
    "/{id}/trigger": {"POST"},
    "/{id}/pause": {"PUT"},
    "/{id}/resume": {"PUT"},
    "/{id}/recipients": {"GET"},
    "/{id}/executions": {"GET"},
    "/{id}/backfill": {"POST"},
    **{f"/bulk/{action}": {"POST"} for action in ("pause", "resume", "trigger", "delete")},
}


def get(api: Api, path: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return api.client.get(BASES[0] + path, headers=api.auth(), **kwargs)


@pytest.mark.parametrize("path", list(PATHS))
def test_every_path_answers_invalid_method_to_other_methods(api: Api, path: str) -> None:
    event_id = create(api)
    for verb in {"GET", "POST", "PUT", "PATCH", "DELETE"} - PATHS[path]:
        response = api.client.open(
            BASES[0] + path.format(id=event_id), method=verb, headers=api.auth()
        )
        assert response.status_code == 400, (verb, path)
        assert response.get_json() == problem(400, "Invalid method")


@pytest.mark.parametrize("path", [p for p in PATHS if "{id}" in p])
def test_every_path_404s_for_an_unknown_id(api: Api, path: str) -> None:
    missing = str(uuid.uuid4())
    [verb] = sorted(PATHS[path])[:1]

    body = {"start": "2019-01-01T00:00:00Z", "end": "2019-01-01T01:00:00Z"}  # a valid one
    response = api.client.open(
        BASES[1] + path.format(id=missing),
        method=verb,
        headers=api.auth(),
        json=body if path.endswith("/backfill") else None,
    )

    assert response.status_code == 404
    assert response.get_json() == problem(404, f"Scheduled task with id {missing} does not exist")


def test_list_pages_with_a_cursor(api: Api) -> None:
    ids = [create(api, f"e{n}") for n in range(5)]

    first = get(api, "", query_string={"pageSize": 2}).get_json()
    second = get(
        api, "", query_string={"pageSize": 2, "cursor": first["pageInfo"]["nextCursor"]}
    ).get_json()
    third = get(
        api, "/", query_string={"pageSize": 2, "cursor": second["pageInfo"]["nextCursor"]}
    ).get_json()

    assert [r["id"] for r in first["records"]] == ids[:2]
    assert first["pageInfo"]["hasNextPage"] is True
    assert (first["pageInfo"]["pageSize"], first["pageInfo"]["totalRecords"]) == (2, 5)
    assert [r["id"] for r in second["records"] + third["records"]] == ids[2:]
    assert third["pageInfo"] == {
        "hasNextPage": False,
        "nextCursor": None,
        "pageSize": 2,
        "totalRecords": 5,
    }


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        (
            {"pageSize": 0},
            "Bad Request: pageSize: Must be greater than or equal to 1 and less "
            "than or equal to 100.",
        ),
        ({"pageSize": "ten"}, "Bad Request: pageSize: Not a valid integer."),
        ({"cursor": "%%%"}, "Bad Request: cursor: Invalid cursor"),
    ],
)
def test_list_rejects_bad_paging(api: Api, query: dict, detail: str) -> None:
    response = get(api, "", query_string=query)

    assert response.status_code == 400
    assert response.get_json() == problem(400, detail)


def test_list_needs_credentials(api: Api) -> None:
    response = api.client.get(BASES[0])

    assert response.status_code == 401


def test_get_returns_the_event_record(api: Api) -> None:
    event_id = create(api)

    response = get(api, f"/{event_id}")

    assert response.status_code == 200
    assert (response.get_json()["id"], response.get_json()["uid"]) == (event_id, "ev")


def test_delete(api: Api) -> None:
    event_id = create(api)

    response = api.client.delete(f"{BASES[0]}/{event_id}", headers=api.auth())

    assert response.get_json() == {"success": True}
    assert get(api, f"/{event_id}").status_code == 404


def test_pause_and_resume(api: Api) -> None:
    event_id = create(api)

    paused = api.client.put(f"{BASES[0]}/{event_id}/pause", headers=api.auth())
    record = get(api, f"/{event_id}").get_json()
    resumed = api.client.put(f"{BASES[0]}/{event_id}/resume", headers=api.auth())

    assert paused.get_json() == resumed.get_json() == {"success": True}
    assert (record["status"], record["scheduled_at"]) == ("suspend", None)
    after = get(api, f"/{event_id}").get_json()
    assert (after["status"], after["scheduled_at"]) == ("activated", "2019-01-04T20:55:00+00:00")


def test_recipients(api: Api) -> None:
    event_id = create(api)

    response = get(api, f"/{event_id}/recipients")

    assert response.get_json() == {"recipients": [{"email": "test@example.com"}], "total": 1}


def test_recipients_list_a_webhook_destination_too(api: Api) -> None:
    hooked = event_body("hooked")
    hooked["metadata"]["arguments"]["webhook"] = {"url": "https://hooks.example.com/in"}
    only = event_body("only")
    only["metadata"]["arguments"] = {"webhook": {"url": "https://hooks.example.com/only"}}
    ids = [api.call("create_scheduled_event", body).get_json()["data"]["id"]
           for body in (hooked, only)]  # fmt: skip

    both = get(api, f"/{ids[0]}/recipients").get_json()
    alone = get(api, f"/{ids[1]}/recipients").get_json()

    expected = [{"email": "test@example.com"}, {"webhook": "https://hooks.example.com/in"}]
    assert both == {"recipients": expected, "total": 2}
    assert alone == {"recipients": [{"webhook": "https://hooks.example.com/only"}], "total": 1}


def test_executions_are_paged_newest_first(api: Api) -> None:
    event_id = create(api, overlap="allow")
    for _ in range(3):
        api.client.post(f"{BASES[0]}/{event_id}/trigger", headers=api.auth())

    body = get(api, f"/{event_id}/executions", query_string={"pageSize": 2}).get_json()

    assert body["pageInfo"]["totalRecords"] == 3
    assert body["pageInfo"]["hasNextPage"] is True
    assert [r["trigger"] for r in body["records"]] == ["manual", "manual"]
