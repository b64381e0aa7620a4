"""Client certificate rotation: new connections present the new certificate within 5 s.

A real gateway (its file watcher included) runs the outbound listener; the
destination is the stand-in partner, which echoes the SHA-256 of the client
certificate on each connection.  Requests already running on the old pool
finish there; the old certificate's connections are closed once they have.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import MakeGateway, registry_client, thumbprint_secret
from tests.outbound.conftest import Partner, x5t_s256
from tests.pki import Issued, Pki

ROTATION_DEADLINE_SECONDS = 5.0


def _install(issued: Issued, cert: Path, key: Path) -> None:
    """Replace both files the way a Secret update or cert-manager would: atomically each."""
    for source, target in ((issued.key_path, key), (issued.cert_path, cert)):
        staging = target.with_suffix(".new")
        shutil.copy(source, staging)
        os.replace(staging, target)


async def _get(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def test_rotated_certificate_is_presented_on_new_connections_within_5_s(
    pki: Pki, partner: Partner, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    old, new = pki.client("rotate-old"), pki.client("rotate-new")
    cert, key = tmp_path / "workload.pem", tmp_path / "workload.key"
    _install(old, cert, key)
    gateway = await make_gateway(
        clients=[registry_client("unused", thumbprint_secret("00" * 20))],
        extra={
            "outbound": [
                {
                    "bind": "127.0.0.1:0",
                    "destination": partner.url,
                    "tls": {"cert": str(cert), "key": str(key), "ca": str(pki.ca.cert_path)},
                    "token": {"token_endpoint": partner.url + "/token", "client_id": "mtls.client"},
                }
            ]
        },
    )
    url = f"http://127.0.0.1:{gateway.running.outbound_addresses[0][1]}"
    pool = gateway.gateway.outbound[0].pool
    old_contexts = list(pool.tls.material.contexts.values())

    async with aiohttp.ClientSession() as session:
        before = await _get(session, url + "/api/peer")
        assert before["peer_x5t"] == x5t_s256(old.der)
        old_token = before["authorization"][0].removeprefix("Bearer ")
        assert partner.bound[old_token] == x5t_s256(old.der)

        # A response that streams for ~2 s, started on the old pool.
        async def slow() -> bytes:
            async with session.get(url + "/api/slow") as response:
                assert response.status == 200
                return await response.read()

        in_flight = asyncio.create_task(slow())
        await asyncio.sleep(0.3)

        _install(new, cert, key)
        rotated_at = time.monotonic()
        while True:
            body = await _get(session, url + "/api/peer")
            if body["peer_x5t"] == x5t_s256(new.der):
                break
            assert time.monotonic() - rotated_at < ROTATION_DEADLINE_SECONDS, "not presented in 5 s"
            await asyncio.sleep(0.1)

        # RFC 8705 §3: a token bound to the old certificate is useless now; a
        # new one was obtained with, and bound to, the new certificate.
        new_token = body["authorization"][0].removeprefix("Bearer ")
        assert new_token != old_token
        assert partner.bound[new_token] == x5t_s256(new.der)

        # Still open: the connection carrying the slow answer (unless it just
        # ended), nothing else of the old material.
        carrying = 0 if in_flight.done() else 1
        assert sum(pool.upstreams.open_count(c) for c in old_contexts) == carrying
        assert await in_flight == b"x" * 100, "the in-flight request finished on its connection"
        await asyncio.sleep(0.1)
        assert all(pool.upstreams.open_count(c) == 0 for c in old_contexts), (
            "the old certificate's connections were closed once they drained"
        )
        current = pool.tls.material.contexts.values()
        assert sum(pool.upstreams.open_count(c) for c in current) >= 1
