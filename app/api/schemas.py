"""marshmallow schemas for the request bodies of both dialects, and the response schemas
that only document what the API answers (``app.api.openapi`` turns both into OpenAPI)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, post_load, validate

from app.core.events import BULK_ACTIONS, CATCHUP_POLICIES, EventChanges, EventSpec
from app.core.records import InstanceStatus
from app.core.schedules import DST_POLICIES

# Bounds of the request fields (docs/api.md lists them). Pages stop where an offset still
# fits the store's 64-bit ranges many times over; a cursor encodes such an offset.
MAX_KEY_LENGTH = 256
MAX_PAGE = 1_000_000
MAX_PER_PAGE = 1000
MAX_OFFSET = MAX_PAGE * MAX_PER_PAGE
MAX_CURSOR_LENGTH = 64


class Body(Schema):
    class Meta:
        unknown = EXCLUDE  # api_key and fields of other PostageApp clients are ignored

    api_key = fields.String(
        load_default=None,
        validate=validate.Length(max=MAX_KEY_LENGTH),
        metadata={
            "description": "The project's API key; may be sent as "
            "`Authorization: Bearer <key>` instead."
        },
    )


class SendRequest(Schema):
    """A send_message request: its fields live under ``arguments``."""

    class Meta:
        unknown = EXCLUDE

    arguments = fields.Dict(
        required=True,
        metadata={
            "description": "The send_message fields (see messages.md): recipients, "
            "headers, content, variables, attachments, recipient_override, and webhook "
            "(an HTTP delivery instead of email, or as well)."
        },
    )


# A uid is printable text: control characters are refused (beat's claims use two of
# them as separators).
UID = [
    validate.Length(min=1, max=255),
    # (?![\s\S]) ends the string in both Python and ECMA regexes (``$`` would let a
    # trailing newline through in Python).
    validate.Regexp(r"^[^\x00-\x1f\x7f]*(?![\s\S])", error="Must not contain control characters."),
]


# Labels: a small map of strings on each event, for selecting events (lists, bulk
# actions). A name cannot hold ':', which separates it from the value in ``?label=``.
MAX_LABELS = 16
MAX_LABEL_VALUE = 255
LABEL_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_./-]{0,61}[A-Za-z0-9])?")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_labels(labels: dict[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise ValidationError(f"At most {MAX_LABELS} labels; got {len(labels)}.")
    for name, value in labels.items():
        if not LABEL_NAME.fullmatch(name):
            raise ValidationError(
                f"Label name {name[:70]!r}: 1 to 63 letters, digits, '-', '_', '.' or '/', "
                "starting and ending with a letter or digit."
            )
        if len(value) > MAX_LABEL_VALUE or CONTROL.search(value):
            raise ValidationError(
                f"Label {name!r}: a value is at most {MAX_LABEL_VALUE} characters, "
                "without control characters."
            )


def labels_field(description: str, **kwargs: Any) -> fields.Dict:
    return fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        validate=kwargs.pop("validate", check_labels),
        metadata={"description": description, "example": {"team": "billing"}},
        **kwargs,
    )


def check_selector(labels: dict[str, str]) -> None:
    if not labels:
        raise ValidationError("Give at least one label pair (every pair must match).")
    check_labels(labels)


ALERT_KINDS = ["failed", "missed", "skipped", "retrying", "recovered"]
MAX_ALERTS = 5


class AlertTarget(Schema):
    """One of an event's ``alerts``: where to POST, and on which transitions."""

    class Meta:
        unknown = RAISE

    url = fields.String(
        required=True,
        validate=[validate.URL(schemes={"http", "https"}, require_tld=False),
                  validate.Length(max=2048)],
        metadata={"description": "An http or https URL; the POST is signed as webhooks are."},
    )  # fmt: skip
    on = fields.List(
        fields.String(validate=validate.OneOf(ALERT_KINDS)),
        required=True,
        validate=validate.Length(min=1, max=len(ALERT_KINDS)),
        metadata={"description": "`recovered` is the first success after a failure."},
    )


class AlertOutcome(Schema):
    url = fields.String(required=True)
    type = fields.String(required=True, metadata={"example": "execution.failed"})
    status = fields.String(required=True, metadata={"description": "`200`, or why it failed."})
    attempts = fields.Integer(required=True)


# The timing policies (docs/schedules.md, "Timing policies").
MAX_JITTER = 366 * 86400
MAX_RUNS = 1_000_000_000
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(2999, 12, 31, 23, 59, 59, tzinfo=UTC)


