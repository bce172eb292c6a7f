"""sendbeat's Celery beat scheduler: it keeps no schedule of its own, it claims due
occurrences from the Redis due index and publishes them.

Any number of beats may run: each occurrence is claimed once (``claim.lua``).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery.beat import Scheduler
from redis.exceptions import RedisError

from app.core.dispatch import dispatch_due, release_waiting
from app.core.errors import DispatchError
from workers.context import context_for

log = logging.getLogger("sendbeat.beat")

# Batches claimed per tick; the heartbeat and the waiting sets are seen to between ticks.
BATCHES_PER_TICK = 10


class SendbeatScheduler(Scheduler):
    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self._context = context_for(app.sendbeat_settings)
        # One thread runs claims while the main thread plans the next batch.
        self._claimer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="claim")
        super().__init__(app, *args, **kwargs)

    def setup_schedule(self) -> None:
        """No static entries: every schedule lives in Redis."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Dispatch what is due, then wait until the next run, at most ``beat_max_sleep``,
        or until an event is (re)scheduled; Celery's loop calls again at once."""
        settings = self._context.settings
        store = self._context.store
        try:
            done = dispatch_due(
                store,
                self._context.publisher,
                settings.beat_batch_size,
                batches=BATCHES_PER_TICK,
                claimer=self._claimer,
            )
            self._release()
            store.heartbeat(done.now)
            if done.due >= settings.beat_batch_size * BATCHES_PER_TICK:
                return 0.0  # more is due right now
            next_at = store.next_due_at()
            sleep = settings.beat_max_sleep
            if next_at is not None:  # by Redis' clock, as everything beat decides
                sleep = max(0.0, min(sleep, next_at - done.now))
            store.wait_for_wake(sleep)
        except (RedisError, DispatchError) as exc:
            log.warning("beat could not dispatch, will try again: %s", exc)
            return settings.beat_max_sleep
        return 0.0

    def _release(self) -> None:
        count = release_waiting(
            self._context.store,
            self._context.publisher,
            unconfirmed=self._context.settings.publish_grace,
        )
        if count:
            log.info("published %d waiting executions (retries, lost leases or publishes)", count)

    def close(self) -> None:
        self._claimer.shutdown(wait=True)
        self._context.publisher.close()
        super().close()

    @property
    def info(self) -> str:
        keys = self._context.store.keys
        return f"    . sendbeat due index on {keys.due(0)} ({keys.shards} shard(s))"
