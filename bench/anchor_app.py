"""The anchor of bench/send.py: what a user would write instead of sendbeat — a plain
Celery task that sends one email with smtplib over a new connection. No records, no
leases, no guarantees; same broker, same worker flags as sendbeat's worker.

Configured from the environment: ``ANCHOR_BROKER``, ``ANCHOR_QUEUE``, ``ANCHOR_SMTP``
(host:port)."""

from __future__ import annotations

import os
import smtplib
from email.message import EmailMessage

from celery import Celery

app = Celery("anchor", broker=os.environ.get("ANCHOR_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=os.environ.get("ANCHOR_QUEUE", "anchor"),
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)


@app.task(name="anchor.send")
def send(to: str, subject: str, body: str) -> None:
    message = EmailMessage()
    message["From"] = "Reports <reports@example.com>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    host, port = os.environ.get("ANCHOR_SMTP", "127.0.0.1:25").rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=30) as smtp:
        smtp.send_message(message)
