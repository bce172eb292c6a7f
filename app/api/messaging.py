"""The messaging dialect (PostageApp-compatible): ``POST /v.1.1/<method>`` with a JSON
body, ``/v.1.0/<method>.json`` as an alias, and its error envelope (DESIGN §3)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify, request
from marshmallow import Schema
from marshmallow import ValidationError as SchemaError

from app.api.common import authenticate, flatten_errors, services
from app.api.schemas import EventBody, EventsBody, ListBody, PageBody, SendBody, UidBody, UpdateBody
from app.core.clock import isoformat
from app.core.errors import (
    Conflict,
    DispatchError,
    NotFound,
    SendbeatError,
    UidTaken,
    Unauthorized,
    ValidationError,
)
from app.core.events import create_events, delete_event, update_event
from app.core.events import send_message as queue_message

bp = Blueprint("messaging", __name__)

Method = Callable[[dict[str, Any], str], Response]
METHODS: dict[str, Method] = {}


class BadJson(SendbeatError):
    """Raised when the body is not UTF-8 or not JSON (406)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def method(name: str) -> Callable[[Method], Method]:
    def register(view: Method) -> Method:
        METHODS[name] = view
        return view

    return register


def ok(uid: object, data: Any) -> Response:
    return jsonify({"response": {"status": "ok", "uid": uid}, "data": data})


def error(
    status: int, code: str, message: str, errors: list[str] | None = None, uid: object = None
) -> Response:
    body = {
        "response": {"status": code, "uid": uid, "message": message},
        "data": {"errors": errors if errors is not None else [message]},
    }
    response = jsonify(body)
    response.status_code = status
    return response


@bp.route("/v.1.1/<name>", methods=["POST"])
@bp.route("/v.1.0/<name>.json", methods=["POST"])
def call(name: str) -> Response:
    body = read_body()
    view = METHODS.get(name)
    if view is None:
        known = ", ".join(sorted(METHODS))
        raise NotFound(f"Unknown API method {name!r}. Available methods: {known}.")
    project_id = authenticate(body.get("api_key"))
    return view(body, project_id)


def read_body() -> dict[str, Any]:
    raw = request.get_data(cache=True)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadJson("invalid_utf8", "The posted content is not valid UTF-8.") from None
    try:
        body = json.loads(text) if text.strip() else {}
    except ValueError:
        raise BadJson("invalid_json", "The posted content is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ValidationError("The posted JSON must be an object with the method's fields.")
    return body


def load(schema: Schema, body: dict[str, Any]) -> dict[str, Any]:
    try:
        return schema.load(body)
    except SchemaError as exc:
        errors = flatten_errors(exc.messages)
        raise ValidationError(errors[0], errors) from None


def body_uid() -> object:
    try:
        body = json.loads(request.get_data(cache=True) or b"{}")
    except ValueError:
        return None
    return body.get("uid") if isinstance(body, dict) else None


@bp.errorhandler(SendbeatError)
def render_error(exc: SendbeatError) -> Response:
    uid = body_uid()
    if isinstance(exc, BadJson):
        return error(406, exc.code, exc.message)
    if isinstance(exc, Unauthorized):
        return error(401, "unauthorized", exc.message, uid=uid)
    if isinstance(exc, NotFound):
        return error(404, "not_found", exc.message, uid=uid)
    if isinstance(exc, UidTaken):
        return error(400, "bad_request", exc.message, exc.errors, uid=exc.uid)
    if isinstance(exc, Conflict):
        return error(409, "conflict", exc.message, uid=uid)
    if isinstance(exc, DispatchError):
        return error(500, "internal_error", exc.message, uid=uid)
    if isinstance(exc, ValidationError):
        return error(400, "bad_request", exc.message, exc.errors, uid=uid)
    return error(500, "internal_error", exc.message, uid=uid)


# -- methods ---------------------------------------------------------------------------


@method("create_scheduled_event")
def create_scheduled_event(body: dict[str, Any], project_id: str) -> Response:
    data = load(EventBody(), body)
    svc = services()
    created = create_events(svc.store, project_id, [data["spec"]], svc.defaults, batch=False)
    event, schedule = created.events[0], created.schedules[0]
    record = event.record()
    if data["preview"]:
        record["next_runs"] = [isoformat(t) for t in schedule.preview(created.now)]
    return ok(event.uid, record)


@method("create_scheduled_events")
def create_scheduled_events(body: dict[str, Any], project_id: str) -> Response:
    svc = services()
    data = load(EventsBody(limit=svc.settings.batch_limit), body)
    created = create_events(
        svc.store, project_id, [e["spec"] for e in data["events"]], svc.defaults
    )
    # Exactly the seed's shape: the list sits under response.message, with no data.
    return jsonify({"response": {"status": "ok", "message": [e.summary() for e in created.events]}})


@method("get_scheduled_event")
def get_scheduled_event(body: dict[str, Any], project_id: str) -> Response:
    uid = load(UidBody(), body)["uid"]
    return ok(uid, services().store.event_by_uid(project_id, uid).record())


@method("list_scheduled_event_instances")
def list_scheduled_event_instances(body: dict[str, Any], project_id: str) -> Response:
    data = load(PageBody(), body)
    store = services().store
    event = store.event_by_uid(project_id, data["uid"])
    per_page = data["per_page"]
    instances, total = store.list_instances(event.id, (data["page"] - 1) * per_page, per_page)
    return ok(
        data["uid"],
        {
            "scheduled_event_instances": [i.record() for i in instances],
            "page": data["page"],
            "per_page": per_page,
            "total": total,
        },
    )


@method("update_scheduled_event")
def update_scheduled_event(body: dict[str, Any], project_id: str) -> Response:
    data = load(UpdateBody(), body)
    svc = services()
    event = svc.store.event_by_uid(project_id, data["uid"])
    event = update_event(svc.store, event, data["changes"], limits=svc.defaults.limits)
    # PostageApp answers the schedule as "frequency" too.
    return ok(event.uid, {**event.record(), "frequency": event.schedule})


@method("delete_scheduled_event")
def delete_scheduled_event(body: dict[str, Any], project_id: str) -> Response:
    uid = load(UidBody(), body)["uid"]
    store = services().store
    delete_event(store, store.event_by_uid(project_id, uid))
    return ok(uid, {"uid": uid, "deleted": True})


@method("list_scheduled_events")
def list_scheduled_events(body: dict[str, Any], project_id: str) -> Response:
    data = load(ListBody(), body)
    page, per_page = data["page"], data["per_page"]
    events, total = services().store.list_events(
        project_id, (page - 1) * per_page, per_page, data["status"]
    )
    return ok(
        body.get("uid"),
        {
            "scheduled_events": [e.record() for e in events],
            "page": page,
            "per_page": per_page,
            "total": total,
        },
    )


@method("send_message")
def send_message(body: dict[str, Any], project_id: str) -> Response:
    data = load(SendBody(), body)
    svc = services()
    arguments, limits = data["arguments"], svc.defaults.limits
    instance = queue_message(
        svc.store, svc.publisher, project_id, arguments, data["uid"], limits=limits
    )
    return ok(data["uid"], {"message": {"id": instance.id, "status": instance.status}})
