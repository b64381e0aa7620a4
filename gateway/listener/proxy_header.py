"""The PROXY protocol (v1/v2) as a protocol stacked under TLS.

An L4 load balancer that does not terminate TLS sends one header naming the
original client before the ClientHello.  This protocol takes exactly the
header's bytes from the start of the stream, then hands the connection and
every byte after the header to the protocol above (TLS), whose transport then
reports the client the header named as ``peername``.  No accept loop of our
own and no ``MSG_PEEK``: the event loop's ``create_server`` accepts as usual.

Rules (spec §2: a receiver must not guess; per source it either requires the
header or never looks for one):

* ``required: true`` — every connection must come from a trusted source and
  start with a header; anything else is closed before TLS.
* ``required: false`` — a trusted source may send a header or go straight to
  TLS; an untrusted source must go straight to TLS, and a header from it
  closes the connection (it would be a client forging its address).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.listener.config import ProxyProtocolConfig
from gateway.listener.proxy_protocol import ProxyHeader, ProxyProtocolError, classify, parse_header
from gateway.listener.transport import DelegatingTransport
from gateway.ops.throttle import ThrottledWarning

log = logging.getLogger("gateway.proxy_protocol")

PROXY_INFO = "proxy_protocol"  # transport extra-info key: the ProxyInfo of the connection


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """Where a connection really comes from, as its trusted balancer said."""

    peer: tuple[str, int]  # the TCP peer: the balancer
    header: ProxyHeader | None  # None: a trusted source that sent no header

    @property
    def client(self) -> tuple[str, int] | None:
        if self.header is None or self.header.local:
            return None
        return self.header.source


class TrustedSources:
    """Networks whose connections may speak for someone else (balancers, proxies)."""

    __slots__ = ("_networks",)

    def __init__(self, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> None:
        self._networks = networks

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str):
            return False
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket reports ::ffff:10.0.0.1
        return any(address in network for network in self._networks)


class ProxiedTransport(DelegatingTransport):
    """The socket transport with ``peername`` replaced by the client the header named."""

    __slots__ = ("_info", "_peername")

    def __init__(self, inner: asyncio.Transport, info: ProxyInfo) -> None:
        super().__init__(inner)
        self._info = info
        self._peername = info.client

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername" and self._peername is not None:
            return self._peername
        if name == PROXY_INFO:
            return self._info
        return super().get_extra_info(name, default)


class ProxyRefusals:
    """Connections closed before TLS, for /metrics and a rate-limited log line."""

    __slots__ = ("_warn", "count")

    def __init__(self) -> None:
        self.count = 0
        self._warn = ThrottledWarning(log)

    def refuse(self, peer: Any, reason: str) -> None:
        self.count += 1
        host = peer[0] if isinstance(peer, tuple) and peer else peer
        self._warn.warning(
            "connection refused before TLS",
            event="proxy_protocol_refused",
            reason=reason,
            peer=host,
        )


class ProxyHeaderProtocol(asyncio.Protocol):
    """Reads the PROXY header, if this source may send one, then steps aside."""

    __slots__ = (
        "_buffer",
        "_config",
        "_next",
        "_peer",
        "_refusals",
        "_sources",
        "_timeout",
        "_timer",
        "_transport",
        "_trusted",
    )

    def __init__(
        self,
        next_protocol: Callable[[], asyncio.Protocol],
        config: ProxyProtocolConfig,
        sources: TrustedSources,
        refusals: ProxyRefusals,
        timeout: float,
    ) -> None:
        self._next = next_protocol
        self._config = config
        self._trusted = False
        self._sources = sources
        self._refusals = refusals
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[str, int] = ("", 0)
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is only alike
        peer = transport.get_extra_info("peername") or ("", 0)
        self._peer = (str(peer[0]), int(peer[1]))
        self._trusted = self._peer[0] in self._sources
        if not self._trusted and self._config.required:
            self._refuse("connection from a source not in proxy_protocol.trusted_sources")
            return
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expired)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        buffer = self._buffer + data
        kind = classify(buffer[:16])
        if kind in ("tls", "other"):
            if self._trusted and self._config.required:
                self._refuse("no PROXY header from a trusted source (proxy_protocol.required)")
                return
            # "other" goes on to TLS too: it answers plain HTTP and garbage itself.
            self._hand_over(None, buffer)
            return
        if not self._trusted:
            self._refuse("PROXY header from a source not in proxy_protocol.trusted_sources")
            return
        try:
            header = parse_header(buffer)
        except ProxyProtocolError as exc:
            self._refuse(str(exc))
            return
        if header is None:
            self._buffer = buffer  # bounded: parse_header refuses overlong headers
            return
        self._hand_over(header, buffer[header.length :])

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._transport = None

    def _hand_over(self, header: ProxyHeader | None, rest: bytes) -> None:
        self._cancel_timer()
        transport = self._transport
        assert transport is not None
        protocol = self._next()
        self._transport = None  # from now on the protocol above owns the connection
        shown: asyncio.BaseTransport = transport
        if self._trusted:
            shown = ProxiedTransport(transport, ProxyInfo(self._peer, header))
        # The socket transport delivers straight to the protocol above from now on.
        transport.set_protocol(protocol)
        protocol.connection_made(shown)
        if rest:
            protocol.data_received(rest)

    def _refuse(self, reason: str) -> None:
        self._cancel_timer()
        self._refusals.refuse(self._peer, reason)
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _expired(self) -> None:
        self._timer = None
        self._refuse("no PROXY header or TLS handshake within the header-read timeout")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
