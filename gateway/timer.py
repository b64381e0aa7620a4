"""A deadline that moves on every read at the cost of a float store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LazyTimer:
    """One ``TimerHandle`` whose ``deadline`` may move forward at any time.

    Moving the deadline stores a float; the handle is only replaced when it
    fires before the moved deadline.  A fresh ``call_at`` per body chunk (or
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
        self.deadline = deadline
        self._on_expiry = on_expiry
        if self._handle is None:
            self._handle = self._loop.call_at(deadline, self._check)

    def push(self, seconds: float) -> None:
        """The deadline is now ``seconds`` from now (later than before, as a rule)."""
        self.deadline = self._loop.time() + seconds

    def stop(self) -> None:
        self._on_expiry = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        if self._loop.time() < self.deadline:
            self._handle = self._loop.call_at(self.deadline, self._check)
            return
        on_expiry, self._on_expiry = self._on_expiry, None
        if on_expiry is not None:
            on_expiry()
