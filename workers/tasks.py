"""Celery tasks: thin adapters over ``workers.sending``."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.exceptions import Reject
from redis.exceptions import RedisError

from app.core.errors import DispatchError
from app.core.publisher import ALERT_TASK, SEND_MESSAGE_TASK, parse_entry
from workers.alerts import send_alerts
from workers.context import Context, context_for
from workers.sending import run_instance

log = logging.getLogger(__name__)


@shared_task(name=SEND_MESSAGE_TASK, bind=True)
def send_message(self: Any, *entries: str) -> list[str]:
    """Run the executions of one task message (app.core.publisher: up to the batch size):
    the first on this thread, the others side by side on the process' senders."""
    if not entries:
        return []
    context = context_for(self.app.sendbeat_settings)
    first, *rest = entries
    others = [context.senders.submit(_send, context, entry) for entry in rest]
    outcomes: list[str] = []
    unreachable: RedisError | None = None
    for run in [lambda: _send(context, first), *(other.result for other in others)]:
        try:
            outcomes.append(run())
        except RedisError as exc:
            unreachable = exc
    if unreachable is not None:
        # Redis stayed unreachable: hand the task back rather than ack it, or an execution
        # never started would stay queued (one started is handed over when its lease
        # ends; those that ended are not sent again: start.lua).
        raise Reject(unreachable, requeue=True) from unreachable
    # A retry waits in Redis ({p}:retry) and beat publishes it when due: no broker ETA,
    # so no re-delivery when a long countdown outlives the visibility timeout.
    return outcomes


def _send(context: Context, entry: str) -> str:
    instance_id, event_id = parse_entry(entry)
    settings = context.settings
    outcome = run_instance(
        context.store,
        context.transport,
        settings,
        instance_id,
        lease=settings.send_lease,
        event_id=event_id,
        alert=context.publisher.publish_alert,
    )
    return outcome.status


@shared_task(name=ALERT_TASK, bind=True)
def alert(self: Any, instance_id: str, kind: str, attempt: str = "1") -> None:
    """Post an execution's ``kind`` alerts (workers.alerts); publish the next attempt of
    those that failed transiently."""
    context = context_for(self.app.sendbeat_settings)
    tried = int(attempt)
    wait = send_alerts(context.store, context.settings, instance_id, kind, tried)
    if wait is not None:
        try:
            context.publisher.publish_alert(instance_id, kind, tried + 1, delay=wait)
        except DispatchError as exc:  # the alert is lost; the send it is about is not
            log.warning("could not publish alert %s of %s again: %s", kind, instance_id, exc)
