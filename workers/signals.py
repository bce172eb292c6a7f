"""Celery signal receivers for operating the worker and beat: JSON logs when
``SENDBEAT_LOG_FORMAT=json``, the execution id in the log context while a task runs,
and the start-up check of the Redis server's persistence and eviction settings.

Celery's signals are process-wide, so the receivers are connected once, on import,
and read the settings of the current Celery app.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    beat_init,
    celeryd_after_setup,
    task_postrun,
    task_prerun,
)

from app.core import logs
from app.core.health import warn_about_redis
from app.core.layout import EX_CONFIG
from app.core.layout import refusal as layout_refusal
from app.core.settings import Settings
from workers.context import context_for


def _settings() -> Settings | None:
    return getattr(current_app, "sendbeat_settings", None)


@after_setup_logger.connect(weak=False)
@after_setup_task_logger.connect(weak=False)
def _json_handlers(logger: logging.Logger, **_: Any) -> None:
    """Celery has set up its handlers (stderr); in JSON mode, give them our formatter."""
    settings = _settings()
    if settings is not None and settings.log_format == "json":
        logs.use_json([logger])


@task_prerun.connect(weak=False)
def _bind_task(task_id: str, **_: Any) -> None:
    # A send_message task's id is its execution record's id (app.core.publisher).
    logs.clear()
    logs.bind(instance_id=task_id)


@task_postrun.connect(weak=False)
def _unbind_task(**_: Any) -> None:
    logs.clear()


@celeryd_after_setup.connect(weak=False)
def _check_redis_for_worker(**_: Any) -> None:
    _check_redis("worker")


@beat_init.connect(weak=False)
def _check_redis_for_beat(**_: Any) -> None:
    _check_redis("beat")


def _check_redis(process: str) -> None:
    settings = _settings()
    if settings is None:
        return
    store = context_for(settings).store
    if layout_refusal(store.redis, store.keys, process) is not None:
        # Refuse to start: writing this store's keys under another layout would split it.
        raise SystemExit(EX_CONFIG)
    warn_about_redis(store.redis, process)
