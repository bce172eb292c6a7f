"""GET /openapi.json: a valid OpenAPI document whose paths, schemas and examples agree
with what the API really answers."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from app import create_app
from app.api import messaging, openapi
from app.core.settings import Settings
from app.core.store import Store
from tests.api.conftest import Api, event_body

MESSAGING_METHODS = {
    "send_message",
    "create_scheduled_event",
    "create_scheduled_events",
    "get_scheduled_event",
    "update_scheduled_event",
    "delete_scheduled_event",
    "list_scheduled_events",
    "list_scheduled_event_instances",
    "bulk_update_scheduled_events",
    "backfill_scheduled_event",
}
BASE = "/api/unstable/schedules"
SCHEDULES_PATHS = {
    BASE: {"get"},
    BASE + "/{scheduleId}": {"get", "delete"},
    BASE + "/{scheduleId}/trigger": {"post"},
    BASE + "/{scheduleId}/pause": {"put"},
    BASE + "/{scheduleId}/resume": {"put"},
    BASE + "/{scheduleId}/recipients": {"get"},
    BASE + "/{scheduleId}/executions": {"get"},
    BASE + "/{scheduleId}/backfill": {"post"},
    **{f"{BASE}/bulk/{action}": {"post"} for action in ("pause", "resume", "trigger", "delete")},
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
SEED_ID = "123e4567-e89b-12d3-a456-426614174000"

# The seed page's answers, verbatim (its 200 example is not what its own request would
# get: it says "every 1 mins" for __UID_1__, and it has no "id").
SEED_200: dict[str, Any] = {
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
SEED_400: dict[str, Any] = {
    "response": {
        "status": "bad_request",
        "uid": "__UID__",
        "message": "Could not create scheduled event.",
    },
    "data": {"errors": ["[:uid, :project id] is already taken"]},
}


@pytest.fixture
def spec(api: Api) -> dict[str, Any]:
    response = api.client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return dict(response.get_json())


def content(spec: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    """The documented application/json content of one response (its $ref followed)."""
    response = spec["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return dict(response["content"]["application/json"])


def check(spec: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """Validate against an OpenAPI 3.0 schema; its $refs resolve in the document."""
    root = {**schema, "components": spec["components"]}
    OAS30Validator(root, format_checker=OAS30Validator.FORMAT_CHECKER).validate(instance)


def answers_as_documented(
    spec: dict[str, Any], path: str, method: str, response: Any
) -> dict[str, Any]:
    documented = content(spec, path, method, response.status_code)
    check(spec, documented["schema"], response.get_json())
    return documented


def example(documented: dict[str, Any], name: str) -> Any:
    return documented["examples"][name]["value"]


# -- the document --------------------------------------------------------------------------


def test_the_document_is_valid_openapi_and_needs_no_key(spec: dict[str, Any]) -> None:
    validate(spec)
    assert spec["openapi"].startswith("3.")
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"],
    }


def test_every_messaging_method_is_its_own_post_path(spec: dict[str, Any]) -> None:
    assert set(messaging.METHODS) == MESSAGING_METHODS
    documented = {p.removeprefix("/v.1.1/") for p in spec["paths"] if p.startswith("/v.1.1/")}
    assert documented == MESSAGING_METHODS
    for name in MESSAGING_METHODS:
        operations = spec["paths"][f"/v.1.1/{name}"]
        assert set(operations) & HTTP_METHODS == {"post"}
        post = operations["post"]
        assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert {"bearerAuth": []} in post["security"]
        assert {"200", "400", "401", "406", "413", "500"} <= set(post["responses"])
        assert (
            "api_key"
            in spec["components"]["schemas"][
                post["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/")[-1]
            ]["properties"]
        )


def test_every_schedules_path_with_its_http_methods(spec: dict[str, Any]) -> None:
    documented = {p: set(ops) & HTTP_METHODS for p, ops in spec["paths"].items() if BASE in p}
    assert documented == SCHEDULES_PATHS
    for path, methods in SCHEDULES_PATHS.items():
        for method in methods:
            operation = spec["paths"][path][method]
            assert operation["security"] == [{"bearerAuth": []}]
            assert {"200", "400", "401", "500"} <= set(operation["responses"])
            if "{scheduleId}" in path:
                assert "404" in operation["responses"]
    assert "409" in spec["paths"][BASE + "/{scheduleId}/trigger"]["post"]["responses"]
    query = {p["name"]: p for p in spec["paths"][BASE]["get"]["parameters"]}
    assert set(query) == {"cursor", "pageSize", "label"}
    assert query["label"]["schema"]["type"] == "array"  # ?label=a:1&label=b:2
    assert query["label"].get("explode", True)


def test_every_example_fits_its_schema(spec: dict[str, Any]) -> None:
    seen = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method not in HTTP_METHODS:
                continue
            bodies = [
                content(spec, path, method, int(status))
                for status, response in operation["responses"].items()
                if "application/json" in response.get("content", {})
            ]
            if "requestBody" in operation:
                bodies.append(operation["requestBody"]["content"]["application/json"])
            for body in bodies:
                for item in body.get("examples", {}).values():
                    check(spec, body["schema"], item["value"])
                    seen += 1
    assert seen > 20


def test_the_seed_examples_are_copied_exactly(spec: dict[str, Any]) -> None:
    path = "/v.1.1/create_scheduled_events"
    assert example(content(spec, path, "post", 200), "seed") == SEED_200
    assert example(content(spec, path, "post", 400), "uid_taken") == SEED_400
    request = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    events = example(request, "seed")["events"]
    assert [(e["uid"], e["schedule"]) for e in events] == [
        ("__UID_1__", "every 5 mins"),
        ("__UID_2__", "every 30 mins"),
    ]


def test_the_document_is_built_once_per_app(
    api: Api, monkeypatch: pytest.MonkeyPatch, settings: Settings, store: Store
) -> None:
    calls: list[Settings] = []
    build = openapi.build_spec

    def counting(settings: Settings) -> dict[str, Any]:
        calls.append(settings)
        return build(settings)

    monkeypatch.setattr(openapi, "build_spec", counting)
    first = api.client.get("/openapi.json").data
    assert api.client.get("/openapi.json").data == first
    assert len(calls) == 1
    small = create_app(settings.with_(max_body_bytes=2048, batch_limit=7), store=store)
    other = json.loads(small.test_client().get("/openapi.json").data)
    assert len(calls) == 2
    events = other["components"]["schemas"]["EventsBody"]["properties"]["events"]
    assert events["maxItems"] == 7
    too_large = example(content(other, "/v.1.1/send_message", "post", 413), "too_large")
    assert too_large["response"]["message"] == "The posted content is larger than 2048 bytes."


# -- the examples against the real answers ---------------------------------------------


def test_the_seed_batch_answers_as_documented(api: Api, spec: dict[str, Any]) -> None:
    path = "/v.1.1/create_scheduled_events"
    request = content_of_request(spec, path)
    body = {**example(request, "seed"), "api_key": api.key}

    created = api.call("create_scheduled_events", body)
    assert created.status_code == 200
    documented = answers_as_documented(spec, path, "post", created)
    entries = created.get_json()["response"]["message"]
    seed_entries = example(documented, "seed")["response"]["message"]
    assert [set(e) - {"id"} for e in entries] == [set(e) for e in seed_entries]
    assert [e["uid"] for e in entries] == [e["uid"] for e in seed_entries]

    taken = api.call("create_scheduled_events", body)
    assert taken.status_code == 400
    answers_as_documented(spec, path, "post", taken)
    assert taken.get_json() == {
        **SEED_400,
        "response": {**SEED_400["response"], "uid": "__UID_1__"},
    }


def content_of_request(spec: dict[str, Any], path: str) -> dict[str, Any]:
    return dict(spec["paths"][path]["post"]["requestBody"]["content"]["application/json"])


def test_error_bodies_are_the_documented_examples(api: Api, spec: dict[str, Any]) -> None:
    cases = [
        (
            "/v.1.1/get_scheduled_event",
            api.call("get_scheduled_event", {"api_key": "nope"}),
            "unauthorized",
        ),
        (
            "/v.1.1/get_scheduled_event",
            api.client.post("/v.1.1/get_scheduled_event", data=b"{"),
            "invalid_json",
        ),
        (
            "/v.1.1/get_scheduled_event",
            api.client.post("/v.1.1/get_scheduled_event", data=b"\xff"),
            "invalid_utf8",
        ),
    ]
    for path, response, name in cases:
        documented = answers_as_documented(spec, path, "post", response)
        assert response.get_json() == example(documented, name)

    not_found = api.call("get_scheduled_event", {"uid": "x"})
    documented = answers_as_documented(spec, "/v.1.1/get_scheduled_event", "post", not_found)
    assert not_found.get_json() == example(documented, "not_found")

    send = api.call("send_message", {})
    path = "/v.1.1/send_message"
    assert send.get_json() == example(answers_as_documented(spec, path, "post", send), "field")
    field = api.call("create_scheduled_event", {"uid": "x", "metadata": {"arguments": {}}})
    path = "/v.1.1/create_scheduled_event"
    assert field.get_json() == example(answers_as_documented(spec, path, "post", field), "field")
    batch = api.call("create_scheduled_events", {"events": [event_body("a"), {"uid": "b"}]})
    path = "/v.1.1/create_scheduled_events"
    errors = batch.get_json()["data"]["errors"]
    assert (
        example(answers_as_documented(spec, path, "post", batch), "field")["data"]["errors"][0]
        in errors
    )


def test_schedules_error_bodies_are_the_documented_examples(api: Api, spec: dict[str, Any]) -> None:
    path = BASE + "/{scheduleId}"
    cases = [
        (api.client.get(f"{BASE}/{SEED_ID}", headers=api.auth()), "not_found"),
        (api.client.get(f"{BASE}/{SEED_ID}", headers=api.auth("nope")), "unauthorized"),
        (api.client.get(f"{BASE}/not-a-uuid", headers=api.auth()), "invalid_uuid"),
        (api.client.post(f"{BASE}/{SEED_ID}", headers=api.auth()), "invalid_method"),
    ]
    for response, name in cases:
        documented = answers_as_documented(spec, path, "get", response)
        assert response.get_json() == example(documented, name)
    for query, name in [("pageSize=0", "bad_page_size"), ("cursor=%21", "bad_cursor")]:
        response = api.client.get(f"{BASE}?{query}", headers=api.auth())
        assert response.get_json() == example(
            answers_as_documented(spec, BASE, "get", response), name
        )


def test_every_success_answers_as_documented(api: Api, spec: dict[str, Any]) -> None:
    def call(method: str, body: dict[str, Any]) -> Any:
        response = api.call(method, body)
        assert response.status_code == 200, response.get_json()
        answers_as_documented(spec, f"/v.1.1/{method}", "post", response)
        return response.get_json()

    created = call("create_scheduled_event", event_body("ev", preview=True))
    assert "next_runs" in created["data"]
    call("create_scheduled_event", event_body("once", schedule="every 1 hours"))
    call("get_scheduled_event", {"uid": "ev"})
    call("update_scheduled_event", {"uid": "once", "status": "suspend"})
    call("list_scheduled_events", {"per_page": 1})
    arguments = event_body("m")["metadata"]["arguments"]
    call("send_message", {"uid": "m1", "arguments": arguments})
    again = api.call("send_message", {"uid": "m1", "arguments": arguments})
    documented = answers_as_documented(spec, "/v.1.1/send_message", "post", again)
    assert (again.status_code, again.get_json()) == (400, example(documented, "duplicate"))
    schedule_id = created["data"]["id"]
    auth = api.auth()

    def rest(verb: str, suffix: str, template: str) -> None:
        response = api.client.open(f"{BASE}{suffix}", method=verb.upper(), headers=auth)
        assert response.status_code == 200, response.get_json()
        answers_as_documented(spec, BASE + template, verb, response)

    rest("post", f"/{schedule_id}/trigger", "/{scheduleId}/trigger")
    rest("get", f"/{schedule_id}/executions?pageSize=1", "/{scheduleId}/executions")
    call("list_scheduled_event_instances", {"uid": "ev"})
    conflict = api.client.post(f"{BASE}/{schedule_id}/trigger", headers=auth)
    assert conflict.status_code == 409
    path = BASE + "/{scheduleId}/trigger"
    assert conflict.get_json() == example(
        answers_as_documented(spec, path, "post", conflict), "conflict"
    )
    rest("get", "?pageSize=1", "")
    rest("get", f"/{schedule_id}", "/{scheduleId}")
    rest("get", f"/{schedule_id}/recipients", "/{scheduleId}/recipients")
    rest("put", f"/{schedule_id}/pause", "/{scheduleId}/pause")
    rest("put", f"/{schedule_id}/resume", "/{scheduleId}/resume")
    rest("delete", f"/{schedule_id}", "/{scheduleId}")
    call("delete_scheduled_event", {"uid": "once"})


def test_a_too_large_body_answers_as_documented(settings: Settings, store: Store) -> None:
    app = create_app(settings.with_(max_body_bytes=2048), store=store)
    client = app.test_client()
    spec = client.get("/openapi.json").get_json()
    response = client.post("/v.1.1/send_message", data=b"{" + b" " * 4096 + b"}")
    assert response.status_code == 413
    documented = answers_as_documented(spec, "/v.1.1/send_message", "post", response)
    assert response.get_json() == example(documented, "too_large")


def test_the_document_lists_exactly_the_routes_the_app_serves(
    api: Api, spec: dict[str, Any]
) -> None:
    """From the app's URL map, independently of the declarations: every served path and
    method is documented once (aliases folded onto their documented path), and nothing
    is documented that is not served."""
    app = api.client.application
    served: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "messaging.unknown"):
            continue  # Flask's static files; the 404 for an unknown messaging method
        if rule.endpoint.startswith("schedules.invalid-method-"):
            continue  # 400 "Invalid method" for the methods /bulk/... does not serve
        path = rule.rule.replace("<schedule_id>", "{scheduleId}")
        path = path.replace("/api/v1/schedules", BASE)
        if path.startswith("/v.1.0/"):
            path = "/v.1.1/" + path.removeprefix("/v.1.0/").removesuffix(".json")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((path, method.lower()))
    documented = {
        (path, method)
        for path, operations in spec["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }
    assert documented == served
    assert {path for path, _ in served} >= {"/healthz", "/readyz", "/metrics", "/openapi.json"}


def test_openapi_module_has_no_path_of_its_own() -> None:
    source = inspect.getsource(openapi)
    for literal in ("/v.1.1", "/v.1.0", "/api/", "scheduleId", "send_message", "_event"):
        assert literal not in source.replace('"/openapi.json"', ""), literal


def test_a_rate_limited_answer_is_documented(settings: Settings, store: Store) -> None:
    app = create_app(
        settings.with_(rate_limit_messaging="1/minute", rate_limit_schedules="1/minute"),
        store=store,
    )
    client = app.test_client()
    spec = client.get("/openapi.json").get_json()
    _, key = store.create_project("limited", 0)
    auth = {"Authorization": f"Bearer {key}"}
    for path, method, call in [
        (
            "/v.1.1/list_scheduled_events",
            "post",
            lambda: client.post("/v.1.1/list_scheduled_events", json={"api_key": key}),
        ),
        (BASE, "get", lambda: client.get(BASE, headers=auth)),
    ]:
        assert call().status_code == 200
        limited = call()
        assert limited.status_code == 429
        answers_as_documented(spec, path, method, limited)
