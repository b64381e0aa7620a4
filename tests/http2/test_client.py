"""gateway.http2.client against real HTTP/2 servers: grpcio (h2c and h2 over TLS) and ours."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.http2.client import Http2Client, Http2Origin
from gateway.http2.stream import UpstreamAnswer
from gateway.pipeline.messages import Request, RequestBody, Response
from gateway.upstream import UpstreamDisconnected, UpstreamTimeout, UpstreamUnreachable
from tests.conftest import free_port
from tests.http2.conftest import StartH2
from tests.http2.grpc_service import (
    SERVICE,
    GrpcUpstream,
    frame,
    start_grpc_upstream,
    unframe,
)
from tests.pki import Pki

GRPC_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]


@pytest.fixture
def grpc_h2c() -> Iterator[GrpcUpstream]:
    upstream = start_grpc_upstream()
    yield upstream
    upstream.stop()


@pytest.fixture
def grpc_tls(pki: Pki) -> Iterator[GrpcUpstream]:
    key = pki.server.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    upstream = start_grpc_upstream(tls=(key, pki.server.pem))
    yield upstream
    upstream.stop()


@pytest.fixture
async def client(pki: Pki) -> AsyncIterator[Http2Client]:
    http2 = Http2Client(tls=pki.client_context(None), connect_timeout=2)
    yield http2
    await http2.close()


async def _read_all(answer: UpstreamAnswer) -> bytes:
    parts = []
    while chunk := await answer.read():
        parts.append(chunk)
    await answer.aclose()
    return b"".join(parts)


async def _call(
    client: Http2Client,
    origin: Http2Origin,
    method: str,
    body: RequestBody | bytes,
    *,
    timeout: float = 5,
) -> UpstreamAnswer:
    return await client.exchange(
        origin,
        method="POST",
        target=f"/{SERVICE}/{method}",
        authority=f"{origin.host}:{origin.port}",
        headers=GRPC_HEADERS,
        body=body,
        response_timeout=timeout,
    )


async def test_a_unary_call_to_grpcio_over_h2c(client: Http2Client, grpc_h2c: GrpcUpstream) -> None:
    origin = Http2Origin("h2c", "127.0.0.1", grpc_h2c.port)
    answer = await _call(client, origin, "Unary", frame(b"hello"))
    assert answer.status == 200
    assert dict(answer.headers)["content-type"] == "application/grpc"
    assert unframe(await _read_all(answer)) == [b"echo:hello"]
    trailers = dict(answer.trailers())
    assert trailers["grpc-status"] == "0"
    assert trailers["x-trailer"] == "seen"


async def test_a_unary_call_to_grpcio_over_tls_with_alpn_h2(
    client: Http2Client, grpc_tls: GrpcUpstream
) -> None:
    origin = Http2Origin("h2", "localhost", grpc_tls.port)
    answer = await _call(client, origin, "Unary", frame(b"over tls"))
    assert unframe(await _read_all(answer)) == [b"echo:over tls"]
    assert dict(answer.trailers())["grpc-status"] == "0"


async def test_a_grpc_error_arrives_as_trailers(
    client: Http2Client, grpc_h2c: GrpcUpstream
) -> None:
    origin = Http2Origin("h2c", "127.0.0.1", grpc_h2c.port)
    answer = await _call(client, origin, "Unary", frame(b"fail"))
    assert await _read_all(answer) == b""
    fields = dict(answer.headers) | dict(answer.trailers())  # Trailers-Only or not
    assert fields["grpc-status"] == "9"  # FAILED_PRECONDITION
    assert fields["grpc-message"] == "asked to fail"


async def test_server_streaming_and_one_connection_for_concurrent_calls(
    client: Http2Client, grpc_h2c: GrpcUpstream
) -> None:
    origin = Http2Origin("h2c", "127.0.0.1", grpc_h2c.port)

    async def stream(n: int) -> list[bytes]:
        answer = await _call(client, origin, "ServerStream", frame(str(n).encode()))
        return unframe(await _read_all(answer))

    results = await asyncio.gather(*(stream(n) for n in range(1, 11)))
    for n, messages in zip(range(1, 11), results, strict=True):
        assert messages == [b"part %d" % i for i in range(n)]
    assert len(set(grpc_h2c.seen.peers)) == 1  # every call came on one connection


async def test_bidirectional_streaming_interleaves_up_and_down(
    client: Http2Client, grpc_h2c: GrpcUpstream
) -> None:
    origin = Http2Origin("h2c", "127.0.0.1", grpc_h2c.port)
    body = RequestBody()
    body.feed(frame(b"first"))
    answer = await _call(client, origin, "Bidi", body)
    # The answer to the first message arrives while the upload is still open.
    assert unframe(await answer.read()) == [b"FIRST"]
    body.feed(frame(b"second"))
    assert unframe(await answer.read()) == [b"SECOND"]
    body.end()
    assert await answer.read() == b""
    assert dict(answer.trailers())["grpc-status"] == "0"
    await answer.aclose()


async def test_large_messages_both_ways_within_the_windows(
    client: Http2Client, grpc_h2c: GrpcUpstream
) -> None:
    origin = Http2Origin("h2c", "127.0.0.1", grpc_h2c.port)
    message = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32)  # 3 MiB
    body = RequestBody()
    answer_task = asyncio.create_task(_call(client, origin, "Unary", body, timeout=30))
    framed = frame(message)
    for offset in range(0, len(framed), 100_000):
        body.feed(framed[offset : offset + 100_000])
        await asyncio.sleep(0)
    body.end()
    answer = await answer_task
    assert unframe(await _read_all(answer)) == [b"echo:" + message]


async def test_the_response_head_timeout_resets_the_stream(
    client: Http2Client, grpc_h2c: GrpcUpstream
) -> None:
    origin = Http2Origin("h2c", "127.0.0.1", grpc_h2c.port)
    with pytest.raises(UpstreamTimeout):
        await _call(client, origin, "Unary", frame(b"sleep:3"), timeout=0.3)
    # The upstream learns the call was abandoned (RST_STREAM CANCEL).
    assert await asyncio.to_thread(grpc_h2c.seen.cancelled.wait, 5)
    answer = await _call(client, origin, "Unary", frame(b"after"))  # the connection lives
    assert unframe(await _read_all(answer)) == [b"echo:after"]


async def test_a_closed_port_is_unreachable(client: Http2Client) -> None:
    with pytest.raises(UpstreamUnreachable):
        await _call(client, Http2Origin("h2c", "127.0.0.1", free_port()), "Unary", frame(b"x"))


async def test_a_silent_tls_server_hits_the_connect_timeout(client: Http2Client) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers the ClientHello

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamTimeout):
        await _call(client, Http2Origin("h2", "localhost", port), "Unary", frame(b"x"))
    assert asyncio.get_running_loop().time() - started < 4
    server.close()


async def test_an_http1_only_tls_server_is_refused(client: Http2Client, pki: Pki) -> None:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert_path, pki.server.key_path)
    context.set_alpn_protocols(["http/1.1"])

    async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(http1, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    with pytest.raises(UpstreamUnreachable, match="did not negotiate h2"):
        await _call(client, Http2Origin("h2", "localhost", port), "Unary", frame(b"x"))
    server.close()


async def test_after_goaway_the_next_request_opens_a_new_connection(
    client: Http2Client, h2_listener: StartH2
) -> None:
    async def ok(request: Request) -> Response:
        return Response(200, [], b"ok")

    listener = await h2_listener(ok)
    origin = Http2Origin("h2", "localhost", listener.port)
    answer = await client.exchange(
        origin,
        method="GET",
        target="/",
        authority="localhost",
        headers=[],
        body=None,
        response_timeout=5,
    )
    assert await _read_all(answer) == b"ok"
    listener.connections[0].drain()  # GOAWAY; the idle connection then closes
    await asyncio.sleep(0.2)
    answer = await client.exchange(
        origin,
        method="GET",
        target="/",
        authority="localhost",
        headers=[],
        body=None,
        response_timeout=5,
    )
    assert await _read_all(answer) == b"ok"
    assert len(listener.connections) == 2


async def test_an_upstream_reset_fails_the_read(client: Http2Client, h2_listener: StartH2) -> None:
    async def breaks(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"partial"
            raise RuntimeError("the upstream's own upstream broke")

        return Response(200, [], stream=chunks())

    listener = await h2_listener(breaks)
    answer = await client.exchange(
        Http2Origin("h2", "localhost", listener.port),
        method="GET",
        target="/",
        authority="localhost",
        headers=[],
        body=None,
        response_timeout=5,
    )
    assert await answer.read() == b"partial"
    with pytest.raises(UpstreamDisconnected, match="reset"):
        await answer.read()
    await answer.aclose()
