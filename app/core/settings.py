"""Configuration, read from the environment once into a frozen object (12-factor).

A bad value stops the process at start with a message naming the variable.
Factories (``create_app``, ``create_celery``) take a ``Settings``; tests build one
explicitly instead of editing ``os.environ``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from app.core.keys import MAX_SHARDS
from app.core.message import MessageLimits
from app.core.redis_client import CLUSTER_SCHEME, SENTINEL_SCHEME, ClusterUrl, SentinelUrl

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_SCHEMES = {"redis", "rediss", "unix", SENTINEL_SCHEME}
STORE_SCHEMES = REDIS_SCHEMES | {CLUSTER_SCHEME}
_RATE = re.compile(r"^\s*\d+\s*(/|per)\s*\d*\s*(second|minute|hour|day)s?\s*$", re.I)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
LOG_FORMATS = ("text", "json")
WORKER_POOLS = ("threads", "prefork", "solo")


class SettingsError(Exception):
    """Raised at start when an environment variable holds a value sendbeat cannot use."""


def _default_mail_url() -> str:
    return "maildir://" + str(Path("var/mail").resolve())


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str = ""  # empty: the same as redis_url
    mail_url: str = field(default_factory=_default_mail_url)
    port: int = 5000
    key_prefix: str = "sendbeat"
    queue: str = "sendbeat"
    allow_private_refs: bool = False
    ref_timeout: float = 10.0
    ref_max_bytes: int = 10 * 1024 * 1024
    ref_max_redirects: int = 5
    ref_max_total_bytes: int = 25 * 1024 * 1024  # all of one message's $refs together
    max_recipients: int = 1000
    max_message_bytes: int = 25 * 1024 * 1024  # about what Gmail and Outlook accept
    max_variables_bytes: int = 1024 * 1024
    max_refs: int = 20
    smtp_timeout: float = 30.0
    # Sending waits on the relay, not the CPU: threads keep many sends in flight in one
    # process (docs/operations.md, "Workers").
    worker_pool: str = "threads"
    worker_concurrency: int = 32
    # Executions per task message when there is a backlog (app.core.publisher).
    task_batch: int = 16
    # How many shards a new store's keys are split into (fixed once the store exists;
    # docs/operations.md, "Redis Cluster").
    store_shards: int = 1
    max_body_bytes: int = 10 * 1024 * 1024
    batch_limit: int = 1000
    retention_days: int = 30
    default_catchup_window: int = 300
    default_retries: int = 5
    beat_max_sleep: float = 1.0
    beat_batch_size: int = 1000
    send_lease: int = 300
    publish_grace: int = 30
    visibility_timeout: int = 900
    # Replicas that must hold an execution's record before it is sent or answered
    # (Redis WAIT): 1 with Sentinel, so a failover cannot lose an accepted send.
    redis_replicas: int = 0
    rate_limit_messaging: str = "600/minute"
    rate_limit_schedules: str = "60/minute"
    mail_domain: str = "sendbeat.local"
    beat_stale_after: float = 10.0
    log_format: str = "text"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def message_limits(self) -> MessageLimits:
        return MessageLimits(
            max_recipients=self.max_recipients,
            max_message_bytes=self.max_message_bytes,
            max_variables_bytes=self.max_variables_bytes,
            max_refs=self.max_refs,
        )

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        defaults = cls()
        # Heroku Redis serves rediss:// with a self-signed certificate and owns REDIS_URL,
        # so the option is added here, where every client (store, broker, limiter) reads it.
        verify = _bool(env, "SENDBEAT_REDIS_TLS_VERIFY", True)
        redis_url = _tls(_url(env, "REDIS_URL", defaults.redis_url, STORE_SCHEMES), verify)
        broker = _url(env, "BROKER_URL", "", REDIS_SCHEMES | {"amqp", "amqps"})
        if redis_url.startswith(f"{CLUSTER_SCHEME}:") and not broker:
            raise SettingsError(
                "REDIS_URL is a Redis Cluster, which cannot also be the Celery broker (kombu "
                "has no Cluster transport): set BROKER_URL to a separate Redis or RabbitMQ"
            )
        return cls(
            redis_url=redis_url,
            broker_url=_tls(broker, verify),
            mail_url=_url(
                env, "MAIL_URL", defaults.mail_url, {"smtp", "smtps", "maildir", "console"}
            ),
            port=_int(env, "PORT", defaults.port, 1, 65535),
            key_prefix=_word(env, "SENDBEAT_KEY_PREFIX", defaults.key_prefix),
            queue=_word(env, "SENDBEAT_QUEUE", defaults.queue),
            allow_private_refs=_bool(env, "SENDBEAT_ALLOW_PRIVATE_REFS", False),
            ref_timeout=_float(env, "SENDBEAT_REF_TIMEOUT", defaults.ref_timeout),
            ref_max_bytes=_int(env, "SENDBEAT_REF_MAX_BYTES", defaults.ref_max_bytes, 1),
            ref_max_redirects=_int(
                env, "SENDBEAT_REF_MAX_REDIRECTS", defaults.ref_max_redirects, 0, 20
            ),
            ref_max_total_bytes=_int(
                env, "SENDBEAT_REF_MAX_TOTAL_BYTES", defaults.ref_max_total_bytes, 1
            ),
            max_recipients=_int(env, "SENDBEAT_MAX_RECIPIENTS", defaults.max_recipients, 1),
            max_message_bytes=_int(
                env, "SENDBEAT_MAX_MESSAGE_BYTES", defaults.max_message_bytes, 1024
            ),
            max_variables_bytes=_int(
                env, "SENDBEAT_MAX_VARIABLES_BYTES", defaults.max_variables_bytes, 0
            ),
            max_refs=_int(env, "SENDBEAT_MAX_REFS", defaults.max_refs, 0),
            smtp_timeout=_float(env, "SENDBEAT_SMTP_TIMEOUT", defaults.smtp_timeout),
            worker_pool=_choice(env, "SENDBEAT_WORKER_POOL", defaults.worker_pool, WORKER_POOLS),
            worker_concurrency=_int(
                env, "SENDBEAT_WORKER_CONCURRENCY", defaults.worker_concurrency, 1, 1000
            ),
            task_batch=_int(env, "SENDBEAT_TASK_BATCH", defaults.task_batch, 1, 100),
            store_shards=_int(env, "SENDBEAT_STORE_SHARDS", defaults.store_shards, 1, MAX_SHARDS),
            max_body_bytes=_int(env, "SENDBEAT_MAX_BODY_BYTES", defaults.max_body_bytes, 1024),
            batch_limit=_int(env, "SENDBEAT_BATCH_LIMIT", defaults.batch_limit, 1),
            retention_days=_int(env, "SENDBEAT_RETENTION_DAYS", defaults.retention_days, 1),
            default_catchup_window=_int(
                env, "SENDBEAT_CATCHUP_WINDOW", defaults.default_catchup_window, 0
            ),
            default_retries=_int(env, "SENDBEAT_RETRIES", defaults.default_retries, 0, 50),
            beat_max_sleep=_float(env, "SENDBEAT_BEAT_MAX_SLEEP", defaults.beat_max_sleep),
            # claim.lua unpacks a batch into single commands: Lua's stack bounds it.
            beat_batch_size=_int(
                env, "SENDBEAT_BEAT_BATCH_SIZE", defaults.beat_batch_size, 1, 2000
            ),
            send_lease=_int(env, "SENDBEAT_SEND_LEASE", defaults.send_lease, 5),
            publish_grace=_int(env, "SENDBEAT_PUBLISH_GRACE", defaults.publish_grace, 1),
            visibility_timeout=_int(
                env, "SENDBEAT_VISIBILITY_TIMEOUT", defaults.visibility_timeout, 5
            ),
            redis_replicas=_int(env, "SENDBEAT_REDIS_REPLICAS", defaults.redis_replicas, 0, 10),
            rate_limit_messaging=_rate(
                env, "SENDBEAT_RATE_LIMIT_MESSAGING", defaults.rate_limit_messaging
            ),
            rate_limit_schedules=_rate(
                env, "SENDBEAT_RATE_LIMIT_SCHEDULES", defaults.rate_limit_schedules
            ),
            mail_domain=_word(env, "SENDBEAT_MAIL_DOMAIN", defaults.mail_domain),
            beat_stale_after=_float(env, "SENDBEAT_BEAT_STALE_AFTER", defaults.beat_stale_after),
            log_format=_choice(env, "SENDBEAT_LOG_FORMAT", defaults.log_format, LOG_FORMATS),
        )


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return None if value is None or value.strip() == "" else value.strip()


def _url(env: Mapping[str, str], name: str, default: str, schemes: set[str]) -> str:
    value = _get(env, name)
    if value is None:
        return default
    scheme = urlsplit(value).scheme
    if scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in sorted(schemes))
        raise SettingsError(f"{name}={value!r}: the URL must start with one of {allowed}")
    try:
        SentinelUrl.parse(value)
        ClusterUrl.parse(value)
    except ValueError as error:
        raise SettingsError(f"{name}: {error}") from None
    return value


def _int(
    env: Mapping[str, str], name: str, default: int, low: int = 0, high: int | None = None
) -> int:
    value = _get(env, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r}: expected a whole number") from None
    if number < low or (high is not None and number > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise SettingsError(f"{name}={value!r}: expected a number {bounds}")
    return number


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    value = _get(env, name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r}: expected a number of seconds") from None
    if number <= 0:
        raise SettingsError(f"{name}={value!r}: expected a positive number of seconds")
    return number


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingsError(f"{name}={value!r}: expected 1 or 0 (true/false, yes/no, on/off)")


def _word(env: Mapping[str, str], name: str, default: str) -> str:
    value = _get(env, name)
    if value is None:
        return default
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", value):
        raise SettingsError(f"{name}={value!r}: use letters, digits and _ . : - only")
    return value


def _rate(env: Mapping[str, str], name: str, default: str) -> str:
    value = _get(env, name)
    if value is None:
        return default
    if value.lower() == "none" or _RATE.match(value):
        return value
    raise SettingsError(f"{name}={value!r}: expected a rate such as 600/minute, or none")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _get(env, name)
    if value is None:
        return default
    if value.lower() not in choices:
        raise SettingsError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value.lower()


def _tls(url: str, verify: bool) -> str:
    """With verification off, a rediss:// URL skips the certificate check."""
    if verify or not url.startswith("rediss://") or "ssl_cert_reqs=" in url:
        return url
    return url + ("&" if "?" in url else "?") + "ssl_cert_reqs=none"
