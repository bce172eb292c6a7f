"""The schedules dialect (Omni-compatible): ``/api/unstable/schedules`` with
``/api/v1/schedules`` as an alias, Bearer auth and the SCIM error envelope (DESIGN §4).

Each operation is declared once with ``route()``: its path, its reply (and query)
schema, its summary and the errors it answers besides the dialect's common ones."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, Response, jsonify, request
from marshmallow import Schema, fields
from marshmallow import ValidationError as SchemaError

from app.api import schemas as s
from app.api.common import (
    NOT_AN_OBJECT,
    InvalidJson,
    InvalidMethod,
    authenticate,
    common_errors,
    flatten_errors,
    json_body,
    services,
)
from app.api.declare import Dialect, Endpoint, Example, declare, example
from app.core.errors import (
    DispatchError,
    EventGone,
    NotFound,
    SendbeatError,
    Unauthorized,
    ValidationError,
)
from app.core.events import (
    BULK_ACTIONS,
    backfill,
    bulk_action,
    delete_event,
    in_progress,
    set_paused,
    trigger,
)
from app.core.message import recipients_of
from app.core.records import Event
from app.core.settings import Settings
from app.core.webhook import destination

bp = Blueprint("schedules", __name__)

SCIM_ERROR = s.SCIM_ERROR_URN
BASES = ("/api/unstable/schedules", "/api/v1/schedules")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
SEED_SCHEDULE_ID = "123e4567-e89b-12d3-a456-426614174000"
INVALID_UUID = "Bad Request: scheduleId: Invalid uuid"
INVALID_CURSOR = "Bad Request: cursor: Invalid cursor"
SCHEDULE_ID = {
    "name": "scheduleId",
    "in": "path",
    "required": True,
    "description": "The event's `id` (a UUID).",
    "schema": {"type": "string", "format": "uuid"},
    "example": SEED_SCHEDULE_ID,
}


def missing(schedule_id: str) -> str:
    return f"Scheduled task with id {schedule_id} does not exist"


def detail(exc: SendbeatError) -> str:
    if isinstance(exc, Unauthorized):
        return "Unauthorized: " + exc.message
    if isinstance(exc, EventGone):  # deleted while this request was acting on it
        return missing((request.view_args or {}).get("schedule_id", ""))
    return exc.message


def envelope(exc: SendbeatError, uid: str | None = None) -> dict[str, Any]:
    return {"detail": detail(exc), "schemas": [SCIM_ERROR], "status": exc.status}


def problem(exc: SendbeatError) -> Response:
    response = jsonify(envelope(exc))
    response.status_code = exc.status
    return response


def _common(settings: Settings) -> Mapping[str, Example]:
    return {
        "invalid_method": example(InvalidMethod("Invalid method")),
        **common_errors(),
    }


DIALECT = Dialect(
    tag="schedules",
    render=envelope,
    error_schema=s.ScimError,
    common=_common,
    alias_note="Alias: the same path under `/api/v1/schedules`. Any other HTTP method "
    'answers 400 "Invalid method".',
    security=({"bearerAuth": []},),
    title="The Omni-compatible dialect.",
    about="Schedules (Omni-compatible): `/api/unstable/schedules`, with `/api/v1/schedules` "
    "as an alias; Bearer token only. `{scheduleId}` is the event's `id`.",
)

View = Callable[..., Response]
_FOUND = {
    "invalid_uuid": example(ValidationError(INVALID_UUID)),
    "not_found": example(NotFound(missing(SEED_SCHEDULE_ID))),
}
_PAGED = {
    "bad_page_size": example(
        ValidationError(
            "Bad Request: pageSize: Must be greater than or equal to 1 and less than or equal "
            "to 100."
        )
    ),
    "bad_cursor": example(ValidationError(INVALID_CURSOR)),
}
_BODY = {
    "invalid_json": example(InvalidJson()),
    "not_an_object": example(ValidationError(NOT_AN_OBJECT)),
}


def route(
    path: str,
    method: str,
    operation_id: str,
    *,
    summary: str,
    description: str,
    reply: type[Schema],
    query: type[Schema] | None = None,
    body: type[Schema] | None = None,
    errors: Mapping[str, Example] | None = None,
) -> Callable[[View], View]:
    """Declare an operation and serve it on both base paths. Its view is called with the
    caller's project id, the path's ``schedule_id`` and, with ``query`` or ``body``, the
    loaded query or JSON body; another method on a known path answers 400 "Invalid
    method" (as the seed does)."""
    by_id = "{scheduleId}" in path
    endpoint = declare(
        Endpoint(
            dialect=DIALECT,
            path=BASES[0] + path,
            method=method,
            operation_id=operation_id,
            summary=summary,
            description=description + "\n\n" + DIALECT.alias_note,
            reply=reply,
            query=query,
            body=body,
            parameters=(SCHEDULE_ID,) if by_id else (),
            errors={
                **(_FOUND if by_id else {}),
                **(_PAGED if query else {}),
                **(_BODY if body else {}),
                **(errors or {}),
            },
        )
    )
    rule = path.replace("{scheduleId}", "<schedule_id>")

    def register(view: View) -> View:
        def call(**kwargs: Any) -> Response:
            project_id = authenticate()
            if endpoint.query is not None:
                kwargs["query"] = load_query(endpoint.query)
            if body is not None:
                kwargs["body"] = load_body(body)
            return view(project_id, **kwargs)

        for index, base in enumerate(BASES):
            # The collection answers with or without its trailing slash.
            bp.add_url_rule(
                base + rule,
                f"{operation_id}-{index}",
                call,
                methods=[method.upper()],
                strict_slashes=False,
            )
        return view

    return register


