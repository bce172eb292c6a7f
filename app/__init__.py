"""sendbeat's web process: the Flask app factory (``create_app``).

``flask --app app ...`` finds the factory here; gunicorn runs ``app:create_app()``.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge
from werkzeug.exceptions import NotFound as NotFoundHttp

from app.api import limits, messaging, openapi, ops, schedules
from app.api.common import (
    RETRY_AFTER,
    Internal,
    InvalidMethod,
    NoSuchPath,
    Services,
    StoreRefused,
    TooLarge,
    Unavailable,
)
from app.cli import project_cli, store_cli
from app.core import logs
from app.core.errors import SendbeatError
from app.core.health import warn_about_redis
from app.core.keys import Keys
from app.core.layout import refusal as layout_refusal
from app.core.publisher import Publisher, reason
from app.core.redis_client import connect
from app.core.settings import Settings
from app.core.store import Store

log = logging.getLogger("sendbeat.web")


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    publisher: Publisher | None = None,
) -> Flask:
    settings = settings or Settings.from_env()
    if settings.log_format == "json":
        _json_logs()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    given = store is not None
    store = store or Store(
        connect(settings.redis_url),
        Keys(settings.key_prefix, settings.store_shards),
        retention_days=settings.retention_days,
        replicas=settings.redis_replicas,
    )
    publisher = publisher or Publisher(
        settings.effective_broker_url,
        settings.queue,
        store_url=settings.redis_url,
        batch=settings.task_batch,
    )
    refusal = None if given else layout_refusal(store.redis, store.keys, "web")
    app.extensions["sendbeat"] = Services(settings, store, publisher, refusal)
    if refusal is not None:
        app.before_request(lambda: _render(StoreRefused(refusal)))
    app.register_blueprint(messaging.bp)
    app.register_blueprint(schedules.bp)
    app.register_blueprint(openapi.bp)
    ops.install(app, settings, store)
    limits.install(app, settings, store.keys)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    app.cli.add_command(project_cli)
    app.cli.add_command(store_cli)
    warn_about_redis(store.redis, "web")
    return app


def _json_logs() -> None:
    """JSON lines from the app and from gunicorn's own loggers (their handlers are
    set up before the app is loaded)."""
    logs.configure("json")
    logs.use_json([logging.getLogger("gunicorn.error"), logging.getLogger("gunicorn.access")])


def _schedules_path() -> bool:
    return request.path.startswith(schedules.BASES)


def _render(exc: SendbeatError) -> Response:
    """An error in the envelope of the dialect the path belongs to."""
    if _schedules_path():
        return schedules.problem(exc)
    return messaging.error(exc, messaging.request_uid())


def _http_error(exc: HTTPException) -> Response:
    """Routing errors (unknown path, wrong method, body too large) in the right envelope."""
    return _render(_as_error(exc))


def _as_error(exc: HTTPException) -> SendbeatError:
    if isinstance(exc, RequestEntityTooLarge):
        return TooLarge(request.max_content_length or 0)
    if isinstance(exc, MethodNotAllowed):
        return InvalidMethod(
            "Invalid method" if _schedules_path() else "Use POST with a JSON body."
        )
    if isinstance(exc, NotFoundHttp):
        return NoSuchPath(f"Nothing at {request.path}.")
    error = SendbeatError(exc.description or exc.name)
    error.status = exc.code or 500
    error.code = "bad_request" if error.status < 500 else "internal_error"
    return error


def _unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, ReadOnlyError)):
        log.warning(
            "Redis unreachable on %s %s: %s", request.method, request.path, reason(exc)[:300]
        )
        response = _render(Unavailable())
        response.headers["Retry-After"] = str(RETRY_AFTER)
        return response
    log.exception("unexpected error on %s %s", request.method, request.path)
    return _render(Internal())
