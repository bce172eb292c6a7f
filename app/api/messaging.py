"""The messaging dialect (PostageApp-compatible): ``POST /v.1.1/<method>`` with a JSON
body, ``/v.1.0/<method>.json`` as an alias, and its error envelope (DESIGN §3).

Each method is declared once with ``@method``: its body and reply schemas, its summary
and the errors it answers besides the dialect's common ones. The view receives the
loaded body and the caller's project id, and shapes the answer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, Response, jsonify
from marshmallow import Schema
from marshmallow import ValidationError as SchemaError

from app.api import schemas as s
from app.api.common import (
    DISPATCH_FAILED,
    NOT_AN_OBJECT,
    InvalidJson,
    InvalidUtf8,
    NoSuchPath,
    TooLarge,
    authenticate,
    common_errors,
    flatten_errors,
    json_body,
    peek_json_body,
    services,
    too_deep,
)
from app.api.declare import BodySchema, Dialect, Endpoint, Example, declare, example
from app.api.seeds import SEED_BATCH_200, SEED_BATCH_REQUEST
from app.core.clock import from_timestamp, isoformat
from app.core.errors import (
    NO_SUCH_UID,
    DispatchError,
    NotFound,
    SendbeatError,
    UidTaken,
    ValidationError,
)
from app.core.events import (
    backfill,
    bulk_action,
    create_events,
    delete_event,
    message_uid_taken,
    uid_taken,
    update_event,
)
from app.core.events import send_message as queue_message
from app.core.settings import Settings

bp = Blueprint("messaging", __name__)

PRIMARY = "/v.1.1/{}"
ALIAS = "/v.1.0/{}.json"

View = Callable[[dict[str, Any], str], Response]
METHODS: dict[str, View] = {}


def envelope(exc: SendbeatError, uid: str | None) -> dict[str, Any]:
    """The dialect's error body; a taken uid names itself, any other error echoes the
    request's uid."""
    if isinstance(exc, UidTaken):
        uid = exc.uid
    return {
        "response": {"status": exc.code, "uid": uid, "message": exc.message},
        "data": {"errors": exc.errors},
    }


def _common(settings: Settings) -> Mapping[str, Example]:
    return {
        "not_an_object": example(ValidationError(NOT_AN_OBJECT)),
        "too_deep": example(too_deep()),
        "invalid_json": example(InvalidJson()),
        "invalid_utf8": example(InvalidUtf8()),
        "too_large": example(TooLarge(settings.max_body_bytes)),
        **common_errors(),
    }


DIALECT = Dialect(
    tag="messaging",
    render=envelope,
    error_schema=s.MessagingError,
    common=_common,
    alias_note="Alias: `POST /v.1.0/{name}.json`. Any HTTP method but POST answers 400 "
    '"Use POST with a JSON body.".',
    security=({"bearerAuth": []}, {}),
    title="The PostageApp-compatible dialect.",
    about="Messaging (PostageApp-compatible): `POST /v.1.1/<method>` with a JSON object "
    "body; `POST /v.1.0/<method>.json` is an alias. The API key is the body's `api_key` or "
    "a Bearer token.",
)


def method(
    name: str,
    *,
    summary: str,
    description: str,
    body: BodySchema,
    reply: type[Schema],
    errors: Mapping[str, Example] | None = None,
    body_examples: Mapping[str, Any] | None = None,
    reply_examples: Mapping[str, Any] | None = None,
) -> Callable[[View], View]:
    """Declare a method and serve it at ``/v.1.1/<name>`` and ``/v.1.0/<name>.json``."""
    endpoint = declare(
        Endpoint(
            dialect=DIALECT,
            path=PRIMARY.format(name),
            method="post",
            operation_id=name,
            summary=summary,
            description=description + "\n\n" + DIALECT.alias_note.format(name=name),
            body=body,
            reply=reply,
            errors=errors or {},
            body_examples=body_examples or {},
            reply_examples=reply_examples or {},
        )
    )

    def register(view: View) -> View:
        def call() -> Response:
            raw = json_body()
            data = raw if raw is not None else {}
            if not isinstance(data, dict):
                raise ValidationError(NOT_AN_OBJECT)
            project_id = authenticate(data.get("api_key"))
            schema = endpoint.body_schema(services().settings)
            assert schema is not None
            return view(load(schema, data), project_id)

        for index, rule in enumerate((PRIMARY.format(name), ALIAS.format(name))):
            bp.add_url_rule(rule, f"{name}-{index}", call, methods=["POST"])
        METHODS[name] = view
        return view

    return register


@bp.route("/v.1.1/<name>", methods=["POST"])
@bp.route("/v.1.0/<name>.json", methods=["POST"])
def unknown(name: str) -> Response:
    known = ", ".join(sorted(METHODS))
    raise NoSuchPath(f"Unknown API method {name!r}. Available methods: {known}.")


