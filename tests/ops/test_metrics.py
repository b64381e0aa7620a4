"""/metrics after real traffic: the series operators alert on, with the right labels."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MakeGateway, name_secret, registry_client
from tests.pki import Issued, Pki

CLIENT_DN = "CN=client, OU=production, O=company"


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def value(found: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    hits = [v for n, lb, v in found if n == name and all(lb.get(k) == w for k, w in labels.items())]
    assert hits, f"no sample {name} {labels}"
    return sum(hits)


async def test_metrics_after_traffic(
    make_gateway: MakeGateway,
    client_cert: Issued,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    stranger = pki.client("stranger")
    # Client ids as labels are opt-in (tests/security/test_admin.py has the default).
    gw = await make_gateway(
        clients=[registry_client("mtls.client", name_secret(CLIENT_DN))],
        extra={"admin": {"bind": "127.0.0.1:0", "metrics_client_labels": True}},
    )
    assert gw.gateway.access_log is not None
    access = io.BytesIO()
    gw.gateway.access_log.stream = access
    gw.gateway.access_log.format = "json"
    async with gw.session(client_cert) as session:
        for _ in range(3):
            async with session.get(gw.url + "/hello") as r:
                assert r.status == 200
        async with session.post(
            gw.url + "/connect/token",
            data={"grant_type": "client_credentials", "client_id": "mtls.client"},
        ) as r:
            assert r.status == 200
            token = (await r.json())["access_token"]
        async with session.post(
            gw.url + "/connect/token",
            data={"grant_type": "client_credentials", "client_id": "nobody"},
        ) as r:
            assert r.status == 401
        async with session.get(
            gw.url + "/with-token", headers={"Authorization": f"Bearer {token}"}
        ) as r:
            assert r.status == 200
    async with gw.session(None) as session, session.get(gw.url + "/hello") as r:
        assert r.status == 401
    async with gw.session(stranger) as session, session.get(gw.url + "/hello") as r:
        assert r.status == 403

    # An unknown CA completes the handshake and is refused by the policy.
    rogue = Pki(tmp_path / "rogue", ca_name="Rogue CA").client("client")
    async with gw.session(rogue) as session, session.get(gw.url + "/hello") as r:
        assert r.status == 403
    # A broken ClientHello: a handshake started, failed, never completed.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"\x16\x03\x01\x00\x05hello")
    with contextlib.suppress(OSError):
        await reader.read()
    writer.close()

    # A registry reload is counted too.
    data: dict[str, Any] = yaml.safe_load(gw.registry_path.read_text())
    data["clients"][0]["allowed_scopes"] = ["api1", "api2"]
    gw.registry_path.write_text(yaml.safe_dump(data))
    async with aiohttp.ClientSession() as admin:
        found: list[tuple[str, dict[str, str], float]] = []
        for _ in range(60):
            async with admin.get(gw.admin_url + "/metrics") as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
                found = samples(await r.text())
            reloads = [
                v
                for n, lb, v in found
                if n == "mtls_gateway_reloads_total"
                and lb == {"component": "registry", "outcome": "ok"}
            ]
            if reloads and reloads[0] >= 1:
                break
            await asyncio.sleep(0.1)

    req = "mtls_gateway_requests_total"
    assert value(found, req, listener="0", route="/", method="GET", status="200") == 4
    assert value(found, req, route="/", status="401") == 1
    assert value(found, req, route="/", status="403") == 2
    assert value(found, req, route="/connect/token", method="POST", status="200") == 1
    assert value(found, "mtls_gateway_upstream_latency_seconds_count", route="/") == 4
    assert value(found, "mtls_gateway_auth_refusals_total", reason="no_match") == 1
    assert value(found, "mtls_gateway_auth_refusals_total", reason="untrusted_ca") == 1
    assert value(found, "mtls_gateway_tls_handshake_failures_total", reason="tls_error") == 1
    assert value(found, "mtls_gateway_tokens_total", client_id="mtls.client", outcome="issued") == 1
    assert value(found, "mtls_gateway_tokens_total", client_id="-", outcome="invalid_client") == 1
    assert value(found, "mtls_gateway_registry_up") == 1
    assert value(found, "mtls_gateway_registry_lookups_total", result="match") >= 1
    assert value(found, "mtls_gateway_registry_lookups_total", result="no_match") == 2
    assert value(found, "mtls_gateway_reloads_total", component="registry", outcome="ok") >= 1
    assert (
        value(found, "mtls_gateway_reloads_total", component="tls:listeners[0]", outcome="failed")
        == 0
    )
    # A subject on every certificate series, process metrics, no *_created series.
    expiry = [lb for n, lb, _ in found if n.startswith("mtls_gateway_certificate_expiry")]
    assert expiry and all(lb["subject"] for lb in expiry)
    assert value(found, "process_resident_memory_bytes") > 0
    assert not [n for n, _, _ in found if n.endswith("_created")]
    server_expiry = value(found, "mtls_gateway_certificate_expiry_timestamp_seconds", kind="server")
    assert server_expiry == pytest.approx(pki.server.cert.not_valid_after_utc.timestamp())
    assert value(found, "mtls_gateway_certificate_expiry_timestamp_seconds", kind="client_ca") > 0
    assert value(found, "mtls_gateway_requests_in_flight") == 0
    started = value(found, "mtls_gateway_tls_handshakes_total", listener="0", outcome="started")
    completed = value(found, "mtls_gateway_tls_handshakes_total", listener="0", outcome="completed")
    assert completed >= 4 and started == completed + 1
    assert value(found, "mtls_gateway_connections_refused_total", listener="0") == 0

    # One access-log line per request, with identity but never the token.
    gw.gateway.access_log.flush()
    lines = [json.loads(line) for line in access.getvalue().decode().splitlines()]
    assert len(lines) >= 8
    ok = next(line for line in lines if line["path"] == "/with-token")
    assert ok["client_id"] == "mtls.client"
    assert ok["thumbprint"] == client_cert.thumbprint
    assert ok["status"] == 200 and ok["upstream_status"] == 200
    assert ok["bytes"] > 0 and ok["latency_ms"] > 0
    assert token not in access.getvalue().decode()
    assert all(token not in repr(rec.__dict__) for rec in caplog.records)
