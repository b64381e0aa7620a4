"""Counting and logging the TLS handshakes of one listener."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from prometheus_client import Counter

from gateway.listener.session import TlsSession
from gateway.ops.throttle import ThrottledWarning

log = logging.getLogger("gateway.tls")


class HandshakeObserver(Protocol):
    """What the TLS layer tells of each handshake (``HandshakeStats`` below)."""

    def handshake_started(self) -> None: ...

    def handshake_completed(self, session: TlsSession) -> None: ...

    def handshake_failed(self, kind: str, reason: str, peer: Any) -> None: ...


class HandshakeStats:
    """Started/completed counts for /metrics, failures by kind, a log line per failure.

    Failure lines are rate-limited per kind: a scanner or a client retrying in
    a loop must not flood the log; the counter still counts every one.
    """

    __slots__ = ("_children", "_failures", "_warnings", "completed", "started")

    def __init__(self, failures: Counter | None = None) -> None:
        self.started = 0
        self.completed = 0
        self._failures = failures
        self._children: dict[str, Any] = {}  # metric children, bound once per kind
        self._warnings: dict[str, ThrottledWarning] = {}

    def count_failures_in(self, failures: Counter) -> None:
        """``tls_handshake_failures_total{reason}``: wired once the metrics exist."""
        self._failures = failures
        self._children.clear()

    def handshake_started(self) -> None:
        self.started += 1

    def handshake_completed(self, session: TlsSession) -> None:
        self.completed += 1

    def handshake_failed(self, kind: str, reason: str, peer: Any) -> None:
        if self._failures is not None:
            child = self._children.get(kind)
            if child is None:
                child = self._children[kind] = self._failures.labels(kind)
            child.inc()
        warn = self._warnings.get(kind)
        if warn is None:
            warn = self._warnings[kind] = ThrottledWarning(log)
        host = peer[0] if isinstance(peer, tuple) and peer else peer
        warn.warning(
            f"TLS handshake failed: {reason}",
            event="tls_handshake_failed",
            kind=kind,
            reason=reason,
            peer=host,
        )
