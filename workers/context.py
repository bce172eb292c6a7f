"""Per-process dependencies of the worker and beat: the store, the publisher and the
mail transport, built lazily after Celery forks its pool processes and shared by the
process's threads (each is safe to share)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from app.core.keys import Keys
from app.core.publisher import Publisher
from app.core.redis_client import connect
from app.core.settings import Settings
from app.core.store import Store
from workers.transport import Transport, transport_from_url


@dataclass
class Context:
    settings: Settings
    store: Store
    publisher: Publisher
    _transport: Transport | None = None
    _senders: ThreadPoolExecutor | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def transport(self) -> Transport:
        with self._lock:
            if self._transport is None:
                self._transport = transport_from_url(
                    self.settings.mail_url,
                    timeout=self.settings.smtp_timeout,
                    connections=self.settings.worker_concurrency,
                )
            return self._transport

    @property
    def senders(self) -> ThreadPoolExecutor:
        """Threads that run the other executions of a task message beside its first;
        the SMTP pool's size bounds how many of them send at once."""
        with self._lock:
            if self._senders is None:
                self._senders = ThreadPoolExecutor(
                    self.settings.worker_concurrency, thread_name_prefix="send"
                )
            return self._senders


_contexts: dict[tuple[int, Settings], Context] = {}
_lock = threading.Lock()


def context_for(settings: Settings) -> Context:
    """This process's context; a forked child builds its own connections."""
    key = (os.getpid(), settings)
    with _lock:
        if key not in _contexts:
            _contexts[key] = _build(settings)
        return _contexts[key]


def _build(settings: Settings) -> Context:
    store = Store(
        connect(settings.redis_url),
        Keys(settings.key_prefix, settings.store_shards),
        retention_days=settings.retention_days,
        replicas=settings.redis_replicas,
    )
    publisher = Publisher(
        settings.effective_broker_url,
        settings.queue,
        store_url=settings.redis_url,
        batch=settings.task_batch,
    )
    return Context(settings, store, publisher)