def moment(description: str, **extra: Any) -> fields.AwareDateTime:
    """An ISO 8601 date-time field in 1970-2999 (``extra``: required, a default...)."""
    return fields.AwareDateTime(
        default_timezone=UTC,
        validate=validate.Range(min=EARLIEST, max=LATEST),
        metadata={"description": description + " ISO 8601; UTC when it names no offset."},
        **extra,
    )


def timing_fields(*, creating: bool) -> dict[str, fields.Field]:
    """The timing policies' fields: defaults when creating; on update, only what is given
    (``null`` removes a bound or max_runs)."""

    def default(value: Any) -> dict[str, Any]:
        return {"load_default": value} if creating else {"allow_none": value is None}

    jitter = ("Seconds: each occurrence fires up to this much after its time, the same "
              "offset on every beat (at most the schedule's shortest interval).")  # fmt: skip
    max_runs = "The event completes once beat has queued this many of its occurrences."
    dst = (
        "A wall time a clock change skips or repeats: `shift` (runs after the gap; once), "
        "`skip` (not when skipped), `twice` (at both instants when repeated)."
    )
    return {
        "jitter": fields.Integer(
            strict=True,
            validate=validate.Range(min=0, max=MAX_JITTER),
            metadata={"description": jitter},
            **default(0),
        ),
        "start_at": moment("No occurrence before it.", **default(None)),
        "end_at": moment("No occurrence after it; the event then completes.", **default(None)),
        "max_runs": fields.Integer(
            strict=True,
            validate=validate.Range(min=1, max=MAX_RUNS),
            metadata={"description": max_runs},
            **default(None),
        ),
        "dst": fields.String(
            validate=validate.OneOf(DST_POLICIES), metadata={"description": dst}, **default("shift")
        ),
    }


_NEW, _CHANGED = timing_fields(creating=True), timing_fields(creating=False)


def _epoch(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


class EventBody(Body):
    uid = fields.String(
        load_default=None,
        validate=UID,
        metadata={"description": "Unique per project; a new UUID when left out."},
    )
    schedule = fields.String(
        required=True,
        validate=validate.Length(min=1, max=255),
        metadata={"description": "See schedules.md.", "example": "every 5 mins"},
    )
    timezone = fields.String(
        load_default="UTC",
        validate=validate.Length(min=1, max=64),
        metadata={"description": "An IANA time zone."},
    )
    metadata = fields.Nested(SendRequest, required=True)
    catchup_window = fields.Integer(
        load_default=None,
        strict=True,
        validate=validate.Range(min=0, max=366 * 86400),
        metadata={"description": "Seconds; the server's default when left out."},
    )
    overlap = fields.String(load_default="skip", validate=validate.OneOf(["skip", "allow"]))
    retries = fields.Integer(
        load_default=None,
        strict=True,
        validate=validate.Range(min=0, max=50),
        metadata={"description": "The server's default when left out."},
    )
    labels = labels_field(
        f"At most {MAX_LABELS} name -> value pairs, for selecting events.", load_default=dict
    )
    alerts = fields.List(
        fields.Nested(AlertTarget),
        load_default=list,
        validate=validate.Length(max=MAX_ALERTS),
        metadata={"description": f"At most {MAX_ALERTS}: `{{url, on: [...]}}`."},
    )
    preview = fields.Boolean(
        load_default=False, metadata={"description": "Add `next_runs`, the next five runs."}
    )

    jitter = _NEW["jitter"]
    start_at = _NEW["start_at"]
    end_at = _NEW["end_at"]
    max_runs = _NEW["max_runs"]
    dst = _NEW["dst"]

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
            labels=data["labels"],
            alerts=data["alerts"],
            jitter=data["jitter"],
            start_at=_epoch(data["start_at"]),
            end_at=_epoch(data["end_at"]),
            max_runs=data["max_runs"],
            dst=data["dst"],
        )
        return {"spec": spec, "preview": data["preview"]}


class BatchSize(validate.Length):
    """How many events one create_scheduled_events may hold (minItems/maxItems)."""

    message_min = "Give at least one event."
    message_max = "At most {max} events per request; got {length}."

    def _format_error(self, value: Any, message: str) -> str:
        if self.min is not None and len(value) < self.min:
            return self.message_min
        return self.message_max.format(max=self.max, length=len(value))


