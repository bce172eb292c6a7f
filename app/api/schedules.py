"""The schedules dialect (Omni-compatible): ``/api/unstable/schedules`` with
``/api/v1/schedules`` as an alias, Bearer auth and the SCIM error envelope (DESIGN §4)."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify, request
from marshmallow import ValidationError as SchemaError

from app.api.common import authenticate, flatten_errors, services
from app.api.schemas import SchedulePage
from app.core.errors import (
    Conflict,
    DispatchError,
    EventGone,
    NotFound,
    SendbeatError,
    Unauthorized,
    ValidationError,
)
from app.core.events import delete_event, set_paused, trigger
from app.core.message import recipients_of
from app.core.records import Event

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


def route(path: str, **views: View) -> None:
    """Register a path on both base paths with one view per HTTP method; any other
    method on a known path is "Invalid method" (400, as the seed says, not 405)."""

    def dispatch(**kwargs: str) -> Response:
        view = views.get(request.method.lower())
        if view is None:
            raise InvalidMethod("Invalid method")
        return view(**kwargs)

    for index, base in enumerate(BASES):
        bp.add_url_rule(base + path, f"{path}-{index}", dispatch, methods=ALL_METHODS)


def find_event(schedule_id: str) -> Event:
    project_id = authenticate()
    if not _UUID.match(schedule_id):
        raise ValidationError("Bad Request: scheduleId: Invalid uuid")
    event = services().store.event_by_id(project_id, schedule_id.lower())
    if event is None:
        raise NotFound(missing(schedule_id))
    return event


def missing(schedule_id: str) -> str:
    return f"Scheduled task with id {schedule_id} does not exist"


@bp.errorhandler(SendbeatError)
def render_error(exc: SendbeatError) -> Response:
    if isinstance(exc, InvalidMethod | ValidationError):
        return problem(400, exc.message)
    if isinstance(exc, Unauthorized):
        return problem(401, "Unauthorized: " + exc.message)
    if isinstance(exc, EventGone):  # deleted while this request was acting on it
        return problem(404, missing((request.view_args or {}).get("schedule_id", "")))
    if isinstance(exc, NotFound):
        return problem(404, exc.message)
    if isinstance(exc, Conflict):
        return problem(409, exc.message)
    if isinstance(exc, DispatchError):
        return problem(500, exc.message)
    return problem(500, exc.message)


def trigger_schedule(schedule_id: str) -> Response:
    svc = services()
    trigger(svc.store, svc.publisher, find_event(schedule_id))
    return success()


def get_schedule(schedule_id: str) -> Response:
    return jsonify(find_event(schedule_id).record())


def delete_schedule(schedule_id: str) -> Response:
    delete_event(services().store, find_event(schedule_id))
    return success()


def pause_schedule(schedule_id: str) -> Response:
    set_paused(services().store, find_event(schedule_id), True)
    return success()


def resume_schedule(schedule_id: str) -> Response:
    set_paused(services().store, find_event(schedule_id), False)
    return success()


def schedule_recipients(schedule_id: str) -> Response:
    arguments = find_event(schedule_id).metadata.get("arguments") or {}
    emails = recipients_of(arguments)
    return jsonify({"recipients": [{"email": e} for e in emails], "total": len(emails)})


def schedule_executions(schedule_id: str) -> Response:
    event = find_event(schedule_id)
    offset, size = page_request()
    instances, total = services().store.list_instances(event.id, offset, size)
    return page([i.record() for i in instances], offset, size, total)


def list_schedules() -> Response:
    project_id = authenticate()
    offset, size = page_request()
    events, total = services().store.list_events(project_id, offset, size)
    return page([e.record() for e in events], offset, size, total)


def success() -> Response:
    return jsonify({"success": True})


def page_request() -> tuple[int, int]:
    """(offset, page size) from ``cursor`` and ``pageSize``; the cursor is opaque."""
    try:
        query = SchedulePage().load(request.args.to_dict())
    except SchemaError as exc:
        name, messages = next(iter(exc.messages.items()))  # type: ignore[union-attr]
        raise ValidationError(f"Bad Request: {name}: {flatten_errors(messages)[0]}") from None
    cursor = query["cursor"]
    return (decode_cursor(cursor) if cursor else 0), query["pageSize"]


def decode_cursor(cursor: str) -> int:
    try:
        offset = int(base64.urlsafe_b64decode(cursor.encode()).decode().removeprefix("o:"))
    except (ValueError, UnicodeDecodeError):
        raise ValidationError("Bad Request: cursor: Invalid cursor") from None
    if offset < 0:
        raise ValidationError("Bad Request: cursor: Invalid cursor")
    return offset


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def page(records: list[Any], offset: int, size: int, total: int) -> Response:
    more = offset + size < total
    return jsonify(
        {
            "pageInfo": {
                "hasNextPage": more,
                "nextCursor": encode_cursor(offset + size) if more else None,
                "pageSize": size,
                "totalRecords": total,
            },
            "records": records,
        }
    )


route("", get=list_schedules)
route("/", get=list_schedules)
route("/<schedule_id>", get=get_schedule, delete=delete_schedule)
route("/<schedule_id>/trigger", post=trigger_schedule)
route("/<schedule_id>/pause", put=pause_schedule)
route("/<schedule_id>/resume", put=resume_schedule)
route("/<schedule_id>/recipients", get=schedule_recipients)
route("/<schedule_id>/executions", get=schedule_executions)
