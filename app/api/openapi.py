"""``GET /openapi.json``: the OpenAPI 3 document of both dialects, built with apispec from
the marshmallow schemas in ``app.api.schemas`` (requests and the response shapes).

The document depends on the app's settings (batch limit, body size), so it is built once
per app, on its first request, and kept in ``app.extensions``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, Response, current_app

from app.api import schemas as s
from app.api.common import UNAUTHORIZED
from app.core.settings import Settings

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.0.3"
EXTENSION = "sendbeat.openapi"
MESSAGING = "/v.1.1/{}"
SCHEDULES = "/api/unstable/schedules"
SEED_SCHEDULE_ID = "123e4567-e89b-12d3-a456-426614174000"
DISPATCH_FAILED = "Dispatcher error: Error 111 connecting to redis:6379. Connection refused."
INTERNAL = "Internal error; it has been logged."
JSON = "application/json"

# The create_scheduled_events page we copy: its request and both answers, verbatim.
_SEED_PDF = {
    "content_type": "application/octet-stream",
    "content": {
        "$ref": "http://example.com/resources/example.pdf",
        "$type": "application/octet-stream",
        "$encode": "base64",
    },
}


def _seed_event(uid: str, schedule: str, subject: str) -> dict[str, Any]:
    return {
        "uid": uid,
        "schedule": schedule,
        "metadata": {
            "arguments": {
                "recipients": "test@example.com",
                "headers": {"from": "test@example.com", "subject": subject},
                "content": {"text/plain": "This email was sent automatically."},
                "attachments": {"test.pdf": _SEED_PDF},
            }
        },
    }


SEED_BATCH_REQUEST = {
    "api_key": "__PROJECT_API__KEY__",
    "events": [
        _seed_event("__UID_1__", "every 5 mins", "Example Scheduled Email"),
        _seed_event("__UID_2__", "every 30 mins", "Example Secondary Scheduled Email"),
    ],
}
SEED_BATCH_200 = {
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
SEED_UID_TAKEN_400 = {
    "response": {
        "status": "bad_request",
        "uid": "__UID__",
        "message": "Could not create scheduled event.",
    },
    "data": {"errors": ["[:uid, :project id] is already taken"]},
}


@dataclass(frozen=True)
class Document:
    spec: dict[str, Any]
    body: bytes


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return Response(document(current_app).body, mimetype=JSON)


def document(app: Flask) -> Document:
    """The app's document, built on first use and then reused."""
    cached = app.extensions.get(EXTENSION)
    if cached is None:
        spec = build_spec(app.extensions["sendbeat"].settings)
        cached = Document(spec, json.dumps(spec, ensure_ascii=False).encode())
        app.extensions[EXTENSION] = cached
    return cached


def _version() -> str:
    try:
        return package_version("sendbeat")
    except PackageNotFoundError:
        return "0.0.0"


