"""A request body streamed upstream (gateway/upstream/body.py): framing, blame, the pace bound."""

from __future__ import annotations

import asyncio

import pytest

from gateway.pipeline.messages import RequestBody
from gateway.upstream import (
    TOO_SLOW,
    BodyPace,
    UpstreamConnection,
    UpstreamPool,
    UpstreamTimeout,
    parse_origin,
    send_body,
)
from tests.upstream.conftest import ScriptedUpstream, StartScripted, ok, start

PUT = b"PUT /up HTTP/1.1\r\nHost: u\r\nTransfer-Encoding: chunked\r\n\r\n"


async def _put(
    scripted: StartScripted, pool: UpstreamPool, *, timeout: float = 5.0
) -> tuple[ScriptedUpstream, UpstreamConnection]:
    """A chunked PUT's head sent to a fresh upstream; its body is the test's."""
    upstream = await scripted(ok())
    acquired = await pool.acquire(parse_origin(upstream.url), 5.0)
    return upstream, start(acquired, PUT, timeout=timeout, body_follows=True)


async def test_a_body_of_unknown_length_goes_chunked_and_the_connection_stays_reusable(
    scripted: StartScripted, pool: UpstreamPool
) -> None:
    upstream, conn = await _put(scripted, pool)
    body = RequestBody()
    sender = asyncio.get_running_loop().create_task(send_body(conn, body, chunked=True))
    body.feed(b"hello")
    await asyncio.sleep(0.01)
    body.feed(b" world!")
    body.end()
    assert await sender is None
    await conn.response_head()
    assert conn.status == 200 and conn.body_sent
    assert upstream.bodies == [b"5\r\nhello\r\n7\r\n world!\r\n0\r\n\r\n"]  # RFC 9112 §7.1
    while await conn.read():
        pass
    conn.finish()
    assert pool.idle_count() == 1


async def test_a_silent_caller_is_blamed_when_the_head_deadline_passes(
    scripted: StartScripted, pool: UpstreamPool
) -> None:
    _, conn = await _put(scripted, pool, timeout=0.2)
    body = RequestBody()
    sender = asyncio.get_running_loop().create_task(send_body(conn, body, chunked=True))
    body.feed(b"a")  # then nothing: the caller went quiet, not the upstream
    try:
        with pytest.raises(UpstreamTimeout) as timed_out:
            async with asyncio.timeout(5):
                await conn.response_head()
        assert timed_out.value.waiting_on_caller, "408 for the caller, not 504 for the upstream"
    finally:
        sender.cancel()
        conn.close()


async def test_a_trickled_body_is_cut_by_its_pace(
    scripted: StartScripted, pool: UpstreamPool
) -> None:
    _, conn = await _put(scripted, pool)
    loop = asyncio.get_running_loop()
    body = RequestBody()
    started = loop.time()

    async def trickle() -> None:
        while True:  # 20 B/s: never an idle gap, never done, below the minimum rate
            body.feed(b"x")
            await asyncio.sleep(0.05)

    trickler = loop.create_task(trickle())
    try:
        cut = await asyncio.wait_for(
            send_body(conn, body, chunked=True, pace=BodyPace(0.3, min_rate=100.0)), 5
        )
    finally:
        trickler.cancel()
    # 0.3 s plus 10 ms per byte received: passed after about 0.4 s.
    assert cut == TOO_SLOW
    assert 0.3 < loop.time() - started < 4.0
    await asyncio.sleep(0.05)
    assert conn.lost, "the half-sent exchange is dropped"
