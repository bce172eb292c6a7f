"""The Celery application, built from sendbeat's settings (``create_celery``).

Importing this module connects the operations receivers of ``workers.signals``
(JSON logs, task log context, the Redis start-up check)."""

from __future__ import annotations

from celery import Celery

from app.core.publisher import kombu_broker, task_queue
from app.core.settings import Settings
from workers import signals  # noqa: F401  (connects the receivers)


def restore_options(visibility_timeout: int) -> dict[str, int]:
    """kombu's hand-back of what a dead worker had reserved and not acknowledged, at the
    pace of the visibility timeout. kombu looks for such messages every interval x
    throttle seconds, 10 x 10 by default: a message could wait 100 s past its timeout.
    Here every worker looks every fifth of the timeout (1 to 10 s; one small Redis read),
    hands back up to 200 messages a time, under a lock that a worker killed while
    holding it keeps for five looks at most (kombu's default: 300 s)."""
    interval = max(1, min(10, visibility_timeout // 5))
    return {
        "unacked_restore_interval": interval,
        "unacked_restore_throttle": 1,
        "unacked_restore_limit": 200,
        "unacked_mutex_expire": 5 * interval,
    }


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
            **restore_options(settings.visibility_timeout),
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
