"""StreamByteStream: the ByteStream shape over asyncio streams, plain and TLS, on loopback."""

from __future__ import annotations

import asyncio

from gateway.websocket import StreamByteStream
from tests.pki import Pki
from tests.websocket.conftest import server_tls
from tests.websocket.peers import PATIENCE, tcp_pair


async def test_bytes_both_ways_then_end_of_stream() -> None:
    caller, gateway, close = await tcp_pair()
    try:
        gateway.write(b"hello")
        await gateway.drain()
        assert await caller.read() == b"hello"
        caller.write(b"back")
        await caller.drain()
        assert await gateway.read() == b"back"
        caller.close()
        caller.close()  # a second close does nothing
        assert await gateway.read() == b""
    finally:
        close()


async def test_connect_over_tls_checks_the_name_and_carries_bytes(upstream_pki: Pki) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_tls(upstream_pki))
    port = server.sockets[0].getsockname()[1]
    try:
        stream = await StreamByteStream.connect(
            "127.0.0.1", port, tls=upstream_pki.client_context(None)
        )
        assert stream.get_extra_info("ssl_object") is not None
        stream.write(b"over tls")
        async with asyncio.timeout(PATIENCE):
            assert await stream.read() == b"over tls"
        stream.close()
        await stream.wait_closed()
    finally:
        server.close()
