"""Property-based fuzzing of both dialects with schemathesis, from the OpenAPI document
the app generates, against the app on a real Redis: no generated request — valid or
deliberately invalid — gets a 5xx, and every answer has a documented status, content
type and shape.

Half of the generated requests carry the project's real key (and, where they name an
event, a real event's uid or id), so the fuzzing reaches past authentication and the
lookup into the views. The runs are derandomized so CI sees the same requests every
time; ``SENDBEAT_FUZZ_EXAMPLES`` (default 40 per operation and mode) and
``SENDBEAT_FUZZ_RANDOM=1`` explore further locally.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app import create_app
from app.api.declare import ENDPOINTS
from app.core.settings import Settings
from app.core.store import Store
from tests.api.conftest import Api, event_body

EXAMPLES = int(os.environ.get("SENDBEAT_FUZZ_EXAMPLES", "40"))
RANDOM = os.environ.get("SENDBEAT_FUZZ_RANDOM") == "1"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
OPERATIONS = [e for e in ENDPOINTS if e.dialect.tag in ("messaging", "schedules")]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
FIGURES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report() -> Any:
    yield
    if FIGURES:
        print(f"\nfuzzing: {dict(sorted(FIGURES.items()))}")


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.value)
@pytest.mark.parametrize("endpoint", OPERATIONS, ids=lambda e: f"{e.method} {e.path}")
def test_no_generated_request_gets_a_server_error(
    settings: Settings, store: Store, endpoint: Any, mode: Any
) -> None:
    # Without rate limits: a 429 is documented, but it would end the run's reach.
    app = create_app(
        settings.with_(rate_limit_messaging="none", rate_limit_schedules="none"), store=store
    )
    _, key = store.create_project("fuzz", 0)
    api = Api(app.test_client(), key)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operation = schema[endpoint.path][endpoint.method]
    event = api.call("create_scheduled_event", event_body("fuzz")).get_json()["data"]

    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), real=st.booleans())
    def run(case: Any, real: bool) -> None:
        if real:
            _use_real_names(case, api.key, event)
        response = case.call_and_validate(checks=CHECKS)
        FIGURES["requests"] += 1
        FIGURES[f"status {response.status_code}"] += 1

    run()
    FIGURES["operations"] += 1


def _use_real_names(case: Any, key: str, event: dict[str, Any]) -> None:
    """The project's key, and the seeded event where the request names one."""
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {key}"}
    if isinstance(case.body, dict):
        case.body["api_key"] = key
        if "uid" in case.body:
            case.body["uid"] = event["uid"]
    if case.path_parameters and "scheduleId" in case.path_parameters:
        case.path_parameters["scheduleId"] = event["id"]