class EventsBody(Body):
    events = fields.List(fields.Nested(EventBody), required=True)

    def __init__(self, *, limit: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fields["events"].validators = [BatchSize(min=1, max=limit)]


class UidBody(Body):
    uid = fields.String(required=True, validate=UID)


class Paged(Body):
    """The paging fields of both list methods."""

    page = fields.Integer(load_default=1, strict=True, validate=validate.Range(1, MAX_PAGE))
    per_page = fields.Integer(
        load_default=250, strict=True, validate=validate.Range(1, MAX_PER_PAGE)
    )


class PageBody(Paged, UidBody):
    pass


class UpdateBody(UidBody):
    schedule = fields.String(validate=validate.Length(min=1, max=255))
    timezone = fields.String(validate=validate.Length(min=1, max=64))
    metadata = fields.Nested(SendRequest)
    status = fields.String(validate=validate.OneOf(["active", "suspend"]))
    catchup = fields.String(
        validate=validate.OneOf(CATCHUP_POLICIES),
        metadata={"description": 'With `"status": "active"`: what the resume sends of the '
                  "occurrences that fell due while paused: `none` (the default), `latest` "
                  "or `all` (in order, one at a time). The rest are recorded `missed`."},
    )  # fmt: skip
    catchup_window = fields.Integer(strict=True, validate=validate.Range(min=0, max=366 * 86400))
    overlap = fields.String(validate=validate.OneOf(["skip", "allow"]))
    retries = fields.Integer(strict=True, validate=validate.Range(min=0, max=50))
    labels = labels_field("The whole new map; `{}` removes every label.")
    alerts = fields.List(
        fields.Nested(AlertTarget),
        validate=validate.Length(max=MAX_ALERTS),
        metadata={"description": "The whole new list; `[]` removes every alert."},
    )
    jitter = _CHANGED["jitter"]
    start_at = _CHANGED["start_at"]
    end_at = _CHANGED["end_at"]
    max_runs = _CHANGED["max_runs"]
    dst = _CHANGED["dst"]

    @post_load
    def to_changes(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        uid = data.pop("uid")
        data.pop("api_key", None)
        cleared = frozenset(n for n in ("start_at", "end_at", "max_runs")
                            if n in data and data[n] is None)  # fmt: skip
        for name in ("start_at", "end_at"):
            data[name] = _epoch(data.get(name))
        return {"uid": uid, "changes": EventChanges(**data, cleared=cleared)}


class ListBody(Paged):
    uid = fields.String(
        load_default=None, validate=UID, metadata={"description": "Echoed in the answer."}
    )
    status = fields.String(
        load_default=None, validate=validate.OneOf(["activated", "suspend", "completed"])
    )
    labels = labels_field("Only events carrying every one of these pairs.", load_default=None)


class BulkBody(Body):
    labels = labels_field(
        "The events carrying every one of these pairs (at least one).",
        required=True,
        validate=check_selector,
    )
    action = fields.String(required=True, validate=validate.OneOf(BULK_ACTIONS))


class BulkSelector(Schema):
    """The schedules dialect's bulk body."""

    class Meta:
        unknown = EXCLUDE

    labels = labels_field(
        "The events carrying every one of these pairs (at least one).",
        required=True,
        validate=check_selector,
    )


class TriggerBody(Schema):
    """POST /{scheduleId}/trigger's optional body."""

    class Meta:
        unknown = EXCLUDE

    skip_next = fields.Boolean(
        load_default=False,
        metadata={"description": "Skip the next occurrence: run now instead of then."},
    )


class ResumeBody(Schema):
    """PUT /{scheduleId}/resume's optional body."""

    class Meta:
        unknown = EXCLUDE

    catchup = fields.String(
        load_default="none",
        validate=validate.OneOf(CATCHUP_POLICIES),
        metadata={"description": "What the resume sends of the occurrences that fell due "
                  "while paused: `none`, `latest` or `all`."},
    )  # fmt: skip


def _backfill_overlap() -> fields.String:
    return fields.String(
        load_default=None,
        validate=validate.OneOf(["skip", "allow"]),
        metadata={"description": "`skip`: one at a time; `allow`: one a second. The "
                  "event's own policy when left out."},
    )  # fmt: skip


class BackfillRange(Schema):
    """The schedules dialect's backfill body: a past range to run now."""

    class Meta:
        unknown = EXCLUDE

    start = moment("The range's first moment.", required=True)
    end = moment("Its last moment (not after now).", required=True)
    overlap = _backfill_overlap()


class BackfillBody(UidBody):
    start = moment("The range's first moment.", required=True)
    end = moment("Its last moment (not after now).", required=True)
    overlap = _backfill_overlap()


class Backfilled(Schema):
    queued = fields.Integer(required=True, metadata={"description": "Occurrences queued."})


class BackfilledWithUid(Backfilled):
    uid = fields.String(required=True)


class SendBody(Body):
    uid = fields.String(load_default=None, validate=UID)
    arguments = fields.Dict(required=True)


class SchedulePage(Schema):
    """Query string of the schedules dialect's lists."""

    cursor = fields.String(
        load_default=None,
        validate=validate.Length(max=MAX_CURSOR_LENGTH),
        metadata={"description": "The previous page's `pageInfo.nextCursor`; opaque."},
    )
    pageSize = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))


