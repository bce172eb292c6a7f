"""Per-process dependencies of the worker and beat: the store, the publisher and the
mail transport, built lazily after Celery forks its pool processes."""

from __future__ import annotations

import os
from dataclasses import dataclass

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

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = transport_from_url(
                self.settings.mail_url, timeout=self.settings.smtp_timeout
            )
        return self._transport


_contexts: dict[tuple[int, Settings], Context] = {}


def context_for(settings: Settings) -> Context:
    """This process's context; a forked child builds its own connections."""
    key = (os.getpid(), settings)
    if key not in _contexts:
        store = Store(
            connect(settings.redis_url),
            Keys(settings.key_prefix),
            retention_days=settings.retention_days,
        )
        publisher = Publisher(
            settings.effective_broker_url, settings.queue, store_url=settings.redis_url
        )
        _contexts[key] = Context(settings, store, publisher)
    return _contexts[key]
