"""sendbeat's web process: the Flask app factory (``create_app``).

``flask --app app ...`` finds the factory here; gunicorn runs ``app:create_app()``.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from app.api import limits, messaging, openapi, ops, schedules
from app.api.common import Services
from app.cli import project_cli
from app.core import logs
from app.core.health import warn_about_redis
from app.core.keys import Keys
from app.core.publisher import Publisher
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
    store = store or Store(
        connect(settings.redis_url),
        Keys(settings.key_prefix),
        retention_days=settings.retention_days,
    )
    publisher = publisher or Publisher(
        settings.effective_broker_url, settings.queue, store_url=settings.redis_url
    )
    app.extensions["sendbeat"] = Services(settings, store, publisher)
    app.register_blueprint(messaging.bp)
    app.register_blueprint(schedules.bp)
    app.register_blueprint(openapi.bp)
    ops.install(app, settings, store)
    limits.install(app, settings, store.keys)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    app.cli.add_command(project_cli)
    warn_about_redis(store.redis, "web")
    return app


def _json_logs() -> None:
    """JSON lines from the app and from gunicorn's own loggers (their handlers are
    set up before the app is loaded)."""
    logs.configure("json")
    logs.use_json([logging.getLogger("gunicorn.error"), logging.getLogger("gunicorn.access")])


def _schedules_path() -> bool:
    return request.path.startswith(schedules.BASES)


def _http_error(exc: HTTPException) -> Response:
    """Routing errors (unknown path, wrong method, body too large) in the right envelope."""
    status = exc.code or 500
    if _schedules_path():
        if status == 405:
            return schedules.problem(400, "Invalid method")
        return schedules.problem(status, _describe(exc))
    codes = {404: "not_found", 405: "bad_request", 413: "too_large"}
    if status == 413:
        return messaging.error(
            413,
            "too_large",
            f"The posted content is larger than {request.max_content_length} bytes.",
        )
    if status == 405:
        return messaging.error(400, "bad_request", "Use POST with a JSON body.")
    return messaging.error(status, codes.get(status, "bad_request"), _describe(exc))


def _describe(exc: HTTPException) -> str:
    if exc.code == 404:
        return f"Nothing at {request.path}."
    return exc.description or exc.name


def _unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    log.exception("unexpected error on %s %s", request.method, request.path)
    message = "Internal error; it has been logged."
    if _schedules_path():
        return schedules.problem(500, message)
    return messaging.error(500, "internal_error", message)
