"""The protocol stack of one listener, built once and named in the start-up log.

    socket → [PROXY header] → TLS (pyOpenSSL) → HTTP/1.1 (header deadline, connection cap)

Each layer is an asyncio protocol that owns the one below as its transport;
``describe`` gives the chain as logged at start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.config import BindAddress, ProxyProtocolConfig
from gateway.listener.proxy_header import ProxyHeaderProtocol, ProxyRefusals, TrustedSources
from gateway.listener.tls_protocol import TlsServerProtocol
from gateway.tls import ListenerTls

ProtocolFactory = Callable[[], asyncio.Protocol]


def tls_stack(
    tls: ListenerTls,
    http: ProtocolFactory,
    *,
    handshake_timeout: float,
    send_timeout: float | None = None,
    proxy_protocol: ProxyProtocolConfig | None = None,
    proxy_refusals: ProxyRefusals | None = None,
) -> ProtocolFactory:
    """A factory for one accepted connection's protocol chain."""
    context = tls.context
    observer = tls.handshakes

    def tls_layer() -> asyncio.Protocol:
        return TlsServerProtocol(
            context,
            http,
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
