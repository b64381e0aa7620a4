"""Logging: one JSON object per line by default (machine-read in production).

``logging.format: text`` writes the same fields as ``key=value`` pairs
(gateway.ops.logfmt): the reason, thumbprint and subject of a refusal are in
both, and neither lets an input value start a new line.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
from typing import Any

from gateway.ops.config import LoggingConfig
from gateway.ops.logfmt import rfc3339, text_line

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}


def record_fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, Any]:
    """Every field of a record: the standard four, the ``extra`` ones, the exception."""
    entry: dict[str, Any] = {
        "time": rfc3339(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "message": record.getMessage(),
    }
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_"):
            entry[key] = value
    if record.exc_info:
        entry["exception"] = formatter.formatException(record.exc_info)
    return entry


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_fields(record, self), default=str)


class TextFormatter(logging.Formatter):
    """The JSON formatter's fields as ``key=value`` pairs, one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        return text_line(record_fields(record, self))


_listener: logging.handlers.QueueListener | None = None


def stop_logging() -> None:
    """Write every queued line now: before ``os._exit``, which runs no atexit hook."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def configure_logging(config: LoggingConfig) -> None:
    """Log through a queue: formatting and writing happen on a background thread,
    off the event loop (a blocked stderr pipe must not stall request handling)."""
    global _listener
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    if _listener is not None:
        _listener.stop()
    log_queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(log_queue, handler, respect_handler_level=False)
    _listener.start()
    atexit.register(_listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(log_queue)]
    root.setLevel(config.level)
    # aiohttp logs every malformed request at ERROR with a traceback: that is a
    # caller's mistake, answered with 400, not a server fault.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
