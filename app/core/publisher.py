"""Hands send_message tasks to the broker, without importing Celery.

Both the web (manual triggers, send_message) and beat publish through this one
module. It writes Celery task-protocol-2 messages with kombu, Celery's own
messaging library, so any Celery worker consuming ``queue`` runs them. A task
carries only the execution record's id: the worker reads the rest from Redis.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from kombu import Connection, Exchange, Producer, Queue

from app.core.errors import DispatchError

SEND_MESSAGE_TASK = "sendbeat.send_message"
T = TypeVar("T")


def task_queue(name: str) -> Queue:
    """The queue as the worker declares it (same exchange, type and routing key)."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name, durable=True)


def task_message(instance_id: str, origin: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The body and headers of one send_message task in Celery's protocol 2."""
    args = [instance_id]
    headers = {
        "lang": "py",
        "task": SEND_MESSAGE_TASK,
        "id": instance_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": instance_id,
        "parent_id": None,
        "argsrepr": repr(args),
        "kwargsrepr": "{}",
        "origin": origin,
        "ignore_result": True,
    }
    body: tuple[Any, ...] = (
        args,
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    )
    return body, headers


class RedisMessages:
    """Task messages exactly as kombu's Redis transport stores them in the queue list,
    so Redis-side code can push them without a kombu round trip each.

    One template serves every message: ``@@id@@`` stands for the execution id and
    ``@@tag@@`` for kombu's delivery tag. The body is plain JSON (no ``body_encoding``,
    which kombu reads as-is), so claim.lua fills the template by string substitution.
    """

    ID, TAG = "@@id@@", "@@tag@@"

    def __init__(self, queue: str, origin: str) -> None:
        body, headers = task_message(self.ID, origin)
        self.template = json.dumps(
            {
                "body": json.dumps(body),
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": headers,
                "properties": {
                    "correlation_id": self.ID,
                    "delivery_mode": 2,
                    "delivery_info": {"exchange": queue, "routing_key": queue},
                    "priority": 0,
                    "delivery_tag": self.TAG,
                },
            }
        )

    @property
    def parts(self) -> list[str]:
        """The template split around the id, the tag being the id too (claim.lua)."""
        return self.template.replace(self.TAG, self.ID).split(self.ID)

    def __call__(self, instance_id: str) -> str:
        # A fresh tag: another copy of this execution may still be unacked somewhere.
        tag = f"{instance_id}.{uuid.uuid4().hex[:12]}"
        return self.template.replace(self.ID, instance_id).replace(self.TAG, tag)


def same_redis(broker_url: str, redis_url: str) -> bool:
    return urlsplit(broker_url).scheme in ("redis", "rediss") and broker_url == redis_url


def reason(exc: BaseException) -> str:
    """The first line of an exception's message, for an operator or an API answer."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class BrokerLink:
    """One kombu connection a process's threads share (kombu's are not thread-safe),
    opened on first use and dropped after any failure, so the next use reconnects.
    It fails fast: a request waiting on a broker that is down must answer, not hang."""

    def __init__(self, url: str, timeout: float, *, retries: int) -> None:
        self._url = url
        self._timeout = timeout
        self._retries = retries
        self._connection: Connection | None = None
        self._lock = threading.RLock()  # re-entrant: a signal handler may close mid-use

    def use(self, work: Callable[[Connection], T]) -> T:
        with self._lock:
            try:
                return work(self._connect())
            except Exception:
                self._close()
                raise

    def _connect(self) -> Connection:
        if self._connection is None:
            connection = Connection(
                self._url,
                connect_timeout=self._timeout,
                transport_options={
                    "socket_connect_timeout": self._timeout,
                    "socket_timeout": self._timeout,
                    "max_retries": 0,
                    # AMQP: a publish returns once the broker has taken the message, so
                    # "published" means it, and the pending record may be cleared.
                    # (A Redis broker answers each push anyway; others ignore it.)
                    "confirm_publish": True,
                },
            )
            connection.ensure_connection(max_retries=self._retries, timeout=self._timeout)
            self._connection = connection
        return self._connection

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            # Closing a broken connection may itself fail; there is nothing to keep.
            with contextlib.suppress(Exception):
                connection.release()


class Publisher:
    def __init__(
        self,
        broker_url: str,
        queue: str,
        *,
        store_url: str | None = None,
        connect_timeout: float = 3.0,
    ) -> None:
        self._url = broker_url
        self._queue = task_queue(queue)
        # When the broker is the store's Redis, beat pushes task messages from Lua, in
        # the same atomic step as the claim (``direct_queue`` is the list to push to).
        self.direct_queue = queue if store_url and same_redis(broker_url, store_url) else None
        self._origin = f"sendbeat@{socket.gethostname()}:{os.getpid()}"
        self._messages = RedisMessages(queue, self._origin)
        self._link = BrokerLink(broker_url, connect_timeout, retries=1)
        self._declared_on: Connection | None = None  # the queue is declared once per connection

    def message(self, instance_id: str) -> str:
        return self._messages(instance_id)

    @property
    def template_parts(self) -> list[str]:
        return self._messages.parts

    @property
    def template(self) -> str:
        """The message template with ``@@id@@`` and ``@@tag@@`` (release.lua fills it)."""
        return self._messages.template

    def publish(self, instance_ids: Iterable[str]) -> None:
        """Publish one task per execution id; raise DispatchError if the broker refuses."""
        ids = list(instance_ids)
        if not ids:
            return
        try:
            self._link.use(lambda connection: self._publish(connection, ids))
        except Exception as exc:  # kombu raises transport-specific errors
            raise DispatchError(f"Dispatcher error: {reason(exc)}") from exc

    def _publish(self, connection: Connection, ids: list[str]) -> None:
        producer = Producer(
            connection.default_channel,
            exchange=self._queue.exchange,
            routing_key=self._queue.routing_key,
            serializer="json",
        )
        if self._declared_on is not connection:  # per connection, not per publish: round trips
            self._queue.declare(channel=producer.channel)
            self._declared_on = connection
        for instance_id in ids:
            body, headers = task_message(instance_id, self._origin)
            producer.publish(
                body,
                headers=headers,
                correlation_id=instance_id,
                delivery_mode=2,
                retry=False,
            )

    def close(self) -> None:
        self._link.close()
