"""The Celery app the ``celery`` command loads (``celery -A workers.main ...``),
configured from the environment."""

from app.core.settings import Settings
from workers.celery_app import create_celery

celery = create_celery(Settings.from_env())
