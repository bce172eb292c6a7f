"""What operators and orchestrators call: ``GET /healthz`` (the process is up),
``GET /readyz`` (Redis, broker and a fresh beat heartbeat) and ``GET /metrics``
(Prometheus text, read from Redis at each scrape). None of them is rate limited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import RedisError

from app.api import schemas as s
from app.api.declare import META, Endpoint, serve
from app.core.health import BrokerProbe, readiness, reason
from app.core.metrics import Collector, Snapshot, read_snapshot
from app.core.redis_client import connect
from app.core.settings import Settings
from app.core.store import Store

bp = Blueprint("ops", __name__)


@dataclass
class Ops:
    store: Store
    broker: BrokerProbe
    registry: CollectorRegistry
    stale_after: float


def install(app: Flask, settings: Settings, store: Store) -> None:
    registry = CollectorRegistry(auto_describe=False)
    queue_redis = _queue_redis(settings, store)

    def read() -> Snapshot:  # ages and the due backlog by Redis' clock, as beat sees them
        now = store.now().timestamp()
        return read_snapshot(
            store.redis, store.keys, now, queue_redis=queue_redis, queue=settings.queue
        )

    registry.register(Collector(read))
    broker = BrokerProbe(settings.effective_broker_url, settings.queue)
    app.extensions["sendbeat-ops"] = Ops(store, broker, registry, settings.beat_stale_after)
    app.register_blueprint(bp)


def _queue_redis(settings: Settings, store: Store) -> Any:
    """The client to measure the queue with: the store's when the broker is the same
    Redis, a client of its own for another Redis, none for other brokers."""
    broker = settings.effective_broker_url
    if broker == settings.redis_url:
        return store.redis
    if urlsplit(broker).scheme in ("redis", "rediss"):
        return connect(broker)
    return None


def ops() -> Ops:
    return current_app.extensions["sendbeat-ops"]


@serve(
    bp,
    Endpoint(
        META,
        "/healthz",
        "get",
        "healthz",
        summary="Liveness",
        description="The web process is up (no dependency is checked).",
        reply=s.Health,
    ),
)
def healthz() -> Response:
    return jsonify({"status": "ok"})


@serve(
    bp,
    Endpoint(
        META,
        "/readyz",
        "get",
        "readyz",
        summary="Readiness",
        description="Redis, the broker and a fresh beat heartbeat; 503 when one fails.",
        reply=s.Readiness,
        other_answers={
            "503": {
                "description": "Not ready: `checks` says which check failed and why.",
                "content": {"application/json": {"schema": s.Readiness}},
            }
        },
    ),
)
def readyz() -> Response:
    state = ops()
    result = readiness(state.store, state.broker, state.stale_after)
    response = jsonify(
        {"status": "ready" if result.ready else "not ready", "checks": result.checks}
    )
    response.status_code = 200 if result.ready else 503
    return response


@serve(
    bp,
    Endpoint(
        META,
        "/metrics",
        "get",
        "metrics",
        summary="Prometheus metrics",
        description="Read from Redis at each scrape (docs/operations.md lists them); 503 "
        "when Redis is unreachable.",
        reply=None,
        media_type="text/plain",
        other_answers={
            "503": {
                "description": "Redis is unreachable.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    ),
)
def metrics() -> Response:
    try:
        body = generate_latest(ops().registry)
    except RedisError as exc:
        return Response(f"# Redis unreachable: {reason(exc)}\n", 503, mimetype="text/plain")
    return Response(body, 200, content_type=CONTENT_TYPE_LATEST)