def ok(uid: object, data: Any) -> Response:
    return jsonify({"response": {"status": "ok", "uid": uid}, "data": data})


def error(exc: SendbeatError, uid: str | None = None) -> Response:
    response = jsonify(envelope(exc, uid))
    response.status_code = exc.status
    return response


def request_uid() -> str | None:
    """The request's uid, echoed in an error answer (when the body has a string one)."""
    body = peek_json_body()
    uid = body.get("uid") if isinstance(body, dict) else None
    return uid if isinstance(uid, str) else None


@bp.errorhandler(SendbeatError)
def render_error(exc: SendbeatError) -> Response:
    return error(exc, request_uid())


def load(schema: Schema, body: dict[str, Any]) -> dict[str, Any]:
    try:
        return schema.load(body)
    except SchemaError as exc:
        errors = flatten_errors(exc.messages)
        raise ValidationError(errors[0], errors) from None


# -- methods ---------------------------------------------------------------------------

_FIELD_EVENT = ValidationError("schedule: Missing data for required field.")
_UNKNOWN_UID = {"not_found": example(NotFound(NO_SUCH_UID), "x")}


@method(
    "send_message",
    summary="Send a message now",
    description='Queues one send_message request (see messages.md) now (`trigger: "api"`); '
    "answers the execution's id with status `queued`. A `uid` can be used once per "
    "project. Remote content (`$ref`) is fetched when the message is sent. A broker "
    'failure answers 500 "Dispatcher error: <reason>".',
    body=s.SendBody,
    reply=s.SendReply,
    errors={
        "field": example(ValidationError("arguments: Missing data for required field.")),
        "duplicate": example(message_uid_taken("m1")),
        "dispatcher": example(DispatchError(DISPATCH_FAILED)),
    },
)
def send_message(data: dict[str, Any], project_id: str) -> Response:
    svc = services()
    arguments, limits = data["arguments"], svc.defaults.limits
    instance = queue_message(
        svc.store, svc.publisher, project_id, arguments, data["uid"], limits=limits
    )
    return ok(data["uid"], {"message": {"id": instance.id, "status": instance.status}})


@method(
    "create_scheduled_event",
    summary="Create a scheduled event",
    description="Answers the event record; `scheduled_at` is the next run in UTC. "
    '`"preview": true` adds `next_runs`. A uid taken in the project answers 400 '
    '`"[:uid, :project id] is already taken"`.',
    body=s.EventBody,
    reply=s.PreviewedEventReply,
    errors={"uid_taken": example(uid_taken("__UID__")), "field": example(_FIELD_EVENT, "x")},
)
def create_scheduled_event(data: dict[str, Any], project_id: str) -> Response:
    svc = services()
    created = create_events(svc.store, project_id, [data["spec"]], svc.defaults, batch=False)
    event, timing = created.events[0], created.timings[0]
    record = event.record()
    if data["preview"]:
        runs = timing.preview(int(created.now.timestamp()))
        record["next_runs"] = [isoformat(from_timestamp(run.at)) for run in runs]
    return ok(event.uid, record)


@method(
    "create_scheduled_events",
    summary="Create many scheduled events at once",
    description="At most `SENDBEAT_BATCH_LIMIT` events. Atomic: every "
    "event is validated first, then all are created or none. Answers the events in "
    "request order under `response.message` (and no `data`); sendbeat adds each "
    "event's `id`. A uid taken in the project, or given twice in the batch, answers "
    'the seed\'s 400; other problems name the event and field: "events[3].schedule: …".',
    body=lambda settings: s.EventsBody(limit=settings.batch_limit),
    reply=s.BatchReply,
    body_examples={"seed": SEED_BATCH_REQUEST},
    reply_examples={"seed": SEED_BATCH_200},
    errors={
        "uid_taken": example(uid_taken("__UID__")),
        "field": example(ValidationError("events[1].schedule: Missing data for required field.")),
    },
)
def create_scheduled_events(data: dict[str, Any], project_id: str) -> Response:
    svc = services()
    specs = [e["spec"] for e in data["events"]]
    created = create_events(svc.store, project_id, specs, svc.defaults)
    # Exactly the seed's shape: the list sits under response.message, with no data.
    return jsonify({"response": {"status": "ok", "message": [e.summary() for e in created.events]}})


@method(
    "get_scheduled_event",
    summary="Get a scheduled event",
    description="Answers the event record.",
    body=s.UidBody,
    reply=s.EventReply,
    errors=_UNKNOWN_UID,
)
def get_scheduled_event(data: dict[str, Any], project_id: str) -> Response:
    uid = data["uid"]
    return ok(uid, services().store.event_by_uid(project_id, uid).record())


