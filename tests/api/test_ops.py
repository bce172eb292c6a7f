"""Health, readiness and metrics endpoints, and the per-key rate limits of both
dialects, on a real Redis with apps built from explicit settings."""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from app import create_app
from app.core import metrics
from app.core.records import Instance, new_id
from app.core.settings import Settings
from app.core.store import Store
from app.embedded_redis import free_port
from tests.api.conftest import event_body


def app_for(settings: Settings, store: Store, **changes: object) -> Flask:
    return create_app(settings.with_(**changes), store=store)


def scrape(app: Flask) -> dict[str, float]:
    """Every sample of /metrics as {"name{label=value}": value}."""
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


# -- health and readiness ------------------------------------------------------------


def test_healthz_answers_ok(settings: Settings, store: Store) -> None:
    response = app_for(settings, store).test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_ready_with_a_fresh_heartbeat(settings: Settings, store: Store) -> None:
    store.heartbeat(time.time())
    response = app_for(settings, store).test_client().get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ready",
        "checks": {"redis": "ok", "broker": "ok", "beat": "ok"},
    }


def test_not_ready_without_a_heartbeat(settings: Settings, store: Store) -> None:
    response = app_for(settings, store).test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not ready"
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["broker"] == "ok"
    assert body["checks"]["beat"].startswith("no heartbeat yet")


def test_not_ready_with_a_stale_heartbeat(settings: Settings, store: Store) -> None:
    store.heartbeat(time.time() - 42)
    response = app_for(settings, store, beat_stale_after=10.0).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["beat"] == "no heartbeat for 42 s"


def test_not_ready_when_redis_is_unreachable(settings: Settings) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(settings.with_(redis_url=closed))
    started = time.monotonic()
    response = app.test_client().get("/readyz")
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    checks = response.get_json()["checks"]
    assert checks["redis"].startswith("unreachable:")
    assert checks["broker"].startswith("unreachable:")
    assert checks["beat"] == "unknown: Redis is unreachable"
    assert app.test_client().get("/healthz").status_code == 200
    assert app.test_client().get("/metrics").status_code == 503


def test_the_broker_probe_reuses_one_connection(settings: Settings, store: Store) -> None:
    store.heartbeat(time.time())
    app = app_for(settings, store)
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    connected = _clients(store.redis)
    for _ in range(10):
        assert client.get("/readyz").status_code == 200
    assert _clients(store.redis) <= connected


def _clients(redis: Redis) -> int:
    return int(redis.info("clients")["connected_clients"])


# -- metrics ---------------------------------------------------------------------------


def ended(store: Store, status: str, took: float) -> None:
    """A send_message execution that a worker took ``took`` seconds to end in ``status``."""
    instance = Instance(new_id(), "p", "api", "queued", 0, 0, payload={})
    store.enqueue(instance, queue=None)
    start, _ = store.start(instance.id, lease=60, retries=0)
    assert store.finish(instance, start.token, status, took=took)


def test_metrics_read_redis_at_scrape_time(settings: Settings, store: Store) -> None:
    app = app_for(settings, store)
    empty = scrape(app)
    assert empty["sendbeat_due_backlog"] == 0
    assert empty["sendbeat_queue_depth"] == 0
    assert empty["sendbeat_beat_heartbeat_age_seconds"] == float("inf")
    assert empty["sendbeat_executions_total{status=succeeded}"] == 0
    assert empty["sendbeat_send_latency_seconds_count"] == 0

    now = time.time()
    store.heartbeat(now - 3)
    store.redis.zadd(store.keys.due(0), {"a": now - 10, "b": now - 1, "c": now + 3600})
    store.redis.rpush(settings.queue, "m1", "m2")
    ended(store, "succeeded", 0.3)
    ended(store, "failed", 12.0)
    metrics.record_dispatch(
        store.redis, store.keys, 0, [("i1", "queued"), ("i2", "missed"), ("i3", "missed")], [0.02]
    )

    after = scrape(app)
    assert after["sendbeat_due_backlog"] == 2
    assert after["sendbeat_queue_depth"] == 2
    assert 3 <= after["sendbeat_beat_heartbeat_age_seconds"] < 10
    assert after["sendbeat_executions_total{status=succeeded}"] == 1
    assert after["sendbeat_executions_total{status=failed}"] == 1
    assert after["sendbeat_executions_total{status=queued}"] == 3  # two by the API, one by beat
    assert after["sendbeat_executions_total{status=missed}"] == 2
    assert after["sendbeat_send_latency_seconds_count"] == 2
    assert after["sendbeat_send_latency_seconds_sum"] == pytest.approx(12.3)
    assert after["sendbeat_send_latency_seconds_bucket{le=0.25}"] == 0
    assert after["sendbeat_send_latency_seconds_bucket{le=0.5}"] == 1
    assert after["sendbeat_send_latency_seconds_bucket{le=10}"] == 1
    assert after["sendbeat_send_latency_seconds_bucket{le=30}"] == 2
    assert after["sendbeat_send_latency_seconds_bucket{le=+Inf}"] == 2
    assert after["sendbeat_dispatch_lateness_seconds_bucket{le=0.05}"] == 1
    assert after["sendbeat_dispatch_lateness_seconds_count"] == 1


