"""IdentityServer client export → registry: the mapping, the report, the CLI, and tokens.

The export is what ``JsonSerializer.Serialize`` gives for IdentityServer's
``Client`` objects (PascalCase), plus the camelCase and EF-entity shapes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.registry.identityserver import IdentityServerFormatError, import_identityserver
from gateway.registry.yaml_file import load_registry_file
from tests.conftest import MakeGateway, write_config
from tests.pki import Issued, Pki
from tests.registry.conftest import RedisServer, require_redis_server

REPO = Path(__file__).resolve().parents[2]
CLIENT_DN = "CN=client, OU=production, O=company"


def export(self_signed: Issued) -> list[dict[str, Any]]:
    """Four clients as an IdentityServer admin would have them (Duende defaults elsewhere)."""
    return [
        {
            "ClientId": "mtls.client",
            "ClientName": "PKI client",
            "Description": "moved from IdentityServer",
            "Enabled": True,
            "ProtocolType": "oidc",
            "AllowedGrantTypes": ["client_credentials", "authorization_code"],
            "AllowedScopes": ["api1", "api2"],
            "RedirectUris": ["https://app.example/callback"],
            "RequirePkce": True,
            "AllowOfflineAccess": True,
            "AccessTokenLifetime": 900,
            "AccessTokenType": 0,
            "ClientClaimsPrefix": "client_",
            "Claims": [
                {"Type": "tenant", "Value": "acme"},
                {"Type": "role", "Value": "reader"},
                {"Type": "role", "Value": "writer"},
            ],
            "ClientSecrets": [
                {"Type": "X509Name", "Value": CLIENT_DN, "Description": "client.dn"},
                {"Type": "SharedSecret", "Value": "K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols="},
            ],
        },
        {
            "clientId": "mtls.self",  # camelCase, the EF entity's nested shapes
            "allowedGrantTypes": [{"grantType": "client_credentials"}],
            "allowedScopes": [{"scope": "api1"}],
            "clientSecrets": [
                {
                    "type": "X509CertificateBase64",
                    "value": base64.b64encode(self_signed.der).decode(),
                    "expiration": "2099-01-01T00:00:00Z",
                }
            ],
            "accessTokenType": 1,
            "clientClaimsPrefix": "",
            "claims": [{"type": "sub", "value": "nope"}, {"type": "dept", "value": "ops"}],
            "id": 17,
        },
        {
            "ClientId": "spa",  # an interactive client: nothing this gateway can serve
            "AllowedGrantTypes": ["authorization_code"],
            "ClientSecrets": [],
            "RequireClientSecret": False,
        },
        {
            "ClientId": "secret.only",
            "AllowedGrantTypes": ["client_credentials"],
            "ClientSecrets": [{"Type": "SharedSecret", "Value": "hash"}],
        },
    ]


@pytest.fixture(scope="module")
def self_signed(pki: Pki) -> Issued:
    from cryptography.x509.oid import NameOID

    from tests.pki import name

    return pki.certificate(name((NameOID.COMMON_NAME, "imported-self")), self_signed=True)


def test_mapping_and_report(self_signed: Issued) -> None:
    result = import_identityserver(export(self_signed))
    by_id = {c.client_id: c for c in result.clients}
    assert sorted(by_id) == ["mtls.client", "mtls.self"]

    pki_client = by_id["mtls.client"].to_dict()
    assert pki_client == {
        "client_id": "mtls.client",
        "client_name": "PKI client",
        "description": "moved from IdentityServer",
        "allowed_grant_types": ["client_credentials"],
        "allowed_scopes": ["api1", "api2"],
        "access_token_lifetime": 900,
        "claims": {"client_tenant": "acme", "client_role": ["reader", "writer"]},
        "secrets": [
            {"type": "X509CertificateName", "value": CLIENT_DN, "description": "client.dn"}
        ],
    }
    self_client = by_id["mtls.self"]
    assert [(s.type, s.value) for s in self_client.secrets] == [
        ("X509CertificateThumbprint", self_signed.thumbprint)
    ]
    assert dict(self_client.claims) == {"dept": "ops"}

    report = "\n".join(result.report)
    for expected in (
        "client mtls.client: AllowedGrantTypes: authorization_code: not supported",
        "client mtls.client: ClientSecrets[1] (SharedSecret): shared secrets are not accepted",
        "client mtls.client: RedirectUris:",
        "client mtls.client: AllowOfflineAccess: True: not carried over (refresh tokens",
        "client mtls.self: ClientSecrets[0] (X509CertificateBase64): carried over as "
        f"X509CertificateThumbprint {self_signed.thumbprint}",
        "client mtls.self: claims[0] (sub): set by the token service",
        "client mtls.self: accessTokenType: 1: not carried over (only JWT access tokens",
        "client mtls.self: store metadata not carried over: id",
        "client spa: skipped: no client_credentials grant; no certificate secret",
        "client secret.only: skipped: no certificate secret",
    ):
        assert expected.lower() in report.lower(), expected
    # Defaults carry nothing and are not reported; secret values never are.
    assert "RequirePkce" not in report and "ProtocolType" not in report
    assert "K7gNU3sdo" not in report
    assert result.skipped == ["client spa", "client secret.only"]


def test_wrapped_document_and_errors(self_signed: Issued) -> None:
    result = import_identityserver({"Clients": export(self_signed)[:1]})
    assert [c.client_id for c in result.clients] == ["mtls.client"]
    with pytest.raises(IdentityServerFormatError):
        import_identityserver({"ApiResources": []})
    duplicated = import_identityserver(export(self_signed)[:1] * 2)
    assert "client mtls.client: skipped: duplicate ClientId" in duplicated.report


def test_invalid_secret_value_skips_the_client_with_the_reason() -> None:
    result = import_identityserver(
        [
            {
                "ClientId": "bad",
                "AllowedGrantTypes": ["client_credentials"],
                "ClientSecrets": [{"Type": "X509Thumbprint", "Value": "not-hex"}],
            }
        ]
    )
    assert result.clients == []
    assert any("skipped" in line and "40 hex digits" in line for line in result.report)


# --- the CLI, the registry, and tokens ---------------------------------------------------


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "gateway", "clients", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _export_file(tmp_path: Path, self_signed: Issued) -> Path:
    path = tmp_path / "identityserver-clients.json"
    path.write_text(json.dumps(export(self_signed), indent=2))
    return path


def test_cli_dry_run_and_report(tmp_path: Path, pki: Pki, self_signed: Issued) -> None:
    config, registry = write_config(
        tmp_path, pki, clients=[], routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1"}]
    )
    source = _export_file(tmp_path, self_signed)
    dry = run_cli("import", "--format", "identityserver", source, "--dry-run", "--config", config)
    assert dry.returncode == 0, dry.stderr
    printed = yaml.safe_load(dry.stdout)
    assert [c["client_id"] for c in printed["clients"]] == ["mtls.client", "mtls.self"]
    assert "not supported" in dry.stderr and "skipped" in dry.stderr
    assert load_registry_file(registry) == []  # nothing written

    report = tmp_path / "report.txt"
    done = run_cli(
        "import", "--format", "identityserver", source, "--report", report, "--config", config
    )
    assert done.returncode == 0, done.stderr
    assert "2 client(s) converted, 2 skipped" in done.stderr
    assert "SharedSecret" in report.read_text()
    assert "imported 2 client(s)" in done.stdout


def test_cli_refuses_what_is_not_an_export(tmp_path: Path, pki: Pki) -> None:
    config, _ = write_config(
        tmp_path, pki, clients=[], routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1"}]
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = run_cli("import", "--format", "identityserver", bad, "--config", config)
    assert result.returncode == 1
    assert result.stderr.startswith(f"mtls-gateway: {bad}:line 1: invalid JSON")
    assert "Traceback" not in result.stderr


async def test_imported_clients_get_tokens(
    tmp_path: Path, pki: Pki, self_signed: Issued, client_cert: Issued, make_gateway: MakeGateway
) -> None:
    """Export → `clients import` → registry file → a gateway serving tokens to both clients."""
    config, registry = write_config(
        tmp_path, pki, clients=[], routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1"}]
    )
    done = run_cli(
        "import",
        "--format",
        "identityserver",
        _export_file(tmp_path, self_signed),
        "--config",
        config,
    )
    assert done.returncode == 0, done.stderr
    imported = yaml.safe_load(registry.read_text())["clients"]
    gw = await make_gateway(clients=imported, tls={"pinned_certs": [str(self_signed.cert_path)]})
    for cert, client_id, lifetime in (
        (client_cert, "mtls.client", 900),
        (self_signed, "mtls.self", 300),
    ):
        async with (
            gw.session(cert) as session,
            session.post(
                gw.url + "/connect/token",
                data={"grant_type": "client_credentials", "client_id": client_id},
            ) as r,
        ):
            body = await r.json()
        assert r.status == 200, body
        assert body["expires_in"] == lifetime
        claims = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[1] + "=="))
        assert claims["client_id"] == client_id
        if client_id == "mtls.client":
            assert claims["client_tenant"] == "acme"
            assert body["scope"] == "api1 api2"


async def test_import_into_redis(
    tmp_path: Path, pki: Pki, self_signed: Issued, client_cert: Issued
) -> None:
    require_redis_server()
    server = RedisServer(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    server.start()
    try:
        config, _ = write_config(
            tmp_path,
            pki,
            clients=[],
            routes=[{"prefix": "/", "upstream": "http://127.0.0.1:1"}],
            extra={"registry": {"kind": "redis", "url": server.url, "key_prefix": "is-import:"}},
        )
        done = run_cli(
            "import",
            "--format",
            "identityserver",
            _export_file(tmp_path, self_signed),
            "--config",
            config,
        )
        assert done.returncode == 0, done.stderr
        listed = run_cli("list", "--config", config)
        assert listed.returncode == 0, listed.stderr
        assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == [
            "mtls.client",
            "mtls.self",
        ]
        from gateway.config import load_config
        from gateway.runtime import assemble
        from gateway.server import start_gateway

        running = await start_gateway(assemble(load_config(config, env={})))
        try:
            url = f"https://localhost:{running.listener_ports[0]}/connect/token"
            connector = aiohttp.TCPConnector(ssl=pki.client_context(client_cert))
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.post(
                    url, data={"grant_type": "client_credentials", "client_id": "mtls.client"}
                ) as r,
            ):
                assert r.status == 200, await r.text()
        finally:
            await running.stop(grace=0.5)
    finally:
        server.stop()