def check_label_filter(pairs: list[str]) -> None:
    if len(pairs) > MAX_LABELS:
        raise ValidationError(f"At most {MAX_LABELS} label filters; got {len(pairs)}.")
    for pair in pairs:
        name, colon, value = pair.partition(":")
        if not colon:
            raise ValidationError(f"Use name:value; got {pair[:70]!r}.")
        check_labels({name: value})


class ScheduleListQuery(SchedulePage):
    """listSchedules' query: a page, and label filters."""

    label = fields.List(
        fields.String(),
        load_default=list,
        validate=check_label_filter,
        metadata={"description": "`name:value`; repeat it: every pair must match."},
    )


# -- response schemas ----------------------------------------------------------------------
# Never used to load or dump: they describe, for the OpenAPI document, the dicts that
# Event.record(), Event.summary() and Instance.record() build. marshmallow's default
# ``unknown = RAISE`` makes apispec write ``additionalProperties: false``, so a key the
# API adds without documenting it fails the tests that check real answers against them.

EVENT_STATUSES = ["activated", "suspend", "completed"]
EVENT_TYPES = ["repeatable", "one_time"]
TRIGGERS = ["schedule", "manual", "api", "backfill"]
INSTANCE_STATUSES = [status.value for status in InstanceStatus]
MESSAGING_ERROR_CODES = [
    "bad_request",
    "unauthorized",
    "not_found",
    "invalid_json",
    "invalid_utf8",
    "conflict",
    "too_large",
    "rate_limited",
    "unavailable",
    "internal_error",
]
SCIM_ERROR_URN = "urn:ietf:params:scim:api:messages:2.0:Error"


def _when(description: str, *, required: bool = True) -> fields.DateTime:
    """An ISO 8601 UTC time (``null`` unless ``required``)."""
    return fields.DateTime(
        required=required, allow_none=not required, metadata={"description": description}
    )


class InstanceSummary(Schema):
    """An event's ``last_run``."""

    uid = fields.String(required=True, metadata={"description": "The execution id."})
    trigger = fields.String(required=True, validate=validate.OneOf(TRIGGERS))
    status = fields.String(required=True, validate=validate.OneOf(INSTANCE_STATUSES))
    scheduled_for = _when("When the occurrence was due.")
    completed_at = _when("When the execution finished.", required=False)


class EventRecord(Schema):
    """The event record (``Event.record()``), as both dialects return it."""

    uid = fields.String(required=True, metadata={"description": "Unique per project."})
    id = fields.UUID(
        required=True, metadata={"description": "The schedules dialect's `scheduleId`."}
    )
    status = fields.String(required=True, validate=validate.OneOf(EVENT_STATUSES))
    schedule = fields.String(required=True, metadata={"example": "every 5 mins"})
    event_type = fields.String(required=True, validate=validate.OneOf(EVENT_TYPES))
    timezone = fields.String(required=True, metadata={"example": "UTC"})
    scheduled_at = _when("The next run in UTC; null when there is none.", required=False)
    metadata = fields.Nested(SendRequest, required=True)
    created_at = _when("When the event was created.")
    updated_at = _when("When the event was last changed.")
    run_count = fields.Integer(required=True)
    last_run = fields.Nested(InstanceSummary, required=True, allow_none=True)
    catchup_window = fields.Integer(required=True, metadata={"description": "Seconds."})
    overlap = fields.String(required=True, validate=validate.OneOf(["skip", "allow"]))
    retries = fields.Integer(required=True)
    labels = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    alerts = fields.List(fields.Nested(lambda: AlertTarget()), required=True)
    jitter = fields.Integer(required=True, metadata={"description": "Seconds."})
    start_at = _when("No occurrence before it.", required=False)
    end_at = _when("No occurrence after it.", required=False)
    max_runs = fields.Integer(required=True, allow_none=True)
    dst = fields.String(required=True, validate=validate.OneOf(DST_POLICIES))


