"""One upstream connection (gateway/upstream/connection.py), through a real gateway.

test_proxy.py covers what callers see with an aiohttp upstream; these tests
use hand-written upstreams for the framings and connection rules an aiohttp
server never produces: close-delimited bodies, interim 1xx answers, bodiless
statuses, connection reuse.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.upstream import UpstreamPool, parse_origin
from tests.test_proxy import get
from tests.upstream.conftest import StartScripted, ThroughGateway, exchange, ok


async def test_keep_alive_upstream_connection_is_reused(
    scripted: StartScripted, through_gateway: ThroughGateway
) -> None:
    upstream = await scripted(ok())
    caller = (await through_gateway(upstream.url)).caller
    for i in range(5):
        response = await caller.request(get(f"/r{i}"))
        assert (response.status, response.body) == (200, b"ok")
    assert upstream.connections == 1
    # One request head per request, nothing the caller did not ask for.
    assert [h.split(b" ")[1] for h in upstream.heads] == [f"/r{i}".encode() for i in range(5)]
    assert all(b"Accept: */*\r\n" in h and b"Expect" not in h for h in upstream.heads)


async def test_connection_close_from_upstream_is_not_reused(
    scripted: StartScripted, through_gateway: ThroughGateway
) -> None:
    upstream = await scripted(
        lambda _: b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    )
    caller = (await through_gateway(upstream.url)).caller
    for _ in range(3):
        response = await caller.request(get("/c"))
        assert (response.status, response.body) == (200, b"ok")
        # The caller's connection is the caller's: it stays open.
        assert response.headers.get("Connection", "").lower() != "close"
    assert upstream.connections == 3


async def test_close_delimited_body_is_relayed_whole(
    scripted: StartScripted, through_gateway: ThroughGateway
) -> None:
    body = bytes(range(256)) * 1000
    upstream = await scripted(lambda _: b"HTTP/1.0 200 OK\r\nX-Kind: eof\r\n\r\n" + body)
    caller = (await through_gateway(upstream.url)).caller
    first = await caller.request(get("/eof"))
    assert first.status == 200
    assert first.headers["X-Kind"] == "eof"
    assert first.body == body  # chunked downstream (HTTP/1.1), complete
    second = await caller.request(get("/eof"))
    assert second.body == body
    assert upstream.connections == 2


async def test_interim_1xx_answers_are_skipped(
    scripted: StartScripted, through_gateway: ThroughGateway
) -> None:
    upstream = await scripted(
        lambda _: (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
            b"HTTP/1.1 201 Made It\r\nContent-Length: 4\r\nX-Final: yes\r\n\r\ndone"
        )
    )
    caller = (await through_gateway(upstream.url)).caller
    await caller.send(get("/hints"))
    async with asyncio.timeout(5):
        status_line = await caller.reader.readuntil(b"\r\n")
    assert status_line == b"HTTP/1.1 201 Made It\r\n"  # the upstream's own reason
    rest = await caller.reader.readuntil(b"\r\n\r\n")
    assert b"X-Final: yes" in rest and b"Link" not in rest
    assert await caller.reader.readexactly(4) == b"done"


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses_keep_both_connections_in_step(
    scripted: StartScripted, through_gateway: ThroughGateway, status: int
) -> None:
    def answer(head: bytes) -> bytes:
        if head.startswith(b"GET /empty "):
            return f'HTTP/1.1 {status} Nothing\r\nETag: "x"\r\n\r\n'.encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter"

    upstream = await scripted(answer)
    caller = (await through_gateway(upstream.url)).caller
    await caller.send(get("/empty"))
    async with asyncio.timeout(5):
        head = await caller.reader.readuntil(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode())
    assert b"Transfer-Encoding" not in head
    after = await caller.request(get("/next"))
    assert (after.status, after.body) == (200, b"after")
    assert upstream.connections == 1


async def test_head_with_length_reuses_the_upstream_connection(
    scripted: StartScripted, through_gateway: ThroughGateway
) -> None:
    def answer(head: bytes) -> bytes:
        if head.startswith(b"HEAD "):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nget"

    upstream = await scripted(answer)
    caller = (await through_gateway(upstream.url)).caller
    await caller.send("HEAD /h HTTP/1.1\r\nHost: localhost\r\n\r\n")
    async with asyncio.timeout(5):
        head = await caller.reader.readuntil(b"\r\n\r\n")
    assert b"Content-Length: 1000" in head
    again = await caller.request(get("/g"))
    assert (again.status, again.body) == (200, b"get")
    assert upstream.connections == 1


async def test_oversized_upstream_header_is_502(
    scripted: StartScripted, through_gateway: ThroughGateway
) -> None:
    upstream = await scripted(
        lambda _: b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 10_000 + b"\r\nContent-Length: 0\r\n\r\n"
    )
    caller = (await through_gateway(upstream.url)).caller
    response = await caller.request(get("/big"))
    assert response.status == 502
    assert response.json()["error"] == "bad_gateway"


async def test_a_burst_larger_than_the_read_buffer_is_relayed_whole(
    scripted: StartScripted, through_gateway: ThroughGateway
) -> None:
    # Head and 4 MiB in one write: upstream reading pauses before the handler
    # first looks, and must resume once the buffer is handed downstream.
    body = bytes(range(256)) * (4 * 4096)
    upstream = await scripted(ok(body))
    caller = (await through_gateway(upstream.url)).caller
    for _ in range(2):
        response = await caller.request(get("/burst"))
        assert response.status == 200
        assert response.body == body
    assert upstream.connections == 1


async def test_trailing_whitespace_of_an_upstream_value_is_dropped(
    scripted: StartScripted, pool: UpstreamPool
) -> None:
    upstream = await scripted(
        lambda _: (
            b"HTTP/1.1 200 OK\r\nX-Spaces: a b  \r\nX-Tab: t\t\r\nX-Plain: p\r\n"
            b"X-Empty:\r\nContent-Length: 2\r\n\r\nok"
        )
    )
    conn = await pool.acquire(parse_origin(upstream.url), 5.0)
    assert await exchange(conn) == b"ok"
    # The client's own fields, before any filter or caller-side parser trims them.
    assert conn.headers()[:4] == [
        (b"X-Spaces", b"a b"),
        (b"X-Tab", b"t"),
        (b"X-Plain", b"p"),
        (b"X-Empty", b""),
    ]
    conn.finish()
