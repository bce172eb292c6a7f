"""Per-key rate limits of the two dialects (Flask-Limiter, counters in the store's
Redis under ``{p}:ratelimit``, so every web process shares them), and their 429
answer in each dialect's envelope with ``Retry-After``.

The key is the request's API key (body ``api_key``, else the Bearer token), hashed:
the key itself is never stored. A request without one is counted by its address.
"""

from __future__ import annotations

import math
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded

from app.api import messaging, schedules
from app.api.common import RateLimited, bearer_token, peek_json_body
from app.core.keys import Keys
from app.core.redis_client import ClusterUrl, SentinelUrl
from app.core.settings import Settings
from app.core.store import key_digest


def install(app: Flask, settings: Settings, keys: Keys) -> Limiter | None:
    """Limit the dialects' blueprints as the settings say; None when both are off."""
    limits: dict[Blueprint, str] = {
        messaging.bp: settings.rate_limit_messaging,
        schedules.bp: settings.rate_limit_schedules,
    }
    limits = {bp: value for bp, value in limits.items() if value.strip().lower() != "none"}
    if not limits:
        return None
    limiter = Limiter(
        client_key,
        app=app,
        storage_uri=storage_uri(settings.redis_url),
        storage_options={"key_prefix": keys.rate_limits, **storage_options(settings.redis_url)},
        strategy="moving-window",
    )
    for blueprint, value in limits.items():
        # Shared: one budget per key across every path of the dialect.
        limiter.shared_limit(value, scope=blueprint.name)(blueprint)
    app.extensions["sendbeat-limiter"] = limiter
    app.register_error_handler(RateLimitExceeded, rate_limited)
    return limiter


def storage_uri(redis_url: str) -> str:
    """The ``limits`` library's name for the same Redis (it spells sockets redis+unix, and
    a Sentinel URL without its database; a Cluster URL is the same)."""
    sentinel = SentinelUrl.parse(redis_url)
    if sentinel is not None:
        return sentinel.limits()[0]
    cluster = ClusterUrl.parse(redis_url)
    if cluster is not None:
        return cluster.limits()[0]
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":
        return "redis+unix" + redis_url[len("unix") :]
    return redis_url


def storage_options(redis_url: str) -> dict[str, Any]:
    sentinel = SentinelUrl.parse(redis_url)
    return {} if sentinel is None else sentinel.limits()[1]


def client_key() -> str:
    key = _body_key() or bearer_token()
    if key:
        return "key:" + key_digest(key)
    return "addr:" + (request.remote_addr or "unknown")


def _body_key() -> str | None:
    body = peek_json_body()
    key = body.get("api_key") if isinstance(body, dict) else None
    return key if isinstance(key, str) and key else None


def rate_limited(exc: RateLimitExceeded) -> Response:
    error = RateLimited(f"Rate limit exceeded: {exc.description}")
    if request.blueprint == schedules.bp.name:
        response = schedules.problem(error)
    else:
        response = messaging.error(error, messaging.request_uid())
    response.headers["Retry-After"] = str(retry_after())
    return response


def retry_after() -> int:
    """Whole seconds until the breached limit lets one more request through."""
    limiter: Limiter = current_app.extensions["sendbeat-limiter"]
    current = limiter.current_limit
    if current is None:
        return 1
    return max(1, math.ceil(current.window[0] - time.time()))