class PreviewedEventRecord(EventRecord):
    """create_scheduled_event's record; ``next_runs`` only with ``"preview": true``."""

    next_runs = fields.List(
        fields.DateTime(), metadata={"description": "The next five runs, in UTC."}
    )


class UpdatedEventRecord(EventRecord):
    """update_scheduled_event's record, which repeats the schedule as ``frequency``."""

    frequency = fields.String(required=True)


class EventSummary(Schema):
    """One entry of create_scheduled_events' ``response.message`` (``Event.summary()``)."""

    uid = fields.String(required=True)
    id = fields.UUID(metadata={"description": "sendbeat adds the event's id to the seed's shape."})
    status = fields.String(required=True, validate=validate.OneOf(EVENT_STATUSES))
    schedule = fields.String(required=True)
    event_type = fields.String(required=True, validate=validate.OneOf(EVENT_TYPES))
    scheduled_at = _when("The next run in UTC.", required=False)


class WebhookAnswer(Schema):
    status = fields.Integer(required=True, metadata={"description": "The receiver's 2xx."})
    body = fields.String(required=True, metadata={"description": "Its first KB."})


class DeliveryResult(Schema):
    message_id = fields.String(required=True, allow_none=True)
    accepted = fields.List(fields.String(), required=True)
    rejected = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        required=True,
        metadata={"description": "Address -> the mail server's reason."},
    )
    webhook = fields.Nested(WebhookAnswer, metadata={"description": "With a webhook."})


class InstanceRecord(Schema):
    """One execution record (``Instance.record()``)."""

    uid = fields.String(required=True, metadata={"description": "The execution id."})
    event_uid = fields.String(required=True, allow_none=True)
    event_id = fields.UUID(required=True, allow_none=True)
    trigger = fields.String(required=True, validate=validate.OneOf(TRIGGERS))
    status = fields.String(required=True, validate=validate.OneOf(INSTANCE_STATUSES))
    scheduled_for = _when("When the occurrence was due.")
    enqueued_at = _when("When it was handed to the broker.")
    started_at = _when("When a worker started it.", required=False)
    completed_at = _when("When it finished.", required=False)
    attempts = fields.Integer(required=True)
    error = fields.String(required=True, allow_none=True)
    result = fields.Nested(DeliveryResult, required=True, allow_none=True)
    alerts = fields.List(
        fields.Nested(AlertOutcome), metadata={"description": "The alerts it sent, if any."}
    )
    nominal_for = fields.DateTime(
        metadata={"description": "A jittered occurrence's own time (its schedule's); "
                  "`scheduled_for` is when its jitter made it due. Only with jitter."}
    )  # fmt: skip


# The messaging dialect's envelopes.


class OkStatus(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok"]))
    uid = fields.String(
        required=True, allow_none=True, metadata={"description": "The request's uid."}
    )


class ErrorStatus(Schema):
    status = fields.String(required=True, validate=validate.OneOf(MESSAGING_ERROR_CODES))
    uid = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The request's uid as it was sent, or null."},
    )
    message = fields.String(required=True)


class ErrorList(Schema):
    errors = fields.List(
        fields.String(),
        required=True,
        metadata={"description": 'One "field: what is wrong" per problem.'},
    )


class MessagingError(Schema):
    """The messaging dialect's error envelope."""

    response = fields.Nested(ErrorStatus, required=True)
    data = fields.Nested(ErrorList, required=True)


class EventReply(Schema):
    response = fields.Nested(OkStatus, required=True)
    data = fields.Nested(EventRecord, required=True)


class PreviewedEventReply(Schema):
    response = fields.Nested(OkStatus, required=True)
    data = fields.Nested(PreviewedEventRecord, required=True)


class UpdatedEventReply(Schema):
    response = fields.Nested(OkStatus, required=True)
    data = fields.Nested(UpdatedEventRecord, required=True)


