"""The proxy's own upstream client (gateway/upstream.py) through a real gateway.

test_proxy.py covers what callers see with an aiohttp upstream; these tests
use hand-written upstreams for the framings and connection rules an aiohttp
server never produces: close-delimited bodies, interim 1xx answers, bodiless
statuses, connection reuse, and a verified HTTPS upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gateway.upstream import UpstreamConnection, UpstreamPool, parse_origin
from tests.conftest import GatewayUnderTest, MakeGateway
from tests.pki import Issued, Pki
from tests.test_proxy import MTLS_CLIENT, RawConnection, get, route

Answer = Callable[[bytes], bytes]


@dataclass
class ScriptedUpstream:
    """Answers each request head with bytes from ``answer``; counts connections."""

    answer: Answer
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                reply = self.answer(head)
                writer.write(reply)
                await writer.drain()
                if b"Connection: close" in reply or b"HTTP/1.0" in reply[:9]:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


StartScripted = Callable[[Answer], Awaitable[ScriptedUpstream]]


@pytest.fixture
async def scripted() -> AsyncIterator[StartScripted]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> ScriptedUpstream:
        upstream = ScriptedUpstream(answer)
        server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
        servers.append(server)
        upstream.port = server.sockets[0].getsockname()[1]
        return upstream

    yield start
    for server in servers:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


async def test_keep_alive_upstream_connection_is_reused(
    make_gateway: MakeGateway, client_cert: Issued, scripted: StartScripted
) -> None:
    upstream = await scripted(lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[route("/", upstream.url)])
    conn = await RawConnection.open(gw, client_cert)
    try:
        for i in range(5):
            response = await conn.request(get(f"/r{i}"))
            assert (response.status, response.body) == (200, b"ok")
    finally:
        await conn.close()
    assert upstream.connections == 1
    # One request head per request, nothing the caller did not ask for.
    assert [h.split(b" ")[1] for h in upstream.heads] == [f"/r{i}".encode() for i in range(5)]
    assert all(b"Accept: */*\r\n" in h and b"Expect" not in h for h in upstream.heads)


async def test_connection_close_from_upstream_is_not_reused(
    make_gateway: MakeGateway, client_cert: Issued, scripted: StartScripted
) -> None:
    upstream = await scripted(
        lambda _: b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    )
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[route("/", upstream.url)])
    conn = await RawConnection.open(gw, client_cert)
    try:
        for _ in range(3):
            response = await conn.request(get("/c"))
            assert (response.status, response.body) == (200, b"ok")
            # The caller's connection is the caller's: it stays open.
            assert response.headers.get("Connection", "").lower() != "close"
    finally:
        await conn.close()
    assert upstream.connections == 3


async def test_close_delimited_body_is_relayed_whole(
    make_gateway: MakeGateway, client_cert: Issued, scripted: StartScripted
) -> None:
    body = bytes(range(256)) * 1000
    upstream = await scripted(lambda _: b"HTTP/1.0 200 OK\r\nX-Kind: eof\r\n\r\n" + body)
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[route("/", upstream.url)])
    conn = await RawConnection.open(gw, client_cert)
    try:
        first = await conn.request(get("/eof"))
        assert first.status == 200
        assert first.headers["X-Kind"] == "eof"
        assert first.body == body  # chunked downstream (HTTP/1.1), complete
        second = await conn.request(get("/eof"))
        assert second.body == body
    finally:
        await conn.close()
    assert upstream.connections == 2


async def test_interim_1xx_answers_are_skipped(
    make_gateway: MakeGateway, client_cert: Issued, scripted: StartScripted
) -> None:
    upstream = await scripted(
        lambda _: (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
            b"HTTP/1.1 201 Made It\r\nContent-Length: 4\r\nX-Final: yes\r\n\r\ndone"
        )
    )
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[route("/", upstream.url)])
    conn = await RawConnection.open(gw, client_cert)
    try:
        await conn.send(get("/hints"))
        async with asyncio.timeout(5):
            status_line = await conn.reader.readuntil(b"\r\n")
        assert status_line == b"HTTP/1.1 201 Made It\r\n"  # the upstream's own reason
        rest = await conn.reader.readuntil(b"\r\n\r\n")
        assert b"X-Final: yes" in rest and b"Link" not in rest
        assert await conn.reader.readexactly(4) == b"done"
    finally:
        await conn.close()


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses_keep_both_connections_in_step(
    make_gateway: MakeGateway,
    client_cert: Issued,
    scripted: StartScripted,
    status: int,
) -> None:
    def answer(head: bytes) -> bytes:
        if head.startswith(b"GET /empty "):
            return f'HTTP/1.1 {status} Nothing\r\nETag: "x"\r\n\r\n'.encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter"

    upstream = await scripted(answer)
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[route("/", upstream.url)])
    conn = await RawConnection.open(gw, client_cert)
    try:
        await conn.send(get("/empty"))
        async with asyncio.timeout(5):
            head = await conn.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status}".encode())
        assert b"Transfer-Encoding" not in head
        after = await conn.request(get("/next"))
        assert (after.status, after.body) == (200, b"after")
    finally:
        await conn.close()
    assert upstream.connections == 1


async def test_head_with_length_reuses_the_upstream_connection(
    make_gateway: MakeGateway, client_cert: Issued, scripted: StartScripted
) -> None:
    def answer(head: bytes) -> bytes:
        if head.startswith(b"HEAD "):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nget"

    upstream = await scripted(answer)
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[route("/", upstream.url)])
    conn = await RawConnection.open(gw, client_cert)
    try:
        await conn.send("HEAD /h HTTP/1.1\r\nHost: localhost\r\n\r\n")
        async with asyncio.timeout(5):
            head = await conn.reader.readuntil(b"\r\n\r\n")
        assert b"Content-Length: 1000" in head
        again = await conn.request(get("/g"))
        assert (again.status, again.body) == (200, b"get")
    finally:
        await conn.close()
    assert upstream.connections == 1


async def test_oversized_upstream_header_is_502(
    make_gateway: MakeGateway, client_cert: Issued, scripted: StartScripted
) -> None:
    upstream = await scripted(
        lambda _: b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 10_000 + b"\r\nContent-Length: 0\r\n\r\n"
    )
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[route("/", upstream.url)])
    conn = await RawConnection.open(gw, client_cert)
    try:
        response = await conn.request(get("/big"))
    finally:
        await conn.close()
    assert response.status == 502
    assert response.json()["error"] == "bad_gateway"


@pytest.fixture
async def tls_upstream(pki: Pki) -> AsyncIterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server.cert_path, pki.server.key_path)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntls")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_https_upstream_is_verified(
    make_gateway: MakeGateway,
    client_cert: Issued,
    pki: Pki,
    tls_upstream: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not in the system trust store: refused as unreachable, never relayed.
    untrusted = await make_gateway(
        clients=[MTLS_CLIENT], routes=[route("/", f"https://localhost:{tls_upstream}")]
    )
    conn = await RawConnection.open(untrusted, client_cert)
    try:
        refused = await conn.request(get("/"))
    finally:
        await conn.close()
    assert refused.status == 502
    assert refused.json()["error_description"] == "the upstream is unreachable"
    # OpenSSL's default verify paths honour SSL_CERT_FILE: trust the test CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca.cert_path))
    trusted = await make_gateway(
        clients=[MTLS_CLIENT], routes=[route("/", f"https://localhost:{tls_upstream}")]
    )
    conn = await RawConnection.open(trusted, client_cert)
    try:
        for _ in range(2):
            ok = await conn.request(get("/"))
            assert (ok.status, ok.body) == (200, b"tls")
    finally:
        await conn.close()


async def test_a_burst_larger_than_the_read_buffer_is_relayed_whole(
    make_gateway: MakeGateway, client_cert: Issued, scripted: StartScripted
) -> None:
    # Head and 4 MiB in one write: upstream reading pauses before the handler
    # first looks, and must resume once the buffer is handed downstream.
    body = bytes(range(256)) * (4 * 4096)
    upstream = await scripted(
        lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[route("/", upstream.url)])
    conn = await RawConnection.open(gw, client_cert)
    try:
        for _ in range(2):
            response = await conn.request(get("/burst"))
            assert response.status == 200
            assert response.body == body
    finally:
        await conn.close()
    assert upstream.connections == 1


# --- the bounded idle pool ----------------------------------------------------------


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


@pytest.fixture
async def barrier_upstream() -> AsyncIterator[Callable[[int], Awaitable[BarrierUpstream]]]:
    servers: list[asyncio.Server] = []

    async def start(wanted: int) -> BarrierUpstream:
        upstream = BarrierUpstream(wanted)
        server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
        servers.append(server)
        upstream.port = server.sockets[0].getsockname()[1]
        return upstream

    yield start
    for server in servers:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


async def _burst(gw: GatewayUnderTest, client: Issued, count: int) -> list[int]:
    """``count`` concurrent callers, one request each; their statuses."""
    conns = await asyncio.gather(*(RawConnection.open(gw, client) for _ in range(count)))
    try:
        responses = await asyncio.gather(*(c.request(get("/burst")) for c in conns))
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return [r.status for r in responses]


async def _settle(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait (bounded) for the upstream to see what the gateway did; no timing asserted."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while not condition():
                await asyncio.sleep(0.02)


async def test_a_burst_leaves_at_most_the_default_cap_of_idle_connections(
    make_gateway: MakeGateway,
    client_cert: Issued,
    barrier_upstream: Callable[[int], Awaitable[BarrierUpstream]],
) -> None:
    # The finding at test scale: 72 concurrent requests open 72
    # upstream connections; with no bound all 72 stayed idle for 30 s.
    upstream = await barrier_upstream(72)
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[route("/", upstream.url)])
    assert await _burst(gw, client_cert, 72) == [200] * 72
    await _settle(lambda: len(upstream.open_ports) <= 64)
    assert len(upstream.closed_ports) == 8  # closed by the gateway, seen at the upstream
    assert len(upstream.open_ports) == 64  # limits.upstream_idle_connections' default


async def test_the_configured_cap_bounds_idle_connections_and_they_are_reused(
    make_gateway: MakeGateway,
    client_cert: Issued,
    barrier_upstream: Callable[[int], Awaitable[BarrierUpstream]],
) -> None:
    upstream = await barrier_upstream(10)
    gw = await make_gateway(
        clients=[MTLS_CLIENT],
        routes=[route("/", upstream.url)],
        extra={"limits": {"upstream_idle_connections": 3}},
    )
    assert await _burst(gw, client_cert, 10) == [200] * 10
    await _settle(lambda: len(upstream.closed_ports) >= 7)
    assert len(upstream.closed_ports) == 7
    assert len(upstream.open_ports) == 3
    assert gw.gateway.upstreams is not None
    assert gw.gateway.upstreams.idle_count() == 3
    kept = set(upstream.open_ports)
    # The next callers reuse what was kept: no new upstream connection.
    assert await _burst(gw, client_cert, 3) == [200] * 3
    assert upstream.open_ports == kept
    assert gw.gateway.upstreams.idle_count() == 3


async def test_a_cap_of_zero_keeps_no_idle_connection(
    make_gateway: MakeGateway,
    client_cert: Issued,
    barrier_upstream: Callable[[int], Awaitable[BarrierUpstream]],
) -> None:
    upstream = await barrier_upstream(1)
    gw = await make_gateway(
        clients=[MTLS_CLIENT],
        routes=[route("/", upstream.url)],
        extra={"limits": {"upstream_idle_connections": 0}},
    )
    conn = await RawConnection.open(gw, client_cert)
    try:
        for _ in range(3):
            assert (await conn.request(get("/once"))).status == 200
    finally:
        await conn.close()
    await _settle(lambda: len(upstream.closed_ports) >= 3)
    assert len(upstream.closed_ports) == 3
    assert not upstream.open_ports


async def _exchange(conn: UpstreamConnection) -> None:
    loop = asyncio.get_running_loop()
    conn.start(
        b"GET / HTTP/1.1\r\nHost: upstream\r\n\r\n",
        head_only=False,
        timeout=5.0,
        deadline=loop.time() + 5.0,
    )
    await conn.response_head()
    while await conn.read():
        pass


def _local_port(conn: UpstreamConnection) -> int:
    assert conn.transport is not None
    port: int = conn.transport.get_extra_info("sockname")[1]
    return port


async def test_the_longest_idle_connection_is_evicted_and_reuse_is_lifo(
    barrier_upstream: Callable[[int], Awaitable[BarrierUpstream]],
) -> None:
    upstream = await barrier_upstream(1)
    origin = parse_origin(upstream.url)
    pool = UpstreamPool(max_idle=2)
    try:
        first, second, third = [await pool.acquire(origin, 5.0) for _ in range(3)]
        ports = [_local_port(c) for c in (first, second, third)]
        for conn in (first, second, third):
            await _exchange(conn)
            conn.finish()  # released in this order: first is the longest idle
        await _settle(lambda: bool(upstream.closed_ports))
        assert upstream.closed_ports == [ports[0]]
        assert pool.idle_count(origin) == 2
        # Last in, first out: the warmest connection goes out first.
        assert await pool.acquire(origin, 5.0) is third
        assert await pool.acquire(origin, 5.0) is second
    finally:
        await pool.close()


async def test_closed_connections_are_freed_without_the_cyclic_collector(
    barrier_upstream: Callable[[int], Awaitable[BarrierUpstream]],
) -> None:
    # A parser holds its connection's callbacks: unless the pool breaks that
    # cycle, every closed connection waits for a full collection, and after a
    # burst thousands of them did.
    upstream = await barrier_upstream(1)
    origin = parse_origin(upstream.url)
    pool = UpstreamPool(max_idle=2)

    def alive() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is UpstreamConnection)

    gc.collect()
    before = alive()
    gc.disable()
    try:
        conns = [await pool.acquire(origin, 5.0) for _ in range(10)]
        for conn in conns:
            await _exchange(conn)
            conn.finish()  # the first 8 released are closed by the cap
        del conns, conn
        await _settle(lambda: len(upstream.closed_ports) >= 8)
        await asyncio.sleep(0.1)  # the transports' connection_lost callbacks
        assert alive() - before == 2  # only the two the pool keeps
    finally:
        gc.enable()
        await pool.close()
