"""gateway.listener.stack: the ALPN the TLS handshake settled picks the HTTP protocol."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Sequence

import pytest

from gateway.listener.handshakes import HandshakeStats
from gateway.listener.stack import AlpnChooser
from gateway.listener.tls_context import ALPN_PROTOCOLS, ALPN_WITH_HTTP2
from gateway.listener.tls_protocol import TlsServerProtocol
from tests.pki import Issued, Pki


class Says(asyncio.Protocol):
    """Writes its name and closes: the test reads which protocol got the connection."""

    def __init__(self, name: bytes) -> None:
        self.name = name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self.name)
        transport.close()


async def _listen(pki: Pki, alpn: Sequence[bytes]) -> asyncio.Server:
    context = pki.listener_context(alpn=alpn)

    def factory() -> asyncio.Protocol:
        return TlsServerProtocol(
            lambda: context,
            lambda: AlpnChooser(lambda: Says(b"http/1.1"), lambda: Says(b"h2")),
            handshake_timeout=5,
            observer=HandshakeStats(),
        )

    return await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)


def _connect(port: int, context: ssl.SSLContext, offered: list[str]) -> tuple[str | None, bytes]:
    if offered:
        context.set_alpn_protocols(offered)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        data = b""
        while chunk := tls.recv(100):
            data += chunk
        return tls.selected_alpn_protocol(), data


@pytest.mark.parametrize(
    ("offered", "selected", "served_by"),
    [
        (["h2", "http/1.1"], "h2", b"h2"),
        (["http/1.1", "h2"], "h2", b"h2"),  # the server's preference wins (RFC 7301 §3.2)
        (["h2"], "h2", b"h2"),  # a client offering only h2 gets h2
        (["http/1.1"], "http/1.1", b"http/1.1"),
        ([], None, b"http/1.1"),  # no ALPN at all: HTTP/1.1
    ],
)
async def test_alpn_chooses_the_protocol_with_http2_on(
    pki: Pki, client_cert: Issued, offered: list[str], selected: str | None, served_by: bytes
) -> None:
    server = await _listen(pki, ALPN_WITH_HTTP2)
    port = server.sockets[0].getsockname()[1]
    got = await asyncio.to_thread(_connect, port, pki.client_context(client_cert), offered)
    assert got == (selected, served_by)
    server.close()
    await server.wait_closed()


async def test_with_http2_off_an_h2_only_client_gets_no_protocol(
    pki: Pki, client_cert: Issued
) -> None:
    server = await _listen(pki, ALPN_PROTOCOLS)
    port = server.sockets[0].getsockname()[1]
    both = await asyncio.to_thread(
        _connect, port, pki.client_context(client_cert), ["h2", "http/1.1"]
    )
    assert both == ("http/1.1", b"http/1.1")
    h2_only = await asyncio.to_thread(_connect, port, pki.client_context(client_cert), ["h2"])
    assert h2_only == (None, b"http/1.1")
    server.close()
    await server.wait_closed()
