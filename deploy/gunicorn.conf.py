"""Gunicorn settings for the web process, in one file (Procfile: web)."""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("SENDBEAT_WEB_THREADS", "4"))
worker_class = "gthread"
# Heroku gives 30 s between SIGTERM and SIGKILL: finish in-flight requests within it.
graceful_timeout = 25
timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
forwarded_allow_ips = "*"


def on_starting(server):
    """Refuse to start on a store whose key layout this version does not read (the
    message says what to run); app.core.layout."""
    from app.core.keys import Keys
    from app.core.layout import EX_CONFIG, refusal
    from app.core.redis_client import connect
    from app.core.settings import Settings

    settings = Settings.from_env()
    keys = Keys(settings.key_prefix, settings.store_shards)
    if refusal(connect(settings.redis_url), keys, "web") is not None:
        raise SystemExit(EX_CONFIG)
