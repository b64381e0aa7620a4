"""The package as the proxy stage uses it, with a WebSocket client we did not write (aiohttp's).

A minimal stand-in for the HTTP/1.1 protocol parses the upgrade (h11 here,
httptools in the gateway), runs ``check_upgrade``, ``connect_upstream`` and
``accept_headers``, writes the 101 and hands the connection to ``relay``:
the 101 must satisfy aiohttp's client check, and the frames, pings and close
codes (1014 among them) must be ones it takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import h11
import pytest
from aiohttp import WSMsgType
from multidict import CIMultiDict

from gateway.errors import GatewayError
from gateway.pipeline.facts import RequestFacts
from gateway.websocket import (
    OpenSockets,
    StreamByteStream,
    WebSocketLimits,
    accept_headers,
    check_upgrade,
    connect_upstream,
    offered_protocols,
    relay,
)
from tests.websocket.conftest import StartServer
from tests.websocket.peers import PATIENCE, WsServer

LIMIT = 64 * 1024


class StandIn:
    """An HTTP/1.1 'gateway' for one route: every request is an upgrade to ``upstream``."""

    def __init__(self, upstream: WsServer) -> None:
        self.upstream = upstream
        self.sockets = OpenSockets(lambda: 0)
        self.limits = WebSocketLimits(max_message_bytes=LIMIT)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self.sockets.close_all(within=PATIENCE)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(StreamByteStream(reader, writer)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, stream: StreamByteStream) -> None:
        parser = h11.Connection(h11.SERVER)
        try:
            event: object = h11.NEED_DATA
            while event is h11.NEED_DATA:
                parser.receive_data(await stream.read())
                event = parser.next_event()
            assert isinstance(event, h11.Request)
            headers = CIMultiDict((n.decode(), v.decode()) for n, v in event.headers)
            try:
                check_upgrade(headers)
                upstream = await connect_upstream(
                    self.upstream.url + event.target.decode(),
                    [(n, v) for n, v in headers.items() if n.lower() != "host"]
                    + [("Host", "upstream.test")],
                    protocols=offered_protocols(headers),
                    within=PATIENCE,
                    info=RequestFacts(),
                )
            except GatewayError as refused:
                stream.write(
                    f"HTTP/1.1 {refused.status} Refused\r\nContent-Length: 0\r\n\r\n".encode()
                )
                return
            head = "HTTP/1.1 101 Switching Protocols\r\n"
            head += "".join(f"{n}: {v}\r\n" for n, v in accept_headers(headers, upstream))
            stream.write((head + "\r\n").encode())
            await relay(stream, upstream, self.limits, self.sockets, None)
        finally:
            stream.close()


@pytest.fixture
async def stand_in(start_server: StartServer) -> AsyncIterator[StandIn]:
    gateway = StandIn(await start_server(subprotocols=("v2",)))
    await gateway.start()
    yield gateway
    await gateway.stop()


async def _closed_with(ws: aiohttp.ClientWebSocketResponse[bool]) -> tuple[int, str]:
    async with asyncio.timeout(PATIENCE):
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.CLOSE:
                return int(msg.data), str(msg.extra)
            assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PONG), msg


async def test_aiohttps_client_upgrades_gets_the_upstreams_subprotocol_and_no_compression(
    stand_in: StandIn,
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"http://127.0.0.1:{stand_in.port}/ws",
            protocols=("chat", "v2"),
            compress=15,
            autoping=False,  # pongs are shown, not swallowed
        ) as ws,
    ):
        assert ws.protocol == "v2"
        assert ws.compress == 0
        await ws.send_str("héllo")
        assert await ws.receive_str(timeout=PATIENCE) == "héllo"
        await ws.send_bytes(b"\0" * LIMIT)
        assert await ws.receive_bytes(timeout=PATIENCE) == b"\0" * LIMIT
        await ws.ping(b"are you there")
        pong = await ws.receive(timeout=PATIENCE)
        assert (pong.type, pong.data) == (WSMsgType.PONG, b"are you there")
        await ws.send_bytes(b"\0" * (LIMIT + 1))
        assert await _closed_with(ws) == (1009, f"message over the {LIMIT}-byte limit")
    assert await stand_in.upstream.closed_with() == (1009, f"message over the {LIMIT}-byte limit")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("close 4001 session expired", (4001, "session expired")),
        ("vanish", (1014, "the upstream connection was lost")),
    ],
)
async def test_aiohttps_client_takes_the_close_codes_the_gateway_relays_or_sends(
    stand_in: StandIn, command: str, expected: tuple[int, str]
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{stand_in.port}/ws", autoping=False) as ws,
    ):
        await ws.send_str(command)
        assert await _closed_with(ws) == expected


async def test_aiohttps_client_hears_1001_when_the_gateway_stops(stand_in: StandIn) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{stand_in.port}/ws") as ws,
    ):
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=PATIENCE) == "hello"
        closing = asyncio.create_task(stand_in.sockets.close_all(within=PATIENCE))
        assert await _closed_with(ws) == (1001, "the gateway is shutting down")
        assert await closing == 0
    assert await stand_in.upstream.closed_with() == (1001, "the gateway is shutting down")


async def test_a_handshake_with_another_version_is_refused_before_any_upstream_work(
    stand_in: StandIn,
) -> None:
    async with aiohttp.ClientSession() as session:
        headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "8"}
        async with session.get(f"http://127.0.0.1:{stand_in.port}/ws", headers=headers) as answer:
            assert answer.status == 426
    assert stand_in.upstream.requests == []
