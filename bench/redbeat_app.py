"""The Celery app the redbeat side of ``bench/dispatch.py`` runs beat with.

``celery --app redbeat_app beat -S redbeat.RedBeatScheduler`` (with ``bench/`` on
PYTHONPATH) loads ``app`` from the environment: REDIS_URL (broker and redbeat
store), REDBEAT_QUEUE (the queue tasks are routed to) and REDBEAT_KEY_PREFIX.
The benchmark builds the same app in-process with ``make_app`` to write entries.
Needs ``pip install celery-redbeat`` (not a sendbeat dependency).
"""

from __future__ import annotations

import os

from celery import Celery


def make_app(redis_url: str, queue: str, key_prefix: str) -> Celery:
    app = Celery("redbeat_bench", broker=redis_url, set_as_current=False)
    app.conf.update(
        redbeat_redis_url=redis_url,
        redbeat_key_prefix=key_prefix,
        task_default_queue=queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        beat_max_loop_interval=1.0,  # the same as sendbeat's SENDBEAT_BEAT_MAX_SLEEP
        timezone="UTC",
        enable_utc=True,
    )
    return app


app = make_app(
    os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("REDBEAT_QUEUE", "redbeat-bench"),
    os.environ.get("REDBEAT_KEY_PREFIX", "redbeat-bench:"),
)
