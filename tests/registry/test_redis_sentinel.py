"""Redis Sentinel failover: a removal written to the new master reaches the gateways at once.

Real processes on loopback: one master, one replica, three sentinels
(``redis-server --sentinel``), and a manual ``SENTINEL FAILOVER``.  The old
master stays up and keeps saying ``role:master`` for a while afterwards; a
subscription left on it used to miss the removal for about 9 s.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.registry.config import RegistryConfig
from gateway.registry.model import Client, parse_client
from gateway.registry.redis_store import RedisRegistry
from gateway.trust.identity import identity_from_der
from tests.conftest import GatewayUnderTest, MakeGateway
from tests.pki import Issued, Pki
from tests.registry.conftest import SENTINEL_MASTER, SentinelGroup

PREFIX = "sentinel-test:"
CLIENT_DN = "CN=client, OU=production, O=company"
BOUND = 2.0  # issue 15: a removal reaches every gateway within 2 s, also right after a failover
POLL_LIMIT = 15.0


def _config(group: SentinelGroup) -> RegistryConfig:
    return RegistryConfig(
        kind="redis",
        path=None,
        url=f"redis://{SENTINEL_MASTER}/0",
        key_prefix=PREFIX,
        max_stale=60.0,
        cache_size=100,
        sentinel_master=SENTINEL_MASTER,
        sentinel_nodes=group.nodes,
    )


def _client(client_id: str, dn: str) -> Client:
    return parse_client(
        {
            "client_id": client_id,
            "allowed_scopes": ["api1"],
            "secrets": [{"type": "X509CertificateName", "value": dn}],
        }
    )


async def _write(group: SentinelGroup, change: str, client: Client) -> None:
    """What one `mtls-gateway clients …` run does: a fresh registry that finds the master."""
    writer = RedisRegistry(_config(group))
    try:
        if change == "put":
            await writer.put(client)
        else:
            assert await writer.remove(client.client_id)
    finally:
        await writer.close()


async def _seconds_until(check: Any, what: str) -> float:
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < POLL_LIMIT, f"never happened: {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_a_replica_follows_the_new_master_right_after_a_failover(
    sentinel_group: SentinelGroup, client_cert: Issued
) -> None:
    replica = RedisRegistry(_config(sentinel_group))
    await replica.start()
    identity = identity_from_der(client_cert.der)
    try:
        await _write(sentinel_group, "put", _client("mtls.client", CLIENT_DN))

        async def matched() -> bool:
            return bool((await replica.match(identity, exact_only=False)).matches)

        await _seconds_until(matched, "the replica sees the client")

        async def cached() -> bool:
            # A lookup is kept only once the replica is subscribed and synced,
            # which may come after its first answer from Redis: ask until it is.
            await replica.match(identity, exact_only=False)
            return replica.cached_entries > 0

        await _seconds_until(cached, "the replica caches the client")  # from the cache from here on

        sentinel_group.failover()
        await _write(sentinel_group, "remove", _client("mtls.client", CLIENT_DN))

        async def refused() -> bool:
            return not (await replica.match(identity, exact_only=False)).matches

        took = await _seconds_until(refused, "the replica drops the removed client")
        print(f"removal seen after {took:.3f}s")
        assert took < BOUND, f"removal seen after {took:.2f}s"

        async def in_sync() -> bool:
            return replica.ready

        await _seconds_until(in_sync, "the replica is in sync with the new master")
    finally:
        await replica.close()


async def test_a_running_gateway_refuses_a_client_removed_after_a_failover(
    sentinel_group: SentinelGroup, make_gateway: MakeGateway, pki: Pki
) -> None:
    await _write(sentinel_group, "put", _client("mtls.client", CLIENT_DN))
    registry = {
        "kind": "redis",
        "url": f"redis://{SENTINEL_MASTER}/0",
        "key_prefix": PREFIX,
        "sentinel": {
            "master": SENTINEL_MASTER,
            "nodes": [f"{host}:{port}" for host, port in sentinel_group.nodes],
        },
    }
    gateways = [await make_gateway(clients=[], extra={"registry": registry}) for _ in range(2)]
    cert = pki.client("client")

    async def status(gw: GatewayUnderTest) -> int:
        async with gw.session(cert) as session, session.get(gw.url + "/") as resp:
            await resp.read()
            return resp.status

    assert [await status(gw) for gw in gateways] == [200, 200]

    sentinel_group.failover()
    await _write(sentinel_group, "remove", _client("mtls.client", CLIENT_DN))
    written = time.monotonic()
    for gw in gateways:

        async def refused(gw: GatewayUnderTest = gw) -> bool:
            return await status(gw) == 403

        await _seconds_until(refused, f"gateway {gw.port} refuses the removed client")
        took = time.monotonic() - written
        assert took < BOUND, f"gateway {gw.port} refused it {took:.2f}s after the write"
