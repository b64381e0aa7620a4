"""The HTTP/1.1 protocol alone, on a real loopback socket, behind a small pipeline.

The gateway's integration tests cover it with TLS and the real pipeline; these
pin down the protocol's own rules with nothing else in the way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.http1.connections import ConnectionSet
from gateway.http1.reader import Http1Settings
from gateway.http1.server import Http1ServerProtocol
from gateway.pipeline.messages import ByteStream, Handler, Request, Response

Serve = Callable[..., Awaitable[tuple[int, ConnectionSet]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler, **settings: float) -> tuple[int, ConnectionSet]:
        connections = ConnectionSet()
        options = Http1Settings(**settings, scheme="http")  # type: ignore[arg-type]
        server = await asyncio.get_running_loop().create_server(
            lambda: Http1ServerProtocol(handler, options, connections=connections),
            "127.0.0.1",
            0,
        )
        servers.append(server)
        return server.sockets[0].getsockname()[1], connections

    yield start
    for server in servers:
        server.close()


async def echo_path(request: Request) -> Response:
    body = await request.read()
    return Response(200, [("Content-Type", "text/plain")], f"{request.path}:{len(body)}".encode())


async def exchange(port: int, data: bytes, *, until_eof: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        async with asyncio.timeout(5):
            return await reader.read() if until_eof else await reader.read(65536)
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(serve: Serve) -> None:
    async def slow_first(request: Request) -> Response:
        if request.path == "/1":
            await asyncio.sleep(0.1)
        return await echo_path(request)

    port, _ = await serve(slow_first)
    answer = await exchange(
        port,
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    bodies = [part.split(b"\r\n\r\n", 1)[1][:6] for part in answer.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"/1:0", b"/2:3", b"/3:0"]
    assert answer.count(b"Server: mtls-gateway") == 3


async def test_http10_keeps_alive_only_when_asked_and_says_so(serve: Serve) -> None:
    port, _ = await serve(echo_path)
    closed = await exchange(port, b"GET /a HTTP/1.0\r\n\r\n")
    assert b"Connection: close" in closed
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"Connection: keep-alive" in head
    writer.close()


async def test_an_unannounced_stream_is_chunked_and_head_gets_no_body(serve: Serve) -> None:
    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b""  # the head at once
            yield b"hello "
            yield b"world"

        return Response(200, [], stream=chunks())

    port, _ = await serve(stream)
    answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in answer
    assert answer.endswith(b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n")
    head_only = await exchange(port, b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert head_only.endswith(b"\r\n\r\n") and b"hello" not in head_only


async def test_a_silent_connection_is_closed_at_the_header_deadline(serve: Serve) -> None:
    port, _ = await serve(echo_path, header_read_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost:")  # a head that never ends
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert 0.15 <= asyncio.get_running_loop().time() - started < 2
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed_at_its_timeout(serve: Serve) -> None:
    port, _ = await serve(echo_path, keepalive_timeout=0.2, header_read_timeout=5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"/:0"), 5)
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert asyncio.get_running_loop().time() - started < 2
    writer.close()


async def test_a_head_trickled_after_an_answer_is_cut_at_the_header_deadline(
    serve: Serve,
) -> None:
    # The keep-alive wait (long) is armed after each answer; the first bytes
    # of an unfinished head must bring the header deadline (short) forward.
    port, _ = await serve(echo_path, keepalive_timeout=30, header_read_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    for _ in range(3):  # several answers: the deadline moves each time
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"/:0"), 5)
    await asyncio.sleep(0.5)  # idle longer than the header deadline: still open
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"/:0"), 5)
    writer.write(b"GET / HTTP/1.1\r\nHost:")  # and now a head that never ends
    started = loop.time()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert 0.25 <= loop.time() - started < 2
    writer.close()


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", b"request target too long"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", b"header field too long"),
        (b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 101 + b"\r\n", b"too many header fields"),
        (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", b"malformed request"),
    ],
)
async def test_a_refused_head_is_a_json_400_and_the_connection_closes(
    serve: Serve, head: bytes, reason: bytes
) -> None:
    port, _ = await serve(echo_path)
    answer = await exchange(port, head)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in answer and b'"invalid_request"' in answer
    assert reason in answer


async def test_an_http2_preface_without_alpn_gets_a_json_400_saying_what_works(
    serve: Serve,
) -> None:
    port, _ = await serve(echo_path)
    answer = await exchange(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"ALPN h2" in answer


async def test_a_101_hands_the_bytes_after_the_request_to_the_upgraded_stream(
    serve: Serve,
) -> None:
    async def upgrade(request: Request) -> Response:
        async def run(stream: ByteStream) -> None:
            data = await stream.read()
            stream.write(b"echo:" + data)
            await stream.drain()

        return Response(101, [("Upgrade", "test"), ("Connection", "Upgrade")], upgraded=run)

    port, _ = await serve(upgrade)
    answer = await exchange(
        port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\nearly"
    )
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Connection: Upgrade" in answer
    assert answer.endswith(b"\r\n\r\necho:early")


async def test_a_declined_upgrade_leaves_the_next_request_readable(serve: Serve) -> None:
    port, _ = await serve(echo_path)
    answer = await exchange(
        port,
        b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    assert b"/h2c:0" in answer and b"/next:0" in answer


async def test_shutdown_lets_a_busy_answer_finish_within_grace_and_cuts_the_rest(
    serve: Serve,
) -> None:
    release = asyncio.Event()

    async def waits(request: Request) -> Response:
        if request.path == "/slow":
            await asyncio.sleep(10)
        await release.wait()
        return Response(200, [], b"done")

    port, connections = await serve(waits)
    quick_reader, quick = await asyncio.open_connection("127.0.0.1", port)
    quick.write(b"GET /quick HTTP/1.1\r\nHost: a\r\n\r\n")
    slow_reader, slow = await asyncio.open_connection("127.0.0.1", port)
    slow.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.1)
    asyncio.get_running_loop().call_later(0.1, release.set)
    started = asyncio.get_running_loop().time()
    await connections.wait_closed(0.5)
    elapsed = asyncio.get_running_loop().time() - started
    assert 0.45 <= elapsed < 0.55, elapsed  # held to the grace, not a multiple of it
    quick_answer = await asyncio.wait_for(quick_reader.read(), 5)
    assert quick_answer.endswith(b"done") and b"Connection: close" in quick_answer
    assert await asyncio.wait_for(slow_reader.read(), 5) == b""  # cut, no answer
    quick.close()
    slow.close()
