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
