"""PROXY protocol v1/v2: the pure parser (tables + hypothesis), then real sockets.

The socket tests send a header and then do TLS on the same connection
(``StreamWriter.start_tls``), as an L4 balancer's client would; the real
client address must reach the upstream in X-Forwarded-For.  A header from an
untrusted source (the client socket bound to 127.0.0.2) closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cli.echo import create_echo_app
from gateway.config.load import load_config
from gateway.listener.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    build_v1,
    build_v2,
    parse_header,
)
from gateway.runtime import assemble
from gateway.server import start_gateway
from tests.conftest import (
    GatewayUnderTest,
    MakeGateway,
    name_secret,
    registry_client,
    write_config,
)
from tests.pki import Issued, Pki

CLIENT = registry_client("mtls.client", name_secret("CN=client, OU=production, O=company"))

# --- parser ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b"PROXY TCP4 192.0.2.10 198.51.100.1 51000 443\r\n",
            ProxyHeader(1, False, ("192.0.2.10", 51000), ("198.51.100.1", 443), 46),
        ),
        (
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\nrest",
            ProxyHeader(1, False, ("2001:db8::1", 1), ("2001:db8::2", 65535), 44),
        ),
        (b"PROXY UNKNOWN\r\n", ProxyHeader(1, True, None, None, 15)),
        (b"PROXY UNKNOWN ignored stuff\r\n", ProxyHeader(1, True, None, None, 29)),
        (
            build_v2(("203.0.113.7", 40000), ("10.0.0.1", 8443)),
            ProxyHeader(2, False, ("203.0.113.7", 40000), ("10.0.0.1", 8443), 28),
        ),
        (
            build_v2(("2001:db8::7", 1234), ("2001:db8::1", 443)),
            ProxyHeader(2, False, ("2001:db8::7", 1234), ("2001:db8::1", 443), 52),
        ),
        (build_v2(None), ProxyHeader(2, True, None, None, 16)),
        # TLVs (AWS's VPC endpoint id, say) are skipped, not read.
        (
            build_v2(("192.0.2.1", 1), tlvs=b"\xea\x00\x05vpce1" + b"\x01\x00\x02h2"),
            ProxyHeader(2, False, ("192.0.2.1", 1), ("0.0.0.0", 0), 41),
        ),
    ],
)
def test_valid_headers(data: bytes, expected: ProxyHeader) -> None:
    assert parse_header(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 192.0.2.10",  # no CRLF yet
        b"PR",
        V2_SIGNATURE[:5],
        build_v2(("192.0.2.1", 1))[:20],  # address block still on its way
    ],
)
def test_incomplete_headers_ask_for_more(data: bytes) -> None:
    assert parse_header(data) is None


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello: no header
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 51000\r\n",  # a field missing
        b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",  # v6 address under TCP4
        b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 1\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 0080 1\r\n",  # leading zero
        b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n",  # LF only
        b"PROXY " + b"9" * 120,  # too long without CRLF
        b"PROXY TCP4 192.0.2.1  192.0.2.2 1 2\r\n",  # two spaces
        V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in the v2 format
        V2_SIGNATURE + b"\x23\x11\x00\x0c" + bytes(12),  # unknown command
        V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),  # block shorter than AF_INET's
        V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12),  # DGRAM on a TLS listener
        V2_SIGNATURE + b"\x21\x51\x00\x00",  # unknown family
        V2_SIGNATURE + b"\x21\x11\xff\xff",  # over the size bound
    ],
)
def test_malformed_headers_raise_the_documented_error(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_header(data)


def test_round_trip_v1() -> None:
    header = parse_header(build_v1(("198.51.100.9", 5555), ("192.0.2.1", 443)))
    assert header is not None
    assert header.source == ("198.51.100.9", 5555)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_the_documented_error(data: bytes) -> None:
    with contextlib.suppress(ProxyProtocolError):
        parse_header(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=80))
def test_arbitrary_bytes_after_a_valid_prefix(tail: bytes) -> None:
    for prefix in (b"PROXY ", b"PROXY TCP4 ", V2_SIGNATURE, V2_SIGNATURE + b"\x21\x11"):
        with contextlib.suppress(ProxyProtocolError):
            parse_header(prefix + tail)


# --- real sockets ------------------------------------------------------------------


async def _request_through(
    gw: GatewayUnderTest,
    cert: Issued | None,
    preamble: bytes,
    *,
    source: str = "127.0.0.1",
) -> dict[str, Any]:
    """Send ``preamble`` in clear, then TLS, then one request; the echoed JSON."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, local_addr=(source, 0))
    try:
        writer.write(preamble)
        await writer.drain()
        await writer.start_tls(gw.ssl_context(cert), server_hostname="localhost")
        writer.write(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    result: dict[str, Any] = json.loads(body)
    return result


async def _refused(
    gw: GatewayUnderTest, cert: Issued | None, preamble: bytes, *, source: str
) -> None:
    """The connection is closed before or during TLS: no HTTP answer at all."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, local_addr=(source, 0))
    try:
        writer.write(preamble)
        await writer.drain()
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            await asyncio.wait_for(
                writer.start_tls(gw.ssl_context(cert), server_hostname="localhost"), 10
            )
            # TLS 1.3: a refusal may only show on the first read.
            writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 10)
            if not data:
                raise ConnectionError("closed")
    finally:
        writer.close()


def _xff(body: dict[str, Any]) -> str:
    return str(next(v for k, v in body["headers"] if k.lower() == "x-forwarded-for"))


@pytest.fixture
async def pp_gateway(make_gateway: MakeGateway) -> GatewayUnderTest:
    return await make_gateway(
        clients=[CLIENT],
        listener={"proxy_protocol": {"trusted_sources": ["127.0.0.1/32"], "required": True}},
    )


async def test_v1_from_trusted_source_sets_the_client_address(
    pp_gateway: GatewayUnderTest, client_cert: Issued
) -> None:
    body = await _request_through(
        pp_gateway, client_cert, build_v1(("198.51.100.23", 40123), ("192.0.2.1", 443))
    )
    assert _xff(body) == "198.51.100.23"
    headers = {k.lower(): v for k, v in body["headers"]}
    assert headers["x-client-id"] == "mtls.client"


async def test_v2_from_trusted_source_sets_the_client_address(
    pp_gateway: GatewayUnderTest, client_cert: Issued
) -> None:
    body = await _request_through(
        pp_gateway, client_cert, build_v2(("2001:db8::42", 5000), ("2001:db8::1", 443))
    )
    assert _xff(body) == "2001:db8::42"


async def test_v2_local_keeps_the_balancer_address(
    pp_gateway: GatewayUnderTest, client_cert: Issued
) -> None:
    body = await _request_through(pp_gateway, client_cert, build_v2(None))
    assert _xff(body) == "127.0.0.1"


async def test_refusal_logs_carry_the_real_client_address(
    pp_gateway: GatewayUnderTest, pki: Any, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = pki.client("stranger")
    caplog.set_level(logging.WARNING, logger="gateway.auth")
    reader, writer = await asyncio.open_connection("127.0.0.1", pp_gateway.port)
    writer.write(build_v1(("198.51.100.77", 1), ("192.0.2.1", 443)))
    await writer.start_tls(pp_gateway.ssl_context(stranger), server_hostname="localhost")
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 403")
    refusals = [r for r in caplog.records if getattr(r, "event", None) == "auth_refused"]
    assert refusals and refusals[-1].peer == "198.51.100.77"  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_header_from_untrusted_source_is_refused(
    pp_gateway: GatewayUnderTest, client_cert: Issued, version: str
) -> None:
    header = (
        build_v1(("198.51.100.23", 1), ("192.0.2.1", 443))
        if version == "v1"
        else build_v2(("198.51.100.23", 1))
    )
    await _refused(pp_gateway, client_cert, header, source="127.0.0.2")


async def test_missing_header_when_required_is_refused(
    pp_gateway: GatewayUnderTest, client_cert: Issued
) -> None:
    await _refused(pp_gateway, client_cert, b"", source="127.0.0.1")


async def test_garbage_instead_of_a_header_is_refused(
    pp_gateway: GatewayUnderTest, client_cert: Issued
) -> None:
    await _refused(pp_gateway, client_cert, b"PROXY TCP4 nonsense\r\n", source="127.0.0.1")


async def test_optional_mode(make_gateway: MakeGateway, client_cert: Issued) -> None:
    gw = await make_gateway(
        clients=[CLIENT],
        listener={"proxy_protocol": {"trusted_sources": ["127.0.0.1"], "required": False}},
    )
    # A trusted source may send a header or go straight to TLS ...
    with_header = await _request_through(gw, client_cert, build_v2(("192.0.2.55", 9)))
    assert _xff(with_header) == "192.0.2.55"
    direct = await _request_through(gw, client_cert, b"")
    assert _xff(direct) == "127.0.0.1"
    # ... an untrusted one only straight to TLS: its header would forge an address.
    untrusted_direct = await _request_through(gw, client_cert, b"", source="127.0.0.2")
    assert _xff(untrusted_direct) == "127.0.0.2"
    await _refused(
        gw, client_cert, build_v1(("192.0.2.55", 9), ("192.0.2.1", 1)), source="127.0.0.2"
    )


async def test_header_split_across_segments(
    pp_gateway: GatewayUnderTest, client_cert: Issued
) -> None:
    """A header trickling in byte by byte is still read exactly to its end."""
    header = build_v1(("198.51.100.5", 7), ("192.0.2.1", 443))
    reader, writer = await asyncio.open_connection("127.0.0.1", pp_gateway.port)
    for i in range(len(header)):
        writer.write(header[i : i + 1])
        await writer.drain()
        await asyncio.sleep(0.002)
    await writer.start_tls(pp_gateway.ssl_context(client_cert), server_hostname="localhost")
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"198.51.100.5" in raw


async def test_silent_connection_is_closed_at_the_header_deadline(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway(
        clients=[CLIENT],
        listener={"proxy_protocol": {"trusted_sources": ["127.0.0.1/32"]}},
        extra={"limits": {"header_read_timeout": 0.5}},
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_keep_alive_requests_share_the_proxied_address(
    pp_gateway: GatewayUnderTest, client_cert: Issued
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", pp_gateway.port)
    writer.write(build_v2(("192.0.2.99", 1000)))
    await writer.start_tls(pp_gateway.ssl_context(client_cert), server_hostname="localhost")
    for _ in range(3):
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        body = json.loads(await reader.readexactly(length))
        assert _xff(body) == "192.0.2.99"
    writer.close()


def test_under_uvloop(tmp_path: Path, pki: Pki, client_cert: Issued) -> None:
    """`serve` runs on uvloop, whose TLS transport and socket calls differ from asyncio's."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> list[str]:
        runner = web.AppRunner(create_echo_app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        upstream = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        config, _ = write_config(
            tmp_path,
            pki,
            clients=[CLIENT],
            routes=[{"prefix": "/", "upstream": f"http://127.0.0.1:{upstream}"}],
            listener={"proxy_protocol": {"trusted_sources": ["127.0.0.1/32"]}},
        )
        running = await start_gateway(assemble(load_config(config, env={})))
        gw = GatewayUnderTest(running, config, tmp_path / "clients.yaml", pki)
        try:
            seen = []
            for header in (
                build_v1(("198.51.100.1", 1), ("192.0.2.1", 2)),
                build_v2(("2001:db8::5", 3)),
            ):
                seen.append(_xff(await _request_through(gw, client_cert, header)))
            await _refused(gw, client_cert, build_v2(("192.0.2.9", 1)), source="127.0.0.2")
            return seen
        finally:
            await running.stop(grace=0.1)
            await runner.cleanup()

    assert uvloop.run(scenario()) == ["198.51.100.1", "2001:db8::5"]
