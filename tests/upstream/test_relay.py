"""An answer's body as Response.stream (gateway/upstream/relay.py): who gets the connection back."""

from __future__ import annotations

import asyncio

import pytest

from gateway.pipeline.messages import RequestBody, StreamCut
from gateway.upstream import (
    ResponseStream,
    UpstreamConnection,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamPool,
    parse_origin,
    send_body,
)
from tests.upstream.conftest import ScriptedUpstream, StartScripted, ok, settle, start


async def _answered(pool: UpstreamPool, upstream: ScriptedUpstream) -> UpstreamConnection:
    conn = start(await pool.acquire(parse_origin(upstream.url), 5.0))
    await conn.response_head()
    return conn


async def test_read_to_the_end_the_connection_goes_back_to_the_pool(
    scripted: StartScripted, pool: UpstreamPool
) -> None:
    body = bytes(range(256)) * 2000  # more than one read
    upstream = await scripted(ok(body))
    stream = ResponseStream(await _answered(pool, upstream))
    assert b"".join([chunk async for chunk in stream]) == body
    assert pool.idle_count() == 1
    await stream.aclose()  # as protocols do after every answer: nothing left to do
    assert pool.idle_count() == 1


async def test_closed_early_the_connection_is_dropped(
    scripted: StartScripted, pool: UpstreamPool
) -> None:
    upstream = await scripted(ok(b"x" * 1_000_000))
    conn = await _answered(pool, upstream)
    stream = ResponseStream(conn)
    await anext(stream)  # the caller went away after the first bytes
    await stream.aclose()
    await settle(lambda: conn.lost)
    assert conn.lost and pool.idle_count() == 0
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_an_upstream_failure_mid_body_is_raised_and_reported(
    scripted: StartScripted, pool: UpstreamPool
) -> None:
    upstream = await scripted(
        lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc"
    )
    cuts: list[UpstreamError] = []
    stream = ResponseStream(await _answered(pool, upstream), on_cut=cuts.append)
    received = b""
    # The protocol sees a cut (its connection is aborted); the cause is reported.
    with pytest.raises(StreamCut) as cut:
        async for chunk in stream:
            received += chunk
    assert isinstance(cut.value.__cause__, UpstreamDisconnected)
    assert received == b"abc"
    assert [type(c) for c in cuts] == [UpstreamDisconnected]
    assert pool.idle_count() == 0


async def test_an_early_answer_abandons_the_body_still_sending(
    scripted: StartScripted, pool: UpstreamPool
) -> None:
    upstream = await scripted(
        lambda _: b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n", before_body=True
    )
    head = b"PUT / HTTP/1.1\r\nHost: u\r\nContent-Length: 1000\r\n\r\n"
    conn = start(await pool.acquire(parse_origin(upstream.url), 5.0), head, body_follows=True)
    body = RequestBody()  # the caller has not sent its 1000 bytes, and will not
    sender = asyncio.get_running_loop().create_task(send_body(conn, body, chunked=False))
    await conn.response_head()
    assert conn.status == 413
    assert [chunk async for chunk in ResponseStream(conn, sender=sender)] == [b""]
    await settle(lambda: sender.done() and conn.lost)
    assert sender.cancelled(), "the rest of the body is not waited for"
    assert conn.lost and pool.idle_count() == 0, "a half-sent request ends its connection"
