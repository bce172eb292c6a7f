"""The Celery application, built from sendbeat's settings (``create_celery``).

Importing this module connects the operations receivers of ``workers.signals``
(JSON logs, task log context, the Redis start-up check)."""

from __future__ import annotations

from celery import Celery

from app.core.publisher import kombu_broker, task_queue
from app.core.settings import Settings
from workers import signals  # noqa: F401  (connects the receivers)


def create_celery(settings: Settings) -> Celery:
    broker, transport_options = kombu_broker(settings.effective_broker_url)
    celery = Celery("sendbeat", broker=broker, set_as_current=True)
    celery.conf.update(
        task_default_queue=settings.queue,
        task_queues=[task_queue(settings.queue)],
        # A worker killed mid-send hands the message back instead of losing it; the
        # execution record (start.lua) makes sure it is still sent only once.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Command-line flags (--pool, --concurrency) still win over these.
        worker_pool=settings.worker_pool,
        worker_concurrency=settings.worker_concurrency,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        # A message a dead worker had reserved but not started comes back after this.
        # No task waits in the broker (retries wait in Redis), so it can be short; a
        # copy delivered while the first still runs is skipped by start.lua.
        broker_transport_options={
            **transport_options,
            "visibility_timeout": settings.visibility_timeout,
        },
        beat_scheduler="workers.beat:SendbeatScheduler",
        beat_max_loop_interval=settings.beat_max_sleep,
        worker_hijack_root_logger=False,
        # Task events cost the worker three broker writes per task: off until a monitor
        # asks (Flower turns them on by itself; `celery control enable_events` does too).
        worker_send_task_events=False,
        imports=["workers.tasks"],
        timezone="UTC",
        enable_utc=True,
    )
    celery.sendbeat_settings = settings
    return celery
