"""Hands send_message tasks to the broker, without importing Celery.

Both the web (manual triggers, send_message) and beat publish through this one
module. It writes Celery task-protocol-2 messages with kombu, Celery's own
messaging library, so any Celery worker consuming ``queue`` runs them. A task
carries only execution ids (with their event's id where known): the worker reads the
rest from Redis. One task carries up to ``batch`` executions, so a backlog costs the
broker and the worker's Celery machinery one message per batch, not one per send.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from kombu import Connection, Exchange, Producer, Queue

from app.core.errors import DispatchError
from app.core.redis_client import SENTINEL_SCHEME, SentinelUrl

SEND_MESSAGE_TASK = "sendbeat.send_message"
ALERT_TASK = "sendbeat.alert"
T = TypeVar("T")


def task_queue(name: str) -> Queue:
    """The queue as the worker declares it (same exchange, type and routing key)."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name, durable=True)


def entry(instance_id: str, event_id: str = "") -> str:
    """One execution in a task's arguments: its id and its event's id, or "-" when it
    has none (send_message), so the worker starts it without first asking Redis. A bare
    id (release.lua's) leaves the worker to read the event id."""
    return f"{instance_id} {event_id or '-'}"


def parse_entry(text: str) -> tuple[str, str | None]:
    """(instance id, event id: "" for none, None when the entry does not say)."""
    instance_id, _, event_id = text.partition(" ")
    if not event_id:
        return instance_id, None
    return instance_id, "" if event_id == "-" else event_id