class BatchStatus(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok"]))
    message = fields.List(
        fields.Nested(EventSummary), required=True, metadata={"description": "In request order."}
    )


class BatchReply(Schema):
    """create_scheduled_events' answer: the list sits under ``response.message``, no data."""

    response = fields.Nested(BatchStatus, required=True)


class Deleted(Schema):
    uid = fields.String(required=True)
    deleted = fields.Boolean(required=True, validate=validate.OneOf([True]))


class DeletedReply(Schema):
    response = fields.Nested(OkStatus, required=True)
    data = fields.Nested(Deleted, required=True)


class EventList(Schema):
    scheduled_events = fields.List(fields.Nested(EventRecord), required=True)
    page = fields.Integer(required=True)
    per_page = fields.Integer(required=True)
    total = fields.Integer(required=True)


class EventListReply(Schema):
    response = fields.Nested(OkStatus, required=True)
    data = fields.Nested(EventList, required=True)


class InstanceList(Schema):
    scheduled_event_instances = fields.List(
        fields.Nested(InstanceRecord), required=True, metadata={"description": "Newest first."}
    )
    page = fields.Integer(required=True)
    per_page = fields.Integer(required=True)
    total = fields.Integer(required=True)


class InstanceListReply(Schema):
    response = fields.Nested(OkStatus, required=True)
    data = fields.Nested(InstanceList, required=True)


class BulkResult(Schema):
    uid = fields.String(required=True)
    id = fields.UUID(required=True)
    status = fields.String(
        validate=validate.OneOf([*EVENT_STATUSES, "deleted", "queued"]),
        metadata={"description": 'After the action: the event\'s status, "deleted", or '
                  'the new execution\'s "queued" (trigger). Absent with `error`.'},
    )  # fmt: skip
    execution = fields.String(metadata={"description": "trigger: the new execution's id."})
    error = fields.String(metadata={"description": "Why the action failed for this event."})


class BulkResults(Schema):
    results = fields.List(
        fields.Nested(BulkResult), required=True, metadata={"description": "Oldest event first."}
    )


class BulkReply(Schema):
    response = fields.Nested(OkStatus, required=True)
    data = fields.Nested(BulkResults, required=True)


class BackfillReply(Schema):
    response = fields.Nested(OkStatus, required=True)
    data = fields.Nested(BackfilledWithUid, required=True)


class QueuedMessage(Schema):
    id = fields.String(required=True, metadata={"description": "The execution id."})
    status = fields.String(required=True, validate=validate.OneOf(INSTANCE_STATUSES))


class SentMessage(Schema):
    message = fields.Nested(QueuedMessage, required=True)


class SendReply(Schema):
    response = fields.Nested(OkStatus, required=True)
    data = fields.Nested(SentMessage, required=True)


# The schedules dialect's answers.


class ScimError(Schema):
    """The schedules dialect's error envelope."""

    detail = fields.String(required=True)
    schemas = fields.List(
        fields.String(validate=validate.OneOf([SCIM_ERROR_URN])),
        required=True,
        validate=validate.Length(equal=1),
    )
    status = fields.Integer(required=True, metadata={"description": "The HTTP status."})


class Success(Schema):
    success = fields.Boolean(required=True, validate=validate.OneOf([True]))


class PageInfo(Schema):
    hasNextPage = fields.Boolean(required=True)
    nextCursor = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Give it as `cursor` for the next page; null on the last."},
    )
    pageSize = fields.Integer(required=True)
    totalRecords = fields.Integer(required=True)


class SchedulesPage(Schema):
    pageInfo = fields.Nested(PageInfo, required=True)
    records = fields.List(fields.Nested(EventRecord), required=True)


class ExecutionsPage(Schema):
    pageInfo = fields.Nested(PageInfo, required=True)
    records = fields.List(
        fields.Nested(InstanceRecord), required=True, metadata={"description": "Newest first."}
    )


class Recipient(Schema):
    """An email address, or a webhook destination."""

    email = fields.String()
    webhook = fields.String(metadata={"description": "The URL a webhook delivers to."})


class Recipients(Schema):
    recipients = fields.List(fields.Nested(Recipient), required=True)
    total = fields.Integer(required=True)


# The operators' endpoints.


class Health(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok"]))


class Readiness(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ready", "not ready"]))
    checks = fields.Dict(
        keys=fields.String(validate=validate.OneOf(["redis", "broker", "beat"])),
        values=fields.String(),
        required=True,
        metadata={"description": 'Each check\'s result: "ok", or why it failed.'},
    )