def load_query(schema: type[Schema]) -> dict[str, Any]:
    """The query string loaded by ``schema``; a list field takes every repeat of its name."""
    lists = {name for name, f in schema._declared_fields.items() if isinstance(f, fields.List)}
    args = {name: request.args.getlist(name) if name in lists else request.args[name]
            for name in request.args}  # fmt: skip
    return _load(schema, args)


def load_body(schema: type[Schema]) -> dict[str, Any]:
    """The JSON body loaded by ``schema`` (none reads as ``{}``)."""
    data = json_body()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValidationError(NOT_AN_OBJECT)
    return _load(schema, data)


def _load(schema: type[Schema], data: dict[str, Any]) -> dict[str, Any]:
    try:
        return schema().load(data)
    except SchemaError as exc:
        name, messages = next(iter(exc.messages.items()))  # type: ignore[union-attr]
        raise ValidationError(f"Bad Request: {name}: {flatten_errors(messages)[0]}") from None


def find_event(project_id: str, schedule_id: str) -> Event:
    if not _UUID.fullmatch(schedule_id):
        raise ValidationError(INVALID_UUID)
    event = services().store.event_by_id(project_id, schedule_id.lower())
    if event is None:
        raise NotFound(missing(schedule_id))
    return event


@bp.errorhandler(SendbeatError)
def render_error(exc: SendbeatError) -> Response:
    return problem(exc)


@route(
    "",
    "get",
    "listSchedules",
    summary="List the project's schedules",
    description="A page of the project's events, oldest first; with `label=name:value` "
    "(repeatable) only those carrying every such pair.",
    reply=s.SchedulesPage,
    query=s.ScheduleListQuery,
)
def list_schedules(project_id: str, query: dict[str, Any]) -> Response:
    offset, size = page_request(query)
    labels = dict(pair.partition(":")[::2] for pair in query["label"])
    events, total = services().store.list_events(project_id, offset, size, labels=labels)
    return page([e.record() for e in events], offset, size, total)


@route(
    "/{scheduleId}",
    "get",
    "getSchedule",
    summary="Get a schedule",
    description="Answers the event record.",
    reply=s.EventRecord,
)
def get_schedule(project_id: str, schedule_id: str) -> Response:
    return jsonify(find_event(project_id, schedule_id).record())


@route(
    "/{scheduleId}",
    "delete",
    "deleteSchedule",
    summary="Delete a schedule",
    description="Deletes the event and cancels its queued executions.",
    reply=s.Success,
)
def delete_schedule(project_id: str, schedule_id: str) -> Response:
    delete_event(services().store, find_event(project_id, schedule_id))
    return success()


@route(
    "/{scheduleId}/trigger",
    "post",
    "triggerSchedule",
    summary="Trigger a schedule now",
    description='Runs the event now as an extra occurrence (`trigger: "manual"`); its '
    '`scheduled_at` does not move, unless the body says `{"skip_next": true}`: then its '
    "next occurrence is skipped and `scheduled_at` moves one run on. A broker failure "
    'answers 500 "Dispatcher error: <reason>" and leaves no execution record.',
    reply=s.Success,
    body=s.TriggerBody,
    errors={
        "conflict": example(in_progress()),
        "dispatcher": example(
            DispatchError(
                "Dispatcher error: Error 111 connecting to redis:6379. Connection refused."
            )
        ),
    },
)
def trigger_schedule(project_id: str, schedule_id: str, body: dict[str, Any]) -> Response:
    svc = services()
    event = find_event(project_id, schedule_id)
    trigger(svc.store, svc.publisher, event, skip_next=body["skip_next"])
    return success()


@route(
    "/{scheduleId}/pause",
    "put",
    "pauseSchedule",
    summary="Pause a schedule",
    description="Pauses the event (as update_scheduled_event's `status` does).",
    reply=s.Success,
)
def pause_schedule(project_id: str, schedule_id: str) -> Response:
    set_paused(services().store, find_event(project_id, schedule_id), True)
    return success()


