"""The schedules dialect (Omni): trigger and every error of the seed, exactly."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from redis import Redis

from app import create_app
from app.core.settings import Settings
from app.core.store import Store
from tests.api.conftest import Api, event_body

SCIM = ["urn:ietf:params:scim:api:messages:2.0:Error"]
BASES = ["/api/unstable/schedules", "/api/v1/schedules"]


def problem(status: int, detail: str) -> dict[str, object]:
    return {"detail": detail, "schemas": SCIM, "status": status}


def create(api: Api, uid: str = "ev", **extra: object) -> str:
    response = api.call("create_scheduled_event", event_body(uid, **extra))
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["data"]["id"])


def queued_tasks(redis: Redis, settings: Settings) -> list[dict[str, object]]:
    messages = [json.loads(raw) for raw in redis.lrange(settings.queue, 0, -1)]
    return [{"headers": m["headers"], "body": _body(m)} for m in messages]


def _body(message: dict[str, object]) -> object:
    """The task body, as kombu's Redis transport reads it (base64 only when it says so)."""
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":  # type: ignore[attr-defined]
        body = base64.b64decode(body)  # type: ignore[arg-type]
    return json.loads(body)  # type: ignore[arg-type]


@pytest.mark.parametrize("base", BASES)
def test_trigger_queues_a_manual_run_and_keeps_the_schedule(
    api: Api, base: str, redis: Redis, settings: Settings
) -> None:
    event_id = create(api)

    response = api.client.post(f"{base}/{event_id}/trigger", headers=api.auth())

    assert response.status_code == 200
    assert response.get_json() == {"success": True}
    [task] = queued_tasks(redis, settings)
    instance_id = task["headers"]["id"]  # type: ignore[index]
    assert task["headers"]["task"] == "sendbeat.send_message"  # type: ignore[index]
    # The task names the execution and its event, so the worker starts it in one call.
    assert task["body"][0] == [f"{instance_id} {event_id}"]  # type: ignore[index]
    listed = api.call("list_scheduled_event_instances", {"uid": "ev"}).get_json()["data"]
    [instance] = listed["scheduled_event_instances"]
    assert instance["uid"] == instance_id
    assert (instance["trigger"], instance["status"], instance["attempts"]) == (
        "manual",
        "queued",
        0,
    )
    assert instance["scheduled_for"] == "2019-01-04T20:50:30+00:00"
    record = api.call("get_scheduled_event", {"uid": "ev"}).get_json()["data"]
    assert record["scheduled_at"] == "2019-01-04T20:55:00+00:00"


@pytest.mark.parametrize("schedule_id", ["123", "not-a-uuid", "123e4567e89b12d3a456426614174000"])
def test_malformed_id_is_400(api: Api, schedule_id: str) -> None:
    response = api.client.post(f"{BASES[0]}/{schedule_id}/trigger", headers=api.auth())

    assert response.status_code == 400
    assert response.get_json() == problem(400, "Bad Request: scheduleId: Invalid uuid")


@pytest.mark.parametrize("verb", ["get", "put", "patch", "delete"])
def test_other_http_methods_are_invalid_method(api: Api, verb: str) -> None:
    event_id = create(api)

    response = getattr(api.client, verb)(f"{BASES[0]}/{event_id}/trigger", headers=api.auth())

    assert response.status_code == 400
    assert response.get_json() == problem(400, "Invalid method")


def test_unknown_id_is_404(api: Api) -> None:
    missing = "123e4567-e89b-12d3-a456-426614174000"

    response = api.client.post(f"{BASES[0]}/{missing}/trigger", headers=api.auth())

    assert response.status_code == 404
    assert response.get_json() == problem(404, f"Scheduled task with id {missing} does not exist")


def test_another_projects_id_is_404(api: Api, store: Store) -> None:
    event_id = create(api)
    _, other = store.create_project("other", 0)

    response = api.client.post(f"{BASES[0]}/{event_id}/trigger", headers=api.auth(other))

    assert response.status_code == 404
    assert response.get_json() == problem(404, f"Scheduled task with id {event_id} does not exist")


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer sb_nope"}, {"Authorization": "Basic x"}]
)
def test_missing_or_bad_credentials_are_401(api: Api, headers: dict[str, str]) -> None:
    event_id = create(api)

    response = api.client.post(f"{BASES[0]}/{event_id}/trigger", headers=headers)

    assert response.status_code == 401
    body = response.get_json()
    assert (body["status"], body["schemas"]) == (401, SCIM)


def test_trigger_while_one_is_queued_is_409(api: Api) -> None:
    event_id = create(api)
    assert api.client.post(f"{BASES[0]}/{event_id}/trigger", headers=api.auth()).status_code == 200

    response = api.client.post(f"{BASES[0]}/{event_id}/trigger", headers=api.auth())

    assert response.status_code == 409
    assert response.get_json() == problem(409, "Another execution is in progress for this schedule")


def test_overlap_allow_lets_triggers_pile_up(api: Api) -> None:
    event_id = create(api, overlap="allow")

    for _ in range(2):
        response = api.client.post(f"{BASES[0]}/{event_id}/trigger", headers=api.auth())
        assert response.status_code == 200


def test_broker_down_is_500_dispatcher_error_and_leaves_no_record(
    settings: Settings, store: Store
) -> None:
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    broken = settings.with_(broker_url=f"redis://127.0.0.1:{dead_port}/0")
    app = create_app(broken, store=store)
    _, key = store.create_project("acme", 0)
    api = Api(app.test_client(), key)
    event_id = create(api)

    response = api.client.post(f"{BASES[0]}/{event_id}/trigger", headers=api.auth())

    assert response.status_code == 500
    body = response.get_json()
    assert (body["status"], body["schemas"]) == (500, SCIM)
    assert body["detail"].startswith("Dispatcher error: ")
    listed = api.call("list_scheduled_event_instances", {"uid": "ev"}).get_json()["data"]
    assert listed["scheduled_event_instances"] == []
    # Nothing claims to be in progress either: a later trigger is not refused with 409.
    assert not store.redis.zcard(store.keys.event_inflight(event_id))


def test_unknown_path_is_404_in_the_scim_envelope(api: Api) -> None:
    response = api.client.get(f"{BASES[0]}/{uuid.uuid4()}/nothing-here", headers=api.auth())

    assert response.status_code == 404
    assert response.get_json()["schemas"] == SCIM
