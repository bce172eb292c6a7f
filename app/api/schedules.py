"""The schedules dialect (Omni-compatible): ``/api/unstable/schedules`` with
``/api/v1/schedules`` as an alias, Bearer auth and the SCIM error envelope (DESIGN §4)."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Blueprint, Response, jsonify, request

from app.api.common import authenticate, services
from app.core.errors import (
    Conflict,
    DispatchError,
    NotFound,
    SendbeatError,
    Unauthorized,
    ValidationError,
)
from app.core.events import trigger
from app.core.store import Event

bp = Blueprint("schedules", __name__)

SCIM_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
BASES = ("/api/unstable/schedules", "/api/v1/schedules")
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class InvalidMethod(SendbeatError):
    """Raised when a known path is called with an HTTP method it does not take (400, not 405)."""


def problem(status: int, detail: str) -> Response:
    response = jsonify({"detail": detail, "schemas": [SCIM_ERROR], "status": status})
    response.status_code = status
    return response


View = Callable[..., Response]


def route(path: str, allowed: str) -> Callable[[View], View]:
    """Register a view on both base paths; any other HTTP method is "Invalid method"."""

    def register(view: View) -> View:
        def guarded(**kwargs: str) -> Response:
            if request.method != allowed:
                raise InvalidMethod("Invalid method")
            return view(**kwargs)

        for index, base in enumerate(BASES):
            bp.add_url_rule(base + path, f"{view.__name__}_{index}", guarded, methods=ALL_METHODS)
        return view

    return register


def find_event(schedule_id: str) -> Event:
    project_id = authenticate()
    if not _UUID.match(schedule_id):
        raise ValidationError("Bad Request: scheduleId: Invalid uuid")
    event = services().store.event_by_id(project_id, schedule_id.lower())
    if event is None:
        raise NotFound(f"Scheduled task with id {schedule_id} does not exist")
    return event


@bp.errorhandler(SendbeatError)
def render_error(exc: SendbeatError) -> Response:
    if isinstance(exc, InvalidMethod | ValidationError):
        return problem(400, exc.message)
    if isinstance(exc, Unauthorized):
        return problem(401, "Unauthorized: " + exc.message)
    if isinstance(exc, NotFound):
        return problem(404, exc.message)
    if isinstance(exc, Conflict):
        return problem(409, exc.message)
    if isinstance(exc, DispatchError):
        return problem(500, exc.message)
    return problem(500, exc.message)


@route("/<schedule_id>/trigger", "POST")
def trigger_schedule(schedule_id: str) -> Response:
    svc = services()
    trigger(svc.store, svc.publisher, find_event(schedule_id), svc.clock())
    return jsonify({"success": True})
