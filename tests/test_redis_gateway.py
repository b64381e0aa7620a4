"""Gateways sharing a real Redis registry: live changes, fleet agreement, outage, CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.registry.config import RegistryConfig
from gateway.registry.model import Client, parse_client
from gateway.registry.redis_store import RedisRegistry
from tests.conftest import (
    GatewayUnderTest,
    MakeGateway,
    Upstream,
    echoed_headers,
    free_port,
    write_config,
)
from tests.pki import Issued, Pki, dn
from tests.registry.conftest import RedisServer
from tests.registry.conftest import redis_server as redis_server  # the fixture

PREFIX = "gw-test:"
CLIENT_DN = "CN=client, OU=production, O=company"
POLL_LIMIT = 10.0  # bound for polling loops; the latency itself is reported, not asserted


def redis_registry(url: str, **options: Any) -> dict[str, Any]:
    return {"registry": {"kind": "redis", "url": url, "key_prefix": PREFIX, **options}}


@pytest.fixture
async def writer(redis_server: RedisServer) -> AsyncIterator[RedisRegistry]:
    """What `mtls-gateway clients …` does: writes from outside the gateways."""
    registry = RedisRegistry(
        RegistryConfig(
            kind="redis",
            path=None,
            url=redis_server.url,
            key_prefix=PREFIX,
            max_stale=60.0,
            cache_size=100,
        )
    )
    yield registry
    await registry.close()


def client(client_id: str, *secrets: tuple[str, str], **extra: Any) -> Client:
    return parse_client(
        {
            "client_id": client_id,
            "allowed_scopes": ["api1"],
            "secrets": [{"type": t, "value": v} for t, v in secrets],
            **extra,
        }
    )


async def poll(check: Callable[[], Awaitable[bool]], what: str) -> float:
    """Seconds until ``check`` held; fails only past a generous bound."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < POLL_LIMIT, f"never happened: {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as resp:
        await resp.read()
        return resp.status


async def fresh_status(gw: GatewayUnderTest, cert: Issued) -> int:
    """On a new TLS connection, so the per-connection cache plays no part."""
    async with gw.session(cert) as session:
        return await status_of(session, gw.url + "/")


async def readyz(gw: GatewayUnderTest) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.admin_url + "/readyz") as resp,
    ):
        return resp.status, await resp.json()


async def test_gateway_serves_clients_from_redis(
    make_gateway: MakeGateway, redis_server: RedisServer, writer: RedisRegistry, pki: Pki
) -> None:
    spiffe_only = pki.client("workload", uris=["spiffe://example.org/ns/prod/sa/orders"])
    await writer.replace_all(
        [
            client("mtls.client", ("X509CertificateName", CLIENT_DN)),
            client("orders", ("X509SanUri", "spiffe://example.org/ns/prod/sa/orders")),
        ]
    )
    gw = await make_gateway(clients=[], extra=redis_registry(redis_server.url))
    assert (await readyz(gw))[0] == 200
    for cert, expected in ((pki.client("client"), "mtls.client"), (spiffe_only, "orders")):
        async with gw.session(cert) as session, session.get(gw.url + "/x") as resp:
            assert resp.status == 200
            assert echoed_headers(await resp.json())["x-client-id"] == [expected]
    assert await fresh_status(gw, pki.client("stranger")) == 403


async def test_add_and_remove_take_effect_on_a_running_gateway(
    make_gateway: MakeGateway, redis_server: RedisServer, writer: RedisRegistry, pki: Pki
) -> None:
    cert = pki.client("late-comer")
    gw = await make_gateway(clients=[], extra=redis_registry(redis_server.url))
    async with gw.session(cert) as session:  # one keep-alive connection throughout
        assert await status_of(session, gw.url + "/") == 403
        await writer.put(client("late", ("X509CertificateThumbprint", cert.thumbprint)))

        async def accepted() -> bool:
            return await status_of(session, gw.url + "/") == 200

        added_after = await poll(accepted, "the added client is accepted")
        await writer.remove("late")

        async def refused() -> bool:
            return await status_of(session, gw.url + "/") == 403

        removed_after = await poll(refused, "the removed client is refused")
    print(f"added: accepted after {added_after:.3f}s; removed: refused after {removed_after:.3f}s")


