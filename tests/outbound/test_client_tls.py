"""Client TLS on the way out: chain and host name verified, pins enforced, reloads atomic."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.lifecycle import FileWatcher
from gateway.outbound.client_tls import ClientTls, Trust
from tests.outbound.conftest import (
    Partner,
    StartOutbound,
    outbound_config,
    server_context,
    start_tls_app,
    token_settings,
    x5t_s256,
)
from tests.pki import Issued, Pki, name


async def _get(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


def _sha256_hex(issued: Issued) -> str:
    return hashlib.sha256(issued.der).hexdigest()


async def test_the_workload_certificate_is_presented(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    running = await start_outbound(
        outbound_config(destination=partner.url, cert=client_cert, ca=pki.ca.cert_path)
    )
    status, body = await _get(running.url + "/api/x")
    assert status == 200
    assert body["peer_x5t"] == x5t_s256(client_cert.der)


async def test_matching_pin_passes(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    pins = ("00" * 32, _sha256_hex(pki.server))  # the next pin may come first
    running = await start_outbound(
        outbound_config(
            destination=partner.url, cert=client_cert, ca=pki.ca.cert_path, server_sha256=pins
        )
    )
    status, _ = await _get(running.url + "/api/x")
    assert status == 200


async def test_pin_mismatch_fails_before_anything_is_sent(
    pki: Pki, client_cert: Issued, partner: Partner, start_outbound: StartOutbound
) -> None:
    running = await start_outbound(
        outbound_config(
            destination=partner.url,
            cert=client_cert,
            ca=pki.ca.cert_path,
            server_sha256=("00" * 32,),
            token=token_settings(partner),
        )
    )
    status, body = await _get(running.url + "/api/x")
    # The token endpoint is not pinned (its own trust), the destination is.
    assert status == 502 and body["error"] == "bad_gateway"
    assert "pinned SHA-256" in body["error_description"]
    assert partner.api_calls == 0, "no request, and so no token, reached the destination"


async def test_host_name_is_verified(
    pki: Pki, client_cert: Issued, start_outbound: StartOutbound
) -> None:
    elsewhere = pki.certificate(
        name((NameOID.COMMON_NAME, "other.example")),
        dns=["other.example"],
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    runner, port = await start_tls_app(web.Application(), server_context(pki, elsewhere))
    try:
        running = await start_outbound(
            outbound_config(
                destination=f"https://localhost:{port}", cert=client_cert, ca=pki.ca.cert_path
            )
        )
        status, body = await _get(running.url + "/x")
        assert status == 502
        assert "certificate was refused" in body["error_description"]
        assert "localhost" in body["error_description"]  # "Hostname mismatch ... 'localhost'"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("anchor", ["other-ca", "system-store"])
async def test_untrusted_destination_is_refused(
    pki: Pki,
    client_cert: Issued,
    partner: Partner,
    start_outbound: StartOutbound,
    tmp_path: Path,
    anchor: str,
) -> None:
    ca = Pki(tmp_path / "other", ca_name="Other CA").ca.cert_path if anchor == "other-ca" else None
    running = await start_outbound(
        outbound_config(destination=partner.url, cert=client_cert, ca=ca)
    )
    status, body = await _get(running.url + "/api/x")
    assert status == 502
    assert "certificate verify failed" in body["error_description"]
    assert partner.api_calls == 0


def test_a_failed_reload_keeps_the_running_material(pki: Pki, tmp_path: Path) -> None:
    first, second = pki.client("reload-a"), pki.client("reload-b")
    cert, key = tmp_path / "workload.pem", tmp_path / "workload.key"
    shutil.copy(first.cert_path, cert)
    shutil.copy(first.key_path, key)
    tls = ClientTls(
        cert=cert,
        key=key,
        trusts=[Trust(pki.ca.cert_path)],
        where="t.yaml:outbound[0].tls",
        name="outbound[0].tls",
    )
    watcher = FileWatcher([tls])  # what the gateway polls once a second
    before = tls.material
    assert watcher.poll() == {} and tls.material is before  # nothing changed

    cert.write_bytes(second.pem)  # the new certificate, the old key: no pair
    assert watcher.poll() == {"outbound[0].tls": False}
    assert tls.material is before and tls.reload_failures == 1
    assert watcher.poll() == {"outbound[0].tls": False}  # retried while failing
    assert tls.reload_failures == 1, "one failure counted (and logged) once"

    shutil.copy(second.key_path, key)
    assert watcher.poll() == {"outbound[0].tls": True}
    assert tls.material.generation == before.generation + 1
    assert tls.material.x5t_s256 == x5t_s256(second.der)
