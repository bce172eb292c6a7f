"""The domain's exceptions. Each class's docstring says when it is raised, and each
carries the HTTP status (and the messaging dialect's status word) it answers with, so
each HTTP dialect only renders it in its own envelope."""

NO_SUCH_UID = "Can not find scheduled event from the given UID"


class SendbeatError(Exception):
    """Base of every error sendbeat raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors if errors is not None else [message]


class ValidationError(SendbeatError):
    """Raised when a request's content is wrong: a missing or malformed field."""

    status = 400
    code = "bad_request"


class InvalidSchedule(ValidationError):
    """Raised when a schedule string does not parse, names an unknown timezone,
    or is a one-time date that lies in the past."""


class InvalidMessage(ValidationError):
    """Raised when send_message arguments are malformed: bad addresses, a header
    with CR/LF, undecodable attachment content."""


class UidTaken(ValidationError):
    """Raised when an event or message uid is already used in the project
    (or twice in one batch)."""

    def __init__(self, uid: str, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message, errors)
        self.uid = uid


class Unauthorized(SendbeatError):
    """Raised when a request carries no API key, or one that is unknown or revoked."""

    status = 401
    code = "unauthorized"


class NotFound(SendbeatError):
    """Raised when an event is missing, or belongs to another project (never a 403)."""

    status = 404
    code = "not_found"


class EventGone(NotFound):
    """Raised when an event was deleted while a request was changing or triggering it."""

    def __init__(self) -> None:
        super().__init__(NO_SUCH_UID)


class Conflict(SendbeatError):
    """Raised when a manual trigger finds an occurrence of the same event still
    queued or running and the event's overlap policy is ``skip``."""

    status = 409
    code = "conflict"


class DispatchError(SendbeatError):
    """Raised when the broker cannot take a task; nothing is left claiming it is queued."""


class DeliveryError(SendbeatError):
    """Base of failures while delivering a message (``answer``: a webhook receiver's
    status and the start of its body, for the execution record)."""

    def __init__(self, message: str, *, answer: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.answer = answer


class TransientDeliveryError(DeliveryError):
    """Raised for failures worth retrying: connection errors, timeouts, SMTP 4xx,
    remote-content 5xx, a webhook's 408, 429 or 5xx (``retry_after``: the seconds its
    ``Retry-After`` asked for)."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        answer: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message, answer=answer)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Raised for failures that retrying cannot fix: SMTP 5xx, invalid addresses,
    undecodable or refused remote content."""