def task_message(
    entries: list[str],
    origin: str,
    first: str | None = None,
    *,
    task: str = SEND_MESSAGE_TASK,
    eta: str | None = None,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The body and headers of one task in Celery's protocol 2: by default a
    send_message task, which runs every execution in ``entries`` (its arguments); its
    Celery task id is ``first``, by default the first entry's execution id. ``eta``
    (ISO 8601) holds it back until then."""
    first = first if first is not None else parse_entry(entries[0])[0]
    headers = {
        "lang": "py",
        "task": task,
        "id": first,
        "shadow": None,
        "eta": eta,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": first,
        "parent_id": None,
        "argsrepr": f"('{first}', ...)",
        "kwargsrepr": "{}",
        "origin": origin,
        "ignore_result": True,
    }
    body: tuple[Any, ...] = (
        entries,
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    )
    return body, headers


class RedisMessages:
    """Task messages exactly as kombu's Redis transport stores them in the queue list,
    so Redis-side code (prelude.lua's ``push_tasks``) can write them without a kombu
    round trip each.

    One template serves every message: ``@@ids@@`` stands for the entries, joined by
    ``separator`` (they sit in a JSON list inside the JSON-encoded body, so the
    separator is escaped twice), ``@@id@@`` for the first execution's id (the Celery
    task id) and ``@@tag@@`` for kombu's delivery tag. The body is plain JSON (no
    ``body_encoding``, which kombu reads as-is), so Lua fills the template, and adds an
    entry to a message still waiting in the queue, by string operations alone.
    """

    IDS, ID, TAG = "@@ids@@", "@@id@@", "@@tag@@"

    def __init__(self, queue: str, origin: str, room: int) -> None:
        self.room = room  # the most executions one message carries
        self.template = self._encode([self.IDS], self.ID, origin, queue)
        pair = self._encode(["@@a@@", "@@b@@"], self.ID, origin, queue)
        self.separator = pair[pair.index("@@a@@") + 5 : pair.index("@@b@@")]

    def _encode(self, entries: list[str], first: str, origin: str, queue: str) -> str:
        body, headers = task_message(entries, origin, first)
        return json.dumps(
            {
                "body": json.dumps(body),
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": headers,
                "properties": {
                    "correlation_id": first,
                    "delivery_mode": 2,
                    "delivery_info": {"exchange": queue, "routing_key": queue},
                    "priority": 0,
                    "delivery_tag": self.TAG,
                },
            }
        )

    @property
    def arguments(self) -> list[str | int]:
        """What the Lua scripts that push task messages take: the template, the
        separator and the room."""
        return [self.template, self.separator, self.room]


def same_redis(broker_url: str, redis_url: str) -> bool:
    scheme = urlsplit(broker_url).scheme
    return scheme in ("redis", "rediss", SENTINEL_SCHEME) and broker_url == redis_url


def kombu_broker(url: str) -> tuple[str, dict[str, Any]]:
    """The broker URL as kombu takes it, and the transport options it needs: a
    ``redis+sentinel://`` URL becomes kombu's Sentinel transport."""
    sentinel = SentinelUrl.parse(url)
    return (url, {}) if sentinel is None else sentinel.kombu()


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
            url, options = kombu_broker(self._url)
            connection = Connection(
                url,
                connect_timeout=self._timeout,
                transport_options={
                    **options,
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
        batch: int = 16,
    ) -> None:
        self._url = broker_url
        self._queue = task_queue(queue)
        # When the broker is the store's Redis, beat pushes task messages from Lua, in
        # the same atomic step as the claim (``direct_queue`` is the list to push to).
        self.direct_queue = queue if store_url and same_redis(broker_url, store_url) else None
        self._origin = f"sendbeat@{socket.gethostname()}:{os.getpid()}"
        self._messages = RedisMessages(queue, self._origin, batch)
        self._link = BrokerLink(broker_url, connect_timeout, retries=1)
        self._declared_on: Connection | None = None  # the queue is declared once per connection

    @property
    def lua_arguments(self) -> tuple[str | int, ...]:
        """What the scripts that push onto ``direct_queue`` take (template, separator,
        room); () when the broker is not the store's Redis and nothing is pushed."""
        return tuple(self._messages.arguments) if self.direct_queue else ()

    def publish(self, instance_ids: Iterable[str]) -> None:
        """Publish the executions (ids or ``entry()`` strings), up to the batch size per
        task message; raise DispatchError if the broker refuses."""
        ids = list(instance_ids)
        if not ids:
            return
        room = self._messages.room
        self._send([task_message(ids[start : start + room], self._origin)
                    for start in range(0, len(ids), room)])  # fmt: skip

    def publish_alert(
        self, instance_id: str, kind: str, attempt: int = 1, delay: float = 0
    ) -> None:
        """Publish the task that sends the ``kind`` alerts of an execution (attempt
        ``attempt``, held back ``delay`` seconds); raise DispatchError if the broker
        refuses."""
        eta = None
        if delay:
            eta = datetime.fromtimestamp(time.time() + delay, UTC).isoformat()
        task_id = f"alert-{instance_id}-{kind}-{attempt}"
        self._send([task_message([instance_id, kind, str(attempt)], self._origin, task_id,
                                 task=ALERT_TASK, eta=eta)])  # fmt: skip

    def _send(self, messages: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
        """Publish task messages (body, headers) on the shared connection."""
        try:
            self._link.use(lambda connection: self._publish(connection, messages))
        except Exception as exc:  # kombu raises transport-specific errors
            raise DispatchError(f"Dispatcher error: {reason(exc)}") from exc

    def _publish(
        self, connection: Connection, messages: list[tuple[tuple[Any, ...], dict[str, Any]]]
    ) -> None:
        producer = Producer(
            connection.default_channel,
            exchange=self._queue.exchange,
            routing_key=self._queue.routing_key,
            serializer="json",
        )
        if self._declared_on is not connection:  # per connection, not per publish: round trips
            self._queue.declare(channel=producer.channel)
            self._declared_on = connection
        for body, headers in messages:
            producer.publish(
                body,
                headers=headers,
                correlation_id=headers["id"],
                delivery_mode=2,
                retry=False,
            )

    def close(self) -> None:
        self._link.close()
