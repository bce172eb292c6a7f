"""Running one execution: start it once, render, resolve remote content, deliver,
record the outcome. Plain functions over their dependencies; the Celery task in
``workers.tasks`` is a thin adapter over ``run_instance``.

A started execution is held by a lease (``Attempt``): a heartbeat renews it while the
worker sends, and every write of the execution shows the attempt's fencing token, so
a worker that lost its lease (it stalled, another took over) stops and writes nothing.
Every execution ends: whatever goes wrong in a run ends it ``failed`` with a readable
error, and the traceback goes to the log.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core import logs
from app.core.clock import from_timestamp
from app.core.errors import (
    DeliveryError,
    InvalidMessage,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from app.core.message import render, validate_arguments
from app.core.publisher import reason
from app.core.records import Instance, InstanceStatus
from app.core.scripts import Held, Start, Started
from app.core.settings import Settings
from app.core.store import Store
from app.core.webhook import render_body
from workers.remote import resolve_refs
from workers.transport import SendResult, Transport
from workers.webhooks import deliver as deliver_webhook

log = logging.getLogger("sendbeat.worker")

ERROR_CHARS = 500  # an error stored in a record is for reading, not a dump
# In an execution's ``delivered`` (beside the recipients' addresses): its webhook got a
# 2xx, so no later attempt posts it again.
WEBHOOK_SENT = "webhook"
# How long a worker waits for Redis to answer before it gives a task back to the broker.
START_PATIENCE = 30.0
FRESH = 1.0  # seconds after a confirmed hold during which another would tell nothing new
UNREACHABLE = (RedisConnectionError, RedisTimeoutError)


@dataclass(frozen=True)
class Outcome:
    status: str  # the record's status after this run, or why nothing was done


class Stopped(Exception):
    """Raised inside a send when its attempt must stop: it lost its lease, or its event
    was paused or deleted (``why``)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def backoff(attempt: int, *, base: float = 2.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter, for the ``attempt``-th retry."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


@dataclass(eq=False)
class Attempt:
    """One worker's hold on one execution: its fencing token and its lease, renewed by the
    process' ``Keeper`` every third of the lease while the send runs."""

    store: Store
    instance: Instance
    token: str
    lease: float
    begun: datetime  # by Redis' clock, as start.lua saw it: the copies' Date
    started: float = field(default_factory=time.monotonic)
    held_at: float = field(default_factory=time.monotonic)  # the last hold Redis confirmed
    lost: str = ""  # why this attempt must stop ("lost", "paused", "deleted")
    sent: list[SendResult] = field(default_factory=list)  # copies this attempt got accepted
    sent_to: list[str] = field(default_factory=list)  # their recipients
    # Publishes the task that sends a transition's alerts: (execution id, kind).
    alert: Callable[[str, str], None] | None = None

    def hold(self, delivered: list[str] | None = None, result: Any = None) -> None:
        """Renew the lease (recording the progress, when given); raise Stopped when the
        attempt lost the record or its event was paused or deleted."""
        if not self.lost:
            asked = time.monotonic()

            def renew() -> tuple[Held, str]:
                return self.store.hold(
                    self.instance.id, self.token, lease=self.lease, delivered=delivered,
                    result=result,
                )  # fmt: skip

            held, why = self.patiently(renew)
            if held is not Held.LOST:  # stop renews the lease too: the ending is ours
                self.held_at = max(self.held_at, asked)
            self.lost = "lost" if held is Held.LOST else why
        if self.lost:
            raise Stopped(self.lost)

    def fresh(self) -> bool:
        """Whether Redis confirmed this attempt's hold (its start, or a hold) within the
        last second: a hold now would tell nothing new."""
        return time.monotonic() - self.held_at < FRESH

    def patiently(self, write: Any) -> Any:
        """Make ``write`` while Redis is unreachable for a moment (a restart, a failover),
        for as long as the lease may still be ours: a copy the SMTP server accepted must
        be recorded, or the next attempt would send it again."""
        return patiently(write, until=self.held_at + self.lease)

    @contextmanager
    def kept(self) -> Iterator[None]:
        keeper = Keeper.of_this_process()
        keeper.add(self)
        try:
            yield
        finally:
            keeper.remove(self)

    def renew(self) -> bool:
        """The keeper's renewal, after a pause or delete too (the sender still has to
        finish its copy and record what it sent); False once the lease is lost."""
        asked = time.monotonic()
        try:
            held, _ = self.store.hold(self.instance.id, self.token, lease=self.lease)
        except Exception as exc:  # Redis away: the sender's own holds will tell
            log.warning("could not renew the lease of %s: %s", self.instance.id, reason(exc))
            return True
        if held is Held.LOST:
            return False
        self.held_at = max(self.held_at, asked)
        return True

    def took(self) -> float:
        return time.monotonic() - self.started


class Keeper:
    """Renews the leases of a process' running attempts, each every third of its lease:
    one thread for all of them, not one per send."""

    def __init__(self) -> None:
        self._due: dict[Attempt, float] = {}  # attempt -> when to renew it (monotonic)
        self._lock = threading.Lock()
        self._changed = threading.Event()
        threading.Thread(target=self._run, name="leases", daemon=True).start()

    @staticmethod
    def of_this_process() -> Keeper:
        """A forked pool process starts its own (a thread does not survive a fork)."""
        with _keepers_lock:
            pid = os.getpid()
            if pid not in _keepers:
                _keepers[pid] = Keeper()
            return _keepers[pid]

    def add(self, attempt: Attempt) -> None:
        with self._lock:
            self._due[attempt] = attempt.held_at + attempt.lease / 3
        self._changed.set()

    def remove(self, attempt: Attempt) -> None:
        with self._lock:
            self._due.pop(attempt, None)

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            with self._lock:
                due = [attempt for attempt, at in self._due.items() if at <= now]
            for attempt in due:
                renewed = attempt.renew()  # tried again a third of a lease later if Redis
                with self._lock:  # was away; the sender may have removed it meanwhile
                    if attempt in self._due:
                        if renewed:
                            self._due[attempt] = time.monotonic() + attempt.lease / 3
                        else:
                            del self._due[attempt]
            with self._lock:
                first = min(self._due.values(), default=None)
                self._changed.clear()
            self._changed.wait(None if first is None else max(0.0, first - time.monotonic()))


_keepers: dict[int, Keeper] = {}
_keepers_lock = threading.Lock()


def patiently(call: Any, *, until: float) -> Any:
    """``call()``, called again with a growing pause while Redis is unreachable, until the
    monotonic time ``until``; then the last error is raised."""
    pause = 0.1
    while True:
        try:
            return call()
        except UNREACHABLE:
            if time.monotonic() + pause > until:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def run_instance(
    store: Store,
    transport: Transport,
    settings: Settings,
    instance_id: str,
    *,
    lease: float,
    event_id: str | None = None,
    alert: Callable[[str, str], None] | None = None,
) -> Outcome:
    """Start, send and record one execution (of the event ``event_id``, "" for none, when
    the task said; else the store reads it). Raises RedisError only when Redis stayed
    unreachable: then nothing could be recorded, and the caller gives the task back."""
    asked = time.monotonic()
    retries = settings.default_retries
    start, instance = patiently(
        lambda: store.start(instance_id, lease=lease, retries=retries, event_id=event_id),
        until=asked + START_PATIENCE,
    )
    if start.status is not Started.START or instance is None:
        log.info("execution %s not started: it is %s", instance_id, start.status)
        return Outcome(start.status)
    logs.bind(event_id=instance.event_id)
    begun = from_timestamp(start.now_ms / 1000)
    attempt = Attempt(store, instance, start.token, lease, begun, held_at=asked, alert=alert)
    with attempt.kept():
        try:
            return _run(attempt, transport, settings, _arguments(start, instance, settings))
        except Stopped as stop:
            return _stopped(attempt, stop.why)
        except RedisError:
            # Nothing can be recorded; the lease runs out and another attempt takes over.
            log.exception(
                "execution %s: Redis is unreachable; leaving it to the lease", instance_id
            )
            raise
        except Exception as exc:
            # Whatever it is, the execution ends here, and readably: nothing stays running
            # for beat to hand to the next worker, which would fail the same way.
            log.exception("execution %s failed unexpectedly", instance_id)
            return _end(attempt, InstanceStatus.FAILED, error=_describe(exc))


def _run(
    attempt: Attempt, transport: Transport, settings: Settings, found: tuple[Any, int]
) -> Outcome:
    store, instance = attempt.store, attempt.instance
    arguments, retries = found
    try:
        result = _deliver(attempt, transport, settings, arguments)
    except TransientDeliveryError as exc:
        if int(attempt.token) <= retries:
            delay = backoff(int(attempt.token)) if exc.retry_after is None else exc.retry_after
            error = exc.message
            if attempt.patiently(
                lambda: store.retry(
                    instance.id, attempt.token, delay=delay, error=error, took=attempt.took()
                )
            ):
                _alert(attempt, "retrying")
                return Outcome(InstanceStatus.RETRYING)
            return _lost(attempt)
        return _end(
            attempt, InstanceStatus.FAILED, error=exc.message, result=_answered(attempt, exc)
        )
    except PermanentDeliveryError as exc:
        return _end(
            attempt, InstanceStatus.FAILED, error=exc.message, result=_answered(attempt, exc)
        )
    except InvalidMessage as exc:
        return _end(attempt, InstanceStatus.FAILED, error=exc.message)
    return _end(attempt, InstanceStatus.SUCCEEDED, result=result)


def _answered(attempt: Attempt, exc: DeliveryError) -> dict[str, Any] | None:
    """The execution's result with the webhook receiver's answer to its last try."""
    result = attempt.instance.result
    if exc.answer is None:
        return result
    return {**_merge(result, None), "webhook": exc.answer}


def _end(
    attempt: Attempt,
    status: InstanceStatus,
    *,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> Outcome:
    sent = status is not InstanceStatus.CANCELLED or attempt.instance.delivered
    took = attempt.took() if sent else None
    done = attempt.patiently(
        lambda: attempt.store.finish(
            attempt.instance, attempt.token, status, error=error, result=result, took=took
        )
    )
    if not done:
        log.warning(
            "execution %s: another attempt took it over; not recording", attempt.instance.id
        )
        return _lost(attempt)
    if status is InstanceStatus.FAILED:
        _alert(attempt, "failed")
    elif done == "recovered":
        _alert(attempt, "recovered")
    return Outcome(status)


def _alert(attempt: Attempt, kind: str) -> None:
    """Have the transition's alerts sent (workers.alerts), never failing the send."""
    instance = attempt.instance
    if not instance.event_id or attempt.alert is None:
        return  # alerts belong to events; a send_message has none
    try:
        attempt.alert(instance.id, kind)
    except Exception as exc:
        log.warning("execution %s: could not publish its %s alert: %s", instance.id, kind, exc)


def _stopped(attempt: Attempt, why: str) -> Outcome:
    if why == "lost":
        log.warning("execution %s: lease lost to another attempt; stopped", attempt.instance.id)
        return _lost(attempt)
    instance = attempt.instance
    sent = len(instance.delivered)
    error = f"The scheduled event was {why}"
    if sent:
        error += f" after {sent} {'copy' if sent == 1 else 'copies'} had been sent"
    return _end(attempt, InstanceStatus.CANCELLED, error=error + ".", result=instance.result)


def _lost(attempt: Attempt) -> Outcome:
    """Another attempt holds the record now. The copies this one got accepted (a stall
    mid-transaction) are still noted, so the record never leaves out one that arrived."""
    if attempt.sent:
        accepted = [address for sent in attempt.sent for address in sent.accepted]
        try:
            attempt.store.note_late(attempt.instance.id, attempt.token, attempt.sent_to, accepted)
        except RedisError as exc:
            log.warning("execution %s: could not note late copies: %s", attempt.instance.id, exc)
    return Outcome("lost")


def _describe(exc: BaseException) -> str:
    return f"Internal error: {type(exc).__name__}: {reason(exc)}"[:ERROR_CHARS]


def _arguments(start: Start, instance: Instance, settings: Settings) -> tuple[Any, int]:
    """The send_message arguments to use and the retry budget, as start.lua read them with
    the start (an event's arguments are read when its execution starts, so an update
    reaches the next attempt)."""
    if not instance.event_id:
        return instance.payload, settings.default_retries
    metadata = json.loads(start.event_metadata or "{}")
    retries = settings.default_retries if start.event_retries is None else start.event_retries
    return metadata.get("arguments"), retries


def _deliver(
    attempt: Attempt, transport: Transport, settings: Settings, arguments: Any
) -> dict[str, Any]:
    instance = attempt.instance
    resolved = resolve_refs(arguments, settings=settings)
    if not isinstance(resolved, dict):
        raise InvalidMessage("arguments: expected an object")
    if "recipients" in resolved:  # with a webhook, email is optional
        _send_email(attempt, transport, settings, resolved)  # render() validates it all
    else:
        validate_arguments(resolved, limits=settings.message_limits)
    webhook = resolved.get("webhook")
    if webhook is not None and WEBHOOK_SENT not in instance.delivered:
        if attempt.sent or not attempt.fresh():
            attempt.hold(instance.delivered, instance.result)
        body = render_body(webhook.get("body"), resolved.get("variables") or {})
        answer = deliver_webhook(
            webhook,
            body,
            message_id=instance.id,  # the same on every attempt: the receiver's idempotency key
            timestamp=int(attempt.begun.timestamp()),
            secret=attempt.store.webhook_secret(instance.project_id),
            settings=settings,
        )
        instance.delivered.append(WEBHOOK_SENT)
        instance.result = {**_merge(instance.result, None), "webhook": answer}
    return instance.result or _merge(None, None)


def _send_email(attempt: Attempt, transport: Transport, settings: Settings, resolved: Any) -> None:
    instance = attempt.instance
    # Built one copy at a time, as each is sent: one message in memory, whatever the
    # number of recipients. Everything a copy could fail on is checked before the first.
    envelopes = render(
        resolved,
        now=attempt.begun,
        mail_domain=settings.mail_domain,
        instance_id=instance.id,
        limits=settings.message_limits,
    )
    for envelope in envelopes:
        if envelope.recipient in instance.delivered:
            continue  # accepted on an earlier attempt; never send a copy twice
        # Before each copy: the lease is still ours and the event still wants it sent;
        # the progress so far is recorded at the same time. Right after the start (which
        # checked both) the first copy needs no second round trip.
        if attempt.sent or not attempt.fresh():
            attempt.hold(instance.delivered, instance.result)
        # Lets a reader (and the tests) tie each email to its execution record.
        envelope.message["X-Sendbeat-Instance"] = instance.id
        sent = transport.send(envelope)
        attempt.sent.append(sent)
        attempt.sent_to.append(envelope.recipient)
        instance.result = {**(instance.result or {}), **_merge(instance.result, sent)}
        instance.delivered.append(envelope.recipient)


def _merge(earlier: dict[str, Any] | None, sent: SendResult | None) -> dict[str, Any]:
    """The execution's result so far, with one more copy sent."""
    earlier = earlier or {}
    accepted = list(earlier.get("accepted", []))
    rejected = dict(earlier.get("rejected", {}))
    message_id = earlier.get("message_id")
    if sent is not None:
        accepted.extend(sent.accepted)
        rejected.update(sent.rejected)
        message_id = message_id or sent.message_id
    return {"message_id": message_id, "accepted": accepted, "rejected": rejected}
