"""Giving the heap back to the OS after a burst of connections.

Each mTLS connection holds 32 to 38 KiB of OpenSSL state in malloc'd memory
(docs/design/data-plane.md, "Memory").  When a burst of thousands of callers
leaves, glibc keeps the freed chunks for reuse: the heap is mostly free but
fragmented, so RSS stays at the burst's peak (bench/RESULTS.md measured
+176 % an hour after 16 bursts).  ``malloc_trim(0)`` hands every free page back
(``MADV_DONTNEED``), wherever it lies in the heap.

``HeapTrimmer`` looks at the open connection count every few seconds and
trims once it has fallen well below its peak since the last trim: after a
burst, never on a steady load.  The peak is the connection set's high-water
mark, not a sample: a burst of callers can come and go between two looks.
The call runs in a worker thread (ctypes releases the GIL), so the event
loop does not wait for the heap walk.  Where the C library has no
``malloc_trim`` (musl, macOS) it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gateway")

CHECK_SECONDS = 5.0
# A trim after the open connections fell by at least this many, and to at
# most half of their peak: a burst's worth of freed TLS state, not churn.
MIN_DROP = 256


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (malloc.h, glibc >= 2.33): ten ``size_t`` counters."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes from sbrk (the main heap)
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes in mmapped chunks
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes in use
            "fordblks",  # bytes free but held
            "keepcost",  # releasable from the top of the heap
        )
    ]


def _libc_function(name: str) -> Any:
    """A C library function by name; None where the library has none (musl, macOS)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None


def mallinfo() -> MallInfo2 | None:
    """glibc's allocator counters now; None where there is no ``mallinfo2`` (musl, macOS).

    For the benchmarks and the memory tests: where OpenSSL's per-connection
    state and buffers live.  Under a preloaded allocator (jemalloc) these
    are glibc's counters only, and say nothing about that allocator's heap.
    """
    call = _libc_function("mallinfo2")
    if call is None:
        return None
    call.restype = MallInfo2
    info: MallInfo2 = call()
    return info


def _load_malloc_trim() -> Callable[[int], int] | None:
    trim = _libc_function("malloc_trim")
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


class HeapTrimmer:
    """Trims the heap after the open connections fell from a peak (see the module docstring)."""

    def __init__(
        self,
        open_connections: Callable[[], int],
        *,
        peak: Callable[[], int] | None = None,
        check_seconds: float = CHECK_SECONDS,
        min_drop: int = MIN_DROP,
        trim: Callable[[int], int] | None = None,
        collect: Callable[[], object] = gc.collect,
    ) -> None:
        self._open = open_connections
        # The high-water mark since the last look (ConnectionSet.take_peak):
        # a burst opens and closes thousands of connections between two
        # looks, and sampling the count alone missed whole bursts.
        self._peak_since = peak
        self._check_seconds = check_seconds
        self._min_drop = min_drop
        self._trim = trim if trim is not None else _load_malloc_trim()
        self._collect = collect
        self._peak = 0
        self.trims = 0  # for tests and the debug log
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._trim is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="heap-trim")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def due(self) -> bool:
        """Note the count now; True when a trim is due (and the peak restarts from now)."""
        now = self._open()
        if self._peak_since is not None:
            self._peak = max(self._peak, self._peak_since())
        if now > self._peak:
            self._peak = now
            return False
        if self._peak - now >= self._min_drop and now * 2 <= self._peak:
            self._peak = now
            return True
        return False

    async def _run(self) -> None:
        trim = self._trim
        assert trim is not None
        while True:
            await asyncio.sleep(self._check_seconds)
            if self.due():
                # A full collection first: it also empties the interpreter's
                # free lists (tuples, floats, dicts, lists), whose blocks
                # were freed last, at the burst's end, and would each keep
                # a pymalloc pool, and with it a 1 MiB arena, in memory.
                # 1-7 ms measured after bursts of 2,000 connections.
                self._collect()
                released = await asyncio.to_thread(trim, 0)
                self.trims += 1
                log.debug("malloc_trim after a connection burst (released: %s)", bool(released))
