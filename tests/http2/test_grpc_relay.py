"""grpcio client → gateway.http2.server (h2, mTLS) → relay via gateway.http2.client → grpcio (h2c).

Two independent gRPC implementations at the ends, ours in the middle on
both sides: unary, server streaming, bidirectional streaming, metadata and
trailers, and the gRPC statuses of relay failures.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Iterator

import grpc  # type: ignore[import-untyped]  # grpcio ships no stubs
import pytest

from gateway.http2.client import Http2Client, Http2Origin
from tests.conftest import free_port
from tests.http2.conftest import StartH2
from tests.http2.grpc_relay import relay
from tests.http2.grpc_service import SERVICE, GrpcUpstream, channel, start_grpc_upstream
from tests.pki import Issued, Pki


@pytest.fixture
def grpc_h2c() -> Iterator[GrpcUpstream]:
    upstream = start_grpc_upstream()
    yield upstream
    upstream.stop()


@pytest.fixture
async def http2_client() -> AsyncIterator[Http2Client]:
    client = Http2Client(connect_timeout=2)
    yield client
    await client.close()


async def _through(
    h2_listener: StartH2, client: Http2Client, upstream_port: int, response_timeout: float = 5
) -> int:
    origin = Http2Origin("h2c", "127.0.0.1", upstream_port)
    listener = await h2_listener(relay(client, origin, response_timeout=response_timeout))
    return listener.port


async def test_unary_with_metadata_and_trailers(
    h2_listener: StartH2,
    http2_client: Http2Client,
    grpc_h2c: GrpcUpstream,
    pki: Pki,
    client_cert: Issued,
) -> None:
    port = await _through(h2_listener, http2_client, grpc_h2c.port)

    def call() -> tuple[bytes, dict[str, str]]:
        with channel(port, pki, client_cert) as ch:
            unary = ch.unary_unary(f"/{SERVICE}/Unary")
            reply, rpc = unary.with_call(b"hi", metadata=(("x-caller", "test"),), timeout=5)
            return reply, dict(rpc.trailing_metadata())

    reply, trailers = await asyncio.to_thread(call)
    assert reply == b"echo:hi"
    assert trailers["x-trailer"] == "seen"
    assert ("x-caller", "test") in grpc_h2c.seen.metadata[0]


async def test_server_streaming(
    h2_listener: StartH2,
    http2_client: Http2Client,
    grpc_h2c: GrpcUpstream,
    pki: Pki,
    client_cert: Issued,
) -> None:
    port = await _through(h2_listener, http2_client, grpc_h2c.port)

    def call() -> list[bytes]:
        with channel(port, pki, client_cert) as ch:
            return list(ch.unary_stream(f"/{SERVICE}/ServerStream")(b"50", timeout=5))

    assert await asyncio.to_thread(call) == [b"part %d" % i for i in range(50)]


async def test_bidirectional_streaming_in_lockstep(
    h2_listener: StartH2,
    http2_client: Http2Client,
    grpc_h2c: GrpcUpstream,
    pki: Pki,
    client_cert: Issued,
) -> None:
    port = await _through(h2_listener, http2_client, grpc_h2c.port)

    def call() -> list[bytes]:
        # Each message is sent only after the answer to the previous one
        # came back: only a relay that streams both ways at once completes.
        outbox: queue.Queue[bytes | None] = queue.Queue()
        outbox.put(b"one")

        def requests() -> Iterator[bytes]:
            while (message := outbox.get(timeout=5)) is not None:
                yield message

        answers = []
        with channel(port, pki, client_cert) as ch:
            for answer in ch.stream_stream(f"/{SERVICE}/Bidi")(requests(), timeout=10):
                answers.append(answer)
                outbox.put({1: b"two", 2: b"three"}.get(len(answers)))
        return answers

    assert await asyncio.to_thread(call) == [b"ONE", b"TWO", b"THREE"]


async def test_a_large_message_both_ways(
    h2_listener: StartH2,
    http2_client: Http2Client,
    grpc_h2c: GrpcUpstream,
    pki: Pki,
    client_cert: Issued,
) -> None:
    port = await _through(h2_listener, http2_client, grpc_h2c.port)
    message = bytes(range(256)) * (5 * 1024 * 1024 // 256)  # 5 MiB each way

    def call() -> bytes:
        with channel(port, pki, client_cert) as ch:
            return bytes(ch.unary_unary(f"/{SERVICE}/Unary")(message, timeout=30))

    assert await asyncio.to_thread(call) == b"echo:" + message


async def test_the_upstream_down_is_unavailable(
    h2_listener: StartH2, http2_client: Http2Client, pki: Pki, client_cert: Issued
) -> None:
    port = await _through(h2_listener, http2_client, free_port())

    def call() -> grpc.RpcError:
        with channel(port, pki, client_cert) as ch, pytest.raises(grpc.RpcError) as caught:
            ch.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=5)
        return caught.value

    error = await asyncio.to_thread(call)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details().startswith("bad_gateway: cannot connect to 127.0.0.1:")


async def test_a_slow_upstream_is_deadline_exceeded(
    h2_listener: StartH2,
    http2_client: Http2Client,
    grpc_h2c: GrpcUpstream,
    pki: Pki,
    client_cert: Issued,
) -> None:
    port = await _through(h2_listener, http2_client, grpc_h2c.port, response_timeout=0.5)

    def call() -> grpc.RpcError:
        with channel(port, pki, client_cert) as ch, pytest.raises(grpc.RpcError) as caught:
            ch.unary_unary(f"/{SERVICE}/Unary")(b"sleep:2", timeout=20)
        return caught.value

    error = await asyncio.to_thread(call)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details().startswith("gateway_timeout: ")


async def test_an_upstream_trailers_only_error_stays_one(
    h2_listener: StartH2,
    http2_client: Http2Client,
    grpc_h2c: GrpcUpstream,
    pki: Pki,
    client_cert: Issued,
) -> None:
    port = await _through(h2_listener, http2_client, grpc_h2c.port)

    def call() -> grpc.RpcError:
        with channel(port, pki, client_cert) as ch, pytest.raises(grpc.RpcError) as caught:
            ch.unary_unary(f"/{SERVICE}/Unary")(b"fail", timeout=5)
        return caught.value

    error = await asyncio.to_thread(call)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "asked to fail"
