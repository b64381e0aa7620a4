"""Fixtures: wsproto upstream servers, and relays between a caller socket and one of them."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from socket import SO_RCVBUF, SO_SNDBUF, SOL_SOCKET
from typing import Any

import pytest
from wsproto.connection import Connection, ConnectionType

from gateway.pipeline.facts import RequestFacts
from gateway.websocket import (
    Ending,
    OpenSockets,
    Recheck,
    StreamByteStream,
    WebSocketLimits,
    connect_upstream,
    relay,
)
from tests.pki import Pki
from tests.websocket.peers import PATIENCE, Peer, WsServer, tcp_pair

StartServer = Callable[..., Awaitable[WsServer]]


@pytest.fixture(scope="session")
def upstream_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA and a ``localhost``/127.0.0.1 server certificate for ``wss://`` upstreams."""
    return Pki(tmp_path_factory.mktemp("ws-pki"))


def server_tls(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert_path, pki.server.key_path)
    return context


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start a ``WsServer`` (keyword arguments: its fields); all are stopped after the test."""
    started: list[WsServer] = []

    async def start(**options: Any) -> WsServer:
        server = await WsServer(**options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def ws_server(start_server: StartServer) -> WsServer:
    return await start_server()


@dataclass
class Relayed:
    """A relay running between ``caller`` (the test's end of a socket pair) and ``upstream``."""

    caller: Peer
    upstream: WsServer
    task: asyncio.Task[Ending]
    gateway_end: StreamByteStream

    async def ending(self) -> Ending:
        async with asyncio.timeout(PATIENCE):
            return await self.task


OpenRelay = Callable[..., Awaitable[Relayed]]


@pytest.fixture
async def open_relay(ws_server: WsServer) -> AsyncIterator[OpenRelay]:
    """Open relays to ``ws_server`` (or ``upstream=``), as the proxy stage and the HTTP/1.1 protocol would.

    The gateway's end of each socket pair is closed when its relay returns,
    as the protocol does once ``Response.upgraded`` returned.
    """
    opened: list[tuple[Relayed, Callable[[], None]]] = []

    async def open_one(
        *,
        upstream: WsServer | None = None,
        limits: WebSocketLimits | None = None,
        sockets: OpenSockets | None = None,
        recheck: Recheck | None = None,
        admitted_at: Hashable = None,
        expires_at: float = float("inf"),
        buffers: int | None = None,
    ) -> Relayed:
        server = upstream or ws_server
        caller_end, gateway_end, close = await tcp_pair(buffers=buffers)
        socket = await connect_upstream(
            server.url + "/ws",
            [("Host", "upstream.test")],
            protocols=[],
            within=PATIENCE,
            info=RequestFacts(),
        )
        if buffers is not None:
            upstream_socket = socket.stream.get_extra_info("socket")
            upstream_socket.setsockopt(SOL_SOCKET, SO_RCVBUF, buffers)
            upstream_socket.setsockopt(SOL_SOCKET, SO_SNDBUF, buffers)

        async def run() -> Ending:
            try:
                return await relay(
                    gateway_end,
                    socket,
                    limits or WebSocketLimits(),
                    sockets if sockets is not None else OpenSockets(lambda: 0),
                    recheck,
                    admitted_at=admitted_at,
                    expires_at=expires_at,
                )
            finally:
                gateway_end.close()

        relayed = Relayed(
            Peer(caller_end, Connection(ConnectionType.CLIENT)),
            server,
            asyncio.create_task(run()),
            gateway_end,
        )
        opened.append((relayed, close))
        return relayed

    yield open_one
    for relayed, close in opened:
        relayed.task.cancel()
        await asyncio.gather(relayed.task, return_exceptions=True)
        close()
