"""The admin port against a browser on the same machine, and what /metrics tells.

DNS rebinding: a page from ``attacker.example`` re-points its own name at
127.0.0.1, and the browser, seeing the same origin, lets it read the
answers.  What gives it away is the Host, which names the attacker's domain:
the admin port answers only loopback names, IP literals and the names in
``admin.allowed_hosts``.  And ``/metrics`` names no client and no CA unless
``admin.metrics_client_labels: true``.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import GatewayUnderTest, MakeGateway, name_secret, registry_client
from tests.pki import Issued

CLIENT = registry_client("mtls.client", name_secret("CN=client, OU=production, O=company"))


async def admin_get(gw: GatewayUnderTest, path: str, host: str | None) -> tuple[int, str]:
    assert gw.running.admin_address is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.running.admin_address[1])
    host_line = f"Host: {host}\r\n" if host is not None else ""
    writer.write(f"GET {path} HTTP/1.0\r\n{host_line}\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


REBINDING_HOSTS = ["attacker.example", "attacker.example:9901", "localhost.attacker.example"]


@pytest.mark.parametrize("host", REBINDING_HOSTS)
@pytest.mark.parametrize("path", ["/metrics", "/readyz", "/healthz"])
async def test_a_rebound_name_cannot_read_the_admin_port(
    make_gateway: MakeGateway, host: str, path: str
) -> None:
    gw = await make_gateway(clients=[CLIENT])
    status, body = await admin_get(gw, path, host)
    assert status == 403, body
    assert "mtls_gateway" not in body


@pytest.mark.parametrize(
    "host", [None, "localhost:9901", "LOCALHOST", "127.0.0.1:9901", "[::1]:9901", "10.1.2.3:9901"]
)
async def test_loopback_names_and_ip_literals_are_answered(
    make_gateway: MakeGateway, host: str | None
) -> None:
    """Probes and scrapers use an address (kubelet: the pod IP) or localhost."""
    gw = await make_gateway(clients=[CLIENT])
    status, body = await admin_get(gw, "/metrics", host)
    assert status == 200, body


async def test_configured_names_are_answered(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(
        clients=[CLIENT],
        extra={"admin": {"bind": "127.0.0.1:0", "allowed_hosts": ["gateway-admin.monitoring"]}},
    )
    assert (await admin_get(gw, "/metrics", "gateway-admin.monitoring:9901"))[0] == 200
    assert (await admin_get(gw, "/metrics", "other.monitoring"))[0] == 403


async def _issue_a_token(gw: GatewayUnderTest, client_cert: Issued) -> None:
    async with (
        gw.session(client_cert) as session,
        session.post(
            gw.url + "/connect/token",
            data={"grant_type": "client_credentials", "client_id": "mtls.client"},
        ) as r,
    ):
        assert r.status == 200, await r.text()


async def test_metrics_name_no_client_and_no_ca_by_default(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(clients=[CLIENT])
    await _issue_a_token(gw, client_cert)
    async with aiohttp.ClientSession() as s, s.get(gw.admin_url + "/metrics") as r:
        text = await r.text()
    assert 'outcome="issued"' in text  # the token was counted...
    assert "mtls.client" not in text  # ...without naming its client
    assert "Test Root CA" not in text
    assert 'kind="client_ca",listener="0",subject="sha256:' in text


async def test_metrics_name_clients_and_cas_when_asked(
    make_gateway: MakeGateway, client_cert: Issued
) -> None:
    gw = await make_gateway(
        clients=[CLIENT],
        extra={"admin": {"bind": "127.0.0.1:0", "metrics_client_labels": True}},
    )
    await _issue_a_token(gw, client_cert)
    async with aiohttp.ClientSession() as s, s.get(gw.admin_url + "/metrics") as r:
        text = await r.text()
    assert 'client_id="mtls.client"' in text
    assert "CN=Test Root CA" in text
