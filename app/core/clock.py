"""The one clock. Everything that needs the time asks ``now()``; schedule maths takes
``now`` as an argument so tests pin the time instead of sleeping."""

from datetime import UTC, datetime


def now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def isoformat(moment: datetime | None) -> str | None:
    """ISO-8601 in UTC with an explicit ``+00:00`` offset, second precision."""
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(microsecond=0).isoformat()


def from_timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
