"""Rate-limited warnings: a flood of bad input must not become a flood of log lines."""

from __future__ import annotations

import logging
import time
from typing import Any


class ThrottledWarning:
    """At most one line per ``interval`` seconds; the next one says how many were held back."""

    __slots__ = ("_interval", "_last", "_logger", "_suppressed")

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last = -float("inf")
        self._suppressed = 0

    def warning(self, message: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        self._last = now
        extra = dict(fields)
        if self._suppressed:
            extra["suppressed"] = self._suppressed
            self._suppressed = 0
        self._logger.warning(message, extra=extra)
