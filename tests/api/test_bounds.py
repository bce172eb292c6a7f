"""Every request field has a bound, and a client that steps over one gets a 4xx in the
dialect's envelope naming the field and the limit — never a 5xx (issue 9's cases)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from app.api.common import MAX_JSON_DEPTH
from tests.api.conftest import Api, event_body

BASE = "/api/unstable/schedules"
JSON_TYPE = {"Content-Type": "application/json"}


def post_raw(api: Api, method: str, data: bytes | str, **headers: str) -> Any:
    return api.client.post(f"/v.1.1/{method}", data=data, headers={**JSON_TYPE, **headers})


def errors_of(response: Any) -> list[str]:
    return list(response.get_json()["data"]["errors"])


def messaging_error(response: Any, status: int, code: str) -> str:
    """The error's message, after checking the status and envelope."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["response"]["status"] == code
    assert body["data"]["errors"]
    return str(body["response"]["message"])


@pytest.mark.parametrize("method", ["list_scheduled_events", "list_scheduled_event_instances"])
def test_a_huge_page_is_a_400_naming_the_bound(api: Api, method: str) -> None:
    api.call("create_scheduled_event", event_body("ev"))
    response = api.call(method, {"uid": "ev", "page": 10**20})
    message = messaging_error(response, 400, "bad_request")
    assert message == "page: Must be greater than or equal to 1 and less than or equal to 1000000."
    last = api.call(method, {"uid": "ev", "page": 1_000_000, "per_page": 1000})
    assert last.status_code == 200
    key = "scheduled_events" if method == "list_scheduled_events" else "scheduled_event_instances"
    assert last.get_json()["data"][key] == []


def test_a_cursor_that_decodes_to_a_huge_offset_is_invalid(api: Api) -> None:
    huge = base64.urlsafe_b64encode(f"o:{10**20}".encode()).decode()
    for query in (f"cursor={huge}", "cursor=" + "A" * 65, "cursor=%C3%A9"):
        response = api.client.get(f"{BASE}?{query}", headers=api.auth())
        assert response.status_code == 400, query
        assert response.get_json()["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
        assert response.get_json()["detail"].startswith("Bad Request: cursor: ")


def test_deep_nesting_is_a_400_naming_the_limit(api: Api) -> None:
    started = time.monotonic()
    response = post_raw(api, "send_message", "[" * 100_000)
    assert time.monotonic() - started < 2
    expected = f"The posted JSON nests deeper than {MAX_JSON_DEPTH} levels."
    assert messaging_error(response, 400, "bad_request") == expected

    def nested(depth: int) -> Any:
        value: Any = "x"
        for _ in range(depth - 1):  # the body object itself is the first level
            value = {"a": value}
        return value

    deep = {"api_key": api.key, "uid": "m", "arguments": nested(MAX_JSON_DEPTH + 1)}
    assert messaging_error(post_raw(api, "send_message", json.dumps(deep)), 400, "bad_request") == (
        expected
    )
    fits = {"api_key": api.key, "uid": "m", "arguments": nested(MAX_JSON_DEPTH)}
    answer = post_raw(api, "send_message", json.dumps(fits))
    assert answer.status_code == 400
    assert "nests deeper" not in answer.get_json()["response"]["message"]


@pytest.mark.parametrize(
    ("method", "field"),
    [("create_scheduled_event", "uid"), ("send_message", "uid"), ("get_scheduled_event", "uid")],
)
def test_a_lone_surrogate_is_a_400(api: Api, method: str, field: str) -> None:
    body = json.dumps({"api_key": api.key, field: "ab", "arguments": {}})
    body = body.replace('"ab"', '"ab\\ud800"')
    message = messaging_error(post_raw(api, method, body), 400, "bad_request")
    assert message == f"{field}: contains an unpaired surrogate (\\ud800); send Unicode text"


def test_a_lone_surrogate_in_the_api_key_is_a_400(api: Api) -> None:
    body = '{"api_key": "\\udfff", "uid": "x"}'
    message = messaging_error(post_raw(api, "get_scheduled_event", body), 400, "bad_request")
    assert message.startswith("api_key: contains an unpaired surrogate")


def test_a_date_past_datetimes_range_is_a_400(api: Api) -> None:
    for schedule in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
        response = api.call("create_scheduled_event", event_body("far", schedule=schedule))
        assert messaging_error(response, 400, "bad_request")
        assert errors_of(response) == [
            f"schedule: Invalid date '{schedule}': the year must be from 1970 to 2999"
        ]
    assert api.call("get_scheduled_event", {"uid": "far"}).status_code == 404


def test_a_uid_with_a_trailing_newline_is_refused(api: Api) -> None:
    response = api.call("create_scheduled_event", event_body("abc\n"))
    assert messaging_error(response, 400, "bad_request") == (
        "uid: Must not contain control characters."
    )
    send = api.call("send_message", {"uid": "m\n", "arguments": {}})
    assert "uid: Must not contain control characters." in errors_of(send)


def test_an_empty_body_that_says_it_is_json_is_invalid_json(api: Api) -> None:
    for data in (b"", b"  \n"):
        response = post_raw(api, "get_scheduled_event", data)
        message = messaging_error(response, 406, "invalid_json")
        assert message == "The posted content is not valid JSON."
    # Without a JSON content type an empty body is an empty form: the key is missing.
    bare = api.client.post("/v.1.1/get_scheduled_event", data=b"")
    assert messaging_error(bare, 401, "unauthorized")


def test_non_standard_json_constants_are_invalid_json(api: Api) -> None:
    for constant in ("NaN", "Infinity", "-Infinity"):
        body = json.dumps({"api_key": api.key, "uid": "x"})[:-1] + f', "page": {constant}}}'
        response = post_raw(api, "list_scheduled_events", body)
        assert messaging_error(response, 406, "invalid_json")


def test_an_overlong_api_key_or_uid_names_its_bound(api: Api) -> None:
    response = api.call("create_scheduled_event", event_body("u" * 256))
    assert messaging_error(response, 400, "bad_request") == "uid: Length must be between 1 and 255."
    keyed = api.call("list_scheduled_events", {"api_key": "k" * 257})
    assert messaging_error(keyed, 401, "unauthorized")


def test_a_scheduleid_with_a_trailing_newline_is_an_invalid_uuid(api: Api) -> None:
    created = api.call("create_scheduled_event", event_body("ev")).get_json()["data"]
    response = api.client.get(f"{BASE}/{created['id']}%0A", headers=api.auth())
    assert response.status_code == 400
    assert response.get_json()["detail"] == "Bad Request: scheduleId: Invalid uuid"
