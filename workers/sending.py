"""Running one execution: start it once, render, resolve remote content, deliver,
record the outcome. Plain functions over their dependencies; the Celery task in
``workers.tasks`` is a thin adapter over ``run_instance``."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from app.core import logs, metrics
from app.core.clock import now as clock_now
from app.core.errors import InvalidMessage, PermanentDeliveryError, TransientDeliveryError
from app.core.events import epoch
from app.core.message import render
from app.core.settings import Settings
from app.core.store import Instance, InstanceStatus, Store
from workers.remote import resolve_refs
from workers.transport import SendResult, Transport

log = logging.getLogger("sendbeat.worker")


@dataclass(frozen=True)
class Outcome:
    status: str  # the record's status after this run, or why nothing was done


def backoff(attempt: int, *, base: float = 2.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter, for the ``attempt``-th retry."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def run_instance(
    store: Store,
    transport: Transport,
    settings: Settings,
    instance_id: str,
    *,
    lease: int,
    clock: Any = clock_now,
) -> Outcome:
    status, attempts = store.start_instance(instance_id, epoch(clock()), lease)
    if status != "start":
        log.info("execution %s not started: it is %s", instance_id, status)
        return Outcome(status)
    started = time.monotonic()
    instance = store.instance(instance_id)
    assert instance is not None
    logs.bind(event_id=instance.event_id)
    arguments, retries = _arguments(store, instance, settings)
    if arguments is None:
        store.finish_instance(
            instance,
            InstanceStatus.CANCELLED,
            epoch(clock()),
            error="The scheduled event was deleted.",
        )
        _observe(store, InstanceStatus.CANCELLED, None)
        return Outcome(InstanceStatus.CANCELLED)
    try:
        result = _deliver(store, transport, settings, instance, arguments, clock)
    except TransientDeliveryError as exc:
        if attempts <= retries:
            store.retry_instance(instance.id, exc.message, time.time() + backoff(attempts))
            _observe(store, InstanceStatus.RETRYING, started)
            return Outcome(InstanceStatus.RETRYING)
        return _fail(store, instance, exc.message, clock, started)
    except (PermanentDeliveryError, InvalidMessage) as exc:
        return _fail(store, instance, exc.message, clock, started)
    store.finish_instance(instance, InstanceStatus.SUCCEEDED, epoch(clock()), result=result)
    _observe(store, InstanceStatus.SUCCEEDED, started)
    return Outcome(InstanceStatus.SUCCEEDED)


def _fail(store: Store, instance: Instance, error: str, clock: Any, started: float) -> Outcome:
    store.finish_instance(instance, InstanceStatus.FAILED, epoch(clock()), error=error)
    _observe(store, InstanceStatus.FAILED, started)
    return Outcome(InstanceStatus.FAILED)


def _observe(store: Store, status: str, started: float | None) -> None:
    """Count the outcome and time the attempt; the record is already written, so a
    metrics failure is logged, not raised."""
    seconds = None if started is None else time.monotonic() - started
    try:
        metrics.record_send(store.redis, store.keys, status, seconds)
    except RedisError as exc:
        log.warning("could not record metrics for %s: %s", status, exc)


def _arguments(store: Store, instance: Instance, settings: Settings) -> tuple[Any, int]:
    """The send_message arguments to use, read at send time, and the retry budget."""
    if not instance.event_id:
        return instance.payload, settings.default_retries
    event = store.event_by_id(instance.project_id, instance.event_id)
    if event is None:
        return None, 0
    return event.metadata.get("arguments"), event.retries


def _deliver(
    store: Store,
    transport: Transport,
    settings: Settings,
    instance: Instance,
    arguments: Any,
    clock: Any,
) -> dict[str, Any]:
    resolved = resolve_refs(arguments, settings=settings)
    if not isinstance(resolved, dict):
        raise InvalidMessage("arguments: expected an object")
    envelopes = render(resolved, now=clock(), mail_domain=settings.mail_domain)
    delivered = list(instance.delivered)
    results: list[SendResult] = []
    for envelope in envelopes:
        if envelope.recipient in delivered:
            continue  # accepted on an earlier attempt; never send a copy twice
        # Lets a reader (and the tests) tie each email to its execution record.
        envelope.message["X-Sendbeat-Instance"] = instance.id
        results.append(transport.send(envelope))
        delivered.append(envelope.recipient)
        store.record_delivered(instance.id, delivered)
    return _result(instance, results)


def _result(instance: Instance, results: list[SendResult]) -> dict[str, Any]:
    earlier = instance.result or {}
    accepted = list(earlier.get("accepted", []))
    rejected = dict(earlier.get("rejected", {}))
    for result in results:
        accepted.extend(result.accepted)
        rejected.update(result.rejected)
    message_id = results[0].message_id if results else earlier.get("message_id")
    return {"message_id": message_id, "accepted": accepted, "rejected": rejected}
