"""Outbound listeners bound as `serve` binds them: the header-read deadline covers request heads only.

Found from outside: outbound listeners were built without request boundaries,
so every connection was cut ``header_read_timeout`` after it opened, in the
middle of a response or between keep-alive calls.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from gateway.listener.config import LimitsConfig
from tests.outbound.conftest import Partner, StartOutbound, outbound_config
from tests.pki import Issued, Pki

SHORT = LimitsConfig(header_read_timeout=0.5)


async def test_a_response_streams_past_the_header_read_timeout(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    running = await start_outbound(
        outbound_config(destination=partner.url, cert=client_cert, ca=pki.ca.cert_path), SHORT
    )
    started = time.monotonic()
    async with aiohttp.ClientSession() as app, app.get(running.url + "/api/slow") as response:
        assert response.status == 200
        body = await response.read()  # 10 chunks, 0.2 s apart: 2 s in all
    assert body == b"x" * 100
    assert time.monotonic() - started > 1.5


async def test_a_keep_alive_connection_is_used_past_the_header_read_timeout(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    running = await start_outbound(
        outbound_config(destination=partner.url, cert=client_cert, ca=pki.ca.cert_path), SHORT
    )
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as app:
        for _ in range(3):
            async with app.get(running.url + "/api/x") as response:
                assert response.status == 200
                await response.read()
            await asyncio.sleep(0.4)  # 1.2 s on one connection in all
    assert partner.api_calls == 3


async def test_a_silent_caller_is_still_cut_at_the_header_read_timeout(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    running = await start_outbound(
        outbound_config(destination=partner.url, cert=client_cert, ca=pki.ca.cert_path), SHORT
    )
    port = int(running.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/x HTTP/1.1\r\nHost: local")  # and never the rest
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert 0.4 < time.monotonic() - started < 3
    writer.close()
