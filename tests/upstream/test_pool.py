"""The pool (gateway/upstream/pool.py): bounded idle connections, TLS contexts, refusals named."""

from __future__ import annotations

import asyncio
import gc
import hashlib
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.upstream import (
    CertificateRefused,
    UpstreamConnection,
    UpstreamPool,
    UpstreamUnreachable,
    parse_origin,
)
from tests.conftest import GatewayUnderTest, MakeGateway, free_port
from tests.pki import Issued, Pki, name
from tests.test_proxy import MTLS_CLIENT, RawConnection, get, route
from tests.upstream.conftest import (
    StartBarrier,
    StartScripted,
    ThroughGateway,
    client_tls,
    exchange,
    local_port,
    ok,
    server_tls,
    settle,
)

# --- the bounded idle pool, as the gateway uses it ---------------------------------


async def _burst(gw: GatewayUnderTest, client: Issued, count: int) -> list[int]:
    """``count`` concurrent callers, one request each; their statuses."""
    conns = await asyncio.gather(*(RawConnection.open(gw, client) for _ in range(count)))
    try:
        responses = await asyncio.gather(*(c.request(get("/burst")) for c in conns))
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return [r.status for r in responses]


async def test_a_burst_leaves_at_most_the_default_cap_of_idle_connections(
    make_gateway: MakeGateway, client_cert: Issued, barrier_upstream: StartBarrier
) -> None:
    # The finding at test scale: 72 concurrent requests open 72
    # upstream connections; with no bound all 72 stayed idle for 30 s.
    upstream = await barrier_upstream(72)
    gw = await make_gateway(clients=[MTLS_CLIENT], routes=[route("/", upstream.url)])
    assert await _burst(gw, client_cert, 72) == [200] * 72
    await settle(lambda: len(upstream.open_ports) <= 64)
    assert len(upstream.closed_ports) == 8  # closed by the gateway, seen at the upstream
    assert len(upstream.open_ports) == 64  # limits.upstream_idle_connections' default


async def test_the_configured_cap_bounds_idle_connections_and_they_are_reused(
    client_cert: Issued, barrier_upstream: StartBarrier, through_gateway: ThroughGateway
) -> None:
    upstream = await barrier_upstream(10)
    gw = (await through_gateway(upstream.url, upstream_idle_connections=3)).gateway
    assert await _burst(gw, client_cert, 10) == [200] * 10
    await settle(lambda: len(upstream.closed_ports) >= 7)
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
    barrier_upstream: StartBarrier, through_gateway: ThroughGateway
) -> None:
    upstream = await barrier_upstream(1)
    caller = (await through_gateway(upstream.url, upstream_idle_connections=0)).caller
    for _ in range(3):
        assert (await caller.request(get("/once"))).status == 200
    await settle(lambda: len(upstream.closed_ports) >= 3)
    assert len(upstream.closed_ports) == 3
    assert not upstream.open_ports


# --- the pool itself ------------------------------------------------------------------


async def test_the_longest_idle_connection_is_evicted_and_reuse_is_lifo(
    barrier_upstream: StartBarrier, pool: UpstreamPool
) -> None:
    upstream = await barrier_upstream(1)
    origin = parse_origin(upstream.url)
    first, second, third = [await pool.acquire(origin, 5.0) for _ in range(3)]
    ports = [local_port(c) for c in (first, second, third)]
    for conn in (first, second, third):
        await exchange(conn)
        conn.finish()  # released in this order: first is the longest idle
    await settle(lambda: bool(upstream.closed_ports))
    assert upstream.closed_ports == [ports[0]]
    assert pool.idle_count(origin) == 2
    # Last in, first out: the warmest connection goes out first.
    assert await pool.acquire(origin, 5.0) is third
    assert await pool.acquire(origin, 5.0) is second


async def test_origins_that_differ_only_in_path_share_connections(
    scripted: StartScripted, pool: UpstreamPool
) -> None:
    upstream = await scripted(ok())
    api, token = parse_origin(upstream.url + "/api"), parse_origin(upstream.url + "/token")
    conn = await pool.acquire(api, 5.0)
    await exchange(conn)
    conn.finish()
    assert await pool.acquire(token, 5.0) is conn
    assert upstream.connections == 1


async def test_closed_connections_are_freed_without_the_cyclic_collector(
    barrier_upstream: StartBarrier, pool: UpstreamPool
) -> None:
    # A parser holds its connection's callbacks: unless the pool breaks that
    # cycle, every closed connection waits for a full collection, and after a
    # burst thousands of them did.
    upstream = await barrier_upstream(1)
    origin = parse_origin(upstream.url)

    def alive() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is UpstreamConnection)

    gc.collect()
    before = alive()
    gc.disable()
    try:
        conns = [await pool.acquire(origin, 5.0) for _ in range(10)]
        for conn in conns:
            await exchange(conn)
            conn.finish()  # the first 8 released are closed by the cap
        del conns, conn
        await settle(lambda: len(upstream.closed_ports) >= 8)
        await asyncio.sleep(0.1)  # the transports' connection_lost callbacks
        assert alive() - before == 2  # only the two the pool keeps
    finally:
        gc.enable()


