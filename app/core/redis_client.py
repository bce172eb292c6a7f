"""Builds the Redis client the store uses (responses decoded to str)."""

from redis import Redis


def connect(url: str) -> Redis:
    return Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=5,
        socket_timeout=10,
    )
