"""Fixtures shared by the whole suite.

Redis: the tests talk to a real server. They use ``SENDBEAT_TEST_REDIS_URL``, or the
server on 127.0.0.1:6379 when one answers, or else start the embedded Valkey for
the session. Every test gets its own key prefix and queue, so tests never flush
or see each other's data. fakeredis backs only the fast store contract tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import RedisError

from app.core.keys import Keys
from app.core.redis_client import connect
from app.core.settings import Settings
from app.core.store import Store
from app.embedded_redis import EmbeddedRedis
from tests.cluster import LocalCluster


def _answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("SENDBEAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if _answers(url):
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persistent=False).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local three-master Redis Cluster (tests/cluster.py), for the whole session."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    name = f"sbtest-{uuid.uuid4().hex[:10]}"
    return Settings(
        redis_url=redis_url,
        key_prefix=name,
        queue=name,
        mail_url=f"maildir://{tmp_path / 'mail'}",
        allow_private_refs=True,
    )


@pytest.fixture
def redis(settings: Settings) -> Iterator[Redis]:
    client = connect(settings.redis_url)
    yield client
    _drop(client, settings)
    client.close()


def _drop(client: Redis, settings: Settings) -> None:
    """Delete this test's keys and its broker queue."""
    # Every key of the layout starts with its hash tag: {prefix} or {prefix:shard}.
    doomed = list(client.scan_iter(f"{{{settings.key_prefix}*", count=1000))
    doomed += [
        settings.queue,
        f"_kombu.binding.{settings.queue}",
        f"_kombu.binding_permanent.{settings.queue}",
    ]
    for start in range(0, len(doomed), 500):
        client.delete(*doomed[start : start + 500])


@pytest.fixture
def store(redis: Redis, settings: Settings) -> Store:
    return Store(redis, Keys(settings.key_prefix, settings.store_shards))
