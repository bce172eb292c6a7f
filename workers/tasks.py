"""Celery tasks: thin adapters over ``workers.sending``."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.exceptions import Reject
from redis.exceptions import RedisError

from app.core.publisher import SEND_MESSAGE_TASK
from workers.context import context_for
from workers.sending import run_instance


@shared_task(name=SEND_MESSAGE_TASK, bind=True)
def send_message(self: Any, instance_id: str) -> str:
    context = context_for(self.app.sendbeat_settings)
    try:
        outcome = run_instance(
            context.store,
            context.transport,
            context.settings,
            instance_id,
            lease=context.settings.send_lease,
        )
    except RedisError as exc:
        # Redis stayed unreachable: hand the task back rather than ack it, or an execution
        # never started would stay queued (one started is handed over when its lease ends).
        raise Reject(exc, requeue=True) from exc
    # A retry waits in Redis ({p}:retry) and beat publishes it when due: no broker ETA,
    # so no re-delivery when a long countdown outlives the visibility timeout.
    return outcome.status
