"""One small exchange read whole (gateway/upstream/fetch.py), as token requests use it."""

from __future__ import annotations

import pytest

from gateway.upstream import InvalidResponse, UpstreamPool, fetch
from tests.upstream.conftest import StartScripted, ok


async def test_a_post_is_sent_with_its_length_and_the_answer_read_whole(
    scripted: StartScripted, pool: UpstreamPool
) -> None:
    upstream = await scripted(ok(b'{"access_token": "t"}'))
    answer = await fetch(
        pool,
        upstream.url + "/connect/token",
        method="POST",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
        body=b"grant_type=client_credentials",
        connect_timeout=2.0,
        within=5.0,
        limit=1024,
    )
    assert (answer.status, answer.body) == (200, b'{"access_token": "t"}')
    head = upstream.heads[0]
    assert head.startswith(b"POST /connect/token HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{upstream.port}\r\n".encode() in head
    assert b"Content-Length: 29\r\n" in head
    assert upstream.bodies == [b"grant_type=client_credentials"]
    assert pool.idle_count() == 1, "kept for the next call"


async def test_an_answer_over_the_limit_is_refused_and_its_connection_dropped(
    scripted: StartScripted, pool: UpstreamPool
) -> None:
    upstream = await scripted(ok(b"x" * 2000))
    with pytest.raises(InvalidResponse):
        await fetch(pool, upstream.url, connect_timeout=2.0, within=5.0, limit=1000)
    assert pool.idle_count() == 0


async def test_a_silent_server_times_out_within_the_bound(
    scripted: StartScripted, pool: UpstreamPool
) -> None:
    upstream = await scripted(lambda _: b"")  # reads the request, never answers
    with pytest.raises(TimeoutError):
        await fetch(pool, upstream.url, connect_timeout=2.0, within=0.3, limit=1000)
    assert pool.idle_count() == 0
