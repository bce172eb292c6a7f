"""Alerts (issue 13): a signed POST for each transition an event's ``alerts`` ask for
(``failed``, ``missed``, ``skipped``, ``retrying``, ``recovered``), sent by a task of its
own (``sendbeat.alert``), so a slow or failing receiver never holds up a send.

Each alert is posted once per transition and receiver: its ``webhook-id`` is
``{execution id}.{kind}`` (a receiver's idempotency key, the same on every retry); a
transient failure is tried again later, up to ALERT_ATTEMPTS times, and each outcome is
recorded on the execution (``alerts``). An event without alerts of its own alerts the
project's default URL (``flask --app app project alert-url``) on DEFAULT_ALERT_KINDS.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from app.core.errors import DeliveryError, TransientDeliveryError
from app.core.records import Event, Instance
from app.core.settings import Settings
from app.core.store import Store
from app.core.webhook import DEFAULT_ALERT_KINDS
from workers.webhooks import deliver

log = logging.getLogger(__name__)

ALERT_ATTEMPTS = 5


def targets(event: Event, kind: str, default_url: str | None) -> list[str]:
    """The URLs the ``kind`` transition of the event is posted to."""
    if event.alerts:
        return [alert["url"] for alert in event.alerts if kind in alert["on"]]
    return [default_url] if default_url and kind in DEFAULT_ALERT_KINDS else []


def document(kind: str, event: Event, instance: Instance) -> bytes:
    body = {"type": f"execution.{kind}", "event": {"uid": event.uid, "id": event.id},
            "execution": instance.record()}  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()


def send_alerts(
    store: Store, settings: Settings, instance_id: str, kind: str, attempt: int
) -> float | None:
    """Post the ``kind`` alerts of an execution not yet delivered; the seconds to wait
    before trying again those that failed transiently, or None when nothing is left."""
    instance = store.instance(instance_id)
    event = store.event_by_id(instance.project_id, instance.event_id) if instance else None
    if instance is None or event is None:
        return None  # the record expired or the event is gone: nothing to tell
    urls = targets(event, kind, store.alert_url(event.project_id))
    if not urls:
        return None
    body = document(kind, event, instance)
    secret = store.webhook_secret(event.project_id)
    stamp = int(store.now().timestamp())
    again = False
    for url in urls:
        earlier = store.alert_sent(instance_id, kind, url)
        if earlier is not None and str(earlier["status"]).startswith("2"):
            continue  # delivered by an earlier attempt
        try:
            answer = deliver({"url": url}, body, message_id=f"{instance_id}.{kind}",
                             timestamp=stamp, secret=secret, settings=settings)  # fmt: skip
            status = str(answer["status"])
        except DeliveryError as exc:
            status = exc.message
            again = again or isinstance(exc, TransientDeliveryError)
            log.warning("alert %s of %s to %s: %s", kind, instance_id, url, exc.message)
        outcome: dict[str, Any] = {"url": url, "type": f"execution.{kind}", "status": status,
                                   "attempts": attempt}  # fmt: skip
        store.note_alert(instance_id, kind, url, outcome)
    if again and attempt < ALERT_ATTEMPTS:
        return float(2**attempt)  # 2, 4, 8, 16 s
    return None
