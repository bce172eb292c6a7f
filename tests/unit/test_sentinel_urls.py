"""``redis+sentinel://`` URLs: parsed once, and named the same master for the store
(redis-py), the broker (kombu's Sentinel transport) and the rate limiter (limits)."""

from __future__ import annotations

import pytest

from app.api.limits import storage_options, storage_uri
from app.core.publisher import kombu_broker, same_redis
from app.core.redis_client import SentinelUrl
from app.core.settings import Settings, SettingsError

URL = "redis+sentinel://:s%40cret@10.0.0.1:26379,sentinel-b:26380/mymaster/2"


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    assert SentinelUrl.parse(URL) == SentinelUrl(
        (("10.0.0.1", 26379), ("sentinel-b", 26380)), "mymaster", 2, None, "s@cret"
    )
    assert SentinelUrl.parse("redis+sentinel://h:1/svc") == SentinelUrl((("h", 1),), "svc")
    assert SentinelUrl.parse("redis://127.0.0.1:6379/0") is None


def test_kombu_and_limits_get_the_same_master_in_their_own_spelling() -> None:
    assert kombu_broker(URL) == (
        "sentinel://:s%40cret@10.0.0.1:26379/2;sentinel://:s%40cret@sentinel-b:26380/2",
        {"master_name": "mymaster", "sentinel_kwargs": {"password": "s@cret"}},
    )
    assert kombu_broker("amqp://guest@rabbit//") == ("amqp://guest@rabbit//", {})
    assert storage_uri(URL) == "redis+sentinel://:s%40cret@10.0.0.1:26379,sentinel-b:26380/mymaster"
    assert storage_options(URL) == {"db": 2}
    assert same_redis(URL, URL)  # beat and the web push task messages from Lua


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h:26379", "name the monitored service"),
        ("redis+sentinel://h:26379/", "name the monitored service"),
        ("redis+sentinel://h/svc", "each Sentinel must be host:port, not 'h'"),
        ("redis+sentinel://h:1,:2/svc", "each Sentinel must be host:port, not ':2'"),
        ("redis+sentinel://h:1/svc/zero", "the database must be a number, not 'zero'"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_at_start_saying_what_to_fix(
    url: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=f"^REDIS_URL: {message}"):
        Settings.from_env({"REDIS_URL": url})
    with pytest.raises(SettingsError, match=f"^BROKER_URL: {message}"):
        Settings.from_env({"BROKER_URL": url})


def test_both_urls_may_be_sentinel_urls() -> None:
    settings = Settings.from_env({"REDIS_URL": URL, "BROKER_URL": URL})
    assert (settings.redis_url, settings.effective_broker_url) == (URL, URL)
