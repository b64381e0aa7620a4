"""A ``ByteStream`` over asyncio streams.

``gateway.pipeline.messages.ByteStream`` is what a listener protocol hands
to an upgraded request's ``run``; this is the same shape over an
``asyncio.StreamReader``/``StreamWriter`` pair, which is how the gateway
holds a WebSocket's upstream connection (plain TCP or TLS), and how tests
stand in for a listener protocol over a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any


class StreamByteStream:
    """``ByteStream`` over asyncio streams; reads and writes raise OSError once the peer is gone."""

    # One read takes what the transport has, up to this much: wsproto frames
    # are parsed from each read, so it also bounds what one read can queue.
    read_size = 64 * 1024

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(
        cls, host: str, port: int, *, tls: ssl.SSLContext | None = None
    ) -> StreamByteStream:
        """A TCP connection (TLS with ``tls``, the host name checked by it) to ``host:port``."""
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, server_hostname=host if tls is not None else None
        )
        return cls(reader, writer)

    async def read(self) -> bytes:
        """The next bytes from the peer; b"" at its end of stream."""
        return await self._reader.read(self.read_size)

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        """Return once the transport's write buffer is below its high-water mark."""
        await self._writer.drain()

    def close(self) -> None:
        """Close the connection (TLS: close_notify first); a second call does nothing."""
        self._writer.close()

    async def wait_closed(self, within: float = 5.0) -> None:
        """Wait, at most ``within`` seconds, until the connection is closed."""
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(within):
                await self._writer.wait_closed()

    def abort(self) -> None:
        """Drop the connection at once, whatever is still buffered."""
        self._writer.transport.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._writer.get_extra_info(name, default)
