"""The protocol stack of one listener, built once and named in the start-up log.

    socket → [PROXY header] → TLS (pyOpenSSL) → HTTP/1.1 (header deadline, connection cap)
                                               ↘ HTTP/2 where ALPN chose h2

Each layer is an asyncio protocol that owns the one below as its transport;
``describe`` gives the chain as logged at start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.config.values import BindAddress
from gateway.listener.config import ProxyProtocolConfig
from gateway.listener.proxy_header import ProxyHeaderProtocol, ProxyRefusals, TrustedSources
from gateway.listener.tls_material import ListenerTls
from gateway.listener.tls_protocol import TlsServerProtocol

ProtocolFactory = Callable[[], asyncio.Protocol]


class AlpnChooser(asyncio.Protocol):
    """Starts HTTP/2 or HTTP/1.1 by the ALPN the handshake settled, then steps aside.

    The TLS layer makes its wrapped protocol only once the handshake is done,
    so the negotiated protocol is known here (the transport's ``ssl_object``
    is the ``TlsSession``); the chosen protocol takes this one's place on the
    transport before any plaintext is delivered.
    """

    __slots__ = ("_http1", "_http2")

    def __init__(self, http1: ProtocolFactory, http2: ProtocolFactory) -> None:
        self._http1 = http1
        self._http2 = http2

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        session = transport.get_extra_info("ssl_object")
        alpn = session.selected_alpn_protocol() if session is not None else None
        protocol = self._http2() if alpn == "h2" else self._http1()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


def tls_stack(
    tls: ListenerTls,
    http: ProtocolFactory,
    *,
    handshake_timeout: float,
    send_timeout: float | None = None,
    proxy_protocol: ProxyProtocolConfig | None = None,
    proxy_refusals: ProxyRefusals | None = None,
    http2: ProtocolFactory | None = None,
) -> ProtocolFactory:
    """A factory for one accepted connection's protocol chain.

    With ``http2``, a connection whose ALPN is ``h2`` gets that protocol (the
    listener's context must offer h2: ``tls_context.ALPN_WITH_HTTP2``).
    """
    context = tls.context
    observer = tls.handshakes
    application = http
    if http2 is not None:
        h2 = http2

        def application() -> asyncio.Protocol:
            return AlpnChooser(http, h2)

    def tls_layer() -> asyncio.Protocol:
        return TlsServerProtocol(
            context,
            application,
            handshake_timeout=handshake_timeout,
            observer=observer,
            send_timeout=send_timeout,
        )

    if proxy_protocol is None:
        return tls_layer
    sources = TrustedSources(proxy_protocol.trusted_sources)
    refusals = proxy_refusals or ProxyRefusals()

    def proxy_layer() -> asyncio.Protocol:
        return ProxyHeaderProtocol(tls_layer, proxy_protocol, sources, refusals, handshake_timeout)

    return proxy_layer


def describe(proxy_protocol: ProxyProtocolConfig | None, http: str) -> str:
    layers = ["tcp", *(["proxy-protocol"] if proxy_protocol is not None else []), "tls", http]
    return " → ".join(layers)


async def listen(
    factory: ProtocolFactory, bind: BindAddress, *, reuse_port: bool, backlog: int = 1024
) -> asyncio.Server:
    """Bind and serve; raises OSError when the address cannot be used."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        factory,
        bind.host,
        bind.port,
        reuse_port=reuse_port or None,
        reuse_address=True,
        backlog=backlog,
    )
    return server


def bound_address(server: asyncio.Server) -> tuple[str, int]:
    sockname = server.sockets[0].getsockname()
    return str(sockname[0]), int(sockname[1])
