"""Webhook deliveries (issue 13): one signed HTTP request per execution, through the same
guarded, pinned connection as remote content (``workers.remote``: no private address
unless SENDBEAT_ALLOW_PRIVATE_REFS, a timeout, a cap on what is read back).

2xx is success; 408, 429 and 5xx (and connection errors, timeouts) are transient and
retried per the event's policy, a 429's ``Retry-After`` setting the wait; any other
status is permanent. A redirect is not followed (the signature names one receiver): it
fails the delivery, permanently.

With the console mail transport (``MAIL_URL=console://``, for trying sendbeat out)
deliveries are printed in the worker's log instead of sent, as emails are.
"""

from __future__ import annotations

import email.utils
import logging
import time
from typing import Any

from app.core.errors import PermanentDeliveryError, TransientDeliveryError
from app.core.settings import Settings
from app.core.webhook import RESPONSE_KEPT_BYTES, sign
from workers.remote import open_request

log = logging.getLogger(__name__)

USER_AGENT = "sendbeat (webhook)"
CONSOLE_ANSWER = "(console transport: printed in the worker's log, not sent)"
TRANSIENT_STATUSES = frozenset({408, 429})
MAX_RETRY_AFTER = 3600.0  # seconds: a longer Retry-After is honoured up to this


def deliver(
    webhook: dict[str, Any],
    body: bytes,
    *,
    message_id: str,
    timestamp: int,
    secret: str,
    settings: Settings,
) -> dict[str, Any]:
    """POST (or PUT) ``body`` to the webhook's URL, signed; the response's status and
    the first KB of its body, or a DeliveryError."""
    url = webhook["url"]
    headers = {
        **webhook.get("headers", {}),
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }
    method = webhook.get("method", "POST")
    if settings.mail_url.startswith("console:"):
        shown = "\n".join(f"{name}: {value}" for name, value in headers.items())
        log.info("console transport: webhook %s %s\n%s\n\n%s", method, url, shown,
                 body.decode("utf-8", "replace"))  # fmt: skip
        return {"status": 200, "body": CONSOLE_ANSWER}
    with open_request(url, method, "*/*", settings, headers, data=body, what="webhook",
                  agent=USER_AGENT) as response:  # fmt: skip
        status = response.status_code
        kept = response.raw.read(RESPONSE_KEPT_BYTES, decode_content=False) or b""
        answer = f"webhook {url}: the receiver answered {status} {response.reason or ''}".rstrip()
        text = kept.decode("utf-8", "replace")
        got = {"status": status, "body": text}
        if 200 <= status < 300:
            return got
        if text.strip():
            answer += f": {text.strip()}"
        if status in TRANSIENT_STATUSES or status >= 500:
            wait = retry_after(response.headers.get("retry-after")) if status == 429 else None
            raise TransientDeliveryError(answer, retry_after=wait, answer=got)
        if 300 <= status < 400:
            raise PermanentDeliveryError(answer + " (redirects are not followed)", answer=got)
        raise PermanentDeliveryError(answer, answer=got)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), at most
    MAX_RETRY_AFTER; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