# --- TLS: verification, and connections kept apart by client context ---------------


def _sha256(issued: Issued) -> bytes:
    return hashlib.sha256(issued.der).digest()


async def test_https_upstream_is_verified_against_the_system_store_by_default(
    pki: Pki, scripted: StartScripted, through_gateway: ThroughGateway
) -> None:
    upstream = await scripted(ok(b"tls"), tls=server_tls(pki))
    # Not in the system trust store: refused as unreachable, never relayed.
    refused = await (await through_gateway(upstream.url)).caller.request(get("/"))
    assert refused.status == 502
    assert refused.json()["error_description"] == "the upstream is unreachable"
    assert upstream.heads == []


async def test_https_upstream_trusted_by_the_system_store_is_reused(
    pki: Pki,
    scripted: StartScripted,
    through_gateway: ThroughGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream = await scripted(ok(b"tls"), tls=server_tls(pki))
    # OpenSSL's default verify paths honour SSL_CERT_FILE: trust the test CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca.cert_path))
    caller = (await through_gateway(upstream.url)).caller
    for _ in range(2):
        answer = await caller.request(get("/"))
        assert (answer.status, answer.body) == (200, b"tls")
    assert upstream.connections == 1


async def test_connections_are_pooled_per_client_context(
    pki: Pki, scripted: StartScripted, pool: UpstreamPool
) -> None:
    upstream = await scripted(ok(), tls=server_tls(pki))
    origin = parse_origin(upstream.url)
    alice, bob = pki.client("pool-alice"), pki.client("pool-bob")
    as_alice, as_bob = client_tls(pki, alice), client_tls(pki, bob)
    for context in (as_alice, as_bob, as_alice, as_bob):
        conn = await pool.acquire(origin, 5.0, tls=context)
        assert await exchange(conn) == b"ok"
        conn.finish()
    # One connection per certificate, each reused once, never lent to the other.
    assert upstream.peers == [_sha256(alice), _sha256(bob)]
    assert pool.idle_count(origin) == 2
    assert (pool.open_count(as_alice), pool.open_count(as_bob)) == (1, 1)


async def test_a_retired_context_closes_idle_connections_now_and_busy_ones_when_released(
    pki: Pki, scripted: StartScripted, pool: UpstreamPool
) -> None:
    upstream = await scripted(ok(), tls=server_tls(pki))
    origin = parse_origin(upstream.url)
    old, new = client_tls(pki, pki.client("before")), client_tls(pki, pki.client("after"))
    idle, busy = [await pool.acquire(origin, 5.0, tls=old) for _ in range(2)]
    await exchange(idle)
    idle.finish()
    await exchange(busy)  # its answer is in; the caller has not handed it back yet
    assert pool.open_count(old) == 2

    pool.retire(old)  # the certificate was reloaded
    await settle(lambda: pool.open_count(old) == 1)
    assert pool.open_count(old) == 1 and idle.lost and not busy.lost
    busy.finish()  # reusable by every other measure, but its context is retired
    await settle(lambda: pool.open_count(old) == 0)
    assert pool.open_count(old) == 0 and pool.idle_count(origin) == 0

    fresh = await pool.acquire(origin, 5.0, tls=new)
    assert fresh is not busy and await exchange(fresh) == b"ok"
    fresh.finish()
    assert pool.idle_count(origin) == 1
    await settle(lambda: upstream.open_connections == 1)
    assert upstream.open_connections == 1, "the upstream saw both old connections close"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("other-ca", "certificate verify failed: self-signed certificate in certificate chain"),
        ("wrong-name", "certificate verify failed: Hostname mismatch"),
    ],
)
async def test_a_refused_certificate_names_what_failed(
    pki: Pki,
    scripted: StartScripted,
    pool: UpstreamPool,
    tmp_path: Path,
    case: str,
    reason: str,
) -> None:
    served = pki.server
    anchor = pki
    if case == "wrong-name":
        served = pki.certificate(
            name((NameOID.COMMON_NAME, "other.example")),
            dns=["other.example"],
            eku=ExtendedKeyUsageOID.SERVER_AUTH,
        )
    else:
        anchor = Pki(tmp_path / "other", ca_name="Other CA")
    upstream = await scripted(ok(), tls=server_tls(pki, served))
    with pytest.raises(CertificateRefused) as refused:
        await pool.acquire(parse_origin(upstream.url), 5.0, tls=client_tls(anchor))
    assert str(refused.value).startswith(reason)
    assert isinstance(refused.value, UpstreamUnreachable)  # the proxy's 502 path
    assert upstream.heads == []


async def test_a_refused_connection_is_unreachable_not_a_certificate_problem(
    pool: UpstreamPool,
) -> None:
    with pytest.raises(UpstreamUnreachable) as refused:
        await pool.acquire(parse_origin(f"http://127.0.0.1:{free_port()}"), 5.0)
    assert not isinstance(refused.value, CertificateRefused)
    assert str(refused.value).startswith("cannot connect to the upstream: ")