async def test_two_gateways_share_one_redis(
    make_gateway: MakeGateway,
    redis_server: RedisServer,
    writer: RedisRegistry,
    pki: Pki,
    client_cert: Issued,
    tmp_path: Path,
) -> None:
    resource_server = pki.client("orders-api")
    await writer.replace_all(
        [
            client("mtls.client", ("X509CertificateName", CLIENT_DN)),
            client(
                "orders.api", ("X509CertificateName", "CN=orders-api, OU=production, O=company")
            ),
        ]
    )
    a = await make_gateway(clients=[], extra=redis_registry(redis_server.url))
    # Both replicas sign with the one key (in a fleet: one Kubernetes Secret).
    shared_key = str(tmp_path / "gw0" / "signing.pem")
    b = await make_gateway(
        clients=[],
        extra={**redis_registry(redis_server.url), "tokens": {"signing_keys": [shared_key]}},
    )

    # A token minted by one replica is active at the other.
    async with a.session(client_cert) as session:
        form = {"grant_type": "client_credentials", "client_id": "mtls.client"}
        async with session.post(a.url + "/connect/token", data=form) as resp:
            assert resp.status == 200, await resp.text()
            token = (await resp.json())["access_token"]
    async with (
        b.session(resource_server) as session,
        session.post(b.url + "/connect/introspect", data={"token": token}) as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
        assert body["active"] is True and body["client_id"] == "mtls.client"

    newcomer = pki.client("newcomer")
    assert [await fresh_status(gw, newcomer) for gw in (a, b)] == [403, 403]
    await writer.put(client("newcomer", ("X509CertificateThumbprint", newcomer.thumbprint)))
    for gw in (a, b):

        async def accepted(gw: GatewayUnderTest = gw) -> bool:
            return await fresh_status(gw, newcomer) == 200

        await poll(accepted, f"gateway {gw.port} accepts the new client")
    await writer.remove("mtls.client")
    for gw in (a, b):

        async def refused(gw: GatewayUnderTest = gw) -> bool:
            return await fresh_status(gw, client_cert) == 403

        await poll(refused, f"gateway {gw.port} refuses the removed client")


async def test_redis_outage_and_recovery_without_restart(
    make_gateway: MakeGateway,
    redis_server: RedisServer,
    writer: RedisRegistry,
    pki: Pki,
    client_cert: Issued,
) -> None:
    seed = [client("mtls.client", ("X509CertificateName", CLIENT_DN))]
    await writer.replace_all(seed)
    gw = await make_gateway(
        clients=[],
        extra=redis_registry(
            redis_server.url, max_stale=2, connect_timeout=0.5, command_timeout=0.5
        ),
    )
    assert await fresh_status(gw, client_cert) == 200  # now in the gateway's cache
    keep_alive = gw.session(client_cert)
    try:
        assert await status_of(keep_alive, gw.url + "/") == 200

        redis_server.kill()
        # Seen recently: still served, on a new connection and on the open one.
        assert await fresh_status(gw, client_cert) == 200
        assert await status_of(keep_alive, gw.url + "/") == 200
        # Never seen: 503 with a JSON error, not a guess.
        async with (
            gw.session(pki.client("unknown")) as session,
            session.get(gw.url + "/") as resp,
        ):
            assert resp.status == 503
            assert (await resp.json())["error"] == "temporarily_unavailable"
            assert resp.headers["Retry-After"]
        status, body = await readyz(gw)
        assert status == 503 and body["checks"]["registry"] is False

        async def stale_window_closed() -> bool:
            return await status_of(keep_alive, gw.url + "/") == 503

        await poll(stale_window_closed, "max_stale ends serving from cache, keep-alive too")
        assert await fresh_status(gw, client_cert) == 503

        # Redis comes back (empty: nothing was persisted) and is restored.
        redis_server.start()
        await writer.replace_all(seed)

        async def recovered() -> bool:
            return (await readyz(gw))[0] == 200 and await fresh_status(gw, client_cert) == 200

        await poll(recovered, "the gateway recovers by itself")
        assert await status_of(keep_alive, gw.url + "/") == 200
    finally:
        await keep_alive.close()


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "clients", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
    )


async def test_cli_manages_the_redis_registry(
    redis_server: RedisServer, writer: RedisRegistry, pki: Pki, tmp_path: Path
) -> None:
    config, _ = write_config(
        tmp_path,
        pki,
        clients=[],
        routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1"}],
        extra=redis_registry(redis_server.url),
    )
    registry_file = tmp_path / "import.yaml"
    registry_file.write_text(
        yaml.safe_dump(
            {
                "clients": [
                    {
                        "client_id": "mtls.client",
                        "allowed_scopes": ["api1"],
                        "secrets": [{"type": "X509CertificateName", "value": CLIENT_DN}],
                    },
                    {
                        "client_id": "pinned",
                        "secrets": [{"type": "X509CertificateThumbprint", "value": "ab" * 20}],
                    },
                ]
            }
        )
    )
    cfg = str(config)
    done = run_cli("import", str(registry_file), "--config", cfg)
    assert done.returncode == 0, done.stderr
    assert "imported 2 client(s) into redis redis://127.0.0.1" in done.stdout
    assert {c.client_id for c in await writer.list_clients()} == {"mtls.client", "pinned"}

    listed = run_cli("list", "--config", cfg)
    assert listed.returncode == 0, listed.stderr
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["mtls.client", "pinned"]
    shown = run_cli("show", "mtls.client", "--config", cfg)
    assert yaml.safe_load(shown.stdout)["secrets"][0]["value"] == CLIENT_DN

    added = run_cli("add", "spiffe", "--san-uri", "spiffe://example.org/x", "--config", cfg)
    assert added.returncode == 0, added.stderr
    assert await writer.get("spiffe") is not None

    # Bad input names the client and field, and writes nothing.
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"clients": [{"client_id": "broken", "secrets": [{"type": "X509SanIp", "value": "x"}]}]}
        )
    )
    refused = run_cli("import", str(bad), "--config", cfg)
    assert refused.returncode == 1
    assert "clients[0].secrets[0].value" in refused.stderr and "broken" in refused.stderr
    assert "Traceback" not in refused.stderr

    removed = run_cli("remove", "pinned", "--config", cfg)
    assert removed.returncode == 0, removed.stderr
    exported = run_cli("export", "--config", cfg)
    ids = [c["client_id"] for c in yaml.safe_load(exported.stdout)["clients"]]
    assert ids == ["mtls.client", "spiffe"]
    assert run_cli("remove", "pinned", "--config", cfg).returncode == 1


