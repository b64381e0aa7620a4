"""The caller's connection after ``101 Switching Protocols``, as a byte stream (RFC 9110 §7.8)."""

from __future__ import annotations

import asyncio

from gateway.http1.writer import ResponseWriter

# Past this many unread bytes the caller's side is paused (the relay is slower).
_HIGH_WATER = 256 * 1024


class UpgradedStream:
    """``gateway.pipeline.messages.ByteStream`` over the connection's transport."""

    __slots__ = ("_buffer", "_eof", "_paused", "_transport", "_waiter", "_writer")

    def __init__(
        self, transport: asyncio.Transport | None, writer: ResponseWriter, held: bytes
    ) -> None:
        self._transport = transport
        self._writer = writer
        self._buffer = bytearray(held)  # what arrived right after the upgrade request
        self._eof = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes:
        while not self._buffer:
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
