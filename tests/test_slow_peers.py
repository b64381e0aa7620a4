"""Slow peers over real TLS: a caller that stops reading, a caller that trickles its body.

Both must not hold an upstream connection for ever (issue 12, 6a and 6b).
The upstream here is a plain TCP server, so the test sees exactly when the
gateway lets go of its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from tests.conftest import GatewayUnderTest, MakeGateway, Upstream
from tests.pki import Issued
from tests.security.conftest import MTLS_CLIENT
from tests.test_proxy import RawConnection, get

SEND_TIMEOUT = 1.0
CHUNK = b"x" * 65536


@dataclass
class StreamingUpstream:
    """Answers every request with a chunked body that never ends."""

    port: int = 0
    sent: int = 0  # body bytes the gateway accepted
    released: asyncio.Event = field(default_factory=asyncio.Event)
    released_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def streaming_upstream() -> AsyncIterator[StreamingUpstream]:
    upstream = StreamingUpstream()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while True:
                writer.write(b"%x\r\n%b\r\n" % (len(CHUNK), CHUNK))
                await writer.drain()
                upstream.sent += len(CHUNK)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            upstream.released_at = time.monotonic()
            upstream.released.set()
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    yield upstream
    server.close()
    await server.wait_closed()


async def _streaming_gateway(
    make_gateway: MakeGateway, upstream: StreamingUpstream, **limits: float
) -> GatewayUnderTest:
    return await make_gateway(
        clients=[MTLS_CLIENT],
        routes=[{"prefix": "/", "upstream": upstream.url, "auth": "client", "timeout": 30}],
        extra={"limits": limits},
    )


async def _watch_progress(upstream: StreamingUpstream, last_progress: list[float]) -> None:
    """Keep ``last_progress[0]``: when the gateway last took bytes from the upstream."""
    last = -1
    while not upstream.released.is_set():
        if upstream.sent != last:
            last, last_progress[0] = upstream.sent, time.monotonic()
        await asyncio.sleep(0.02)


async def test_a_caller_that_stops_reading_releases_the_upstream_within_the_send_timeout(
    make_gateway: MakeGateway, streaming_upstream: StreamingUpstream, client_cert: Issued
) -> None:
    gw = await _streaming_gateway(make_gateway, streaming_upstream, send_timeout=SEND_TIMEOUT)
    caller = await RawConnection.open(gw, client_cert)
    await caller.send(get("/download"))
    # The caller reads nothing from here on: its receive window and the
    # gateway's write buffer fill, and the gateway's write blocks.
    last_progress = [time.monotonic()]
    watching = asyncio.create_task(_watch_progress(streaming_upstream, last_progress))
    try:
        async with asyncio.timeout(SEND_TIMEOUT + 10):
            await streaming_upstream.released.wait()
    finally:
        watching.cancel()
        await caller.close()
    stalled_since = last_progress[0]
    assert streaming_upstream.sent > 0, "nothing was streamed before the stall"
    held = streaming_upstream.released_at - stalled_since
    # Released once the blocked write outlasted send_timeout: after it, and
    # well before the route's 30 s timeout or anything like for ever.
    assert SEND_TIMEOUT / 2 < held < SEND_TIMEOUT + 3, f"upstream held {held:.2f} s after the stall"


async def test_a_caller_that_reads_slowly_but_steadily_is_not_cut(
    make_gateway: MakeGateway, streaming_upstream: StreamingUpstream, client_cert: Issued
) -> None:
    gw = await _streaming_gateway(make_gateway, streaming_upstream, send_timeout=SEND_TIMEOUT)
    caller = await RawConnection.open(gw, client_cert)
    await caller.send(get("/download"))
    received = 0
    try:
        # Reading for half send_timeout, then pausing for as long, keeps the
        # gateway's writes moving: no write stays blocked for send_timeout.
        for _ in range(8):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SEND_TIMEOUT / 2):
                    while data := await caller.reader.read(65536):
                        received += len(data)
                    pytest.fail("the gateway cut a caller that kept reading")
            await asyncio.sleep(SEND_TIMEOUT / 2)
        assert not streaming_upstream.released.is_set()
    finally:
        await caller.close()
    assert received > 0


BODY_TIMEOUT = 2.0
TRICKLE_GAP = 1.5  # one byte every 1.5 s: far below any minimum rate, inside the route timeout


@dataclass
class SinkUpstream:
    """Reads request bodies without answering; notes when the gateway lets go."""

    port: int = 0
    body: bytearray = field(default_factory=bytearray)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def sink_upstream() -> AsyncIterator[SinkUpstream]:
    upstream = SinkUpstream()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            while data := await reader.read(65536):
                upstream.body += data
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            upstream.released.set()
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    yield upstream
    server.close()
    await server.wait_closed()


async def _body_gateway(make_gateway: MakeGateway, upstream_url: str) -> GatewayUnderTest:
    return await make_gateway(
        clients=[MTLS_CLIENT],
        routes=[{"prefix": "/", "upstream": upstream_url, "auth": "client", "timeout": 30}],
        extra={"limits": {"request_body_timeout": BODY_TIMEOUT}},
    )


async def test_a_trickled_body_is_cut_with_408_and_the_upstream_released(
    make_gateway: MakeGateway, sink_upstream: SinkUpstream, client_cert: Issued
) -> None:
    gw = await _body_gateway(make_gateway, sink_upstream.url)
    caller = await RawConnection.open(gw, client_cert)
    await caller.send("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n")
    started = time.monotonic()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            for _ in range(100):
                await caller.send("x")
                await asyncio.sleep(TRICKLE_GAP)

    trickling = asyncio.create_task(trickle())
    try:
        response = await caller.read_response(timeout=BODY_TIMEOUT + 6)
    finally:
        trickling.cancel()
    took = time.monotonic() - started
    assert response.status == 408
    assert response.json()["error"] == "request_timeout"
    assert response.headers["Connection"] == "close"  # the rest of the body is not awaited
    assert took < BODY_TIMEOUT + TRICKLE_GAP, f"answered after {took:.2f} s"
    async with asyncio.timeout(2):
        await sink_upstream.released.wait()
    assert 0 < len(sink_upstream.body) < 10
    await caller.close()


async def test_an_upload_longer_than_the_body_timeout_at_a_steady_rate_passes(
    make_gateway: MakeGateway, echo_upstream: Upstream, client_cert: Issued
) -> None:
    gw = await _body_gateway(make_gateway, echo_upstream.url)
    chunk, chunks, gap = b"y" * 16384, 16, 0.2  # 80 KiB/s, over 3.2 s > BODY_TIMEOUT
    caller = await RawConnection.open(gw, client_cert)
    await caller.send(
        f"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(chunk) * chunks}\r\n\r\n"
    )
    for _ in range(chunks):
        await caller.send("", chunk)
        await asyncio.sleep(gap)
    response = await caller.read_response()
    await caller.close()
    assert response.status == 200
    assert response.json()["body_bytes"] == len(chunk) * chunks