@route(
    "/{scheduleId}/resume",
    "put",
    "resumeSchedule",
    summary="Resume a schedule",
    description="Resumes the event (as update_scheduled_event's `status` does): the "
    "occurrences that fell due while it was paused are recorded `missed`, but for what "
    '`{"catchup": "latest"}` (the last of them) or `{"catchup": "all"}` (every one, in '
    'order) sends; `"none"` is the default.',
    reply=s.Success,
    body=s.ResumeBody,
)
def resume_schedule(project_id: str, schedule_id: str, body: dict[str, Any]) -> Response:
    event = find_event(project_id, schedule_id)
    set_paused(services().store, event, False, catchup=body["catchup"])
    return success()


@route(
    "/{scheduleId}/backfill",
    "post",
    "backfillSchedule",
    summary="Run the occurrences of a past range now",
    description="Queues every occurrence in `[start, end]` (a past range, at most 1000) to "
    'run now, in order, as executions with `"trigger": "backfill"`; with overlap `skip` '
    "each waits for the one before it to end, with `allow` they go one a second. Answers "
    "how many were queued.",
    reply=s.Backfilled,
    body=s.BackfillRange,
)
def backfill_schedule(project_id: str, schedule_id: str, body: dict[str, Any]) -> Response:
    event = find_event(project_id, schedule_id)
    queued = backfill(services().store, event, body["start"], body["end"], body["overlap"])
    return jsonify({"queued": queued})


@route(
    "/{scheduleId}/recipients",
    "get",
    "listScheduleRecipients",
    summary="List a schedule's recipients",
    description="The addresses the event's message is sent to, from its arguments (empty "
    'when they are a `$ref`), and its webhook\'s URL (`{"webhook": url}`).',
    reply=s.Recipients,
)
def schedule_recipients(project_id: str, schedule_id: str) -> Response:
    arguments = find_event(project_id, schedule_id).metadata.get("arguments") or {}
    found: list[dict[str, str]] = [{"email": e} for e in recipients_of(arguments)]
    url = destination(arguments.get("webhook"))
    if url is not None:
        found.append({"webhook": url})
    return jsonify({"recipients": found, "total": len(found)})


@route(
    "/{scheduleId}/executions",
    "get",
    "listScheduleExecutions",
    summary="List a schedule's executions",
    description="A page of the event's executions, newest first.",
    reply=s.ExecutionsPage,
    query=s.SchedulePage,
)
def schedule_executions(project_id: str, schedule_id: str, query: dict[str, Any]) -> Response:
    event = find_event(project_id, schedule_id)
    offset, size = page_request(query)
    instances, total = services().store.list_instances(event.id, offset, size)
    return page([i.record() for i in instances], offset, size, total)


def _bulk(action: str) -> None:
    @route(
        f"/bulk/{action}",
        "post",
        f"bulk{action.title()}Schedules",
        summary=f"{action.title()} every schedule with some labels",
        description=f"Does what `/{{scheduleId}}/{action}` does to every event of the project "
        "carrying every pair of `labels`, each atomically on its own, and answers one result "
        "per event, oldest first: its `status` after the action (`deleted`; `queued` and the "
        "new `execution` for a trigger) or the `error` it met. More matches than "
        "`SENDBEAT_BATCH_LIMIT` answer 400 and change nothing.",
        reply=s.BulkResults,
        body=s.BulkSelector,
    )
    def bulk(project_id: str, body: dict[str, Any]) -> Response:
        svc = services()
        results = bulk_action(svc.store, svc.publisher, project_id, body["labels"], action,
                              limit=svc.settings.batch_limit)  # fmt: skip
        return jsonify({"results": results})


def _invalid_method(**_: Any) -> Response:
    raise InvalidMethod("Invalid method")


for _action in BULK_ACTIONS:
    _bulk(_action)
    # Other methods on /bulk/pause and /bulk/resume would reach /{scheduleId}/pause and
    # /{scheduleId}/resume ("bulk" is no uuid): they answer as any known path does.
    for _index, _base in enumerate(BASES):
        bp.add_url_rule(f"{_base}/bulk/{_action}", f"invalid-method-bulk-{_action}-{_index}",
                        _invalid_method, methods=["GET", "PUT", "PATCH", "DELETE"])  # fmt: skip


def success() -> Response:
    return jsonify({"success": True})


def page_request(query: dict[str, Any]) -> tuple[int, int]:
    """(offset, page size) from ``cursor`` and ``pageSize``; the cursor is opaque."""
    cursor = query["cursor"]
    return (decode_cursor(cursor) if cursor else 0), query["pageSize"]


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
        offset = int(text.removeprefix("o:"))
    except (ValueError, binascii.Error):
        raise ValidationError(INVALID_CURSOR) from None
    if not 0 <= offset <= s.MAX_OFFSET:
        raise ValidationError(INVALID_CURSOR)
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
