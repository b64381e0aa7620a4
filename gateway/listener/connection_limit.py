"""The cap on open connections per listener (``limits.max_connections``).

Each idle keep-alive TLS connection costs memory (TLS buffers, parser,
protocol) until its timeout, so without a cap a caller that opens
connections faster than they time out exhausts memory.  A connection over
the cap gets a JSON 503 right after its handshake and is closed
(gateway/http1/server.py).
"""

from __future__ import annotations

import logging

from gateway.ops.throttle import ThrottledWarning

log = logging.getLogger("gateway")


class ConnectionLimit:
    """Open connections of one listener, against ``limits.max_connections``."""

    __slots__ = ("_warn", "admitted", "limit", "open", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0
        self.admitted = 0  # completed handshakes let in, for /metrics
        self._warn = ThrottledWarning(log)

    def admit(self) -> bool:
        if self.open >= self.limit:
            self.refused += 1
            self._warn.warning(
                "connection refused: limits.max_connections reached",
                event="connection_refused",
                limit=self.limit,
            )
            return False
        self.open += 1
        self.admitted += 1
        return True

    def release(self) -> None:
        self.open -= 1
