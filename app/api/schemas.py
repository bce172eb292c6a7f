"""marshmallow schemas for the request bodies of both dialects."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate, validates

from app.core.events import EventChanges, EventSpec


class Body(Schema):
    class Meta:
        unknown = EXCLUDE  # api_key and fields of other PostageApp clients are ignored

    api_key = fields.String(load_default=None)


class SendRequest(Schema):
    """A send_message request: its fields live under ``arguments``."""

    class Meta:
        unknown = EXCLUDE

    arguments = fields.Dict(required=True)


class EventBody(Body):
    uid = fields.String(load_default=None, validate=validate.Length(min=1, max=255))
    schedule = fields.String(required=True, validate=validate.Length(min=1, max=255))
    timezone = fields.String(load_default="UTC", validate=validate.Length(min=1, max=64))
    metadata = fields.Nested(SendRequest, required=True)
    catchup_window = fields.Integer(
        load_default=None, strict=True, validate=validate.Range(min=0, max=366 * 86400)
    )
    overlap = fields.String(load_default="skip", validate=validate.OneOf(["skip", "allow"]))
    retries = fields.Integer(load_default=None, strict=True, validate=validate.Range(min=0, max=50))
    preview = fields.Boolean(load_default=False)

    @post_load
    def to_spec(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        spec = EventSpec(
            schedule=data["schedule"],
            metadata=data["metadata"],
            uid=data["uid"],
            timezone=data["timezone"],
            catchup_window=data["catchup_window"],
            overlap=data["overlap"],
            retries=data["retries"],
        )
        return {"spec": spec, "preview": data["preview"]}


class EventsBody(Body):
    events = fields.List(fields.Nested(EventBody), required=True)

    def __init__(self, *, limit: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._limit = limit

    @validates("events")
    def check_size(self, value: list[Any], **_: Any) -> None:
        if not value:
            raise ValidationError("Give at least one event.")
        if len(value) > self._limit:
            raise ValidationError(f"At most {self._limit} events per request; got {len(value)}.")


class UidBody(Body):
    uid = fields.String(required=True, validate=validate.Length(min=1, max=255))


class PageBody(UidBody):
    page = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=1))
    per_page = fields.Integer(
        load_default=250, strict=True, validate=validate.Range(min=1, max=1000)
    )


class UpdateBody(UidBody):
    schedule = fields.String(validate=validate.Length(min=1, max=255))
    timezone = fields.String(validate=validate.Length(min=1, max=64))
    metadata = fields.Nested(SendRequest)
    status = fields.String(validate=validate.OneOf(["active", "suspend"]))
    catchup_window = fields.Integer(strict=True, validate=validate.Range(min=0, max=366 * 86400))
    overlap = fields.String(validate=validate.OneOf(["skip", "allow"]))
    retries = fields.Integer(strict=True, validate=validate.Range(min=0, max=50))

    @post_load
    def to_changes(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        uid = data.pop("uid")
        data.pop("api_key", None)
        return {"uid": uid, "changes": EventChanges(**data)}


class ListBody(Body):
    page = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=1))
    per_page = fields.Integer(
        load_default=250, strict=True, validate=validate.Range(min=1, max=1000)
    )
    status = fields.String(
        load_default=None, validate=validate.OneOf(["activated", "suspend", "completed"])
    )


class SendBody(Body):
    uid = fields.String(load_default=None, validate=validate.Length(min=1, max=255))
    arguments = fields.Dict(required=True)


class SchedulePage(Schema):
    """Query string of the schedules dialect's lists."""

    cursor = fields.String(load_default=None)
    pageSize = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
