"""``redis+cluster://`` URLs: parsed for the store and the rate limiter, and refused as
the Celery broker (kombu has no Cluster transport) with what to set instead."""

from __future__ import annotations

import time
import uuid

import pytest

from app import create_app
from app.api.limits import storage_uri
from app.core.redis_client import ClusterUrl
from app.core.settings import Settings, SettingsError


def test_a_cluster_url_names_its_nodes_and_credentials() -> None:
    url = ClusterUrl.parse("redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001")
    assert url == ClusterUrl((("10.0.0.1", 7000), ("10.0.0.2", 7001)), "app", "s@cret")
    assert ClusterUrl.parse("redis://localhost:6379/0") is None
    assert storage_uri("redis+cluster://h1:7000,h2:7001") == "redis+cluster://h1:7000,h2:7001"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://h1:7000/3", "a Redis Cluster has no databases"),
        ("redis+cluster://h1", "each cluster node must be host:port, not 'h1'"),
    ],
)
def test_malformed_cluster_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"REDIS_URL": url, "BROKER_URL": "redis://b:6379/0"})


def test_a_clustered_store_needs_a_broker_of_its_own() -> None:
    with pytest.raises(SettingsError, match="set BROKER_URL to a separate Redis or RabbitMQ"):
        Settings.from_env({"REDIS_URL": "redis+cluster://h1:7000"})
    with pytest.raises(SettingsError, match="BROKER_URL="):
        Settings.from_env({"REDIS_URL": "redis://a:1/0", "BROKER_URL": "redis+cluster://h1:7000"})
    settings = Settings.from_env({"REDIS_URL": "redis+cluster://h1:7000",
                                  "BROKER_URL": "amqp://rabbit:5672//"})  # fmt: skip
    assert settings.effective_broker_url == "amqp://rabbit:5672//"


def test_the_web_on_a_cluster_store_writes_its_layout_and_limits_rates(cluster_url: str) -> None:
    settings = Settings(redis_url=cluster_url, broker_url="redis://127.0.0.1:1/0",
                        key_prefix=f"rl{uuid.uuid4().hex[:8]}", store_shards=4,
                        rate_limit_messaging="3/minute")  # fmt: skip
    app = create_app(settings)
    store = app.extensions["sendbeat"].store
    try:
        _, key = store.create_project("p", int(time.time()))
        client = app.test_client()
        codes = [
            client.post("/v.1.1/list_scheduled_events", json={"api_key": key}).status_code
            for _ in range(5)
        ]
        assert codes == [200, 200, 200, 429, 429]
        assert store.redis.hgetall(store.keys.layout) == {"version": "2", "shards": "4"}
        assert list(store.redis.scan_iter(f"{store.keys.rate_limits}*"))
    finally:
        for stored in list(store.redis.scan_iter(f"{{{settings.key_prefix}*")):
            store.redis.delete(stored)