def build_spec(settings: Settings) -> dict[str, Any]:
    spec = APISpec(
        title="sendbeat",
        version=_version(),
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={
            "description": (
                "Two dialects over the same scheduled events (see docs/api.md).\n\n"
                "* Messaging (PostageApp-compatible): `POST /v.1.1/<method>` with a JSON "
                "object body; `POST /v.1.0/<method>.json` is an alias. The API key is the "
                "body's `api_key` or a Bearer token.\n"
                "* Schedules (Omni-compatible): `/api/unstable/schedules`, with "
                "`/api/v1/schedules` as an alias; Bearer token only. `{scheduleId}` is the "
                "event's `id`.\n\n"
                "Another project's event is indistinguishable from a missing one (404)."
            )
        },
        tags=[
            {"name": "messaging", "description": "The PostageApp-compatible dialect."},
            {"name": "schedules", "description": "The Omni-compatible dialect."},
            {"name": "meta", "description": "This document."},
        ],
    )
    spec.components.security_scheme(
        "bearerAuth",
        {
            "type": "http",
            "scheme": "bearer",
            "description": "The project's API key. The messaging dialect also takes it "
            "as `api_key` in the JSON body.",
        },
    )
    # EventsBody takes the batch limit; register that instance so apispec never builds
    # the class itself, and pass this same instance wherever it is used.
    events_body = s.EventsBody(limit=settings.batch_limit)
    spec.components.schema("EventsBody", schema=events_body)
    _messaging_responses(spec, settings)
    _schedules_responses(spec)
    _messaging_paths(spec, settings, events_body)
    _schedules_paths(spec)
    spec.path(
        path="/openapi.json",
        operations={
            "get": {
                "tags": ["meta"],
                "operationId": "openapi",
                "summary": "This OpenAPI document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The document.",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    )
    document = spec.to_dict()
    events = document["components"]["schemas"]["EventsBody"]["properties"]["events"]
    events.update(minItems=1, maxItems=settings.batch_limit)
    return document


# -- the messaging dialect -----------------------------------------------------------------


def _error(status: str, message: str, uid: str | None = None) -> dict[str, Any]:
    return {
        "response": {"status": status, "uid": uid, "message": message},
        "data": {"errors": [message]},
    }


def _examples(**bodies: dict[str, Any]) -> dict[str, Any]:
    return {name: {"value": body} for name, body in bodies.items()}


def _json(schema: Any, description: str, **examples: dict[str, Any]) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": schema}
    if examples:
        content["examples"] = _examples(**examples)
    return {"description": description, "content": {JSON: content}}


def _messaging_responses(spec: APISpec, settings: Settings) -> None:
    field_error = "schedule: Missing data for required field."
    responses: dict[str, dict[str, Any]] = {
        "MessagingBadRequest": _json(
            s.MessagingError,
            "`bad_request`: a field is missing or wrong; `errors` holds one "
            '`"field: what is wrong"` per problem.',
            field=_error("bad_request", field_error, "hello"),
        ),
        "MessagingUnauthorized": _json(
            s.MessagingError,
            "`unauthorized`: no API key, or an unknown or revoked one.",
            unauthorized=_error("unauthorized", UNAUTHORIZED),
        ),
        "MessagingNotFound": _json(
            s.MessagingError,
            "`not_found`: no event with this uid in the project.",
            not_found=_error("not_found", "Can not find scheduled event from the given UID", "x"),
        ),
        "MessagingNotAcceptable": _json(
            s.MessagingError,
            "`invalid_json` or `invalid_utf8`: the body is not UTF-8 JSON.",
            invalid_json=_error("invalid_json", "The posted content is not valid JSON."),
            invalid_utf8=_error("invalid_utf8", "The posted content is not valid UTF-8."),
        ),
        "MessagingTooLarge": _json(
            s.MessagingError,
            "`too_large`: the body is larger than `SENDBEAT_MAX_BODY_BYTES`.",
            too_large=_error(
                "too_large",
                f"The posted content is larger than {settings.max_body_bytes} bytes.",
            ),
        ),
        "MessagingInternalError": _json(
            s.MessagingError,
            "`internal_error`: a fault of ours (logged, never a traceback), or the broker "
            "did not take the job.",
            internal=_error("internal_error", INTERNAL),
        ),
    }
    for name, response in responses.items():
        spec.components.response(name, response)


_ERRORS = {
    "400": "MessagingBadRequest",
    "401": "MessagingUnauthorized",
    "406": "MessagingNotAcceptable",
    "413": "MessagingTooLarge",
    "500": "MessagingInternalError",
}
_UID_ERRORS = {**_ERRORS, "404": "MessagingNotFound"}


def _messaging_paths(spec: APISpec, settings: Settings, events_body: s.EventsBody) -> None:
    def method(
        name: str,
        summary: str,
        description: str,
        body: Any,
        reply: Any,
        *,
        errors: dict[str, Any] | None = None,
        body_examples: dict[str, Any] | None = None,
        reply_examples: dict[str, Any] | None = None,
    ) -> None:
        request_content: dict[str, Any] = {"schema": body}
        if body_examples:
            request_content["examples"] = _examples(**body_examples)
        responses: dict[str, Any] = {
            "200": _json(reply, "Done.", **(reply_examples or {})),
            **(errors or _ERRORS),
        }
        spec.path(
            path=MESSAGING.format(name),
            operations={
                "post": {
                    "tags": ["messaging"],
                    "operationId": name,
                    "summary": summary,
                    "description": description
                    + f"\n\nAlias: `POST /v.1.0/{name}.json`. Any HTTP method but POST "
                    'answers 400 "Use POST with a JSON body.".',
                    "security": [{"bearerAuth": []}, {}],
                    "requestBody": {"required": True, "content": {JSON: request_content}},
                    "responses": responses,
                }
            },
        )

    method(
        "send_message",
        "Send a message now",
        'Queues one send_message request (see messages.md) now (`trigger: "api"`); '
        "answers the execution's id with status `queued`. A `uid` can be used once per "
        "project. Remote content (`$ref`) is fetched when the message is sent. A broker "
        'failure answers 500 "Dispatcher error: <reason>".',
        s.SendBody,
        s.SendReply,
        errors={
            **_ERRORS,
            "400": _json(
                s.MessagingError,
                "`bad_request`: a field is wrong, or the uid was used before.",
                field=_error("bad_request", "arguments: Missing data for required field."),
                duplicate=_error(
                    "bad_request", "Uid m1 already exists. Assuming message duplication.", "m1"
                ),
            ),
            "500": _json(
                s.MessagingError,
                "`internal_error`: a fault of ours, or the broker did not take the job.",
                dispatcher=_error("internal_error", DISPATCH_FAILED),
                internal=_error("internal_error", INTERNAL),
            ),
        },
    )
    method(
        "create_scheduled_event",
        "Create a scheduled event",
        "Answers the event record; `scheduled_at` is the next run in UTC. "
        '`"preview": true` adds `next_runs`. A uid taken in the project answers 400 '
        '`"[:uid, :project id] is already taken"`.',
        s.EventBody,
        s.PreviewedEventReply,
        errors={
            **_ERRORS,
            "400": _json(
                s.MessagingError,
                "`bad_request`: a field is wrong, or the uid is taken.",
                uid_taken=SEED_UID_TAKEN_400,
                field=_error("bad_request", "schedule: Missing data for required field.", "x"),
            ),
        },
    )
    method(
        "create_scheduled_events",
        "Create many scheduled events at once",
        f"At most {settings.batch_limit} events (`SENDBEAT_BATCH_LIMIT`). Atomic: every "
        "event is validated first, then all are created or none. Answers the events in "
        "request order under `response.message` (and no `data`); sendbeat adds each "
        "event's `id`. A uid taken in the project, or given twice in the batch, answers "
        'the seed\'s 400; other problems name the event and field: "events[3].schedule: …".',
        events_body,
        s.BatchReply,
        body_examples={"seed": SEED_BATCH_REQUEST},
        reply_examples={"seed": SEED_BATCH_200},
        errors={
            **_ERRORS,
            "400": _json(
                s.MessagingError,
                "`bad_request`: the uid is taken, or an event's field is wrong.",
                uid_taken=SEED_UID_TAKEN_400,
                field=_error("bad_request", "events[1].schedule: Missing data for required field."),
            ),
        },
    )
    method(
        "get_scheduled_event",
        "Get a scheduled event",
        "Answers the event record.",
        s.UidBody,
        s.EventReply,
        errors=_UID_ERRORS,
    )
    method(
        "update_scheduled_event",
        "Change a scheduled event",
        "Changes only the fields given; `status` `suspend` pauses the event and `active` "
        "resumes it. Answers the event record, with the schedule repeated as `frequency`.",
        s.UpdateBody,
        s.UpdatedEventReply,
        errors=_UID_ERRORS,
    )
    method(
        "delete_scheduled_event",
        "Delete a scheduled event",
        "Deletes the event and cancels its queued executions.",
        s.UidBody,
        s.DeletedReply,
        errors=_UID_ERRORS,
    )
    method(
        "list_scheduled_events",
        "List the project's scheduled events",
        "A page of the project's events, oldest first, optionally only those with one `status`.",
        s.ListBody,
        s.EventListReply,
    )
    method(
        "list_scheduled_event_instances",
        "List an event's executions",
        "A page of the event's executions, newest first. Each email carries an "
        "`X-Sendbeat-Instance` header with its execution's `uid`.",
        s.PageBody,
        s.InstanceListReply,
        errors=_UID_ERRORS,
    )


# -- the schedules dialect -----------------------------------------------------------------


def _problem(status: int, detail: str) -> dict[str, Any]:
    return {"detail": detail, "schemas": [s.SCIM_ERROR_URN], "status": status}


def _scim(status: int, description: str, **details: str) -> dict[str, Any]:
    bodies = {name: _problem(status, detail) for name, detail in details.items()}
    return _json(s.ScimError, description, **bodies)


def _schedules_responses(spec: APISpec) -> None:
    responses = {
        "SchedulesUnauthorized": _scim(
            401,
            "No Bearer token, or an unknown or revoked one.",
            unauthorized="Unauthorized: " + UNAUTHORIZED,
        ),
        "SchedulesNotFound": _scim(
            404,
            "`Scheduled task with id {scheduleId} does not exist` (also another project's id).",
            not_found=f"Scheduled task with id {SEED_SCHEDULE_ID} does not exist",
        ),
        "SchedulesInternalError": _scim(
            500,
            "A fault of ours (logged, never a traceback).",
            internal=INTERNAL,
        ),
    }
    for name, response in responses.items():
        spec.components.response(name, response)


_INVALID_UUID = "Bad Request: scheduleId: Invalid uuid"
_INVALID_METHOD = "Invalid method"
_PAGE_ERRORS = {
    "bad_page_size": "Bad Request: pageSize: Must be greater than or equal to 1 and less "
    "than or equal to 100.",
    "bad_cursor": "Bad Request: cursor: Invalid cursor",
}


def _schedules_paths(spec: APISpec) -> None:
    bad_id = _scim(
        400,
        "A malformed id, or an HTTP method the path does not take.",
        invalid_uuid=_INVALID_UUID,
        invalid_method=_INVALID_METHOD,
    )
    found = {
        "400": bad_id,
        "401": "SchedulesUnauthorized",
        "404": "SchedulesNotFound",
        "500": "SchedulesInternalError",
    }
    success = {"200": _json(s.Success, "Done.", success={"success": True})}
    schedule_id = {
        "name": "scheduleId",
        "in": "path",
        "required": True,
        "description": "The event's `id` (a UUID).",
        "schema": {"type": "string", "format": "uuid"},
        "example": SEED_SCHEDULE_ID,
    }
    page = [{"in": "query", "schema": s.SchedulePage}]

    def op(
        operation_id: str, summary: str, description: str, responses: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "tags": ["schedules"],
            "operationId": operation_id,
            "summary": summary,
            "description": description
            + "\n\nAlias: the same path under `/api/v1/schedules`. Any other HTTP method "
            f'answers 400 "{_INVALID_METHOD}".',
            "security": [{"bearerAuth": []}],
            "responses": responses,
        }

    def path(suffix: str, **operations: dict[str, Any]) -> None:
        parameters = [schedule_id] if "{scheduleId}" in suffix else []
        spec.path(path=SCHEDULES + suffix, parameters=parameters, operations=operations)

    list_schedules = op(
        "listSchedules",
        "List the project's schedules",
        "A page of the project's events, oldest first.",
        {
            "200": _json(s.SchedulesPage, "A page of event records."),
            "400": _scim(
                400,
                "A bad query parameter, or an HTTP method the path does not take.",
                **_PAGE_ERRORS,
                invalid_method=_INVALID_METHOD,
            ),
            "401": "SchedulesUnauthorized",
            "500": "SchedulesInternalError",
        },
    )
    path("", get={**list_schedules, "parameters": page})
    path(
        "/{scheduleId}",
        get=op(
            "getSchedule",
            "Get a schedule",
            "Answers the event record.",
            {"200": _json(s.EventRecord, "The event record."), **found},
        ),
        delete=op(
            "deleteSchedule",
            "Delete a schedule",
            "Deletes the event and cancels its queued executions.",
            {**success, **found},
        ),
    )
    path(
        "/{scheduleId}/trigger",
        post=op(
            "triggerSchedule",
            "Trigger a schedule now",
            'Runs the event now as an extra occurrence (`trigger: "manual"`); its '
            "`scheduled_at` does not move.",
            {
                **success,
                **found,
                "409": _scim(
                    409,
                    "An execution of the event is queued or running and its overlap is `skip`.",
                    conflict="Another execution is in progress for this schedule",
                ),
                "500": _scim(
                    500,
                    "`Dispatcher error: <reason>`: the broker did not take the job (no "
                    "execution record is left); or a fault of ours.",
                    dispatcher=DISPATCH_FAILED,
                    internal=INTERNAL,
                ),
            },
        ),
    )
    for action, verb in (("pause", "Pauses"), ("resume", "Resumes")):
        path(
            f"/{{scheduleId}}/{action}",
            put=op(
                f"{action}Schedule",
                f"{action.capitalize()} a schedule",
                f"{verb} the event (as update_scheduled_event's `status` does).",
                {**success, **found},
            ),
        )
    path(
        "/{scheduleId}/recipients",
        get=op(
            "listScheduleRecipients",
            "List a schedule's recipients",
            "The addresses the event's message is sent to, from its arguments (empty when "
            "they are a `$ref`).",
            {"200": _json(s.Recipients, "The recipients."), **found},
        ),
    )
    executions = op(
        "listScheduleExecutions",
        "List a schedule's executions",
        "A page of the event's executions, newest first.",
        {
            "200": _json(s.ExecutionsPage, "A page of execution records."),
            **found,
            "400": _scim(
                400,
                "A malformed id or query parameter, or an HTTP method the path does not take.",
                invalid_uuid=_INVALID_UUID,
                **_PAGE_ERRORS,
                invalid_method=_INVALID_METHOD,
            ),
        },
    )
    path("/{scheduleId}/executions", get={**executions, "parameters": page})
