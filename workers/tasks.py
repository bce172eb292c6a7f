"""Celery tasks: thin adapters over ``workers.sending``."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from app.core.publisher import SEND_MESSAGE_TASK
from workers.celery_app import SEND_LEASE_SECONDS
from workers.context import context_for
from workers.sending import run_instance


@shared_task(name=SEND_MESSAGE_TASK, bind=True, max_retries=None)
def send_message(self: Any, instance_id: str) -> str:
    context = context_for(self.app.sendbeat_settings)
    outcome = run_instance(
        context.store, context.transport, context.settings, instance_id, lease=SEND_LEASE_SECONDS
    )
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.status
