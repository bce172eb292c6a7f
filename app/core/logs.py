"""Structured logs: one JSON object per line (``SENDBEAT_LOG_FORMAT=json``) with ``ts``,
``level``, ``logger``, ``message`` and, where known, ``instance_id`` and ``event_id``.

Those two come from a record's ``extra`` or from the log context, a context variable
the worker binds for each execution (``bind``, ``clear``), so every line written while one
execution runs names it.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

CONTEXT_FIELDS = ("instance_id", "event_id")
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"

_context: ContextVar[dict[str, str]] = ContextVar("sendbeat_log_context", default={})  # noqa: B039


def bind(**fields: str) -> None:
    """Add fields to the current log context (empty values are dropped)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})


def clear() -> None:
    _context.set({})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _context.get()
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None) or context.get(name)
            if value:
                entry[name] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def use_json(loggers: list[logging.Logger]) -> None:
    """Give every handler of these loggers the JSON formatter."""
    formatter = JsonFormatter()
    for logger in loggers:
        for handler in logger.handlers:
            handler.setFormatter(formatter)


def configure(log_format: str, level: int | str = logging.INFO) -> None:
    """Set up the root logger of a process that has no logging of its own (the web):
    one stderr handler in the chosen format. Calling it again replaces that handler."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "sendbeat", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.sendbeat = True  # type: ignore[attr-defined]
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root.addHandler(handler)
    root.setLevel(level)
