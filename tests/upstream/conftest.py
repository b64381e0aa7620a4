"""Upstreams for the upstream client's tests: hand-written, on real sockets.

An aiohttp server never produces close-delimited bodies, interim 1xx
answers or a keep-alive connection held open on purpose; these upstreams
answer with exactly the bytes a test scripts, and record what reached them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gateway.upstream import UpstreamConnection, UpstreamPool
from tests.conftest import GatewayUnderTest, MakeGateway
from tests.pki import Issued, Pki
from tests.test_proxy import MTLS_CLIENT, RawConnection, route

Answer = Callable[[bytes], bytes]


async def _serve_on(
    servers: list[asyncio.Server],
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    tls: ssl.SSLContext | None = None,
) -> int:
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    servers.append(server)
    port: int = server.sockets[0].getsockname()[1]
    return port


@pytest.fixture
async def servers() -> AsyncIterator[list[asyncio.Server]]:
    """Every upstream a test starts, closed at its end."""
    started: list[asyncio.Server] = []
    yield started
    for server in started:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


@dataclass
class ScriptedUpstream:
    """Answers each request head with bytes from ``answer``; counts connections.

    ``peers`` holds, per connection, the SHA-256 of the client certificate it
    presented (b"" for none) when served over TLS.
    """

    answer: Answer
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    peers: list[bytes] = field(default_factory=list)
    open_connections: int = 0
    port: int = 0
    scheme: str = "http"
    before_body: bool = False  # answer as soon as the head is in (an early answer)

    @property
    def url(self) -> str:
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            self.peers.append(hashlib.sha256(der).digest() if der else b"")
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                if not self.before_body:
                    self.bodies.append(await _body(reader, head))
                reply = self.answer(head)
                writer.write(reply)
                await writer.drain()
                if b"Connection: close" in reply or b"HTTP/1.0" in reply[:9]:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self.open_connections -= 1
            writer.close()


async def _body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """The request's body, as sent: Content-Length bytes, or the chunked framing raw."""
    lowered = head.lower()
    if b"\r\ncontent-length:" in lowered:
        length = int(lowered.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
        return await reader.readexactly(length)
    if b"\r\ntransfer-encoding: chunked" in lowered:
        return await reader.readuntil(b"0\r\n\r\n")
    return b""


StartScripted = Callable[..., Awaitable[ScriptedUpstream]]


@pytest.fixture
async def scripted(servers: list[asyncio.Server]) -> StartScripted:
    """``await scripted(answer, tls=context)``: an upstream answering with ``answer(head)``."""

    async def start(
        answer: Answer, *, tls: ssl.SSLContext | None = None, before_body: bool = False
    ) -> ScriptedUpstream:
        upstream = ScriptedUpstream(
            answer, scheme="https" if tls else "http", before_body=before_body
        )
        upstream.port = await _serve_on(servers, upstream.serve, tls)
        return upstream

    return start


def ok(body: bytes = b"ok") -> Answer:
    return lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


def server_tls(pki: Pki, server: Issued | None = None) -> ssl.SSLContext:
    """The upstream's TLS: pki's server certificate; a client certificate asked for, not required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    chosen = server or pki.server
    context.load_cert_chain(chosen.cert_path, chosen.key_path)
    context.load_verify_locations(pki.ca.cert_path)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_tls(pki: Pki, client: Issued | None = None) -> ssl.SSLContext:
    """What an outbound listener's material holds: pki's CA as anchor, optionally a certificate."""
    context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    if client is not None:
        context.load_cert_chain(client.cert_path, client.key_path)
    return context


@dataclass
class BarrierUpstream:
    """Holds every request until ``wanted`` are in, so each needs its own connection.

    Records which connections are open (by the gateway's local port), as the
    upstream sees them: a connection the gateway closes shows up as EOF here.
    """

    wanted: int
    open_ports: set[int] = field(default_factory=set)
    closed_ports: list[int] = field(default_factory=list)
    arrived: int = 0
    everyone: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[1]
        self.open_ports.add(peer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.arrived += 1
                if self.arrived >= self.wanted:
                    self.everyone.set()
                await self.everyone.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_ports.discard(peer)
            self.closed_ports.append(peer)
            writer.close()


StartBarrier = Callable[[int], Awaitable[BarrierUpstream]]


@pytest.fixture
async def barrier_upstream(servers: list[asyncio.Server]) -> StartBarrier:
    async def start(wanted: int) -> BarrierUpstream:
        upstream = BarrierUpstream(wanted)
        upstream.port = await _serve_on(servers, upstream.serve)
        return upstream

    return start


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    """A pool of the client under test, used directly (no gateway), closed at the end."""
    made = UpstreamPool(max_idle=2)
    yield made
    await made.close()


GET = b"GET / HTTP/1.1\r\nHost: upstream\r\n\r\n"


def start(
    conn: UpstreamConnection, head: bytes = GET, *, timeout: float = 5.0, body_follows: bool = False
) -> UpstreamConnection:
    """``head`` sent on ``conn`` with a ``timeout`` deadline; ``body_follows``: send_body's job."""
    conn.start(
        head, head_only=False, timeout=timeout, deadline=asyncio.get_running_loop().time() + timeout
    )
    conn.body_sent = not body_follows
    return conn


async def exchange(conn: UpstreamConnection) -> bytes:
    """One GET on ``conn``, its whole body read; the connection is left to the caller."""
    start(conn)
    await conn.response_head()
    parts = [conn.take_body()]
    while chunk := await conn.read():
        parts.append(chunk)
    return b"".join(parts)


def local_port(conn: UpstreamConnection) -> int:
    assert conn.transport is not None
    port: int = conn.transport.get_extra_info("sockname")[1]
    return port


async def settle(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait (bounded) for the upstream to see what the gateway did; no timing asserted."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while not condition():
                await asyncio.sleep(0.02)


@dataclass
class Proxied:
    """A gateway in front of one upstream, and a caller's connection to it."""

    gateway: GatewayUnderTest
    caller: RawConnection


ThroughGateway = Callable[..., Awaitable[Proxied]]


@pytest.fixture
async def through_gateway(
    make_gateway: MakeGateway, client_cert: Issued
) -> AsyncIterator[ThroughGateway]:
    """``await through_gateway(url, limits=...)``: a gateway routing "/" to ``url``, and a caller."""
    opened: list[RawConnection] = []

    async def start(upstream_url: str, **limits: int) -> Proxied:
        gateway = await make_gateway(
            clients=[MTLS_CLIENT],
            routes=[route("/", upstream_url)],
            extra={"limits": limits} if limits else None,
        )
        caller = await RawConnection.open(gateway, client_cert)
        opened.append(caller)
        return Proxied(gateway, caller)

    yield start
    for caller in opened:
        await caller.close()
