"""An event's ``alerts`` on the API (issue 13): kept, replaced, shown in both dialects'
record, and each bad value a 400 naming it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api, event_body
from tests.api.test_schedules import BASES

ALERTS = [{"url": "https://oncall.example.com/in", "on": ["failed", "recovered"]},
          {"url": "http://10.1.2.3:8080/alerts", "on": ["missed"]}]  # fmt: skip


def test_alerts_are_kept_shown_and_replaced(api: Api) -> None:
    created = api.call("create_scheduled_event", event_body("ev", alerts=ALERTS))
    record = created.get_json()["data"]
    assert record["alerts"] == ALERTS
    shown = api.client.get(f"{BASES[0]}/{record['id']}", headers=api.auth()).get_json()
    assert shown["alerts"] == ALERTS

    changed = api.call("update_scheduled_event", {"uid": "ev", "alerts": ALERTS[:1]})
    assert changed.get_json()["data"]["alerts"] == ALERTS[:1]
    cleared = api.call("update_scheduled_event", {"uid": "ev", "alerts": []})
    assert cleared.get_json()["data"]["alerts"] == []


@pytest.mark.parametrize(
    ("alerts", "error"),
    [
        ([{"url": "ftp://x.example/in", "on": ["failed"]}], "alerts[0].url: Not a valid URL."),
        ([{"url": "https://x.example/in", "on": ["late"]}],
         "alerts[0].on[0]: Must be one of: failed, missed, skipped, retrying, recovered."),
        ([{"url": "https://x.example/in", "on": []}],
         "alerts[0].on: Length must be between 1 and 5."),
        ([{"url": "https://x.example/in"}], "alerts[0].on: Missing data for required field."),
        ([{"url": "https://x.example/in", "on": ["failed"], "to": "x"}],
         "alerts[0].to: Unknown field."),
        ([{"url": "https://x.example/in", "on": ["failed"]}] * 6,
         "alerts: Longer than maximum length 5."),
        ({"url": "https://x.example/in"}, "alerts: Not a valid list."),
    ],
)  # fmt: skip
def test_a_bad_alert_is_a_400_naming_it(api: Api, alerts: Any, error: str) -> None:
    response = api.call("create_scheduled_event", event_body("ev", alerts=alerts))
    assert response.status_code == 400
    assert response.get_json()["data"]["errors"] == [error]
    assert api.call("get_scheduled_event", {"uid": "ev"}).status_code == 404
