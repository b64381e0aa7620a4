"""A deadline that moves at the cost of a float store.

Used by the upstream connection (the route timeout, pushed on every body
chunk), by the HTTP/1.1 server protocol (header read and keep-alive idle,
moved on every request) and by the HTTP/2 one (idle, moved on every stream).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LazyTimer:
    """One ``TimerHandle`` whose ``deadline`` may move at any time.

    Moving the deadline later stores a float; the handle is only replaced
    when the new deadline is earlier than the handle, or when the handle
    fires before the moved deadline.  ``disarm`` is lazy too: the handle
    is left to fire once, finds nothing to do and is dropped.  A fresh ``call_at`` per body chunk (or
    an ``asyncio.timeout`` per request) cost a handle, a heap push and a
    cancellation each time; this costs one handle per deadline that expires
    or is reached.  The callback is held only while the timer runs: an owner
    whose bound method it is is not kept in a reference cycle once stopped.
    """

    __slots__ = ("_handle", "_loop", "_on_expiry", "deadline")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._on_expiry: Callable[[], None] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.deadline = 0.0

    def start(self, deadline: float, on_expiry: Callable[[], None]) -> None:
        """Call ``on_expiry`` at ``deadline`` (a loop time), unless moved or stopped first."""
        self.deadline = deadline
        self._on_expiry = on_expiry
        handle = self._handle
        if handle is None or handle.when() > deadline:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(deadline, self._check)

    def push(self, seconds: float) -> None:
        """The deadline is now ``seconds`` from now (later than before, as a rule)."""
        self.deadline = self._loop.time() + seconds

    def disarm(self) -> None:
        """No deadline until the next ``start``; the handle is not cancelled (a float store)."""
        self._on_expiry = None

    @property
    def armed(self) -> bool:
        return self._on_expiry is not None

    def stop(self) -> None:
        """No deadline, and no handle: for an owner that goes away."""
        self._on_expiry = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        if self._on_expiry is None:
            return  # disarmed since: nothing to do until the next start
        if self._loop.time() < self.deadline:
            self._handle = self._loop.call_at(self.deadline, self._check)
            return
        on_expiry, self._on_expiry = self._on_expiry, None
        on_expiry()
