"""Header-read deadline over real TLS sockets: slowloris and silent clients are cut off."""

from __future__ import annotations

import asyncio
import json
import time

from tests.conftest import GatewayUnderTest, MakeGateway, name_secret, registry_client
from tests.pki import Issued

LIMITS = {"limits": {"header_read_timeout": 0.5, "keepalive_timeout": 30}}


async def _gateway(make_gateway: MakeGateway) -> GatewayUnderTest:
    return await make_gateway(
        clients=[
            registry_client("mtls.client", name_secret("CN=client, OU=production, O=company"))
        ],
        extra=LIMITS,
    )


async def _open(
    gw: GatewayUnderTest, cert: Issued
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", gw.port, ssl=gw.ssl_context(cert), server_hostname="localhost"
    )


async def test_silent_connection_is_closed(make_gateway: MakeGateway, client_cert: Issued) -> None:
    gw = await _gateway(make_gateway)
    reader, writer = await _open(gw, client_cert)
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), timeout=5)
    assert data == b""  # closed by the gateway, not by our timeout
    assert time.monotonic() - started < 4
    writer.close()


async def test_trickled_headers_are_cut_off(make_gateway: MakeGateway, client_cert: Issued) -> None:
    gw = await _gateway(make_gateway)
    reader, writer = await _open(gw, client_cert)
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
    closed = False
    for i in range(40):  # at most 8 s of trickling
        try:
            writer.write(f"X-Slow-{i}: x\r\n".encode())
            await writer.drain()
        except (ConnectionError, OSError):
            closed = True
            break
        try:
            data = await asyncio.wait_for(reader.read(1), timeout=0.2)
        except TimeoutError:
            continue
        assert data == b""
        closed = True
        break
    assert closed, "the gateway kept a connection whose head never completed"
    writer.close()


async def test_keep_alive_survives_slow_think_time(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    """The deadline covers sending a head, not idle time between requests."""
    gw = await _gateway(make_gateway)
    reader, writer = await _open(gw, client_cert)
    request = b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n"
    for _ in range(2):
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        await reader.readexactly(length)
        await asyncio.sleep(1.0)  # longer than the header deadline
    writer.close()


async def test_malformed_requests_get_a_json_error(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    """The parser's refusals answer in the gateway's one error shape, then close."""
    gw = await _gateway(make_gateway)
    for raw in (
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ):
        reader, writer = await _open(gw, client_cert)
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"400", head
        assert b"application/json" in head
        assert json.loads(body)["error"] == "invalid_request"
