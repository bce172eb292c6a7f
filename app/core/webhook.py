"""Webhook deliveries (issue 13): the ``webhook`` argument of a send_message request, its
validation, the body a delivery posts, and its signature per the Standard Webhooks
convention (https://www.standardwebhooks.com): ``webhook-id`` (the execution's id, the
same on every retry: an idempotency key), ``webhook-timestamp`` (epoch seconds) and
``webhook-signature``: ``v1,`` + base64 of HMAC-SHA256 over ``id.timestamp.body`` keyed
with the project's secret (``whsec_`` + base64 of random bytes).

Pure: the HTTP call is the worker's (``workers.webhooks``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterator, Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
# What a project's default alert URL hears of, for events without alerts of their own.
DEFAULT_ALERT_KINDS = ("failed", "missed")
SECRET_BYTES = 32
METHODS = ("POST", "PUT")
FIELDS = ("url", "method", "headers", "body")
MAX_URL_CHARS = 2048
MAX_HEADERS = 50
MAX_HEADER_NAME = 128
MAX_HEADER_VALUE = 8192
RESPONSE_KEPT_BYTES = 1024  # of a response's body, in the execution record
# Set by sendbeat on every delivery (or by the HTTP client), never by a caller.
RESERVED_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature",
                              "content-type", "content-length", "host",
                              "transfer-encoding", "connection"})  # fmt: skip
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_LINE_BREAK = re.compile(r"[\r\n\x00]")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def webhook_problems(value: object, path: str) -> Iterator[str]:
    """What is wrong with a ``webhook`` argument (its ``$ref``s are checked elsewhere)."""
    if not isinstance(value, dict):
        yield f"{path}: must be an object with url, and optionally method, headers, body"
        return
    for key in value:
        if key not in FIELDS:
            yield f"{path}.{key}: is not a known field (use {', '.join(FIELDS)})"
    url = value.get("url")
    if url is None:
        yield f"{path}.url: is required"
    elif not isinstance(url, str) or not _is_http_url(url):
        yield f"{path}.url: must be an http or https URL"
    elif len(url) > MAX_URL_CHARS:
        yield f"{path}.url: is {len(url):,} characters; the limit is {MAX_URL_CHARS:,}"
    if value.get("method", "POST") not in METHODS:
        yield f"{path}.method: must be POST or PUT"
    headers = value.get("headers", {})
    if not isinstance(headers, dict):
        yield f"{path}.headers: must be an object of header names to text values"
        return
    if len(headers) > MAX_HEADERS:
        yield f"{path}.headers: has {len(headers)} headers; the limit is {MAX_HEADERS}"
    for name, text in headers.items():
        where = f"{path}.headers.{name[:MAX_HEADER_NAME]}"
        if not _TOKEN.fullmatch(name) or len(name) > MAX_HEADER_NAME:
            yield f"{where}: is not a valid header name (1 to {MAX_HEADER_NAME} token characters)"
        elif name.lower() in RESERVED_HEADERS:
            yield f"{where}: is set by sendbeat"
        elif not isinstance(text, str):
            yield f"{where}: must be text"
        elif len(text) > MAX_HEADER_VALUE or _LINE_BREAK.search(text):
            yield f"{where}: must be at most {MAX_HEADER_VALUE:,} characters on one line"


def _is_http_url(url: str) -> bool:
    scheme, _, rest = url.partition("://")
    return scheme.lower() in ("http", "https") and bool(rest) and not rest.startswith("/")


def render_body(body: object, variables: Mapping[str, Any]) -> bytes:
    """The JSON a delivery posts: ``body`` (already resolved: no ``$ref`` left) with
    ``{{variable}}`` placeholders in its strings replaced by the message's global
    variables (a string that is only a placeholder takes the variable's JSON value)."""

    def fill(value: object) -> object:
        if isinstance(value, str):
            whole = _PLACEHOLDER.fullmatch(value)
            if whole and whole.group(1) in variables:
                return variables[whole.group(1)]
            return _PLACEHOLDER.sub(lambda m: _text(variables, m), value)
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        if isinstance(value, list):
            return [fill(item) for item in value]
        return value

    filled = fill({} if body is None else body)
    return json.dumps(filled, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _text(variables: Mapping[str, Any], match: re.Match[str]) -> str:
    name = match.group(1)
    if name not in variables:
        return match.group(0)
    value = variables[name]
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def destination(webhook: object) -> str | None:
    """The URL a webhook argument delivers to (for listing), or None."""
    if isinstance(webhook, dict) and isinstance(webhook.get("url"), str):
        return str(webhook["url"])
    return None
