"""The open HTTP/1.1 connections of a running gateway, for shutdown and for /metrics.

Shutdown (server.py) is: stop accepting, close idle keep-alive connections at
once, let busy ones finish their answer (sent with ``Connection: close``),
and at ``shutdown_timeout`` cut what is left.  Each connection registers
here from ``connection_made`` to ``connection_lost``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol


class Closeable(Protocol):
    @property
    def busy(self) -> bool: ...

    def close_when_idle(self) -> None: ...

    def cut(self) -> None: ...

    async def finished(self) -> None: ...


class ConnectionSet:
    __slots__ = ("_open", "_peak", "draining")

    def __init__(self) -> None:
        self._open: set[Closeable] = set()
        self._peak = 0  # the most open at once since take_peak (gateway/ops/heap.py)
        self.draining = False

    def add(self, connection: Closeable) -> None:
        opened = self._open
        opened.add(connection)
        if len(opened) > self._peak:
            self._peak = len(opened)

    def take_peak(self) -> int:
        """The most connections open at once since the last call; the count restarts from now.

        A burst can open and close thousands of connections between two looks
        at ``len()``: the high-water mark is what the heap trimmer needs.
        """
        peak, self._peak = self._peak, len(self._open)
        return peak

    def discard(self, connection: Closeable) -> None:
        self._open.discard(connection)

    def __len__(self) -> int:
        return len(self._open)

    def drain(self) -> None:
        """Answers from now on carry ``Connection: close``; idle connections close now."""
        self.draining = True
        for connection in list(self._open):
            connection.close_when_idle()

    async def wait_closed(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for busy connections to finish, then cut the rest."""
        self.drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while self._open:
                    await asyncio.gather(*(c.finished() for c in list(self._open)))
        for connection in list(self._open):
            connection.cut()
        self._open.clear()
