"""A TLS listener behind an L4 load balancer that speaks the PROXY protocol.

The header arrives before the TLS ClientHello, so such a listener cannot let
asyncio start TLS on accept.  It accepts plain TCP itself, reads the header
from trusted sources only (exactly its bytes, never a byte of the ClientHello:
the first bytes are peeked, then consumed up to the header's end), and hands
the socket to ``loop.connect_accepted_socket(ssl=...)``, which does the TLS
handshake as ``create_server`` would.  The client address from the header then
reaches every ``request.remote`` reader (access log, X-Forwarded-For, refusal
logs) through the transport's ``peername``.

Rules (PROXY protocol spec §2: a receiver must not guess; it either requires
the header or never looks for one, per source):

* ``required: true`` — every connection must come from a trusted source and
  start with a header; anything else is closed before TLS.
* ``required: false`` — a trusted source may send a header or go straight to
  TLS; an untrusted source must go straight to TLS, and a header from it
  closes the connection (it would be a client forging its address).

Listeners without ``proxy_protocol`` never come here: their accept path is
the plain ``create_server(ssl=...)`` one (deadlines.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

from gateway.config import ProxyProtocolConfig
from gateway.deadlines import DeadlineSite, HeaderDeadlineProtocol, make_request_handler
from gateway.proxy_protocol import (
    V1_MAX_LENGTH,
    V2_HEADER_LENGTH,
    ProxyHeader,
    ProxyProtocolError,
    classify,
    parse_header,
)
from gateway.throttle import ThrottledWarning

log = logging.getLogger("gateway.proxy_protocol")

PROXY_INFO = "proxy_protocol"  # transport extra-info key: the ProxyInfo of the connection
_PEEK = 256


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


class ProxiedTransport(asyncio.Transport):
    """The TLS transport with ``peername`` replaced by the client the header named."""

    def __init__(self, inner: asyncio.Transport, info: ProxyInfo) -> None:
        super().__init__()
        self._inner = inner
        self._info = info
        self._peername = info.client

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername" and self._peername is not None:
            return self._peername
        if name == PROXY_INFO:
            return self._info
        return self._inner.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def close(self) -> None:
        self._inner.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()

    def write(self, data: Any) -> None:
        self._inner.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._inner.writelines(list_of_data)

    def write_eof(self) -> None:
        self._inner.write_eof()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def abort(self) -> None:
        self._inner.abort()


class ProxiedDeadlineProtocol(HeaderDeadlineProtocol):
    """The header-read deadline, seeing the connection through ``ProxiedTransport``.

    ``ProxiedTransport.get_protocol()`` returns this object, so the deadline
    middleware finds it exactly as on a plain listener.
    """

    __slots__ = ("_info",)

    def __init__(self, inner: asyncio.Protocol, timeout: float, info: ProxyInfo) -> None:
        super().__init__(inner, timeout)
        self._info = info

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, only alike.
        inner = cast(asyncio.Transport, transport)
        super().connection_made(ProxiedTransport(inner, self._info))


class TrustedSources:
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


class _Refused(Exception):
    pass


async def _wait_readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise _Refused("connection closed inside the PROXY header")
        data += chunk
    return data


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    while True:
        await _wait_readable(loop, sock)
        try:
            data = sock.recv(_PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        if not data:
            raise _Refused("connection closed before any byte")
        return data


async def read_proxy_header(
    loop: asyncio.AbstractEventLoop, sock: socket.socket
) -> ProxyHeader | None:
    """Consume exactly one PROXY header from ``sock``; None if TLS starts right away."""
    first = await _peek(loop, sock)
    kind = classify(first)
    if kind == "tls":
        return None
    if kind == "v2":
        head = await _recv_exactly(loop, sock, V2_HEADER_LENGTH)
        header = parse_header(head)  # raises, or None while the payload is missing
        if header is None:
            length = int.from_bytes(head[14:16], "big")
            header = parse_header(head + await _recv_exactly(loop, sock, length))
        assert header is not None
        return header
    if kind == "v1":
        taken = b""
        while True:
            window = await _peek(loop, sock) if taken else first
            end = window.find(b"\r\n", 0, V1_MAX_LENGTH - len(taken))
            if end >= 0:
                # Take the header up to its CRLF and not one byte of the ClientHello.
                taken += await _recv_exactly(loop, sock, end + 2)
                header = parse_header(taken)
                assert header is not None
                return header
            if window.endswith(b"\r"):
                window = window[:-1]  # the CR may belong to the CRLF still on its way
            if not window:
                await asyncio.sleep(0.005)
                continue
            taken += await _recv_exactly(loop, sock, len(window))
            if parse_header(taken) is not None:  # raises once too long or malformed
                raise _Refused("PROXY v1 header ended unexpectedly")
    raise ProxyProtocolError("the connection does not start with a PROXY protocol header")


class ProxyProtocolServer:
    """The listening sockets and accept loops; what aiohttp's site calls ``_server``."""

    def __init__(
        self,
        *,
        sockets: list[socket.socket],
        ssl_context: Any,
        protocol_factory: Any,
        config: ProxyProtocolConfig,
        timeout: float,
    ) -> None:
        self.sockets = sockets
        self._ssl = ssl_context
        self._factory = protocol_factory
        self._required = config.required
        self._trusted = TrustedSources(config.trusted_sources)
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._accepting: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._warn = ThrottledWarning(log)
        self._serving = True
        self.refused = 0
        for sock in sockets:
            self._accepting.append(
                self._loop.create_task(self._accept(sock), name="proxy-protocol-accept")
            )

    def is_serving(self) -> bool:
        return self._serving

    def close(self) -> None:
        self._serving = False
        for task in self._accepting:
            task.cancel()
        for task in list(self._pending):
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._accepting, *self._pending, return_exceptions=True)

    async def _accept(self, listening: socket.socket) -> None:
        while True:
            try:
                conn, address = await self._loop.sock_accept(listening)
            except asyncio.CancelledError:
                raise
            except OSError as exc:  # EMFILE and friends: back off, keep listening
                log.error("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = self._loop.create_task(self._connection(conn, address))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _connection(self, conn: socket.socket, address: Any) -> None:
        peer = (str(address[0]), int(address[1]))
        started = time.monotonic()
        handed_over = False
        try:
            info = await asyncio.wait_for(self._preamble(conn, peer), self._timeout)
            remaining = max(0.1, self._timeout - (time.monotonic() - started))

            def factory() -> asyncio.Protocol:
                protocol: asyncio.Protocol = self._factory(info)
                return protocol

            # From here asyncio owns the socket, and closes it if the handshake fails.
            handed_over = True
            await self._loop.connect_accepted_socket(
                factory, conn, ssl=self._ssl, ssl_handshake_timeout=remaining
            )
        except (ProxyProtocolError, _Refused) as exc:
            self._refuse(peer, str(exc))
        except TimeoutError:
            self._refuse(peer, "no PROXY header or TLS handshake within the header-read timeout")
        except (OSError, ConnectionError):
            pass  # the handshake failed: asyncio closed the socket and logged nothing useful
        finally:
            if not handed_over:
                with contextlib.suppress(OSError):
                    conn.close()

    async def _preamble(self, conn: socket.socket, peer: tuple[str, int]) -> ProxyInfo | None:
        trusted = peer[0] in self._trusted
        if not trusted:
            if self._required:
                raise _Refused("connection from a source not in proxy_protocol.trusted_sources")
            first = await _peek(self._loop, conn)
            if classify(first) in ("v1", "v2"):
                raise _Refused("PROXY header from a source not in proxy_protocol.trusted_sources")
            return None
        header = await read_proxy_header(self._loop, conn)
        if header is None and self._required:
            raise _Refused("no PROXY header from a trusted source (proxy_protocol.required)")
        return ProxyInfo(peer=peer, header=header)

    def _refuse(self, peer: tuple[str, int], reason: str) -> None:
        self.refused += 1
        self._warn.warning(
            "connection refused before TLS",
            event="proxy_protocol_refused",
            reason=reason,
            peer=peer[0],
        )


class ProxyProtocolSite(DeadlineSite):
    """DeadlineSite for a listener with ``proxy_protocol``: plain accept, header, then TLS."""

    def __init__(
        self,
        runner: web.BaseRunner,
        *args: Any,
        proxy_protocol: ProxyProtocolConfig,
        **kwargs: Any,
    ) -> None:
        super().__init__(runner, *args, **kwargs)
        self._proxy_protocol = proxy_protocol

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        timeout = self._header_timeout

        def factory(info: ProxyInfo | None) -> asyncio.Protocol:
            protocol = (
                HeaderDeadlineProtocol(make_request_handler(server), timeout)
                if info is None
                else ProxiedDeadlineProtocol(make_request_handler(server), timeout, info)
            )
            protocol.gate = self.connection_limit  # limits.max_connections
            return protocol

        sockets = await _listening_sockets(
            loop, self._host, self._port, self._backlog, bool(self._reuse_port)
        )
        self._server = ProxyProtocolServer(  # type: ignore[assignment]
            sockets=sockets,
            ssl_context=self._ssl_context,
            protocol_factory=factory,
            config=self._proxy_protocol,
            timeout=timeout,
        )


async def _listening_sockets(
    loop: asyncio.AbstractEventLoop, host: str | None, port: int, backlog: int, reuse_port: bool
) -> list[socket.socket]:
    infos = await loop.getaddrinfo(
        host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    seen: set[Any] = set()
    try:
        for family, kind, proto, _, address in infos:
            if address in seen:
                continue
            seen.add(address)
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
