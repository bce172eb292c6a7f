"""Webhook deliveries (issue 13): the ``webhook`` argument of a send_message request, its
validation, the body a delivery posts, and its signature per the Standard Webhooks
convention (https://www.standardwebhooks.com): ``webhook-id`` (the execution's id, the
same on every retry: an idempotency key), ``webhook-timestamp`` (epoch seconds) and
``webhook-signature``: ``v1,`` + base64 of HMAC-SHA256 over ``id.timestamp.body`` keyed
with the project's secret (``whsec_`` + base64 of random bytes).

Pure: the HTTP call is the worker's (``workers.webhooks``); the argument's validation is
with the other arguments' (``app.core.message``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from typing import Any

from app.core.message import PLACEHOLDER, substitute

SECRET_PREFIX = "whsec_"
# What a project's default alert URL hears of, for events without alerts of their own.
DEFAULT_ALERT_KINDS = ("failed", "missed")
SECRET_BYTES = 32
RESPONSE_KEPT_BYTES = 1024  # of a response's body, in the execution record


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def render_body(body: object, variables: Mapping[str, Any]) -> bytes:
    """The JSON a delivery posts: ``body`` (already resolved: no ``$ref`` left) with
    ``{{variable}}`` placeholders in its strings replaced by the message's global
    variables, as in email content (a string that is only a placeholder takes the
    variable's JSON value)."""

    def fill(value: object) -> object:
        if isinstance(value, str):
            whole = PLACEHOLDER.fullmatch(value)
            if whole and whole.group(1) in variables:
                return variables[whole.group(1)]
            return substitute(value, variables)
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        if isinstance(value, list):
            return [fill(item) for item in value]
        return value

    filled = fill({} if body is None else body)
    return json.dumps(filled, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def destination(webhook: object) -> str | None:
    """The URL a webhook argument delivers to (for listing), or None."""
    if isinstance(webhook, dict) and isinstance(webhook.get("url"), str):
        return str(webhook["url"])
    return None