@method(
    "list_scheduled_event_instances",
    summary="List an event's executions",
    description="A page of the event's executions, newest first. Each email carries an "
    "`X-Sendbeat-Instance` header with its execution's `uid`.",
    body=s.PageBody,
    reply=s.InstanceListReply,
    errors=_UNKNOWN_UID,
)
def list_scheduled_event_instances(data: dict[str, Any], project_id: str) -> Response:
    store = services().store
    event = store.event_by_uid(project_id, data["uid"])
    page, per_page = data["page"], data["per_page"]
    instances, total = store.list_instances(event.id, (page - 1) * per_page, per_page)
    records = [i.record() for i in instances]
    return ok(
        data["uid"],
        {"scheduled_event_instances": records, "page": page, "per_page": per_page, "total": total},
    )


@method(
    "update_scheduled_event",
    summary="Change a scheduled event",
    description="Changes only the fields given; `status` `suspend` pauses the event and "
    "`active` resumes it. Answers the event record, with the schedule repeated as "
    "`frequency`.",
    body=s.UpdateBody,
    reply=s.UpdatedEventReply,
    errors=_UNKNOWN_UID,
)
def update_scheduled_event(data: dict[str, Any], project_id: str) -> Response:
    svc = services()
    event = svc.store.event_by_uid(project_id, data["uid"])
    event = update_event(svc.store, event, data["changes"], limits=svc.defaults.limits)
    # PostageApp answers the schedule as "frequency" too.
    return ok(event.uid, {**event.record(), "frequency": event.schedule})


@method(
    "delete_scheduled_event",
    summary="Delete a scheduled event",
    description="Deletes the event and cancels its queued executions.",
    body=s.UidBody,
    reply=s.DeletedReply,
    errors=_UNKNOWN_UID,
)
def delete_scheduled_event(data: dict[str, Any], project_id: str) -> Response:
    uid = data["uid"]
    store = services().store
    delete_event(store, store.event_by_uid(project_id, uid))
    return ok(uid, {"uid": uid, "deleted": True})


@method(
    "list_scheduled_events",
    summary="List the project's scheduled events",
    description="A page of the project's events, oldest first, optionally only those with "
    "one `status` and those carrying every pair of `labels`.",
    body=s.ListBody,
    reply=s.EventListReply,
)
def list_scheduled_events(data: dict[str, Any], project_id: str) -> Response:
    page, per_page = data["page"], data["per_page"]
    events, total = services().store.list_events(
        project_id, (page - 1) * per_page, per_page, data["status"], data["labels"]
    )
    records = [e.record() for e in events]
    return ok(
        data["uid"],
        {"scheduled_events": records, "page": page, "per_page": per_page, "total": total},
    )


@method(
    "bulk_update_scheduled_events",
    summary="Pause, resume, trigger or delete every event with some labels",
    description="Does `action` to every event of the project carrying every pair of "
    "`labels`, each as its own call would (atomic per event), and answers one result per "
    "event, oldest first: its `status` after the action (`deleted`; `queued` and the new "
    "`execution` for a trigger), or the `error` it met (a trigger of an event whose "
    "previous run is in progress, with overlap `skip`). No match answers an empty list; "
    "more matches than `SENDBEAT_BATCH_LIMIT` answer 400 and change nothing.",
    body=s.BulkBody,
    reply=s.BulkReply,
    errors={
        "field": example(
            ValidationError("labels: Give at least one label pair (every pair must match).")
        )
    },
)
def bulk_update_scheduled_events(data: dict[str, Any], project_id: str) -> Response:
    svc = services()
    results = bulk_action(svc.store, svc.publisher, project_id, data["labels"], data["action"],
                          limit=svc.settings.batch_limit)  # fmt: skip
    return ok(None, {"results": results})


@method(
    "backfill_scheduled_event",
    summary="Run the occurrences of a past range now",
    description="Queues every occurrence of the event's schedule in `[start, end]` (a past "
    'range, at most 1000 occurrences) to run now, in order, as executions with `"trigger": '
    '"backfill"` and `scheduled_for` the occurrence\'s time. With overlap `skip` (the '
    "event's own unless `overlap` says otherwise) each waits for the execution before it "
    "to end; with `allow` they go one a second. Answers how many were queued.",
    body=s.BackfillBody,
    reply=s.BackfillReply,
    errors={**_UNKNOWN_UID, "field": example(ValidationError(
        "end: a backfill covers a past range; end is after now."), "x")},
)  # fmt: skip
def backfill_scheduled_event(data: dict[str, Any], project_id: str) -> Response:
    store = services().store
    event = store.event_by_uid(project_id, data["uid"])
    queued = backfill(store, event, data["start"], data["end"], data["overlap"])
    return ok(data["uid"], {"uid": data["uid"], "queued": queued})
