"""What both HTTP dialects share: the services a view calls, authentication, the errors
of HTTP itself, reading a JSON body within its bounds, and flattening marshmallow errors
into "field: message" strings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import current_app, g, request
from werkzeug.exceptions import HTTPException

from app.api.declare import Example
from app.core.errors import SendbeatError, Unauthorized, ValidationError
from app.core.events import Defaults
from app.core.message import SURROGATE
from app.core.publisher import Publisher
from app.core.settings import Settings
from app.core.store import Store

UNAUTHORIZED = "Invalid or inactive project API key used."
INTERNAL = "Internal error; it has been logged."
UNAVAILABLE = (
    "The store is unreachable for the moment (a Redis restart or failover);"
    " try again in a few seconds."
)
RETRY_AFTER = 5  # seconds: a Sentinel failover takes ~5 s
# How the document shows a broker that refused a job (the reason varies).
DISPATCH_FAILED = "Dispatcher error: Error 111 connecting to redis:6379. Connection refused."
# Deeper than any real request (send_message arguments nest five or six levels); a
# bound so that no body can make a parser, a walk or a renderer recurse without end.
MAX_JSON_DEPTH = 32


class InvalidJson(SendbeatError):
    """Raised when the posted content is not JSON (or is empty though it says it is)."""

    status = 406
    code = "invalid_json"

    def __init__(self) -> None:
        super().__init__("The posted content is not valid JSON.")


class InvalidUtf8(SendbeatError):
    """Raised when the posted content is not UTF-8."""

    status = 406
    code = "invalid_utf8"

    def __init__(self) -> None:
        super().__init__("The posted content is not valid UTF-8.")


class TooLarge(SendbeatError):
    """Raised when the posted content is larger than ``SENDBEAT_MAX_BODY_BYTES``."""

    status = 413
    code = "too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The posted content is larger than {limit} bytes.")


class RateLimited(SendbeatError):
    """Raised when a key (or an address without one) spent its budget of requests
    (``SENDBEAT_RATE_LIMIT_*``); ``Retry-After`` says when to try again."""

    status = 429
    code = "rate_limited"


class InvalidMethod(ValidationError):
    """Raised when a known path is called with an HTTP method it does not take (400, as
    both dialects' pages answer, not 405)."""


class NoSuchPath(SendbeatError):
    """Raised when nothing is served at the requested path."""

    status = 404
    code = "not_found"


class Internal(SendbeatError):
    """Raised (as a stand-in) for a fault of ours: logged, answered without a traceback."""

    def __init__(self) -> None:
        super().__init__(INTERNAL)


class Unavailable(SendbeatError):
    """Raised (as a stand-in) when Redis cannot be reached: the request changed nothing
    the client can rely on, and the same request may be made again shortly (the answer
    says when, in Retry-After)."""

    status = 503
    code = "unavailable"

    def __init__(self) -> None:
        super().__init__(UNAVAILABLE)


class StoreRefused(SendbeatError):
    """The store holds a key layout this version does not read (app.core.layout): the
    web serves nothing until the operator migrates it or fixes the setting."""

    status = 503
    code = "unavailable"


def common_errors() -> dict[str, Example]:
    """What any endpoint of either dialect can answer, as the document shows it."""
    return {
        "unauthorized": Example(Unauthorized(UNAUTHORIZED)),
        "rate_limited": Example(RateLimited("Rate limit exceeded: 60 per 1 minute")),
        "unavailable": Example(Unavailable()),
        "internal": Example(Internal()),
    }


@dataclass
class Services:
    settings: Settings
    store: Store
    publisher: Publisher
    refusal: str | None = None  # why the store is not used (app.core.layout), if it is not

    @property
    def defaults(self) -> Defaults:
        settings = self.settings
        return Defaults(
            settings.default_catchup_window, settings.default_retries, settings.message_limits
        )


def services() -> Services:
    return current_app.extensions["sendbeat"]


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def authenticate(body_key: object = None) -> str:
    """The project id the request's key names (body ``api_key`` or Bearer)."""
    key = body_key if isinstance(body_key, str) and body_key else bearer_token()
    project_id = services().store.project_for_key(key) if key else None
    if project_id is None:
        raise Unauthorized(UNAUTHORIZED)
    return project_id


def json_body() -> Any:
    """The request's JSON body, parsed once per request: None when it is empty (and does
    not say it is JSON). Raises InvalidUtf8, InvalidJson, or ValidationError when it nests
    deeper than MAX_JSON_DEPTH or holds a string that is not Unicode text (a lone
    surrogate), so no later step can fail on it."""
    if "sendbeat_body" not in g:
        g.sendbeat_body = _parse(request.get_data(cache=True), request.is_json)
    return g.sendbeat_body


def peek_json_body() -> Any:
    """json_body(), or None when it is not valid: for echoing a uid in an error answer
    and for the rate limit's key, which must never fail themselves."""
    try:
        return json_body()
    except (SendbeatError, HTTPException):  # HTTPException: the body is too large to read
        return None


def _parse(raw: bytes, says_json: bool) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidUtf8() from None
    if not text.strip():
        if says_json:
            raise InvalidJson()
        return None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise too_deep() from None
    except ValueError:
        raise InvalidJson() from None
    _check_json(value)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


NOT_AN_OBJECT = "The posted JSON must be an object with the method's fields."


def too_deep() -> ValidationError:
    return ValidationError(f"The posted JSON nests deeper than {MAX_JSON_DEPTH} levels.")


def _check_json(value: Any) -> None:
    """Walk the document without recursion: its depth, and every key and string in it."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item, path)
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise too_deep()
        if isinstance(item, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
            continue
        for key, child in item.items():
            child_path = f"{path}.{key}" if path else key
            _check_text(key, path)
            stack.append((child, child_path, depth + 1))


def _check_text(text: str, path: str) -> None:
    found = None if text.isascii() else SURROGATE.search(text)
    if found is not None:
        where = f"{path[:200]}: " if path else ""
        escape = f"\\u{ord(found.group()):04x}"
        raise ValidationError(
            f"{where}contains an unpaired surrogate ({escape}); send Unicode text"
        )


def flatten_errors(messages: Any, path: str = "") -> list[str]:
    """marshmallow's nested error dict as ["events[3].schedule: ...", ...]."""
    if isinstance(messages, dict):
        out: list[str] = []
        for key, value in messages.items():
            part = f"[{key}]" if isinstance(key, int) else (f".{key}" if path else str(key))
            out.extend(flatten_errors(value, path + part))
        return out
    if isinstance(messages, list):
        flat: list[str] = []
        for item in messages:
            flat.extend(flatten_errors(item, path))
        return flat
    text = str(messages)
    return [f"{path}: {text}" if path else text]
