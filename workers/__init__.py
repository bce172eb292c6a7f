"""The Celery side of sendbeat: the Celery app, the beat scheduler, tasks and delivery."""
