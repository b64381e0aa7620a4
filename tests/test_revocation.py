"""CRL revocation on a running gateway, over real mTLS connections."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.config.load import load_config
from gateway.config.reader import ConfigError
from gateway.runtime import assemble
from tests.conftest import MakeGateway, name_secret, registry_client
from tests.pki import Issued, Pki


def write_crl(pki: Pki, path: Path, revoked: list[Issued], *, der: bool = False) -> None:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=1))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.cert.serial_number)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    crl = builder.sign(pki.ca.key, hashes.SHA256())
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(crl.public_bytes(encoding))
    tmp.replace(path)


async def test_revoked_client_refused_on_new_and_existing_connections(
    make_gateway: MakeGateway, pki: Pki, tmp_path: Path
) -> None:
    alice = pki.client("alice")
    bob = pki.client("bob")
    crl_path = tmp_path / "ca.crl"
    write_crl(pki, crl_path, [])
    gw = await make_gateway(
        clients=[
            registry_client("alice", name_secret("CN=alice, OU=production, O=company")),
            registry_client("bob", name_secret("CN=bob, OU=production, O=company")),
        ],
        tls={"crl": str(crl_path)},
    )
    async with gw.session(alice) as session:
        async with session.get(gw.url + "/before") as response:
            assert response.status == 200
        write_crl(pki, crl_path, [alice], der=True)
        status = 200
        for _ in range(50):  # up to 5 s: the file watcher polls every second
            async with session.get(gw.url + "/after") as response:
                status = response.status
                body = await response.json()
            if status == 403:
                break
            await asyncio.sleep(0.1)
        assert status == 403, "revoked client still served on its keep-alive connection"
        assert body["error"] == "access_denied"
        assert "revoked" in body["error_description"]
    async with gw.session(alice) as session, session.get(gw.url + "/new") as response:
        assert response.status == 403
    async with gw.session(bob) as session, session.get(gw.url + "/bob") as response:
        assert response.status == 200


def test_crl_not_signed_by_a_client_ca_is_refused(tmp_path: Path, pki: Pki) -> None:
    from tests.conftest import write_config

    other = Pki(tmp_path / "other", ca_name="Other CA")
    crl_path = tmp_path / "other.crl"
    write_crl(other, crl_path, [])
    config_path, _ = write_config(
        tmp_path,
        pki,
        clients=[],
        routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1"}],
        tls={"crl": str(crl_path)},
    )
    try:
        assemble(load_config(config_path, env={}))
    except ConfigError as exc:
        assert any("tls.crl" in p and "not signed" in p for p in exc.problems), exc.problems
    else:
        raise AssertionError("a CRL from a foreign CA was accepted")
    assert yaml.safe_load(config_path.read_text())["listeners"][0]["tls"]["crl"] == str(crl_path)
