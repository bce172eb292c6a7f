"""What both HTTP dialects share: the services a view calls, authentication, and
flattening marshmallow errors into "field: message" strings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app, request

from app.core.errors import Unauthorized
from app.core.events import Defaults
from app.core.publisher import Publisher
from app.core.settings import Settings
from app.core.store import Store

UNAUTHORIZED = "Invalid or inactive project API key used."


@dataclass
class Services:
    settings: Settings
    store: Store
    publisher: Publisher

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