def test_no_queue_depth_when_the_broker_is_not_redis(settings: Settings, store: Store) -> None:
    app = app_for(settings, store, broker_url="amqp://guest:guest@127.0.0.1:1//")
    assert "sendbeat_queue_depth" not in scrape(app)


# -- rate limits -----------------------------------------------------------------------


def make_event(client: object, key: str, uid: str) -> object:
    return client.post(  # type: ignore[attr-defined]
        "/v.1.1/get_scheduled_event", json={"api_key": key, "uid": uid}
    )


def test_messaging_limit_answers_429_in_its_envelope(settings: Settings, store: Store) -> None:
    app = app_for(settings, store, rate_limit_messaging="2/minute")
    _, key = store.create_project("limited", int(time.time()))
    client = app.test_client()
    assert [make_event(client, key, "x").status_code for _ in range(2)] == [404, 404]

    response = make_event(client, key, "x")

    assert response.status_code == 429
    assert response.get_json() == {
        "response": {
            "status": "rate_limited",
            "uid": "x",
            "message": "Rate limit exceeded: 2 per 1 minute",
        },
        "data": {"errors": ["Rate limit exceeded: 2 per 1 minute"]},
    }
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def test_schedules_limit_answers_429_in_its_envelope(settings: Settings, store: Store) -> None:
    app = app_for(settings, store, rate_limit_schedules="2/minute")
    _, key = store.create_project("limited", int(time.time()))
    client = app.test_client()
    auth = {"Authorization": f"Bearer {key}"}
    for _ in range(2):
        assert client.get("/api/unstable/schedules", headers=auth).status_code == 200

    response = client.get("/api/v1/schedules", headers=auth)

    assert response.status_code == 429
    assert response.get_json() == {
        "detail": "Rate limit exceeded: 2 per 1 minute",
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": 429,
    }
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    # The messaging dialect has its own budget.
    assert make_event(client, key, "x").status_code == 404


def test_keys_are_limited_apart_and_never_stored(settings: Settings, store: Store) -> None:
    app = app_for(settings, store, rate_limit_messaging="2/minute")
    _, first = store.create_project("first", int(time.time()))
    _, second = store.create_project("second", int(time.time()))
    client = app.test_client()
    for _ in range(3):
        make_event(client, first, "x")
    assert make_event(client, first, "x").status_code == 429
    assert make_event(client, second, "x").status_code == 404
    # The Bearer token counts as the same key as the body's api_key.
    bearer = client.post(
        "/v.1.1/get_scheduled_event",
        json={"uid": "x"},
        headers={"Authorization": f"Bearer {first}"},
    )
    assert bearer.status_code == 429
    stored = " ".join(store.redis.scan_iter(f"{store.keys.rate_limits}*"))
    assert stored and first not in stored and second not in stored


def test_a_limit_recovers_after_its_window(settings: Settings, store: Store) -> None:
    app = app_for(settings, store, rate_limit_messaging="2/second")
    _, key = store.create_project("limited", int(time.time()))
    client = app.test_client()
    statuses = [make_event(client, key, "x").status_code for _ in range(3)]
    assert statuses == [404, 404, 429]
    time.sleep(1.1)
    assert make_event(client, key, "x").status_code == 404


def test_none_disables_and_ops_endpoints_are_never_limited(
    settings: Settings, store: Store
) -> None:
    app = app_for(settings, store, rate_limit_messaging="none", rate_limit_schedules="1/minute")
    _, key = store.create_project("free", int(time.time()))
    client = app.test_client()
    assert all(make_event(client, key, "x").status_code == 404 for _ in range(5))
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        statuses = {client.get(path).status_code for _ in range(3)}
        assert 429 not in statuses, path


def test_requests_without_a_key_are_limited_by_address(settings: Settings, store: Store) -> None:
    app = app_for(settings, store, rate_limit_schedules="1/minute")
    client = app.test_client()
    assert client.get("/api/unstable/schedules").status_code == 401
    assert client.get("/api/unstable/schedules").status_code == 429


def test_create_body_is_still_read_after_the_key_is(settings: Settings, store: Store) -> None:
    app = app_for(settings, store, rate_limit_messaging="5/minute")
    _, key = store.create_project("reader", int(time.time()))
    response = app.test_client().post(
        "/v.1.1/create_scheduled_event", json={"api_key": key, **event_body("r1")}
    )
    assert response.status_code == 200, response.get_json()


# -- logs ------------------------------------------------------------------------------


def test_json_log_format_gives_the_web_json_lines(
    settings: Settings, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    access = logging.getLogger("gunicorn.access")
    access_handler = logging.StreamHandler(sys.stderr)  # as gunicorn sets it up
    access.addHandler(access_handler)
    level = root.level
    try:
        app_for(settings, store, log_format="json")
        logging.getLogger("sendbeat.web").warning("hello %s", "there")
        access.info('127.0.0.1 "GET /healthz HTTP/1.1" 200')
    finally:
        for handler in [h for h in root.handlers if getattr(h, "sendbeat", False)]:
            root.removeHandler(handler)
        access.removeHandler(access_handler)
        root.setLevel(level)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert {"level": "WARNING", "logger": "sendbeat.web", "message": "hello there"}.items() <= (
        next(e for e in lines if e["logger"] == "sendbeat.web").items()
    )
    assert any(e["logger"] == "gunicorn.access" for e in lines)
