"""What both ends of an HTTP/2 connection share: the h2 state, writing, and sending within windows.

h2 is sans-IO: it turns bytes into events and calls into frames, and keeps
the flow-control windows.  This base class owns the transport, writes out what
h2 queued, and lets a coroutine send a body no faster than the peer's windows
(RFC 9113 §5.2, §6.9) and the socket's write buffer allow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import FlowControlError, ProtocolError, StreamClosedError


class StreamGone(Exception):
    """The stream was reset, or the connection closed, while something was sent on it."""


class H2Endpoint(asyncio.Protocol):
    """One HTTP/2 connection over any transport; subclasses handle h2's events."""

    def __init__(self, config: H2Configuration) -> None:
        self.h2 = H2Connection(config)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._flush_scheduled = False
        self._unflushed = 0  # DATA bytes queued in h2 since the last write
        self._writable = asyncio.Event()
        self._writable.set()
        # A sender waiting for credit, per stream (RFC 9113 §6.9.1: the stream's
        # and the connection's window both bound a DATA frame).
        self._window_waiters: dict[int, asyncio.Future[None]] = {}

    # -- writing -----------------------------------------------------------------

    def flush(self) -> None:
        """Write out what h2 queued, now (and so also what ``flush_soon`` left)."""
        self._unflushed = 0
        data = self.h2.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def flush_soon(self) -> None:
        """Write out what h2 queued at the end of this loop iteration.

        The streams answered in one iteration (32 in flight, say) leave in one
        TLS record and one ``send`` instead of one per frame: per-frame writes
        were three SSL_write calls and three syscalls per request.
        """
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def reset(self, stream_id: int, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        """RST_STREAM, where the stream is still open (a closed one needs none)."""
        if self.closed:
            return
        try:
            self.h2.reset_stream(stream_id, code)
        except (StreamClosedError, ProtocolError):
            return
        self.wake_sender(stream_id)
        self.flush()

    # -- sending within the windows -------------------------------------------------

    async def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Send ``data`` as DATA frames, waiting for window credit and a writable socket.

        Empty ``data`` with ``end_stream`` is one empty DATA frame with END_STREAM.
        """
        if not data and not end_stream:
            return
        offset, total = 0, len(data)
        while True:
            if not self._writable.is_set():
                await self._writable.wait()
            if self.closed:
                raise StreamGone(stream_id)
            try:
                window = self.h2.local_flow_control_window(stream_id)
            except (StreamClosedError, ProtocolError):
                raise StreamGone(stream_id) from None
            if window <= 0 and offset < total:
                await self._wait_for_window(stream_id)
                continue
            size = min(window, self.h2.max_outbound_frame_size, total - offset)
            last = offset + size == total
            try:
                chunk = data[offset : offset + size]
                self.h2.send_data(stream_id, chunk, end_stream=end_stream and last)
            except (StreamClosedError, ProtocolError, FlowControlError):
                raise StreamGone(stream_id) from None
            offset += size
            self._unflushed += size
            if self._unflushed >= _FLUSH_NOW_BYTES:
                # A large body goes out as it is framed: the socket's buffer,
                # and pause_writing, bound it, not the peer's window alone.
                self.flush()
            else:
                self.flush_soon()
            if last:
                return

    async def end_stream(
        self, stream_id: int, trailers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """END_STREAM: on a trailer block (RFC 9113 §8.1) or an empty DATA frame."""
        if not trailers:
            await self.send_data(stream_id, b"", end_stream=True)
            return
        if self.closed:
            raise StreamGone(stream_id)
        try:
            self.h2.send_headers(stream_id, list(trailers), end_stream=True)
        except (StreamClosedError, ProtocolError):
            raise StreamGone(stream_id) from None
        self.flush_soon()

    async def _wait_for_window(self, stream_id: int) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._window_waiters[stream_id] = waiter
        try:
            await waiter
        finally:
            if self._window_waiters.get(stream_id) is waiter:
                del self._window_waiters[stream_id]

    def wake_sender(self, stream_id: int | None = None) -> None:
        """Credit arrived (WINDOW_UPDATE, SETTINGS) or the stream ended: the sender looks again.

        ``None`` (the connection's window, or the initial window size changed)
        wakes every waiting sender.
        """
        if stream_id is None or stream_id == 0:
            waiters = list(self._window_waiters.values())
            self._window_waiters.clear()
        else:
            waiter = self._window_waiters.pop(stream_id, None)
            waiters = [waiter] if waiter is not None else []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self._writable.set()  # blocked senders wake and find the connection gone
        self.wake_sender(None)


# Past this many DATA bytes queued in one loop iteration, write at once.
_FLUSH_NOW_BYTES = 64 * 1024
