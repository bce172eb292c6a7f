"""Settings come from the environment once; bad values stop the start with the name."""

from __future__ import annotations

import pytest

from app.core.message import MessageLimits
from app.core.settings import Settings, SettingsError


def test_defaults() -> None:
    settings = Settings.from_env({})

    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.effective_broker_url == settings.redis_url
    assert (settings.rate_limit_messaging, settings.rate_limit_schedules) == (
        "600/minute",
        "60/minute",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_URL": "http://x"}, "REDIS_URL='http://x': the URL must start with one of"),
        ({"PORT": "eighty"}, "PORT='eighty': expected a whole number"),
        ({"SENDBEAT_ALLOW_PRIVATE_REFS": "maybe"}, "SENDBEAT_ALLOW_PRIVATE_REFS='maybe'"),
        ({"SENDBEAT_RATE_LIMIT_SCHEDULES": "lots"}, "SENDBEAT_RATE_LIMIT_SCHEDULES='lots'"),
        ({"SENDBEAT_BEAT_BATCH_SIZE": "5000"}, "SENDBEAT_BEAT_BATCH_SIZE='5000'"),
        ({"SENDBEAT_MAX_RECIPIENTS": "0"}, "SENDBEAT_MAX_RECIPIENTS='0': expected a number of"),
        ({"SENDBEAT_MAX_MESSAGE_BYTES": "25M"}, "SENDBEAT_MAX_MESSAGE_BYTES='25M': expected a"),
        ({"SENDBEAT_MAX_VARIABLES_BYTES": "-1"}, "SENDBEAT_MAX_VARIABLES_BYTES='-1'"),
        ({"SENDBEAT_MAX_REFS": "many"}, "SENDBEAT_MAX_REFS='many'"),
        ({"SENDBEAT_REF_MAX_TOTAL_BYTES": "0"}, "SENDBEAT_REF_MAX_TOTAL_BYTES='0'"),
        ({"SENDBEAT_WORKER_POOL": "gevent"}, "SENDBEAT_WORKER_POOL='gevent': expected one of"),
        ({"SENDBEAT_WORKER_CONCURRENCY": "0"}, "SENDBEAT_WORKER_CONCURRENCY='0': expected a"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        Settings.from_env(env)


def test_tls_verification_can_be_turned_off_for_rediss() -> None:
    env = {
        "REDIS_URL": "rediss://:pw@h.example:6380",
        "BROKER_URL": "rediss://:pw@h.example:6380/1?a=b",
        "SENDBEAT_REDIS_TLS_VERIFY": "0",
    }

    settings = Settings.from_env(env)

    assert settings.redis_url == "rediss://:pw@h.example:6380?ssl_cert_reqs=none"
    assert settings.broker_url == "rediss://:pw@h.example:6380/1?a=b&ssl_cert_reqs=none"
    assert Settings.from_env({**env, "SENDBEAT_REDIS_TLS_VERIFY": "1"}).redis_url == (
        "rediss://:pw@h.example:6380"
    )


def test_the_worker_pool_and_its_concurrency_reach_celery() -> None:
    from workers.celery_app import create_celery

    default = create_celery(Settings.from_env({})).conf
    assert (default.worker_pool, default.worker_concurrency) == ("threads", 32)
    env = {"SENDBEAT_WORKER_POOL": "Prefork", "SENDBEAT_WORKER_CONCURRENCY": "4"}
    chosen = create_celery(Settings.from_env(env)).conf
    assert (chosen.worker_pool, chosen.worker_concurrency) == ("prefork", 4)


def test_workers_hand_back_a_dead_workers_messages_at_the_visibility_timeouts_pace() -> None:
    from workers.celery_app import create_celery

    def options(timeout: str) -> dict[str, int]:
        env = {"SENDBEAT_VISIBILITY_TIMEOUT": timeout}
        return dict(create_celery(Settings.from_env(env)).conf.broker_transport_options)

    # kombu's defaults would look every 10 s x 10 and keep a dead worker's lock 300 s.
    assert options("900") == {"visibility_timeout": 900, "unacked_restore_interval": 10,
                              "unacked_restore_throttle": 1, "unacked_restore_limit": 200,
                              "unacked_mutex_expire": 50}  # fmt: skip
    assert options("5")["unacked_restore_interval"] == 1
    assert options("5")["unacked_mutex_expire"] == 5


def test_message_limits_come_from_their_variables() -> None:
    defaults = Settings.from_env({})
    assert defaults.message_limits == MessageLimits()
    assert (defaults.max_recipients, defaults.max_message_bytes) == (1000, 25 * 1024 * 1024)
    assert (defaults.max_variables_bytes, defaults.max_refs) == (1024 * 1024, 20)
    assert defaults.ref_max_total_bytes == 25 * 1024 * 1024
    env = {
        "SENDBEAT_MAX_RECIPIENTS": "50",
        "SENDBEAT_MAX_MESSAGE_BYTES": "10485760",
        "SENDBEAT_MAX_VARIABLES_BYTES": "4096",
        "SENDBEAT_MAX_REFS": "0",
        "SENDBEAT_REF_MAX_TOTAL_BYTES": "1000",
    }
    settings = Settings.from_env(env)
    assert settings.message_limits == MessageLimits(50, 10485760, 4096, 0)
    assert settings.ref_max_total_bytes == 1000
