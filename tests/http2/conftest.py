"""A TLS listener serving HTTP/2 by ALPN with a handler of the test's own (no gateway around it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gateway.http2.limits import Http2Limits
from gateway.http2.server import Http2ServerProtocol
from gateway.listener.handshakes import HandshakeStats
from gateway.listener.stack import AlpnChooser
from gateway.listener.tls_context import ALPN_WITH_HTTP2
from gateway.listener.tls_protocol import TlsServerProtocol
from gateway.pipeline.messages import Handler
from tests.pki import Pki


class Http1Stub(asyncio.Protocol):
    """What an HTTP/1.1 connection gets here: one fixed line, so a test sees which protocol ran."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"HTTP/1.1 418 stub\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        transport.close()


@dataclass
class H2Listener:
    port: int
    server: asyncio.Server
    connections: list[Http2ServerProtocol] = field(default_factory=list)


StartH2 = Callable[..., Awaitable[H2Listener]]


@pytest.fixture
async def h2_listener(pki: Pki) -> AsyncIterator[StartH2]:
    servers: list[H2Listener] = []

    async def start(handler: Handler, *, limits: Http2Limits | None = None) -> H2Listener:
        context = pki.listener_context(alpn=ALPN_WITH_HTTP2)
        connections: list[Http2ServerProtocol] = []

        def http2() -> asyncio.Protocol:
            protocol = Http2ServerProtocol(handler, limits=limits)
            connections.append(protocol)
            return protocol

        def tls_layer() -> asyncio.Protocol:
            return TlsServerProtocol(
                lambda: context,
                lambda: AlpnChooser(Http1Stub, http2),
                handshake_timeout=5,
                observer=HandshakeStats(),
            )

        server = await asyncio.get_running_loop().create_server(tls_layer, "127.0.0.1", 0)
        listener = H2Listener(server.sockets[0].getsockname()[1], server, connections)
        servers.append(listener)
        return listener

    yield start
    for listener in servers:
        for connection in listener.connections:
            connection.cut()
        listener.server.close()
        await listener.server.wait_closed()
