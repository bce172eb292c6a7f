"""sendbeat's domain layer: schedules, the Redis store and its keys, Lua scripts.

Nothing in this package imports Flask or Celery; the HTTP dialects (``app.api``)
and the Celery side (``workers``) both sit on top of it.
"""