async def test_two_gateway_processes_and_the_cli_agree(
    redis_server: RedisServer,
    writer: RedisRegistry,
    pki: Pki,
    client_cert: Issued,
    echo_upstream: Upstream,
    tmp_path: Path,
) -> None:
    """Two `mtls-gateway serve` processes; the client is removed with the CLI."""
    await writer.replace_all([client("mtls.client", ("X509CertificateName", CLIENT_DN))])
    processes: list[subprocess.Popen[bytes]] = []
    gateways: list[tuple[str, str]] = []  # (listener URL, admin URL)
    config = tmp_path / "gw0" / "gateway.yaml"
    try:
        for i in range(2):
            directory = tmp_path / f"gw{i}"
            directory.mkdir()
            port, admin_port = free_port(), free_port()
            tls = {
                "cert": str(pki.server.cert_path),
                "key": str(pki.server.key_path),
                "client_ca": str(pki.ca.cert_path),
            }
            path, _ = write_config(
                directory,
                pki,
                clients=[],
                routes=[{"prefix": "/", "upstream": echo_upstream.url, "auth": "client"}],
                extra={
                    **redis_registry(redis_server.url),
                    "listeners": [{"bind": f"127.0.0.1:{port}", "tls": tls}],
                    "admin": {"bind": f"127.0.0.1:{admin_port}"},
                },
            )
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            gateways.append((f"https://localhost:{port}", f"http://127.0.0.1:{admin_port}"))

        async def status(url: str, cert: Issued | None = None) -> int:
            ctx = pki.client_context(cert) if cert is not None else None
            try:
                async with (
                    aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(ssl=ctx if ctx is not None else True)
                    ) as session,
                    session.get(url) as resp,
                ):
                    return resp.status
            except aiohttp.ClientError:
                return 0

        for url, admin in gateways:

            async def ready(admin: str = admin) -> bool:
                return await status(admin + "/readyz") == 200

            await poll(ready, f"{admin} ready")
            assert await status(url + "/", client_cert) == 200

        removed = run_cli("remove", "mtls.client", "--config", str(config))
        assert removed.returncode == 0, removed.stderr
        for url, _ in gateways:

            async def refused(url: str = url) -> bool:
                return await status(url + "/", client_cert) == 403

            await poll(refused, f"{url} refuses the removed client")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


@pytest.mark.parametrize("can_issue", [False, True], ids=["leaf", "ca-true"])
async def test_a_self_issued_client_added_to_redis_works_on_two_gateways_within_a_second(
    make_gateway: MakeGateway,
    redis_server: RedisServer,
    writer: RedisRegistry,
    pki: Pki,
    can_issue: bool,
) -> None:
    """The seed's self-issued client: a thumbprint in the registry, no file on any replica."""
    self_issued = (
        pki.certificate(dn("fleet-self-ca"), ca=True)  # `openssl req -x509` defaults
        if can_issue
        else pki.certificate(dn("fleet-self"), self_signed=True)
    )
    await writer.replace_all([client("mtls.client", ("X509CertificateName", CLIENT_DN))])
    gateways = [
        await make_gateway(clients=[], extra=redis_registry(redis_server.url)) for _ in range(2)
    ]
    assert [await fresh_status(gw, self_issued) for gw in gateways] == [403, 403]
    await writer.put(client("fleet.self", ("X509CertificateThumbprint", self_issued.thumbprint)))
    for gw in gateways:

        async def accepted(gw: GatewayUnderTest = gw) -> bool:
            return await fresh_status(gw, self_issued) == 200

        # The issue's bound for a fleet: live on every replica in under 1 s.
        assert await poll(accepted, f"gateway {gw.port} accepts the new client") < 1.0
